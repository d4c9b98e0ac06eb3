// Zero-shot multiple-choice tasks read from local files, formatted exactly as lm-eval-harness's
// task configs build their requests (0 shots, target delimiter " "):
//   piqa           "Question: {goal}\nAnswer:"      + " {sol1|sol2}"          piqa/valid.jsonl + valid-labels.lst
//   arc_easy       "Question: {question}\nAnswer:"  + " {choices.text[i]}"    arc/ARC-Easy-test.jsonl
//   arc_challenge  same layout                                                 arc/ARC-Challenge-test.jsonl
//   hellaswag      preprocess("{activity_label}: {ctx}") + " " + preprocess(ending)
//                                                     hellaswag/hellaswag_val_full.txt.bz2 (6 lines per item)
// Splits are lm-eval's: piqa validation, arc test, hellaswag validation. No torch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpqat::eval {

struct MultipleChoiceItem {
  std::string context;                     // the query, without a trailing delimiter
  std::vector<std::string> choices;        // choice texts, without the delimiter
  std::vector<std::string> continuations;  // " " + choice: what is scored after `context`
  int gold = 0;                            // index into choices
};

struct MultipleChoiceTask {
  std::string name;   // "piqa", ...
  std::string split;  // "validation" / "test"
  std::string path;   // main file read
  std::vector<MultipleChoiceItem> items;
};

// Task names load_task accepts, in a stable order.
std::vector<std::string> known_tasks();

// Loads `name` from `task_dir` (the folder holding piqa/, arc/, hellaswag/). split "" = lm-eval's
// split for the task. Throws InputError listing the known tasks for an unknown name, and naming the
// path and the expected layout for a missing or malformed file.
MultipleChoiceTask load_task(const std::string& name, const std::string& task_dir, const std::string& split = "");

// lm-eval's hellaswag preprocess: strip, " [title]" -> ". ", drop "[...]" spans, "  " -> " " (once).
std::string hellaswag_preprocess(const std::string& text);

// The hellaswag query from the file's first line "activity_label: ctx". lm-eval builds ctx as
// ctx_a + " " + ctx_b.capitalize(); the file stores ctx_a + " " + ctx_b unchanged and without the
// split, so ctx_b is taken to be a trailing lowercase fragment after the last sentence end
// (". ", "? ", "! "), which is how HellaSwag's ActivityNet items are cut. Then preprocessed.
std::string hellaswag_query(const std::string& line);

// Number of Unicode code points in UTF-8 text (Python's len(str), which acc_norm divides by).
int64_t utf8_length(const std::string& text);

// Whole content of a .bz2 file. Throws InputError naming the path when it cannot be read or
// is not bzip2 data.
std::string read_bz2_file(const std::string& path);

}  // namespace mpqat::eval

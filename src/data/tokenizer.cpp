#include "mpqat/data/tokenizer.h"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/data/llama2c_tokenizer.h"
#include "mpqat/data/sentencepiece_tokenizer.h"
#include "mpqat/data/wordpiece_tokenizer.h"
#include "mpqat/util/error.h"

namespace mpqat::data {

namespace {

std::string extension_lower(const std::filesystem::path& p) {
  std::string e = p.extension().string();
  for (char& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return e;
}

// tokenizer.json files hold either a BPE or a WordPiece model; the two readers differ.
bool is_wordpiece_json(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find("\"WordPiece\"") == std::string::npos) return false;
  try {
    const auto j = nlohmann::json::parse(text);
    return j.is_object() && j.contains("model") && j["model"].is_object() &&
           j["model"].value("type", std::string()) == "WordPiece";
  } catch (const nlohmann::json::exception&) {
    return false;  // the BPE reader reports the JSON error
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  const std::string accepted =
      "a tokenizer.json (Hugging Face BPE or WordPiece), tokenizer.model (SentencePiece), llama2.c "
      "tokenizer.bin or BERT vocab.txt, or a folder holding one";
  fs::path p(path_or_dir);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    fs::path found;
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin", "vocab.txt"})
      if (fs::is_regular_file(p / name, ec)) {
        found = p / name;
        break;
      }
    if (found.empty())
      throw InputError("no tokenizer found in folder '" + path_or_dir + "' (accepted: " +
                       accepted + ")");
    p = found;
  } else if (!fs::is_regular_file(p, ec)) {
    throw InputError("tokenizer path '" + path_or_dir + "' does not exist (accepted: " +
                     accepted + ")");
  }
  const std::string ext = extension_lower(p);
  if (ext == ".json") {
    if (is_wordpiece_json(p)) return std::make_unique<WordPieceTokenizer>(p.string());
    return std::make_unique<HfBpeTokenizer>(p.string());
  }
  if (ext == ".txt") return std::make_unique<WordPieceTokenizer>(p.string());
  if (ext == ".model") return std::make_unique<SentencePieceTokenizer>(p.string());
  if (ext == ".bin") return std::make_unique<Llama2cTokenizer>(p.string());
  // Unknown extension: JSON starts with '{'; otherwise try SentencePiece, then llama2.c.
  std::ifstream in(p, std::ios::binary);
  char c = 0;
  while (in.get(c) && std::isspace(static_cast<unsigned char>(c))) {
  }
  if (c == '{') {
    if (is_wordpiece_json(p)) return std::make_unique<WordPieceTokenizer>(p.string());
    return std::make_unique<HfBpeTokenizer>(p.string());
  }
  try {
    return std::make_unique<SentencePieceTokenizer>(p.string());
  } catch (const InputError&) {
  }
  try {
    return std::make_unique<Llama2cTokenizer>(p.string());
  } catch (const InputError&) {
  }
  throw InputError("tokenizer file '" + p.string() + "' is not recognised (accepted: " +
                   accepted + ")");
}

}  // namespace mpqat::data

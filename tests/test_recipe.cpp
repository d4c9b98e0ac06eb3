#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <yaml-cpp/yaml.h>

#include "mpqat/io/recipe.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using mpqat::InputError;
using mpqat::io::Recipe;

namespace {

const char* kMinimal = R"(
model:
  path: /models/llama
allocation:
  method: qbo
  budget:
    avg_bits: 3.5
)";

// Runs `f`, expects an InputError, returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no InputError thrown";
  return "";
}

}  // namespace

TEST(Recipe, DefaultsComeFromTheSchema) {
  Recipe r;
  for (const auto& k : mpqat::io::recipe_schema()) {
    // Every default parses as its own type: reading it must not throw.
    switch (k.type) {
      case mpqat::io::KeyType::String: r.str(k.path); break;
      case mpqat::io::KeyType::Int: r.integer(k.path); break;
      case mpqat::io::KeyType::Float: r.number(k.path); break;
      case mpqat::io::KeyType::Bool: r.flag(k.path); break;
      case mpqat::io::KeyType::StringList: r.strings(k.path); break;
      case mpqat::io::KeyType::IntList: r.integers(k.path); break;
      case mpqat::io::KeyType::FloatList: r.numbers(k.path); break;
      case mpqat::io::KeyType::IntMap: r.int_map(k.path); break;
    }
  }
  EXPECT_EQ(r.integer("training.epochs"), 2);
  EXPECT_DOUBLE_EQ(r.number("training.lr_quant"), 1e-4);
  EXPECT_EQ(r.integers("allocation.sgra.epochs"), (std::vector<int64_t>{2, 4}));
}

TEST(Recipe, ParsesValuesAndKeepsDefaultsElsewhere) {
  const Recipe r = Recipe::from_yaml(kMinimal, "t.yaml");
  EXPECT_EQ(r.str("model.path"), "/models/llama");
  EXPECT_DOUBLE_EQ(r.number("allocation.budget.avg_bits"), 3.5);
  EXPECT_TRUE(r.is_set("model.path"));
  EXPECT_FALSE(r.is_set("training.epochs"));
  EXPECT_EQ(r.integer("training.epochs"), 2);
}

TEST(Recipe, UnknownKeyNamesKeyPathAndClosestKey) {
  const std::string msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  epoch: 3\n", "my.yaml");
  });
  EXPECT_NE(msg.find("my.yaml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key 'epoch'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'training'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'training.epochs'"), std::string::npos) << msg;
}

TEST(Recipe, MisspeltSectionSuggestsTheSection) {
  const std::string msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "trainig:\n  epochs: 3\n", "my.yaml");
  });
  EXPECT_NE(msg.find("unknown key 'trainig' at the top level"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'training'"), std::string::npos) << msg;
}

TEST(Recipe, KeyInWrongSectionIsFoundElsewhere) {
  const std::string msg =
      error_of([] { Recipe::from_yaml(std::string(kMinimal) + "grad_clip: 1\n", "r.yaml"); });
  EXPECT_NE(msg.find("training.e2e.grad_clip"), std::string::npos) << msg;
}

TEST(Recipe, WrongTypeNamesPathTypeAndValue) {
  std::string msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  epochs: two\n", "r.yaml");
  });
  EXPECT_NE(msg.find("training.epochs must be an integer, got 'two'"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  resume: maybe\n", "r.yaml");
  });
  EXPECT_NE(msg.find("training.resume must be a boolean"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  e2e: 5\n", "r.yaml");
  });
  EXPECT_NE(msg.find("training.e2e must be a mapping"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  epochs: [1, 2]\n", "r.yaml");
  });
  EXPECT_NE(msg.find("training.epochs must be an integer"), std::string::npos) << msg;
}

TEST(Recipe, ChoicesAndRangesAreChecked) {
  std::string msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  method: blockap\n", "r.yaml");
  });
  EXPECT_NE(msg.find("training.method must be one of block-ap|gptq|rtn, got 'blockap'"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'block-ap'"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "training:\n  batch_size: 0\n", "r.yaml");
  });
  EXPECT_NE(msg.find("training.batch_size must be >= 1"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "  bits: [2, 7]\n", "r.yaml");  // under kMinimal's allocation:
  });
  EXPECT_NE(msg.find("allocation.bits must be one of"), std::string::npos) << msg;
}

TEST(Recipe, MissingRequiredKey) {
  const std::string msg = error_of([] { Recipe::from_yaml("training:\n  epochs: 3\n", "r.yaml"); });
  EXPECT_NE(msg.find("model.path is required"), std::string::npos) << msg;
}

TEST(Recipe, BudgetRules) {
  std::string msg = error_of([] { Recipe::from_yaml("model: {path: m}\n", "r.yaml"); });
  EXPECT_NE(msg.find("allocation.method qbo needs a budget"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml("model: {path: m}\nallocation: {budget: {avg_bits: 3, bytes: 1GB}}\n", "r.yaml");
  });
  EXPECT_NE(msg.find("exactly one of"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml("model: {path: m}\nallocation: {budget: {bytes: lots}}\n", "r.yaml");
  });
  EXPECT_NE(msg.find("allocation.budget.bytes"), std::string::npos) << msg;
  msg = error_of([] {
    Recipe::from_yaml("model: {path: m}\nallocation: {method: kmeans, groups: 4, preset: [8, 4, 2]}\n",
                      "r.yaml");
  });
  EXPECT_NE(msg.find("allocation.preset has 3 entries but allocation.groups is 4"),
            std::string::npos) << msg;
  // Clustering needs no budget.
  EXPECT_NO_THROW(Recipe::from_yaml("model: {path: m}\nallocation: {method: kmeans}\n", "r.yaml"));
}

TEST(Recipe, RefusesCalibratingOnEvaluatedData) {
  const std::string base =
      "model: {path: m}\nallocation: {method: uniform}\n"
      "data: {calibration: {path: data/test.txt}}\nevaluation: {perplexity: [data/./test.txt]}\n";
  const std::string msg = error_of([&] { Recipe::from_yaml(base, "r.yaml"); });
  EXPECT_NE(msg.find("is also evaluated"), std::string::npos) << msg;
  EXPECT_NO_THROW(Recipe::from_yaml(base, "r.yaml", {"data.allow_eval_overlap=true"}));
}

TEST(Recipe, OverridesApplyAfterTheFile) {
  const Recipe r = Recipe::from_yaml(
      kMinimal, "t.yaml",
      {"training.epochs=5", "training.e2e.lr=3e-5", "allocation.bits=[2, 4, 8]",
       "sensitivity.metrics=fisher,pwcca", "model.path=/other", "allocation.tie_qkv=true"});
  EXPECT_EQ(r.integer("training.epochs"), 5);
  EXPECT_DOUBLE_EQ(r.number("training.e2e.lr"), 3e-5);
  EXPECT_EQ(r.integers("allocation.bits"), (std::vector<int64_t>{2, 4, 8}));
  EXPECT_EQ(r.strings("sensitivity.metrics"), (std::vector<std::string>{"fisher", "pwcca"}));
  EXPECT_EQ(r.str("model.path"), "/other");
  EXPECT_TRUE(r.flag("allocation.tie_qkv"));
}

TEST(Recipe, BadOverridesAreErrors) {
  std::string msg = error_of([] { Recipe::from_yaml(kMinimal, "t.yaml", {"training.epocs=3"}); });
  EXPECT_NE(msg.find("unknown key 'training.epocs'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'training.epochs'"), std::string::npos) << msg;
  msg = error_of([] { Recipe::from_yaml(kMinimal, "t.yaml", {"training.epochs"}); });
  EXPECT_NE(msg.find("key.path=value"), std::string::npos) << msg;
  msg = error_of([] { Recipe::from_yaml(kMinimal, "t.yaml", {"training.epochs=x"}); });
  EXPECT_NE(msg.find("override 'training.epochs=x'"), std::string::npos) << msg;
}

TEST(Recipe, PinsAreAMapOfIntegers) {
  const Recipe r = Recipe::from_yaml(
      std::string(kMinimal) + "  pins:\n    \"model.layers.0.*\": 8\n    lm_head: 16\n", "t.yaml");
  const auto pins = r.int_map("allocation.pins");
  ASSERT_EQ(pins.size(), 2u);
  EXPECT_EQ(pins.at("model.layers.0.*"), 8);
  const std::string msg = error_of([] {
    Recipe::from_yaml(std::string(kMinimal) + "  pins:\n    lm_head: high\n", "t.yaml");
  });
  EXPECT_NE(msg.find("allocation.pins.\"lm_head\" must be an integer"), std::string::npos) << msg;
}

TEST(Recipe, InvalidYamlNamesTheLine) {
  const std::string msg =
      error_of([] { Recipe::from_yaml("model:\n  path: [unclosed\n", "broken.yaml"); });
  EXPECT_NE(msg.find("broken.yaml: not valid YAML at line"), std::string::npos) << msg;
}

TEST(Recipe, ResolvedYamlRoundTrips) {
  const Recipe a = Recipe::from_yaml(kMinimal, "t.yaml",
                                     {"training.e2e.lr=3e-5", "allocation.pins={lm_head: 16}"});
  const std::string text = a.to_yaml();
  const Recipe b = Recipe::from_yaml(text, "resolved.yaml");
  EXPECT_EQ(a.to_json(), b.to_json());
  // Every schema key appears in the resolved text.
  const YAML::Node root = YAML::Load(text);
  for (const auto& k : mpqat::io::recipe_schema()) {
    YAML::Node cur = root;
    for (const auto& part : mpqat::util::split(k.path, '.')) cur.reset(cur[part]);
    EXPECT_TRUE(cur.IsDefined()) << k.path;
  }
}

TEST(Recipe, WriteResolvedIsAtomicAndReadable) {
  const fs::path dir = fs::temp_directory_path() / ("mpqat_recipe_" + std::to_string(::getpid()));
  const Recipe a = Recipe::from_yaml(kMinimal, "t.yaml");
  a.write_resolved(dir.string());
  EXPECT_TRUE(fs::exists(dir / "recipe.yaml"));
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename(), "recipe.yaml") << "stray file " << e.path();
  }
  const Recipe b = Recipe::from_file((dir / "recipe.yaml").string());
  EXPECT_EQ(a.to_json(), b.to_json());
  fs::remove_all(dir);
}

TEST(Recipe, ShippedRecipesValidate) {
  const fs::path dir = fs::path(MPQAT_SOURCE_DIR) / "recipes";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    EXPECT_NO_THROW(Recipe::from_file(e.path().string())) << e.path();
  }
  EXPECT_GT(n, 0);
}

TEST(Recipe, DocsListEveryKey) {
  const std::string doc = mpqat::util::read_file(std::string(MPQAT_SOURCE_DIR) + "/docs/recipes.md");
  for (const auto& k : mpqat::io::recipe_schema()) {
    EXPECT_NE(doc.find("`" + k.path + "`"), std::string::npos)
        << k.path << " is not documented in docs/recipes.md (regenerate with mpqat run --print-schema)";
  }
}

TEST(Strings, ParseBytes) {
  using mpqat::util::parse_bytes;
  EXPECT_EQ(parse_bytes("700MiB", "x"), 700ull * 1024 * 1024);
  EXPECT_EQ(parse_bytes("2.5GB", "x"), 2500000000ull);
  EXPECT_EQ(parse_bytes("123", "x"), 123ull);
  EXPECT_EQ(parse_bytes(" 4 kib ", "x"), 4096ull);
  EXPECT_THROW(parse_bytes("12 parsecs", "x"), InputError);
  EXPECT_THROW(parse_bytes("", "x"), InputError);
  EXPECT_THROW(parse_bytes("1.2.3MB", "x"), InputError);
}

TEST(Strings, ClosestMatch) {
  using mpqat::util::closest_match;
  EXPECT_EQ(closest_match("epoch", {"epochs", "batch_size", "lr_weights"}), "epochs");
  EXPECT_EQ(closest_match("zzzzzzzz", {"epochs", "batch_size"}), "");
  EXPECT_EQ(mpqat::util::levenshtein("kitten", "sitting"), 3u);
}

// The layering of docs/architecture.md, enforced: every #include "mpqat/<layer>/..." in
// src/<layer>/ and include/mpqat/<layer>/ must name the layer itself or one it may use, and the
// "may use" relation must be acyclic. A new include across layers fails here with the file named.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// docs/architecture.md's table: layer -> the layers below it that it may include.
const std::map<std::string, std::set<std::string>>& allowed() {
  static const std::map<std::string, std::set<std::string>> a{
      {"util", {}},
      {"dist", {"util"}},
      {"io", {"util"}},
      {"data", {"util", "io"}},
      {"model", {"util", "io", "data"}},
      {"quant", {"util", "io", "model"}},
      {"alloc", {"util", "io", "model", "quant"}},
      {"sensitivity", {"util", "io", "data", "model", "quant", "dist"}},
      {"eval", {"util", "io", "data", "model", "quant", "dist"}},
      {"train", {"util", "io", "data", "model", "quant", "dist"}},
      {"cli", {"util", "io", "data", "model", "quant", "alloc", "sensitivity", "eval", "train", "dist"}},
  };
  return a;
}

}  // namespace

TEST(Layers, MayUseRelationIsAcyclic) {
  std::map<std::string, int> state;  // 0 new, 1 on the stack, 2 done
  std::function<bool(const std::string&)> dfs = [&](const std::string& l) {
    if (state[l] == 1) return false;
    if (state[l] == 2) return true;
    state[l] = 1;
    for (const auto& d : allowed().at(l))
      if (!dfs(d)) return false;
    state[l] = 2;
    return true;
  };
  for (const auto& [l, deps] : allowed()) EXPECT_TRUE(dfs(l)) << "cycle through layer " << l;
}

TEST(Layers, EveryIncludeStaysWithinTheAllowedLayers) {
  const fs::path root(MPQAT_SOURCE_DIR);
  const std::regex inc(R"re(^\s*#\s*include\s*"mpqat/(\w+)/)re");
  int files = 0, edges = 0;
  for (const auto& base : {root / "src", root / "include" / "mpqat"}) {
    ASSERT_TRUE(fs::is_directory(base)) << base;
    for (const auto& e : fs::recursive_directory_iterator(base)) {
      if (!e.is_regular_file()) continue;
      const auto rel = fs::relative(e.path(), base);
      const std::string layer = rel.begin()->string();
      if (rel.begin() == rel.end() || std::next(rel.begin()) == rel.end()) continue;  // files at the top
      auto it = allowed().find(layer);
      ASSERT_NE(it, allowed().end()) << e.path() << " is in folder '" << layer << "', which no layer table row names";
      ++files;
      std::ifstream in(e.path());
      std::string line;
      int n = 0;
      while (std::getline(in, line)) {
        ++n;
        std::smatch m;
        if (!std::regex_search(line, m, inc)) continue;
        const std::string to = m[1];
        if (to == layer) continue;
        ++edges;
        EXPECT_TRUE(it->second.count(to)) << e.path().string() << ":" << n << " includes layer '" << to
                                          << "', but layer '" << layer << "' may use only the layers below it"
                                          << " (docs/architecture.md)";
      }
    }
  }
  EXPECT_GT(files, 100);  // the scan saw the code
  EXPECT_GT(edges, 100);
}

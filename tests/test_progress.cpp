#include <gtest/gtest.h>

#include "mpqat/util/progress.h"

using mpqat::util::format_duration;
using mpqat::util::Progress;

TEST(Progress, RendersRateEtaAndBar) {
  const std::string s = Progress::render("blocks", 25, 100, 50.0, "blk", "loss 0.1", 20);
  EXPECT_NE(s.find("[#####...............]"), std::string::npos) << s;
  EXPECT_NE(s.find("25/100 ( 25%)"), std::string::npos) << s;
  EXPECT_NE(s.find("0.50 blk/s"), std::string::npos) << s;
  EXPECT_NE(s.find("eta 2m30s"), std::string::npos) << s;  // 75 left at 0.5/s
  EXPECT_NE(s.find("| loss 0.1"), std::string::npos) << s;
}

TEST(Progress, PlainLineWithoutTotalOrBar) {
  const std::string s = Progress::render("tokens", 4096, 0, 2.0, "tok", "", 0);
  EXPECT_EQ(s.find('['), std::string::npos) << s;
  EXPECT_NE(s.find("2048.00 tok/s"), std::string::npos) << s;
  EXPECT_EQ(s.find("eta"), std::string::npos) << s;
}

TEST(Progress, Durations) {
  EXPECT_EQ(format_duration(12.34), "12.3s");
  EXPECT_EQ(format_duration(187), "3m07s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
}

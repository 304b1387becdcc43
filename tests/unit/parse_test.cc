// The one parser per user-facing value: every text the issue tracker found
// silently misread is an error naming the text.
#include "common/parse.h"

#include <gtest/gtest.h>

namespace gpubroker {
namespace {

TEST(Parse, Modes) {
  EXPECT_EQ(*ParseMode("0640"), 0640u);
  EXPECT_EQ(*ParseMode("640"), 0640u);
  EXPECT_EQ(*ParseMode("0"), 0u);
  for (const char* bad : {"40000000777", "0x1ff", "0644junk", "0999", "", "-644", "+644", " 644", "07777", "1777"}) {
    auto m = ParseMode(bad);
    EXPECT_EQ(m.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_NE(m.status().message().find("octal mode"), std::string::npos) << bad;
  }
}

TEST(Parse, Bytes) {
  EXPECT_EQ(*ParseBytes("4096"), 4096u);
  EXPECT_EQ(*ParseBytes("1GiB"), 1ull << 30);
  EXPECT_EQ(*ParseBytes("2MiB"), 2u << 20);
  EXPECT_EQ(*ParseBytes("9223372036854775807"), 9223372036854775807ull);
  EXPECT_NE(ParseBytes("-1").status().message().find("non-negative"), std::string::npos);
  EXPECT_NE(ParseBytes("99999999999TiB").status().message().find("overflows"), std::string::npos);
  EXPECT_NE(ParseBytes("99999999999999999999").status().message().find("overflows"), std::string::npos);
  EXPECT_NE(ParseBytes("12XB").status().message().find("unit"), std::string::npos);
  EXPECT_NE(ParseBytes("4 KiB").status().message().find("unit"), std::string::npos);
  EXPECT_FALSE(ParseBytes("MiB").ok());
  EXPECT_FALSE(ParseBytes("").ok());
}

TEST(Parse, Devices) {
  EXPECT_TRUE(ParseDevice("cpu")->cpu);
  EXPECT_EQ(ParseDevice("0")->ordinal, 0);
  EXPECT_EQ(ParseDevice("cuda:3")->ordinal, 3);
  EXPECT_TRUE(ParseDevice("GPU-a1d6f876-708f-2787-a05e-d22e6235cc19")->uuid.has_value());
  for (const char* bad : {"-1", "cuda:", "gpu0", "1x", "GPU-zz", "99999999999"}) {
    EXPECT_EQ(ParseDevice(bad).status().code(), Code::kInvalidArgument) << bad;
  }
}

TEST(Parse, UnsignedIsStrict) {
  EXPECT_EQ(*ParseUnsigned("8", 10, "n"), 8u);
  EXPECT_FALSE(ParseUnsigned("11", 10, "n").ok());
  EXPECT_FALSE(ParseUnsigned("-1", 10, "n").ok());
  EXPECT_FALSE(ParseUnsigned("1 ", 10, "n").ok());
  EXPECT_FALSE(ParseUnsigned("", 10, "n").ok());
}

TEST(Parse, PrintableEscapesWhatCouldForgeALogLine) {
  EXPECT_EQ(Printable("plain name/0"), "plain name/0");
  EXPECT_EQ(Printable("evil\n2026-01-01 [info] forged"), "evil\\x0a2026-01-01 [info] forged");
  EXPECT_EQ(Printable(std::string("a\0b\x1b[31m\x7f\xff\\", 11)), "a\\x00b\\x1b[31m\\x7f\\xff\\\\");
}

}  // namespace
}  // namespace gpubroker

// The journal format: journald files each line of stderr by its own "<N>"
// prefix, so every line of a message must carry one.
#include "broker/logging.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace gpubroker {
namespace {

// What the broker's logger writes to stderr while `log` runs, in `format`.
std::string Logged(const std::string& format, const std::function<void()>& log) {
  const std::string path = ::testing::TempDir() + "/gpb-logging-" + std::to_string(::getpid());
  int saved = ::dup(STDERR_FILENO);
  int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  EXPECT_GE(file, 0);
  ::dup2(file, STDERR_FILENO);
  EXPECT_TRUE(SetupLogging("info", format).ok());
  log();
  spdlog::default_logger()->flush();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(file);
  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  ::unlink(path.c_str());
  return text.str();
}

TEST(Logging, EveryLineOfAJournalMessageCarriesItsPriority) {
  std::string text = Logged("journal", [] {
    spdlog::error("first line\nsecond line\nthird line");
    spdlog::warn("one line");
  });
  EXPECT_EQ(text, "<3>first line\n<3>second line\n<3>third line\n<4>one line\n");
}

// JSON lines: one object per message; quotes, newlines, control characters
// and bytes that are not UTF-8 cannot break out of the "msg" string.
TEST(Logging, JsonLinesStayOneValidObjectWhateverTheMessage) {
  std::stringstream in(
      Logged("json", [] { spdlog::warn("quote \" backslash \\ newline \n tab \t bell \x07 bad \xff end"); }));
  std::string line, extra;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_FALSE(std::getline(in, extra)) << "one line per message";
  auto object = nlohmann::json::parse(line);
  EXPECT_EQ(object["level"], "warning");
  EXPECT_EQ(object["msg"], "quote \" backslash \\ newline \n tab \t bell \x07 bad \xef\xbf\xbd end");
}

}  // namespace
}  // namespace gpubroker

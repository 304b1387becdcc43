// The journal format: journald files each line of stderr by its own "<N>"
// prefix, so every line of a message must carry one.
#include "broker/logging.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace gpubroker {
namespace {

TEST(Logging, EveryLineOfAJournalMessageCarriesItsPriority) {
  const std::string path = ::testing::TempDir() + "/gpb-logging-" + std::to_string(::getpid());
  int saved = ::dup(STDERR_FILENO);
  int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(file, 0);
  ::dup2(file, STDERR_FILENO);
  ASSERT_TRUE(SetupLogging("info", "journal").ok());
  spdlog::error("first line\nsecond line\nthird line");
  spdlog::warn("one line");
  spdlog::default_logger()->flush();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(file);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), "<3>first line\n<3>second line\n<3>third line\n<4>one line\n");
  ::unlink(path.c_str());
}

// JSON lines: one object per message; quotes, newlines, control characters
// and bytes that are not UTF-8 cannot break out of the "msg" string.
TEST(Logging, JsonLinesStayOneValidObjectWhateverTheMessage) {
  const std::string path = ::testing::TempDir() + "/gpb-logging-json-" + std::to_string(::getpid());
  int saved = ::dup(STDERR_FILENO);
  int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(file, 0);
  ::dup2(file, STDERR_FILENO);
  ASSERT_TRUE(SetupLogging("info", "json").ok());
  spdlog::warn("quote \" backslash \\ newline \n tab \t bell \x07 bad \xff end");
  spdlog::default_logger()->flush();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(file);
  std::ifstream in(path);
  std::string line, extra;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_FALSE(std::getline(in, extra)) << "one line per message";
  auto object = nlohmann::json::parse(line);
  EXPECT_EQ(object["level"], "warning");
  EXPECT_EQ(object["msg"], "quote \" backslash \\ newline \n tab \t bell \x07 bad \xef\xbf\xbd end");
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace gpubroker

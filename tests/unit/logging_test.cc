// The journal format: journald files each line of stderr by its own "<N>"
// prefix, so every line of a message must carry one.
#include "broker/logging.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
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

}  // namespace
}  // namespace gpubroker

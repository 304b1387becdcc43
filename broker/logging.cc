#include "broker/logging.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace gpubroker {
namespace {

// %j: the message as a JSON string (quoted and escaped; bytes that are not
// UTF-8 become U+FFFD rather than an exception).
class JsonMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    std::string text = nlohmann::json(std::string(msg.payload.data(), msg.payload.size()))
                           .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonMessage>(); }
};

// %J: the message for journald's SyslogLevelPrefix: each of its lines starts
// with the record's syslog priority ("<3>"), so a message that spans lines
// files every line at its priority, not only the first.
class JournalLines final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    static constexpr char kPriority[] = {'7', '7', '6', '4', '3', '2', '6'};  // trace .. critical, off
    const char prefix[] = {'<', kPriority[std::min<int>(msg.level, sizeof kPriority - 1)], '>'};
    dest.append(prefix, prefix + sizeof prefix);
    for (char c : std::string_view(msg.payload.data(), msg.payload.size())) {
      dest.push_back(c);
      if (c == '\n') dest.append(prefix, prefix + sizeof prefix);
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JournalLines>(); }
};

// True when stderr is the journal's stream: systemd sets $JOURNAL_STREAM to
// its "device:inode", and a redirect elsewhere changes them.
bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  struct stat st {};
  if (stream == nullptr || ::fstat(STDERR_FILENO, &st) != 0) return false;
  return std::string(stream) == std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

}  // namespace

Status SetupLogging(const std::string& level, const std::string& format) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") {
    return ConfigError("unknown log level '" + level + "'");
  }
  auto logger = std::make_shared<spdlog::logger>(
      "gpubrokerd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  std::string chosen = format == "auto" ? (StderrIsJournal() ? "journal" : "text") : format;
  if (chosen == "journal") {
    // journald stamps each line itself and files it under the <N> priority.
    auto f = std::make_unique<spdlog::pattern_formatter>();
    f->add_flag<JournalLines>('J').set_pattern("%J");
    logger->set_formatter(std::move(f));
  } else if (chosen == "json") {
    auto f = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    f->add_flag<JsonMessage>('j').set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","pid":%P,"msg":%j})");
    logger->set_formatter(std::move(f));
  } else if (chosen == "text") {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
  } else {
    return ConfigError("unknown log format '" + format + "'");
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
  return Status::Ok();
}

}  // namespace gpubroker

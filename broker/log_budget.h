// A budget of log lines per uid: what any local user's requests make the
// broker log (a connection, a create, a destroy) cannot flood the log, where
// journald's own rate limit would then drop the lines that matter. Each uid
// may have kBurst lines at once and kPerSecond a second after that, and all
// of them together ten times that (one user with many uids, from subordinate
// uid ranges, gets no more than the global budget); the first line allowed
// after some were dropped says how many.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace gpubroker {

class LogBudget {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr double kPerSecond = 20;
  static constexpr double kBurst = 200;
  static constexpr size_t kMaxUids = 4096;  // beyond: the least recently seen goes

  // Whether `uid` may have one more line now; if so, `dropped` (when not
  // null) is set to the lines refused to it since its last one.
  bool Allow(uid_t uid, Clock::time_point now, uint64_t* dropped = nullptr);
  bool Allow(uid_t uid, uint64_t* dropped = nullptr) { return Allow(uid, Clock::now(), dropped); }

  // " (N more lines from uid U were not logged)" or "", for the line allowed.
  static std::string Note(uid_t uid, uint64_t dropped);

 private:
  struct Bucket {
    double tokens = kBurst;
    Clock::time_point last{};
    uint64_t dropped = 0;
  };
  // Takes a token from `b` (filled at `rate` a second up to `burst`).
  static bool Take(Bucket& b, double rate, double burst, Clock::time_point now);

  std::map<uid_t, Bucket> buckets_;
  Bucket global_{10 * kBurst, {}, 0};
};

}  // namespace gpubroker

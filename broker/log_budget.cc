#include "broker/log_budget.h"

#include <algorithm>

namespace gpubroker {

bool LogBudget::Take(Bucket& b, double rate, double burst, Clock::time_point now) {
  const double elapsed = std::chrono::duration<double>(now - b.last).count();
  b.tokens = std::min(burst, b.tokens + std::max(0.0, elapsed) * rate);
  b.last = now;
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

bool LogBudget::Allow(uid_t uid, Clock::time_point now, uint64_t* dropped) {
  auto it = buckets_.find(uid);
  if (it == buckets_.end()) {
    if (buckets_.size() >= kMaxUids) {  // forget the quietest uid
      auto oldest = std::min_element(buckets_.begin(), buckets_.end(),
                                     [](const auto& a, const auto& b) { return a.second.last < b.second.last; });
      buckets_.erase(oldest);
    }
    it = buckets_.emplace(uid, Bucket{kBurst, now, 0}).first;
  }
  Bucket& b = it->second;
  if (global_.last == Clock::time_point{}) global_.last = now;
  // The uid's token first: a uid over its own budget takes nothing from the others'.
  if (!Take(b, kPerSecond, kBurst, now) || !Take(global_, 10 * kPerSecond, 10 * kBurst, now)) {
    ++b.dropped;
    return false;
  }
  if (dropped != nullptr) *dropped = b.dropped;
  b.dropped = 0;
  return true;
}

std::string LogBudget::Note(uid_t uid, uint64_t dropped) {
  if (dropped == 0) return {};
  return " (" + std::to_string(dropped) + " more lines from uid " + std::to_string(uid) +
         " were not logged: at most " + std::to_string(static_cast<int>(kPerSecond)) + " a second)";
}

}  // namespace gpubroker

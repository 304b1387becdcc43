#include "client/src/live_support.h"

#include <algorithm>
#include <thread>

#include "common/futex.h"

namespace gpubroker::live {
namespace {

// More empty wakes than this in a row: a flood, met with a check every kBackoff.
constexpr int kWakesBeforeBackoff = 64;
constexpr std::chrono::milliseconds kBackoff{1};

}  // namespace

std::chrono::nanoseconds Left(std::optional<Clock::time_point> deadline) {
  if (!deadline) return std::chrono::nanoseconds(-1);
  return std::max(std::chrono::nanoseconds(0), *deadline - Clock::now());
}

std::optional<Clock::time_point> DeadlineAfter(int timeout_ms) {
  if (timeout_ms < 0) return std::nullopt;
  return Clock::now() + std::chrono::milliseconds(timeout_ms);
}

Status StillNamed(const RegistryReader& registry, const View& view) {
  Result<SlotDescriptor> d = registry.Lookup(view.name());
  if (d.ok() && d->allocation_id == view.slot().allocation_id) return Status::Ok();
  if (!d.ok() && d.status().code() != Code::kNotFound) return Status::Ok();  // unreadable now: not a verdict
  return NotFound("slot '" + view.name() + "' was " + (d.ok() ? "replaced" : "destroyed") + ": open it again");
}

void SleepWhileUnchanged(const std::atomic<uint32_t>* word, uint32_t seen, Clock::time_point until) {
  int empty_wakes = 0;
  while (word->load(std::memory_order_acquire) == seen) {
    auto left = until - Clock::now();
    if (left <= Clock::duration::zero()) return;
    if (empty_wakes < kWakesBeforeBackoff) {
      FutexWait(word, seen, left);
      ++empty_wakes;
    } else {
      std::this_thread::sleep_for(std::min<Clock::duration>(left, kBackoff));  // under a flood of wakes
    }
  }
}

}  // namespace gpubroker::live

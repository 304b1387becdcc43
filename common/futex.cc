#include "common/futex.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace gpubroker {

static_assert(sizeof(std::atomic<uint32_t>) == 4 && std::atomic<uint32_t>::is_always_lock_free);

FutexWaitResult FutexWait(const std::atomic<uint32_t>* word, uint32_t expected, std::chrono::nanoseconds timeout) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout.count() >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
    tsp = &ts;
  }
  // FUTEX_WAIT only reads the word: it works on a read-only mapping.
  long rc = ::syscall(SYS_futex, const_cast<std::atomic<uint32_t>*>(word), FUTEX_WAIT, expected, tsp, nullptr, 0);
  if (rc == 0 || errno == EAGAIN) return FutexWaitResult::kWoken;
  if (errno == ETIMEDOUT) return FutexWaitResult::kTimedOut;
  return FutexWaitResult::kInterrupted;
}

void FutexWakeAll(std::atomic<uint32_t>* word) { (void)FutexWake(word, INT_MAX); }

int FutexWake(std::atomic<uint32_t>* word, int n) {
  long woken = ::syscall(SYS_futex, word, FUTEX_WAKE, n, nullptr, nullptr, 0);
  return woken < 0 ? 0 : static_cast<int>(woken);
}

}  // namespace gpubroker

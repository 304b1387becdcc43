// FutexWaker: every waiter on a word wakes, those past the first
// kInline by the waker's own thread.
#include "broker/futex_waker.h"

#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/futex.h"

namespace gpubroker {
namespace {

// Whether thread `tid` of this process sleeps in the kernel on a futex.
bool AsleepOnAFutex(pid_t tid) {
  std::ifstream wchan("/proc/self/task/" + std::to_string(tid) + "/wchan");
  std::string where;
  wchan >> where;
  return where.rfind("futex", 0) == 0;
}

TEST(FutexWaker, WakesEveryWaiterAlsoPastTheOnesItWakesAtOnce) {
  constexpr int kWaiters = 3 * FutexWaker::kInline;
  std::atomic<uint32_t> word{0};
  std::vector<std::atomic<pid_t>> tids(kWaiters);
  std::atomic<int> timed_out{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      tids[i] = static_cast<pid_t>(::syscall(SYS_gettid));
      while (word.load(std::memory_order_acquire) == 0) {
        if (FutexWait(&word, 0, std::chrono::seconds(30)) == FutexWaitResult::kTimedOut) ++timed_out;
      }
    });
  }
  // Every waiter asleep on the word before the wake, so that kInline of
  // them are left for the waker's thread (a condition polled, not a delay).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int asleep = 0;
  while (asleep < kWaiters && std::chrono::steady_clock::now() < deadline) {
    asleep = 0;
    for (auto& tid : tids) asleep += tid.load() != 0 && AsleepOnAFutex(tid.load());
    std::this_thread::yield();
  }
  ASSERT_EQ(asleep, kWaiters) << "the waiters did not all go to sleep";
  FutexWaker waker;
  word.store(1, std::memory_order_release);
  waker.WakeAll(&word);
  for (auto& t : threads) t.join();
  EXPECT_EQ(timed_out.load(), 0) << "waiters past the first " << FutexWaker::kInline << " were left asleep";
}

TEST(FutexWaker, StopFinishesWhatWasHandedOver) {
  FutexWaker waker;
  std::atomic<uint32_t> idle{0};
  waker.WakeAll(&idle);  // nobody waits: nothing is handed over, no thread started
  waker.Stop();
  waker.Stop();  // twice is harmless
}

}  // namespace
}  // namespace gpubroker

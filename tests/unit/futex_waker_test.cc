// FutexWaker: every waiter on a word wakes, those past the first
// kInline by the waker's own thread.
#include "broker/futex_waker.h"

#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <iterator>
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

// Threads parked on a word until it turns non-zero, each counting the
// times its wait timed out instead of being woken.
class ParkedWaiters {
 public:
  ParkedWaiters(std::atomic<uint32_t>* word, int n, std::chrono::seconds patience) : tids_(n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, word, i, patience] {
        tids_[i] = static_cast<pid_t>(::syscall(SYS_gettid));
        while (word->load(std::memory_order_acquire) == 0) {
          if (FutexWait(word, 0, patience) == FutexWaitResult::kTimedOut) ++timed_out_;
        }
      });
    }
  }
  // Whether every thread sleeps on the word (a condition polled, not a delay).
  bool AllAsleep() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      size_t asleep = 0;
      for (auto& tid : tids_) asleep += tid.load() != 0 && AsleepOnAFutex(tid.load());
      if (asleep == tids_.size()) return true;
      std::this_thread::yield();
    }
    return false;
  }
  // Joins every thread; returns how many waits timed out.
  int Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
    return timed_out_.load();
  }
  ~ParkedWaiters() {
    if (!threads_.empty()) Join();
  }

 private:
  std::vector<std::atomic<pid_t>> tids_;
  std::atomic<int> timed_out_{0};
  std::vector<std::thread> threads_;
};

int ThreadsOfThisProcess() {
  auto tasks = std::filesystem::directory_iterator("/proc/self/task");
  return static_cast<int>(std::distance(begin(tasks), end(tasks)));
}

TEST(FutexWaker, WakesEveryWaiterAlsoPastTheOnesItWakesAtOnce) {
  std::atomic<uint32_t> word{0};
  // Every waiter asleep on the word before the wake, so that some are left
  // for the waker's thread.
  ParkedWaiters waiters(&word, 3 * FutexWaker::kInline, std::chrono::seconds(30));
  ASSERT_TRUE(waiters.AllAsleep()) << "the waiters did not all go to sleep";
  FutexWaker waker;
  word.store(1, std::memory_order_release);
  waker.WakeAll(&word);
  EXPECT_EQ(waiters.Join(), 0) << "waiters past the first " << FutexWaker::kInline << " were left asleep";
}

// Stop right after a hand-over still wakes every waiter handed over: once
// Stop returns, nothing else ever would, so a waiter it left behind times out.
TEST(FutexWaker, StopFinishesWhatWasHandedOver) {
  std::atomic<uint32_t> word{0};
  ParkedWaiters waiters(&word, 4 * FutexWaker::kInline, std::chrono::seconds(5));
  ASSERT_TRUE(waiters.AllAsleep()) << "the waiters did not all go to sleep";
  FutexWaker waker;
  word.store(1, std::memory_order_release);
  waker.WakeAll(&word);
  waker.Stop();
  EXPECT_EQ(waiters.Join(), 0) << "Stop returned with woken-to-be waiters still asleep";
  waker.Stop();  // twice is harmless
}

TEST(FutexWaker, NoWaiterNoThread) {
  const int before = ThreadsOfThisProcess();
  FutexWaker waker;
  std::atomic<uint32_t> idle{0};
  waker.WakeAll(&idle);  // nobody waits: nothing is handed over
  EXPECT_EQ(ThreadsOfThisProcess(), before) << "a wake of nobody started the waker's thread";
  waker.Stop();
}

}  // namespace
}  // namespace gpubroker

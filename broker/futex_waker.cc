#include "broker/futex_waker.h"

#include <algorithm>
#include <chrono>
#include <climits>

#include "common/futex.h"

namespace gpubroker {

void FutexWaker::WakeAll(std::atomic<uint32_t>* word) {
  if (FutexWake(word, kInline) < kInline) return;  // every waiter there was
  {
    MutexLock lock(mu_);
    if (std::find(pending_.begin(), pending_.end(), word) == pending_.end()) pending_.push_back(word);
  }
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  kick_.fetch_add(1, std::memory_order_release);
  FutexWake(&kick_, 1);
}

void FutexWaker::Stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  kick_.fetch_add(1, std::memory_order_release);
  FutexWake(&kick_, 1);
  if (thread_.joinable()) thread_.join();
}

void FutexWaker::Run() {
  while (true) {
    uint32_t seen = kick_.load(std::memory_order_acquire);
    std::vector<std::atomic<uint32_t>*> words;
    bool stopping = false;
    {
      MutexLock lock(mu_);
      words.swap(pending_);
      stopping = stopping_;
    }
    for (std::atomic<uint32_t>* w : words) FutexWakeAll(w);
    if (stopping) return;
    if (words.empty()) FutexWait(&kick_, seen, std::chrono::nanoseconds(-1));
  }
}

}  // namespace gpubroker

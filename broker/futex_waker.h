// Wakes the readers and writers waiting on the registry's futex words
// without letting a crowd of waiters hold up the broker. Anyone who maps the
// registry (every connected client) can park threads on any record's words,
// and FUTEX_WAKE takes time in proportion to the waiters it wakes: 20,000
// parked threads made one commit cost the event loop ~0.1 s. So the first
// kInline waiters are woken at once, on the caller's thread (the latency a
// commit's readers see), and any beyond them by a thread of this class's own.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "common/thread_annotations.h"

namespace gpubroker {

class FutexWaker {
 public:
  // Waiters woken on the caller's thread; more than any one slot's readers
  // usually are.
  static constexpr int kInline = 16;

  FutexWaker() = default;
  ~FutexWaker() { Stop(); }
  FutexWaker(const FutexWaker&) = delete;
  FutexWaker& operator=(const FutexWaker&) = delete;

  // Wakes every waiter on `word`: kInline before it returns, the rest soon
  // after. Called from one thread (the broker's).
  void WakeAll(std::atomic<uint32_t>* word) GPB_EXCLUDES(mu_);
  // Finishes the wakes handed over and ends the thread; before the words'
  // memory goes.
  void Stop() GPB_EXCLUDES(mu_);

 private:
  void Run() GPB_EXCLUDES(mu_);

  Mutex mu_;
  std::vector<std::atomic<uint32_t>*> pending_ GPB_GUARDED_BY(mu_);
  bool stopping_ GPB_GUARDED_BY(mu_) = false;
  std::atomic<uint32_t> kick_{0};  // the thread sleeps on it
  std::thread thread_;             // started at the first hand-over; the caller's thread alone touches it
};

}  // namespace gpubroker

#include "broker/fd_closer.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <deque>
#include <utility>

#include "common/futex.h"
#include "common/thread_annotations.h"

#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83  // Linux 6.16; older headers lack it
#endif

namespace gpubroker {

struct FdCloser::Shared {
  Mutex mu;
  std::deque<std::pair<int, bool>> queue GPB_GUARDED_BY(mu);  // fd, drain
  bool stopping GPB_GUARDED_BY(mu) = false;
  std::atomic<uint32_t> kick{0};  // the thread sleeps on it
  std::atomic<uint32_t> done{0};  // bumped as the thread ends
  std::atomic<uint64_t> pending{0};
  std::atomic<uint64_t> closed{0};

  void Run() GPB_EXCLUDES(mu) {
    while (true) {
      uint32_t seen = kick.load(std::memory_order_acquire);
      std::deque<std::pair<int, bool>> batch;
      bool stop = false;
      {
        MutexLock lock(mu);
        batch.swap(queue);
        stop = stopping;
      }
      for (auto [fd, drain] : batch) {
        if (drain) {
          char sink[256];
          while (::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
          }
        }
        ::close(fd);  // may wait as long as a client makes it: this thread's job
        pending.fetch_sub(1, std::memory_order_relaxed);
        closed.fetch_add(1, std::memory_order_relaxed);
      }
      if (stop && batch.empty()) break;
      if (batch.empty()) FutexWait(&kick, seen, std::chrono::nanoseconds(-1));
    }
    done.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&done);
  }
};

FdCloser::FdCloser() : shared_(std::make_shared<Shared>()) {}

void FdCloser::Close(UniqueFd fd, bool drain) {
  if (!fd.valid()) return;
  {
    MutexLock lock(shared_->mu);
    shared_->queue.emplace_back(fd.release(), drain);
  }
  shared_->pending.fetch_add(1, std::memory_order_relaxed);
  if (!thread_.joinable()) thread_ = std::thread([shared = shared_] { shared->Run(); });
  shared_->kick.fetch_add(1, std::memory_order_release);
  FutexWake(&shared_->kick, 1);
}

uint64_t FdCloser::pending() const { return shared_->pending.load(std::memory_order_relaxed); }
uint64_t FdCloser::closed() const { return shared_->closed.load(std::memory_order_relaxed); }

void FdCloser::Stop(std::chrono::milliseconds patience) {
  if (!thread_.joinable()) return;
  {
    MutexLock lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->kick.fetch_add(1, std::memory_order_release);
  FutexWake(&shared_->kick, 1);
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (shared_->done.load(std::memory_order_acquire) == 0) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) break;
    (void)FutexWait(&shared_->done, 0, left);
  }
  if (shared_->done.load(std::memory_order_acquire) != 0) {
    thread_.join();
  } else {
    thread_.detach();  // a close stuck by a client: the thread holds the queue, the exit ends it
  }
}

bool RefuseDescriptors(int listening_socket) {
  int no = 0;
  return ::setsockopt(listening_socket, SOL_SOCKET, SO_PASSRIGHTS, &no, sizeof no) == 0;
}

}  // namespace gpubroker

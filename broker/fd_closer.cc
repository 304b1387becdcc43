#include "broker/fd_closer.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <deque>
#include <optional>
#include <utility>

#include "common/futex.h"
#include "common/thread_annotations.h"

#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83  // Linux 6.16; older headers lack it
#endif

namespace gpubroker {
namespace {

// A socket is made to close at once (SO_LINGER 0: the kernel resets it
// instead of waiting for unsent bytes); what else is slow to close (a file on
// a hung mount) holds one of the closer's threads.
void CloseSoon(int fd, bool drain) {
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (drain) {  // what the peer sent and nobody read: a little, nothing more coming
      ::shutdown(fd, SHUT_RD);
      char sink[256];
      for (int i = 0; i < 64 && ::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
      }
    }
    linger now{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
  }
  ::close(fd);
}

}  // namespace

struct FdCloser::Shared {
  Mutex mu;
  std::deque<std::pair<int, bool>> queue GPB_GUARDED_BY(mu);  // fd, drain
  bool stopping GPB_GUARDED_BY(mu) = false;
  int idle GPB_GUARDED_BY(mu) = 0;     // threads waiting for work
  int threads GPB_GUARDED_BY(mu) = 0;  // threads started and not ended
  std::atomic<uint32_t> kick{0};       // idle threads sleep on it
  std::atomic<uint32_t> done{0};       // threads ended
  std::atomic<uint64_t> pending{0};
  std::atomic<uint64_t> closed{0};

  // One descriptor at a time, so that a close stuck in one thread leaves the
  // rest of the queue to the others.
  void Run() GPB_EXCLUDES(mu) {
    while (true) {
      uint32_t seen = kick.load(std::memory_order_acquire);
      std::optional<std::pair<int, bool>> next;
      {
        MutexLock lock(mu);
        if (!queue.empty()) {
          next = queue.front();
          queue.pop_front();
        } else if (stopping) {
          --threads;
          break;
        } else {
          ++idle;
        }
      }
      if (next) {
        CloseSoon(next->first, next->second);  // may wait as long as a client makes it: this thread's job
        pending.fetch_sub(1, std::memory_order_relaxed);
        closed.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      FutexWait(&kick, seen, std::chrono::nanoseconds(-1));
      MutexLock lock(mu);
      --idle;
    }
    done.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&done);
  }
};

FdCloser::FdCloser() : shared_(std::make_shared<Shared>()) {}

void FdCloser::Close(UniqueFd fd, bool drain) {
  if (!fd.valid()) return;
  bool start = false;
  {
    MutexLock lock(shared_->mu);
    shared_->queue.emplace_back(fd.release(), drain);
    // Every thread busy (one may be stuck on a close a client keeps slow):
    // another, up to kMaxThreads.
    if (shared_->idle == 0 && shared_->threads < kMaxThreads) {
      ++shared_->threads;
      start = true;
    }
  }
  shared_->pending.fetch_add(1, std::memory_order_relaxed);
  if (start) threads_.emplace_back([shared = shared_] { shared->Run(); });
  shared_->kick.fetch_add(1, std::memory_order_release);
  FutexWake(&shared_->kick, 1);
}

uint64_t FdCloser::pending() const { return shared_->pending.load(std::memory_order_relaxed); }
uint64_t FdCloser::closed() const { return shared_->closed.load(std::memory_order_relaxed); }

void FdCloser::Stop(std::chrono::milliseconds patience) {
  if (threads_.empty()) return;
  {
    MutexLock lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->kick.fetch_add(1, std::memory_order_release);
  FutexWakeAll(&shared_->kick);
  const auto started = static_cast<uint32_t>(threads_.size());
  const auto deadline = std::chrono::steady_clock::now() + patience;
  for (uint32_t ended; (ended = shared_->done.load(std::memory_order_acquire)) < started;) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) break;
    (void)FutexWait(&shared_->done, ended, left);
  }
  // Threads still in a close that a client keeps stuck are left to it (they
  // hold the queue, not this object); the process's exit ends them.
  const bool all_ended = shared_->done.load(std::memory_order_acquire) >= started;
  for (auto& t : threads_) {
    if (all_ended) {
      t.join();
    } else {
      t.detach();
    }
  }
  threads_.clear();
}

bool RefuseDescriptors(int listening_socket) {
  int no = 0;
  return ::setsockopt(listening_socket, SOL_SOCKET, SO_PASSRIGHTS, &no, sizeof no) == 0;
}

}  // namespace gpubroker

// Versions: how long after a commit a waiting reader wakes, next to a raw
// futex ping-pong between two processes measured in the same run (the floor:
// one process stores a word and wakes, the other returns from FUTEX_WAIT).
//
// Both sides take the same steps each round: the waiter says it is ready
// over a pipe and goes to sleep (in Reader::Wait, or in FUTEX_WAIT); the
// other side lets it get there (a 200 us spin), reads the clock, and commits
// (Writer::Commit: one message to the broker, whose futex wake ends the wait;
// the Begin before it is a producer's step before it writes, not timed) or
// stores and wakes. The waiter reads the clock when its wait
// returns, and again once it holds the version (Reader::Acquire: a third
// message). The clock is CLOCK_MONOTONIC, which both processes share.
// Usage: live_bench [--iterations N] [--quick]
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/integration/harness.h"

using gpubroker::testing::BrokerProcess;

namespace {

uint64_t NowNs() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void SpinFor(uint64_t ns) {
  uint64_t end = NowNs() + ns;
  while (NowNs() < end) {
  }
}

struct Percentiles {
  double p50, p99;
};

Percentiles Of(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

// What a waiter measured, sent back to the parent over a pipe.
struct Sample {
  double wake_us;
  double hold_us;
};

void WriteAll(int fd, const void* p, size_t n) {
  auto* b = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, b, n);
    if (w <= 0) std::abort();
    b += w;
    n -= static_cast<size_t>(w);
  }
}

bool ReadAll(int fd, void* p, size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::read(fd, b, n);
    if (r <= 0) return false;
    b += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

constexpr uint64_t kSettleNs = 200000;  // lets the waiter fall asleep

std::vector<Sample> FutexPingPong(int iterations) {
  auto* shared = static_cast<std::atomic<uint64_t>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* word = reinterpret_cast<std::atomic<uint32_t>*>(&shared[0]);
  std::atomic<uint64_t>& stamp = shared[1];
  int ready[2], results[2];
  if (::pipe(ready) != 0 || ::pipe(results) != 0) std::abort();
  pid_t child = ::fork();
  if (child == 0) {
    std::vector<Sample> out;
    for (int i = 0; i < iterations; ++i) {
      uint32_t seen = word->load(std::memory_order_acquire);
      char c = 'r';
      WriteAll(ready[1], &c, 1);
      while (word->load(std::memory_order_acquire) == seen) {
        ::syscall(SYS_futex, word, FUTEX_WAIT, seen, nullptr, nullptr, 0);
      }
      uint64_t t1 = NowNs();
      double us = static_cast<double>(t1 - stamp.load(std::memory_order_acquire)) / 1e3;
      out.push_back({us, us});
    }
    WriteAll(results[1], out.data(), out.size() * sizeof(Sample));
    ::_exit(0);
  }
  for (int i = 0; i < iterations; ++i) {
    char c;
    if (!ReadAll(ready[0], &c, 1)) std::abort();
    SpinFor(kSettleNs);
    stamp.store(NowNs(), std::memory_order_release);
    word->fetch_add(1, std::memory_order_release);
    ::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  }
  std::vector<Sample> out(static_cast<size_t>(iterations));
  if (!ReadAll(results[0], out.data(), out.size() * sizeof(Sample))) std::abort();
  ::waitpid(child, nullptr, 0);
  return out;
}

std::vector<Sample> CommitToWake(const BrokerProcess& broker, int iterations) {
  auto client = broker.Connect("live_bench writer");
  if (!client.ok()) std::abort();
  gpubroker::CreateOptions o;
  o.name = "live-bench";
  o.shape = {64};
  o.backend = gpubroker::BackendKind::kHost;
  o.buffers = 2;
  if (!client->Create(o).ok()) std::abort();
  int ready[2], results[2];
  if (::pipe(ready) != 0 || ::pipe(results) != 0) std::abort();
  pid_t child = ::fork();
  if (child == 0) {
    auto c = broker.Connect("live_bench reader");
    if (!c.ok()) ::_exit(1);
    auto reader = c->OpenReader("live-bench");
    if (!reader.ok()) ::_exit(1);
    std::vector<Sample> out;
    uint64_t last = 0;
    for (int i = 0; i < iterations; ++i) {
      char r = 'r';
      WriteAll(ready[1], &r, 1);
      auto v = reader->Wait(last, 10000);
      uint64_t woke = NowNs();
      if (!v.ok()) ::_exit(2);
      auto got = reader->Acquire();
      uint64_t held = NowNs();
      if (!got.ok()) ::_exit(3);
      uint64_t stamp;
      std::memcpy(&stamp, reader->view().data(got->buffer), sizeof stamp);
      if (!reader->Release().ok()) ::_exit(4);
      out.push_back({static_cast<double>(woke - stamp) / 1e3, static_cast<double>(held - stamp) / 1e3});
      last = got->version;
    }
    WriteAll(results[1], out.data(), out.size() * sizeof(Sample));
    ::_exit(0);
  }
  auto writer = client->OpenWriter("live-bench");
  if (!writer.ok()) std::abort();
  for (int i = 0; i < iterations; ++i) {
    char c;
    if (!ReadAll(ready[0], &c, 1)) std::abort();
    auto buffer = writer->Begin(-1);  // a producer begins before it writes: not timed
    if (!buffer.ok()) std::abort();
    SpinFor(kSettleNs);
    uint64_t t0 = NowNs();
    std::memcpy(writer->view().data(*buffer), &t0, sizeof t0);
    if (!writer->Commit().ok()) std::abort();
  }
  std::vector<Sample> out(static_cast<size_t>(iterations));
  int status = 0;
  if (!ReadAll(results[0], out.data(), out.size() * sizeof(Sample))) {
    ::waitpid(child, &status, 0);
    std::fprintf(stderr, "reader failed (status %d)\n", status);
    std::exit(1);
  }
  ::waitpid(child, &status, 0);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 5000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) iterations = std::atoi(argv[++i]);
    if (a == "--quick") iterations = 200;
  }
  auto broker = BrokerProcess::Start();
  if (!broker) return 1;
  std::vector<Sample> base = FutexPingPong(iterations);
  std::vector<Sample> ours = CommitToWake(*broker, iterations);
  std::vector<double> b, wake, hold;
  for (const Sample& s : base) b.push_back(s.wake_us);
  for (const Sample& s : ours) {
    wake.push_back(s.wake_us);
    hold.push_back(s.hold_us);
  }
  Percentiles pb = Of(b), pw = Of(wake), ph = Of(hold);
  std::printf("%d rounds; a waiter asleep 200 us before each\n", iterations);
  std::printf("  raw futex ping-pong (store + FUTEX_WAKE -> FUTEX_WAIT returns): p50 %.1f us, p99 %.1f us\n", pb.p50,
              pb.p99);
  std::printf("  commit -> Reader::Wait returns:                                 p50 %.1f us, p99 %.1f us\n", pw.p50,
              pw.p99);
  std::printf("  commit -> Reader::Acquire returns (version held):               p50 %.1f us, p99 %.1f us\n", ph.p50,
              ph.p99);
  std::printf("summary\tcommit -> waiting reader wakes (p50)\t%.2f\t%.2f\tus\t-\n", pw.p50, pb.p50);
  std::printf("summary\tcommit -> waiting reader wakes (p99)\t%.2f\t%.2f\tus\t-\n", pw.p99, pb.p99);
  std::printf("summary\tcommit -> reader holds the version (p50)\t%.2f\t%.2f\tus\tmax<100\n", ph.p50, pb.p50);
  return 0;
}

// Versions: how long after a commit a waiting reader wakes, next to a raw
// futex ping-pong between two processes measured in the same run (the floor:
// one process stores a word and wakes, the other returns from FUTEX_WAIT).
//
// Both sides take the same steps each round: the waiter says it is ready
// over a pipe and goes to sleep (in Reader::Wait, or in FUTEX_WAIT); the
// other side lets it get there (a 200 us spin), reads the clock, and commits
// (Writer::Commit; the Begin and the writes before it are a producer's steps
// before it commits, not timed: on CUDA a kernel stamps the buffer and the
// writer's stream is synchronised first) or stores and wakes. The waiter
// reads the clock when its wait returns, and again once it holds the version
// (Reader::Acquire: one more message), then checks, untimed, that the buffer
// holds that version. The clock is CLOCK_MONOTONIC, which both processes
// share; on CUDA the broker's commit stamp (CLOCK_REALTIME) also shows when
// the commit reached it.
//
// Host memory always; cuda_vmm and cuda_ipc where the broker has a GPU (each
// in a process of its own: a process that has used CUDA cannot fork one that
// does). As root, host memory again with the reader in a pid namespace of
// its own (and its own /proc), as in a container: its wake-up beside the
// host reader's, and how many requests the broker answers while a reader
// waits 5 s for nothing, there and on the host (a waiter sends none).
// Usage: live_bench [--iterations N] [--quick]
#include <linux/futex.h>
#include <sched.h>
#include <sys/mount.h>
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

#include "tests/gpu/kernels.h"
#include "tests/integration/harness.h"

using gpubroker::BackendKind;
using gpubroker::testing::BrokerProcess;

namespace {

uint64_t Clock(clockid_t id) {
  timespec ts;
  ::clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}
uint64_t NowNs() { return Clock(CLOCK_MONOTONIC); }

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

template <typename T>
std::vector<T> ReadVector(int fd, size_t n) {
  std::vector<T> out(n);
  if (!ReadAll(fd, out.data(), n * sizeof(T))) out.clear();
  return out;
}

constexpr uint64_t kSettleNs = 200000;  // lets the waiter fall asleep

// One round, as both sides saw it.
struct Round {
  double wake_us = 0;       // commit -> Reader::Wait returned
  double hold_us = 0;       // commit -> Reader::Acquire returned
  double call_us = 0;       // Writer::Commit itself
  double at_broker_us = 0;  // commit -> the broker's commit stamp (CLOCK_REALTIME)
};

std::vector<Round> FutexPingPong(int iterations) {
  auto* shared = static_cast<std::atomic<uint64_t>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* word = reinterpret_cast<std::atomic<uint32_t>*>(&shared[0]);
  std::atomic<uint64_t>& stamp = shared[1];
  int ready[2], results[2];
  if (::pipe(ready) != 0 || ::pipe(results) != 0) std::abort();
  pid_t child = ::fork();
  if (child == 0) {
    std::vector<double> out;
    for (int i = 0; i < iterations; ++i) {
      uint32_t seen = word->load(std::memory_order_acquire);
      char c = 'r';
      WriteAll(ready[1], &c, 1);
      while (word->load(std::memory_order_acquire) == seen) {
        ::syscall(SYS_futex, word, FUTEX_WAIT, seen, nullptr, nullptr, 0);
      }
      out.push_back(static_cast<double>(NowNs() - stamp.load(std::memory_order_acquire)) / 1e3);
    }
    WriteAll(results[1], out.data(), out.size() * sizeof(double));
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
  std::vector<double> us = ReadVector<double>(results[0], static_cast<size_t>(iterations));
  ::waitpid(child, nullptr, 0);
  std::vector<Round> out;
  for (double u : us) out.push_back({u, u, 0, 0});
  return out;
}

constexpr uint64_t kSlotBytes = 64 << 10;
constexpr uint64_t kSeed = 0x5eed;

// The writer's and reader's work on a buffer: a kernel on CUDA, memcpy on
// the host. `stream` is null on the host.
struct Side {
  BackendKind backend;
  void* stream = nullptr;

  bool Open(const gpubroker::View& v) {
    if (backend == BackendKind::kHost) return true;
#ifdef GPUBROKER_GPU_KERNELS
    if (!gpubroker::gpu::SetDevice(v.device().ordinal)) return false;
    stream = gpubroker::gpu::NewStream();
    return stream != nullptr;
#else
    (void)v;
    return false;
#endif
  }
  // Writes version `version` into `p` and waits until it is in memory.
  bool Write(void* p, uint64_t version) {
    if (backend == BackendKind::kHost) {
      for (uint64_t i = 0; i < kSlotBytes / 8; ++i) {
        uint64_t w = gpubroker::gpu::VersionWord(kSeed, i, version);
        std::memcpy(static_cast<char*>(p) + i * 8, &w, 8);
      }
      return true;
    }
#ifdef GPUBROKER_GPU_KERNELS
    return gpubroker::gpu::StampVersion(p, kSlotBytes, kSeed, version, stream) &&
           gpubroker::gpu::SyncStream(stream);
#else
    return false;
#endif
  }
  int64_t Mismatches(const void* p, uint64_t version) {
    if (backend == BackendKind::kHost) {
      int64_t bad = 0;
      for (uint64_t i = 0; i < kSlotBytes / 8; ++i) {
        uint64_t w;
        std::memcpy(&w, static_cast<const char*>(p) + i * 8, 8);
        bad += w != gpubroker::gpu::VersionWord(kSeed, i, version);
      }
      return bad;
    }
#ifdef GPUBROKER_GPU_KERNELS
    return gpubroker::gpu::CountVersionMismatches(p, kSlotBytes, kSeed, version, stream);
#else
    return -1;
#endif
  }
};

// What the reader measured in one round.
struct ReaderRound {
  uint64_t woke, held, committed_real;
};

// The reader: in a process of its own; reports its rounds through `results`.
// Starts once `go` says the slot exists.
[[noreturn]] void ReaderProcess(const BrokerProcess& broker, BackendKind backend, int iterations, int go, int ready,
                                int results) {
  char g;
  if (!ReadAll(go, &g, 1) || g != 'g') ::_exit(0);
  auto c = broker.Connect("live_bench reader");
  if (!c.ok()) ::_exit(1);
  auto reader = c->OpenReader("live-bench");
  if (!reader.ok()) ::_exit(1);
  Side side{backend};
  if (!side.Open(reader->view())) ::_exit(1);
  std::vector<ReaderRound> out;
  uint64_t last = 0;
  for (int i = 0; i < iterations; ++i) {
    char r = 'r';
    WriteAll(ready, &r, 1);
    auto v = reader->Wait(last, 10000);
    uint64_t woke = NowNs();
    if (!v.ok()) ::_exit(2);
    auto got = reader->Acquire(side.stream);
    uint64_t held = NowNs();
    if (!got.ok()) ::_exit(3);
    if (side.Mismatches(reader->view().data(got->buffer), got->version) != 0) ::_exit(4);
    if (!reader->Release(side.stream).ok()) ::_exit(5);
    out.push_back({woke, held, got->committed_ns});
    last = got->version;
  }
  WriteAll(results, out.data(), out.size() * sizeof(ReaderRound));
  ::_exit(0);
}

// Runs `body` in a grandchild that is pid 1 of a new pid namespace with its
// own /proc (root only), and exits with its status; or in this process.
template <typename Body>
[[noreturn]] void MaybeInOwnPidNamespace(bool own, Body body) {
  if (!own) body();
  if (::unshare(CLONE_NEWPID | CLONE_NEWNS) != 0) ::_exit(6);
  pid_t inner = ::fork();
  if (inner == 0) {
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
      ::_exit(7);
    }
    body();
  }
  int status = 0;
  ::waitpid(inner, &status, 0);
  ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

// Requests the broker answers while a reader (on the host, or in a pid
// namespace of its own) waits 5 s for a version that never comes, counted
// from the broker's status before and after (which includes the one status
// request that reads the second count).
int64_t RequestsWhileIdle(const BrokerProcess& broker, bool own_pid_namespace) {
  auto client = broker.Connect("live_bench idle");
  if (!client.ok()) std::abort();
  (void)client->Destroy("live-idle");
  gpubroker::CreateOptions o;
  o.name = "live-idle";
  o.shape = {4096};
  o.backend = BackendKind::kHost;  // this process must not use CUDA: it forks the reader
  o.buffers = 2;
  if (!client->Create(o).ok()) std::abort();
  int ready[2];
  if (::pipe(ready) != 0) std::abort();
  std::fflush(nullptr);
  pid_t child = ::fork();
  if (child == 0) {
    ::close(ready[0]);
    MaybeInOwnPidNamespace(own_pid_namespace, [&] {
      auto c = broker.Connect("live_bench idle reader");
      if (!c.ok()) ::_exit(1);
      auto reader = c->OpenReader("live-idle");
      if (!reader.ok()) ::_exit(2);
      WriteAll(ready[1], "r", 1);
      auto v = reader->Wait(0, 5000);
      ::_exit(!v.ok() && v.status().code() == gpubroker::Code::kTimeout ? 0 : 3);
    });
  }
  ::close(ready[1]);
  char r;
  if (!ReadAll(ready[0], &r, 1)) std::abort();
  ::close(ready[0]);
  auto before = client->Info();
  int status = 0;
  ::waitpid(child, &status, 0);
  auto after = client->Info();
  if (!before.ok() || !after.ok() || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "idle reader%s failed (status %d)\n", own_pid_namespace ? " in its own pid namespace" : "",
                 status);
    std::exit(1);
  }
  (void)client->Destroy("live-idle");
  return static_cast<int64_t>(after->requests) - static_cast<int64_t>(before->requests);
}

// Commit -> wake on `backend`; empty if it cannot run here. The reader is
// forked before anything in this process touches CUDA (creating a CUDA slot
// does: the device is named by its UUID) and starts once the slot exists.
std::vector<Round> CommitToWake(const BrokerProcess& broker, BackendKind backend, int iterations,
                                bool own_pid_namespace) {
  int go[2], ready[2], results[2];
  if (::pipe(go) != 0 || ::pipe(ready) != 0 || ::pipe(results) != 0) std::abort();
  pid_t child = ::fork();
  if (child == 0) {
    ::close(go[1]);  // so that the writer's close ends the wait for "go"
    MaybeInOwnPidNamespace(own_pid_namespace,
                           [&] { ReaderProcess(broker, backend, iterations, go[0], ready[1], results[1]); });
  }
  ::close(go[0]);
  ::close(ready[1]);
  ::close(results[1]);
  auto client = broker.Connect("live_bench writer");
  if (!client.ok()) std::abort();
  (void)client->Destroy("live-bench");
  gpubroker::CreateOptions o;
  o.name = "live-bench";
  o.shape = {static_cast<int64_t>(kSlotBytes)};
  o.backend = backend;
  o.buffers = 2;
  if (auto made = client->Create(o); !made.ok()) {
    std::printf("  %s: not run (%s)\n", std::string(gpubroker::BackendName(backend)).c_str(),
                made.status().ToString().c_str());
    ::close(go[1]);
    ::waitpid(child, nullptr, 0);
    return {};
  }
  WriteAll(go[1], "g", 1);
  ::close(go[1]);
  auto writer = client->OpenWriter("live-bench");
  Side side{backend};
  if (!writer.ok() || !side.Open(writer->view())) {
    std::fprintf(stderr, "%s: no writer: %s\n", std::string(gpubroker::BackendName(backend)).c_str(),
                 writer.ok() ? "no CUDA stream" : writer.status().ToString().c_str());
    std::fflush(nullptr);
    ::_exit(1);
  }
  std::vector<Round> rounds(static_cast<size_t>(iterations));
  std::vector<uint64_t> t0(rounds.size()), t0_real(rounds.size());
  for (size_t i = 0; i < rounds.size(); ++i) {
    char c;
    if (!ReadAll(ready[0], &c, 1)) break;
    auto buffer = writer->Begin(10000);
    if (!buffer.ok() || !side.Write(writer->view().data(*buffer), writer->next_version())) ::_exit(1);
    SpinFor(kSettleNs);
    t0_real[i] = Clock(CLOCK_REALTIME);
    t0[i] = NowNs();
    if (!writer->Commit(side.stream).ok()) ::_exit(1);
    rounds[i].call_us = static_cast<double>(NowNs() - t0[i]) / 1e3;
  }
  std::vector<ReaderRound> seen = ReadVector<ReaderRound>(results[0], rounds.size());
  int status = 0;
  ::waitpid(child, &status, 0);
  if (seen.empty()) {
    std::fprintf(stderr, "%s: the reader failed (status %d)\n", std::string(gpubroker::BackendName(backend)).c_str(),
                 status);
    std::fflush(nullptr);
    ::_exit(1);
  }
  for (size_t i = 0; i < rounds.size(); ++i) {
    rounds[i].wake_us = static_cast<double>(seen[i].woke - t0[i]) / 1e3;
    rounds[i].hold_us = static_cast<double>(seen[i].held - t0[i]) / 1e3;
    rounds[i].at_broker_us = (static_cast<double>(seen[i].committed_real) - static_cast<double>(t0_real[i])) / 1e3;
  }
  return rounds;
}

// CommitToWake in a child process, its rounds sent back over a pipe.
std::vector<Round> CommitToWakeApart(const BrokerProcess& broker, BackendKind backend, int iterations,
                                     bool own_pid_namespace = false) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) std::abort();
  std::fflush(stdout);
  pid_t child = ::fork();
  if (child == 0) {
    std::vector<Round> rounds = CommitToWake(broker, backend, iterations, own_pid_namespace);
    uint64_t n = rounds.size();
    WriteAll(pipefd[1], &n, sizeof n);
    WriteAll(pipefd[1], rounds.data(), n * sizeof(Round));
    std::fflush(stdout);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  uint64_t n = 0;
  std::vector<Round> rounds;
  if (ReadAll(pipefd[0], &n, sizeof n)) rounds = ReadVector<Round>(pipefd[0], n);
  int status = 0;
  ::waitpid(child, &status, 0);
  ::close(pipefd[0]);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) std::exit(1);
  return rounds;
}

void Report(const char* what, const std::vector<Round>& rounds, double base_p50, bool broker_stamp) {
  std::vector<double> wake, hold, call, at_broker;
  for (const Round& r : rounds) {
    wake.push_back(r.wake_us);
    hold.push_back(r.hold_us);
    call.push_back(r.call_us);
    at_broker.push_back(r.at_broker_us);
  }
  Percentiles pw = Of(wake), ph = Of(hold), pc = Of(call), pb = Of(at_broker);
  std::printf("  %-8s commit -> Reader::Wait returns:                     p50 %6.1f us, p99 %6.1f us\n", what, pw.p50,
              pw.p99);
  std::printf("  %-8s commit -> Reader::Acquire returns (version held):   p50 %6.1f us, p99 %6.1f us\n", what, ph.p50,
              ph.p99);
  std::printf("  %-8s Writer::Commit call itself:                         p50 %6.1f us, p99 %6.1f us\n", what, pc.p50,
              pc.p99);
  if (broker_stamp) {
    std::printf("  %-8s commit -> the broker's commit stamp (realtime):     p50 %6.1f us, p99 %6.1f us\n", what,
                pb.p50, pb.p99);
  }
  std::string sfx = std::string(", ") + what;
  std::printf("summary\tcommit -> waiting reader wakes (p50%s)\t%.2f\t%.2f\tus\t-\n", sfx.c_str(), pw.p50, base_p50);
  std::printf("summary\tcommit -> waiting reader wakes (p99%s)\t%.2f\t-\tus\t-\n", sfx.c_str(), pw.p99);
  std::printf("summary\tcommit -> reader holds the version (p50%s)\t%.2f\t%.2f\tus\tmax<100\n", sfx.c_str(), ph.p50,
              base_p50);
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 5000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) iterations = std::atoi(argv[++i]);
    if (a == "--quick") iterations = 200;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto broker = BrokerProcess::Start();
  if (!broker) return 1;
  std::vector<Round> base = FutexPingPong(iterations);
  std::vector<double> b;
  for (const Round& r : base) b.push_back(r.wake_us);
  Percentiles pb = Of(b);
  std::printf("%d rounds; a waiter asleep 200 us before each\n", iterations);
  std::printf("  raw futex ping-pong (store + FUTEX_WAKE -> FUTEX_WAIT returns): p50 %.1f us, p99 %.1f us\n", pb.p50,
              pb.p99);
  std::printf("summary\traw futex ping-pong between two processes (p99)\t%.2f\t-\tus\t-\n", pb.p99);
  std::vector<Round> host = CommitToWakeApart(*broker, BackendKind::kHost, iterations);
  Report("host", host, pb.p50, false);
  // A pid namespace needs CAP_SYS_ADMIN, which root in a container may lack:
  // try one in a throw-away child first.
  bool can_unshare = false;
  if (pid_t probe = ::fork(); probe == 0) {
    ::_exit(::unshare(CLONE_NEWPID | CLONE_NEWNS) == 0 ? 0 : 1);
  } else if (probe > 0) {
    int st = 0;
    can_unshare = ::waitpid(probe, &st, 0) == probe && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  if (can_unshare) {
    std::vector<Round> pidns = CommitToWakeApart(*broker, BackendKind::kHost, iterations, true);
    Report("pid-ns", pidns, pb.p50, false);
    std::vector<double> h, n;
    for (const Round& r : host) h.push_back(r.hold_us);
    for (const Round& r : pidns) n.push_back(r.hold_us);
    std::printf("summary\tcommit -> reader holds the version, own pid namespace against the host (p50)\t%.2f\t%.2f\tus"
                "\tplus<=20\n", Of(n).p50, Of(h).p50);
    int64_t idle_host = RequestsWhileIdle(*broker, false), idle_ns = RequestsWhileIdle(*broker, true);
    std::printf("  requests the broker answered while a reader waited 5 s for nothing: host %lld, own pid namespace "
                "%lld (each including the status request that counts)\n",
                static_cast<long long>(idle_host), static_cast<long long>(idle_ns));
    std::printf("summary\tbroker requests during a 5 s idle wait, own pid namespace (baseline: host)\t%lld\t%lld\t"
                "requests\tplus<=0\n",
                static_cast<long long>(idle_ns), static_cast<long long>(idle_host));
  } else {
    std::printf("  pid-ns: not run (this process may not make a pid namespace: needs CAP_SYS_ADMIN)\n");
  }
#ifdef GPUBROKER_GPU_KERNELS
  for (BackendKind backend : {BackendKind::kCudaVmm, BackendKind::kCudaIpc}) {
    std::vector<Round> rounds = CommitToWakeApart(*broker, backend, iterations);
    if (!rounds.empty()) Report(std::string(gpubroker::BackendName(backend)).c_str(), rounds, pb.p50, true);
  }
#endif
  return 0;
}

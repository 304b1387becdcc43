// Chaos soak: a real broker, 32 client processes doing random create /
// attach / detach / destroy / list on private and shared names, while the
// test kills clients with SIGKILL at random moments (mid-request, with fds in
// flight) and starts replacements. At the end: every surviving client read
// back exactly what it wrote, no lease outlives its client, no memory outlives
// its slot, and the broker's memory did not grow without bound.
//
// GPUBROKER_CHAOS_SECONDS (default 15) and GPUBROKER_CHAOS_CLIENTS (32) size
// it; GPUBROKER_TEST_BACKEND picks the memory. Data is checked on every
// backend: on CUDA slots a kernel writes the pattern and another counts the
// elements that differ.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include "tests/integration/harness.h"
#if GPUBROKER_GPU_KERNELS
#include "tests/gpu/kernels.h"
#endif

namespace gpubroker::testing {
namespace {

// What was last written into a shared slot's allocation, under a seqlock:
// whoever writes holds `seq` odd meanwhile; a check of every byte counts only
// if `seq` was even and the same before and after it.
struct Published {
  std::atomic<uint64_t> seq;
  std::atomic<uint64_t> allocation;
  std::atomic<uint64_t> key;
  std::atomic<pid_t> writer;
};

struct Shared {  // in MAP_SHARED memory, written by every worker
  std::atomic<uint64_t> ops;
  std::atomic<uint64_t> data_checks;
  std::atomic<uint64_t> cross_checks;  // shared slots checked whole in a process that did not write them
  std::atomic<uint64_t> client_id[4096];  // by spawn number
  Published published[64];                // by allocation id, modulo
};

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

uint64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

void Fill(void* p, size_t n, uint64_t key) {
  auto* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>((key * 131 + i * 7) >> 3);
}

bool Matches(const void* p, size_t n, uint64_t key) {
  auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    if (b[i] != static_cast<uint8_t>((key * 131 + i * 7) >> 3)) return false;
  }
  return true;
}

// Writes and checks a buffer where it lives: the CPU for host slots, a kernel
// for CUDA slots (whose sizes are kept a multiple of 8, the kernels' word).
bool FillOn(bool host, void* p, size_t n, uint64_t key) {
  if (host) {
    Fill(p, n, key);
    return true;
  }
#if GPUBROKER_GPU_KERNELS
  return gpu::FillPattern(p, n, key);
#else
  return false;
#endif
}

bool MatchesOn(bool host, const void* p, size_t n, uint64_t key) {
  if (host) return Matches(p, n, key);
#if GPUBROKER_GPU_KERNELS
  return gpu::CountMismatches(p, n, key) == 0;
#else
  return false;
#endif
}

// Writes fresh random bytes (a pattern of a fresh key) into a shared slot's
// view and publishes the key. False if the data could not be written.
bool Publish(bool host, const View& v, Shared* shared, uint64_t key) {
  Published& p = shared->published[v.slot().allocation_id % 64];
  uint64_t seq = p.seq.load(std::memory_order_acquire);
  if (seq % 2 == 1 || !p.seq.compare_exchange_strong(seq, seq + 1, std::memory_order_acq_rel)) {
    return true;  // another process is writing through this entry: leave it be
  }
  p.allocation.store(v.slot().allocation_id, std::memory_order_relaxed);
  p.key.store(key, std::memory_order_relaxed);
  p.writer.store(::getpid(), std::memory_order_relaxed);
  const bool wrote = FillOn(host, v.data(), v.nbytes(), key);
  p.seq.store(seq + 2, std::memory_order_release);
  return wrote;
}

// Checks a shared slot's every byte against what its last writer published.
// False only for a mismatch that no write overlapped.
bool CheckPublished(bool host, const View& v, Shared* shared) {
  Published& p = shared->published[v.slot().allocation_id % 64];
  const uint64_t before = p.seq.load(std::memory_order_acquire);
  if (before == 0 || before % 2 == 1 || p.allocation.load(std::memory_order_relaxed) != v.slot().allocation_id) {
    return true;  // nothing published for this allocation, or a write under way
  }
  const uint64_t key = p.key.load(std::memory_order_relaxed);
  const bool mine = p.writer.load(std::memory_order_relaxed) == ::getpid();
  const bool whole = MatchesOn(host, v.data(), v.nbytes(), key);
  if (p.seq.load(std::memory_order_acquire) != before) return true;  // rewritten meanwhile: no verdict
  if (whole && !mine) shared->cross_checks.fetch_add(1, std::memory_order_relaxed);
  return whole;
}

// One worker's life. Exit codes: 0 fine, 3 data mismatch, 4 unexpected error
// kind, 5 broker unavailable, 6 could not connect, 7 could not write (no
// kernels in this build for a CUDA backend).
int Worker(const BrokerProcess& broker, int spawn, Shared* shared, std::chrono::steady_clock::time_point end) {
  auto c = Client::Connect(broker.Options("chaos-" + std::to_string(spawn)));
  if (!c.ok()) return 6;
  shared->client_id[spawn] = c->client_id();
  std::mt19937_64 rng(static_cast<uint64_t>(spawn) * 7919 + static_cast<uint64_t>(::getpid()));
  std::vector<View> held;
  uint64_t generation = 0;
  const BackendKind backend = TestBackend();
  const bool host = backend == BackendKind::kHost;
  auto expected = [](const Status& s) {
    return s.ok() || s.code() == Code::kNotFound || s.code() == Code::kAlreadyExists ||
           s.code() == Code::kResourceExhausted;
  };
  while (std::chrono::steady_clock::now() < end) {
    shared->ops.fetch_add(1, std::memory_order_relaxed);
    std::string shared_name = "s/" + std::to_string(rng() % 16);
    switch (rng() % 7) {
      case 0: {  // private round trip: write, drop, re-attach, check, destroy
        std::string name = "c" + std::to_string(spawn) + "/" + std::to_string(generation++);
        size_t n = 1 + rng() % 65536;
        if (!host) n = (n + 7) / 8 * 8;
        CreateOptions o;
        o.name = name;
        o.shape = {static_cast<int64_t>(n)};
        o.backend = backend;
        auto v = c->CreateAndAttach(o);
        if (!v.ok()) {
          if (v.status().code() == Code::kUnavailable) return 5;
          if (!expected(v.status())) return 4;
          break;
        }
        uint64_t key = rng();
        if (!FillOn(host, v->data(), n, key)) return 7;
        v->reset();
        auto again = c->Attach(name);
        if (!again.ok()) return again.status().code() == Code::kUnavailable ? 5 : 4;
        if (!MatchesOn(host, again->data(), n, key)) return 3;
        shared->data_checks.fetch_add(1, std::memory_order_relaxed);
        if (!c->Destroy(name).ok()) return 4;
        break;
      }
      case 1: {  // a shared slot, written with fresh random bytes for others to check
        CreateOptions o;
        o.name = shared_name;
        o.shape = {static_cast<int64_t>((1 + rng() % 8192) * (host ? 1 : 8))};
        o.mode = 0666;
        o.backend = backend;
        auto v = c->CreateAndAttach(o);
        if (!v.ok()) {
          if (v.status().code() == Code::kUnavailable) return 5;
          if (!expected(v.status())) return 4;
          break;
        }
        if (!Publish(host, *v, shared, rng())) return 7;
        break;
      }
      case 2:
      case 3: {  // attach a shared slot another worker wrote: check it, and at times write it back anew
        auto v = c->Attach(shared_name);
        if (v.ok()) {
          if (!CheckPublished(host, *v, shared)) return 3;
          if (rng() % 2 == 0 && !Publish(host, *v, shared, rng())) return 7;
          if (held.size() < 8) held.push_back(*v);
        } else if (v.status().code() == Code::kUnavailable) {
          return 5;
        } else if (!expected(v.status())) {
          return 4;
        }
        break;
      }
      case 4:
        if (!held.empty()) held.erase(held.begin() + static_cast<long>(rng() % held.size()));
        break;
      case 5: {
        Status s = c->Destroy(shared_name);
        if (s.code() == Code::kUnavailable) return 5;
        if (!expected(s)) return 4;
        break;
      }
      case 6: {
        auto l = c->List();
        if (!l.ok()) return l.status().code() == Code::kUnavailable ? 5 : 4;
        break;
      }
    }
  }
  return 0;
}

TEST(Chaos, RandomClientsAndKillsLeaveNothingBehind) {
  const int seconds = EnvInt("GPUBROKER_CHAOS_SECONDS", 15);
  const int clients = EnvInt("GPUBROKER_CHAOS_CLIENTS", 32);
  auto broker =
      BrokerProcess::Start({"--capacity", "1024", "--max-slots-per-uid", "256", "--max-connections", "256"});
  ASSERT_NE(broker, nullptr);
  auto* shared = static_cast<Shared*>(
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(shared, MAP_FAILED);
  auto checker = broker->Connect("checker");
  ASSERT_TRUE(checker.ok());

  auto start = std::chrono::steady_clock::now();
  auto end = start + std::chrono::seconds(seconds);
  int spawned = 0;
  std::map<pid_t, int> live;  // pid -> spawn number
  auto spawn = [&] {
    int n = spawned++;
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(Worker(*broker, n, shared, end));
    live[pid] = n;
  };
  for (int i = 0; i < clients; ++i) spawn();

  std::mt19937 rng(std::random_device{}());
  int killed = 0, bad_exits = 0;
  uint64_t leases_of_killed = 0;
  uint64_t rss_early = 0;
  while (std::chrono::steady_clock::now() < end - std::chrono::milliseconds(500)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 80));  // load pattern, not sync
    if (rss_early == 0 && std::chrono::steady_clock::now() > start + std::chrono::seconds(2)) {
      rss_early = RssBytes(broker->pid());
    }
    auto victim = live.begin();
    std::advance(victim, static_cast<long>(rng() % live.size()));
    uint64_t id = shared->client_id[victim->second];
    if (auto leases = checker->Leases(); leases.ok()) {
      for (const auto& l : *leases) {
        if (l.client_id == id) leases_of_killed += l.count;
      }
    }
    ::kill(victim->first, SIGKILL);
    int status = 0;
    ::waitpid(victim->first, &status, 0);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) ++bad_exits;  // it had failed before the kill
    live.erase(victim);
    ++killed;
    if (spawned < 4096) spawn();
  }
  for (auto& [pid, n] : live) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "worker " << n << " exited with " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  EXPECT_EQ(bad_exits, 0) << "a worker failed before it was killed";

  // No lease outlives its client: only the checker is connected and it holds none.
  EXPECT_TRUE(WaitFor([&] {
    auto info = checker->Info();
    return info.ok() && info->clients == 1 && info->leases == 0;
  })) << "leases or clients left behind";
  auto leases = checker->Leases();
  ASSERT_TRUE(leases.ok());
  EXPECT_TRUE(leases->empty());
  // No memory outlives its slot.
  auto slots = checker->List();
  ASSERT_TRUE(slots.ok());
  for (const auto& s : *slots) ASSERT_TRUE(checker->Destroy(s.name).ok());
  EXPECT_EQ(checker->Info()->allocations, 0u);
  EXPECT_EQ(checker->Info()->bytes_device, 0u);
  EXPECT_EQ(checker->Info()->bytes_host, 0u);
  EXPECT_EQ(CountMemfds(broker->pid(), "gpubroker:"), 0);
  uint64_t rss_end = RssBytes(broker->pid());
  EXPECT_LT(rss_end, rss_early + (32u << 20)) << "broker RSS grew from " << rss_early << " to " << rss_end;

  EXPECT_GT(shared->data_checks.load(), 0u) << "no buffer was written and read back";
  EXPECT_GT(shared->cross_checks.load(), 0u) << "no shared slot was checked in a process that did not write it";
  std::printf("chaos (%s): %d s, %d workers spawned, %d killed, %llu ops, %llu data checks, %llu across processes, %llu leases held by "
              "killed clients reclaimed, broker RSS %.1f -> %.1f MiB\n",
              std::string(BackendName(TestBackend())).c_str(), seconds, spawned, killed, static_cast<unsigned long long>(shared->ops.load()),
              static_cast<unsigned long long>(shared->data_checks.load()),
              static_cast<unsigned long long>(shared->cross_checks.load()),
              static_cast<unsigned long long>(leases_of_killed), rss_early / 1048576.0, rss_end / 1048576.0);
  ::munmap(shared, sizeof(Shared));
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

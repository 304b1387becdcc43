// Scale and load, each figure next to its baseline from the same run:
//   registry look-up with 10,000 live slots (raw reader, and the client call
//     that converts to SlotInfo), vs a std::unordered_map look-up in-process;
//   attach/detach throughput with 1, 8, 32, 64 client processes on shared
//     names (ops/s, p50/p99), lease counts checked at the end;
//   creating and destroying 10,000 slots: rate, broker RSS, registry bytes per slot.
// Usage: scale_bench [--quick]
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "harness.h"
#include "registry_layout.h"
#include "registry_reader.h"

using namespace gpubroker;
using Clock = std::chrono::steady_clock;

namespace {

double Ns(Clock::duration d) { return std::chrono::duration<double, std::nano>(d).count(); }

uint64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

struct Shared {
  std::atomic<int> ready;
  std::atomic<int> go;
  double lat_us[64][2048];
  int count[64];
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int kSlots = quick ? 1000 : 10000;
  auto broker = testing::BrokerProcess::Start({"--capacity", "16384", "--max-connections", "256"});
  if (!broker) return 1;
  auto c = broker->Connect("scale");
  if (!c.ok()) return 1;
  uint64_t rss0 = RssBytes(broker->pid());

  // Create kSlots slots (64-byte host buffers).
  auto t0 = Clock::now();
  for (int i = 0; i < kSlots; ++i) {
    CreateOptions o;
    o.name = "scale/" + std::to_string(i);
    o.shape = {64};
    o.mode = 0666;
    if (!c->Create(o).ok()) return 1;
  }
  double create_us = Ns(Clock::now() - t0) / 1000.0 / kSlots;
  uint64_t rss1 = RssBytes(broker->pid());

  // Look-ups at kSlots live slots.
  auto reader = RegistryReader::Open(broker->registry());
  if (!reader.ok()) return 1;
  std::unordered_map<std::string, int> map;
  for (int i = 0; i < kSlots; ++i) map["scale/" + std::to_string(i)] = i;
  std::vector<std::string> names;
  for (int i = 0; i < 100000; ++i) names.push_back("scale/" + std::to_string((i * 7919) % kSlots));
  auto time_per = [&](auto fn) {
    auto a = Clock::now();
    for (const auto& n : names) fn(n);
    return Ns(Clock::now() - a) / static_cast<double>(names.size());
  };
  volatile int sink = 0;
  double map_ns = time_per([&](const std::string& n) { sink = sink + map.find(n)->second; });
  double raw_ns = time_per([&](const std::string& n) { sink = sink + static_cast<int>(reader->Lookup(n)->ndim); });
  double client_ns = time_per([&](const std::string& n) { sink = sink + static_cast<int>(c->Lookup(n)->shape.size()); });

  std::printf("registry look-up, %d live slots, ns per look-up (mean of %zu)\n", kSlots, names.size());
  std::printf("  std::unordered_map<string,int> in-process  %8.1f   (baseline)\n", map_ns);
  std::printf("  RegistryReader::Lookup (shared memory)    %8.1f\n", raw_ns);
  std::printf("  Client::Lookup (-> SlotInfo)              %8.1f\n", client_ns);

  // Throughput: N processes attach/detach shared names as fast as they can.
  auto* shared = static_cast<Shared*>(
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  std::printf("\nattach + detach throughput, %s, 64-byte host slots (distinct names per op)\n",
              quick ? "0.5 s each" : "2 s each");
  std::printf("  %8s %12s %10s %10s %8s\n", "clients", "ops/s", "p50 us", "p99 us", "leases");
  const double seconds = quick ? 0.5 : 2.0;
  for (int n : {1, 8, 32, 64}) {
    std::memset(static_cast<void*>(shared), 0, sizeof(Shared));
    std::vector<pid_t> pids;
    for (int w = 0; w < n; ++w) {
      pid_t pid = ::fork();
      if (pid == 0) {
        auto me = broker->Connect("w" + std::to_string(w));
        shared->ready.fetch_add(1);  // failed or not: the parent must not wait forever
        if (!me.ok()) ::_exit(1);
        while (shared->go.load() == 0) {
        }
        auto end = Clock::now() + std::chrono::duration<double>(seconds);
        int k = 0, i = w;
        while (Clock::now() < end) {
          auto a = Clock::now();
          auto v = me->Attach("scale/" + std::to_string(i++ % kSlots));
          if (!v.ok()) ::_exit(2);
          v->reset();
          if (k < 2048) shared->lat_us[w][k] = Ns(Clock::now() - a) / 1000.0;
          ++k;
        }
        shared->count[w] = k;
        ::_exit(0);
      }
      pids.push_back(pid);
    }
    while (shared->ready.load() < n) {
    }
    shared->go.store(1);
    bool ok = true;
    for (pid_t p : pids) {
      int st = 0;
      ::waitpid(p, &st, 0);
      ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    uint64_t total = 0;
    std::vector<double> lat;
    for (int w = 0; w < n; ++w) {
      total += static_cast<uint64_t>(shared->count[w]);
      lat.insert(lat.end(), shared->lat_us[w], shared->lat_us[w] + std::min(shared->count[w], 2048));
    }
    std::sort(lat.begin(), lat.end());
    auto info = c->Info();
    std::printf("  %8d %12.0f %10.1f %10.1f %8u%s\n", n, total / seconds, lat[lat.size() / 2],
                lat[lat.size() * 99 / 100], info.ok() ? info->leases : 9999u, ok ? "" : "  (a worker failed)");
  }

  // Destroy everything.
  t0 = Clock::now();
  for (int i = 0; i < kSlots; ++i) (void)c->Destroy("scale/" + std::to_string(i));
  double destroy_us = Ns(Clock::now() - t0) / 1000.0 / kSlots;
  uint64_t rss2 = RssBytes(broker->pid());
  RegistryGeometry g = ComputeGeometry(16384);
  std::printf("\nscale, %d slots\n", kSlots);
  std::printf("  create  %.1f us/slot (%.0f/s)   destroy %.1f us/slot (%.0f/s)\n", create_us, 1e6 / create_us,
              destroy_us, 1e6 / destroy_us);
  std::printf("  broker RSS: %.1f MiB empty, %.1f MiB with %d slots, %.1f MiB after destroying them\n",
              rss0 / 1048576.0, rss1 / 1048576.0, kSlots, rss2 / 1048576.0);
  std::printf("  registry: %zu bytes per slot (456-byte seqlocked record + %zu index bytes), %.1f MiB for 16384\n",
              (g.total_bytes - sizeof(RegistryHeader)) / 16384, (g.total_bytes - g.index_offset) / 16384,
              g.total_bytes / 1048576.0);
  ::munmap(shared, sizeof(Shared));
  return broker->Stop(SIGTERM) == 0 ? 0 : 1;
}

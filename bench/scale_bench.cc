// Scale and load (look-ups at scale are in micro_bench):
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
#include <vector>

#include "tests/integration/harness.h"
#include "common/registry_layout.h"

using namespace gpubroker;
using Clock = std::chrono::steady_clock;

namespace {

double Ns(Clock::duration d) { return std::chrono::duration<double, std::nano>(d).count(); }

struct Shared {
  std::atomic<int> failed;  // the first worker to fail writes `error`
  char error[256];
  std::atomic<int> ready;
  std::atomic<int> go;
  double lat_us[64][2048];
  int count[64];
};

// VmRSS and its parts, from /proc/<pid>/status: "RssAnon ... RssShmem ...".
std::string RssParts(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line, out;
  while (std::getline(in, line)) {
    if (line.rfind("Rss", 0) == 0 || line.rfind("VmRSS", 0) == 0) {
      out += (out.empty() ? "" : ", ") + line.substr(0, line.find(':')) + " " +
             std::to_string(std::stoull(line.substr(line.find(':') + 1)) / 1024) + " MiB";
    }
  }
  return out;
}

void Fail(Shared* shared, const std::string& what) {
  if (shared->failed.exchange(1) == 0) std::snprintf(shared->error, sizeof shared->error, "%s", what.c_str());
}

uint64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}


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
    o.backend = BackendKind::kHost;  // not the GPU default where there is one
    o.mode = 0666;
    if (!c->Create(o).ok()) return 1;
  }
  double create_us = Ns(Clock::now() - t0) / 1000.0 / kSlots;
  uint64_t rss1 = RssBytes(broker->pid());
  std::string rss1_parts = RssParts(broker->pid());

  // Throughput: N processes send requests as fast as they can. The baseline
  // is the no-op request (status), the broker's ceiling for any request; an
  // attach + detach is two requests plus mmap/munmap of the buffer.
  auto* shared = static_cast<Shared*>(
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  const double seconds = quick ? 0.5 : 2.0;
  struct Phase {
    double ops_per_s, p50_us, p99_us;
    uint32_t leases;
    bool ok;
  };
  auto run = [&](int n, bool attach) -> Phase {
    std::memset(static_cast<void*>(shared), 0, sizeof(Shared));
    std::vector<pid_t> pids;
    for (int w = 0; w < n; ++w) {
      pid_t pid = ::fork();
      if (pid == 0) {
        auto me = broker->Connect("w" + std::to_string(w));
        shared->ready.fetch_add(1);  // failed or not: the parent must not wait forever
        if (!me.ok()) {
          Fail(shared, "connect: " + me.status().ToString());
          ::_exit(1);
        }
        while (shared->go.load() == 0) {
        }
        auto end = Clock::now() + std::chrono::duration<double>(seconds);
        int k = 0, i = w;
        while (Clock::now() < end) {
          auto a = Clock::now();
          if (attach) {
            auto v = me->Attach("scale/" + std::to_string(i++ % kSlots));
            if (!v.ok()) {
              Fail(shared, "attach: " + v.status().ToString());
              ::_exit(2);
            }
            v->reset();
          } else if (auto info = me->Info(); !info.ok()) {
            Fail(shared, "status: " + info.status().ToString());
            ::_exit(2);
          }
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
    if (lat.empty()) return {0, 0, 0, 0, false};
    return {total / seconds, lat[lat.size() / 2], lat[lat.size() * 99 / 100], info.ok() ? info->leases : 9999u, ok};
  };
  std::printf("\nthroughput, %d s per phase, 64-byte host slots (a different name each op);\n"
              "baseline: the same clients sending no-op requests\n", quick ? 0 : 2);
  std::printf("  %8s | %12s %9s %9s | %12s %9s %9s %7s\n", "clients", "no-op ops/s", "p50 us", "p99 us",
              "attach+det/s", "p50 us", "p99 us", "leases");
  for (int n : {1, 8, 32, 64}) {
    Phase noop = run(n, false);
    Phase ad = run(n, true);
    std::printf("  %8d | %12.0f %9.1f %9.1f | %12.0f %9.1f %9.1f %7u%s\n", n, noop.ops_per_s, noop.p50_us,
                noop.p99_us, ad.ops_per_s, ad.p50_us, ad.p99_us, ad.leases,
                noop.ok && ad.ok ? "" : "  (a worker failed)");
    if (shared->failed.load() != 0) std::printf("  first failure: %s\n", shared->error);
    std::printf("summary\tattach + detach throughput, %d clients (ops/s; p50 %.1f us, p99 %.1f us; leases after: %u)"
                "\t%.0f\t%.0f\tops/s\t-\n",
                n, ad.p50_us, ad.p99_us, ad.leases, ad.ops_per_s, noop.ops_per_s);
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
  std::printf("  broker with %d slots: %s\n", kSlots, rss1_parts.c_str());
  {
    std::ifstream limits("/proc/" + std::to_string(broker->pid()) + "/limits");
    for (std::string line; std::getline(limits, line);) {
      if (line.rfind("Max open files", 0) == 0) std::printf("  broker: %s\n", line.c_str());
    }
  }
  std::printf("  registry: %zu bytes per slot (456-byte seqlocked record + %zu index bytes), %.1f MiB for 16384\n",
              (g.total_bytes - sizeof(RegistryHeader)) / 16384, (g.total_bytes - g.index_offset) / 16384,
              g.total_bytes / 1048576.0);
  std::printf("summary\tcreate, %d slots (us per slot)\t%.1f\t-\tus\t-\n", kSlots, create_us);
  std::printf("summary\tdestroy, %d slots (us per slot)\t%.1f\t-\tus\t-\n", kSlots, destroy_us);
  std::printf("summary\tbroker RSS with %d slots (baseline: empty)\t%.1f\t%.1f\tMiB\t-\n", kSlots, rss1 / 1048576.0,
              rss0 / 1048576.0);
  std::printf("summary\tregistry bytes per slot\t%zu\t-\tB\t-\n", (g.total_bytes - sizeof(RegistryHeader)) / 16384);
  ::munmap(shared, sizeof(Shared));
  return broker->Stop(SIGTERM) == 0 ? 0 : 1;
}

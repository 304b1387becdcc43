// GPU benchmarks, each next to its baseline from the same run:
//   attach (first in a fresh process, and repeated) vs the raw driver calls
//   it wraps (cuMemImportFromShareableHandle + reserve + map + set access, or
//   cuIpcOpenMemHandle), on handles from the same broker;
//   cached attach; kernel read bandwidth of an attached vs a local buffer.
// Each "first" figure is measured in a fresh process whose driver and
// context are already initialised, so it is the attach, not CUDA start-up.
// The attach tables run twice: with the machine idle, and with every vCPU
// kept awake by a nice-19 spinner (so no step waits for an idle vCPU to wake).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "client/src/channel.h"
#include "client/src/mapping_cache.h"
#include "common/cuda_driver.h"
#include "tests/gpu/kernels.h"
#include "tests/integration/harness.h"

using namespace gpubroker;
using Clock = std::chrono::steady_clock;

namespace {

double Us(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

long MinorFaults() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// The two halves of a Client, to time the steps of its attach one by one.
struct ClientParts {
  std::shared_ptr<MappingCache> cache = std::make_shared<MappingCache>();
  std::shared_ptr<Channel> channel;
};

Result<ClientParts> OpenParts(const std::string& socket) {
  ConnectOptions o;
  o.socket_path = socket;
  ClientParts p;
  Channel::Hooks hooks;
  hooks.greeted = [cache = p.cache](const wire::HelloReply& hello, UniqueFd registry) {
    cache->Greeted(hello, std::move(registry));
  };
  GPB_ASSIGN_OR_RETURN(p.channel, Channel::Open(o, std::move(hooks)));
  return p;
}

// The slot's device in this process's numbering.
Result<int> LocalOrdinal(const SlotDescriptor& slot) {
  DeviceUuid uuid;
  std::memcpy(uuid.data(), slot.device_uuid, uuid.size());
  return (**CudaDriver::Get()).OrdinalOf(uuid);
}

// Driver and context up before anything is timed.
void WarmUp(int ordinal) {
  (void)CudaDriver::Get();
  gpu::SetDevice(ordinal);
  size_t f, t;
  gpu::MemInfo(&f, &t);
}

int ChildOurs(const std::string& socket, const std::string& name, int repeats) {
  ConnectOptions o;
  o.socket_path = socket;
  auto c = Client::Connect(o);
  if (!c.ok()) return 1;
  auto info = c->Stat(name);
  if (!info.ok()) return 1;
  WarmUp(std::max(0, info->device.ordinal));
  long f0 = MinorFaults();
  auto t0 = Clock::now();
  auto first = c->Attach(name);
  auto t1 = Clock::now();
  long faults = MinorFaults() - f0;
  if (!first.ok()) {
    std::printf("error %s\n", first.status().ToString().c_str());
    return 1;
  }
  first->reset();
  std::vector<double> again;
  for (int i = 0; i < repeats; ++i) {
    auto a = Clock::now();
    auto v = c->Attach(name);
    again.push_back(Us(a, Clock::now()));
  }  // each view goes at once: unmap + detach, untimed
  auto held = c->Attach(name);
  std::vector<double> cached;
  for (int i = 0; i < 1000; ++i) {
    auto a = Clock::now();
    auto v = c->Attach(name);
    cached.push_back(Us(a, Clock::now()));
  }
  std::printf("%.1f %.1f %.2f %ld\n", Us(t0, t1), Median(again), Median(cached), faults);
  return 0;
}

// Where the first attach's time goes: the steps of Client::Attach, one by
// one, in a fresh process prepared like ChildOurs, with a no-op round trip
// timed just before the attach request; then the same steps again.
int ChildPhases(const std::string& socket, const std::string& name) {
  auto parts = OpenParts(socket);
  if (!parts.ok()) return 1;
  Channel& channel = *parts->channel;
  MappingCache& cache = *parts->cache;
  wire::StatRequest stat{};
  stat.name.set(name);
  auto st = channel.Call<wire::SlotReply>(stat);
  if (!st.ok()) return 1;
  auto ordinal = LocalOrdinal(st->slot);  // as Stat does in ChildOurs
  WarmUp(ordinal.ok() ? *ordinal : 0);
  for (int round = 0; round < 2; ++round) {
    long f0 = MinorFaults();
    auto t0 = Clock::now();
    auto registry = cache.registry();
    auto t1 = Clock::now();
    if (!registry.ok()) return 1;
    auto slot = (*registry)->Lookup(name);
    if (!slot.ok() || cache.Find(slot->allocation_id)) return 1;
    auto t2a = Clock::now();
    // A no-op request first: what any round trip costs at this moment (after
    // the idle time above, the broker's CPU may have to wake up).
    if (!channel.Call<wire::StatusReply>(wire::StatusRequest{}).ok()) return 1;
    auto t2b = Clock::now();
    // And again at once: a second no-op shows what of the first was a one-off.
    if (!channel.Call<wire::StatusReply>(wire::StatusRequest{}).ok()) return 1;
    auto t2 = Clock::now();
    wire::AttachRequest m{};
    m.name.set(name);
    UniqueFd fd;
    auto reply = channel.Call<wire::AttachReply>(m, &fd);
    auto t3 = Clock::now();
    if (!reply.ok()) return 1;
    auto mapped = cache.Map(*reply, std::move(fd), parts->channel);
    auto t4 = Clock::now();
    if (!mapped.ok()) return 1;
    long faults = MinorFaults() - f0;
    std::printf("%.1f %.1f %.1f %.1f %.1f %.1f %ld ", Us(t0, t1), Us(t1, t2a), Us(t2a, t2b), Us(t2b, t2),
                Us(t2, t3), Us(t3, t4), faults);
    mapped->mapping.reset();  // unmap and detach before the second round
  }
  std::printf("\n");
  return 0;
}

// The raw driver calls on a handle obtained through the broker (untimed).
int ChildRaw(const std::string& socket, const std::string& name, int repeats) {
  auto parts = OpenParts(socket);
  if (!parts.ok()) return 1;
  wire::AttachRequest m{};
  m.name.set(name);
  UniqueFd fd;
  auto reply = parts->channel->Call<wire::AttachReply>(m, &fd);
  if (!reply.ok()) return 1;
  const CudaDriver& d = **CudaDriver::Get();
  auto local = LocalOrdinal(reply->slot);
  if (!local.ok()) return 1;
  int ordinal = *local;
  WarmUp(ordinal);
  std::vector<double> times;
  long f0 = MinorFaults();
  long faults = 0;
  for (int i = 0; i <= repeats; ++i) {
    if (i == 1) faults = MinorFaults() - f0;
    auto a = Clock::now();
    if (reply->slot.backend == static_cast<uint16_t>(BackendKind::kCudaVmm)) {
      const CUmemAllocationProp prop = VmmAllocationProperties(ordinal);
      size_t g = 0;
      d.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
      size_t size = (reply->slot.allocation_bytes + g - 1) / g * g;
      CUmemGenericAllocationHandle h;
      CUdeviceptr ptr;
      d.cuMemImportFromShareableHandle(&h, reinterpret_cast<void*>(static_cast<intptr_t>(fd.get())),
                                       CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
      d.cuMemAddressReserve(&ptr, size, g, 0, 0);
      d.cuMemMap(ptr, size, 0, h, 0);
      d.cuMemRelease(h);
      CUmemAccessDesc acc{{CU_MEM_LOCATION_TYPE_DEVICE, ordinal},
                          CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
      d.cuMemSetAccess(ptr, size, &acc, 1);
      times.push_back(Us(a, Clock::now()));
      d.cuMemUnmap(ptr, size);
      d.cuMemAddressFree(ptr, size);
    } else {
      CUipcMemHandle h;
      std::memcpy(&h, reply->slot.ipc_handle, sizeof h);
      CUdeviceptr ptr;
      if (d.cuIpcOpenMemHandle(&ptr, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) != CUDA_SUCCESS)
        return 1;
      times.push_back(Us(a, Clock::now()));
      d.cuIpcCloseMemHandle(ptr);
    }
  }
  double first = times.front();
  times.erase(times.begin());
  std::printf("%.1f %.1f %ld\n", first, Median(times), faults);
  return 0;
}

// One nice-19 busy process per online CPU, until the object goes: every vCPU
// stays awake, yet any real work preempts the spinners at once.
class Spinners {
 public:
  Spinners() {
    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    for (long i = 0; i < cpus; ++i) {
      pid_t pid = ::fork();
      if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        errno = 0;
        if (::nice(19) == -1 && errno != 0) ::_exit(1);
        for (;;) asm volatile("" ::: "memory");
      }
      if (pid > 0) pids_.push_back(pid);
    }
  }
  ~Spinners() {
    for (pid_t pid : pids_) ::kill(pid, SIGKILL);
    for (pid_t pid : pids_) ::waitpid(pid, nullptr, 0);
  }

 private:
  std::vector<pid_t> pids_;
};

std::string RunChild(const std::vector<std::string>& args,
                     const std::vector<std::pair<std::string, std::string>>& env = {}) {
  auto child = testing::ChildProcess::Exec(args, env);
  std::string line = child->channel().ReceiveLine();
  child->Wait();
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = 20;
  if (argc == 4 && std::strcmp(argv[1], "--ours") == 0) return ChildOurs(argv[2], argv[3], repeats);
  if (argc == 4 && std::strcmp(argv[1], "--raw") == 0) return ChildRaw(argv[2], argv[3], repeats);
  if (argc == 4 && std::strcmp(argv[1], "--phases") == 0) return ChildPhases(argv[2], argv[3]);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto driver = CudaDriver::Get();
  if (!driver.ok()) {
    std::printf("gpu_bench: skipped: %s\n", driver.status().message().c_str());
    return 0;
  }
  std::vector<uint64_t> sizes = {2ull << 20, 64ull << 20, 1ull << 30, 8ull << 30};
  const bool quick = argc >= 2 && std::strcmp(argv[1], "--quick") == 0;
  if (quick) sizes = {2ull << 20};
  auto broker = testing::BrokerProcess::Start();
  if (!broker) return 1;
  auto client = broker->Connect("gpu_bench");
  if (!client.ok()) return 1;
  const std::string self = "/proc/self/exe";
  char exe[4096] = {};
  if (::readlink(self.c_str(), exe, sizeof exe - 1) < 0) return 1;

  // Each "first" is the median over `fresh` fresh processes.
  const int fresh = quick ? 1 : 5;
  auto attach_tables = [&](const char* condition) {
    std::printf("\n== vCPUs %s\n", condition);
    std::printf(
        "attach latency, microseconds (first: fresh process, median of %d; again: median of %d;\n"
        "faults: minor page faults during the first attach)\n",
        fresh, repeats);
    std::printf("%-9s %8s | %10s %10s | %10s %10s | %8s | %7s %7s\n", "backend", "size",
                "raw first", "ours first", "raw again", "ours again", "cached", "faults", "raw");
    std::vector<std::string> phase_rows;
    for (const char* backend : {"cuda_vmm", "cuda_ipc"}) {
      for (uint64_t bytes : sizes) {
        std::string name = std::string("bench/") + backend + "/" + std::to_string(bytes);
        CreateOptions o;
        o.name = name;
        o.backend = *ParseBackend(backend);
        o.shape = {static_cast<int64_t>(bytes)};
        o.mode = 0666;
        auto info = client->Create(o);
        if (!info.ok()) {
          std::printf("%-9s %8s | create failed: %s\n", backend, "",
                      info.status().ToString().c_str());
          continue;
        }
        std::vector<double> of, oa, oc, rf, ra, faults, raw_faults;
        constexpr int kPhases = 7;  // per round, as ChildPhases prints them
        std::vector<std::vector<double>> phases(2 * kPhases);
        for (int k = 0; k < fresh; ++k) {
          double v[5] = {};
          std::sscanf(RunChild({exe, "--ours", broker->socket(), name}).c_str(), "%lf %lf %lf %lf",
                      &v[0], &v[1], &v[2], &v[3]);
          of.push_back(v[0]), oa.push_back(v[1]), oc.push_back(v[2]), faults.push_back(v[3]);
          std::sscanf(RunChild({exe, "--raw", broker->socket(), name}).c_str(), "%lf %lf %lf",
                      &v[0], &v[1], &v[2]);
          rf.push_back(v[0]), ra.push_back(v[1]), raw_faults.push_back(v[2]);
          std::istringstream line(RunChild({exe, "--phases", broker->socket(), name}));
          for (auto& phase : phases) {
            double p = 0;
            line >> p;
            phase.push_back(p);
          }
        }
        std::printf("%-9s %6lluMiB | %10.1f %10.1f | %10.1f %10.1f | %8.2f | %7.0f %7.0f\n",
                    backend, static_cast<unsigned long long>(bytes >> 20), Median(rf), Median(of),
                    Median(ra), Median(oa), Median(oc), Median(faults), Median(raw_faults));
        auto sizename = std::string(backend) + " " + std::to_string(bytes >> 20) + "MiB";
        const bool awake = std::strcmp(condition, "awake") == 0;
        std::printf("summary\tattach, first in a process, %s, vCPUs %s\t%.1f\t%.1f\tus\t%s\n",
                    sizename.c_str(), condition, Median(of), Median(rf), awake ? "plus<=40" : "-");
        std::printf("summary\tattach, again, %s, vCPUs %s\t%.1f\t%.1f\tus\tplus<=25\n",
                    sizename.c_str(), condition, Median(oa), Median(ra));
        std::printf("summary\tattach, cached, %s, vCPUs %s\t%.2f\t-\tus\tmax<1\n", sizename.c_str(),
                    condition, Median(oc));
        char row[256];
        for (int round = 0; round < 2; ++round) {
          int b = round * kPhases;
          std::snprintf(row, sizeof row,
                        "%-9s %6lluMiB %-6s | %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f | %7.0f", backend,
                        static_cast<unsigned long long>(bytes >> 20),
                        round == 0 ? "first" : "second", Median(phases[b]), Median(phases[b + 1]),
                        Median(phases[b + 2]), Median(phases[b + 3]), Median(phases[b + 4]),
                        Median(phases[b + 5]), Median(phases[b + 6]));
          phase_rows.push_back(row);
        }
        (void)client->Destroy(name);
      }
    }
    std::printf(
        "\nwhere a first attach goes, microseconds (median of %d fresh processes): the steps of\n"
        "Client::Attach timed one by one; 'second' repeats them in the same process\n",
        fresh);
    std::printf("%-9s %8s %-6s | %9s %9s %9s %9s %9s %9s | %7s\n", "backend", "size", "", "registry",
                "lookup", "no-op rt", "no-op 2", "request", "map", "faults");
    for (const auto& r : phase_rows) std::printf("%s\n", r.c_str());
  };
  attach_tables("idle");
  {
    Spinners spinners;
    attach_tables("awake");
  }

  const uint64_t bw_bytes = 1ull << 30;
  std::printf("\nkernel read bandwidth, 1 GiB, GB/s (best of 10)\n");
  void* local = gpu::DeviceAlloc(bw_bytes);
  gpu::SetDevice(0);
  double local_bw = local ? gpu::ReadBandwidthGBs(local, bw_bytes, 10) : 0;
  gpu::DeviceFree(local);
  std::printf("%-28s %8.0f\n", "local cudaMalloc", local_bw);
  for (const char* backend : {"cuda_vmm", "cuda_ipc"}) {
    CreateOptions o;
    o.name = std::string("bw/") + backend;
    o.backend = *ParseBackend(backend);
    o.shape = {static_cast<int64_t>(bw_bytes)};
    auto v = client->CreateAndAttach(o);
    if (!v.ok()) continue;
    gpu::SetDevice(v->device().ordinal);
    double bw = gpu::ReadBandwidthGBs(v->data(), bw_bytes, 10);
    std::printf("%-28s %8.0f   %5.1f%% of local\n", (std::string("attached ") + backend).c_str(),
                bw, 100.0 * bw / local_bw);
    std::printf(
        "summary\tkernel read bandwidth, 1 GiB attached %s (baseline: local "
        "cudaMalloc)\t%.0f\t%.0f\tGB/s\t"
        "pct>=98\n",
        backend, bw, local_bw);
  }
  return broker->Stop(SIGTERM) == 0 ? 0 : 1;
}

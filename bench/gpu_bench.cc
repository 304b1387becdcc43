// GPU benchmarks, each next to its baseline from the same run:
//   attach (first in a fresh process, and repeated) vs the raw driver calls
//   it wraps (cuMemImportFromShareableHandle + reserve + map + set access, or
//   cuIpcOpenMemHandle), on handles from the same broker;
//   cached attach; kernel read bandwidth of an attached vs a local buffer.
// Each "first" figure is measured in a fresh process whose driver and
// context are already initialised, so it is the attach, not CUDA start-up.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "connection.h"
#include "cuda_driver.h"
#include "harness.h"
#include "kernels.h"

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
  auto t0 = Clock::now();
  auto first = c->Attach(name);
  auto t1 = Clock::now();
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
  std::printf("%.1f %.1f %.2f\n", Us(t0, t1), Median(again), Median(cached));
  return 0;
}

// The raw driver calls on a handle obtained through the broker (untimed).
int ChildRaw(const std::string& socket, const std::string& name, int repeats) {
  ConnectOptions o;
  o.socket_path = socket;
  auto conn = Connection::Open(o);
  if (!conn.ok()) return 1;
  wire::AttachRequest m{};
  m.name.set(name);
  UniqueFd fd;
  auto reply = (*conn)->Call<wire::AttachReply>(m, &fd);
  if (!reply.ok()) return 1;
  const CudaDriver& d = **CudaDriver::Get();
  DeviceUuid uuid;
  std::memcpy(uuid.data(), reply->slot.device_uuid, 16);
  int ordinal = *d.OrdinalOf(uuid);
  WarmUp(ordinal);
  std::vector<double> times;
  for (int i = 0; i <= repeats; ++i) {
    auto a = Clock::now();
    if (reply->slot.backend == static_cast<uint16_t>(BackendKind::kCudaVmm)) {
      CUmemAllocationProp prop{};
      prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
      prop.location = {CU_MEM_LOCATION_TYPE_DEVICE, ordinal};
      prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
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
      CUmemAccessDesc acc{{CU_MEM_LOCATION_TYPE_DEVICE, ordinal}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
      d.cuMemSetAccess(ptr, size, &acc, 1);
      times.push_back(Us(a, Clock::now()));
      d.cuMemUnmap(ptr, size);
      d.cuMemAddressFree(ptr, size);
    } else {
      CUipcMemHandle h;
      std::memcpy(&h, reply->slot.ipc_handle, sizeof h);
      CUdeviceptr ptr;
      if (d.cuIpcOpenMemHandle(&ptr, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) != CUDA_SUCCESS) return 1;
      times.push_back(Us(a, Clock::now()));
      d.cuIpcCloseMemHandle(ptr);
    }
  }
  double first = times.front();
  times.erase(times.begin());
  std::printf("%.1f %.1f\n", first, Median(times));
  return 0;
}

std::string RunChild(const std::vector<std::string>& args) {
  auto child = testing::ChildProcess::Exec(args);
  std::string line = child->channel().ReceiveLine();
  child->Wait();
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = 20;
  if (argc == 4 && std::strcmp(argv[1], "--ours") == 0) return ChildOurs(argv[2], argv[3], repeats);
  if (argc == 4 && std::strcmp(argv[1], "--raw") == 0) return ChildRaw(argv[2], argv[3], repeats);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto driver = CudaDriver::Get();
  if (!driver.ok()) {
    std::printf("gpu_bench: skipped: %s\n", driver.status().message().c_str());
    return 0;
  }
  std::vector<uint64_t> sizes = {2ull << 20, 64ull << 20, 1ull << 30, 8ull << 30};
  if (argc >= 2 && std::strcmp(argv[1], "--quick") == 0) sizes = {2ull << 20};
  auto broker = testing::BrokerProcess::Start();
  if (!broker) return 1;
  auto client = broker->Connect("gpu_bench");
  if (!client.ok()) return 1;
  const std::string self = "/proc/self/exe";
  char exe[4096] = {};
  if (::readlink(self.c_str(), exe, sizeof exe - 1) < 0) return 1;

  std::printf("attach latency, microseconds (first: fresh process; repeat: median of %d)\n", repeats);
  std::printf("%-9s %8s | %10s %10s | %10s %10s | %8s\n", "backend", "size", "raw first", "ours first",
              "raw again", "ours again", "cached");
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
        std::printf("%-9s %8s | create failed: %s\n", backend, "", info.status().ToString().c_str());
        continue;
      }
      std::string ours = RunChild({exe, "--ours", broker->socket(), name});
      std::string raw = RunChild({exe, "--raw", broker->socket(), name});
      double of = 0, oa = 0, oc = 0, rf = 0, ra = 0;
      std::sscanf(ours.c_str(), "%lf %lf %lf", &of, &oa, &oc);
      std::sscanf(raw.c_str(), "%lf %lf", &rf, &ra);
      std::printf("%-9s %6lluMiB | %10.1f %10.1f | %10.1f %10.1f | %8.2f\n", backend,
                  static_cast<unsigned long long>(bytes >> 20), rf, of, ra, oa, oc);
      (void)client->Destroy(name);
    }
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
    std::printf("%-28s %8.0f   %5.1f%% of local\n", (std::string("attached ") + backend).c_str(), bw,
                100.0 * bw / local_bw);
  }
  return broker->Stop(SIGTERM) == 0 ? 0 : 1;
}

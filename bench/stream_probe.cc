// How fast can the library learn that the work queued on a CUDA stream has
// finished? Each way it could ask, side by side, on the legacy default
// stream (PyTorch's) and on a stream of the program's own, idle (the writes
// done, as a commit finds them) and busy (a 200 µs kernel queued). The
// figure is the time from the call to the moment the library's code would
// run; its floor is a thread polling an event it just recorded.
//
//   stream_probe [--rounds N]
//
// Then the batched copy of Subscriber.copy_into: 1,000 tensors of 1.3 MB
// (1.22 GiB, the weight-sync benchmark's tree) from one buffer into 1,000
// allocations, by a copy each, by the driver's batched copy, and by
// CopyPlan's one launch, next to one copy of the same bytes, contiguous.
//
// A diagnostic for the commit, release and copy paths
// (client/src/live_cuda.cc, batch_copy.cc), not a test: it asserts
// nothing but that the batched copy copied.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "client/src/batch_copy.h"
#include "client/src/live_cuda.h"
#include "common/cuda_driver.h"
#include "tests/gpu/kernels.h"

namespace gpubroker {
namespace {

using Clock = std::chrono::steady_clock;

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

struct Row {
  std::string name;
  std::vector<double> us;
};

void Print(const Row& r) {
  std::vector<double> v = r.us;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))]; };
  std::printf("%-58s p50 %8.1f  p90 %8.1f  p99 %8.1f µs\n", r.name.c_str(), at(0.5), at(0.9), at(0.99));
}

std::atomic<int64_t> g_done_ns{0};
std::atomic<uint32_t> g_futex{0};

int64_t NowNs() { return Clock::now().time_since_epoch().count(); }

void CUDA_CB MarkDone(void*) { g_done_ns.store(NowNs(), std::memory_order_release); }
void CUDA_CB WakeFutex(void*) {
  g_futex.store(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_futex), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

int64_t WaitDone() {
  int64_t t;
  while ((t = g_done_ns.load(std::memory_order_acquire)) == 0) {
  }
  return t;
}

void CopyBench(int rounds, cudaStream_t stream) {
  constexpr size_t kTensors = 1000, kBytes = 640 * 1024 * 2;
  void* a = nullptr;
  void* f = nullptr;
  cudaMalloc(&a, kTensors * kBytes);
  cudaMalloc(&f, kTensors * kBytes);
  char* arena = static_cast<char*>(a);
  char* flat = static_cast<char*>(f);
  std::vector<void*> dsts(kTensors);
  std::vector<const void*> srcs(kTensors);
  std::vector<size_t> sizes(kTensors, kBytes);
  std::vector<CopySegment> segments;
  for (size_t i = 0; i < kTensors; ++i) {
    cudaMalloc(&dsts[i], kBytes);
    srcs[i] = arena + i * kBytes;
    segments.push_back(CopySegment{reinterpret_cast<uint64_t>(srcs[i]), reinterpret_cast<uint64_t>(dsts[i]), kBytes});
  }
  gpu::FillPattern(arena, kTensors * kBytes, 7);
  auto plan = CopyPlan::Make(0, segments);
  if (!plan.ok()) std::printf("CopyPlan: %s\n", plan.status().message().c_str());
  cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  size_t attr_index = 0;
  Row one{"copy: one cudaMemcpyAsync of 1.22 GiB, contiguous", {}}, each{"copy: 1,000 cudaMemcpyAsync", {}},
      batch{"copy: cudaMemcpyBatchAsync of 1,000", {}}, kernel{"copy: CopyPlan::Run, one launch", {}},
      launch{"copy: CopyPlan::Run call itself", {}};
  bool batch_ok = true;
  for (int r = 0; r < rounds; ++r) {
    cudaDeviceSynchronize();
    auto t0 = Clock::now();
    cudaMemcpyAsync(flat, arena, kTensors * kBytes, cudaMemcpyDeviceToDevice, stream);
    cudaStreamSynchronize(stream);
    one.us.push_back(Micros(Clock::now() - t0));
    t0 = Clock::now();
    for (size_t i = 0; i < kTensors; ++i) cudaMemcpyAsync(dsts[i], srcs[i], kBytes, cudaMemcpyDeviceToDevice, stream);
    cudaStreamSynchronize(stream);
    each.us.push_back(Micros(Clock::now() - t0));
    if (batch_ok) {
      t0 = Clock::now();
      cudaError_t e = cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), kTensors, &attr, &attr_index, 1, stream);
      cudaStreamSynchronize(stream);
      if (e != cudaSuccess) {
        std::printf("cudaMemcpyBatchAsync: %s\n", cudaGetErrorString(e));
        batch_ok = false;
      }
      batch.us.push_back(Micros(Clock::now() - t0));
    }
    if (plan.ok()) {
      cudaMemset(dsts[r % kTensors], 0, kBytes);
      cudaDeviceSynchronize();
      t0 = Clock::now();
      Status s = plan->Run(stream);
      launch.us.push_back(Micros(Clock::now() - t0));
      cudaStreamSynchronize(stream);
      kernel.us.push_back(Micros(Clock::now() - t0));
      if (!s.ok()) std::printf("CopyPlan::Run: %s\n", s.message().c_str());
    }
  }
  for (const Row* r : {&one, &each, &batch, &kernel, &launch}) Print(*r);
  if (plan.ok()) {  // every byte of every tensor where it belongs
    for (void* d : dsts) cudaMemset(d, 0, kBytes);
    (void)plan->Run(stream);
    cudaDeviceSynchronize();
    int64_t bad = 0;
    for (size_t i = 0; i < kTensors; ++i) {
      cudaMemcpy(flat + i * kBytes, dsts[i], kBytes, cudaMemcpyDeviceToDevice);
    }
    bad = gpu::CountMismatches(flat, kTensors * kBytes, 7);
    std::printf("CopyPlan: %lld mismatched words of %zu\n", static_cast<long long>(bad), kTensors * kBytes / 8);
  }
  std::printf("floor (bytes x 2 / the contiguous copy's p50 bandwidth): see the first row\n");
}

}  // namespace
}  // namespace gpubroker

int main(int argc, char** argv) {
  using namespace gpubroker;
  int rounds = 300;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = std::atoi(argv[++i]);
  }
  auto drv = CudaDriver::Get();
  if (!drv.ok()) {
    std::printf("stream_probe: no GPU (%s)\n", drv.status().message().c_str());
    return 0;
  }
  const CudaDriver& d = **drv;
  gpu::SetDevice(0);
  void* own = gpu::NewStream();
  CUevent reused = nullptr;
  d.cuEventCreate(&reused, CU_EVENT_DISABLE_TIMING);

  // A thread that sleeps on a futex a host function wakes.
  std::atomic<bool> stop{false};
  std::thread sleeper([&] {
    while (!stop.load()) {
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_futex), FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
      if (g_futex.exchange(0) == 1) g_done_ns.store(NowNs(), std::memory_order_release);
    }
  });

  // The watcher before: a thread woken by a condition variable waits on a
  // blocking-sync event recorded on the stream with cuEventSynchronize.
  std::mutex old_mu;
  std::condition_variable old_cv;
  CUevent old_event = nullptr;
  std::thread old_watcher([&] {
    cudaFree(nullptr);  // the primary context, current on this thread
    while (true) {
      CUevent e = nullptr;
      {
        std::unique_lock<std::mutex> lock(old_mu);
        old_cv.wait(lock, [&] { return old_event != nullptr || stop.load(); });
        if (stop.load()) return;
        e = old_event;
        old_event = nullptr;
      }
      d.cuEventSynchronize(e);
      g_done_ns.store(NowNs(), std::memory_order_release);
      d.cuEventDestroy(e);
    }
  });

  for (void* stream : {static_cast<void*>(nullptr), own}) {
    const char* sname = stream == nullptr ? "legacy" : "own";
    for (uint64_t busy_ns : {uint64_t{0}, uint64_t{200000}}) {
      const std::string tag = std::string(sname) + (busy_ns ? ", busy 200us" : ", idle");
      Row query{"cuStreamQuery (" + tag + ")", {}}, create{"cuEventCreate+Record (" + tag + ")", {}},
          record{"cuEventRecord, reused event (" + tag + ")", {}}, poll{"record, poll cuEventQuery: done (" + tag + ")", {}},
          watcher{"WhenStreamDone: callback runs (" + tag + ")", {}},
          old{"before: event + cuEventSynchronize on a thread (" + tag + ")", {}},
          hostfn{"cuLaunchHostFunc: host function runs (" + tag + ")", {}},
          hostfutex{"cuLaunchHostFunc: futex-woken thread runs (" + tag + ")", {}},
          launch{"cuLaunchHostFunc call itself (" + tag + ")", {}},
          blocking{"record blocking-sync event, cuEventSynchronize (" + tag + ")", {}};
      auto prepare = [&] {
        gpu::Spin(stream, 1000);  // the writes
        gpu::SyncStream(stream);
        if (busy_ns) gpu::Spin(stream, busy_ns);
      };
      auto cs = static_cast<CUstream>(stream);
      for (int i = 0; i < rounds; ++i) {
        prepare();
        auto t0 = Clock::now();
        d.cuStreamQuery(cs);
        query.us.push_back(Micros(Clock::now() - t0));
        gpu::SyncStream(stream);

        prepare();
        CUevent e = nullptr;
        t0 = Clock::now();
        d.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC);
        d.cuEventRecord(e, cs);
        create.us.push_back(Micros(Clock::now() - t0));
        d.cuEventSynchronize(e);
        d.cuEventDestroy(e);

        prepare();
        t0 = Clock::now();
        d.cuEventRecord(reused, cs);
        record.us.push_back(Micros(Clock::now() - t0));
        while (d.cuEventQuery(reused) == CUDA_ERROR_NOT_READY) {
        }
        poll.us.push_back(Micros(Clock::now() - t0));

        prepare();
        g_done_ns = 0;
        t0 = Clock::now();
        (void)WhenStreamDone(0, stream, [](Status) { g_done_ns.store(NowNs(), std::memory_order_release); });
        watcher.us.push_back((WaitDone() - t0.time_since_epoch().count()) / 1e3);

        prepare();
        g_done_ns = 0;
        t0 = Clock::now();
        {
          CUevent oe = nullptr;
          d.cuEventCreate(&oe, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC);
          d.cuEventRecord(oe, cs);
          {
            std::lock_guard<std::mutex> lock(old_mu);
            old_event = oe;
          }
          old_cv.notify_one();
        }
        old.us.push_back((WaitDone() - t0.time_since_epoch().count()) / 1e3);

        prepare();
        g_done_ns = 0;
        t0 = Clock::now();
        d.cuLaunchHostFunc(cs, MarkDone, nullptr);
        launch.us.push_back(Micros(Clock::now() - t0));
        hostfn.us.push_back((WaitDone() - t0.time_since_epoch().count()) / 1e3);

        prepare();
        g_done_ns = 0;
        t0 = Clock::now();
        d.cuLaunchHostFunc(cs, WakeFutex, nullptr);
        hostfutex.us.push_back((WaitDone() - t0.time_since_epoch().count()) / 1e3);

        prepare();
        t0 = Clock::now();
        d.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC);
        d.cuEventRecord(e, cs);
        d.cuEventSynchronize(e);
        blocking.us.push_back(Micros(Clock::now() - t0));
        d.cuEventDestroy(e);
      }
      for (const Row* r : {&query, &create, &record, &poll, &old, &watcher, &launch, &hostfn, &hostfutex, &blocking}) Print(*r);
    }
  }
  CopyBench(rounds / 10 + 5, static_cast<cudaStream_t>(own));  // a batched copy refuses the legacy stream
  stop = true;
  {
    std::lock_guard<std::mutex> lock(old_mu);
  }
  old_cv.notify_one();
  old_watcher.join();
  g_futex.store(1);
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_futex), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  sleeper.join();
  return 0;
}

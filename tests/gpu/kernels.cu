#include <cuda_runtime.h>

#include <algorithm>

#include "tests/gpu/kernels.h"

namespace gpubroker::gpu {
namespace {

__device__ __forceinline__ uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void Fill(uint64_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] = Mix(seed + i);
  }
}

__global__ void Check(const uint64_t* p, size_t n, uint64_t seed, unsigned long long* bad) {
  unsigned long long local = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    local += p[i] != Mix(seed + i);
  }
  if (local != 0) atomicAdd(bad, local);
}

__global__ void Read(const uint4* p, size_t n, unsigned long long* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) atomicAdd(sink, 1ull);  // keeps the loads alive
}

__global__ void Stamp(uint64_t* p, size_t n, uint64_t seed, uint64_t version) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] = (version << 40) | (Mix(seed + i) & ((uint64_t{1} << 40) - 1));
  }
}

__global__ void CheckStamp(const uint64_t* p, size_t n, uint64_t seed, uint64_t version, unsigned long long* bad) {
  unsigned long long local = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    local += p[i] != ((version << 40) | (Mix(seed + i) & ((uint64_t{1} << 40) - 1)));
  }
  if (local != 0) atomicAdd(bad, local);
}

__global__ void SpinKernel(uint64_t ns) {
  uint64_t start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

int Blocks() {
  int device = 0, sms = 132;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms * 8;
}

}  // namespace

bool FillPattern(void* p, size_t bytes, uint64_t seed) {
  Fill<<<Blocks(), 256>>>(static_cast<uint64_t*>(p), bytes / 8, seed);
  return cudaDeviceSynchronize() == cudaSuccess;
}

int64_t CountMismatches(const void* p, size_t bytes, uint64_t seed) {
  unsigned long long* bad = nullptr;
  if (cudaMalloc(&bad, sizeof *bad) != cudaSuccess) return -1;
  cudaMemset(bad, 0, sizeof *bad);
  Check<<<Blocks(), 256>>>(static_cast<const uint64_t*>(p), bytes / 8, seed, bad);
  unsigned long long host = 0;
  bool ok = cudaDeviceSynchronize() == cudaSuccess &&
            cudaMemcpy(&host, bad, sizeof host, cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(bad);
  return ok ? static_cast<int64_t>(host) : -1;
}

double ReadBandwidthGBs(const void* p, size_t bytes, int iterations) {
  unsigned long long* sink = nullptr;
  cudaMalloc(&sink, sizeof *sink);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best_ms = 1e30f;
  for (int i = 0; i < iterations + 1; ++i) {
    cudaEventRecord(start);
    Read<<<Blocks(), 512>>>(static_cast<const uint4*>(p), bytes / 16, sink);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (i > 0) best_ms = std::min(best_ms, ms);  // the first is warm-up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(sink);
  return static_cast<double>(bytes) / (best_ms * 1e-3) / 1e9;
}

bool StampVersion(void* p, size_t bytes, uint64_t seed, uint64_t version, void* stream) {
  Stamp<<<Blocks(), 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<uint64_t*>(p), bytes / 8, seed, version);
  return cudaGetLastError() == cudaSuccess;
}

int64_t CountVersionMismatches(const void* p, size_t bytes, uint64_t seed, uint64_t version, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  unsigned long long* bad = nullptr;
  if (cudaMallocAsync(&bad, sizeof *bad, s) != cudaSuccess) return -1;
  cudaMemsetAsync(bad, 0, sizeof *bad, s);
  CheckStamp<<<Blocks(), 256, 0, s>>>(static_cast<const uint64_t*>(p), bytes / 8, seed, version, bad);
  unsigned long long host = 0;
  cudaMemcpyAsync(&host, bad, sizeof host, cudaMemcpyDeviceToHost, s);
  cudaFreeAsync(bad, s);
  return cudaStreamSynchronize(s) == cudaSuccess ? static_cast<int64_t>(host) : -1;
}

void* NewStream() {
  cudaStream_t s = nullptr;
  return cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess ? s : nullptr;
}

void FreeStream(void* stream) { cudaStreamDestroy(static_cast<cudaStream_t>(stream)); }

bool Spin(void* stream, uint64_t nanoseconds) {
  SpinKernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(nanoseconds);
  return cudaGetLastError() == cudaSuccess;
}

bool SyncStream(void* stream) { return cudaStreamSynchronize(static_cast<cudaStream_t>(stream)) == cudaSuccess; }

bool SetDevice(int ordinal) { return cudaSetDevice(ordinal) == cudaSuccess; }

bool MemInfo(size_t* free_bytes, size_t* total_bytes) {
  return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess;
}

void* DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr;
}

void DeviceFree(void* p) { cudaFree(p); }

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace gpubroker::gpu

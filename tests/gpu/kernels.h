// Kernels the GPU tests and benchmarks use, behind a plain C++ interface.
// Data is 64-bit words derived from a seed, so a checker knows every element
// independently of the writer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gpubroker::gpu {

// Writes word i = mix(seed + i) for every word of [p, p + bytes); synchronises.
bool FillPattern(void* p, size_t bytes, uint64_t seed);
// Number of words that differ from the pattern, or -1 on a CUDA error.
int64_t CountMismatches(const void* p, size_t bytes, uint64_t seed);
// GB/s of a kernel that reads every byte, best of `iterations`.
double ReadBandwidthGBs(const void* p, size_t bytes, int iterations);
// Versions: word i of a buffer stamped with version v is
// (v << 40) | (mix(seed + i) & (2^40 - 1)), so a checker tells a whole
// version from a torn or mixed one. Both queue on `stream` (a cudaStream_t)
// and return at once; Count... synchronises `stream` to give its answer.
bool StampVersion(void* p, size_t bytes, uint64_t seed, uint64_t version, void* stream);
int64_t CountVersionMismatches(const void* p, size_t bytes, uint64_t seed, uint64_t version, void* stream);
// The same stamp, on the host.
inline uint64_t HostMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t VersionWord(uint64_t seed, uint64_t i, uint64_t version) {
  return (version << 40) | (HostMix(seed + i) & ((uint64_t{1} << 40) - 1));
}
// A stream of this process's current device, and its end.
void* NewStream();
void FreeStream(void* stream);
// Queues a kernel on `stream` that runs `nanoseconds` and touches nothing.
bool Spin(void* stream, uint64_t nanoseconds);
// Waits until the work queued on `stream` so far is done.
bool SyncStream(void* stream);
bool SetDevice(int ordinal);
// Free and total bytes on the current device.
bool MemInfo(size_t* free_bytes, size_t* total_bytes);
// A local cudaMalloc buffer, for baselines.
void* DeviceAlloc(size_t bytes);
void DeviceFree(void* p);
int DeviceCount();

}  // namespace gpubroker::gpu

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
bool SetDevice(int ordinal);
// Free and total bytes on the current device.
bool MemInfo(size_t* free_bytes, size_t* total_bytes);
// A local cudaMalloc buffer, for baselines.
void* DeviceAlloc(size_t bytes);
void DeviceFree(void* p);
int DeviceCount();

}  // namespace gpubroker::gpu

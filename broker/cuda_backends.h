// The CUDA backends: cuda_vmm (cuMemCreate, shared as a POSIX fd) and
// cuda_ipc (cuMemAlloc, shared as a legacy IPC handle).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "broker/backend.h"

namespace gpubroker {

struct CudaLimits {
  uint64_t max_bytes_per_device = 0;  // 0: unlimited
};

// Adds both CUDA backends to `backends` if a driver and a device are present;
// otherwise disables them with the reason, which requests for them then get.
// Returns true if they were added.
bool AddCudaBackends(BackendSet& backends, const CudaLimits& limits);

// The CUDA devices this process sees, by ordinal; empty without a driver.
std::vector<DeviceUuid> VisibleCudaDevices();

}  // namespace gpubroker

// The CUDA driver API, loaded at run time.
//
// libcuda.so.1 is opened with dlopen and every entry point resolved at run
// time, as PyTorch and CuPy do, so the same binaries start on a host with no
// driver (and serve host memory there). Nothing here creates a
// CUDA context; callers retain a device's primary context when they need one.
#pragma once

#include <cuda.h>

#include <string>
#include <string_view>

#include "gpubroker/status.hpp"
#include <vector>

#include "gpubroker/types.hpp"

namespace gpubroker {

class CudaDriver {
 public:
  // The process-wide driver, loaded and cuInit-ed on first use; kUnsupported
  // ("no CUDA driver on this host: ...") where there is none or no device.
  static Result<const CudaDriver*> Get();

  // CUresult → Status: out of memory → kResourceExhausted, the rest kInternal
  // or kInvalidArgument, with the driver's name for the error.
  Status Check(CUresult result, std::string_view what) const;

  int device_count() const { return static_cast<int>(uuids_.size()); }
  // The ordinal, in this process's numbering, of the device with this UUID.
  // The UUIDs are read once, when the driver loads: a process's devices do
  // not change (CUDA_VISIBLE_DEVICES is read at cuInit).
  Result<int> OrdinalOf(const DeviceUuid& uuid) const;
  Result<DeviceUuid> UuidOf(int ordinal) const;
  // "0", "cuda:1" or "GPU-xxxxxxxx-..." → a local ordinal.
  Result<int> ParseDevice(std::string_view text) const;

#define GPB_CUDA_FN(name) decltype(&::name) name = nullptr;
  GPB_CUDA_FN(cuDeviceGet)
  GPB_CUDA_FN(cuDeviceGetCount)
  GPB_CUDA_FN(cuDeviceGetUuid)
  GPB_CUDA_FN(cuDevicePrimaryCtxRetain)
  GPB_CUDA_FN(cuDevicePrimaryCtxRelease)
  GPB_CUDA_FN(cuCtxGetCurrent)
  GPB_CUDA_FN(cuCtxSetCurrent)
  GPB_CUDA_FN(cuCtxGetDevice)
  GPB_CUDA_FN(cuCtxSynchronize)
  GPB_CUDA_FN(cuGetErrorName)
  GPB_CUDA_FN(cuGetErrorString)
  GPB_CUDA_FN(cuMemGetAllocationGranularity)
  GPB_CUDA_FN(cuMemCreate)
  GPB_CUDA_FN(cuMemRelease)
  GPB_CUDA_FN(cuMemExportToShareableHandle)
  GPB_CUDA_FN(cuMemImportFromShareableHandle)
  GPB_CUDA_FN(cuMemAddressReserve)
  GPB_CUDA_FN(cuMemAddressFree)
  GPB_CUDA_FN(cuMemMap)
  GPB_CUDA_FN(cuMemUnmap)
  GPB_CUDA_FN(cuMemSetAccess)
  GPB_CUDA_FN(cuMemsetD8)
  GPB_CUDA_FN(cuMemAlloc)
  GPB_CUDA_FN(cuMemFree)
  GPB_CUDA_FN(cuMemGetInfo)
  GPB_CUDA_FN(cuIpcGetMemHandle)
  GPB_CUDA_FN(cuIpcOpenMemHandle)
  GPB_CUDA_FN(cuIpcCloseMemHandle)
#undef GPB_CUDA_FN

 private:
  CudaDriver() = default;
  Status Load();
  Result<DeviceUuid> QueryUuid(int ordinal) const;
  std::vector<DeviceUuid> uuids_;  // by ordinal
};

// Makes a device's primary context current on this thread for a scope, and
// restores the previous one. Retaining a primary context is what creates it,
// so use this only for devices the caller asked for.
class ScopedDeviceContext {
 public:
  static Result<ScopedDeviceContext> Enter(const CudaDriver& driver, int ordinal);
  ScopedDeviceContext(ScopedDeviceContext&& other) noexcept;
  ScopedDeviceContext& operator=(ScopedDeviceContext&&) = delete;
  ~ScopedDeviceContext();

 private:
  ScopedDeviceContext() = default;
  const CudaDriver* driver_ = nullptr;
  CUdevice device_ = 0;
  CUcontext previous_ = nullptr;
  bool active_ = false;
};

}  // namespace gpubroker

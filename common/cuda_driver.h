// The CUDA driver API, loaded at run time.
//
// libcuda.so.1 is opened with dlopen and every entry point resolved at run
// time, as PyTorch and CuPy do, so the same binaries start on a host with no
// driver (and serve host memory there). Nothing here creates a
// CUDA context; callers retain a device's primary context when they need one.
#pragma once

#include <cuda.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

// Every driver entry point the project uses, resolved by its header name.
#define GPB_CUDA_FUNCTIONS(X) \
  X(cuDeviceGet) \
  X(cuDeviceGetCount) \
  X(cuDeviceGetUuid) \
  X(cuDevicePrimaryCtxRetain) \
  X(cuDevicePrimaryCtxRelease) \
  X(cuCtxGetCurrent) \
  X(cuCtxSetCurrent) \
  X(cuCtxGetDevice) \
  X(cuCtxSynchronize) \
  X(cuGetErrorName) \
  X(cuGetErrorString) \
  X(cuMemGetAllocationGranularity) \
  X(cuMemCreate) \
  X(cuMemRelease) \
  X(cuMemExportToShareableHandle) \
  X(cuMemImportFromShareableHandle) \
  X(cuMemAddressReserve) \
  X(cuMemAddressFree) \
  X(cuMemMap) \
  X(cuMemUnmap) \
  X(cuMemSetAccess) \
  X(cuMemsetD8) \
  X(cuMemAlloc) \
  X(cuMemFree) \
  X(cuMemGetInfo) \
  X(cuMemGetAddressRange) \
  X(cuIpcGetMemHandle) \
  X(cuIpcOpenMemHandle) \
  X(cuIpcCloseMemHandle) \
  X(cuEventCreate) \
  X(cuEventRecord) \
  X(cuEventSynchronize) \
  X(cuEventQuery) \
  X(cuLaunchHostFunc) \
  X(cuEventDestroy) \
  X(cuIpcGetEventHandle) \
  X(cuIpcOpenEventHandle) \
  X(cuStreamWaitEvent) \
  X(cuStreamQuery) \
  X(cuDeviceGetAttribute) \
  X(cuModuleLoadData) \
  X(cuModuleGetFunction) \
  X(cuModuleUnload) \
  X(cuLaunchKernel) \
  X(cuMemcpyHtoD) \
  X(cuMemcpyHtoDAsync) \
  X(cuMemcpyDtoHAsync) \
  X(cuMemHostAlloc) \
  X(cuMemFreeHost) \
  X(cuStreamCreate) \
  X(cuStreamDestroy)

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
  GPB_CUDA_FUNCTIONS(GPB_CUDA_FN)
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

// The context for work on device `ordinal` that a caller queues on a stream
// of its own: the current one if it is on that device (the stream is one of
// its own), else the device's primary context, made current for the scope.
Result<std::optional<ScopedDeviceContext>> EnterUnlessCurrent(const CudaDriver& driver, int ordinal);

// The properties of every VMM allocation the project makes or imports:
// pinned device memory on `ordinal`, shareable as a POSIX file descriptor.
// The broker allocates with them and a client imports with them, so they
// are built here once.
inline CUmemAllocationProp VmmAllocationProperties(int ordinal) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = ordinal;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return prop;
}

// Imports the cuda_vmm allocation a POSIX fd names and maps its first
// `size` bytes (a multiple of `granularity`) at a range reserved for it;
// the mapping holds the memory. Access is the caller's to grant
// (cuMemSetAccess); cuMemUnmap and cuMemAddressFree undo it.
Result<CUdeviceptr> MapVmmFd(const CudaDriver& d, int fd, size_t size, size_t granularity);

}  // namespace gpubroker

#include "common/cuda_driver.h"

#include <dlfcn.h>

#include <charconv>
#include <cstring>
#include <mutex>

namespace gpubroker {
Result<const CudaDriver*> CudaDriver::Get() {
  static CudaDriver* driver = nullptr;
  static Status status;
  static std::once_flag once;
  std::call_once(once, [] {
    auto* d = new CudaDriver();
    status = d->Load();
    if (status.ok()) {
      driver = d;
    } else {
      delete d;
    }
  });
  if (driver == nullptr) return status;
  return static_cast<const CudaDriver*>(driver);
}

Status CudaDriver::Load() {
  void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = ::dlerror();
    return Unsupported(std::string("no CUDA driver on this host (") + (why ? why : "libcuda.so.1") + ")");
  }
  auto init = reinterpret_cast<decltype(&::cuInit)>(::dlsym(lib, "cuInit"));
  if (init == nullptr) return Unsupported("libcuda.so.1 on this host has no cuInit");
  CUresult r = init(0);
  if (r != CUDA_SUCCESS) {
    return Unsupported("no usable CUDA device on this host (cuInit returned " + std::to_string(r) + ")");
  }
  // Each entry point is resolved by the exact symbol cuda.h binds its name to
  // (cuMemAlloc -> cuMemAlloc_v2, cuCtxSynchronize -> cuCtxSynchronize), so
  // the ABI matches the declaration we call it through. cuGetProcAddress
  // would hand back the newest variant for a CUDA version instead, which can
  // differ: for 13.0 it returns cuCtxSynchronize_v2(CUcontext) for
  // "cuCtxSynchronize".
  Status missing = Status::Ok();
  auto resolve = [&](const char* symbol, auto& fn) {
    void* p = ::dlsym(lib, symbol);
    if (p == nullptr) {
      if (missing.ok()) missing = Unsupported(std::string("the CUDA driver lacks ") + symbol);
      return;
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
  };
#define GPB_SYMBOL_NAME(expanded) #expanded
#define GPB_SYMBOL(name) GPB_SYMBOL_NAME(name)
#define GPB_RESOLVE(name) resolve(GPB_SYMBOL(name), name);
  GPB_CUDA_FUNCTIONS(GPB_RESOLVE)
#undef GPB_RESOLVE
#undef GPB_SYMBOL
#undef GPB_SYMBOL_NAME
  GPB_RETURN_IF_ERROR(missing);
  int count = 0;
  GPB_RETURN_IF_ERROR(Check(cuDeviceGetCount(&count), "cuDeviceGetCount"));
  if (count == 0) return Unsupported("no CUDA device visible to this process");
  for (int i = 0; i < count; ++i) {
    GPB_ASSIGN_OR_RETURN(DeviceUuid u, QueryUuid(i));
    uuids_.push_back(u);
  }
  return Status::Ok();
}

Status CudaDriver::Check(CUresult result, std::string_view what) const {
  if (result == CUDA_SUCCESS) return Status::Ok();
  const char* name = nullptr;
  const char* text = nullptr;
  if (cuGetErrorName != nullptr) cuGetErrorName(result, &name);
  if (cuGetErrorString != nullptr) cuGetErrorString(result, &text);
  std::string message = std::string(what) + ": " + (name ? name : std::to_string(result)) +
                        (text ? std::string(" (") + text + ")" : "");
  switch (result) {
    case CUDA_ERROR_OUT_OF_MEMORY: return ResourceExhausted(message);
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_DEVICE: return InvalidArgument(message);
    case CUDA_ERROR_NOT_SUPPORTED: return Unsupported(message);
    case CUDA_ERROR_NO_DEVICE: return Unsupported(message);
    default: return Internal(message);
  }
}

Result<DeviceUuid> CudaDriver::UuidOf(int ordinal) const {
  if (ordinal < 0 || ordinal >= device_count()) {
    return InvalidArgument("CUDA device " + std::to_string(ordinal) + " does not exist (" +
                           std::to_string(device_count()) + " visible)");
  }
  return uuids_[static_cast<size_t>(ordinal)];
}

Result<DeviceUuid> CudaDriver::QueryUuid(int ordinal) const {
  CUdevice dev;
  GPB_RETURN_IF_ERROR(Check(cuDeviceGet(&dev, ordinal), "cuDeviceGet"));
  CUuuid uuid;
  GPB_RETURN_IF_ERROR(Check(cuDeviceGetUuid(&uuid, dev), "cuDeviceGetUuid"));
  DeviceUuid out;
  std::memcpy(out.data(), uuid.bytes, out.size());
  return out;
}

Result<int> CudaDriver::OrdinalOf(const DeviceUuid& uuid) const {
  for (size_t i = 0; i < uuids_.size(); ++i) {
    if (uuids_[i] == uuid) return static_cast<int>(i);
  }
  return NotFound("CUDA device " + FormatUuid(uuid) + " is not visible to this process");
}

Result<int> CudaDriver::ParseDevice(std::string_view text) const {
  if (text.rfind("GPU-", 0) == 0) {
    for (size_t i = 0; i < uuids_.size(); ++i) {
      if (FormatUuid(uuids_[i]) == text) return static_cast<int>(i);
    }
    return NotFound("no visible CUDA device has UUID " + std::string(text));
  }
  if (text.rfind("cuda:", 0) == 0) text.remove_prefix(5);
  int ordinal = -1;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), ordinal);
  if (ec != std::errc() || p != text.data() + text.size()) {
    return InvalidArgument("'" + std::string(text) + "' is not a device ordinal or GPU-<uuid>");
  }
  GPB_RETURN_IF_ERROR(UuidOf(ordinal).status());
  return ordinal;
}

Result<ScopedDeviceContext> ScopedDeviceContext::Enter(const CudaDriver& driver, int ordinal) {
  ScopedDeviceContext s;
  s.driver_ = &driver;
  GPB_RETURN_IF_ERROR(driver.Check(driver.cuDeviceGet(&s.device_, ordinal), "cuDeviceGet"));
  GPB_RETURN_IF_ERROR(driver.Check(driver.cuCtxGetCurrent(&s.previous_), "cuCtxGetCurrent"));
  CUcontext ctx = nullptr;
  GPB_RETURN_IF_ERROR(
      driver.Check(driver.cuDevicePrimaryCtxRetain(&ctx, s.device_), "cuDevicePrimaryCtxRetain"));
  if (CUresult r = driver.cuCtxSetCurrent(ctx); r != CUDA_SUCCESS) {
    driver.cuDevicePrimaryCtxRelease(s.device_);
    return driver.Check(r, "cuCtxSetCurrent");
  }
  s.active_ = true;
  return s;
}

Result<CUdeviceptr> MapVmmFd(const CudaDriver& d, int fd, size_t size, size_t granularity) {
  CUmemGenericAllocationHandle handle = 0;
  GPB_RETURN_IF_ERROR(d.Check(d.cuMemImportFromShareableHandle(&handle, reinterpret_cast<void*>(static_cast<intptr_t>(fd)),
                                                               CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
                              "cuMemImportFromShareableHandle"));
  CUdeviceptr ptr = 0;
  Status s = d.Check(d.cuMemAddressReserve(&ptr, size, granularity, 0, 0), "cuMemAddressReserve");
  if (s.ok()) {
    s = d.Check(d.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap");
    if (!s.ok()) d.cuMemAddressFree(ptr, size);
  }
  d.cuMemRelease(handle);  // the mapping holds the memory now
  GPB_RETURN_IF_ERROR(s);
  return ptr;
}

Result<std::optional<ScopedDeviceContext>> EnterUnlessCurrent(const CudaDriver& d, int ordinal) {
  CUcontext current = nullptr;
  CUdevice want = 0, have = 0;
  if (d.cuCtxGetCurrent(&current) == CUDA_SUCCESS && current != nullptr &&
      d.cuDeviceGet(&want, ordinal) == CUDA_SUCCESS && d.cuCtxGetDevice(&have) == CUDA_SUCCESS && have == want) {
    return std::optional<ScopedDeviceContext>();
  }
  GPB_ASSIGN_OR_RETURN(ScopedDeviceContext entered, ScopedDeviceContext::Enter(d, ordinal));
  return std::optional<ScopedDeviceContext>(std::move(entered));
}

ScopedDeviceContext::ScopedDeviceContext(ScopedDeviceContext&& other) noexcept
    : driver_(other.driver_), device_(other.device_), previous_(other.previous_), active_(other.active_) {
  other.active_ = false;
}

ScopedDeviceContext::~ScopedDeviceContext() {
  if (!active_) return;
  driver_->cuCtxSetCurrent(previous_);
  driver_->cuDevicePrimaryCtxRelease(device_);
}

}  // namespace gpubroker

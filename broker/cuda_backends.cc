#include "broker/cuda_backends.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include <spdlog/spdlog.h>

#include "common/cuda_driver.h"
#include "common/thread_annotations.h"
#include "common/wire.h"

namespace gpubroker {
namespace {

// Devices the CUDA backends use: resolves a request's device, keeps each
// used device's primary context retained for the broker's lifetime (creating
// and destroying it per allocation would cost hundreds of milliseconds, and
// cuMemAlloc memory dies with its context) and counts bytes per device.
class CudaDevices {
 public:
  CudaDevices(const CudaDriver& driver, CudaLimits limits) : driver_(driver), limits_(limits) {}
  ~CudaDevices() {
    for (auto& [ordinal, device] : retained_) driver_.cuDevicePrimaryCtxRelease(device);
  }

  Result<int> Resolve(const DeviceSelector& s) const {
    if (s.by_uuid) return driver_.OrdinalOf(s.uuid);
    int ordinal = s.ordinal < 0 ? 0 : s.ordinal;
    GPB_RETURN_IF_ERROR(driver_.UuidOf(ordinal).status());
    return ordinal;
  }

  // Makes the device's primary context current on this (the event loop's) thread.
  Status Enter(int ordinal) {
    CUdevice dev;
    GPB_RETURN_IF_ERROR(driver_.Check(driver_.cuDeviceGet(&dev, ordinal), "cuDeviceGet"));
    CUcontext ctx = nullptr;
    auto it = contexts_.find(ordinal);
    if (it == contexts_.end()) {
      GPB_RETURN_IF_ERROR(
          driver_.Check(driver_.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain"));
      retained_[ordinal] = dev;
      contexts_[ordinal] = ctx;
    } else {
      ctx = it->second;
    }
    return driver_.Check(driver_.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  }

  Status Reserve(int ordinal, uint64_t bytes) {
    MutexLock lock(mu_);
    uint64_t& used = bytes_[ordinal];
    if (limits_.max_bytes_per_device != 0 && used + bytes > limits_.max_bytes_per_device) {
      return ResourceExhausted("device byte limit reached on cuda:" + std::to_string(ordinal) + ": " +
                               std::to_string(used) + " allocated + " + std::to_string(bytes) +
                               " asked > " + std::to_string(limits_.max_bytes_per_device));
    }
    used += bytes;
    return Status::Ok();
  }
  void Unreserve(int ordinal, uint64_t bytes) {
    MutexLock lock(mu_);
    bytes_[ordinal] -= bytes;
  }

  Device Describe(int ordinal) const {
    Device d;
    d.type = Device::kCuda;
    d.ordinal = ordinal;
    if (auto u = driver_.UuidOf(ordinal); u.ok()) d.uuid = *u;
    return d;
  }

  Status OutOfMemory(Status s, int ordinal, uint64_t bytes) const {
    if (s.code() != Code::kResourceExhausted) return s;
    return ResourceExhausted("out of device memory on cuda:" + std::to_string(ordinal) + " (" +
                             FormatUuid(Describe(ordinal).uuid) + ") allocating " +
                             std::to_string(bytes) + " bytes: " + s.message());
  }

  const CudaDriver& driver() const { return driver_; }

 private:
  const CudaDriver& driver_;
  CudaLimits limits_;
  std::map<int, CUdevice> retained_;
  std::map<int, CUcontext> contexts_;
  Mutex mu_;
  std::map<int, uint64_t> bytes_ GPB_GUARDED_BY(mu_);
};

class VmmMemory final : public BackendMemory {
 public:
  VmmMemory(std::shared_ptr<CudaDevices> devices, int ordinal, CUmemGenericAllocationHandle handle,
            UniqueFd fd, uint64_t size)
      : devices_(std::move(devices)), ordinal_(ordinal), handle_(handle), fd_(std::move(fd)), size_(size) {}
  ~VmmMemory() override {
    devices_->driver().cuMemRelease(handle_);  // clients' imports keep their own references
    devices_->Unreserve(ordinal_, size_);
  }
  uint64_t size() const override { return size_; }
  Device device() const override { return devices_->Describe(ordinal_); }
  Result<SharedHandle> Share(uint32_t) override {
    // The importer sets its own access flags; an fd cannot be made read-only.
    UniqueFd copy(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
    if (!copy.valid()) return PosixError("dup exported VMM fd", errno);
    return SharedHandle{std::move(copy), std::nullopt};
  }

 private:
  std::shared_ptr<CudaDevices> devices_;
  int ordinal_;
  CUmemGenericAllocationHandle handle_;
  UniqueFd fd_;
  uint64_t size_;
};

// Fills fresh memory with zeros so no client sees another's old data.
Status ZeroFill(const CudaDriver& d, CUmemGenericAllocationHandle handle, uint64_t size, int ordinal) {
  CUdeviceptr ptr = 0;
  GPB_RETURN_IF_ERROR(d.Check(d.cuMemAddressReserve(&ptr, size, 0, 0, 0), "cuMemAddressReserve"));
  Status s = d.Check(d.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap");
  if (s.ok()) {
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = ordinal;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    s = d.Check(d.cuMemSetAccess(ptr, size, &access, 1), "cuMemSetAccess");
    if (s.ok()) s = d.Check(d.cuMemsetD8(ptr, 0, size), "cuMemsetD8");
    if (s.ok()) s = d.Check(d.cuCtxSynchronize(), "cuCtxSynchronize");
    d.cuMemUnmap(ptr, size);
  }
  d.cuMemAddressFree(ptr, size);
  return s;
}

class CudaVmmBackend final : public Backend {
 public:
  explicit CudaVmmBackend(std::shared_ptr<CudaDevices> devices) : devices_(std::move(devices)) {}
  BackendKind kind() const override { return BackendKind::kCudaVmm; }

  Result<std::unique_ptr<BackendMemory>> Allocate(const AllocationRequest& request) override {
    const CudaDriver& d = devices_->driver();
    GPB_ASSIGN_OR_RETURN(int ordinal, devices_->Resolve(request.device));
    GPB_RETURN_IF_ERROR(devices_->Enter(ordinal));
    CUmemAllocationProp prop = VmmAllocationProperties(ordinal);
    size_t granularity = 0;
    GPB_RETURN_IF_ERROR(d.Check(
        d.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
        "cuMemGetAllocationGranularity"));
    uint64_t bytes = request.bytes == 0 ? 1 : request.bytes;
    if (bytes > UINT64_MAX - granularity) return InvalidArgument("allocation size overflows");
    uint64_t size = (bytes + granularity - 1) / granularity * granularity;
    GPB_RETURN_IF_ERROR(devices_->Reserve(ordinal, size));
    CUmemGenericAllocationHandle handle = 0;
    if (Status s = d.Check(d.cuMemCreate(&handle, size, &prop, 0), "cuMemCreate"); !s.ok()) {
      devices_->Unreserve(ordinal, size);
      return devices_->OutOfMemory(s, ordinal, size);
    }
    int raw_fd = -1;
    Status s = d.Check(d.cuMemExportToShareableHandle(&raw_fd, handle,
                                                      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                       "cuMemExportToShareableHandle");
    UniqueFd fd(raw_fd);
    if (s.ok()) s = ZeroFill(d, handle, size, ordinal);
    if (!s.ok()) {
      d.cuMemRelease(handle);
      devices_->Unreserve(ordinal, size);
      return devices_->OutOfMemory(s, ordinal, size);
    }
    ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    return std::unique_ptr<BackendMemory>(new VmmMemory(devices_, ordinal, handle, std::move(fd), size));
  }

  Result<std::unique_ptr<BackendMemory>> Adopt(UniqueFd fd, uint64_t bytes, const Device& device) override {
    const CudaDriver& d = devices_->driver();
    GPB_ASSIGN_OR_RETURN(int ordinal, d.OrdinalOf(device.uuid));
    CUmemAllocationProp prop = VmmAllocationProperties(ordinal);
    size_t granularity = 0;
    GPB_RETURN_IF_ERROR(d.Check(
        d.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
        "cuMemGetAllocationGranularity"));
    uint64_t size = (std::max<uint64_t>(bytes, 1) + granularity - 1) / granularity * granularity;
    CUmemGenericAllocationHandle handle = 0;
    GPB_RETURN_IF_ERROR(d.Check(
        d.cuMemImportFromShareableHandle(&handle, reinterpret_cast<void*>(static_cast<intptr_t>(fd.get())),
                                         CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
        "cuMemImportFromShareableHandle"));
    if (Status s = devices_->Reserve(ordinal, size); !s.ok()) {
      d.cuMemRelease(handle);
      return s;
    }
    return std::unique_ptr<BackendMemory>(new VmmMemory(devices_, ordinal, handle, std::move(fd), size));
  }

 private:
  std::shared_ptr<CudaDevices> devices_;
};

class IpcMemory final : public BackendMemory {
 public:
  IpcMemory(std::shared_ptr<CudaDevices> devices, int ordinal, CUdeviceptr ptr, uint64_t size,
            CUipcMemHandle handle)
      : devices_(std::move(devices)), ordinal_(ordinal), ptr_(ptr), size_(size), handle_(handle) {}
  ~IpcMemory() override {
    if (devices_->Enter(ordinal_).ok()) devices_->driver().cuMemFree(ptr_);
    devices_->Unreserve(ordinal_, size_);
  }
  uint64_t size() const override { return size_; }
  Device device() const override { return devices_->Describe(ordinal_); }
  Result<SharedHandle> Share(uint32_t) override {
    SharedHandle h;
    h.ipc_handle.emplace();
    static_assert(sizeof(CUipcMemHandle) == 64);
    std::memcpy(h.ipc_handle->data(), &handle_, sizeof handle_);
    return h;
  }

 private:
  std::shared_ptr<CudaDevices> devices_;
  int ordinal_;
  CUdeviceptr ptr_;
  uint64_t size_;
  CUipcMemHandle handle_;
};

class CudaIpcBackend final : public Backend {
 public:
  explicit CudaIpcBackend(std::shared_ptr<CudaDevices> devices) : devices_(std::move(devices)) {}
  BackendKind kind() const override { return BackendKind::kCudaIpc; }

  Result<std::unique_ptr<BackendMemory>> Allocate(const AllocationRequest& request) override {
    const CudaDriver& d = devices_->driver();
    GPB_ASSIGN_OR_RETURN(int ordinal, devices_->Resolve(request.device));
    GPB_RETURN_IF_ERROR(devices_->Enter(ordinal));
    uint64_t size = request.bytes == 0 ? 1 : request.bytes;
    GPB_RETURN_IF_ERROR(devices_->Reserve(ordinal, size));
    CUdeviceptr ptr = 0;
    Status s = d.Check(d.cuMemAlloc(&ptr, size), "cuMemAlloc");
    CUipcMemHandle handle{};
    if (s.ok()) s = d.Check(d.cuMemsetD8(ptr, 0, size), "cuMemsetD8");
    if (s.ok()) s = d.Check(d.cuCtxSynchronize(), "cuCtxSynchronize");
    if (s.ok()) s = d.Check(d.cuIpcGetMemHandle(&handle, ptr), "cuIpcGetMemHandle");
    if (!s.ok()) {
      if (ptr != 0) d.cuMemFree(ptr);
      devices_->Unreserve(ordinal, size);
      return devices_->OutOfMemory(s, ordinal, size);
    }
    return std::unique_ptr<BackendMemory>(new IpcMemory(devices_, ordinal, ptr, size, handle));
  }

 private:
  std::shared_ptr<CudaDevices> devices_;
};

}  // namespace

std::vector<DeviceUuid> VisibleCudaDevices() {
  std::vector<DeviceUuid> out;
  auto d = CudaDriver::Get();
  if (!d.ok()) return out;
  for (int i = 0; i < (*d)->device_count(); ++i) {
    if (auto u = (*d)->UuidOf(i); u.ok()) out.push_back(*u);
  }
  return out;
}

bool AddCudaBackends(BackendSet& backends, const CudaLimits& limits) {
  auto driver = CudaDriver::Get();
  if (!driver.ok()) {
    backends.Disable(BackendKind::kCudaVmm, driver.status().message());
    backends.Disable(BackendKind::kCudaIpc, driver.status().message());
    spdlog::info("CUDA backends off: {}", driver.status().message());
    return false;
  }
  auto devices = std::make_shared<CudaDevices>(**driver, limits);
  backends.Add(std::make_unique<CudaVmmBackend>(devices));
  backends.Add(std::make_unique<CudaIpcBackend>(devices));
  for (int i = 0; i < (*driver)->device_count(); ++i) {
    auto uuid = (*driver)->UuidOf(i);
    spdlog::info("CUDA device {}: {}", i, uuid.ok() ? FormatUuid(*uuid) : uuid.status().message());
  }
  return true;
}

}  // namespace gpubroker

#include <cstring>
#include <optional>
#include <vector>

#include "common/cuda_driver.h"
#include "client/src/mapping.h"

namespace gpubroker {
namespace {

// The device a mapping should be reachable from besides its own: the device
// of the calling thread's current context, if it has one.
std::optional<int> CurrentDevice(const CudaDriver& d) {
  CUcontext ctx = nullptr;
  CUdevice dev = 0;
  if (d.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == nullptr) return std::nullopt;
  if (d.cuCtxGetDevice(&dev) != CUDA_SUCCESS) return std::nullopt;
  return static_cast<int>(dev);
}

class VmmMapping final : public ClientMapping {
 public:
  VmmMapping(const CudaDriver& d, CUdeviceptr ptr, size_t size) : d_(d), ptr_(ptr) {
    base_ = reinterpret_cast<void*>(ptr);
    size_ = size;
  }
  ~VmmMapping() override {
    d_.cuMemUnmap(ptr_, size_);
    d_.cuMemAddressFree(ptr_, size_);
  }

 private:
  const CudaDriver& d_;
  CUdeviceptr ptr_;
};

Result<std::unique_ptr<ClientMapping>> MapVmm(const CudaDriver& d, const SlotDescriptor& slot,
                                              UniqueFd fd, bool writable) {
  if (!fd.valid()) return ProtocolError("cuda_vmm attach reply carried no file descriptor");
  DeviceUuid uuid;
  std::memcpy(uuid.data(), slot.device_uuid, uuid.size());
  auto own = d.OrdinalOf(uuid);
  std::optional<int> current = CurrentDevice(d);
  if (!own.ok() && !current) return own.status();
  std::vector<int> access_from;
  if (own.ok()) access_from.push_back(*own);
  if (current && (!own.ok() || *current != *own)) access_from.push_back(*current);

  const CUmemAllocationProp prop = VmmAllocationProperties(access_from.front());
  size_t granularity = 0;
  GPB_RETURN_IF_ERROR(d.Check(
      d.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
      "cuMemGetAllocationGranularity"));
  size_t size = (slot.allocation_bytes + granularity - 1) / granularity * granularity;

  auto map = [&]() -> Result<std::unique_ptr<VmmMapping>> {
    GPB_ASSIGN_OR_RETURN(CUdeviceptr ptr, MapVmmFd(d, fd.get(), size, granularity));
    std::vector<CUmemAccessDesc> descs;
    for (int ordinal : access_from) {
      CUmemAccessDesc a{};
      a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      a.location.id = ordinal;
      a.flags = writable ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ;
      descs.push_back(a);
    }
    auto mapping = std::make_unique<VmmMapping>(d, ptr, size);
    GPB_RETURN_IF_ERROR(
        d.Check(d.cuMemSetAccess(ptr, size, descs.data(), descs.size()), "cuMemSetAccess"));
    return mapping;
  };
  auto mapping = map();
  if (!mapping.ok() && !current) {
    // Should the driver want a current context for these calls, use the slot's
    // own device, only for their duration.
    GPB_ASSIGN_OR_RETURN(ScopedDeviceContext scope, ScopedDeviceContext::Enter(d, *own));
    mapping = map();
  }
  GPB_RETURN_IF_ERROR(mapping.status());
  (*mapping)->SetDevice(Device{Device::kCuda, own.ok() ? *own : -1, uuid});
  return std::unique_ptr<ClientMapping>(std::move(mapping).value());
}

// Keeps the context the handle was opened in, to close it there.
class IpcMapping final : public ClientMapping {
 public:
  IpcMapping(const CudaDriver& d, CUcontext ctx, std::optional<ScopedDeviceContext> retained,
             CUdeviceptr ptr, size_t size)
      : d_(d), ctx_(ctx), retained_(std::move(retained)), ptr_(ptr) {
    base_ = reinterpret_cast<void*>(ptr);
    size_ = size;
  }
  ~IpcMapping() override {
    CUcontext previous = nullptr;
    d_.cuCtxGetCurrent(&previous);
    d_.cuCtxSetCurrent(ctx_);
    d_.cuIpcCloseMemHandle(ptr_);
    d_.cuCtxSetCurrent(previous);
  }

 private:
  const CudaDriver& d_;
  CUcontext ctx_;
  std::optional<ScopedDeviceContext> retained_;
  CUdeviceptr ptr_;
};

Result<std::unique_ptr<ClientMapping>> MapIpc(const CudaDriver& d, const SlotDescriptor& slot) {
  DeviceUuid uuid;
  std::memcpy(uuid.data(), slot.device_uuid, uuid.size());
  auto own = d.OrdinalOf(uuid);
  // Open in the caller's current context (peer access is enabled lazily);
  // only with none current do we use the slot's own device, which the caller
  // asked for by attaching the slot.
  std::optional<ScopedDeviceContext> retained;
  if (!CurrentDevice(d)) {
    if (!own.ok()) return own.status();
    GPB_ASSIGN_OR_RETURN(ScopedDeviceContext scope, ScopedDeviceContext::Enter(d, *own));
    retained.emplace(std::move(scope));
  }
  CUcontext ctx = nullptr;
  GPB_RETURN_IF_ERROR(d.Check(d.cuCtxGetCurrent(&ctx), "cuCtxGetCurrent"));
  CUipcMemHandle handle;
  std::memcpy(&handle, slot.ipc_handle, sizeof handle);
  CUdeviceptr ptr = 0;
  GPB_RETURN_IF_ERROR(d.Check(d.cuIpcOpenMemHandle(&ptr, handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
                              "cuIpcOpenMemHandle"));
  // The driver's own record of the allocation's size, not the message's.
  CUdeviceptr range_base = 0;
  size_t range = 0;
  if (d.cuMemGetAddressRange(&range_base, &range, ptr) != CUDA_SUCCESS || range_base != ptr ||
      range < slot.allocation_bytes) {
    range = 0;
  }
  auto mapping = std::make_unique<IpcMapping>(d, ctx, std::move(retained), ptr, range);
  mapping->SetDevice(Device{Device::kCuda, own.ok() ? *own : -1, uuid});
  return std::unique_ptr<ClientMapping>(std::move(mapping));
}

}  // namespace

Result<std::unique_ptr<ClientMapping>> MapCuda(const SlotDescriptor& slot, UniqueFd fd, bool writable) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* d, CudaDriver::Get());
  if (slot.backend == static_cast<uint16_t>(BackendKind::kCudaVmm)) {
    return MapVmm(*d, slot, std::move(fd), writable);
  }
  return MapIpc(*d, slot);
}

Result<DeviceUuid> LocalDeviceUuid(int ordinal) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* d, CudaDriver::Get());
  return d->UuidOf(ordinal);
}

void LocalizeDevice(SlotInfo& slot) {
  if (slot.device.type != Device::kCuda) return;
  auto d = CudaDriver::Get();
  auto ordinal = d.ok() ? (*d)->OrdinalOf(slot.device.uuid) : Result<int>(NotFound(""));
  slot.device.ordinal = ordinal.ok() ? *ordinal : -1;
}

}  // namespace gpubroker

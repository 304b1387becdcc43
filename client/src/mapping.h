// How a client maps an allocation it was handed: mmap for host memory,
// import + map for cuda_vmm, cuIpcOpenMemHandle for cuda_ipc. Destroying a
// mapping unmaps it.
#pragma once

#include <memory>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"
#include "common/posix.h"
#include "common/slot_descriptor.h"

namespace gpubroker {

class ClientMapping {
 public:
  virtual ~ClientMapping() = default;
  void* base() const { return base_; }
  // Bytes mapped at base(): every view into the mapping must lie inside.
  size_t size() const { return size_; }
  // Where the memory is, in this process's numbering.
  const Device& device() const { return device_; }
  void SetDevice(const Device& d) { device_ = d; }

 protected:
  void* base_ = nullptr;
  size_t size_ = 0;
  Device device_;
};

Result<std::unique_ptr<ClientMapping>> MapHost(const SlotDescriptor& slot, UniqueFd fd, bool writable);

// kUnsupported when built without CUDA or run without a driver.
Result<std::unique_ptr<ClientMapping>> MapCuda(const SlotDescriptor& slot, UniqueFd fd, bool writable);

// The UUID of this process's CUDA device `ordinal`; kUnsupported without a
// driver.
Result<DeviceUuid> LocalDeviceUuid(int ordinal);

// Rewrites a CUDA slot's ordinal from the broker's numbering to this
// process's (by UUID); -1 if the device is not visible here.
void LocalizeDevice(SlotInfo& slot);

}  // namespace gpubroker

// Built instead of mapping_cuda.cc when no CUDA toolkit was found.
#include "client/src/mapping.h"

namespace gpubroker {

Result<std::unique_ptr<ClientMapping>> MapCuda(const SlotDescriptor& slot, UniqueFd, bool) {
  return Unsupported("slot '" + std::string(slot.name) +
                     "' holds GPU memory but this client library was built without CUDA support");
}

Result<DeviceUuid> LocalDeviceUuid(int) {
  return Unsupported("this client library was built without CUDA support");
}

void LocalizeDevice(SlotInfo& slot) {
  if (slot.device.type == Device::kCuda) slot.device.ordinal = -1;
}

}  // namespace gpubroker

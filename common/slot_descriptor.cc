#include "common/slot_descriptor.h"

#include <cstring>
#include <string>

#include "common/validate.h"

namespace gpubroker {

Status ValidateDescriptor(const SlotDescriptor& d) {
  if (std::memchr(d.name, '\0', sizeof d.name) == nullptr) {
    return ProtocolError("slot descriptor name is not NUL-terminated");
  }
  if (d.state == static_cast<uint16_t>(SlotState::kLive)) {
    if (Status name = ValidateName(d.name); !name.ok()) return ProtocolError("slot descriptor: " + name.message());
  }
  if (d.ndim > static_cast<uint32_t>(kMaxDims)) {
    return ProtocolError("slot descriptor has ndim " + std::to_string(d.ndim));
  }
  if (d.state > static_cast<uint16_t>(SlotState::kLive)) {
    return ProtocolError("slot descriptor has unknown state " + std::to_string(d.state));
  }
  if (d.state == static_cast<uint16_t>(SlotState::kLive)) {
    if (d.backend < static_cast<uint16_t>(BackendKind::kHost) ||
        d.backend > static_cast<uint16_t>(BackendKind::kCudaIpc)) {
      return ProtocolError("slot descriptor has unknown backend " + std::to_string(d.backend));
    }
    if (d.nbuffers == 0 || d.nbuffers > kMaxBuffers || d.buffer_bytes == 0 ||
        d.buffer_bytes > d.allocation_bytes / d.nbuffers) {
      return ProtocolError("slot descriptor has " + std::to_string(d.nbuffers) + " buffers of " +
                           std::to_string(d.buffer_bytes) + " bytes in " + std::to_string(d.allocation_bytes));
    }
    DType dtype{d.dtype_code, d.dtype_bits, d.dtype_lanes};
    auto fits = CheckViewFits(dtype, {d.shape, d.ndim}, {d.strides, d.ndim}, d.byte_offset, d.buffer_bytes);
    if (!fits.ok()) return ProtocolError("slot descriptor: " + fits.status().message());
  }
  return Status::Ok();
}

SlotInfo ToSlotInfo(const SlotDescriptor& d) {
  SlotInfo s;
  s.name = d.name;
  s.generation = d.generation;
  s.state = static_cast<SlotState>(d.state);
  s.backend = static_cast<BackendKind>(d.backend);
  s.device.type = s.backend == BackendKind::kHost ? Device::kCpu : Device::kCuda;
  s.device.ordinal = d.device_ordinal;
  std::memcpy(s.device.uuid.data(), d.device_uuid, sizeof d.device_uuid);
  s.allocation_id = d.allocation_id;
  s.allocation_bytes = d.allocation_bytes;
  s.byte_offset = d.byte_offset;
  s.nbytes = d.nbytes;
  s.dtype = {d.dtype_code, d.dtype_bits, d.dtype_lanes};
  s.shape.assign(d.shape, d.shape + d.ndim);
  s.strides.assign(d.strides, d.strides + d.ndim);
  s.owner_uid = d.owner_uid;
  s.owner_gid = d.owner_gid;
  s.mode = d.mode;
  s.lease_count = d.lease_count;
  s.version = d.version;
  s.buffers = d.nbuffers;
  s.buffer_bytes = d.buffer_bytes;
  s.created_ns = d.created_ns;
  s.updated_ns = d.updated_ns;
  return s;
}

}  // namespace gpubroker

// The fixed-layout description of a slot. The same bytes live in the shared
// registry segment and travel in protocol replies, so there is one definition.
#pragma once

#include <cstdint>
#include <type_traits>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

namespace gpubroker {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "wire and registry layouts are little-endian");

struct SlotDescriptor {
  char name[128];  // NUL-terminated
  uint64_t generation;
  uint64_t allocation_id;
  uint64_t allocation_bytes;
  uint64_t byte_offset;
  uint64_t nbytes;
  uint64_t version;
  uint64_t created_ns;
  uint64_t updated_ns;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  uint8_t device_uuid[16];
  int32_t device_ordinal;  // in the broker's numbering; -1 for host memory
  uint32_t owner_uid;
  uint32_t owner_gid;
  uint32_t mode;
  uint32_t lease_count;
  uint16_t state;    // SlotState
  uint16_t backend;  // BackendKind
  uint8_t dtype_code;
  uint8_t dtype_bits;
  uint16_t dtype_lanes;
  uint32_t ndim;
  uint8_t ipc_handle[64];  // legacy CUDA IPC handle, only for world-readable slots
  // Who may reach the allocation this slot views, fixed when it was created:
  // every check of this slot also checks these, so a view cannot widen them.
  uint32_t allocation_owner_uid;
  uint32_t allocation_owner_gid;
  uint32_t allocation_mode;
  // Nonzero for a pool the broker made from its configuration: a hash of
  // that pool's settings, so a restarted broker knows an adopted slot for
  // the pool it is configured with (unchanged: kept) from a changed one.
  uint32_t pool_tag;
  // Versions (docs/live.md): the allocation holds `nbuffers` buffers of
  // `buffer_bytes` each, back to back, and the slot's bytes lie at
  // `byte_offset` within each; `live_index` is the allocation's record in the
  // registry's live table, where its committed version is.
  uint32_t live_index;
  uint32_t nbuffers;
  uint64_t buffer_bytes;
};
static_assert(sizeof(SlotDescriptor) == 464);
static_assert(std::is_trivially_copyable_v<SlotDescriptor>);

// Checks a descriptor that came from outside (shared memory, a socket) before
// anything trusts its fields.
Status ValidateDescriptor(const SlotDescriptor& d);

// Converts a validated descriptor.
SlotInfo ToSlotInfo(const SlotDescriptor& d);

}  // namespace gpubroker

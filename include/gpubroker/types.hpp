// Value types shared by the client API and the broker: dtypes, devices,
// backends, slot descriptions.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gpubroker/status.hpp"

// Everything this header declares is the library's exported interface.
#pragma GCC visibility push(default)

namespace gpubroker {

inline constexpr int kMaxDims = 8;
inline constexpr size_t kMaxNameLength = 127;
// Most buffers a slot's allocation may hold (CreateOptions::buffers).
inline constexpr uint32_t kMaxBuffers = 8;

// Element type, in DLPack's terms (code, bits, lanes).
struct DType {
  enum Code : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kComplex = 5, kBool = 6 };
  uint8_t code = kUInt;
  uint8_t bits = 8;
  uint16_t lanes = 1;

  uint32_t itemsize() const { return uint32_t{bits} * lanes / 8; }
  friend bool operator==(const DType&, const DType&) = default;
};

// "float32", "bfloat16", "uint8", "bool", "complex64", ...
Result<DType> ParseDType(std::string_view text);
std::string DTypeName(DType dtype);
// Every name ParseDType accepts, in a fixed order.
std::vector<std::string> DTypeNames();

enum class BackendKind : uint16_t { kHost = 1, kCudaVmm = 2, kCudaIpc = 3 };
Result<BackendKind> ParseBackend(std::string_view text);
std::string_view BackendName(BackendKind kind);

using DeviceUuid = std::array<uint8_t, 16>;

// Where a buffer lives. For CUDA buffers `uuid` is the identity; `ordinal` is
// the ordinal in the process that reports it (CUDA_VISIBLE_DEVICES may differ
// between processes).
struct Device {
  enum Type : int32_t { kCpu = 1, kCuda = 2 };
  Type type = kCpu;
  int32_t ordinal = -1;
  DeviceUuid uuid{};
};

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", the form nvidia-smi prints.
std::string FormatUuid(const DeviceUuid& uuid);
Result<DeviceUuid> ParseUuid(std::string_view text);

enum class SlotState : uint16_t { kEmpty = 0, kLive = 1 };

// Everything the registry says about one slot.
struct SlotInfo {
  std::string name;
  uint64_t generation = 0;  // bumps each time a table entry is reused
  SlotState state = SlotState::kEmpty;
  BackendKind backend = BackendKind::kHost;
  Device device;
  uint64_t allocation_id = 0;
  uint64_t allocation_bytes = 0;
  uint64_t byte_offset = 0;  // of the first element within the allocation
  uint64_t nbytes = 0;       // bytes the view spans
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  uint32_t owner_uid = 0;
  uint32_t owner_gid = 0;
  uint32_t mode = 0;  // rwx bits as in chmod; r = attach, w = write and destroy
  uint32_t lease_count = 0;  // leases on the slot's allocation
  uint64_t version = 0;      // newest committed version (0: none yet); docs/live.md
  uint32_t buffers = 1;      // buffers the allocation holds, each `buffer_bytes` long
  uint64_t buffer_bytes = 0;
  uint64_t created_ns = 0;   // CLOCK_REALTIME
  uint64_t updated_ns = 0;
};

}  // namespace gpubroker

#pragma GCC visibility pop

// Where buffers come from. A backend allocates memory the broker owns and
// hands out shareable handles to it; everything else (names, leases,
// permissions) is the broker's business, not the backend's.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"
#include "common/posix.h"

namespace gpubroker {

// Which device the client asked for: the backend's default, an ordinal in the
// broker's numbering, or a UUID.
struct DeviceSelector {
  int32_t ordinal = -1;
  bool by_uuid = false;
  DeviceUuid uuid{};
};

struct AllocationRequest {
  uint64_t bytes = 0;
  std::string label;  // for diagnostics (/proc/<pid>/fd, driver tools)
  DeviceSelector device;
};

// What a client gets to reach an allocation: an fd (host, cuda_vmm) or a
// legacy CUDA IPC handle (cuda_ipc).
struct SharedHandle {
  UniqueFd fd;
  std::optional<std::array<uint8_t, 64>> ipc_handle;
};

// One allocation, owned by the broker; freed when destroyed. Handles already
// handed out keep the memory alive on their own (kernel and driver refcount).
class BackendMemory {
 public:
  virtual ~BackendMemory() = default;
  virtual uint64_t size() const = 0;  // bytes reserved, >= the request
  virtual Device device() const = 0;
  // A handle for a client; read-only if `access` lacks wire::kAccessWrite and
  // the backend can enforce it.
  virtual Result<SharedHandle> Share(uint32_t access) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  virtual Result<std::unique_ptr<BackendMemory>> Allocate(const AllocationRequest& request) = 0;
  // Takes over an allocation an earlier broker exported as `fd` (a warm
  // restart); `bytes` and `device` come from that broker's registry.
  virtual Result<std::unique_ptr<BackendMemory>> Adopt(UniqueFd fd, uint64_t bytes, const Device& device) {
    (void)fd, (void)bytes, (void)device;
    return Unsupported("backend " + std::string(BackendName(kind())) + " cannot adopt allocations");
  }
};

// The backends this broker runs with, and the one used when a request names none.
class BackendSet {
 public:
  void Add(std::unique_ptr<Backend> backend);
  void SetDefault(BackendKind kind) { default_ = kind; }
  BackendKind default_kind() const { return default_; }
  // kUnsupported with the reason recorded by Disable() if it is not here.
  Result<Backend*> Get(BackendKind kind) const;
  void Disable(BackendKind kind, std::string reason);

 private:
  std::map<BackendKind, std::unique_ptr<Backend>> backends_;
  std::map<BackendKind, std::string> missing_;
  BackendKind default_ = BackendKind::kHost;
};

}  // namespace gpubroker

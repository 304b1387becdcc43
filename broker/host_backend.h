// Host memory: a sealed memfd per allocation, shared as an fd.
#pragma once

#include "broker/backend.h"

namespace gpubroker {

class HostBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::kHost; }
  // Reserves every page up front (fallocate), so running out of memory is an
  // error here and never a SIGBUS in a client later.
  Result<std::unique_ptr<BackendMemory>> Allocate(const AllocationRequest& request) override;
  Result<std::unique_ptr<BackendMemory>> Adopt(UniqueFd fd, uint64_t bytes, const Device& device) override;
};

}  // namespace gpubroker

// How much host memory the broker may commit when the configuration does not
// say: half of the smaller of the machine's memory and the memory limit of the
// broker's cgroup (v2 memory.max or v1 memory.limit_in_bytes, each ancestor
// included), so a client's create fails with resource_exhausted long before
// the OOM killer looks at the broker.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace gpubroker {

struct HostMemoryInfo {
  uint64_t physical = 0;              // MemTotal
  std::optional<uint64_t> cgroup;     // the tightest limit on the broker's cgroup path
  std::string cgroup_path;            // where that limit was read
  uint64_t DefaultCap() const;
};

HostMemoryInfo ReadHostMemory();

}  // namespace gpubroker

// The broker's configuration: defaults, a YAML file, then command-line flags.
// Every key is documented in config/gpubroker.yaml; docs/config.md explains them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

namespace gpubroker {

struct PoolConfig {
  friend bool operator==(const PoolConfig&, const PoolConfig&) = default;
  std::string name;
  std::optional<BackendKind> backend;  // unset: the broker's default
  int32_t device_ordinal = -1;
  std::optional<DeviceUuid> device_uuid;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;  // 0: the shape's extent
  uint32_t mode = 0644;
  std::string group;  // owner group of the slot; empty: the broker's
};

struct Limits {
  uint32_t max_slots = 0;              // 0: the registry capacity
  uint64_t max_bytes_per_client = 0;   // 0: unlimited
  uint64_t max_bytes_per_device = 0;   // per CUDA device; 0: unlimited
  uint32_t max_connections = 1024;
};

struct Config {
  std::string socket_path = "/run/gpubroker/gpubroker.sock";
  uint32_t socket_mode = 0666;
  std::string socket_group;
  std::string registry_name = "gpubroker";
  uint32_t registry_capacity = 4096;
  uint32_t registry_mode = 0644;
  std::string registry_group;
  std::string admin_group;
  std::string default_backend = "auto";  // auto | host | cuda_vmm | cuda_ipc
  Limits limits;
  std::vector<PoolConfig> pools;
  std::string log_level = "info";  // trace debug info warn error critical off
  std::string log_format = "text";  // text | json
  // Under a service manager with an fd store: keep buffers across restarts.
  bool warm_restart = true;
};

// The configuration compiled into the broker (config/default.yaml).
std::string_view EmbeddedDefaultConfig();

// Parses YAML text; errors read "<origin>:<line>:<column>: <what>".
Result<Config> ParseConfig(std::string_view yaml, const std::string& origin);
Result<Config> LoadConfigFile(const std::string& path);

// Checks cross-field rules (after flags are applied).
Status ValidateConfig(const Config& config);

// "0660" → 0660; an octal permission of at most 0777.
Result<uint32_t> ParseMode(std::string_view text);
// "4096", "64KiB", "2MiB", "1GiB", "1TiB".
Result<uint64_t> ParseBytes(std::string_view text);
// Group name (or numeric gid) → gid.
Result<gid_t> LookupGroup(const std::string& name);

}  // namespace gpubroker

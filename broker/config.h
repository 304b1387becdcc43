// The broker's configuration: defaults, a YAML file, then command-line flags.
// Every key is documented in config/gpubroker.yaml; docs/config.md explains them.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"
#include "common/parse.h"

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

// limits.max_slots_per_uid when the configuration does not give it: a
// quarter of the registry's capacity, at most 1024 (RequestHandler::SetLimits).
inline constexpr uint32_t kSlotsPerUidFromCapacity = 0xffffffffu;
// limits.max_bytes_per_uid when the configuration does not give it: each uid
// (but root and the admin group) may hold a quarter of each cap: of
// max_host_bytes in host memory, and of max_bytes_per_device (where set) on
// the devices together (RequestHandler::CheckCaps).
inline constexpr uint64_t kBytesPerUidFromCaps = UINT64_MAX;
inline constexpr uint64_t kShareOfACap = 4;  // the default share is 1/4 of the cap
// How long pins carried over a warm restart wait for their readers, who
// reconnect within their reconnect timeout (10 s by default) of their next call.
inline constexpr std::chrono::seconds kCarriedPinGrace{30};

// Every cap is checked before memory is committed or a connection is kept.
// docs/SECURITY.md says which threat each one answers.
struct Limits {
  friend bool operator==(const Limits&, const Limits&) = default;
  uint32_t max_slots = 0;              // 0: the registry capacity
  uint64_t max_host_bytes = 0;         // 0: half of the machine's or the cgroup's memory
  uint64_t max_bytes_per_device = 0;   // per CUDA device; 0: unlimited
  uint64_t max_bytes_per_uid = kBytesPerUidFromCaps;  // bytes a uid's slots may hold; 0: unlimited
  uint32_t max_slots_per_uid = kSlotsPerUidFromCapacity;  // 0: unlimited
  uint32_t max_connections = 1024;
  uint32_t max_connections_per_uid = 64;   // 0: unlimited
  uint32_t reserved_admin_connections = 8;  // of max_connections, kept for root and admins
  uint32_t hello_timeout_ms = 5000;    // a connection that says nothing is closed
  uint32_t max_fds_in_flight = 64;     // per connection, sent and not yet read
};

// A tree this broker follows on another node's broker (docs/multinode.md).
struct FollowConfig {
  friend bool operator==(const FollowConfig&, const FollowConfig&) = default;
  std::string tree;   // the tree's name, the same on both nodes
  std::string from;   // IPv4:PORT, the source broker's peers.listen
  std::string group;  // owner group of the local tree; empty: the broker's
  uint32_t mode = 0644;
  // Where the local tree lives: cpu (host memory) or a GPU (cuda_vmm);
  // unset: like the source's, host memory or the broker's default GPU.
  std::optional<DeviceSpec> device;
};

// Replication between brokers (docs/multinode.md); needs a build with UCX.
struct PeersConfig {
  friend bool operator==(const PeersConfig&, const PeersConfig&) = default;
  std::string listen;      // IPv4:PORT followers connect to; empty: serve none
  std::string key_file;    // the cluster key; required when listen or follow is set, and for
                           // `gpubrokerctl follow` (set alone, the broker follows at run time only)
  std::string interface;   // the network interface replication uses; empty: UCX's choice
  std::vector<std::string> exports;  // the trees served to followers, by name
  std::vector<FollowConfig> follow;
  // A transfer that moves no byte for this long ends its connection (a link
  // that went down is not reported otherwise); a follower that holds a
  // version this long without finishing it is dropped by its source.
  uint32_t stall_timeout_ms = 10000;
  // The most followers this broker serves a tree to itself (0: no limit).
  // Beyond it, a follower asking for the tree is sent to one of those that
  // serve it on (their own peers.export lists it), so the source plans a
  // tree of followers; with none that does, it is served here all the same.
  uint32_t fanout = 0;
  bool enabled() const { return !listen.empty() || !follow.empty() || !key_file.empty(); }
};

// "A.B.C.D:PORT" → its parts; `port_zero_ok` for a listening address.
Result<std::pair<std::string, uint16_t>> ParsePeerAddress(const std::string& text, bool port_zero_ok);

struct Config {
  // Empty: $GPUBROKER_SOCKET, else /run/gpubroker/gpubroker.sock as root and
  // $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock otherwise (common/socket_path.h);
  // LoadConfig fills it in.
  std::string socket_path;
  uint32_t socket_mode = 0666;
  std::string socket_group;
  std::string registry_name = "gpubroker";
  uint32_t registry_capacity = 4096;
  std::string admin_group;
  std::string default_backend = "auto";  // auto | host | cuda_vmm | cuda_ipc
  Limits limits;
  std::vector<PoolConfig> pools;
  std::string log_level = "info";  // trace debug info warn error critical off
  std::string log_format = "auto";  // auto (journal under systemd, else text) | text | json | journal
  // Under a service manager with an fd store: keep buffers across restarts.
  bool warm_restart = true;
  // uid 0 administers everything. false: root is a user like any other (for
  // containers whose root is not the machine's, e.g. pods sharing a node).
  bool root_is_admin = true;
  // Prometheus metrics at http://HOST:PORT/metrics; empty: none.
  std::string metrics_listen;
  PeersConfig peers;
};

// The configuration compiled into the broker (config/default.yaml).
std::string_view EmbeddedDefaultConfig();

// Parses YAML text; errors read "<origin>:<line>:<column>: <what>".
Result<Config> ParseConfig(std::string_view yaml, const std::string& origin);
Result<Config> LoadConfigFile(const std::string& path);

// Checks every field and the rules across fields. The YAML reader runs it,
// and LoadConfig runs it again after command-line flags are applied, so a
// flag can never set what the file could not.
Status ValidateConfig(const Config& config);
Status ValidateLimits(const Limits& limits);
Status ValidateMetricsListen(const std::string& listen);
// Group name (or numeric gid) → gid.
Result<gid_t> LookupGroup(const std::string& name);

}  // namespace gpubroker

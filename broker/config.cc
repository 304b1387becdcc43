#include "broker/config.h"

#include <arpa/inet.h>
#include <grp.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "broker/generated/config_default.h"
#include "common/validate.h"

namespace gpubroker {
namespace {

// Reads YAML nodes into Config fields; yaml-cpp exceptions end here.
class Reader {
 public:
  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  Status At(const YAML::Mark& mark, const std::string& what) const {
    if (mark.is_null()) return ConfigError(origin_ + ": " + what);
    return ConfigError(origin_ + ":" + std::to_string(mark.line + 1) + ":" +
                       std::to_string(mark.column + 1) + ": " + what);
  }

  Status CheckKeys(const YAML::Node& map, const std::string& where,
                   const std::set<std::string>& allowed) const {
    if (!map.IsMap()) return At(map.Mark(), where + " must be a mapping");
    std::set<std::string> seen;
    for (const auto& kv : map) {
      std::string key = kv.first.Scalar();
      // YAML parsers keep one of two equal keys, silently: refuse both.
      if (!seen.insert(key).second) {
        return At(kv.first.Mark(), "key '" + key + "' appears twice in " + where + ": only one would count");
      }
      if (allowed.count(key) == 0) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        return At(kv.first.Mark(), "unknown key '" + key + "' in " + where + " (known: " + list + ")");
      }
    }
    return Status::Ok();
  }

  Result<std::string> String(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) return At(n.Mark(), key + " must be a string");
    return n.Scalar();
  }

  template <typename T>
  Result<T> Unsigned(const YAML::Node& n, const std::string& key, T max) const {
    if (!n.IsScalar()) return At(n.Mark(), key + " must be a non-negative integer");
    auto v = ParseUnsigned(n.Scalar(), static_cast<uint64_t>(max), key);
    if (!v.ok()) return At(n.Mark(), v.status().message());
    return static_cast<T>(*v);
  }

  Result<uint64_t> Bytes(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) return At(n.Mark(), key + " must be a size such as 4096 or 64MiB");
    auto r = ParseBytes(n.Scalar());
    if (!r.ok()) return At(n.Mark(), key + ": " + r.status().message());
    return r;
  }

  Result<bool> Bool(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar() || (n.Scalar() != "true" && n.Scalar() != "false")) {
      return At(n.Mark(), key + " must be true or false");
    }
    return n.Scalar() == "true";
  }

  Result<uint32_t> Mode(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) return At(n.Mark(), key + " must be an octal mode such as '0660'");
    auto r = ParseMode(n.Scalar());
    if (!r.ok()) return At(n.Mark(), key + ": " + r.status().message());
    return r;
  }

  Status Socket(const YAML::Node& n, Config& c) const {
    GPB_RETURN_IF_ERROR(CheckKeys(n, "socket", {"path", "mode", "group"}));
    if (n["path"]) { GPB_ASSIGN_OR_RETURN(c.socket_path, String(n["path"], "socket.path")); }
    if (n["mode"]) { GPB_ASSIGN_OR_RETURN(c.socket_mode, Mode(n["mode"], "socket.mode")); }
    if (n["group"]) { GPB_ASSIGN_OR_RETURN(c.socket_group, String(n["group"], "socket.group")); }
    if (n["path"] && (c.socket_path.empty() || c.socket_path.front() != '/')) {
      return At(n["path"].Mark(), "socket.path must be an absolute path");
    }
    return Status::Ok();
  }

  Status Registry(const YAML::Node& n, Config& c) const {
    for (const char* gone : {"mode", "group"}) {
      if (n.IsMap() && n[gone]) {
        return At(n[gone].Mark(), std::string("registry.") + gone +
                                      " is gone: clients receive the registry over the socket, so "
                                      "socket.mode and socket.group decide who may read it");
      }
    }
    GPB_RETURN_IF_ERROR(CheckKeys(n, "registry", {"name", "capacity"}));
    if (n["name"]) {
      GPB_ASSIGN_OR_RETURN(c.registry_name, String(n["name"], "registry.name"));
      if (c.registry_name.empty() || c.registry_name.size() > 63 ||
          c.registry_name.find('/') != std::string::npos) {
        return At(n["name"].Mark(), "registry.name must be 1..63 characters without '/'");
      }
    }
    if (n["capacity"]) {
      GPB_ASSIGN_OR_RETURN(c.registry_capacity,
                           Unsigned<uint32_t>(n["capacity"], "registry.capacity", 1u << 20));
      if (c.registry_capacity == 0) return At(n["capacity"].Mark(), "registry.capacity must be at least 1");
    }
    return Status::Ok();
  }

  Status LimitsNode(const YAML::Node& n, Limits& l) const {
    if (n.IsMap() && n["max_bytes_per_client"]) {
      return At(n["max_bytes_per_client"].Mark(),
                "limits.max_bytes_per_client is gone: use limits.max_bytes_per_uid, which follows the "
                "owner across connections");
    }
    GPB_RETURN_IF_ERROR(CheckKeys(
        n, "limits",
        {"max_slots", "max_host_bytes", "max_bytes_per_device", "max_bytes_per_uid", "max_slots_per_uid",
         "max_connections", "max_connections_per_uid", "reserved_admin_connections", "hello_timeout_ms",
         "max_fds_in_flight"}));
    auto count = [&](const char* key, uint32_t& field, uint32_t max) -> Status {
      if (n[key]) {
        GPB_ASSIGN_OR_RETURN(field, Unsigned<uint32_t>(n[key], std::string("limits.") + key, max));
      }
      return Status::Ok();
    };
    auto bytes = [&](const char* key, uint64_t& field) -> Status {
      if (n[key]) { GPB_ASSIGN_OR_RETURN(field, Bytes(n[key], std::string("limits.") + key)); }
      return Status::Ok();
    };
    GPB_RETURN_IF_ERROR(count("max_slots", l.max_slots, 1u << 20));
    GPB_RETURN_IF_ERROR(bytes("max_host_bytes", l.max_host_bytes));
    GPB_RETURN_IF_ERROR(bytes("max_bytes_per_device", l.max_bytes_per_device));
    GPB_RETURN_IF_ERROR(bytes("max_bytes_per_uid", l.max_bytes_per_uid));
    GPB_RETURN_IF_ERROR(count("max_slots_per_uid", l.max_slots_per_uid, 1u << 20));
    GPB_RETURN_IF_ERROR(count("max_connections", l.max_connections, 65536));
    GPB_RETURN_IF_ERROR(count("max_connections_per_uid", l.max_connections_per_uid, 65536));
    GPB_RETURN_IF_ERROR(count("reserved_admin_connections", l.reserved_admin_connections, 65536));
    GPB_RETURN_IF_ERROR(count("hello_timeout_ms", l.hello_timeout_ms, 3600000));
    GPB_RETURN_IF_ERROR(count("max_fds_in_flight", l.max_fds_in_flight, 65536));
    if (Status s = ValidateLimits(l); !s.ok()) return At(n.Mark(), s.message());
    return Status::Ok();
  }

  Result<PoolConfig> Pool(const YAML::Node& n) const {
    GPB_RETURN_IF_ERROR(CheckKeys(n, "a pool",
                                  {"name", "backend", "device", "dtype", "shape", "bytes", "mode", "group"}));
    PoolConfig p;
    if (!n["name"]) return At(n.Mark(), "a pool needs a name");
    GPB_ASSIGN_OR_RETURN(p.name, String(n["name"], "pool name"));
    if (Status s = ValidateName(p.name); !s.ok()) return At(n["name"].Mark(), s.message());
    if (n["backend"]) {
      GPB_ASSIGN_OR_RETURN(std::string b, String(n["backend"], "pool backend"));
      auto kind = ParseBackend(b);
      if (!kind.ok()) return At(n["backend"].Mark(), kind.status().message());
      p.backend = *kind;
    }
    if (n["device"]) {
      GPB_ASSIGN_OR_RETURN(std::string d, String(n["device"], "pool device"));
      auto spec = ParseDevice(d);
      if (!spec.ok()) return At(n["device"].Mark(), "pool device: " + spec.status().message());
      if (spec->cpu) {
        if (p.backend && *p.backend != BackendKind::kHost) {
          return At(n["device"].Mark(), "pool device cpu needs backend host");
        }
        p.backend = BackendKind::kHost;
      }
      p.device_ordinal = spec->ordinal;
      p.device_uuid = spec->uuid;
    }
    std::string dtype = "uint8";
    if (n["dtype"]) { GPB_ASSIGN_OR_RETURN(dtype, String(n["dtype"], "pool dtype")); }
    auto dt = ParseDType(dtype);
    if (!dt.ok()) return At(n["dtype"] ? n["dtype"].Mark() : n.Mark(), dt.status().message());
    p.dtype = *dt;
    if (n["shape"]) {
      const YAML::Node& s = n["shape"];
      if (!s.IsSequence() || s.size() > kMaxDims) {
        return At(s.Mark(), "pool shape must be a list of at most 8 sizes");
      }
      for (const auto& dim : s) {
        GPB_ASSIGN_OR_RETURN(uint64_t v, Unsigned<uint64_t>(dim, "pool shape entry", INT64_MAX));
        p.shape.push_back(static_cast<int64_t>(v));
      }
    }
    if (n["bytes"]) { GPB_ASSIGN_OR_RETURN(p.bytes, Bytes(n["bytes"], "pool bytes")); }
    if (!n["shape"] && !n["bytes"]) return At(n.Mark(), "pool '" + p.name + "' needs a shape or bytes");
    if (!n["shape"]) p.shape = {static_cast<int64_t>(p.bytes / p.dtype.itemsize())};
    if (n["mode"]) { GPB_ASSIGN_OR_RETURN(p.mode, Mode(n["mode"], "pool mode")); }
    if (n["group"]) { GPB_ASSIGN_OR_RETURN(p.group, String(n["group"], "pool group")); }
    auto strides = ContiguousStrides(p.shape);
    if (!strides.ok()) return At(n.Mark(), "pool '" + p.name + "': " + strides.status().message());
    auto extent = ViewExtentBytes(p.dtype, p.shape, *strides);
    if (!extent.ok()) return At(n.Mark(), "pool '" + p.name + "': " + extent.status().message());
    if (p.bytes != 0 && p.bytes < *extent) {
      return At(n["bytes"].Mark(), "pool '" + p.name + "': bytes is smaller than the shape needs (" +
                                       std::to_string(*extent) + ")");
    }
    return p;
  }

  Status MetricsNode(const YAML::Node& n, Config& c) const {
    GPB_RETURN_IF_ERROR(CheckKeys(n, "metrics", {"listen"}));
    if (n["listen"]) {
      GPB_ASSIGN_OR_RETURN(c.metrics_listen, String(n["listen"], "metrics.listen"));
      if (auto s = ValidateMetricsListen(c.metrics_listen); !s.ok()) return At(n["listen"].Mark(), s.message());
    }
    return Status::Ok();
  }

  Status Peers(const YAML::Node& n, PeersConfig& p) const {
    GPB_RETURN_IF_ERROR(CheckKeys(n, "peers", {"listen", "key_file", "interface", "export", "follow",
                                               "stall_timeout_ms", "fanout"}));
    if (n["listen"]) {
      GPB_ASSIGN_OR_RETURN(p.listen, String(n["listen"], "peers.listen"));
      if (!p.listen.empty()) {
        if (auto a = ParsePeerAddress(p.listen, true); !a.ok()) return At(n["listen"].Mark(), "peers.listen: " + a.status().message());
      }
    }
    if (n["key_file"]) { GPB_ASSIGN_OR_RETURN(p.key_file, String(n["key_file"], "peers.key_file")); }
    if (n["interface"]) { GPB_ASSIGN_OR_RETURN(p.interface, String(n["interface"], "peers.interface")); }
    if (n["stall_timeout_ms"]) {
      GPB_ASSIGN_OR_RETURN(p.stall_timeout_ms, Unsigned<uint32_t>(n["stall_timeout_ms"], "peers.stall_timeout_ms",
                                                                   3600u * 1000u));
    }
    if (n["fanout"]) {
      GPB_ASSIGN_OR_RETURN(p.fanout, Unsigned<uint32_t>(n["fanout"], "peers.fanout", 1024u));
    }
    if (n["export"]) {
      const YAML::Node& e = n["export"];
      if (!e.IsSequence()) return At(e.Mark(), "peers.export must be a list of tree names");
      for (const auto& t : e) {
        GPB_ASSIGN_OR_RETURN(std::string name, String(t, "peers.export"));
        if (auto v = ValidateName(name); !v.ok()) return At(t.Mark(), "peers.export: " + v.message());
        p.exports.push_back(std::move(name));
      }
    }
    if (n["follow"]) {
      const YAML::Node& f = n["follow"];
      if (!f.IsSequence()) return At(f.Mark(), "peers.follow must be a list");
      std::set<std::string> trees;
      for (const auto& t : f) {
        GPB_RETURN_IF_ERROR(CheckKeys(t, "a peers.follow entry", {"tree", "from", "group", "mode", "device"}));
        FollowConfig fc;
        if (!t["tree"] || !t["from"]) return At(t.Mark(), "a peers.follow entry needs tree and from");
        GPB_ASSIGN_OR_RETURN(fc.tree, String(t["tree"], "peers.follow.tree"));
        if (auto v = ValidateName(fc.tree); !v.ok()) return At(t["tree"].Mark(), "peers.follow.tree: " + v.message());
        GPB_ASSIGN_OR_RETURN(fc.from, String(t["from"], "peers.follow.from"));
        if (auto a = ParsePeerAddress(fc.from, false); !a.ok()) {
          return At(t["from"].Mark(), "peers.follow.from: " + a.status().message());
        }
        if (t["group"]) { GPB_ASSIGN_OR_RETURN(fc.group, String(t["group"], "peers.follow.group")); }
        if (t["mode"]) { GPB_ASSIGN_OR_RETURN(fc.mode, Mode(t["mode"], "peers.follow.mode")); }
        if (t["device"]) {
          GPB_ASSIGN_OR_RETURN(std::string d, String(t["device"], "peers.follow.device"));
          auto spec = ParseDevice(d);
          if (!spec.ok()) return At(t["device"].Mark(), "peers.follow.device: " + spec.status().message());
          fc.device = *spec;
        }
        if (!trees.insert(fc.tree).second) return At(t.Mark(), "tree '" + fc.tree + "' is followed twice");
        p.follow.push_back(std::move(fc));
      }
    }
    return Status::Ok();
  }

  Status Logging(const YAML::Node& n, Config& c) const {
    GPB_RETURN_IF_ERROR(CheckKeys(n, "logging", {"level", "format"}));
    if (n["level"]) {
      GPB_ASSIGN_OR_RETURN(c.log_level, String(n["level"], "logging.level"));
      static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn",
                                                    "error", "critical", "off"};
      if (kLevels.count(c.log_level) == 0) {
        return At(n["level"].Mark(), "logging.level must be trace, debug, info, warn, error, critical or off");
      }
    }
    if (n["format"]) {
      GPB_ASSIGN_OR_RETURN(c.log_format, String(n["format"], "logging.format"));
      if (c.log_format != "auto" && c.log_format != "text" && c.log_format != "json" && c.log_format != "journal") {
        return At(n["format"].Mark(), "logging.format must be auto, text, json or journal");
      }
    }
    return Status::Ok();
  }

  Result<Config> Top(const YAML::Node& root) const {
    Config c;
    if (root.IsNull()) return c;
    GPB_RETURN_IF_ERROR(CheckKeys(root, "the top level",
                                  {"socket", "registry", "admin_group", "default_backend",
                                   "limits", "pools", "logging", "metrics", "warm_restart", "root_is_admin",
                                   "peers"}));
    if (root["warm_restart"]) { GPB_ASSIGN_OR_RETURN(c.warm_restart, Bool(root["warm_restart"], "warm_restart")); }
    if (root["root_is_admin"]) {
      GPB_ASSIGN_OR_RETURN(c.root_is_admin, Bool(root["root_is_admin"], "root_is_admin"));
    }
    if (root["socket"]) GPB_RETURN_IF_ERROR(Socket(root["socket"], c));
    if (root["registry"]) GPB_RETURN_IF_ERROR(Registry(root["registry"], c));
    if (root["admin_group"]) { GPB_ASSIGN_OR_RETURN(c.admin_group, String(root["admin_group"], "admin_group")); }
    if (root["default_backend"]) {
      const YAML::Node& n = root["default_backend"];
      GPB_ASSIGN_OR_RETURN(c.default_backend, String(n, "default_backend"));
      if (c.default_backend != "auto" && !ParseBackend(c.default_backend).ok()) {
        return At(n.Mark(), "default_backend must be auto, host, cuda_vmm or cuda_ipc");
      }
    }
    if (root["limits"]) GPB_RETURN_IF_ERROR(LimitsNode(root["limits"], c.limits));
    if (root["pools"]) {
      const YAML::Node& pools = root["pools"];
      if (!pools.IsSequence()) return At(pools.Mark(), "pools must be a list");
      std::set<std::string> names;
      for (const auto& n : pools) {
        GPB_ASSIGN_OR_RETURN(PoolConfig p, Pool(n));
        if (!names.insert(p.name).second) return At(n.Mark(), "pool '" + p.name + "' is listed twice");
        c.pools.push_back(std::move(p));
      }
    }
    if (root["logging"]) GPB_RETURN_IF_ERROR(Logging(root["logging"], c));
    if (root["metrics"]) GPB_RETURN_IF_ERROR(MetricsNode(root["metrics"], c));
    if (root["peers"]) GPB_RETURN_IF_ERROR(Peers(root["peers"], c.peers));
    return c;
  }

 private:
  std::string origin_;
};

}  // namespace

std::string_view EmbeddedDefaultConfig() { return kEmbeddedDefaultConfig; }

Result<Config> ParseConfig(std::string_view yaml, const std::string& origin) {
  Reader reader(origin);
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    GPB_ASSIGN_OR_RETURN(Config c, reader.Top(root));
    GPB_RETURN_IF_ERROR(ValidateConfig(c).Annotate(origin));
    return c;
  } catch (const YAML::Exception& e) {
    return reader.At(e.mark, e.msg);
  }
}

Result<Config> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    const int err = errno;  // ifstream leaves open(2)'s reason in errno
    return ConfigError("cannot read config file " + path + ": " + std::strerror(err));
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfig(text.str(), path);
}

Status ValidateLimits(const Limits& l) {
  if (l.max_connections == 0) return ConfigError("limits.max_connections must be at least 1");
  if (l.reserved_admin_connections >= l.max_connections) {
    return ConfigError("limits.reserved_admin_connections (" + std::to_string(l.reserved_admin_connections) +
                       ") must be below limits.max_connections (" + std::to_string(l.max_connections) + ")");
  }
  if (l.hello_timeout_ms == 0) return ConfigError("limits.hello_timeout_ms must be at least 1");
  if (l.max_fds_in_flight == 0) return ConfigError("limits.max_fds_in_flight must be at least 1");
  return Status::Ok();
}

Status ValidateMetricsListen(const std::string& listen) {
  if (listen.empty()) return Status::Ok();
  size_t colon = listen.rfind(':');
  auto port = colon == std::string::npos ? Result<uint64_t>(InvalidArgument("no port"))
                                         : ParseUnsigned(listen.substr(colon + 1), 65535, "port");
  if (colon == 0 || !port.ok()) {
    return ConfigError("metrics.listen must be HOST:PORT (e.g. 127.0.0.1:9464; port 0 picks one) or empty "
                       "for no metrics, not '" + Printable(listen) + "'");
  }
  return Status::Ok();
}

Status ValidateConfig(const Config& c) {
  GPB_RETURN_IF_ERROR(ValidateMetricsListen(c.metrics_listen));
  if (!c.socket_path.empty() && c.socket_path.front() != '/') {
    return ConfigError("socket.path must be an absolute path, not '" + Printable(c.socket_path) + "'");
  }
  if (c.socket_path.size() > 107) {
    return ConfigError("socket.path is " + std::to_string(c.socket_path.size()) +
                       " bytes long; a Unix socket path holds at most 107");
  }
  if (c.registry_name.empty() || c.registry_name.size() > 63 ||
      c.registry_name.find('/') != std::string::npos) {
    return ConfigError("registry.name must be 1..63 characters without '/', not '" +
                       Printable(c.registry_name) + "'");
  }
  if (c.registry_capacity == 0 || c.registry_capacity > (1u << 20)) {
    return ConfigError("registry.capacity must be 1..1048576");
  }
  if (c.socket_mode > 0777) return ConfigError("socket.mode must be at most 0777");
  GPB_RETURN_IF_ERROR(ValidateLimits(c.limits));
  if (c.limits.max_slots > c.registry_capacity) {
    return ConfigError("limits.max_slots (" + std::to_string(c.limits.max_slots) +
                       ") exceeds registry.capacity (" + std::to_string(c.registry_capacity) + ")");
  }
  // The registry's capacity bounds slots and live allocations alike; a
  // per-user quota that reaches it lets one user take them all.
  const uint32_t quota = c.limits.max_slots_per_uid;
  if (quota != 0 && quota != kSlotsPerUidFromCapacity && quota >= c.registry_capacity) {
    return ConfigError("limits.max_slots_per_uid (" + std::to_string(c.limits.max_slots_per_uid) +
                       ") is not below registry.capacity (" + std::to_string(c.registry_capacity) +
                       "): one user could fill the registry; set it lower (a quarter of the capacity is a "
                       "fair share), or to 0 for no per-user quota");
  }
  if (c.pools.size() > c.registry_capacity) return ConfigError("more pools than registry.capacity");
  if (c.peers.enabled() && (c.peers.key_file.empty() || c.peers.key_file.front() != '/')) {
    return ConfigError("peers: listen and follow need peers.key_file, the absolute path of the cluster key "
                       "(openssl rand -out /etc/gpubroker/cluster.key 32; chmod 600): peers prove they hold it "
                       "before anything else is exchanged");
  }
  if (c.peers.stall_timeout_ms < 100) return ConfigError("peers.stall_timeout_ms must be at least 100");
  return Status::Ok();
}

Result<std::pair<std::string, uint16_t>> ParsePeerAddress(const std::string& text, bool port_zero_ok) {
  const size_t colon = text.rfind(':');
  in_addr ip{};
  auto bad = [&] {
    return InvalidArgument("'" + Printable(text) + "' is not IPV4:PORT (such as 10.0.0.1:7400" +
                           (port_zero_ok ? std::string("; port 0 picks one") : std::string()) + ")");
  };
  if (colon == std::string::npos || ::inet_pton(AF_INET, text.substr(0, colon).c_str(), &ip) != 1) return bad();
  auto port = ParseUnsigned(text.substr(colon + 1), 65535, "port");
  if (!port.ok() || (*port == 0 && !port_zero_ok)) return bad();
  return std::make_pair(text.substr(0, colon), static_cast<uint16_t>(*port));
}

Result<gid_t> LookupGroup(const std::string& name) {
  gid_t numeric = 0;
  auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), numeric);
  if (ec == std::errc() && p == name.data() + name.size()) return numeric;
  group g{};
  group* found = nullptr;
  std::vector<char> buf(16384);
  if (::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return ConfigError("unknown group '" + name + "'");
  }
  return found->gr_gid;
}

}  // namespace gpubroker

#include "broker/broker.h"

#include <sys/random.h>

#include <charconv>

#include <spdlog/spdlog.h>

#include "broker/cuda_backends.h"
#include "broker/host_backend.h"
#include "broker/logging.h"
#include "broker/metrics.h"
#include "broker/peers.h"
#include "broker/generated/version.h"
#include "broker/registry.h"
#include "common/registry_reader.h"
#include "common/socket_path.h"
#include "broker/request_handler.h"
#include "broker/server.h"
#include "broker/service_manager.h"

namespace gpubroker {
namespace {

constexpr std::string_view kFdPrefix = "gpb-alloc-";
constexpr std::string_view kRegistryFdName = "gpb-registry";

uint64_t RandomGeneration() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof v, 0) != sizeof v) v = NowNs();
  return v | 1;  // never 0: 0 means "unknown" to clients
}

Status SetUpBackends(const Config& config, BackendSet& backends) {
  backends.Add(std::make_unique<HostBackend>());
  bool cuda = AddCudaBackends(backends, CudaLimits{config.limits.max_bytes_per_device});
  if (config.default_backend == "auto") {
    backends.SetDefault(cuda ? BackendKind::kCudaVmm : BackendKind::kHost);
  } else {
    GPB_ASSIGN_OR_RETURN(BackendKind kind, ParseBackend(config.default_backend));
    GPB_RETURN_IF_ERROR(backends.Get(kind).status().Annotate("default_backend"));
    backends.SetDefault(kind);
  }
  spdlog::info("default backend: {}", BackendName(backends.default_kind()));
  return Status::Ok();
}

// One running broker: its parts, the service-manager protocol, reloads.
class Broker final : public AllocationObserver {
 public:
  Broker(Config config, ConfigSource source)
      : config_(std::move(config)), source_(std::move(source)), manager_(ServiceManager::FromEnvironment()) {
    warm_ = config_.warm_restart && manager_.active();
  }

  Status Run() {
    GPB_RETURN_IF_ERROR(SetUpBackends(config_, backends_));
    UniqueFd previous_registry;
    std::map<uint64_t, UniqueFd> stored = StoredAllocations(previous_registry);
    std::map<uint64_t, LiveState> previous_live;
    std::vector<SlotDescriptor> previous =
        PreviousSlots(std::move(previous_registry), !stored.empty(), previous_live);

    RegistryOptions ro;
    ro.name = config_.registry_name;
    ro.capacity = config_.registry_capacity;
    ro.boot_generation = RandomGeneration();
    GPB_ASSIGN_OR_RETURN(registry_, Registry::Create(ro));
    if (warm_) {
      manager_.RemoveFd(std::string(kRegistryFdName));
      if (auto fd = registry_->Share(); fd.ok()) manager_.StoreFd(std::string(kRegistryFdName), fd->get());
    }

    HandlerOptions ho;
    ho.limits = config_.limits;
    ho.started_ns = NowNs();
    ho.observer = warm_ ? this : nullptr;
    ho.reload = [this] { return Reload(); };
    ho.root_is_admin = config_.root_is_admin;
    if (!config_.admin_group.empty()) {
      GPB_ASSIGN_OR_RETURN(ho.admin_group, LookupGroup(config_.admin_group));
    }
    ho.devices = VisibleCudaDevices();
    ho.peers = [this] { return PeerRecords(); };
    ho.follow = [this](const FollowConfig& fc) -> Status {
      if (!peers_) return NoPeers();
      return peers_->Follow(fc);
    };
    ho.unfollow = [this](const std::string& tree, bool remove) -> Status {
      if (!peers_) return NoPeers();
      return peers_->Unfollow(tree, remove);
    };
    ho.committed = [this](uint64_t allocation_id) {
      if (peers_) peers_->Committed(allocation_id);
    };
    StartMetrics(ho.started_ns);
    ho.requests = metrics_.get();
    handler_ = std::make_unique<RequestHandler>(*registry_, backends_, ho);
    const bool adopting = !previous.empty() || !stored.empty();
    if (adopting) {
      size_t n = handler_->Adopt(previous, previous_live, std::move(stored));
      spdlog::info("warm restart: adopted {} of {} slots", n, previous.size());
      if (metrics_) metrics_->Adopted(n);
      handler_->AdoptPools(config_.pools);
    }
    // A pool that cannot be made fails a cold start; after a warm restart the
    // adopted buffers matter more: serve them, each failed pool logged.
    if (Status pools = handler_->SyncPools(config_.pools); !pools.ok()) {
      if (!adopting) return pools;
      handler_->SetDegraded("pools", true);
    }
    handler_->SetDegraded("metrics", !config_.metrics_listen.empty() && !metrics_);

    boost::asio::io_context io;
    // The peers go before the loop they run on, whichever way Run returns.
    struct PeersGoFirst {
      std::unique_ptr<Peers>& peers;
      ~PeersGoFirst() { peers.reset(); }
    } peers_go_first{peers_};
    if (config_.peers.enabled()) {
      GPB_ASSIGN_OR_RETURN(peers_, Peers::Start(io, *handler_, config_.peers));
    }
    Server::Hooks hooks;
    hooks.reload = [this] { (void)Reload(); };
    hooks.tick = [this] { Tick(); };
    if (auto w = manager_.watchdog_interval()) {
      hooks.tick_interval = std::min<std::chrono::milliseconds>(
          std::chrono::duration_cast<std::chrono::milliseconds>(*w), hooks.tick_interval);
    }
    hooks.stopping = [this] { manager_.Stopping(); };
    GPB_ASSIGN_OR_RETURN(std::unique_ptr<Server> server,
                         Server::Create(io, config_, *handler_, *registry_, std::move(hooks)));
    server->Start();
    server_ = server.get();
    spdlog::info("gpubrokerd ready: socket {}, registry '{}' ({} slots), {} pools{}",
                 config_.socket_path, config_.registry_name, config_.registry_capacity,
                 config_.pools.size(), warm_ ? ", warm restart on" : "");
    manager_.Ready();
    Tick();
    io.run();
    spdlog::info("gpubrokerd stopped; {} allocations {}", handler_->leases().allocations().size(),
                 warm_ ? "stay in the service manager's fd store" : "freed");
    server_ = nullptr;
    server.reset();
    peers_.reset();
    handler_.reset();
    registry_.reset();
    return Status::Ok();
  }

  void Added(const Allocation& a) override {
    auto h = a.memory->Share(wire::kAccessRead | wire::kAccessWrite);
    if (!h.ok() || !h->fd.valid()) return;  // cuda_ipc: nothing to keep
    manager_.StoreFd(std::string(kFdPrefix) + std::to_string(a.id), h->fd.get());
  }

  void Removed(uint64_t allocation_id) override {
    manager_.RemoveFd(std::string(kFdPrefix) + std::to_string(allocation_id));
  }

 private:
  // Allocation fds a previous broker left in the fd store, by allocation id,
  // and its registry.
  std::map<uint64_t, UniqueFd> StoredAllocations(UniqueFd& registry) {
    std::map<uint64_t, UniqueFd> out;
    for (auto& [name, fd] : manager_.TakePassedFds()) {
      if (name == kRegistryFdName) {
        registry = std::move(fd);
        continue;
      }
      uint64_t id = 0;
      if (name.rfind(kFdPrefix, 0) == 0) {
        std::string_view digits = std::string_view(name).substr(kFdPrefix.size());
        auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
        if (ec == std::errc() && p == digits.data() + digits.size()) {
          out[id] = std::move(fd);
          continue;
        }
      }
      spdlog::warn("ignoring an fd named '{}' passed by the service manager", name);
    }
    return out;
  }

  // The slots of the broker that ran before, and their allocations' versions,
  // from the registry it left in the fd store; every record is validated as
  // it is read.
  std::vector<SlotDescriptor> PreviousSlots(UniqueFd registry, bool have_fds, std::map<uint64_t, LiveState>& live) {
    if (!have_fds) return {};
    if (!registry.valid()) {
      spdlog::warn("warm restart: stored allocations but no previous registry in the fd store");
      return {};
    }
    auto old = RegistryReader::FromFd(std::move(registry));
    if (!old.ok()) {
      spdlog::warn("warm restart: cannot read the previous registry ({})", old.status().message());
      return {};
    }
    for (const LiveState& s : old->LiveStates()) live[s.allocation_id] = s;
    return old->ListLive();
  }

  // All or nothing as far as can be checked: the new configuration, its
  // limits and every pool are validated before any of it is applied. Only a
  // pool whose memory cannot be had when it is created can still fail after
  // that, and the log says so.
  Status Reload() {
    manager_.Reloading();
    Status s = ApplyReload();
    if (!s.ok()) spdlog::error("reload rejected, the running configuration stays: {}", s.message());
    manager_.Ready();
    return s;
  }

  Status ApplyReload() {
    GPB_ASSIGN_OR_RETURN(Config fresh, LoadConfig(source_));
    Limits limits = ResolveLimits(fresh.limits);
    GPB_RETURN_IF_ERROR(handler_->CheckPools(fresh.pools, limits));
    GPB_RETURN_IF_ERROR(SetupLogging(fresh.log_level, fresh.log_format));
    if (fresh.socket_path != config_.socket_path || fresh.registry_name != config_.registry_name ||
        fresh.registry_capacity != config_.registry_capacity || fresh.socket_mode != config_.socket_mode ||
        fresh.metrics_listen != config_.metrics_listen) {
      spdlog::warn("reload: socket, registry and metrics settings take effect at the next start");
    }
    if (!(fresh.peers == config_.peers)) {
      spdlog::warn("reload: the peers section takes effect at the next start (the running broker serves and "
                   "follows what it started with)");
    }
    handler_->SetLimits(limits);
    config_.limits = fresh.limits;
    config_.log_level = fresh.log_level;
    config_.log_format = fresh.log_format;
    Status pools = handler_->SyncPools(fresh.pools);
    config_.pools = fresh.pools;
    handler_->SetDegraded("pools", !pools.ok());
    if (!pools.ok()) {
      return pools.Annotate("configuration applied except a pool that could not be created");
    }
    spdlog::info("configuration reloaded");
    return Status::Ok();
  }

  // Metrics are for watching, not for serving: an address that cannot be
  // bound is logged, and the broker serves without them.
  void StartMetrics(uint64_t started_ns) {
    if (config_.metrics_listen.empty()) return;
    auto m = Metrics::Start(config_.metrics_listen, kGpubrokerVersion, started_ns);
    if (!m.ok()) {
      spdlog::error("{}; serving without metrics (status: degraded)", m.status().message());
      return;
    }
    metrics_ = std::move(m).value();
    std::string host = config_.metrics_listen.substr(0, config_.metrics_listen.rfind(':'));
    spdlog::info("metrics at http://{}:{}/metrics", host, metrics_->port());
  }

  // The peers' reports as the peers request and the metrics give them.
  static Status NoPeers() {
    return Unsupported("this broker follows no tree from another node: it needs peers.key_file in its "
                       "configuration (docs/multinode.md)");
  }

  std::vector<wire::PeerRecord> PeerRecords() const {
    std::vector<wire::PeerRecord> out;
    if (!peers_) return out;
    for (const PeerReport& p : peers_->Report()) {
      wire::PeerRecord r{};
      r.role.set(p.role);
      r.state.set(p.state);
      r.tree.set(p.tree);
      r.peer.set(p.peer);
      r.version = p.version;
      r.source_version = p.source_version;
      r.versions = p.versions;
      r.bytes = p.bytes;
      r.errors = p.errors;
      r.last_ns = static_cast<uint64_t>(p.last_seconds * 1e9);
      r.last_error.set(p.last_error);
      r.passed_on = p.passed_on;
      r.abandoned = p.abandoned;
      out.push_back(r);
    }
    return out;
  }

  void Tick() {
    handler_->ExpireCarriedPins(std::chrono::steady_clock::now());
    if (metrics_) metrics_->Update(*handler_, registry_->live(), handler_->draining());
    if (metrics_ && server_ != nullptr) metrics_->Closing(server_->closing());
    if (metrics_ && peers_) metrics_->Peers(PeerRecords());
    const auto& t = handler_->leases();
    std::string status = std::to_string(registry_->live()) + " slots, " +
                         std::to_string(t.clients().size()) + " clients, " +
                         std::to_string(t.total_leases()) + " leases, " +
                         std::to_string(t.BytesOn(Device::kCpu) + t.BytesOn(Device::kCuda)) + " bytes" +
                         (handler_->draining() ? ", draining" : "");
    if (status != last_status_) {
      manager_.Status(status);
      last_status_ = status;
    }
    if (manager_.watchdog_interval()) manager_.Watchdog();
  }

  Config config_;
  ConfigSource source_;
  ServiceManager manager_;
  bool warm_ = false;
  BackendSet backends_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<Metrics> metrics_;  // outlives handler_, which reports to it
  Server* server_ = nullptr;  // while Run serves: what Tick reports of it
  std::unique_ptr<RequestHandler> handler_;
  std::unique_ptr<Peers> peers_;  // goes before handler_, whose client it is
  std::string last_status_;
};

}  // namespace

Result<Config> LoadConfig(const ConfigSource& source) {
  auto config = source.path.empty() ? ParseConfig(EmbeddedDefaultConfig(), "<embedded default>")
                                    : LoadConfigFile(source.path);
  if (!config.ok()) return config.status();
  if (source.overrides) GPB_RETURN_IF_ERROR(source.overrides(*config));
  if (config->socket_path.empty()) {
    GPB_ASSIGN_OR_RETURN(config->socket_path, BrokerDefaultSocketPath());
    GPB_RETURN_IF_ERROR(ValidateConfig(*config).Annotate("the default socket path"));
  }
  return config;
}

Result<std::string> CheckConfig(const Config& config) {
  BackendSet backends;
  GPB_RETURN_IF_ERROR(SetUpBackends(config, backends));
  RegistryOptions ro;
  ro.name = "gpubroker-check";
  ro.capacity = std::max<uint32_t>(1, static_cast<uint32_t>(config.pools.size()));
  GPB_ASSIGN_OR_RETURN(auto registry, Registry::Create(ro));
  HandlerOptions ho;
  ho.limits = config.limits;
  if (!config.admin_group.empty()) {
    auto gid = LookupGroup(config.admin_group);
    if (!gid.ok()) return gid.status().Annotate("admin_group");
    ho.admin_group = *gid;
  }
  if (!config.socket_group.empty()) GPB_RETURN_IF_ERROR(LookupGroup(config.socket_group).status().Annotate("socket.group"));
  RequestHandler handler(*registry, backends, ho);
  GPB_RETURN_IF_ERROR(handler.CheckPools(config.pools, ResolveLimits(config.limits)));
  return "socket " + config.socket_path + ", " + std::to_string(config.pools.size()) + " pool(s), default backend " +
         std::string(BackendName(backends.default_kind()));
}

Status RunBroker(const Config& config, const ConfigSource& source) {
  Broker broker(config, source);
  return broker.Run();
}

}  // namespace gpubroker

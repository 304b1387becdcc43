#include "broker.h"

#include <sys/random.h>

#include <spdlog/spdlog.h>

#include "cuda_backends.h"
#include "host_backend.h"
#include "registry.h"
#include "request_handler.h"
#include "server.h"

namespace gpubroker {
namespace {

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

}  // namespace

Status RunBroker(const Config& config) {
  BackendSet backends;
  GPB_RETURN_IF_ERROR(SetUpBackends(config, backends));

  RegistryOptions ro;
  ro.name = config.registry_name;
  ro.capacity = config.registry_capacity;
  ro.mode = config.registry_mode;
  if (!config.registry_group.empty()) {
    GPB_ASSIGN_OR_RETURN(ro.group, LookupGroup(config.registry_group));
  }
  ro.boot_generation = RandomGeneration();
  GPB_ASSIGN_OR_RETURN(std::unique_ptr<Registry> registry, Registry::Create(ro));

  HandlerOptions ho;
  ho.limits = config.limits;
  ho.started_ns = NowNs();
  if (!config.admin_group.empty()) {
    GPB_ASSIGN_OR_RETURN(ho.admin_group, LookupGroup(config.admin_group));
  }
  RequestHandler handler(*registry, backends, ho);
  for (const PoolConfig& pool : config.pools) GPB_RETURN_IF_ERROR(handler.CreatePool(pool));

  boost::asio::io_context io;
  GPB_ASSIGN_OR_RETURN(std::unique_ptr<Server> server,
                       Server::Create(io, config, handler, *registry));
  server->Start();
  spdlog::info("gpubrokerd ready: socket {}, registry /dev/shm/{} ({} slots), {} pools",
               config.socket_path, config.registry_name, config.registry_capacity,
               config.pools.size());
  io.run();
  spdlog::info("gpubrokerd stopped; freeing {} allocations",
               handler.leases().allocations().size());
  return Status::Ok();
}

}  // namespace gpubroker

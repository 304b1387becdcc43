// gpubrokerd: flags, configuration, logging; the rest is RunBroker().
#include <cstdlib>
#include <sys/resource.h>

#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "broker/broker.h"
#include "broker/config.h"
#include "broker/logging.h"
#include "broker/generated/version.h"

namespace {

struct Flags {
  std::string config_file;
  std::optional<std::string> socket, socket_mode, registry, admin_group, log_level, log_format,
      default_backend, max_host_bytes, max_bytes_per_uid, max_bytes_per_device, capacity, max_slots,
      max_slots_per_uid, max_connections, max_connections_per_uid, reserved_admin_connections, hello_timeout_ms,
      max_fds_in_flight, metrics_listen;
  bool print_default = false;
  std::string check_config;
};

gpubroker::Status ApplyFlags(const Flags& f, gpubroker::Config& c) {
  using namespace gpubroker;
  if (f.socket) c.socket_path = *f.socket;
  if (f.socket_mode) { GPB_ASSIGN_OR_RETURN(c.socket_mode, ParseMode(*f.socket_mode)); }
  if (f.registry) c.registry_name = *f.registry;
  auto count = [](const std::optional<std::string>& flag, const char* name, uint32_t& field) -> Status {
    if (!flag) return Status::Ok();
    auto v = ParseUnsigned(*flag, 1u << 30, std::string("--") + name);
    if (!v.ok()) return v.status();
    field = static_cast<uint32_t>(*v);
    return Status::Ok();
  };
  auto bytes = [](const std::optional<std::string>& flag, const char* name, uint64_t& field) -> Status {
    if (!flag) return Status::Ok();
    auto v = ParseBytes(*flag);
    if (!v.ok()) return v.status().Annotate(std::string("--") + name);
    field = *v;
    return Status::Ok();
  };
  GPB_RETURN_IF_ERROR(count(f.capacity, "capacity", c.registry_capacity));
  if (f.admin_group) c.admin_group = *f.admin_group;
  if (f.log_level) c.log_level = *f.log_level;
  if (f.metrics_listen) c.metrics_listen = *f.metrics_listen;
  if (f.log_format) c.log_format = *f.log_format;
  if (f.default_backend) c.default_backend = *f.default_backend;
  GPB_RETURN_IF_ERROR(count(f.max_slots, "max-slots", c.limits.max_slots));
  GPB_RETURN_IF_ERROR(count(f.max_slots_per_uid, "max-slots-per-uid", c.limits.max_slots_per_uid));
  GPB_RETURN_IF_ERROR(count(f.max_connections, "max-connections", c.limits.max_connections));
  GPB_RETURN_IF_ERROR(
      count(f.max_connections_per_uid, "max-connections-per-uid", c.limits.max_connections_per_uid));
  GPB_RETURN_IF_ERROR(count(f.reserved_admin_connections, "reserved-admin-connections",
                            c.limits.reserved_admin_connections));
  GPB_RETURN_IF_ERROR(count(f.hello_timeout_ms, "hello-timeout-ms", c.limits.hello_timeout_ms));
  GPB_RETURN_IF_ERROR(count(f.max_fds_in_flight, "max-fds-in-flight", c.limits.max_fds_in_flight));
  GPB_RETURN_IF_ERROR(bytes(f.max_host_bytes, "max-host-bytes", c.limits.max_host_bytes));
  GPB_RETURN_IF_ERROR(bytes(f.max_bytes_per_uid, "max-bytes-per-uid", c.limits.max_bytes_per_uid));
  GPB_RETURN_IF_ERROR(bytes(f.max_bytes_per_device, "max-bytes-per-device", c.limits.max_bytes_per_device));
  return ValidateConfig(c).Annotate("command line");
}

// Every allocation holds a descriptor (a memfd or an exported VMM handle) and
// every attach passes one more through: lift the soft limit to the hard one,
// as systemd advises for programs that need many (the broker uses epoll, not
// select, so large descriptor numbers are safe).
void RaiseOpenFileLimit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) return;
  if (r.rlim_cur < r.rlim_max) {
    rlimit raised{r.rlim_max, r.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) r = raised;
  }
  spdlog::info("open-file limit {} (one per allocation, one per client, and one per attach in flight)", r.rlim_cur);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gpubrokerd: shares GPU and host buffers between processes, by name, zero-copy"};
  app.name("gpubrokerd");
  app.footer("Configuration: the embedded one (--print-default-config shows it) or --config FILE, then these "
             "flags; every key is in the example config/gpubroker.yaml. Without a socket path, a broker run "
             "as root listens at /run/gpubroker/gpubroker.sock and anyone else's at "
             "$XDG_RUNTIME_DIR/gpubroker/gpubroker.sock ($GPUBROKER_SOCKET overrides both).");
  app.set_version_flag("--version", std::string("gpubrokerd ") + gpubroker::kGpubrokerVersion);
  Flags f;
  app.add_option("-c,--config", f.config_file, "YAML config file (default: the embedded one)");
  app.add_option("--socket", f.socket, "control socket path");
  app.add_option("--socket-mode", f.socket_mode, "control socket mode, octal");
  app.add_option("--registry", f.registry, "registry name (labels its memfd)");
  app.add_option("--capacity", f.capacity, "registry capacity in slots");
  app.add_option("--admin-group", f.admin_group, "group whose members administer the broker");
  app.add_option("--default-backend", f.default_backend, "auto, host, cuda_vmm or cuda_ipc");
  app.add_option("--max-slots", f.max_slots, "limit on live slots");
  app.add_option("--max-slots-per-uid", f.max_slots_per_uid, "slots one uid may own; 0 = unlimited");
  app.add_option("--max-host-bytes", f.max_host_bytes, "host memory cap, e.g. 64GiB; 0 = half of RAM or cgroup");
  app.add_option("--max-bytes-per-uid", f.max_bytes_per_uid, "bytes one uid's slots may hold; 0 = unlimited");
  app.add_option("--max-bytes-per-device", f.max_bytes_per_device, "per CUDA device, e.g. 40GiB");
  app.add_option("--max-connections", f.max_connections, "limit on client connections");
  app.add_option("--max-connections-per-uid", f.max_connections_per_uid, "connections one uid may hold");
  app.add_option("--reserved-admin-connections", f.reserved_admin_connections,
                 "connections kept for root, the broker's user and the admin group");
  app.add_option("--hello-timeout-ms", f.hello_timeout_ms, "close connections silent this long");
  app.add_option("--max-fds-in-flight", f.max_fds_in_flight, "per connection: descriptors sent and not read");
  app.add_option("--metrics-listen", f.metrics_listen,
                 "serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one); \"\" for none");
  app.add_option("--log-level", f.log_level, "trace, debug, info, warn, error, critical, off");
  app.add_option("--log-format", f.log_format, "auto (journal when stderr is the journal, else text), text, json or journal");
  app.add_flag("--print-default-config", f.print_default, "print the embedded config and exit");
  app.add_option("--check-config", f.check_config,
                 "check FILE as a start would (keys, values, groups, every pool on this machine's backends), "
                 "print what was checked, exit 0 if it is good and 2 if not");
  // Usage errors exit 2, as a bad config does (and as gpubrokerctl's do),
  // each line saying which program speaks.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "gpubrokerd: " + std::string(e.what()) + "\nRun 'gpubrokerd --help' for usage.\n";
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (f.print_default) {
    std::cout << gpubroker::EmbeddedDefaultConfig();
    return 0;
  }
  const bool checking = app.count("--check-config") > 0;
  if (checking && f.check_config.empty()) {
    std::cerr << "gpubrokerd: --check-config needs a FILE\n";
    return 2;
  }
  if (checking) {
    if (!f.config_file.empty() && f.config_file != f.check_config) {
      std::cerr << "gpubrokerd: --check-config FILE and --config name different files\n";
      return 2;
    }
    f.config_file = f.check_config;
  }
  gpubroker::ConfigSource source{f.config_file, [f](gpubroker::Config& c) { return ApplyFlags(f, c); }};
  auto config = gpubroker::LoadConfig(source);
  if (!config.ok()) {
    std::cerr << "gpubrokerd: " << config.status().message() << "\n";
    return 2;
  }
  if (auto s = gpubroker::SetupLogging(config->log_level, config->log_format); !s.ok()) {
    std::cerr << "gpubrokerd: " << s.message() << "\n";
    return 2;
  }
  if (checking) {
    spdlog::set_level(spdlog::level::warn);  // the verdict, not the start-up chatter
    auto checked = gpubroker::CheckConfig(*config);
    if (!checked.ok()) {
      std::cerr << "gpubrokerd: " << f.check_config << ": " << checked.status().message() << "\n";
      return 2;
    }
    std::cout << "gpubrokerd: " << f.check_config << ": OK (" << *checked << ")\n";
    return 0;
  }
  RaiseOpenFileLimit();
  gpubroker::Status s = gpubroker::RunBroker(*config, source);
  if (!s.ok()) {
    spdlog::critical("{}", s.ToString());
    return 1;
  }
  return 0;
}

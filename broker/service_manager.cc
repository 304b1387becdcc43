#include "broker/service_manager.h"

#include <systemd/sd-daemon.h>
#include <fcntl.h>
#include <time.h>

#include <cstring>

#include <cstdlib>

#include <spdlog/spdlog.h>

namespace gpubroker {

ServiceManager ServiceManager::FromEnvironment() {
  ServiceManager m;
  const char* notify = std::getenv("NOTIFY_SOCKET");
  m.active_ = notify != nullptr && *notify != '\0';
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) m.watchdog_ = std::chrono::microseconds(usec / 2);
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    std::string name = names != nullptr && names[i] != nullptr ? names[i] : "unknown";
    m.passed_[name] = UniqueFd(SD_LISTEN_FDS_START + i);
    ::fcntl(SD_LISTEN_FDS_START + i, F_SETFD, FD_CLOEXEC);
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
  }
  if (n < 0) spdlog::warn("cannot read the fds passed by the service manager: {}", std::strerror(-n));
  return m;
}

void ServiceManager::Notify(const std::string& state, const int* fds, unsigned n_fds) {
  if (!active_) return;
  int rc = fds != nullptr ? sd_pid_notify_with_fds(0, 0, state.c_str(), fds, n_fds)
                          : sd_notify(0, state.c_str());
  if (rc < 0) spdlog::warn("service manager notification failed: {}", std::strerror(-rc));
}

void ServiceManager::Ready() { Notify("READY=1"); }

void ServiceManager::Reloading() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t usec = static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
  Notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void ServiceManager::Stopping() { Notify("STOPPING=1"); }
void ServiceManager::Status(const std::string& text) { Notify("STATUS=" + text); }
void ServiceManager::Watchdog() { Notify("WATCHDOG=1"); }

void ServiceManager::StoreFd(const std::string& name, int fd) {
  Notify("FDSTORE=1\nFDNAME=" + name, &fd, 1);
}

void ServiceManager::RemoveFd(const std::string& name) { Notify("FDSTOREREMOVE=1\nFDNAME=" + name); }

std::map<std::string, UniqueFd> ServiceManager::TakePassedFds() { return std::move(passed_); }

}  // namespace gpubroker

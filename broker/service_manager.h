// The broker's side of systemd's service protocol, through libsystemd:
// readiness and status, the watchdog, reload and stop notices, and the file
// descriptor store that lets buffers outlive a broker restart. Every call is a
// no-op when the broker was not started by a service manager (no NOTIFY_SOCKET).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "common/posix.h"

namespace gpubroker {

class ServiceManager {
 public:
  // Reads NOTIFY_SOCKET, WATCHDOG_USEC and the LISTEN_FDS the manager passed.
  static ServiceManager FromEnvironment();

  bool active() const { return active_; }
  void Ready();
  void Reloading();
  void Stopping();
  void Status(const std::string& text);
  void Watchdog();
  // How often to send WATCHDOG=1 (half the manager's timeout), if it asked.
  std::optional<std::chrono::microseconds> watchdog_interval() const { return watchdog_; }

  // FDSTORE=1 with FDNAME=name: the manager keeps a copy of `fd` across restarts.
  void StoreFd(const std::string& name, int fd);
  // FDSTOREREMOVE=1: the manager closes its copy.
  void RemoveFd(const std::string& name);

  // The fds passed at start (LISTEN_FDS / LISTEN_FDNAMES), by name.
  std::map<std::string, UniqueFd> TakePassedFds();

 private:
  void Notify(const std::string& state, const int* fds = nullptr, unsigned n_fds = 0);
  bool active_ = false;
  std::optional<std::chrono::microseconds> watchdog_;
  std::map<std::string, UniqueFd> passed_;
};

}  // namespace gpubroker

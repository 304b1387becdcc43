// A stand-in for systemd's side of the service protocol, as documented in
// sd_notify(3) and sd_listen_fds(3): it receives notifications (with fds) on
// a NOTIFY_SOCKET datagram socket, keeps an fd store, and hands the stored
// fds to the next broker through LISTEN_FDS / LISTEN_FDNAMES.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "tests/integration/harness.h"
#include "common/posix.h"

namespace gpubroker::testing {

class ServiceHarness {
 public:
  ServiceHarness();
  ~ServiceHarness();

  // Launch options that point the broker at this manager.
  LaunchOptions Options(std::vector<std::string> args = {}, uint64_t watchdog_usec = 0) const;
  // Same, with the fd store handed over (a restart). Reads every pending
  // notification first, as the manager would have.
  LaunchOptions RestartOptions(std::vector<std::string> args = {});

  // Receives notifications until one contains `needle`; false on timeout.
  // The fd store is updated from every message on the way.
  bool Expect(const std::string& needle, std::chrono::milliseconds limit = std::chrono::seconds(10));
  // Every notification received so far, in order.
  const std::vector<std::string>& messages() const { return messages_; }
  const std::map<std::string, UniqueFd>& store() const { return store_; }

 private:
  bool ReceiveOne(std::chrono::milliseconds limit);
  std::string dir_, path_;
  UniqueFd socket_;
  std::vector<std::string> messages_;
  size_t seen_ = 0;
  std::map<std::string, UniqueFd> store_;
};

}  // namespace gpubroker::testing

// A stand-in for systemd's side of the service protocol, as documented in
// sd_notify(3) and sd_listen_fds(3): it receives notifications (with fds) on
// a NOTIFY_SOCKET datagram socket, keeps an fd store, and hands the stored
// fds to the next broker through LISTEN_FDS / LISTEN_FDNAMES. Like systemd,
// it reads notifications as they come (on a thread of its own): a sender is
// never left blocked on a full queue.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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
  // Same, with the fd store handed over (a restart): every notification sent
  // before is taken into account, as the manager would have.
  LaunchOptions RestartOptions(std::vector<std::string> args = {});

  // A broker started under this manager, once it has said READY=1; nullptr
  // if it did not start or did not say so.
  std::unique_ptr<BrokerProcess> StartBroker(std::vector<std::string> args = {});
  // The same for a warm restart in place of `previous` (stopped), handed the
  // fd store.
  std::unique_ptr<BrokerProcess> RestartBroker(const BrokerProcess& previous, std::vector<std::string> args = {});

  // Waits for a notification, after the last one Expect matched, that
  // contains `needle`; false on timeout.
  bool Expect(const std::string& needle, std::chrono::milliseconds limit = std::chrono::seconds(10));
  // The names in the fd store now.
  std::vector<std::string> StoredNames();

 private:
  void Receive();           // the reader thread
  bool ReceiveOne(int timeout_ms);
  void Drain();             // whatever is queued now
  std::string dir_, path_;
  UniqueFd socket_;
  std::mutex receive_mu_;  // one receive at a time, from the socket to stored
  std::mutex mu_;
  std::condition_variable arrived_;
  std::vector<std::string> messages_;  // guarded by mu_
  size_t seen_ = 0;                    // guarded by mu_
  std::map<std::string, UniqueFd> store_;  // guarded by mu_
  std::atomic<bool> stop_{false};
  std::thread reader_;
};

}  // namespace gpubroker::testing

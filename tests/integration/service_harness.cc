#include "tests/integration/service_harness.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <sstream>

#include "common/seqpacket.h"

namespace gpubroker::testing {

ServiceHarness::ServiceHarness() {
  char tmpl[] = "/tmp/gpbsvc-XXXXXX";
  dir_ = ::mkdtemp(tmpl);
  path_ = dir_ + "/notify";
  socket_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  ::bind(socket_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  reader_ = std::thread([this] { Receive(); });
}

ServiceHarness::~ServiceHarness() {
  stop_ = true;
  reader_.join();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

LaunchOptions ServiceHarness::Options(std::vector<std::string> args, uint64_t watchdog_usec) const {
  LaunchOptions o;
  o.args = std::move(args);
  o.env.emplace_back("NOTIFY_SOCKET", path_);
  if (watchdog_usec != 0) o.env.emplace_back("WATCHDOG_USEC", std::to_string(watchdog_usec));
  return o;
}

LaunchOptions ServiceHarness::RestartOptions(std::vector<std::string> args) {
  Drain();
  LaunchOptions o = Options(std::move(args));
  std::lock_guard lock(mu_);
  for (const auto& [name, fd] : store_) o.fds.emplace_back(name, fd.get());
  return o;
}

std::unique_ptr<BrokerProcess> ServiceHarness::StartBroker(std::vector<std::string> args) {
  auto broker = BrokerProcess::Start(Options(std::move(args)));
  return broker && Expect("READY=1") ? std::move(broker) : nullptr;
}

std::unique_ptr<BrokerProcess> ServiceHarness::RestartBroker(const BrokerProcess& previous,
                                                             std::vector<std::string> args) {
  auto broker = BrokerProcess::Restart(previous, RestartOptions(std::move(args)));
  return broker && Expect("READY=1") ? std::move(broker) : nullptr;
}

std::vector<std::string> ServiceHarness::StoredNames() {
  Drain();
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  for (const auto& [name, fd] : store_) names.push_back(name);
  return names;
}

void ServiceHarness::Receive() {
  while (!stop_) ReceiveOne(50);
}

// Takes in what is already queued, and waits for a message the reader thread
// has taken off the socket to be stored (receive_mu_ spans both).
void ServiceHarness::Drain() {
  while (ReceiveOne(0)) {
  }
}

bool ServiceHarness::ReceiveOne(int timeout_ms) {
  if (timeout_ms > 0) {
    // The reader thread waits without the lock: held across its poll, it
    // was taken again at once after each, and Drain waited behind it for
    // ever (a warm-restart case hung so on the H100, 3 runs in 3).
    pollfd p{socket_.get(), POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return false;
  }
  std::lock_guard receiving(receive_mu_);
  std::vector<std::byte> buf(4096);
  auto r = ReceiveRecord(socket_.get(), buf, true);
  if (!r.ok() || r->would_block || r->size == 0) return false;
  std::string text(reinterpret_cast<const char*>(buf.data()), r->size);
  std::map<std::string, std::string> fields;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) fields[line.substr(0, eq)] = line.substr(eq + 1);
  }
  std::lock_guard lock(mu_);
  messages_.push_back(text);
  if (fields.count("FDSTORE") && !r->fds.empty()) store_[fields["FDNAME"]] = std::move(r->fds.front());
  if (fields.count("FDSTOREREMOVE")) store_.erase(fields["FDNAME"]);
  arrived_.notify_all();
  return true;
}

bool ServiceHarness::Expect(const std::string& needle, std::chrono::milliseconds limit) {
  std::unique_lock lock(mu_);
  return arrived_.wait_for(lock, limit, [&] {
    for (; seen_ < messages_.size(); ++seen_) {
      if (messages_[seen_].find(needle) != std::string::npos) {
        ++seen_;
        return true;
      }
    }
    return false;
  });
}

}  // namespace gpubroker::testing

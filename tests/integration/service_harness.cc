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
}

ServiceHarness::~ServiceHarness() {
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
  while (ReceiveOne(std::chrono::milliseconds(0))) {
  }
  LaunchOptions o = Options(std::move(args));
  for (const auto& [name, fd] : store_) o.fds.emplace_back(name, fd.get());
  return o;
}

bool ServiceHarness::ReceiveOne(std::chrono::milliseconds limit) {
  pollfd p{socket_.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return false;
  std::vector<std::byte> buf(4096);
  auto r = ReceiveRecord(socket_.get(), buf, false);
  if (!r.ok() || r->size == 0) return false;
  std::string text(reinterpret_cast<const char*>(buf.data()), r->size);
  messages_.push_back(text);
  std::map<std::string, std::string> fields;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) fields[line.substr(0, eq)] = line.substr(eq + 1);
  }
  if (fields.count("FDSTORE") && !r->fds.empty()) store_[fields["FDNAME"]] = std::move(r->fds.front());
  if (fields.count("FDSTOREREMOVE")) store_.erase(fields["FDNAME"]);
  return true;
}

bool ServiceHarness::Expect(const std::string& needle, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    for (; seen_ < messages_.size(); ++seen_) {
      if (messages_[seen_].find(needle) != std::string::npos) {
        ++seen_;
        return true;
      }
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !ReceiveOne(left)) return false;
  }
}

}  // namespace gpubroker::testing

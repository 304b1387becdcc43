// The listening socket, the signal set and the live sessions.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "broker/asio.h"
#include "broker/config.h"
#include "broker/fd_closer.h"
#include "common/posix.h"
#include "broker/request_handler.h"
#include "broker/session.h"

namespace gpubroker {

// Whether a uid_map ("inside outside count" per line) is the host's own:
// every uid mapped to itself.
bool IsHostUserNamespace(std::string_view uid_map);

class Server {
 public:
  struct Hooks {
    std::function<void()> reload;  // SIGHUP
    std::function<void()> tick;    // every tick_interval
    std::chrono::milliseconds tick_interval{2000};
    std::function<void()> stopping;
  };

  // Binds the control socket (creating its directory; replacing a stale socket
  // file, refusing one a live broker answers on) and sets its mode and group.
  static Result<std::unique_ptr<Server>> Create(boost::asio::io_context& io, const Config& config,
                                                RequestHandler& handler, Registry& registry,
                                                Hooks hooks);
  ~Server();

  // Accepts connections and handles SIGTERM / SIGINT until Stop().
  void Start();
  // Client descriptors and sockets handed to the closer, not yet closed.
  uint64_t closing() const { return closer_.pending(); }
  // Stops accepting, tells every client, closes sessions and the socket file.
  void Stop(const std::string& reason);

 private:
  Server(boost::asio::io_context& io, RequestHandler& handler, Registry& registry);
  void Accept();
  bool ShedConnection();
  void RetryAcceptSoon();
  void OnAccepted(SeqPacketSocket socket);
  void LogRefusal(const PeerCredentials& peer, const Status& why);
  void WaitSignal();
  void Tick();

  boost::asio::io_context& io_;
  RequestHandler& handler_;
  Registry& registry_;
  SeqPacketAcceptor acceptor_;
  boost::asio::signal_set signals_;
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer accept_retry_;
  UniqueFd spare_;  // /dev/null, given up to accept and refuse a connection when out of descriptors
  std::chrono::steady_clock::time_point shed_logged_{};
  std::chrono::steady_clock::time_point refusal_logged_{};
  uint64_t refusals_unlogged_ = 0;
  uint64_t shed_ = 0;
  Hooks hooks_;
  std::string socket_path_;
  std::map<uint64_t, std::shared_ptr<Session>> sessions_;
  std::vector<std::byte> receive_buffer_;
  FdCloser closer_;  // closes clients' sockets and what they sent, off the loop
  bool refuses_descriptors_ = false;  // the kernel refuses clients' descriptors for us
  bool stopped_ = false;
  static constexpr int kMaxRefusedSessions = 64;  // beyond: closed at once
  int refused_ = 0;
  uint64_t refused_serial_ = 0;
};

}  // namespace gpubroker

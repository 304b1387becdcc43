#include "broker/server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <spdlog/spdlog.h>

#include "common/seqpacket.h"
#include "common/socket_path.h"

namespace gpubroker {
namespace {

// The descriptor Server keeps in reserve for refusing connections when out of them.
UniqueFd OpenSpare() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

std::string ReadSmallFile(const char* path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The ids a peer reads as when its own have no number in the broker's user
// namespace. Outside the host's namespace they cannot be told from real ids
// of that namespace, so a peer reading as them is refused (uid) or in no
// group (gid). In the host's namespace every id is mapped: none are ambiguous.
struct OverflowIds {
  uid_t uid;
  gid_t gid;
};
std::optional<OverflowIds> AmbiguousOverflowIds() {
  static const std::optional<OverflowIds> ids = []() -> std::optional<OverflowIds> {
    std::string map = ReadSmallFile("/proc/self/uid_map");
    if (map.empty() || IsHostUserNamespace(map)) return std::nullopt;
    auto read = [](const char* path) {
      std::string text = ReadSmallFile(path);
      return text.empty() ? 65534ul : std::strtoul(text.c_str(), nullptr, 10);
    };
    return OverflowIds{static_cast<uid_t>(read("/proc/sys/kernel/overflowuid")),
                       static_cast<gid_t>(read("/proc/sys/kernel/overflowgid"))};
  }();
  return ids;
}

PeerCredentials ReadPeer(int fd) {
  PeerCredentials peer;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    peer.pid = cred.pid;
    peer.uid = cred.uid;
    peer.gid = cred.gid;
    peer.unmapped = AmbiguousOverflowIds() && AmbiguousOverflowIds()->uid == cred.uid;
  } else {
    peer.uid = static_cast<uid_t>(-1);  // unknown: grant nothing
    peer.gid = static_cast<gid_t>(-1);
  }
  gid_t groups[256];
  len = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
    peer.groups.assign(groups, groups + len / sizeof(gid_t));
  }
  if (auto overflow = AmbiguousOverflowIds()) {
    std::erase(peer.groups, overflow->gid);
    if (peer.gid == overflow->gid) peer.gid = static_cast<gid_t>(-1);  // no group
  }
  return peer;
}

Result<UniqueFd> BindSocket(const Config& config) {
  const std::string& path = config.socket_path;
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  // A per-user broker's directory is that user's alone; any other is 0755.
  // Neither may be one that others can write: they could swap the socket.
  const bool per_user = !UserSocketPath().empty() && path == UserSocketPath();
  if (per_user) {
    GPB_RETURN_IF_ERROR(CheckSocketDirectory(dir.parent_path().string(), ::geteuid(), true)
                            .Annotate("$XDG_RUNTIME_DIR"));
  }
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir.parent_path(), ec);
    if (::mkdir(dir.c_str(), per_user ? 0700 : 0755) != 0 && errno != EEXIST) {
      return PosixError("create socket directory " + dir.string(), errno);
    }
    (void)::chmod(dir.c_str(), per_user ? 0700 : 0755);  // whatever the umask
  }
  GPB_RETURN_IF_ERROR(CheckSocketDirectory(dir.string(), ::geteuid(), per_user));
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    // Remove only what is plainly a stale socket of ours: never another
    // user's file, and never something that is not a socket.
    if (!S_ISSOCK(st.st_mode)) {
      return AlreadyExists(path + " exists and is not a socket; the broker will not remove it (move it "
                                  "away, or set socket.path elsewhere)");
    }
    if (st.st_uid != ::geteuid()) {
      return PermissionDenied("socket " + path + " belongs to uid " + std::to_string(st.st_uid) +
                              ", not to the broker's uid " + std::to_string(::geteuid()) +
                              "; the broker will not remove it");
    }
    if (ConnectSeqpacket(path).ok()) {
      return AlreadyExists("a broker is already listening on " + path);
    }
    spdlog::warn("removing stale socket {}", path);
    if (::unlink(path.c_str()) != 0) return PosixError("remove stale socket " + path, errno);
  } else if (errno != ENOENT) {
    return PosixError("inspect socket path " + path, errno);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return ConfigError("socket path is too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return PosixError("socket", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return PosixError("bind " + path, errno);
  }
  if (::chmod(path.c_str(), config.socket_mode) != 0) return PosixError("chmod " + path, errno);
  if (!config.socket_group.empty()) {
    GPB_ASSIGN_OR_RETURN(gid_t gid, LookupGroup(config.socket_group));
    if (::chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0) return PosixError("chown " + path, errno);
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return PosixError("listen " + path, errno);
  return fd;
}

}  // namespace

bool IsHostUserNamespace(std::string_view uid_map) {
  std::istringstream lines{std::string(uid_map)};
  uint64_t inside = 0, outside = 0, count = 0;
  if (!(lines >> inside >> outside >> count)) return false;
  std::string rest;
  return inside == 0 && outside == 0 && count == 4294967295ull && !(lines >> rest);
}

Server::Server(boost::asio::io_context& io, RequestHandler& handler, Registry& registry)
    : io_(io),
      handler_(handler),
      registry_(registry),
      acceptor_(io),
      signals_(io, SIGTERM, SIGINT, SIGHUP),
      timer_(io),
      accept_retry_(io),
      spare_(OpenSpare()),
      receive_buffer_(wire::kMaxMessageBytes) {}

Server::~Server() {
  if (!socket_path_.empty()) ::unlink(socket_path_.c_str());
}

Result<std::unique_ptr<Server>> Server::Create(boost::asio::io_context& io, const Config& config,
                                               RequestHandler& handler, Registry& registry,
                                               Hooks hooks) {
  GPB_ASSIGN_OR_RETURN(UniqueFd fd, BindSocket(config));
  std::unique_ptr<Server> server(new Server(io, handler, registry));
  server->hooks_ = std::move(hooks);
  boost::system::error_code ec;
  server->acceptor_.assign(UnixSeqPacket(), fd.release(), ec);
  if (ec) return Status(Code::kIo, "cannot adopt listening socket: " + ec.message());
  server->acceptor_.native_non_blocking(true, ec);  // Accept's accept4 must not block
  // No client may send descriptors; where the kernel can refuse them for us,
  // none ever reaches the broker (else the sessions close them off the loop).
  server->refuses_descriptors_ = RefuseDescriptors(server->acceptor_.native_handle());
  spdlog::debug("clients' descriptors refused by the kernel: {}", server->refuses_descriptors_ ? "yes" : "no");
  server->socket_path_ = config.socket_path;
  return server;
}

void Server::Start() {
  WaitSignal();
  Accept();
  if (hooks_.tick) Tick();
}

void Server::WaitSignal() {
  signals_.async_wait([this](boost::system::error_code ec, int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      spdlog::info("SIGHUP: reloading the configuration");
      if (hooks_.reload) hooks_.reload();
      WaitSignal();
      return;
    }
    Stop(std::string("signal ") + ::strsignal(signo));
  });
}

// The watchdog and status heartbeat: runs on the event loop, so a stuck loop
// stops the pings and the service manager restarts the broker.
void Server::Tick() {
  hooks_.tick();
  timer_.expires_after(hooks_.tick_interval);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec && !stopped_) Tick();
  });
}

// Waits for a pending connection, then accepts it by hand: out of
// descriptors, accept fails before it looks at the queue, so the broker must
// act only when a connection is really there, and take it off the queue.
void Server::Accept() {
  acceptor_.async_wait(SeqPacketAcceptor::wait_read, [this](boost::system::error_code ec) {
    if (stopped_ || ec == boost::asio::error::operation_aborted) return;
    if (ec) {
      spdlog::warn("waiting for connections failed: {}", ec.message());
      RetryAcceptSoon();
      return;
    }
    int fd = ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      boost::system::error_code assign;
      SeqPacketSocket socket(io_);
      socket.assign(UnixSeqPacket(), fd, assign);
      if (assign) {
        closer_.Close(UniqueFd(fd));  // it may hold descriptors already: off the loop
        spdlog::warn("cannot adopt an accepted connection: {}", assign.message());
      } else {
        OnAccepted(std::move(socket));
      }
    } else if (errno == EMFILE || errno == ENFILE) {
      if (!ShedConnection()) {
        RetryAcceptSoon();  // no spare to shed with: wait for descriptors to free up
        return;
      }
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      spdlog::warn("accept failed: {}", std::strerror(errno));  // keep serving the rest
    }
    Accept();
  });
}

void Server::RetryAcceptSoon() {
  accept_retry_.expires_after(std::chrono::milliseconds(100));
  accept_retry_.async_wait([this](boost::system::error_code e) {
    if (e || stopped_) return;
    if (!spare_.valid()) spare_ = OpenSpare();
    Accept();
  });
}

// Out of descriptors with a connection waiting: give up the spare, take the
// connection and hang up (the client hears at once instead of waiting in the
// queue), then take the spare back. False if there was no spare.
bool Server::ShedConnection() {
  if (!spare_.valid()) return false;
  spare_.reset();
  int fd = ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
  if (fd >= 0) closer_.Close(UniqueFd(fd));  // off the loop, like every client socket
  spare_ = OpenSpare();
  ++shed_;
  auto now = std::chrono::steady_clock::now();
  if (now - shed_logged_ >= std::chrono::seconds(10)) {
    shed_logged_ = now;
    spdlog::error("out of file descriptors (the open-file limit): refused {} connection(s) so far; raise "
                  "LimitNOFILE or free allocations",
                  shed_);
  }
  return true;
}

// At most one line a second: a flood of refused connections cannot flood the log.
void Server::LogRefusal(const PeerCredentials& peer, const Status& why) {
  auto now = std::chrono::steady_clock::now();
  if (now - refusal_logged_ < std::chrono::seconds(1)) {
    ++refusals_unlogged_;
    return;
  }
  refusal_logged_ = now;
  spdlog::warn("refusing connection from pid {} uid {}: {}{}", peer.pid, peer.uid, why.message(),
               refusals_unlogged_ ? " (and " + std::to_string(refusals_unlogged_) + " more since the last such line)"
                                  : std::string());
  refusals_unlogged_ = 0;
}

void Server::OnAccepted(SeqPacketSocket socket) {
  PeerCredentials peer = ReadPeer(socket.native_handle());
  auto id = handler_.OnConnect(peer);
  if (!id.ok() && refused_ >= kMaxRefusedSessions) {
    LogRefusal(peer, id.status());
    // Say why at once, then empty our side before closing: a close with
    // unread data would reset the client's socket and lose the reason.
    (void)SendRecord(socket.native_handle(), wire::EncodeError(0, id.status()), -1, true);
    boost::system::error_code ec;
    int fd = socket.release(ec);
    if (!ec) closer_.Close(UniqueFd(fd), /*drain=*/true);  // what it sent may carry descriptors
    return;
  }
  // Refused connections get a session of their own that answers the first
  // message with the reason; their ids are outside the handler's range.
  uint64_t session_id = id.ok() ? *id : (uint64_t{1} << 63) | ++refused_serial_;
  if (!id.ok()) {
    LogRefusal(peer, id.status());
    ++refused_;
  }
  auto session = std::make_shared<Session>(
      std::move(socket), session_id, handler_, receive_buffer_, closer_,
      Session::Hooks{[this](uint64_t client_id) {
                       if (client_id >> 63) --refused_;
                       sessions_.erase(client_id);
                     },
                     [this] {
                       if (handler_.shutdown_requested()) {
                         boost::asio::post(io_, [this] { Stop("shutdown request"); });
                       }
                     }});
  if (!id.ok()) session->Refuse(id.status());
  sessions_.emplace(session_id, session);
  session->Start();
}

void Server::Stop(const std::string& reason) {
  if (stopped_) return;
  stopped_ = true;
  spdlog::info("stopping ({})", reason);
  if (hooks_.stopping) hooks_.stopping();
  timer_.cancel();
  accept_retry_.cancel();
  handler_.SetStopping();
  registry_.SetState(wire::kStateStopping);
  boost::system::error_code ec;
  acceptor_.close(ec);
  signals_.cancel(ec);
  wire::Notice notice{wire::kNoticeStopping, 0, {}};
  notice.message.set("broker stopping: " + reason);
  auto farewell = wire::EncodeReply(0, notice);
  auto sessions = sessions_;  // Close() erases from sessions_
  for (auto& [id, session] : sessions) session->Close(farewell);
  ::unlink(socket_path_.c_str());
  socket_path_.clear();
  io_.stop();
}

}  // namespace gpubroker

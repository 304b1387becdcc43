#include "broker/session.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <spdlog/spdlog.h>

#include "common/seqpacket.h"

#include <cstring>

namespace gpubroker {

namespace {
constexpr int kMessagesPerWakeup = 64;  // then yield to other sessions
}

Session::Session(Socket socket, uint64_t client_id, RequestHandler& handler,
                 std::span<std::byte> receive_buffer, FdCloser& closer, Hooks hooks)
    : socket_(std::move(socket)),
      client_id_(client_id),
      handler_(handler),
      buffer_(receive_buffer),
      closer_(closer),
      hooks_(std::move(hooks)),
      hello_timer_(socket_.get_executor()),
      flow_timer_(socket_.get_executor()) {}

void Session::Start() {
  boost::system::error_code ec;
  socket_.non_blocking(true, ec);
  if (!refusal_) StartHelloTimer();
  WaitReadable();
}

void Session::StartHelloTimer() {
  uint32_t ms = handler_.limits().hello_timeout_ms;
  hello_timer_.expires_after(std::chrono::milliseconds(ms));
  hello_timer_.async_wait([self = shared_from_this(), ms](boost::system::error_code ec) {
    if (ec || self->closed_ || self->handler_.Greeted(self->client_id_)) return;
    if (auto note = self->handler_.LogAllowance(self->client_id_)) {
      spdlog::info("client {}: no hello within {} ms; closing{}", self->client_id_, ms, *note);
    }
    auto farewell = wire::EncodeError(0, Unavailable("no hello within " + std::to_string(ms) +
                                                         " ms (limits.hello_timeout_ms): connection closed"));
    self->Close(farewell);
  });
}

bool Session::ClientReadEverything() const {
  int unread = 0;
  if (::ioctl(const_cast<Socket&>(socket_).native_handle(), SIOCOUTQ, &unread) != 0) return true;
  return unread == 0;
}

// The client has max_fds_in_flight descriptors it has not read: hold the
// rest of its replies, and read nothing more from it, until it catches up.
// Only a client that does not read its replies ever gets here, so a short
// poll with back-off costs the well-behaved nothing.
void Session::WaitForClientToRead() {
  if (!flow_logged_) {
    flow_logged_ = true;
    if (auto note = handler_.LogAllowance(client_id_)) {
      spdlog::warn("client {}: {} descriptors sent and not read (limits.max_fds_in_flight); holding its "
                   "replies until it reads{}",
                   client_id_, fds_in_flight_, *note);
    }
  }
  flow_timer_.expires_after(std::chrono::milliseconds(flow_backoff_ms_));
  flow_backoff_ms_ = std::min(flow_backoff_ms_ * 2, 64);
  flow_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec || self->closed_) return;
    self->Flush();
    if (self->outgoing_.empty()) self->OnReadable();
  });
}

void Session::WaitReadable() {
  if (closed_) return;
  socket_.async_wait(Socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
    if (ec) {
      if (ec != boost::asio::error::operation_aborted) self->Shutdown();
      return;
    }
    self->OnReadable();
  });
}

void Session::OnReadable() {
  for (int i = 0; i < kMessagesPerWakeup && !closed_ && outgoing_.empty(); ++i) {
    auto r = ReceiveRecord(socket_.native_handle(), buffer_, true);
    if (!r.ok()) {
      if (auto note = handler_.LogAllowance(client_id_)) {
        spdlog::warn("client {}: {}{}", client_id_, r.status().message(), *note);
      }
      Shutdown();
      return;
    }
    if (r->would_block) break;
    if (r->closed) {
      Shutdown();
      return;
    }
    if (!r->fds.empty() || r->fds_truncated) {
      const size_t count = r->fds.size();
      // Closed off the loop: closing what a client sent can take as long as
      // the client likes (a lingering TCP socket, a file on a hung mount).
      for (UniqueFd& fd : r->fds) closer_.Close(std::move(fd));
      Enqueue(Reply{wire::EncodeError(0, ProtocolError("clients may not send file descriptors (" +
                                                       std::to_string(count) + (r->fds_truncated ? " or more" : "") +
                                                       " came with a message)"))});
      continue;
    }
    if (r->truncated) {
      Enqueue(Reply{wire::EncodeError(0, ProtocolError("message exceeds the " +
                                                       std::to_string(wire::kMaxMessageBytes) +
                                                       "-byte limit"))});
      continue;
    }
    if (refusal_) {
      uint32_t request_id = 0;
      if (r->size >= sizeof(wire::Header)) {
        std::memcpy(&request_id, buffer_.data() + offsetof(wire::Header, request_id), sizeof request_id);
      }
      (void)SendRecord(socket_.native_handle(), wire::EncodeError(request_id, *refusal_), -1, true);
      Shutdown();
      return;
    }
    Reply reply = handler_.Handle(client_id_, buffer_.first(r->size));
    bool close_after = reply.close_connection;
    Enqueue(std::move(reply));
    hooks_.replied();
    if (close_after) {
      Shutdown();
      return;
    }
  }
  if (!closed_ && outgoing_.empty()) WaitReadable();
}

void Session::Enqueue(Reply reply) {
  outgoing_.push_back(std::move(reply));
  Flush();
}

void Session::Flush() {
  while (!outgoing_.empty() && !closed_) {
    Reply& front = outgoing_.front();
    if (front.fd.valid() && fds_in_flight_ >= handler_.limits().max_fds_in_flight) {
      if (!ClientReadEverything()) {
        WaitForClientToRead();
        return;
      }
      fds_in_flight_ = 0;
      flow_backoff_ms_ = 1;
    }
    auto sent = SendRecord(socket_.native_handle(), front.bytes, front.fd.get(), true);
    if (!sent.ok()) {
      if (auto note = handler_.LogAllowance(client_id_)) {
        spdlog::info("client {}: {}{}", client_id_, sent.status().message(), *note);
      }
      Shutdown();
      return;
    }
    if (!*sent) {
      if (!waiting_write_) {
        waiting_write_ = true;
        socket_.async_wait(Socket::wait_write,
                           [self = shared_from_this()](boost::system::error_code ec) {
                             self->waiting_write_ = false;
                             if (ec) return;
                             self->Flush();
                             if (self->outgoing_.empty()) self->OnReadable();
                           });
      }
      return;
    }
    if (front.fd.valid()) ++fds_in_flight_;
    outgoing_.pop_front();  // closes the fd we shared: the client has its own now
  }
}

void Session::Close(std::span<const std::byte> farewell) {
  if (closed_) return;
  if (!farewell.empty()) (void)SendRecord(socket_.native_handle(), farewell, -1, true);
  Shutdown();
}

void Session::Shutdown() {
  if (closed_) return;
  closed_ = true;
  outgoing_.clear();
  hello_timer_.cancel();
  flow_timer_.cancel();
  // The socket is closed off the loop: messages the client sent and we never
  // read may carry descriptors, whose last close is then ours.
  boost::system::error_code ec;
  ::shutdown(socket_.native_handle(), SHUT_RDWR);  // the client hears at once
  int fd = socket_.release(ec);
  if (ec) {
    socket_.close(ec);
  } else {
    closer_.Close(UniqueFd(fd));
  }
  handler_.OnDisconnect(client_id_);
  hooks_.closed(client_id_);
}

}  // namespace gpubroker

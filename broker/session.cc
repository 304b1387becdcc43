#include "session.h"

#include <spdlog/spdlog.h>

#include "seqpacket.h"

#include <cstring>

namespace gpubroker {

namespace {
constexpr int kMessagesPerWakeup = 64;  // then yield to other sessions
}

Session::Session(Socket socket, uint64_t client_id, RequestHandler& handler,
                 std::span<std::byte> receive_buffer, Hooks hooks)
    : socket_(std::move(socket)),
      client_id_(client_id),
      handler_(handler),
      buffer_(receive_buffer),
      hooks_(std::move(hooks)) {}

void Session::Start() {
  boost::system::error_code ec;
  socket_.non_blocking(true, ec);
  WaitReadable();
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
      spdlog::warn("client {}: {}", client_id_, r.status().message());
      Shutdown();
      return;
    }
    if (r->would_block) break;
    if (r->closed) {
      Shutdown();
      return;
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
    if (!r->fds.empty()) {  // closed as `r` goes
      Enqueue(Reply{wire::EncodeError(0, ProtocolError("clients may not send file descriptors"))});
      continue;
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
    auto sent = SendRecord(socket_.native_handle(), front.bytes, front.fd.get(), true);
    if (!sent.ok()) {
      spdlog::info("client {}: {}", client_id_, sent.status().message());
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
  boost::system::error_code ec;
  socket_.close(ec);
  handler_.OnDisconnect(client_id_);
  hooks_.closed(client_id_);
}

}  // namespace gpubroker

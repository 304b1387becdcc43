// One client connection: framing, fd passing and flow control. Messages go to
// the RequestHandler one at a time; replies that the socket cannot take yet are
// queued, and the session reads nothing more until the queue drains, so a
// client that never reads cannot make the broker buffer without bound.
//
// Two more guards against a client that holds resources without using them:
// a connection that has not said hello within limits.hello_timeout_ms is
// closed; and at most limits.max_fds_in_flight replies carrying a descriptor
// may sit unread in the client's queue (every descriptor in flight counts
// against the broker user's kernel limit, so one such client could otherwise
// make every other client's attach fail).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "broker/asio.h"
#include "broker/fd_closer.h"
#include "broker/request_handler.h"

namespace gpubroker {

class Session : public std::enable_shared_from_this<Session> {
 public:
  using Socket = SeqPacketSocket;
  struct Hooks {
    std::function<void(uint64_t client_id)> closed;
    std::function<void()> replied;  // after each reply is queued or sent
  };

  // `closer` closes what the client handed in, and the session's own socket
  // at the end, off the event loop.
  Session(Socket socket, uint64_t client_id, RequestHandler& handler,
          std::span<std::byte> receive_buffer, FdCloser& closer, Hooks hooks);

  void Start();
  // Answers the connection's first message with `refusal` and closes: a
  // refusal sent at accept could be lost, since closing a socket that holds
  // unread data resets the peer.
  void Refuse(Status refusal) { refusal_ = std::move(refusal); }
  // Sends a notice if the socket takes it at once, then closes.
  void Close(std::span<const std::byte> farewell = {});
  uint64_t client_id() const { return client_id_; }

 private:
  void WaitReadable();
  void OnReadable();
  void Enqueue(Reply reply);
  void Flush();
  void Shutdown();
  void StartHelloTimer();
  // True when every reply sent so far has been read by the client.
  bool ClientReadEverything() const;
  void WaitForClientToRead();

  Socket socket_;
  uint64_t client_id_;
  RequestHandler& handler_;
  std::span<std::byte> buffer_;  // shared by all sessions: the loop is single-threaded
  FdCloser& closer_;
  Hooks hooks_;
  std::deque<Reply> outgoing_;
  bool closed_ = false;
  std::optional<Status> refusal_;
  bool waiting_write_ = false;
  boost::asio::steady_timer hello_timer_;
  boost::asio::steady_timer flow_timer_;
  uint32_t fds_in_flight_ = 0;  // sent with a reply, maybe not yet read
  int flow_backoff_ms_ = 1;
  bool flow_logged_ = false;
};

}  // namespace gpubroker

// A TCP socket on loopback whose close blocks: its peer (a listener of this
// object's that never accepts or reads) lets its send buffer fill, and it has
// SO_LINGER on, so the last close of it waits up to `linger_s` seconds for the
// unsent bytes. What a hostile client hands the broker to stall whoever
// closes it last.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "common/posix.h"
#include "gpubroker/status.hpp"

namespace gpubroker::testing {

class LingeringSocket {
 public:
  static Result<LingeringSocket> Make(int linger_s) {
    LingeringSocket s;
    s.listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int small = 4096;  // the peer's queue, inherited from the listener: small, so it fills
    ::setsockopt(s.listener_.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (!s.listener_.valid() || ::bind(s.listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(s.listener_.get(), 1) != 0 ||
        ::getsockname(s.listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return Status(Code::kIo, "loopback listener: errno " + std::to_string(errno));
    }
    s.socket_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ::setsockopt(s.socket_.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    if (::connect(s.socket_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return Status(Code::kIo, "connect: errno " + std::to_string(errno));
    }
    // Fill the peer's receive queue and our send buffer: nobody reads. Full
    // once the socket stays unwritable for a while.
    ::fcntl(s.socket_.get(), F_SETFL, O_NONBLOCK);
    std::vector<char> junk(65536, 'x');
    size_t sent = 0;
    while (true) {
      ssize_t n = ::send(s.socket_.get(), junk.data(), junk.size(), MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
        continue;
      }
      pollfd p{s.socket_.get(), POLLOUT, 0};
      if (::poll(&p, 1, 200) == 0) break;  // no room for 200 ms: the peer's window is shut
    }
    if (sent == 0) return Status(Code::kIo, "could not fill the socket");
    ::fcntl(s.socket_.get(), F_SETFL, 0);
    linger l{1, linger_s};
    ::setsockopt(s.socket_.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    return s;
  }
  // The lingering socket; the listener stays with this object (its queue
  // holds the unread bytes that keep the close waiting).
  UniqueFd Take() { return std::move(socket_); }
  int get() const { return socket_.get(); }

 private:
  UniqueFd listener_;
  UniqueFd socket_;
};

}  // namespace gpubroker::testing

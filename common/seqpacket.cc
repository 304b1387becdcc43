#include "common/seqpacket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/socket_path.h"

namespace gpubroker {

Result<Received> ReceiveRecord(int socket, std::span<std::byte> buffer, bool nonblocking) {
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  int flags = MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::recvmsg(socket, &msg, flags);
  } while (n < 0 && errno == EINTR);
  Received r;
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      r.would_block = true;
      return r;
    }
    if (errno == ECONNRESET) {
      r.closed = true;
      return r;
    }
    return PosixError("recvmsg", errno);
  }
  // Take ownership of every fd first, so none leaks whatever else is wrong.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        r.fds.emplace_back(fd);
      }
    }
  }
  r.size = static_cast<size_t>(n);
  r.closed = n == 0 && r.fds.empty();
  r.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  r.fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  return r;
}

Result<bool> SendRecord(int socket, std::span<const std::byte> record, int fd, bool nonblocking) {
  iovec iov{const_cast<std::byte*>(record.data()), record.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  int flags = MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::sendmsg(socket, &msg, flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    return PosixError("sendmsg", errno);
  }
  return true;
}

Result<UniqueFd> ConnectSeqpacket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return InvalidArgument("socket path '" + path + "' is longer than " +
                           std::to_string(sizeof addr.sun_path - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return PosixError("socket", errno);
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno;
    Status s = PosixError("connect to " + path, err);
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
      return InvalidArgument(path + " is not a socket but a " + (S_ISDIR(st.st_mode) ? "directory" : S_ISREG(st.st_mode) ? "regular file" : "special file") +
                             ": give the path of a broker's control socket (gpubrokerctl doctor shows which "
                             "one it would use)");
    }
    if (err == ENOENT || err == ECONNREFUSED) {
      return Unavailable(NoBrokerAdvice(path) + " (connect: " + std::strerror(err) +
                         (err == ECONNREFUSED ? ": the socket is there, but no broker listens on it" : "") + ")");
    }
    if (err == EACCES) return PermissionDenied(SocketAccessAdvice(path));
    return s;
  }
  return fd;
}

}  // namespace gpubroker

// Sending and receiving one SOCK_SEQPACKET record, with file descriptors as
// SCM_RIGHTS ancillary data.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "gpubroker/status.hpp"
#include "common/posix.h"

namespace gpubroker {

// Room for as many descriptors as one message can carry (the kernel's
// SCM_MAX_FD): descriptors that did not fit would be dropped by the kernel
// inside recvmsg, their last close on the receiving thread, which a sender
// can make as slow as it likes. The broker takes them all and closes them off
// its loop.
inline constexpr size_t kMaxFdsPerMessage = 253;

struct Received {
  size_t size = 0;         // bytes of the record copied into the buffer
  bool closed = false;     // the peer closed the connection
  bool truncated = false;  // the record was larger than the buffer
  bool fds_truncated = false;  // more fds came than the control buffer holds (all closed)
  bool would_block = false;
  std::vector<UniqueFd> fds;  // received fds, close-on-exec
};

// One recvmsg. With `nonblocking`, an empty socket yields would_block.
Result<Received> ReceiveRecord(int socket, std::span<std::byte> buffer, bool nonblocking);

// One sendmsg of the whole record, with `fd` attached if >= 0. Returns false
// (and sends nothing) if `nonblocking` and the socket buffer is full.
Result<bool> SendRecord(int socket, std::span<const std::byte> record, int fd, bool nonblocking);

// Creates a SOCK_SEQPACKET socket connected to `path`.
Result<UniqueFd> ConnectSeqpacket(const std::string& path);

}  // namespace gpubroker

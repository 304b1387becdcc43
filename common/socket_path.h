// Where the broker's socket is when nothing names it, and whom to trust on
// it. One rule for the broker and its clients, so that both find the same
// place:
//   - $GPUBROKER_SOCKET, when set;
//   - a broker run as root listens at /run/gpubroker/gpubroker.sock (the
//     system service); any other user's broker at
//     $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock (a per-user broker, as
//     `systemctl --user` runs it), in a directory only that user may enter;
//   - a client that is not root uses its user's broker when that socket
//     exists in private directories of the user's own, and the system one
//     otherwise.
#pragma once

#include <sys/types.h>

#include <string>

#include "gpubroker/status.hpp"

namespace gpubroker {

inline constexpr const char* kSystemSocketPath = "/run/gpubroker/gpubroker.sock";

// $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock for a user other than root whose
// $XDG_RUNTIME_DIR is an absolute path; empty otherwise.
std::string UserSocketPath();

// Where this process's broker listens when its config names no socket.
// Fails, saying what to set, for a user other than root without
// $XDG_RUNTIME_DIR.
Result<std::string> BrokerDefaultSocketPath();

// Where a client connects when given no path.
std::string ClientDefaultSocketPath();

// What a client says when no broker answers at `path`: where it looked and
// what to do about it.
std::string NoBrokerAdvice(const std::string& path);

// Why connect(2) to `path` said EACCES: the socket's mode and group (and how
// to join it), or a directory on the path.
std::string SocketAccessAdvice(const std::string& path);

// A directory fit to hold a socket others will trust: a directory (after
// symlinks) owned by `owner` or root, that nobody else may write to unless
// it is sticky (/tmp). `private_to_owner` also refuses any access by others.
Status CheckSocketDirectory(const std::string& dir, uid_t owner, bool private_to_owner);

// After connecting to `path`: whether the process answering may be trusted
// as the broker there. On the user's own socket it must run as the user; on
// any other it must run as root, as this user, or as the owner of the
// socket's directory (the system service's user owns /run/gpubroker). So a
// broker someone else started in a directory they could write is refused.
Status VerifyBrokerPeer(int fd, const std::string& path);

}  // namespace gpubroker

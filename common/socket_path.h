// Where the broker's socket is when nothing names it. One rule for the broker
// and its clients, so that both find the same place:
//   - $GPUBROKER_SOCKET, when set;
//   - a broker run as root listens at /run/gpubroker/gpubroker.sock (the
//     system service); any other user's broker at
//     $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock (a per-user broker, as
//     `systemctl --user` runs it);
//   - a client that is not root uses its user's broker when that socket
//     exists, and the system one otherwise.
#pragma once

#include <string>
#include <vector>

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

}  // namespace gpubroker

#include "common/posix.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gpubroker {

Status PosixError(std::string_view context, int err) {
  Code code = Code::kIo;
  switch (err) {
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case ENOSPC: code = Code::kResourceExhausted; break;
    case EACCES:
    case EPERM: code = Code::kPermissionDenied; break;
    case ENOENT: code = Code::kNotFound; break;
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE: code = Code::kUnavailable; break;
    default: break;
  }
  std::string message = std::string(context) + ": " + std::strerror(err);
  if (err == EMFILE) message += " (the process's open-file limit, RLIMIT_NOFILE, is reached)";
  return Status(code, std::move(message));
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace gpubroker

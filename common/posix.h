// The edge between POSIX and gpubroker: errno conversion and an owned fd.
#pragma once

#include <string_view>
#include <utility>

#include "gpubroker/status.hpp"

namespace gpubroker {

// Status for a failed system call: "context: strerror(err)". ENOMEM and
// EMFILE/ENFILE map to kResourceExhausted, EACCES/EPERM to kPermissionDenied.
Status PosixError(std::string_view context, int err);

// Move-only owner of a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace gpubroker

#include "broker/host_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "common/wire.h"

namespace gpubroker {
namespace {

class HostMemory final : public BackendMemory {
 public:
  HostMemory(UniqueFd fd, uint64_t size) : fd_(std::move(fd)), size_(size) {}
  uint64_t size() const override { return size_; }
  Device device() const override { return Device{}; }

  Result<SharedHandle> Share(uint32_t access) override {
    if (access & wire::kAccessWrite) {
      UniqueFd copy(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
      if (!copy.valid()) return PosixError("dup memfd", errno);
      return SharedHandle{std::move(copy), std::nullopt};
    }
    // A fresh read-only open file description: the kernel refuses writable
    // mappings through it, whatever the client does.
    std::string path = "/proc/self/fd/" + std::to_string(fd_.get());
    UniqueFd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ro.valid()) return PosixError("reopen memfd read-only", errno);
    return SharedHandle{std::move(ro), std::nullopt};
  }

 private:
  UniqueFd fd_;
  uint64_t size_;
};

}  // namespace

Result<std::unique_ptr<BackendMemory>> HostBackend::Allocate(const AllocationRequest& request) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t bytes = request.bytes == 0 ? page : request.bytes;
  if (bytes > UINT64_MAX - page) return InvalidArgument("allocation size overflows");
  bytes = (bytes + page - 1) / page * page;
  std::string label = "gpubroker:" + request.label;
  UniqueFd fd(::memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return PosixError("memfd_create", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return PosixError("ftruncate memfd to " + std::to_string(bytes) + " bytes", errno);
  }
  int rc;
  do {
    rc = ::fallocate(fd.get(), 0, 0, static_cast<off_t>(bytes));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    if (err == ENOSPC || err == ENOMEM) {
      return ResourceExhausted("out of host memory allocating " + std::to_string(bytes) + " bytes");
    }
    return PosixError("fallocate memfd", err);
  }
  // The inode's mode is what a reopen through /proc/<pid>/fd/N is checked
  // against: 0600 and the broker's uid, so a client holding a read-only fd
  // cannot reopen it for writing (memfds are born 0777).
  if (::fchmod(fd.get(), 0600) != 0) return PosixError("fchmod memfd", errno);
  // No client may resize the buffer under the others (a shrink would SIGBUS them).
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return PosixError("seal memfd", errno);
  }
  return std::unique_ptr<BackendMemory>(new HostMemory(std::move(fd), bytes));
}

Result<std::unique_ptr<BackendMemory>> HostBackend::Adopt(UniqueFd fd, uint64_t bytes, const Device&) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat adopted memfd", errno);
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < bytes) {
    return InvalidArgument("adopted memfd holds " + std::to_string(st.st_size) + " bytes, the registry says " +
                           std::to_string(bytes));
  }
  if ((st.st_mode & 0077) != 0 && ::fchmod(fd.get(), 0600) != 0) return PosixError("fchmod memfd", errno);
  return std::unique_ptr<BackendMemory>(new HostMemory(std::move(fd), static_cast<uint64_t>(st.st_size)));
}

}  // namespace gpubroker

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <string>

#include "client/src/mapping.h"

namespace gpubroker {
namespace {

class HostMapping final : public ClientMapping {
 public:
  HostMapping(void* base, size_t length) {
    base_ = base;
    size_ = length;
  }
  ~HostMapping() override { ::munmap(base_, size_); }
};

}  // namespace

Result<std::unique_ptr<ClientMapping>> MapHost(const SlotDescriptor& slot, UniqueFd fd, bool writable) {
  if (!fd.valid()) return ProtocolError("attach reply carried no file descriptor");
  // Map what the memfd really holds, not what a message claims: a mapping
  // past the end of the file would SIGBUS on first touch.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat slot '" + std::string(slot.name) + "'", errno);
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < slot.allocation_bytes ||
      slot.allocation_bytes == 0) {
    return ProtocolError("slot '" + std::string(slot.name) + "': its memory holds " +
                         std::to_string(st.st_size) + " bytes, the broker said " +
                         std::to_string(slot.allocation_bytes));
  }
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = ::mmap(nullptr, slot.allocation_bytes, prot, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return PosixError("mmap slot '" + std::string(slot.name) + "'", errno);
  return std::unique_ptr<ClientMapping>(new HostMapping(p, slot.allocation_bytes));
}

}  // namespace gpubroker

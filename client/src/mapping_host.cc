#include <sys/mman.h>

#include <cerrno>
#include <string>

#include "mapping.h"

namespace gpubroker {
namespace {

class HostMapping final : public ClientMapping {
 public:
  HostMapping(void* base, size_t length) : length_(length) { base_ = base; }
  ~HostMapping() override { ::munmap(base_, length_); }

 private:
  size_t length_;
};

}  // namespace

Result<std::unique_ptr<ClientMapping>> MapHost(const SlotDescriptor& slot, UniqueFd fd, bool writable) {
  if (!fd.valid()) return ProtocolError("attach reply carried no file descriptor");
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = ::mmap(nullptr, slot.allocation_bytes, prot, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return PosixError("mmap slot '" + std::string(slot.name) + "'", errno);
  return std::unique_ptr<ClientMapping>(new HostMapping(p, slot.allocation_bytes));
}

}  // namespace gpubroker

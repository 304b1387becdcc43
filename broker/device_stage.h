// Trees in CUDA memory across nodes (docs/multinode.md): the peers move
// them through pinned host blocks, copied by a thread of their own, so the
// loop never waits for a copy engine. A tree in cuda_vmm memory is mapped
// here from the fd an attach hands out, as a client maps it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "broker/asio.h"
#include "common/posix.h"
#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

namespace gpubroker {

// An allocation mapped into this process; every copy queued on it holds it.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual uint64_t address() const = 0;
  virtual int ordinal() const = 0;
  virtual uint64_t bytes() const = 0;
};

class DeviceStage {
 public:
  static constexpr size_t kBlockBytes = size_t{1} << 20;
  static constexpr size_t kMaxBlocks = 32;  // pinned host memory: 32 MiB at most
  using Done = std::function<void(const Status&)>;

  // kUnsupported where this build or this host has no CUDA. The copies'
  // `done` and `freed` run on `io`.
  static Result<std::unique_ptr<DeviceStage>> Create(boost::asio::io_context& io);
  virtual ~DeviceStage() = default;

  // Maps the cuda_vmm allocation `fd` names (`bytes` long, on the device of
  // `uuid`), for reading, or for writing too.
  virtual Result<std::shared_ptr<const DeviceMemory>> Map(UniqueFd fd, uint64_t bytes, const DeviceUuid& uuid,
                                                          bool writable) = 0;
  // A pinned host block of kBlockBytes, or null while kMaxBlocks are in
  // use; `freed` runs (on the loop) whenever one comes back after a null.
  virtual std::shared_ptr<uint8_t> Block() = 0;
  std::function<void()> freed;
  // Why Block() returns null while no block is in use (pinned memory could
  // not be had: none will come back); ok otherwise.
  virtual Status BlockError() = 0;
  // Waits until every copy queued so far has ended (their `done` may still
  // be queued on the loop).
  virtual void Drain() = 0;
  // Copies `n` bytes at `offset` of `memory` to `block` or from it; `done`
  // runs on the loop once the copy ended, in the order the copies were
  // queued. The block and the memory are held until then.
  virtual void ToHost(std::shared_ptr<const DeviceMemory> memory, uint64_t offset, std::shared_ptr<uint8_t> block,
                      size_t n, Done done) = 0;
  virtual void ToDevice(std::shared_ptr<const DeviceMemory> memory, uint64_t offset, std::shared_ptr<uint8_t> block,
                        size_t n, Done done) = 0;
  // The same from memory that is not the stage's (not pinned), on the
  // caller's thread, returning once the bytes are on the device: for when
  // every block is in use.
  virtual Status ToDeviceNow(const DeviceMemory& memory, uint64_t offset, const void* from, size_t n) = 0;
};

}  // namespace gpubroker

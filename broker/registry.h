// The broker's side of the shared registry: the only writer.
//
// The segment is a memfd, sealed so that no new writable mapping of it can be
// made (F_SEAL_FUTURE_WRITE) and handed to each client over the socket at
// hello: there is no name in /dev/shm to squat, and a client in a container
// without the host's /dev/shm reads it all the same. The broker keeps a
// private copy of every descriptor and of the name index and only ever writes
// the segment, never reads it back: shared memory is output. Each change goes
// through the slot's seqlock, so readers see whole descriptors only. Not
// thread-safe: the broker's event loop is its one user.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/futex_waker.h"
#include "common/posix.h"
#include "common/registry_layout.h"
#include "gpubroker/status.hpp"

namespace gpubroker {

struct RegistryOptions {
  std::string name;  // labels the memfd (/proc/<pid>/fd shows memfd:gpubroker-registry:<name>)
  uint32_t capacity = 4096;
  uint64_t boot_generation = 0;
};

class Registry {
 public:
  // Creates and seals the segment.
  static Result<std::unique_ptr<Registry>> Create(const RegistryOptions& options);

  // Marks the segment stopping for readers that still map it, and unmaps it.
  ~Registry();
  // A new read-only descriptor of the segment, for a client or the fd store.
  Result<UniqueFd> Share() const;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Publishes a new live slot; kAlreadyExists / kResourceExhausted.
  Result<uint32_t> Insert(const SlotDescriptor& d);
  // Rewrites a live slot in place (same name).
  void Update(uint32_t index, const SlotDescriptor& d);
  // Removes a live slot: the name is gone for every reader at once.
  void Remove(uint32_t index);

  std::optional<uint32_t> Find(std::string_view name) const;
  const SlotDescriptor& Get(uint32_t index) const { return slots_[index]; }
  // Live slots in table order from `cursor`; returns the next cursor or nullopt.
  std::optional<uint32_t> Scan(uint32_t cursor, uint32_t max,
                               const std::function<void(const SlotDescriptor&)>& fn) const;

  // The live table: one record per allocation (its versions, docs/live.md).
  // kResourceExhausted when every record is taken.
  Result<uint32_t> AddLive(const LiveState& s);
  const LiveState& GetLive(uint32_t index) const { return live_[index]; }
  // Rewrites a record; `committed` wakes the readers waiting for a version,
  // `released` the writers waiting for a buffer.
  void UpdateLive(uint32_t index, const LiveState& s, bool committed, bool released);
  // Frees a record, waking everyone waiting on it.
  void RemoveLive(uint32_t index);

  // Stopping wakes every waiter, so none sleeps on a broker that is gone.
  void SetState(uint32_t state);
  uint32_t capacity() const { return geometry_.capacity; }
  uint32_t live() const { return static_cast<uint32_t>(by_name_.size()); }
  const std::string& name() const { return name_; }
  uint64_t boot_generation() const { return header_->boot_generation; }

 private:
  Registry() = default;
  Status Map(const RegistryOptions& options);
  SlotRecord& record(uint32_t index);
  std::atomic<uint32_t>* buckets();
  void SetBucket(uint32_t pos, uint32_t value);
  void IndexInsert(std::string_view name, uint32_t index);
  void IndexErase(std::string_view name, uint32_t index);
  void RebuildIndex();
  void Publish(uint32_t index);
  LiveRecord& live_record(uint32_t index);
  void WakeAllLive();

  UniqueFd read_only_;  // the segment opened O_RDONLY: what clients get copies of
  void* base_ = nullptr;
  std::string name_;
  RegistryHeader* header_ = nullptr;
  RegistryGeometry geometry_{};
  std::vector<SlotDescriptor> slots_;  // private copy, the source of truth
  std::vector<uint32_t> buckets_;      // private copy of the index
  std::vector<uint32_t> free_;         // free table entries, used LIFO
  std::unordered_map<std::string, uint32_t> by_name_;
  std::vector<LiveState> live_;       // private copy of the live table
  std::vector<uint32_t> live_free_;   // free live records, used LIFO
  uint32_t tombstones_ = 0;
  FutexWaker waker_;  // for the live records' words; stopped before the segment is unmapped
};

}  // namespace gpubroker

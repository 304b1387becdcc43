// This process's view of the broker's memory: the registry it received at
// hello, and every allocation it has mapped, shared by all the Views into it.
// It knows nothing of the socket: giving a lease back is the Channel's job,
// reached through the weak pointer each mapping keeps.
//
// Thread-safe. Its lock is taken after the Channel's (the Channel calls in
// through its hooks) and never held while calling out.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/src/channel.h"
#include "client/src/mapping.h"
#include "common/registry_reader.h"
#include "common/thread_annotations.h"

namespace gpubroker {

// An allocation mapped into this process; every View into it shares one.
// When the last View goes it unmaps, then gives its lease back.
struct MappedAllocation {
  uint64_t allocation_id = 0;
  std::string slot;  // the name it was attached through, to re-take the lease by
  // False once a restarted broker no longer knows it. Shared with the cache's
  // entry, which reads and clears it without ever owning the mapping.
  std::shared_ptr<std::atomic<bool>> leased = std::make_shared<std::atomic<bool>>(true);
  void* base = nullptr;
  size_t size = 0;  // bytes mapped at base
  bool writable = false;
  Device device;  // in this process's numbering
  std::unique_ptr<ClientMapping> mapping;
  std::weak_ptr<Channel> channel;
  ~MappedAllocation();
};

class MappingCache {
 public:
  // A hello was answered: maps the registry that came with it (invalid: none
  // did), checked to be that broker start's.
  void Greeted(const wire::HelloReply& hello, UniqueFd registry) GPB_EXCLUDES(mu_);
  Result<std::shared_ptr<const RegistryReader>> registry() const GPB_EXCLUDES(mu_);

  // This process's mapping of an allocation, if it has one.
  std::shared_ptr<MappedAllocation> Find(uint64_t allocation_id) GPB_EXCLUDES(mu_);

  struct Mapped {
    std::shared_ptr<MappedAllocation> mapping;
    bool joined = false;  // an existing mapping: the caller holds one lease too many
  };
  // Maps the memory an attach reply hands over, or joins this process's
  // existing mapping of it (unless the reply grants write and that one is
  // read-only: then maps again, writable, and later attaches find the new one).
  Result<Mapped> Map(const wire::AttachReply& reply, UniqueFd fd, std::weak_ptr<Channel> channel)
      GPB_EXCLUDES(mu_);

  // The leases to take again after a reconnect, as plain data. Neither this
  // nor Lost() ever holds a mapping: called under the Channel's lock, they
  // must not be where a mapping's last owner lets go (its destructor sends a
  // detach, which takes that lock).
  std::vector<LeaseClaim> Leases() GPB_EXCLUDES(mu_);
  // A lease that could not be taken again: its mapping stays valid, but its
  // end no longer sends a detach.
  void Lost(uint64_t allocation_id) GPB_EXCLUDES(mu_);

 private:
  struct Entry {
    std::weak_ptr<MappedAllocation> mapping;
    LeaseClaim claim;
    std::shared_ptr<std::atomic<bool>> leased;
  };
  mutable Mutex mu_;
  // By allocation id: usually one mapping each; two while views of a
  // read-only mapping outlive a writable one made after it.
  std::multimap<uint64_t, Entry> mappings_ GPB_GUARDED_BY(mu_);
  // References let go only after mu_ is released (a mapping's end detaches).
  using Dropped = std::vector<std::shared_ptr<MappedAllocation>>;
  // The live mapping to join for an allocation, writable ones first; the
  // others it looked at go into `dropped`; entries of dead mappings are erased.
  std::shared_ptr<MappedAllocation> BestLocked(uint64_t allocation_id, Dropped& dropped) GPB_REQUIRES(mu_);
  void SweepLocked() GPB_REQUIRES(mu_);
  size_t sweep_at_ GPB_GUARDED_BY(mu_) = 64;
  std::shared_ptr<const RegistryReader> registry_ GPB_GUARDED_BY(mu_);
  Status registry_error_ GPB_GUARDED_BY(mu_) = Unavailable("not connected");
};

}  // namespace gpubroker

// Who holds what: allocations, connected clients and their leases.
//
// A lease ties one client connection to one allocation; a client holds at most
// one lease entry per allocation, counting its attaches. An allocation lives
// while any slot views it or any lease holds it.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "broker/backend.h"
#include "broker/versions.h"
#include "gpubroker/types.hpp"

namespace gpubroker {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
  // The peer's uid has no number in the broker's user namespace: the kernel
  // reports the overflow uid, which names nobody in particular.
  bool unmapped = false;
};

// Read and write, as in a file's mode bits (the owner / group / other triplet
// is picked by ModeAllows()).
enum PermissionBit : uint32_t { kMayWrite = 2, kMayRead = 4 };

// An owner and mode bits, read as a file's are: a slot has them, and so does
// the allocation it views (those of the slot that created it).
struct Permissions {
  uid_t uid = 0;
  gid_t gid = 0;
  uint32_t mode = 0;
};

// Whether `peer` has `bit` under `perms`, by the owner / group / other rule.
// Says nothing of admin rights: the caller decides those.
bool ModeAllows(const PeerCredentials& peer, const Permissions& perms, PermissionBit bit);

// What one uid's slots hold, whichever connection made them.
struct UidUsage {
  uint64_t bytes = 0;         // host and device, until the memory is freed
  // The fair share's count: bytes of this uid's allocations that a slot
  // still names (RequestHandler::CheckCaps).
  uint64_t host_bytes = 0;
  uint64_t device_bytes = 0;  // every device together
  uint32_t slots = 0;
  uint32_t connections = 0;
  // Allocations no slot names any more that this uid's leases keep alive
  // (its own or anyone's): counted with its slots, so that holding on to
  // destroyed memory cannot fill the broker's tables.
  uint32_t orphans = 0;
};

struct Lease {
  uint32_t count = 0;
  std::string slot;  // the name it was first attached through
  bool writable = false;  // some attach of it was granted write access
};

struct ClientEntry {
  uint64_t id = 0;
  PeerCredentials peer;
  std::string name;
  bool greeted = false;  // hello received
  uint64_t connected_ns = 0;
  uint64_t bytes_created = 0;  // live allocations this client created
  std::map<uint64_t, Lease> leases;  // by allocation id
  uint64_t rejected_logged_ns = 0;  // malformed messages: when one was last logged
  uint32_t rejected_unlogged = 0;   // and how many since
};

// No live record yet (Allocation::live_index).
inline constexpr uint32_t kNoLiveRecord = 0xffffffffu;

struct Allocation {
  uint64_t id = 0;
  BackendKind backend = BackendKind::kHost;
  std::unique_ptr<BackendMemory> memory;
  uint64_t bytes = 0;      // as requested; memory->size() may be larger
  uint64_t creator = 0;    // client id; 0 for the broker's own pools
  Permissions perms;       // the creating slot's; views can only narrow them
  std::set<uint32_t> slots;  // registry entries viewing it
  uint32_t leases = 0;       // sum of lease counts over clients
  // Versions: `nbuffers` buffers of `buffer_bytes` each; the committed state
  // is the registry's live record `live_index`.
  uint32_t nbuffers = 1;
  uint64_t buffer_bytes = 0;
  uint32_t live_index = kNoLiveRecord;
  // Who writes which buffer, who pins which version: the state its live
  // record mirrors (RequestHandler::Publish).
  Versions versions;
  std::map<uid_t, uint32_t> holders;  // connections of each uid holding a lease on it
};

class LeaseTable {
 public:
  ClientEntry& AddClient(uint64_t id, PeerCredentials peer, uint64_t now_ns);
  ClientEntry* FindClient(uint64_t id);
  const std::map<uint64_t, ClientEntry>& clients() const { return clients_; }
  // Drops the client and every lease it held; returns the allocations touched.
  std::vector<uint64_t> RemoveClient(uint64_t id);

  Allocation& AddAllocation(Allocation a);
  Allocation* FindAllocation(uint64_t id);
  const std::map<uint64_t, Allocation>& allocations() const { return allocations_; }
  uint64_t NextAllocationId() { return ++last_allocation_id_; }
  // After adopting allocations of an earlier broker: new ids come after theirs.
  void ReserveAllocationIds(uint64_t last) { last_allocation_id_ = std::max(last_allocation_id_, last); }

  void TakeLease(ClientEntry& client, Allocation& a, const std::string& slot, bool writable = false);
  // Returns the client's remaining count, or -1 if it held no lease on it.
  int64_t DropLease(ClientEntry& client, uint64_t allocation_id);
  // Registry entry `index` views `a` now / no longer. An allocation no slot
  // views is an orphan of every uid holding a lease on it.
  void AddSlot(Allocation& a, uint32_t index);
  void RemoveSlot(Allocation& a, uint32_t index);

  // Frees the allocation if no slot and no lease keeps it; true if freed.
  bool FreeIfUnused(uint64_t allocation_id);

  // Kept as the table changes: a status request costs the same at any size.
  uint64_t total_leases() const { return total_leases_; }
  uint64_t BytesOn(Device::Type type) const;

  // Per-uid accounting: bytes follow an allocation's owner until it is freed;
  // slots and connections are counted by their callers.
  const UidUsage& Usage(uid_t uid) const;
  const std::map<uid_t, UidUsage>& usage() const { return usage_; }
  void CountSlot(uid_t uid, int delta) { usage_[uid].slots += delta; }
  void CountConnection(uid_t uid, int delta) { usage_[uid].connections += delta; }

 private:
  void CountNamedBytes(const Allocation& a, int sign);
  std::map<uint64_t, ClientEntry> clients_;
  std::map<uint64_t, Allocation> allocations_;
  uint64_t last_allocation_id_ = 0;
  uint64_t total_leases_ = 0;
  // One connection of `uid` holds no lease on `a` any more.
  void ReleaseHolder(Allocation& a, uid_t uid);

  std::map<Device::Type, uint64_t> bytes_;  // memory->size() of live allocations, by device type
  std::map<uid_t, UidUsage> usage_;
};

}  // namespace gpubroker

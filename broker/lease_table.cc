#include "broker/lease_table.h"

namespace gpubroker {

bool ModeAllows(const PeerCredentials& peer, const Permissions& perms, PermissionBit bit) {
  if (peer.uid == perms.uid) return (perms.mode >> 6) & bit;
  bool in_group = peer.gid == perms.gid ||
                  std::find(peer.groups.begin(), peer.groups.end(), perms.gid) != peer.groups.end();
  if (in_group) return (perms.mode >> 3) & bit;
  return perms.mode & bit;
}

const UidUsage& LeaseTable::Usage(uid_t uid) const {
  static const UidUsage kNone;
  auto it = usage_.find(uid);
  return it == usage_.end() ? kNone : it->second;
}

ClientEntry& LeaseTable::AddClient(uint64_t id, PeerCredentials peer, uint64_t now_ns) {
  ClientEntry& c = clients_[id];
  c.id = id;
  c.peer = std::move(peer);
  c.connected_ns = now_ns;
  return c;
}

ClientEntry* LeaseTable::FindClient(uint64_t id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : &it->second;
}

std::vector<uint64_t> LeaseTable::RemoveClient(uint64_t id) {
  std::vector<uint64_t> touched;
  auto it = clients_.find(id);
  if (it == clients_.end()) return touched;
  for (const auto& [allocation_id, lease] : it->second.leases) {
    if (Allocation* a = FindAllocation(allocation_id)) {
      a->leases -= lease.count;
      total_leases_ -= lease.count;
      ReleaseHolder(*a, it->second.peer.uid);
      touched.push_back(allocation_id);
    }
  }
  clients_.erase(it);
  return touched;
}

Allocation& LeaseTable::AddAllocation(Allocation a) {
  uint64_t id = a.id;
  total_leases_ += a.leases;
  bytes_[a.memory->device().type] += a.memory->size();
  usage_[a.perms.uid].bytes += a.memory->size();
  return allocations_.emplace(id, std::move(a)).first->second;
}

Allocation* LeaseTable::FindAllocation(uint64_t id) {
  auto it = allocations_.find(id);
  return it == allocations_.end() ? nullptr : &it->second;
}

void LeaseTable::TakeLease(ClientEntry& client, Allocation& a, const std::string& slot, bool writable) {
  Lease& lease = client.leases[a.id];
  if (lease.count == 0) {
    lease.slot = slot;
    if (++a.holders[client.peer.uid] == 1 && a.slots.empty()) ++usage_[client.peer.uid].orphans;
  }
  lease.writable = lease.writable || writable;
  ++lease.count;
  ++a.leases;
  ++total_leases_;
}

int64_t LeaseTable::DropLease(ClientEntry& client, uint64_t allocation_id) {
  auto it = client.leases.find(allocation_id);
  if (it == client.leases.end()) return -1;
  uint32_t left = --it->second.count;
  if (left == 0) client.leases.erase(it);
  if (Allocation* a = FindAllocation(allocation_id)) {
    --a->leases;
    --total_leases_;
    if (left == 0) ReleaseHolder(*a, client.peer.uid);
  }
  return left;
}

// The fair share counts what a uid's slots name: once none does, the memory
// is no longer the creator's to answer for (readers' leases may keep it, and
// count against their own slot quotas as orphans), so nobody can hold
// another user's share down by keeping views of its destroyed slots.
void LeaseTable::CountNamedBytes(const Allocation& a, int sign) {
  UidUsage& usage = usage_[a.perms.uid];
  uint64_t& share = a.memory->device().type == Device::kCpu ? usage.host_bytes : usage.device_bytes;
  share = sign > 0 ? share + a.memory->size() : share - a.memory->size();
}

void LeaseTable::AddSlot(Allocation& a, uint32_t index) {
  if (a.slots.empty()) {
    for (const auto& [uid, connections] : a.holders) --usage_[uid].orphans;
    CountNamedBytes(a, +1);
  }
  a.slots.insert(index);
}

void LeaseTable::RemoveSlot(Allocation& a, uint32_t index) {
  if (a.slots.erase(index) == 0 || !a.slots.empty()) return;
  for (const auto& [uid, connections] : a.holders) ++usage_[uid].orphans;
  CountNamedBytes(a, -1);
}

void LeaseTable::ReleaseHolder(Allocation& a, uid_t uid) {
  auto h = a.holders.find(uid);
  if (h == a.holders.end() || --h->second != 0) return;
  a.holders.erase(h);
  if (a.slots.empty()) --usage_[uid].orphans;
}

bool LeaseTable::FreeIfUnused(uint64_t allocation_id) {
  auto it = allocations_.find(allocation_id);
  if (it == allocations_.end() || !it->second.slots.empty() || it->second.leases != 0) return false;
  if (ClientEntry* creator = FindClient(it->second.creator)) {
    creator->bytes_created -= it->second.bytes;
  }
  bytes_[it->second.memory->device().type] -= it->second.memory->size();
  usage_[it->second.perms.uid].bytes -= it->second.memory->size();
  allocations_.erase(it);  // releases the backend memory
  return true;
}

uint64_t LeaseTable::BytesOn(Device::Type type) const {
  auto it = bytes_.find(type);
  return it == bytes_.end() ? 0 : it->second;
}

}  // namespace gpubroker

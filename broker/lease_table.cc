#include "lease_table.h"

namespace gpubroker {

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
      touched.push_back(allocation_id);
    }
  }
  clients_.erase(it);
  return touched;
}

Allocation& LeaseTable::AddAllocation(Allocation a) {
  uint64_t id = a.id;
  return allocations_.emplace(id, std::move(a)).first->second;
}

Allocation* LeaseTable::FindAllocation(uint64_t id) {
  auto it = allocations_.find(id);
  return it == allocations_.end() ? nullptr : &it->second;
}

void LeaseTable::TakeLease(ClientEntry& client, Allocation& a, const std::string& slot) {
  Lease& lease = client.leases[a.id];
  if (lease.count == 0) lease.slot = slot;
  ++lease.count;
  ++a.leases;
}

int64_t LeaseTable::DropLease(ClientEntry& client, uint64_t allocation_id) {
  auto it = client.leases.find(allocation_id);
  if (it == client.leases.end()) return -1;
  uint32_t left = --it->second.count;
  if (left == 0) client.leases.erase(it);
  if (Allocation* a = FindAllocation(allocation_id)) --a->leases;
  return left;
}

bool LeaseTable::FreeIfUnused(uint64_t allocation_id) {
  auto it = allocations_.find(allocation_id);
  if (it == allocations_.end() || !it->second.slots.empty() || it->second.leases != 0) return false;
  if (ClientEntry* creator = FindClient(it->second.creator)) {
    creator->bytes_created -= it->second.bytes;
  }
  allocations_.erase(it);  // releases the backend memory
  return true;
}

uint64_t LeaseTable::total_leases() const {
  uint64_t n = 0;
  for (const auto& [id, a] : allocations_) n += a.leases;
  return n;
}

uint64_t LeaseTable::BytesOn(Device::Type type) const {
  uint64_t n = 0;
  for (const auto& [id, a] : allocations_) {
    if (a.memory->device().type == type) n += a.memory->size();
  }
  return n;
}

}  // namespace gpubroker

#include "client/src/mapping_cache.h"

namespace gpubroker {

MappedAllocation::~MappedAllocation() {
  mapping.reset();  // unmap before the lease goes
  if (!*leased) return;
  if (auto c = channel.lock()) c->Detach(allocation_id);
}

void MappingCache::Greeted(const wire::HelloReply& hello, UniqueFd registry) {
  Result<RegistryReader> reader = registry.valid()
                                      ? RegistryReader::FromFd(std::move(registry))
                                      : Result<RegistryReader>(ProtocolError("the broker sent no registry"));
  if (reader.ok() && reader->boot_generation() != hello.boot_generation) {
    reader = Unavailable("the registry belongs to another broker start");
  }
  MutexLock lock(mu_);
  if (reader.ok()) {
    registry_ = std::make_shared<const RegistryReader>(std::move(reader).value());
  } else {
    registry_.reset();
    registry_error_ = reader.status();
  }
}

Result<std::shared_ptr<const RegistryReader>> MappingCache::registry() const {
  MutexLock lock(mu_);
  if (!registry_) return registry_error_;
  return registry_;
}

std::shared_ptr<MappedAllocation> MappingCache::Find(uint64_t allocation_id) {
  Dropped dropped;  // destroyed after the lock is released
  MutexLock lock(mu_);
  return BestLocked(allocation_id, dropped);
}

std::shared_ptr<MappedAllocation> MappingCache::BestLocked(uint64_t allocation_id, Dropped& dropped) {
  std::shared_ptr<MappedAllocation> best;
  auto [it, last] = mappings_.equal_range(allocation_id);
  while (it != last) {
    auto m = it->second.mapping.lock();
    if (!m) {
      it = mappings_.erase(it);
      continue;
    }
    if (!best || (m->writable && !best->writable)) std::swap(best, m);
    // Another thread may drop its last View of `m` while we hold it: then
    // ours is the last reference, and its end (a detach, through the
    // Channel's lock) must not run under this lock.
    if (m) dropped.push_back(std::move(m));
    ++it;
  }
  return best;
}

void MappingCache::SweepLocked() {
  for (auto it = mappings_.begin(); it != mappings_.end();) {
    it = it->second.mapping.expired() ? mappings_.erase(it) : std::next(it);
  }
  sweep_at_ = 2 * mappings_.size() + 64;
}

Result<MappingCache::Mapped> MappingCache::Map(const wire::AttachReply& reply, UniqueFd fd,
                                               std::weak_ptr<Channel> channel) {
  const SlotDescriptor& slot = reply.slot;
  const bool writable = (reply.access & wire::kAccessWrite) != 0;
  auto joinable = [&](const std::shared_ptr<MappedAllocation>& m) { return m && (m->writable || !writable); };
  if (auto existing = Find(slot.allocation_id); joinable(existing)) return Mapped{std::move(existing), true};
  // Mapping can take a while (a CUDA import): not under the lock.
  auto mapped = slot.backend == static_cast<uint16_t>(BackendKind::kHost)
                    ? MapHost(slot, std::move(fd), writable)
                    : MapCuda(slot, std::move(fd), writable);
  if (!mapped.ok()) return mapped.status().Annotate("mapping slot '" + std::string(slot.name) + "'");
  auto m = std::make_shared<MappedAllocation>();
  m->allocation_id = slot.allocation_id;
  m->slot = slot.name;
  m->writable = writable;
  m->base = (*mapped)->base();
  m->size = (*mapped)->size();
  m->device = (*mapped)->device();
  m->mapping = std::move(mapped).value();
  m->channel = std::move(channel);
  Dropped dropped;  // destroyed after the lock is released
  MutexLock lock(mu_);
  // Another thread mapped the same allocation meanwhile: use its mapping, and
  // let ours go (the caller gives back the extra lease).
  auto raced = BestLocked(slot.allocation_id, dropped);
  if (joinable(raced)) {
    *m->leased = false;
    return Mapped{std::move(raced), true};
  }
  dropped.push_back(std::move(raced));
  // Entries of allocations no View holds any more go now and then, so the
  // cache stays the size of what the process maps.
  if (mappings_.size() >= sweep_at_) SweepLocked();
  mappings_.emplace(slot.allocation_id, Entry{m, LeaseClaim{m->allocation_id, m->slot, m->writable}, m->leased});
  return Mapped{std::move(m), false};
}

std::vector<LeaseClaim> MappingCache::Leases() {
  MutexLock lock(mu_);
  std::vector<LeaseClaim> out;
  for (auto it = mappings_.begin(); it != mappings_.end();) {
    if (it->second.mapping.expired()) {
      it = mappings_.erase(it);
      continue;
    }
    // Should the last View go right after this look, its destructor (on its
    // own thread) gives back the lease this claim re-takes: still correct.
    if (*it->second.leased) out.push_back(it->second.claim);
    ++it;
  }
  return out;
}

void MappingCache::Lost(uint64_t allocation_id) {
  MutexLock lock(mu_);
  auto [first, last] = mappings_.equal_range(allocation_id);
  for (auto it = first; it != last; ++it) *it->second.leased = false;
}

}  // namespace gpubroker

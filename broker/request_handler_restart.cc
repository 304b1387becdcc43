// Pools that follow the configuration, and the take-over of an earlier
// broker's slots on a warm restart.
#include <unistd.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "broker/request_handler.h"

namespace gpubroker {

Status RequestHandler::SyncPools(const std::vector<PoolConfig>& pools) {
  Status first = Status::Ok();
  auto note = [&](const Status& s) {
    if (!s.ok()) {
      spdlog::error("{}", s.message());
      if (first.ok()) first = s;
    }
  };
  std::map<std::string, const PoolConfig*> wanted;
  for (const PoolConfig& p : pools) wanted[p.name] = &p;
  for (auto it = pools_.begin(); it != pools_.end();) {
    auto w = wanted.find(it->first);
    if (w != wanted.end() && *w->second == it->second) {
      ++it;
      continue;
    }
    if (auto index = registry_.Find(it->first)) {
      DestroySlot(*index);
      spdlog::info("pool '{}' {}", it->first, w == wanted.end() ? "removed" : "changed: recreating");
    }
    it = pools_.erase(it);
  }
  for (const PoolConfig& p : pools) {
    if (pools_.count(p.name) == 0) note(CreatePool(p));
  }
  return first;
}

uint32_t PoolTag(const PoolConfig& pool) {
  // FNV-1a over every setting, each field closed by a separator.
  std::string text = pool.name + '\n' + std::to_string(pool.backend ? static_cast<int>(*pool.backend) : -1) + '\n' +
                     std::to_string(pool.device_ordinal) + '\n' + std::to_string(pool.dtype.code) + ':' +
                     std::to_string(pool.dtype.bits) + ':' + std::to_string(pool.dtype.lanes) + '\n' +
                     std::to_string(pool.bytes) + '\n' + std::to_string(pool.mode) + '\n' + pool.group + '\n';
  if (pool.device_uuid) text.append(reinterpret_cast<const char*>(pool.device_uuid->data()), pool.device_uuid->size());
  text += '\n';
  for (int64_t n : pool.shape) text += std::to_string(n) + ',';
  uint32_t h = 2166136261u;
  for (unsigned char c : text) h = (h ^ c) * 16777619u;
  return h == 0 ? 1 : h;  // 0 means "not a pool"
}

void RequestHandler::AdoptPools(const std::vector<PoolConfig>& pools) {
  std::map<std::string, const PoolConfig*> wanted;
  for (const PoolConfig& p : pools) wanted[p.name] = &p;
  std::vector<SlotDescriptor> tagged;
  for (std::optional<uint32_t> cursor = 0; cursor;) {
    cursor = registry_.Scan(*cursor, 1024, [&](const SlotDescriptor& d) {
      if (d.pool_tag != 0) tagged.push_back(d);
    });
  }
  for (const SlotDescriptor& d : tagged) {
    auto w = wanted.find(d.name);
    if (w != wanted.end()) {
      // The tag hashes the settings as written; the group is compared by the
      // gid it names now, so a group recreated with another gid is a change.
      Owner owner{};
      auto spec = PoolSpec(*w->second, owner);
      if (spec.ok() && PoolTag(*w->second) == d.pool_tag && owner.gid == d.owner_gid) {
        pools_[w->first] = *w->second;
        spdlog::info("pool '{}' adopted unchanged", w->first);
        continue;
      }
      // Recreated below by SyncPools: only once the new settings are known to
      // make a slot spec, so a bad pool keeps the old buffer.
      if (!spec.ok()) {
        spdlog::error("pool '{}' changed since the last broker, but its new settings fail ({}): the old one stays",
                      d.name, spec.status().message());
        pools_[w->first] = *w->second;  // so SyncPools leaves it be
        continue;
      }
    }
    spdlog::info("pool '{}' {} since the last broker: {}", d.name, w != wanted.end() ? "changed" : "removed",
                 w != wanted.end() ? "recreating" : "destroying");
    if (auto index = registry_.Find(d.name)) DestroySlot(*index);
  }
  // A broker from before pools were tagged left them untagged: a slot of the
  // broker's own uid under a pool's name is taken as that pool, unchanged.
  for (const PoolConfig& p : pools) {
    auto index = registry_.Find(p.name);
    if (!index || pools_.count(p.name)) continue;
    SlotDescriptor d = registry_.Get(*index);
    if (d.pool_tag != 0 || d.owner_uid != ::geteuid()) continue;
    d.pool_tag = PoolTag(p);
    registry_.Update(*index, d);
    pools_[p.name] = p;
    spdlog::warn("pool '{}' adopted from a broker that did not tag its pools: its settings are taken as unchanged",
                 p.name);
  }
}

size_t RequestHandler::Adopt(const std::vector<SlotDescriptor>& previous,
                             const std::map<uint64_t, LiveState>& live, std::map<uint64_t, UniqueFd> fds) {
  size_t adopted = 0;
  uint64_t last_id = 0;
  for (const SlotDescriptor& old : previous) {
    const std::string name = old.name;
    auto kind = static_cast<BackendKind>(old.backend);
    Allocation* a = table_.FindAllocation(old.allocation_id);
    if (a == nullptr) {
      if (kind == BackendKind::kCudaIpc) {
        spdlog::warn("dropping slot '{}': legacy CUDA IPC memory cannot outlive the broker that "
                     "allocated it (use cuda_vmm for slots that must survive a restart)", name);
        continue;
      }
      auto fd = fds.find(old.allocation_id);
      if (fd == fds.end()) {
        spdlog::warn("dropping slot '{}': allocation {} was not in the fd store", name, old.allocation_id);
        continue;
      }
      auto backend = backends_.Get(kind);
      Device device;
      device.type = kind == BackendKind::kHost ? Device::kCpu : Device::kCuda;
      std::memcpy(device.uuid.data(), old.device_uuid, device.uuid.size());
      auto memory = backend.ok() ? (*backend)->Adopt(std::move(fd->second), old.allocation_bytes, device)
                                 : Result<std::unique_ptr<BackendMemory>>(backend.status());
      fds.erase(fd);
      if (!memory.ok()) {
        spdlog::warn("dropping slot '{}': cannot take over allocation {}: {}", name, old.allocation_id,
                     memory.status().message());
        continue;
      }
      Allocation fresh;
      fresh.id = old.allocation_id;
      fresh.backend = kind;
      fresh.memory = std::move(memory).value();
      fresh.bytes = old.allocation_bytes;
      fresh.perms = AllocationPermissions(old);
      fresh.nbuffers = old.nbuffers;
      fresh.buffer_bytes = old.buffer_bytes;
      // Committed versions carry over, and so do the pins on them: their
      // readers reconnect and take them over (kAcquireCarried), or the pins
      // go after kCarriedPinGrace. A write under way does not: its writer
      // reconnects to a broker that never saw it.
      LiveState state{};
      if (auto it = live.find(old.allocation_id); it != live.end() && it->second.nbuffers == old.nbuffers) {
        state = it->second;
      } else {  // a record of a broker from before live records: the descriptor's version
        state.version = old.version;
        state.buffer = old.version != 0 && old.nbuffers == 1 ? 0 : -1;
        state.writing = -1;
        if (state.buffer == 0) state.buffer_version[0] = old.version;
        if (state.buffer < 0) state.version = 0;
      }
      state.allocation_id = old.allocation_id;
      state.nbuffers = old.nbuffers;
      fresh.versions = Versions::Adopted(state, std::chrono::steady_clock::now() + kCarriedPinGrace);
      if (const uint32_t carried = fresh.versions.carried(); carried != 0) {
        spdlog::info("slot '{}': {} pin(s) carried over the restart, kept until their readers take them over or "
                     "{} s pass",
                     name, carried, std::chrono::duration_cast<std::chrono::seconds>(kCarriedPinGrace).count());
      }
      if (std::string broken = fresh.versions.CheckInvariants(); !broken.empty()) {
        spdlog::warn("dropping slot '{}': its versions from the last broker do not hold together ({})", name,
                     broken);
        continue;
      }
      auto live_index = registry_.AddLive(fresh.versions.state());
      if (!live_index.ok()) {
        spdlog::warn("dropping slot '{}': {}", name, live_index.status().message());
        continue;
      }
      fresh.live_index = *live_index;
      a = &table_.AddAllocation(std::move(fresh));
      last_id = std::max(last_id, a->id);
    }
    SlotDescriptor d = old;
    d.lease_count = 0;
    d.live_index = a->live_index;
    auto index = registry_.Insert(d);
    if (!index.ok()) {
      spdlog::warn("dropping slot '{}': {}", name, index.status().message());
      ReleaseIfUnused(a->id);
      continue;
    }
    table_.AddSlot(*a, *index);
    table_.CountSlot(d.owner_uid, +1);
    ++adopted;
    spdlog::info("adopted slot '{}' (allocation {}, version {})", name, a->id, d.version);
  }
  table_.ReserveAllocationIds(last_id);
  for (auto& [id, fd] : fds) {  // memory no slot names: let it go
    spdlog::info("releasing stored allocation {}: no slot refers to it", id);
    if (options_.observer != nullptr) options_.observer->Removed(id);
  }
  return adopted;
}

}  // namespace gpubroker

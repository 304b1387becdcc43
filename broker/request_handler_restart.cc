// Pools that follow the configuration, and the take-over of an earlier
// broker's slots on a warm restart.
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

size_t RequestHandler::Adopt(const std::vector<SlotDescriptor>& previous,
                             std::map<uint64_t, UniqueFd> fds) {
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
      a = &table_.AddAllocation(std::move(fresh));
      last_id = std::max(last_id, a->id);
    }
    SlotDescriptor d = old;
    d.lease_count = 0;
    auto index = registry_.Insert(d);
    if (!index.ok()) {
      spdlog::warn("dropping slot '{}': {}", name, index.status().message());
      ReleaseIfUnused(a->id);
      continue;
    }
    a->slots.insert(*index);
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

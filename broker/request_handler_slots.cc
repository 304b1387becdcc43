// Slot lifecycle: create, attach, detach, destroy, and the reclaim of a
// departed client's leases.
#include <unistd.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "common/parse.h"
#include "broker/request_handler.h"
#include "common/validate.h"

namespace gpubroker {
namespace {

std::string ModeText(uint32_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}

// Decodes a create request into the domain type; wire validation has already
// checked every field's range.
SlotSpec SpecFromWire(const wire::CreateRequest& m) {
  SlotSpec s;
  s.name = std::string(m.name.view());
  s.base = std::string(m.base.view());
  s.byte_offset = m.byte_offset;
  s.nbytes = m.nbytes;
  s.dtype = DType{m.dtype_code, m.dtype_bits, m.dtype_lanes};
  s.shape.assign(m.shape, m.shape + m.ndim);
  if (m.flags & wire::kCreateHasStrides) s.strides.assign(m.strides, m.strides + m.ndim);
  if (m.backend != 0) s.backend = static_cast<BackendKind>(m.backend);
  s.device.ordinal = m.device_ordinal;
  s.device.by_uuid = (m.flags & wire::kCreateByUuid) != 0;
  std::memcpy(s.device.uuid.data(), m.device_uuid, sizeof m.device_uuid);
  s.mode = m.mode;
  s.buffers = m.buffers;
  return s;
}

}  // namespace

Permissions SlotPermissions(const SlotDescriptor& d) { return {d.owner_uid, d.owner_gid, d.mode}; }
Permissions AllocationPermissions(const SlotDescriptor& d) {
  return {d.allocation_owner_uid, d.allocation_owner_gid, d.allocation_mode};
}

Result<Reply> RequestHandler::OnCreate(Request r, const wire::CreateRequest& m) {
  GPB_RETURN_IF_ERROR(AcceptingNewWork());
  Owner owner{r.client.id, r.client.peer.uid, r.client.peer.gid, IsAdmin(r.client.peer)};
  GPB_ASSIGN_OR_RETURN(uint32_t index, CreateSlot(SpecFromWire(m), owner, &r.client));
  if (m.flags & wire::kCreateAttach) return AttachSlot(r, index, 0);
  return Reply{wire::EncodeReply(r.id, wire::SlotReply{registry_.Get(index)})};
}

Result<uint32_t> RequestHandler::CreateSlot(const SlotSpec& spec, const Owner& owner, ClientEntry* client) {
  GPB_RETURN_IF_ERROR(ValidateName(spec.name));
  if (registry_.Find(spec.name)) return AlreadyExists("a slot named '" + spec.name + "' exists");
  if (registry_.live() >= options_.limits.max_slots) {
    return ResourceExhausted("slot limit reached (" + std::to_string(options_.limits.max_slots) +
                             " slots, limits.max_slots)");
  }
  const Limits& l = options_.limits;
  const UidUsage& usage = table_.Usage(owner.uid);
  if (!owner.quota_exempt && l.max_slots_per_uid != 0 && usage.slots + usage.orphans >= l.max_slots_per_uid) {
    return ResourceExhausted("uid " + std::to_string(owner.uid) + " owns " + std::to_string(usage.slots) +
                             " slots and keeps " + std::to_string(usage.orphans) +
                             " destroyed allocations alive through its leases, its quota "
                             "(limits.max_slots_per_uid " + std::to_string(l.max_slots_per_uid) + ")");
  }
  std::vector<int64_t> strides = spec.strides;
  if (strides.empty()) { GPB_ASSIGN_OR_RETURN(strides, ContiguousStrides(spec.shape)); }
  GPB_ASSIGN_OR_RETURN(uint64_t extent, ViewExtentBytes(spec.dtype, spec.shape, strides));

  Allocation* a = nullptr;
  if (spec.base.empty()) {
    if (spec.byte_offset != 0) return InvalidArgument("byte_offset is only for views into a base slot");
    if (spec.nbytes != 0 && spec.nbytes < extent) {
      return InvalidArgument("nbytes " + std::to_string(spec.nbytes) + " is smaller than the shape's " +
                             std::to_string(extent) + " bytes");
    }
    GPB_ASSIGN_OR_RETURN(a, NewAllocation(spec, spec.nbytes != 0 ? spec.nbytes : extent, owner, client));
  } else {
    GPB_ASSIGN_OR_RETURN(uint32_t base_index, FindSlot(spec.base));
    const SlotDescriptor& base = registry_.Get(base_index);
    if (client != nullptr && !May(client->peer, base, kMayWrite)) {
      return PermissionDenied("no write permission on base slot '" + spec.base + "'");
    }
    if (spec.nbytes != 0) return InvalidArgument("nbytes is only for new allocations");
    if (spec.buffers != 0) return InvalidArgument("buffers is for new allocations; a view has its allocation's");
    a = table_.FindAllocation(base.allocation_id);
    if (a == nullptr) return Internal("base slot's allocation is missing");
    if ((spec.mode & ~a->perms.mode & 0777) != 0) {
      return PermissionDenied("a view cannot grant more than its allocation: mode " + ModeText(spec.mode) +
                              " asked, the allocation under '" + spec.base + "' allows " +
                              ModeText(a->perms.mode));
    }
    GPB_RETURN_IF_ERROR(CheckViewFits(spec.dtype, spec.shape, strides, spec.byte_offset, a->buffer_bytes)
                            .status()
                            .Annotate(a->nbuffers > 1 ? "within one of the allocation's " +
                                                            std::to_string(a->nbuffers) + " buffers of " +
                                                            std::to_string(a->buffer_bytes) + " bytes"
                                                      : std::string("within the allocation")));
  }

  SlotDescriptor d{};
  std::memcpy(d.name, spec.name.data(), spec.name.size());
  d.allocation_id = a->id;
  d.allocation_bytes = a->bytes;
  d.pool_tag = spec.pool_tag;
  d.live_index = a->live_index;
  d.nbuffers = a->nbuffers;
  d.buffer_bytes = a->buffer_bytes;
  d.byte_offset = spec.byte_offset;
  d.nbytes = extent;
  d.version = registry_.GetLive(a->live_index).version;
  d.created_ns = d.updated_ns = NowNs();
  std::copy(spec.shape.begin(), spec.shape.end(), d.shape);
  std::copy(strides.begin(), strides.end(), d.strides);
  Device device = a->memory->device();
  std::memcpy(d.device_uuid, device.uuid.data(), sizeof d.device_uuid);
  d.device_ordinal = device.ordinal;
  d.owner_uid = owner.uid;
  d.owner_gid = owner.gid;
  d.mode = spec.mode;
  d.allocation_owner_uid = a->perms.uid;
  d.allocation_owner_gid = a->perms.gid;
  d.allocation_mode = a->perms.mode;
  d.lease_count = a->leases;
  d.backend = static_cast<uint16_t>(a->backend);
  d.dtype_code = spec.dtype.code;
  d.dtype_bits = spec.dtype.bits;
  d.dtype_lanes = spec.dtype.lanes;
  d.ndim = static_cast<uint32_t>(spec.shape.size());
  // A legacy IPC handle is a bearer token any local user can open: it goes
  // into the shared registry only where every local user may read the slot
  // and its allocation.
  if (a->backend == BackendKind::kCudaIpc && (spec.mode & 04) != 0 && (a->perms.mode & 04) != 0) {
    auto handle = a->memory->Share(wire::kAccessRead);
    if (handle.ok() && handle->ipc_handle) {
      std::memcpy(d.ipc_handle, handle->ipc_handle->data(), sizeof d.ipc_handle);
    }
  }
  auto index = registry_.Insert(d);
  if (!index.ok()) {
    ReleaseIfUnused(a->id);
    return index.status();
  }
  table_.AddSlot(*a, *index);
  table_.CountSlot(owner.uid, +1);
  if (uint64_t dropped = 0; log_budget_.Allow(owner.uid, &dropped)) {
    spdlog::info("slot '{}' created by client {} (uid {}): {} {} bytes at offset {} of allocation {} ({}), mode {}{}",
                 spec.name, owner.client_id, owner.uid, DTypeName(spec.dtype), extent, spec.byte_offset, a->id,
                 BackendName(a->backend), ModeText(spec.mode), LogBudget::Note(owner.uid, dropped));
  }
  return *index;
}

// A new lease may outlive its slot (destroy is like unlink), and each
// allocation takes a record in the registry's live table while it lives:
// a uid that keeps as many destroyed allocations alive as it may own slots
// takes no lease on another until it lets some go.
Status RequestHandler::CheckOrphans(const ClientEntry& client, const Allocation& a) const {
  const Limits& l = options_.limits;
  if (l.max_slots_per_uid == 0 || IsAdmin(client.peer) || client.leases.count(a.id) != 0) return Status::Ok();
  const uint32_t orphans = table_.Usage(client.peer.uid).orphans;
  if (orphans < l.max_slots_per_uid) return Status::Ok();
  return ResourceExhausted("uid " + std::to_string(client.peer.uid) + " keeps " + std::to_string(orphans) +
                           " allocations alive that no slot names any more (destroyed while its views held "
                           "them), its quota (limits.max_slots_per_uid " + std::to_string(l.max_slots_per_uid) +
                           "): let go of those views first");
}

Status RequestHandler::CheckCaps(BackendKind kind, uint64_t bytes, const Owner& owner) const {
  const Limits& l = options_.limits;
  if (kind == BackendKind::kHost) {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    uint64_t held = table_.BytesOn(Device::kCpu);
    if (bytes > l.max_host_bytes || held > l.max_host_bytes - ((bytes + page - 1) / page * page)) {
      return ResourceExhausted("host memory cap: " + std::to_string(held) + " bytes held + " +
                               std::to_string(bytes) + " asked exceeds limits.max_host_bytes (" +
                               std::to_string(l.max_host_bytes) + ")");
    }
  }
  if (!owner.quota_exempt && l.max_bytes_per_uid == kBytesPerUidFromCaps) {
    // Not configured: a fair share of each cap, so that no one uid can take
    // all of it from root and everyone else.
    const UidUsage& usage = table_.Usage(owner.uid);
    const bool host = kind == BackendKind::kHost;
    const uint64_t cap = host ? l.max_host_bytes : l.max_bytes_per_device;
    const uint64_t held = host ? usage.host_bytes : usage.device_bytes;
    const uint64_t share = host ? Share().host_bytes : Share().device_bytes;
    if (cap != 0 && (bytes > share || held > share - bytes)) {
      return ResourceExhausted("uid " + std::to_string(owner.uid) + " holds " + std::to_string(held) + " bytes of " +
                               (host ? "host memory" : "device memory") + "; " + std::to_string(bytes) +
                               " more exceeds its share, a quarter of " +
                               (host ? "limits.max_host_bytes" : "limits.max_bytes_per_device") + " (" +
                               std::to_string(share) + " of " + std::to_string(cap) +
                               "; limits.max_bytes_per_uid sets another quota)");
    }
  } else if (!owner.quota_exempt && l.max_bytes_per_uid != 0) {
    uint64_t held = table_.Usage(owner.uid).bytes;
    if (bytes > l.max_bytes_per_uid || held > l.max_bytes_per_uid - bytes) {
      return ResourceExhausted("uid " + std::to_string(owner.uid) + " holds " + std::to_string(held) +
                               " bytes; " + std::to_string(bytes) + " more exceeds its quota "
                               "(limits.max_bytes_per_uid " + std::to_string(l.max_bytes_per_uid) + ")");
    }
  }
  return Status::Ok();
}

RequestHandler::UidShare RequestHandler::Share() const {
  const Limits& l = options_.limits;
  UidShare s;
  s.slots = l.max_slots_per_uid;
  if (l.max_bytes_per_uid == kBytesPerUidFromCaps) {
    s.host_bytes = l.max_host_bytes / kShareOfACap;
    s.device_bytes = l.max_bytes_per_device / kShareOfACap;
  } else {
    s.bytes = l.max_bytes_per_uid;
  }
  return s;
}

Result<Allocation*> RequestHandler::NewAllocation(const SlotSpec& spec, uint64_t bytes, const Owner& owner,
                                                  ClientEntry* client) {
  BackendKind kind = spec.backend.value_or(backends_.default_kind());
  if (kind == BackendKind::kHost && (spec.device.ordinal >= 0 || spec.device.by_uuid)) {
    return InvalidArgument("a CUDA device was asked for, but '" + spec.name +
                           "' would be host memory (" +
                           (spec.backend ? std::string("backend host was named")
                                         : std::string("this broker's default backend is host: ") +
                                               backends_.Get(BackendKind::kCudaVmm).status().message()) +
                           ")");
  }
  if (bytes == 0) {
    return InvalidArgument("'" + spec.name + "' would hold 0 bytes (a shape with a 0 in it, or --bytes 0): a slot "
                           "needs at least one element");
  }
  // A live slot of N buffers: N copies of the layout back to back, each
  // starting on a 512-byte boundary so every view keeps its alignment.
  const uint32_t nbuffers = spec.buffers == 0 ? 1 : spec.buffers;
  uint64_t buffer_bytes = bytes;
  if (nbuffers > 1) {
    constexpr uint64_t kBufferAlignment = 512;
    if (bytes > (UINT64_MAX / nbuffers) - kBufferAlignment) {
      return InvalidArgument(std::to_string(nbuffers) + " buffers of " + std::to_string(bytes) +
                             " bytes overflow a 64-bit size");
    }
    buffer_bytes = (bytes + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
    bytes = buffer_bytes * nbuffers;
  }
  GPB_RETURN_IF_ERROR(CheckCaps(kind, bytes, owner));
  GPB_ASSIGN_OR_RETURN(Backend * backend, backends_.Get(kind));
  AllocationRequest request;
  request.bytes = bytes;
  request.label = spec.name;
  request.device = spec.device;
  GPB_ASSIGN_OR_RETURN(std::unique_ptr<BackendMemory> memory, backend->Allocate(request));
  Allocation a;
  a.id = table_.NextAllocationId();
  a.backend = kind;
  a.memory = std::move(memory);
  a.bytes = bytes;
  a.creator = owner.client_id;
  a.perms = Permissions{owner.uid, owner.gid, spec.mode};
  a.nbuffers = nbuffers;
  a.buffer_bytes = buffer_bytes;
  // A plain slot is version 1 from the start, in its one buffer; a live one
  // has no version until its first commit.
  a.versions = Versions::New(a.id, spec.buffers, NowNs());
  GPB_ASSIGN_OR_RETURN(a.live_index, registry_.AddLive(a.versions.state()));
  if (client != nullptr) client->bytes_created += bytes;
  Allocation& added = table_.AddAllocation(std::move(a));
  if (options_.observer != nullptr) options_.observer->Added(added);
  return &added;
}

Result<Reply> RequestHandler::OnAttach(Request r, const wire::AttachRequest& m) {
  GPB_RETURN_IF_ERROR(AcceptingNewWork());
  GPB_ASSIGN_OR_RETURN(uint32_t index, FindSlot(m.name.view()));
  return AttachSlot(r, index, m.flags);
}

Result<Reply> RequestHandler::AttachSlot(Request r, uint32_t index, uint32_t flags) {
  const bool read_only = (flags & wire::kAttachReadOnly) != 0;
  const SlotDescriptor& slot = registry_.Get(index);
  if (!May(r.client.peer, slot, kMayRead)) {
    return PermissionDenied("uid " + std::to_string(r.client.peer.uid) + " may not read slot '" + slot.name +
                            "' (mode " + ModeText(slot.mode) + ", owner uid " + std::to_string(slot.owner_uid) +
                            "; its allocation: mode " + ModeText(slot.allocation_mode) + ", owner uid " +
                            std::to_string(slot.allocation_owner_uid) + ")");
  }
  Allocation* a = table_.FindAllocation(slot.allocation_id);
  if (a == nullptr) return Internal("slot's allocation is missing");
  GPB_RETURN_IF_ERROR(CheckOrphans(r.client, *a));
  uint32_t access = wire::kAccessRead;
  if (!read_only && May(r.client.peer, slot, kMayWrite)) access |= wire::kAccessWrite;
  if ((flags & wire::kAttachWriteRequired) && !(access & wire::kAccessWrite)) {
    // Refused, not quietly made read-only: a write through a read-only
    // mapping kills the process that makes it.
    return PermissionDenied("uid " + std::to_string(r.client.peer.uid) + " may read slot '" + slot.name +
                            "' but not write it (mode " + ModeText(slot.mode) + ", owner uid " +
                            std::to_string(slot.owner_uid) + ": no 'w' for this user); attach it read-only");
  }
  GPB_ASSIGN_OR_RETURN(SharedHandle handle, a->memory->Share(access));
  table_.TakeLease(r.client, *a, slot.name, (access & wire::kAccessWrite) != 0);
  SyncLeaseCount(*a);
  spdlog::debug("client {} attached '{}' (allocation {}, {} leases)", r.client.id, slot.name, a->id,
               a->leases);
  wire::AttachReply reply{};
  reply.slot = Current(registry_.Get(index));
  reply.access = access;
  reply.has_fd = handle.fd.valid() ? 1 : 0;
  if (handle.ipc_handle) {  // over the socket only, after the permission check
    std::memcpy(reply.slot.ipc_handle, handle.ipc_handle->data(), sizeof reply.slot.ipc_handle);
  }
  return Reply{wire::EncodeReply(r.id, reply), std::move(handle.fd)};
}

Result<Reply> RequestHandler::OnDetach(Request r, const wire::DetachRequest& m) {
  int64_t left = table_.DropLease(r.client, m.allocation_id);
  if (left < 0) {
    return NotFound("client holds no lease on allocation " + std::to_string(m.allocation_id));
  }
  if (left == 0) ForgetLiveState(r.client, m.allocation_id);
  if (Allocation* a = table_.FindAllocation(m.allocation_id)) {
    SyncLeaseCount(*a);
    spdlog::debug("client {} detached allocation {} ({} leases left)", r.client.id, a->id, a->leases);
  }
  ReleaseIfUnused(m.allocation_id);
  return Reply{wire::EncodeReply(r.id, wire::DetachReply{static_cast<uint32_t>(left), 0})};
}

Result<Reply> RequestHandler::OnDestroy(Request r, const wire::DestroyRequest& m) {
  GPB_ASSIGN_OR_RETURN(uint32_t index, FindSlot(m.name.view()));
  const SlotDescriptor& slot = registry_.Get(index);
  if (!IsAdmin(r.client.peer) && !ModeAllows(r.client.peer, SlotPermissions(slot), kMayWrite)) {
    return PermissionDenied("uid " + std::to_string(r.client.peer.uid) +
                            " may not destroy slot '" + slot.name + "'");
  }
  wire::DestroyReply reply{slot.allocation_id, 0, 0};
  if (const Allocation* a = table_.FindAllocation(reply.allocation_id)) reply.lease_count = a->leases;
  if (uint64_t dropped = 0; log_budget_.Allow(r.client.peer.uid, &dropped)) {
    spdlog::info("slot '{}' destroyed by client {} ({} leases keep allocation {}){}", slot.name, r.client.id,
                 reply.lease_count, reply.allocation_id, LogBudget::Note(r.client.peer.uid, dropped));
  }
  DestroySlot(index);
  return Reply{wire::EncodeReply(r.id, reply)};
}

void RequestHandler::DestroySlot(uint32_t index) {
  const SlotDescriptor& slot = registry_.Get(index);
  uint64_t allocation_id = slot.allocation_id;
  table_.CountSlot(slot.owner_uid, -1);
  registry_.Remove(index);
  if (Allocation* a = table_.FindAllocation(allocation_id)) {
    table_.RemoveSlot(*a, index);
    // Readers waiting on it wake and find the name gone (or replaced).
    if (a->live_index != kNoLiveRecord) {
      registry_.UpdateLive(a->live_index, registry_.GetLive(a->live_index), true, false);
    }
  }
  ReleaseIfUnused(allocation_id);
}

void RequestHandler::OnDisconnect(uint64_t client_id) {
  ClientEntry* c = table_.FindClient(client_id);
  if (c == nullptr) return;
  uint64_t reclaimed = 0;
  for (const auto& [aid, lease] : c->leases) reclaimed += lease.count;
  const uid_t uid = c->peer.uid;
  table_.CountConnection(c->peer.uid, -1);
  // While stopping, the pins stay in the registry: a warm-restarted broker
  // carries them for their readers (Adopt).
  if (!stopping_) {
    for (const auto& [aid, lease] : c->leases) ForgetLiveState(*c, aid);
  }
  for (uint64_t allocation_id : table_.RemoveClient(client_id)) {
    if (Allocation* a = table_.FindAllocation(allocation_id)) SyncLeaseCount(*a);
    ReleaseIfUnused(allocation_id);
  }
  // One line a connection, at hello; its end is worth a line only when it
  // left leases behind (a crash), within the uid's budget.
  uint64_t dropped = 0;
  if (reclaimed == 0 || !log_budget_.Allow(uid, &dropped)) {
    spdlog::debug("client {} disconnected; {} leases reclaimed", client_id, reclaimed);
  } else {
    spdlog::info("client {} disconnected; {} leases reclaimed{}", client_id, reclaimed, LogBudget::Note(uid, dropped));
  }
}

Result<SlotSpec> RequestHandler::PoolSpec(const PoolConfig& pool, Owner& owner) const {
  SlotSpec s;
  s.name = pool.name;
  s.nbytes = pool.bytes;
  s.dtype = pool.dtype;
  s.shape = pool.shape;
  s.backend = pool.backend;
  s.device.ordinal = pool.device_ordinal;
  if (pool.device_uuid) {
    s.device.by_uuid = true;
    s.device.uuid = *pool.device_uuid;
  }
  s.mode = pool.mode;
  s.pool_tag = PoolTag(pool);
  owner = Owner{0, ::geteuid(), ::getegid(), true};
  if (!pool.group.empty()) {
    auto gid = LookupGroup(pool.group);
    if (!gid.ok()) return gid.status().Annotate("pool '" + pool.name + "'");
    owner.gid = *gid;
  }
  return s;
}

Status RequestHandler::CreatePool(const PoolConfig& pool) {
  Owner owner{};
  GPB_ASSIGN_OR_RETURN(SlotSpec spec, PoolSpec(pool, owner));
  GPB_RETURN_IF_ERROR(CreateSlot(spec, owner, nullptr).status().Annotate("pool '" + pool.name + "'"));
  pools_[pool.name] = pool;
  return Status::Ok();
}

Status RequestHandler::CheckPools(const std::vector<PoolConfig>& pools, const Limits& limits) const {
  uint64_t host_bytes = 0;
  for (const PoolConfig& pool : pools) {
    Owner owner{};
    GPB_ASSIGN_OR_RETURN(SlotSpec spec, PoolSpec(pool, owner));
    std::string where = "pool '" + pool.name + "'";
    BackendKind kind = spec.backend.value_or(backends_.default_kind());
    GPB_RETURN_IF_ERROR(backends_.Get(kind).status().Annotate(where));
    if (kind == BackendKind::kHost && (spec.device.ordinal >= 0 || spec.device.by_uuid)) {
      return InvalidArgument(where + " names a CUDA device but would be host memory");
    }
    GPB_ASSIGN_OR_RETURN(auto strides, ContiguousStrides(spec.shape));
    GPB_ASSIGN_OR_RETURN(uint64_t extent, ViewExtentBytes(spec.dtype, spec.shape, strides));
    uint64_t bytes = spec.nbytes != 0 ? spec.nbytes : extent;
    auto existing = pools_.find(pool.name);
    bool unchanged = existing != pools_.end() && existing->second == pool;
    if (!unchanged && registry_.Find(pool.name) && existing == pools_.end()) {
      return AlreadyExists(where + ": a client's slot has that name");
    }
    if (kind == BackendKind::kHost && !unchanged) host_bytes += bytes;
  }
  if (host_bytes > limits.max_host_bytes) {
    return ResourceExhausted("the pools' host memory (" + std::to_string(host_bytes) +
                             " bytes) exceeds limits.max_host_bytes (" + std::to_string(limits.max_host_bytes) +
                             ")");
  }
  return Status::Ok();
}

void RequestHandler::SyncLeaseCount(const Allocation& a) {
  for (uint32_t index : a.slots) {
    SlotDescriptor d = registry_.Get(index);
    if (d.lease_count == a.leases) continue;
    d.lease_count = a.leases;
    registry_.Update(index, d);
  }
}

void RequestHandler::ReleaseIfUnused(uint64_t allocation_id) {
  const Allocation* a = table_.FindAllocation(allocation_id);
  uint32_t live_index = a != nullptr ? a->live_index : kNoLiveRecord;
  if (table_.FreeIfUnused(allocation_id)) {
    if (live_index != kNoLiveRecord) registry_.RemoveLive(live_index);
    if (options_.observer != nullptr) options_.observer->Removed(allocation_id);
    spdlog::debug("allocation {} freed: no slot and no lease holds it", allocation_id);
  }
}

}  // namespace gpubroker

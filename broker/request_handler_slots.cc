// Slot lifecycle: create, attach, detach, destroy, and the reclaim of a
// departed client's leases.
#include <unistd.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "request_handler.h"
#include "validate.h"

namespace gpubroker {

Result<Reply> RequestHandler::OnCreate(Request r, const wire::CreateRequest& m) {
  GPB_RETURN_IF_ERROR(AcceptingNewWork());
  Owner owner{r.client.id, r.client.peer.uid, r.client.peer.gid};
  GPB_ASSIGN_OR_RETURN(uint32_t index, CreateSlot(m, owner, &r.client));
  if (m.flags & wire::kCreateAttach) return AttachSlot(r, index, false);
  return Reply{wire::EncodeReply(r.id, wire::SlotReply{registry_.Get(index)})};
}

Result<uint32_t> RequestHandler::CreateSlot(const wire::CreateRequest& m, const Owner& owner,
                                            ClientEntry* client) {
  std::string name(m.name.view());
  if (registry_.Find(name)) return AlreadyExists("a slot named '" + name + "' exists");
  if (registry_.live() >= options_.limits.max_slots) {
    return ResourceExhausted("slot limit reached (" + std::to_string(options_.limits.max_slots) +
                             " slots)");
  }
  DType dtype{m.dtype_code, m.dtype_bits, m.dtype_lanes};
  std::span<const int64_t> shape(m.shape, m.ndim);
  std::vector<int64_t> strides;
  if (m.flags & wire::kCreateHasStrides) {
    strides.assign(m.strides, m.strides + m.ndim);
  } else {
    GPB_ASSIGN_OR_RETURN(strides, ContiguousStrides(shape));
  }
  GPB_ASSIGN_OR_RETURN(uint64_t extent, ViewExtentBytes(dtype, shape, strides));

  Allocation* a = nullptr;
  if (m.base.view().empty()) {
    if (m.byte_offset != 0) return InvalidArgument("byte_offset is only for views into a base slot");
    if (m.nbytes != 0 && m.nbytes < extent) {
      return InvalidArgument("nbytes " + std::to_string(m.nbytes) + " is smaller than the shape's " +
                             std::to_string(extent) + " bytes");
    }
    GPB_ASSIGN_OR_RETURN(a, NewAllocation(m, m.nbytes != 0 ? m.nbytes : extent, owner, client));
  } else {
    GPB_ASSIGN_OR_RETURN(uint32_t base_index, FindSlot(m.base.view()));
    const SlotDescriptor& base = registry_.Get(base_index);
    if (client != nullptr && !Allows(client->peer, base, 2)) {
      return PermissionDenied("no write permission on base slot '" + std::string(m.base.view()) + "'");
    }
    if (m.nbytes != 0) return InvalidArgument("nbytes is only for new allocations");
    a = table_.FindAllocation(base.allocation_id);
    if (a == nullptr) return Internal("base slot's allocation is missing");
    GPB_RETURN_IF_ERROR(CheckViewFits(dtype, shape, strides, m.byte_offset, a->bytes).status());
  }

  SlotDescriptor d{};
  std::memcpy(d.name, name.data(), name.size());
  d.allocation_id = a->id;
  d.allocation_bytes = a->bytes;
  d.byte_offset = m.byte_offset;
  d.nbytes = extent;
  d.version = 1;
  d.created_ns = d.updated_ns = NowNs();
  std::copy(shape.begin(), shape.end(), d.shape);
  std::copy(strides.begin(), strides.end(), d.strides);
  Device device = a->memory->device();
  std::memcpy(d.device_uuid, device.uuid.data(), sizeof d.device_uuid);
  d.device_ordinal = device.ordinal;
  d.owner_uid = owner.uid;
  d.owner_gid = owner.gid;
  d.mode = m.mode;
  d.lease_count = a->leases;
  d.backend = static_cast<uint16_t>(a->backend);
  d.dtype_code = dtype.code;
  d.dtype_bits = dtype.bits;
  d.dtype_lanes = dtype.lanes;
  d.ndim = m.ndim;
  // A legacy IPC handle is a bearer token any local user can open: it goes
  // into the shared registry only for slots every local user may read.
  if (a->backend == BackendKind::kCudaIpc && (m.mode & 04) != 0) {
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
  a->slots.insert(*index);
  spdlog::info("slot '{}' created by client {}: {} {} bytes at offset {} of allocation {} ({}), mode {:03o}",
               name, owner.client_id, DTypeName(dtype), extent, m.byte_offset, a->id,
               BackendName(a->backend), m.mode);
  return *index;
}

Result<Allocation*> RequestHandler::NewAllocation(const wire::CreateRequest& m, uint64_t bytes,
                                                  const Owner& owner, ClientEntry* client) {
  uint64_t limit = options_.limits.max_bytes_per_client;
  if (client != nullptr && limit != 0 && (bytes > limit || client->bytes_created > limit - bytes)) {
    return ResourceExhausted("client byte limit reached: " + std::to_string(client->bytes_created) +
                             " held + " + std::to_string(bytes) + " asked > " + std::to_string(limit));
  }
  BackendKind kind = m.backend == 0 ? backends_.default_kind() : static_cast<BackendKind>(m.backend);
  GPB_ASSIGN_OR_RETURN(Backend * backend, backends_.Get(kind));
  AllocationRequest request;
  request.bytes = bytes;
  request.label = std::string(m.name.view());
  request.device.ordinal = m.device_ordinal;
  request.device.by_uuid = (m.flags & wire::kCreateByUuid) != 0;
  std::memcpy(request.device.uuid.data(), m.device_uuid, sizeof m.device_uuid);
  GPB_ASSIGN_OR_RETURN(std::unique_ptr<BackendMemory> memory, backend->Allocate(request));
  Allocation a;
  a.id = table_.NextAllocationId();
  a.backend = kind;
  a.memory = std::move(memory);
  a.bytes = bytes;
  a.creator = owner.client_id;
  if (client != nullptr) client->bytes_created += bytes;
  Allocation& added = table_.AddAllocation(std::move(a));
  if (options_.observer != nullptr) options_.observer->Added(added);
  return &added;
}

Result<Reply> RequestHandler::OnAttach(Request r, const wire::AttachRequest& m) {
  GPB_RETURN_IF_ERROR(AcceptingNewWork());
  GPB_ASSIGN_OR_RETURN(uint32_t index, FindSlot(m.name.view()));
  return AttachSlot(r, index, (m.flags & wire::kAttachReadOnly) != 0);
}

Result<Reply> RequestHandler::AttachSlot(Request r, uint32_t index, bool read_only) {
  const SlotDescriptor& slot = registry_.Get(index);
  if (!Allows(r.client.peer, slot, 4)) {
    return PermissionDenied("uid " + std::to_string(r.client.peer.uid) + " may not attach slot '" +
                            slot.name + "' (mode " + std::to_string(slot.mode >> 6 & 7) +
                            std::to_string(slot.mode >> 3 & 7) + std::to_string(slot.mode & 7) +
                            ", owner uid " + std::to_string(slot.owner_uid) + ")");
  }
  Allocation* a = table_.FindAllocation(slot.allocation_id);
  if (a == nullptr) return Internal("slot's allocation is missing");
  uint32_t access = wire::kAccessRead;
  if (!read_only && Allows(r.client.peer, slot, 2)) access |= wire::kAccessWrite;
  GPB_ASSIGN_OR_RETURN(SharedHandle handle, a->memory->Share(access));
  table_.TakeLease(r.client, *a, slot.name);
  SyncLeaseCount(*a);
  spdlog::debug("client {} attached '{}' (allocation {}, {} leases)", r.client.id, slot.name, a->id,
               a->leases);
  wire::AttachReply reply{};
  reply.slot = registry_.Get(index);
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
  if (!Allows(r.client.peer, slot, 2)) {
    return PermissionDenied("uid " + std::to_string(r.client.peer.uid) +
                            " may not destroy slot '" + slot.name + "'");
  }
  uint64_t allocation_id = slot.allocation_id;
  std::string name = slot.name;
  registry_.Remove(index);
  wire::DestroyReply reply{allocation_id, 0, 0};
  if (Allocation* a = table_.FindAllocation(allocation_id)) {
    a->slots.erase(index);
    reply.lease_count = a->leases;
  }
  spdlog::info("slot '{}' destroyed by client {} ({} leases keep allocation {})", name, r.client.id,
               reply.lease_count, allocation_id);
  ReleaseIfUnused(allocation_id);
  return Reply{wire::EncodeReply(r.id, reply)};
}

void RequestHandler::OnDisconnect(uint64_t client_id) {
  ClientEntry* c = table_.FindClient(client_id);
  if (c == nullptr) return;
  uint64_t reclaimed = 0;
  for (const auto& [aid, lease] : c->leases) reclaimed += lease.count;
  for (uint64_t allocation_id : table_.RemoveClient(client_id)) {
    if (Allocation* a = table_.FindAllocation(allocation_id)) SyncLeaseCount(*a);
    ReleaseIfUnused(allocation_id);
  }
  spdlog::info("client {} disconnected; {} leases reclaimed", client_id, reclaimed);
}

Status RequestHandler::CreatePool(const PoolConfig& pool) {
  wire::CreateRequest m{};
  m.name.set(pool.name);
  m.nbytes = pool.bytes;
  std::copy(pool.shape.begin(), pool.shape.end(), m.shape);
  m.ndim = static_cast<uint8_t>(pool.shape.size());
  m.device_ordinal = pool.device_ordinal;
  if (pool.device_uuid) {
    m.flags |= wire::kCreateByUuid;
    std::memcpy(m.device_uuid, pool.device_uuid->data(), sizeof m.device_uuid);
  }
  m.mode = pool.mode;
  m.backend = pool.backend ? static_cast<uint16_t>(*pool.backend) : 0;
  m.dtype_code = pool.dtype.code;
  m.dtype_bits = pool.dtype.bits;
  m.dtype_lanes = pool.dtype.lanes;
  Owner owner{0, ::geteuid(), ::getegid()};
  if (!pool.group.empty()) {
    auto gid = LookupGroup(pool.group);
    if (!gid.ok()) return gid.status().Annotate("pool '" + pool.name + "'");
    owner.gid = *gid;
  }
  GPB_RETURN_IF_ERROR(CreateSlot(m, owner, nullptr).status().Annotate("pool '" + pool.name + "'"));
  pools_[pool.name] = pool;
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
  if (table_.FreeIfUnused(allocation_id)) {
    if (options_.observer != nullptr) options_.observer->Removed(allocation_id);
    spdlog::info("allocation {} freed: no slot and no lease holds it", allocation_id);
  }
}

}  // namespace gpubroker

#include "gpubroker/client.hpp"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "client/src/channel.h"
#include "client/src/client_core.h"
#include "client/src/mapping.h"
#include "client/src/mapping_cache.h"
#include "common/parse.h"
#include "common/socket_path.h"
#include "common/validate.h"

namespace gpubroker {

std::string DefaultSocketPath() { return ClientDefaultSocketPath(); }

void* View::data() const {
  if (!mapping_) return nullptr;
  return static_cast<std::byte*>(mapping_->base) + slot_.byte_offset;
}

void* View::data(uint32_t buffer) const {
  if (!mapping_ || buffer >= slot_.buffers) return nullptr;
  return static_cast<std::byte*>(mapping_->base) + buffer * slot_.buffer_bytes + slot_.byte_offset;
}

bool View::writable() const { return mapping_ && mapping_->writable; }

namespace {

Result<wire::CreateRequest> ToRequest(const CreateOptions& o, bool attach) {
  GPB_RETURN_IF_ERROR(ValidateName(o.name));
  if (o.shape.size() > static_cast<size_t>(kMaxDims)) {
    return InvalidArgument("ndim " + std::to_string(o.shape.size()) + " exceeds the limit of " +
                           std::to_string(kMaxDims));
  }
  if (!o.strides.empty() && o.strides.size() != o.shape.size()) {
    return InvalidArgument("strides must have one entry per dimension");
  }
  if (!o.base.empty()) GPB_RETURN_IF_ERROR(ValidateName(o.base).Annotate("base"));
  if (o.mode > 0777) return InvalidArgument("mode " + std::to_string(o.mode) + " is not a permission 0..0777");
  wire::CreateRequest m{};
  m.name.set(o.name);
  m.base.set(o.base);
  m.byte_offset = o.byte_offset;
  m.nbytes = o.bytes;
  if (o.buffers > kMaxBuffers) {
    return InvalidArgument("buffers " + std::to_string(o.buffers) + " is above the limit of " +
                           std::to_string(kMaxBuffers));
  }
  m.buffers = static_cast<uint8_t>(o.buffers);
  std::copy(o.shape.begin(), o.shape.end(), m.shape);
  std::copy(o.strides.begin(), o.strides.end(), m.strides);
  m.ndim = static_cast<uint8_t>(o.shape.size());
  // The broker numbers devices its own way: name ours by UUID where we can.
  std::optional<DeviceUuid> uuid = o.device_uuid;
  if (!uuid && o.device >= 0) {
    if (auto local = LocalDeviceUuid(o.device); local.ok()) uuid = *local;
  }
  m.device_ordinal = o.device;
  if (uuid) std::memcpy(m.device_uuid, uuid->data(), sizeof m.device_uuid);
  m.flags = (o.strides.empty() ? 0u : uint32_t{wire::kCreateHasStrides}) |
            (attach ? uint32_t{wire::kCreateAttach} : 0u) | (uuid ? uint32_t{wire::kCreateByUuid} : 0u);
  m.mode = o.mode;
  m.backend = o.backend ? static_cast<uint16_t>(*o.backend) : 0;
  m.dtype_code = o.dtype.code;
  m.dtype_bits = o.dtype.bits;
  m.dtype_lanes = o.dtype.lanes;
  return m;
}

}  // namespace

View Client::MakeView(std::shared_ptr<MappedAllocation> mapping, const SlotDescriptor& d) {
  SlotInfo info = ToSlotInfo(d);
  info.device = mapping->device;
  return View(std::move(mapping), std::move(info));
}

static SlotInfo Local(const SlotDescriptor& d) {
  SlotInfo s = ToSlotInfo(d);
  LocalizeDevice(s);
  return s;
}

Result<Client> Client::Connect(const ConnectOptions& options) {
  auto core = std::make_shared<Core>();
  core->cache = std::make_shared<MappingCache>();
  std::weak_ptr<MappingCache> cache = core->cache;
  Channel::Hooks hooks;
  hooks.greeted = [cache](const wire::HelloReply& hello, UniqueFd registry) {
    if (auto c = cache.lock()) c->Greeted(hello, std::move(registry));
  };
  hooks.leases = [cache] {
    auto c = cache.lock();
    return c ? c->Leases() : std::vector<LeaseClaim>{};
  };
  hooks.lost = [cache](uint64_t allocation_id) {
    if (auto c = cache.lock()) c->Lost(allocation_id);
  };
  GPB_ASSIGN_OR_RETURN(core->channel, Channel::Open(options, std::move(hooks)));
  return Client(std::move(core));
}

uint64_t Client::client_id() const { return core_->channel->client_id(); }

namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

// CreateOptions::exist_ok: `s`, the slot already named o.name, is what this
// create would have made, and the caller's own (a slot someone else put
// there first must never receive this caller's data).
Status SameSlot(const SlotInfo& s, const CreateOptions& o) {
  auto differs = [&](const std::string& what) {
    return AlreadyExists("'" + o.name + "' exists with " + what +
                         ": exist_ok returns only the slot this create would have made (destroy it, or pick "
                         "another name)");
  };
  if (s.owner_uid != ::geteuid()) {
    return AlreadyExists("'" + o.name + "' exists and belongs to uid " + std::to_string(s.owner_uid) +
                         ", not to you (uid " + std::to_string(::geteuid()) + "): exist_ok takes only your own slots");
  }
  if (s.dtype != o.dtype) return differs("dtype " + DTypeName(s.dtype) + ", not " + DTypeName(o.dtype));
  const bool sized_by_bytes = o.shape.empty() && o.bytes != 0;
  if (!sized_by_bytes && s.shape != o.shape) {
    return differs("shape " + ShapeString(s.shape) + ", not " + ShapeString(o.shape));
  }
  if (sized_by_bytes && s.allocation_bytes < o.bytes) {
    return differs(std::to_string(s.allocation_bytes) + " bytes, not " + std::to_string(o.bytes));
  }
  if (!o.strides.empty() && s.strides != o.strides) return differs("other strides");
  if (o.buffers != 0 && s.buffers != o.buffers) {
    return differs(std::to_string(s.buffers) + " buffers, not " + std::to_string(o.buffers));
  }
  if (o.backend && *o.backend != s.backend) {
    return differs("backend " + std::string(BackendName(s.backend)) + ", not " + std::string(BackendName(*o.backend)));
  }
  return Status::Ok();
}

}  // namespace

Result<SlotInfo> Client::Create(const CreateOptions& options) {
  GPB_ASSIGN_OR_RETURN(wire::CreateRequest m, ToRequest(options, false));
  auto reply = core_->channel->Call<wire::SlotReply>(m);
  if (!reply.ok() && options.exist_ok && reply.status().code() == Code::kAlreadyExists) {
    GPB_ASSIGN_OR_RETURN(SlotInfo existing, Stat(options.name));
    GPB_RETURN_IF_ERROR(SameSlot(existing, options));
    return existing;
  }
  if (!reply.ok()) return reply.status();
  return Local(reply->slot);
}

Result<View> Client::CreateAndAttach(const CreateOptions& options) {
  GPB_ASSIGN_OR_RETURN(wire::CreateRequest m, ToRequest(options, true));
  UniqueFd fd;
  auto attached = core_->channel->Call<wire::AttachReply>(m, &fd);
  if (!attached.ok() && options.exist_ok && attached.status().code() == Code::kAlreadyExists) {
    GPB_ASSIGN_OR_RETURN(SlotInfo existing, Stat(options.name));
    GPB_RETURN_IF_ERROR(SameSlot(existing, options));
    return Attach(options.name);
  }
  GPB_ASSIGN_OR_RETURN(wire::AttachReply reply, std::move(attached));
  GPB_ASSIGN_OR_RETURN(std::shared_ptr<MappedAllocation> mapped, core_->Map(reply, std::move(fd)));
  return MakeView(std::move(mapped), reply.slot);
}

Result<View> Client::Attach(std::string_view name, AttachMode mode) {
  GPB_RETURN_IF_ERROR(ValidateName(name));
  // 1. This process may map the slot's allocation already: no round trip.
  if (auto mapped = core_->Mapped(name, mode)) return MakeView(std::move(mapped->first), mapped->second);
  // 2. Ask the broker for a lease and a handle to the memory.
  wire::AttachRequest m{};
  m.name.set(name);
  m.flags = mode == AttachMode::kReadOnly    ? uint32_t{wire::kAttachReadOnly}
            : mode == AttachMode::kReadWrite ? uint32_t{wire::kAttachWriteRequired}
                                             : 0u;
  UniqueFd fd;
  GPB_ASSIGN_OR_RETURN(wire::AttachReply reply, core_->channel->Call<wire::AttachReply>(m, &fd));
  // 3. Map it, or join this process's mapping of it.
  GPB_ASSIGN_OR_RETURN(std::shared_ptr<MappedAllocation> mapped, core_->Map(reply, std::move(fd)));
  return MakeView(std::move(mapped), reply.slot);
}

Result<std::vector<View>> Client::AttachMany(std::span<const std::string_view> names, AttachMode mode) {
  std::vector<View> views;
  views.reserve(names.size());
  for (std::string_view name : names) {
    auto v = Attach(name, mode);
    if (!v.ok()) return v.status();  // the views so far go with `views`
    views.push_back(std::move(v).value());
  }
  return views;
}

Status Client::Destroy(std::string_view name) {
  GPB_RETURN_IF_ERROR(ValidateName(name));
  wire::DestroyRequest m{};
  m.name.set(name);
  return core_->channel->Call<wire::DestroyReply>(m).status();
}

Result<SlotInfo> Client::Stat(std::string_view name) {
  GPB_RETURN_IF_ERROR(ValidateName(name));
  wire::StatRequest m{};
  m.name.set(name);
  GPB_ASSIGN_OR_RETURN(wire::SlotReply reply, core_->channel->Call<wire::SlotReply>(m));
  return Local(reply.slot);
}

Result<std::vector<SlotInfo>> Client::List() {
  GPB_ASSIGN_OR_RETURN(auto records, core_->channel->CallList<wire::ListReply>(wire::ListRequest{}));
  std::vector<SlotInfo> out;
  for (const auto& d : records) out.push_back(Local(d));
  return out;
}

Result<SlotInfo> Client::Lookup(std::string_view name) {
  GPB_RETURN_IF_ERROR(ValidateName(name));
  GPB_ASSIGN_OR_RETURN(std::shared_ptr<const RegistryReader> registry, core_->cache->registry());
  // The registry outlives its broker in this process's memory: once the
  // broker has stopped (or its connection hung up), ask instead, which
  // reconnects within the timeout or says the broker is gone, rather than
  // answer from a registry nobody keeps any more.
  if (!registry->Running() || core_->channel->PeerHungUp()) return Stat(name);
  GPB_ASSIGN_OR_RETURN(SlotDescriptor d, registry->Lookup(name));
  return Local(d);
}

Result<std::vector<SlotInfo>> Client::ListRegistry() {
  GPB_ASSIGN_OR_RETURN(std::shared_ptr<const RegistryReader> registry, core_->cache->registry());
  if (!registry->Running() || core_->channel->PeerHungUp()) return List();  // as in Lookup
  std::vector<SlotInfo> out;
  for (const auto& d : registry->ListLive()) out.push_back(Local(d));
  return out;
}

Result<BrokerInfo> Client::Info() {
  GPB_ASSIGN_OR_RETURN(wire::StatusReply s, core_->channel->Call<wire::StatusReply>(wire::StatusRequest{}));
  BrokerInfo b;
  b.pid = s.broker_pid;
  b.version = Printable(s.broker_version.view());  // from the broker: escaped before anyone prints it
  b.registry_name = Printable(s.registry_name.view());
  b.stopping = s.state == wire::kStateStopping;
  b.state = s.state == wire::kStateStopping   ? "stopping"
            : s.state == wire::kStateDraining ? "draining"
            : s.state == wire::kStateDegraded ? "degraded"
                                              : "running";
  b.boot_generation = s.boot_generation;
  b.started_ns = s.started_ns;
  b.capacity = s.capacity;
  b.max_slots = s.max_slots;
  b.slots = s.slots;
  b.allocations = s.allocations;
  b.clients = s.clients;
  b.leases = s.leases;
  b.bytes_host = s.bytes_host;
  b.bytes_device = s.bytes_device;
  b.requests = s.requests;
  b.refusals = s.refusals;
  return b;
}

Result<std::vector<ClientInfo>> Client::Clients() {
  GPB_ASSIGN_OR_RETURN(auto records,
                       core_->channel->CallList<wire::ClientsReply>(wire::ClientsRequest{}));
  std::vector<ClientInfo> out;
  for (const auto& r : records) {
    out.push_back({r.client_id, std::string(r.name.view()), r.pid, r.uid, r.gid, r.lease_count,
                   r.bytes_created, r.connected_ns});
  }
  return out;
}

Result<std::vector<LeaseInfo>> Client::Leases() {
  GPB_ASSIGN_OR_RETURN(auto records,
                       core_->channel->CallList<wire::LeasesReply>(wire::LeasesRequest{}));
  std::vector<LeaseInfo> out;
  for (const auto& r : records) {
    out.push_back({r.client_id, r.allocation_id, r.allocation_bytes, r.count, std::string(r.slot.view()),
                   r.pinned_version, r.pinned_buffer, r.writing_buffer});
  }
  return out;
}

Result<std::vector<BrokerDevice>> Client::Devices() {
  GPB_ASSIGN_OR_RETURN(auto records, core_->channel->CallList<wire::DevicesReply>(wire::DevicesRequest{}));
  std::vector<BrokerDevice> out;
  for (const auto& r : records) {
    BrokerDevice d;
    std::memcpy(d.uuid.data(), r.uuid, d.uuid.size());
    d.broker_ordinal = r.ordinal;
    d.allocated_bytes = r.allocated_bytes;
    out.push_back(d);
  }
  return out;
}

Result<std::vector<UidUsageInfo>> Client::Usage() {
  GPB_ASSIGN_OR_RETURN(auto records, core_->channel->CallList<wire::UsageReply>(wire::UsageRequest{}));
  std::vector<UidUsageInfo> out;
  for (const auto& r : records) {
    out.push_back({r.uid, (r.flags & wire::kUsageExempt) != 0, r.slots, r.slot_share, r.connections, r.bytes,
                   r.byte_quota, r.host_bytes, r.host_share, r.device_bytes, r.device_share});
  }
  return out;
}

Result<std::vector<PeerInfo>> Client::Peers() {
  GPB_ASSIGN_OR_RETURN(auto records, core_->channel->CallList<wire::PeersReply>(wire::PeersRequest{}));
  std::vector<PeerInfo> out;
  for (const auto& r : records) {
    out.push_back({Printable(r.role.view()), Printable(r.state.view()), Printable(r.tree.view()),
                   Printable(r.peer.view()), r.version, r.source_version, r.versions, r.bytes, r.errors, r.last_ns,
                   Printable(r.last_error.view()), r.passed_on, r.abandoned});
  }
  return out;
}

Status Client::Follow(const std::string& tree, const std::string& from, const std::string& group, uint32_t mode) {
  GPB_RETURN_IF_ERROR(ValidateName(tree));
  wire::FollowRequest req{};
  if (from.size() >= sizeof req.from || group.size() >= sizeof req.group) {
    return InvalidArgument("the source address or the group name is too long");
  }
  if (mode > 0777) return InvalidArgument("mode " + std::to_string(mode) + " is not a permission 0..0777");
  req.tree.set(tree);
  req.from.set(from);
  req.group.set(group);
  req.mode = mode;
  return core_->channel->Call<wire::FollowReply>(req).status();
}

Status Client::Unfollow(const std::string& tree, bool remove) {
  GPB_RETURN_IF_ERROR(ValidateName(tree));
  wire::UnfollowRequest req{};
  req.tree.set(tree);
  req.flags = remove ? wire::kUnfollowRemove : 0;
  return core_->channel->Call<wire::UnfollowReply>(req).status();
}

Status Client::Drain(bool on) {
  return core_->channel->Call<wire::DrainReply>(wire::DrainRequest{on ? 1u : 0u, 0}).status();
}

Status Client::Reload() {
  return core_->channel->Call<wire::ReloadReply>(wire::ReloadRequest{}).status();
}

Status Client::Shutdown() {
  return core_->channel->Call<wire::ShutdownReply>(wire::ShutdownRequest{}).status();
}

}  // namespace gpubroker

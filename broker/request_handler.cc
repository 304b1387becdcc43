#include "broker/request_handler.h"

#include <unistd.h>

#include <algorithm>
#include <ctime>

#include <spdlog/spdlog.h>

#include "broker/host_memory.h"
#include "broker/metrics.h"
#include "common/parse.h"
#include "broker/generated/version.h"

namespace gpubroker {

uint64_t NowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

Limits ResolveLimits(Limits limits) {
  if (limits.max_host_bytes == 0) {
    HostMemoryInfo m = ReadHostMemory();
    limits.max_host_bytes = m.DefaultCap();
    spdlog::info("host memory cap {} bytes: half of {}", limits.max_host_bytes,
                 m.cgroup && *m.cgroup < m.physical ? "the cgroup limit in " + m.cgroup_path
                                                    : std::string("the machine's memory"));
  }
  return limits;
}

namespace {

// Where a broker's allocation ids start. Clients know what they have mapped
// by allocation id, also across a reconnect (a lease is taken again by name
// and kept if the name still leads to that id), so a broker must never hand
// out an id an earlier one did: one started afresh would otherwise give a
// new slot the id of memory its clients still map from before. The start is
// drawn from the boot generation, in [2^32, 2^53 - 2^32): below 2^53, where
// JSON readers keep every digit, with room for 2^32 allocations above it.
// Adopted allocations (a warm restart) keep their ids; new ones come after.
uint64_t FirstAllocationId(uint64_t boot_generation) {
  constexpr uint64_t kLow = uint64_t{1} << 32;
  constexpr uint64_t kSpan = (uint64_t{1} << 53) - 2 * kLow;
  return kLow + boot_generation % kSpan;
}

}  // namespace

RequestHandler::RequestHandler(Registry& registry, BackendSet& backends, HandlerOptions options)
    : registry_(registry), backends_(backends), options_(std::move(options)) {
  SetLimits(options_.limits);
  table_.ReserveAllocationIds(FirstAllocationId(registry_.boot_generation()));
  last_pin_ = (registry_.boot_generation() & 0x7fffffffu) << 32;
}

Result<uint64_t> RequestHandler::OnConnect(const PeerCredentials& peer) {
  Result<uint64_t> id = Admit(peer);
  if (!id.ok()) {
    ++refusals_;
    if (options_.requests != nullptr) options_.requests->RefusedConnection(id.status());
  }
  return id;
}

Result<uint64_t> RequestHandler::Admit(const PeerCredentials& peer) {
  if (peer.unmapped) {
    return PermissionDenied("the broker runs in a user namespace and sees your uid as " +
                            std::to_string(peer.uid) +
                            ", the overflow uid, which every client its namespace does not map shares: "
                            "it cannot tell who you are. Run the client as a uid mapped into the "
                            "broker's user namespace, or the broker in the host's");
  }
  const Limits& l = options_.limits;
  const size_t open = table_.clients().size();
  const bool admin = IsAdmin(peer);
  if (open >= l.max_connections) {
    return ResourceExhausted("too many connections (limits.max_connections " +
                             std::to_string(l.max_connections) + ")");
  }
  if (!admin && open + l.reserved_admin_connections >= l.max_connections) {
    return ResourceExhausted("too many connections: " + std::to_string(open) + " open, and the last " +
                             std::to_string(l.reserved_admin_connections) + " of limits.max_connections (" +
                             std::to_string(l.max_connections) + ") are kept for administrators");
  }
  const uint32_t mine = table_.Usage(peer.uid).connections;
  if (!admin && l.max_connections_per_uid != 0 && mine >= l.max_connections_per_uid) {
    return ResourceExhausted("uid " + std::to_string(peer.uid) + " has " + std::to_string(mine) +
                             " connections open, its limit (limits.max_connections_per_uid " +
                             std::to_string(l.max_connections_per_uid) + ")");
  }
  uint64_t id = ++last_client_id_;
  table_.AddClient(id, peer, NowNs());
  table_.CountConnection(peer.uid, +1);
  spdlog::debug("client {} connected: pid {} uid {} gid {}", id, peer.pid, peer.uid, peer.gid);
  return id;
}

bool RequestHandler::Greeted(uint64_t client_id) {
  const ClientEntry* c = table_.FindClient(client_id);
  return c != nullptr && c->greeted;
}

Reply RequestHandler::Handle(uint64_t client_id, std::span<const std::byte> message) {
  ClientEntry* client = table_.FindClient(client_id);
  if (client == nullptr) {
    return Reply{wire::EncodeError(0, Internal("unknown connection")), UniqueFd(), true};
  }
  auto frame = wire::ParseFrame(message);
  if (!frame.ok()) {
    uint32_t request_id = 0;
    if (message.size() >= sizeof(wire::Header)) {
      std::memcpy(&request_id, message.data() + offsetof(wire::Header, request_id), sizeof request_id);
    }
    // At most one line a second per connection, within the uid's budget:
    // garbage cannot flood the log, from one connection or many.
    const uint64_t now = NowNs();
    if (now - client->rejected_logged_ns >= 1'000'000'000ull && log_budget_.Allow(client->peer.uid)) {
      spdlog::warn("client {}: rejected message: {}{}", client_id, frame.status().message(),
                   client->rejected_unlogged == 0
                       ? std::string()
                       : " (and " + std::to_string(client->rejected_unlogged) + " more since the last line)");
      client->rejected_logged_ns = now;
      client->rejected_unlogged = 0;
    } else {
      ++client->rejected_unlogged;
    }
    return Reply{wire::EncodeError(request_id, frame.status()), UniqueFd(), false};
  }
  const auto started = std::chrono::steady_clock::now();
  Result<Reply> reply = Dispatch(*client, *frame);
  ++requests_;
  if (!reply.ok() && !RefusalReason(reply.status()).empty()) ++refusals_;
  if (options_.requests != nullptr) {
    options_.requests->Answered(static_cast<uint16_t>(frame->type), reply.status(),
                                std::chrono::steady_clock::now() - started);
  }
  if (!reply.ok()) {
    spdlog::debug("client {}: {} failed: {}", client_id,
                  wire::TypeName(static_cast<uint16_t>(frame->type)), reply.status().ToString());
    return Reply{wire::EncodeError(frame->request_id, reply.status()), UniqueFd(), false};
  }
  return std::move(reply).value();
}

namespace {

// Decodes the payload as T and calls the member handler.
template <typename T, typename H>
Result<Reply> Call(RequestHandler* self, H handler, auto request, const wire::Frame& f) {
  GPB_ASSIGN_OR_RETURN(T message, wire::Decode<T>(f.payload));
  return (self->*handler)(request, message);
}

}  // namespace

Result<Reply> RequestHandler::Dispatch(ClientEntry& client, const wire::Frame& f) {
  using wire::MsgType;
  if (f.reply) return ProtocolError("clients send requests, not replies");
  Request r{client, f.request_id};
  if (!client.greeted && f.type != MsgType::kHello) {
    return ProtocolError(wire::TypeName(static_cast<uint16_t>(f.type)) +
                         " before hello; send hello first");
  }
  switch (f.type) {
    case MsgType::kHello: return Call<wire::HelloRequest>(this, &RequestHandler::OnHello, r, f);
    case MsgType::kCreate: return Call<wire::CreateRequest>(this, &RequestHandler::OnCreate, r, f);
    case MsgType::kAttach: return Call<wire::AttachRequest>(this, &RequestHandler::OnAttach, r, f);
    case MsgType::kDetach: return Call<wire::DetachRequest>(this, &RequestHandler::OnDetach, r, f);
    case MsgType::kDestroy: return Call<wire::DestroyRequest>(this, &RequestHandler::OnDestroy, r, f);
    case MsgType::kList: return Call<wire::ListRequest>(this, &RequestHandler::OnList, r, f);
    case MsgType::kStat: return Call<wire::StatRequest>(this, &RequestHandler::OnStat, r, f);
    case MsgType::kClients: return Call<wire::ClientsRequest>(this, &RequestHandler::OnClients, r, f);
    case MsgType::kLeases: return Call<wire::LeasesRequest>(this, &RequestHandler::OnLeases, r, f);
    case MsgType::kStatus: return Call<wire::StatusRequest>(this, &RequestHandler::OnStatus, r, f);
    case MsgType::kShutdown:
      return Call<wire::ShutdownRequest>(this, &RequestHandler::OnShutdown, r, f);
    case MsgType::kDrain: return Call<wire::DrainRequest>(this, &RequestHandler::OnDrain, r, f);
    case MsgType::kReload: return Call<wire::ReloadRequest>(this, &RequestHandler::OnReload, r, f);
    case MsgType::kDevices: return Call<wire::DevicesRequest>(this, &RequestHandler::OnDevices, r, f);
    case MsgType::kWriteBegin:
      return Call<wire::WriteBeginRequest>(this, &RequestHandler::OnWriteBegin, r, f);
    case MsgType::kCommit: return Call<wire::CommitRequest>(this, &RequestHandler::OnCommit, r, f);
    case MsgType::kAcquire: return Call<wire::AcquireRequest>(this, &RequestHandler::OnAcquire, r, f);
    case MsgType::kRelease: return Call<wire::ReleaseRequest>(this, &RequestHandler::OnRelease, r, f);
    case MsgType::kUsage: return Call<wire::UsageRequest>(this, &RequestHandler::OnUsage, r, f);
    case MsgType::kPeers: return Call<wire::PeersRequest>(this, &RequestHandler::OnPeers, r, f);
    case MsgType::kFollow: return Call<wire::FollowRequest>(this, &RequestHandler::OnFollow, r, f);
    case MsgType::kUnfollow: return Call<wire::UnfollowRequest>(this, &RequestHandler::OnUnfollow, r, f);
    case MsgType::kNotice:
    case MsgType::kError: break;
  }
  return ProtocolError("unknown message type " + std::to_string(static_cast<uint16_t>(f.type)));
}

Result<Reply> RequestHandler::OnHello(Request r, const wire::HelloRequest& m) {
  if (r.client.greeted) return ProtocolError("hello sent twice");
  if (m.protocol_version != wire::kProtocolVersion) {
    return Unsupported("client speaks protocol " + std::to_string(m.protocol_version) +
                       "; this broker speaks " + std::to_string(wire::kProtocolVersion));
  }
  r.client.greeted = true;
  r.client.name = std::string(m.client_name.view());
  if (uint64_t dropped = 0; log_budget_.Allow(r.client.peer.uid, &dropped)) {
    spdlog::info("client {} is '{}' (pid {} uid {} gid {}){}", r.client.id, Printable(r.client.name),
                 r.client.peer.pid, r.client.peer.uid, r.client.peer.gid, LogBudget::Note(r.client.peer.uid, dropped));
  }
  wire::HelloReply reply{};
  reply.protocol_version = wire::kProtocolVersion;
  reply.broker_pid = ::getpid();
  reply.boot_generation = registry_.boot_generation();
  reply.client_id = r.client.id;
  reply.capacity = registry_.capacity();
  reply.registry_name.set(registry_.name());
  // The registry travels with the reply: clients never look it up by name.
  GPB_ASSIGN_OR_RETURN(UniqueFd registry, registry_.Share());
  return Reply{wire::EncodeReply(r.id, reply), std::move(registry)};
}

Result<Reply> RequestHandler::OnList(Request r, const wire::ListRequest& m) {
  std::vector<SlotDescriptor> out;
  std::optional<uint32_t> next = registry_.Scan(
      m.cursor, m.max_entries, [&](const SlotDescriptor& d) { out.push_back(Current(d)); });
  wire::ListReply head{static_cast<uint32_t>(out.size()), next.value_or(wire::kEndCursor)};
  return Reply{wire::EncodeListReply(r.id, head, std::span<const SlotDescriptor>(out))};
}

Result<Reply> RequestHandler::OnStat(Request r, const wire::StatRequest& m) {
  GPB_ASSIGN_OR_RETURN(uint32_t index, FindSlot(m.name.view()));
  wire::SlotReply reply{Current(registry_.Get(index))};
  return Reply{wire::EncodeReply(r.id, reply)};
}

namespace {

// One page [cursor, cursor + max) of a sequence produced by `each`.
template <typename Head, typename Record, typename Each>
Reply Page(uint32_t request_id, uint32_t cursor, uint32_t max, Each each) {
  std::vector<Record> out;
  uint32_t position = 0;
  bool more = false;
  each([&](const Record& rec) {
    if (position++ < cursor) return;
    if (out.size() == max) {
      more = true;
      return;
    }
    out.push_back(rec);
  });
  Head head{static_cast<uint32_t>(out.size()), more ? cursor + max : wire::kEndCursor};
  return Reply{wire::EncodeListReply(request_id, head, std::span<const Record>(out))};
}

}  // namespace

Result<Reply> RequestHandler::OnClients(Request r, const wire::ClientsRequest& m) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "listing clients"));
  return Page<wire::ClientsReply, wire::ClientRecord>(r.id, m.cursor, m.max_entries, [&](auto emit) {
    for (const auto& [id, c] : table_.clients()) {
      wire::ClientRecord rec{};
      rec.client_id = id;
      rec.connected_ns = c.connected_ns;
      rec.bytes_created = c.bytes_created;
      rec.pid = c.peer.pid;
      rec.uid = c.peer.uid;
      rec.gid = c.peer.gid;
      for (const auto& [aid, lease] : c.leases) rec.lease_count += lease.count;
      rec.name.set(c.name);
      emit(rec);
    }
  });
}

Result<Reply> RequestHandler::OnLeases(Request r, const wire::LeasesRequest& m) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "listing leases"));
  return Page<wire::LeasesReply, wire::LeaseRecord>(r.id, m.cursor, m.max_entries, [&](auto emit) {
    for (const auto& [id, c] : table_.clients()) {
      for (const auto& [aid, lease] : c.leases) {
        wire::LeaseRecord rec{};
        rec.client_id = id;
        rec.allocation_id = aid;
        const Allocation* a = table_.FindAllocation(aid);
        rec.allocation_bytes = a != nullptr ? a->bytes : 0;
        rec.count = lease.count;
        rec.slot.set(lease.slot);
        rec.pinned_buffer = -1;
        rec.writing_buffer = -1;
        if (a != nullptr) {
          for (const auto& [pin_id, pin] : a->versions.PinsOf(id)) {  // the newest version it pins
            if (pin.version < rec.pinned_version) continue;
            rec.pinned_version = pin.version;
            rec.pinned_buffer = pin.buffer;
          }
          if (a->versions.writer() == id) {
            rec.writing = 1;
            rec.writing_buffer = a->versions.state().writing;
          }
        }
        emit(rec);
      }
    }
  });
}

// Any client may ask: a device's UUID is no secret, and a client comparing
// them with its own (gpubrokerctl doctor) learns why a slot is not visible.
Result<Reply> RequestHandler::OnDevices(Request r, const wire::DevicesRequest& m) {
  std::map<DeviceUuid, uint64_t> used;
  for (const auto& [id, a] : table_.allocations()) {
    if (a.memory && a.memory->device().type == Device::kCuda) used[a.memory->device().uuid] += a.memory->size();
  }
  return Page<wire::DevicesReply, wire::DeviceRecord>(r.id, m.cursor, m.max_entries, [&](auto emit) {
    for (size_t i = 0; i < options_.devices.size(); ++i) {
      wire::DeviceRecord rec{};
      std::memcpy(rec.uuid, options_.devices[i].data(), sizeof rec.uuid);
      rec.ordinal = static_cast<int32_t>(i);
      auto it = used.find(options_.devices[i]);
      rec.allocated_bytes = it == used.end() ? 0 : it->second;
      emit(rec);
    }
  });
}

// Everyone may ask for their own use and share; an admin sees every uid's.
Result<Reply> RequestHandler::OnUsage(Request r, const wire::UsageRequest& m) {
  const bool admin = IsAdmin(r.client.peer);
  const UidShare share = Share();
  // Exempt: root or the admin group. For a uid not asking, from a
  // connection of it (its groups are known only through one).
  std::map<uid_t, bool> connected_admin;
  if (admin) {
    for (const auto& [id, c] : table_.clients()) connected_admin.emplace(c.peer.uid, IsAdmin(c.peer));
  }
  auto exempt = [&](uid_t uid) {
    if (uid == r.client.peer.uid) return admin;
    if (auto it = connected_admin.find(uid); it != connected_admin.end()) return it->second;
    return IsAdmin(PeerCredentials{.uid = uid, .gid = static_cast<gid_t>(-1)});
  };
  return Page<wire::UsageReply, wire::UsageRecord>(r.id, m.cursor, m.max_entries, [&](auto emit) {
    for (const auto& [uid, u] : table_.usage()) {
      if (!admin && uid != r.client.peer.uid) continue;
      if (u.slots == 0 && u.orphans == 0 && u.bytes == 0 && u.connections == 0) continue;
      wire::UsageRecord rec{};
      rec.uid = uid;
      rec.flags = exempt(uid) ? wire::kUsageExempt : 0;
      rec.slots = u.slots + u.orphans;
      rec.slot_share = share.slots;
      rec.connections = u.connections;
      rec.bytes = u.bytes;
      rec.byte_quota = share.bytes;
      rec.host_bytes = u.host_bytes;
      rec.host_share = share.host_bytes;
      rec.device_bytes = u.device_bytes;
      rec.device_share = share.device_bytes;
      emit(rec);
    }
  });
}

// Tree names and peer addresses are the operator's business.
Result<Reply> RequestHandler::OnPeers(Request r, const wire::PeersRequest& m) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "listing peers"));
  const std::vector<wire::PeerRecord> records = options_.peers ? options_.peers() : std::vector<wire::PeerRecord>{};
  return Page<wire::PeersReply, wire::PeerRecord>(r.id, m.cursor, m.max_entries, [&](auto emit) {
    for (const auto& rec : records) emit(rec);
  });
}

// Which trees come from which nodes is the operator's decision.
Result<Reply> RequestHandler::OnFollow(Request r, const wire::FollowRequest& m) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "following a tree from another node"));
  if (!options_.follow) return Unsupported("this broker follows no tree from another node");
  FollowConfig fc;
  fc.tree = std::string(m.tree.view());
  fc.from = std::string(m.from.view());
  fc.group = std::string(m.group.view());
  fc.mode = m.mode;
  GPB_RETURN_IF_ERROR(options_.follow(fc));
  spdlog::info("client {} ('{}') made this broker follow '{}' from {}", r.client.id, Printable(r.client.name),
               fc.tree, Printable(fc.from));
  return Reply{wire::EncodeReply(r.id, wire::FollowReply{})};
}

Result<Reply> RequestHandler::OnUnfollow(Request r, const wire::UnfollowRequest& m) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "ending the following of a tree"));
  const std::string tree(m.tree.view());
  if (!options_.unfollow) return Unsupported("this broker follows no tree from another node");
  const bool remove = (m.flags & wire::kUnfollowRemove) != 0;
  GPB_RETURN_IF_ERROR(options_.unfollow(tree, remove));
  spdlog::info("client {} ('{}') ended the following of '{}'{}", r.client.id, Printable(r.client.name), tree,
               remove ? ", the local tree removed" : "");
  return Reply{wire::EncodeReply(r.id, wire::UnfollowReply{})};
}

Result<Reply> RequestHandler::OnStatus(Request r, const wire::StatusRequest&) {
  wire::StatusReply s{};
  s.boot_generation = registry_.boot_generation();
  s.started_ns = options_.started_ns;
  s.bytes_host = table_.BytesOn(Device::kCpu);
  s.bytes_device = table_.BytesOn(Device::kCuda);
  s.broker_pid = ::getpid();
  s.state = stopping_   ? wire::kStateStopping
            : draining_ ? wire::kStateDraining
            : degraded() ? wire::kStateDegraded
                         : wire::kStateRunning;
  s.capacity = registry_.capacity();
  s.max_slots = options_.limits.max_slots;
  s.slots = registry_.live();
  s.allocations = static_cast<uint32_t>(table_.allocations().size());
  s.clients = static_cast<uint32_t>(table_.clients().size());
  s.leases = static_cast<uint32_t>(table_.total_leases());
  s.registry_name.set(registry_.name());
  s.broker_version.set(kGpubrokerVersion);
  s.requests = requests_;
  s.refusals = refusals_;
  return Reply{wire::EncodeReply(r.id, s)};
}

Result<Reply> RequestHandler::OnShutdown(Request r, const wire::ShutdownRequest&) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "shutting the broker down"));
  spdlog::info("client {} ('{}') asked the broker to shut down", r.client.id, Printable(r.client.name));
  shutdown_requested_ = true;
  return Reply{wire::EncodeReply(r.id, wire::ShutdownReply{})};
}

Result<Reply> RequestHandler::OnDrain(Request r, const wire::DrainRequest& m) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "draining the broker"));
  draining_ = m.on != 0;
  spdlog::info("client {} ('{}') {} draining", r.client.id, Printable(r.client.name),
               draining_ ? "started" : "ended");
  return Reply{wire::EncodeReply(r.id, wire::DrainReply{})};
}

Result<Reply> RequestHandler::OnReload(Request r, const wire::ReloadRequest&) {
  GPB_RETURN_IF_ERROR(RequireAdmin(r.client, "reloading the configuration"));
  if (!options_.reload) return Unsupported("this broker cannot reload");
  GPB_RETURN_IF_ERROR(options_.reload());
  return Reply{wire::EncodeReply(r.id, wire::ReloadReply{})};
}

Status RequestHandler::AcceptingNewWork() const {
  if (stopping_) return Unavailable("the broker is stopping");
  if (draining_) return Unavailable("the broker is draining: no new creates or attaches");
  return Status::Ok();
}

void RequestHandler::SetLimits(const Limits& limits) {
  options_.limits = ResolveLimits(limits);
  if (options_.limits.max_slots == 0 || options_.limits.max_slots > registry_.capacity()) {
    options_.limits.max_slots = registry_.capacity();
  }
  if (options_.limits.max_slots_per_uid == kSlotsPerUidFromCapacity) {
    options_.limits.max_slots_per_uid = std::clamp(registry_.capacity() / 4, 1u, 1024u);
  }
}

std::optional<std::string> RequestHandler::LogAllowance(uint64_t client_id) {
  const ClientEntry* client = table_.FindClient(client_id);
  // A connection the table no longer knows (it has just gone) shares one budget.
  const uid_t uid = client != nullptr ? client->peer.uid : static_cast<uid_t>(-1);
  uint64_t dropped = 0;
  if (!log_budget_.Allow(uid, &dropped)) return std::nullopt;
  return LogBudget::Note(uid, dropped);
}

bool RequestHandler::IsAdmin(const PeerCredentials& peer) const {
  if (peer.uid == 0) return options_.root_is_admin;
  if (peer.uid == ::geteuid()) return true;  // the broker's own user (root: see above)
  if (!options_.admin_group) return false;
  gid_t g = *options_.admin_group;
  return peer.gid == g || std::find(peer.groups.begin(), peer.groups.end(), g) != peer.groups.end();
}

bool RequestHandler::May(const PeerCredentials& peer, const SlotDescriptor& slot, PermissionBit bit) const {
  if (IsAdmin(peer)) return true;
  return ModeAllows(peer, SlotPermissions(slot), bit) && ModeAllows(peer, AllocationPermissions(slot), bit);
}

Status RequestHandler::RequireAdmin(const ClientEntry& client, std::string_view what) const {
  if (IsAdmin(client.peer)) return Status::Ok();
  return PermissionDenied(std::string(what) + " needs root or the admin group");
}

Result<uint32_t> RequestHandler::FindSlot(std::string_view name) const {
  std::optional<uint32_t> index = registry_.Find(name);
  if (!index) return NotFound("no slot named '" + std::string(name) + "'");
  return *index;
}

}  // namespace gpubroker

#include "common/wire.h"

#include "common/validate.h"

namespace gpubroker::wire {
namespace {

template <size_t N>
Status CheckText(const Text<N>& t, std::string_view field) {
  if (!t.terminated()) return ProtocolError(std::string(field) + " is not NUL-terminated");
  return Status::Ok();
}

template <size_t N>
Status CheckZero(const uint8_t (&bytes)[N], std::string_view field) {
  for (uint8_t b : bytes) {
    if (b != 0) return ProtocolError(std::string(field) + " must be zero");
  }
  return Status::Ok();
}

Status CheckReserved(uint64_t value, std::string_view field) {
  return value == 0 ? Status::Ok() : ProtocolError(std::string(field) + " must be zero");
}

Status CheckPage(uint32_t max_entries, uint32_t limit) {
  if (max_entries == 0 || max_entries > limit) {
    return InvalidArgument("max_entries must be 1.." + std::to_string(limit));
  }
  return Status::Ok();
}

template <typename T>
Status CheckListHead(const T& m) {
  if (m.count > MaxRecords<T>()) return ProtocolError("list reply claims too many records");
  return Status::Ok();
}

}  // namespace

Result<Frame> ParseFrame(std::span<const std::byte> bytes) {
  if (bytes.size() < sizeof(Header)) {
    return ProtocolError("message of " + std::to_string(bytes.size()) +
                         " bytes is shorter than the 16-byte header");
  }
  if (bytes.size() > kMaxMessageBytes) {
    return ProtocolError("message exceeds the " + std::to_string(kMaxMessageBytes) + "-byte limit");
  }
  Header h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.magic != kMagic) return ProtocolError("bad magic; not a gpubroker message");
  if (h.version != kProtocolVersion) {
    return ProtocolError("protocol version " + std::to_string(h.version) + " is not supported (want " +
                         std::to_string(kProtocolVersion) + ")");
  }
  if (h.length != bytes.size() - sizeof h) {
    return ProtocolError("header says " + std::to_string(h.length) + " payload bytes, message has " +
                         std::to_string(bytes.size() - sizeof h));
  }
  Frame f;
  f.reply = (h.type & kReplyBit) != 0;
  f.type = static_cast<MsgType>(h.type & ~kReplyBit);
  f.request_id = h.request_id;
  f.payload = bytes.subspan(sizeof h);
  return f;
}

std::vector<std::byte> EncodeRaw(uint16_t type, uint32_t request_id,
                                 std::span<const std::byte> head,
                                 std::span<const std::byte> tail) {
  Header h{kMagic, kProtocolVersion, type, request_id,
           static_cast<uint32_t>(head.size() + tail.size())};
  std::vector<std::byte> out(sizeof h + head.size() + tail.size());
  std::memcpy(out.data(), &h, sizeof h);
  if (!head.empty()) std::memcpy(out.data() + sizeof h, head.data(), head.size());
  if (!tail.empty()) std::memcpy(out.data() + sizeof h + head.size(), tail.data(), tail.size());
  return out;
}

std::vector<std::byte> EncodeError(uint32_t request_id, const Status& status) {
  ErrorReply e{};
  e.code = static_cast<uint16_t>(status.code());
  e.message.set(status.message());
  return EncodeReply(request_id, e);
}

Status Validate(const HelloRequest& m) { return CheckText(m.client_name, "hello.client_name"); }

Status Validate(const CreateRequest& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.name, "create.name"));
  GPB_RETURN_IF_ERROR(CheckText(m.base, "create.base"));
  GPB_RETURN_IF_ERROR(CheckZero(m.reserved, "create.reserved"));
  GPB_RETURN_IF_ERROR(ValidateName(m.name.view()));
  if (!m.base.view().empty()) GPB_RETURN_IF_ERROR(ValidateName(m.base.view()));
  if ((m.flags & ~kCreateKnownFlags) != 0) return InvalidArgument("create has unknown flags");
  if (m.mode > 0777) return InvalidArgument("mode " + std::to_string(m.mode) + " is above 0777");
  if (m.ndim > kMaxDims) {
    return InvalidArgument("ndim " + std::to_string(m.ndim) + " exceeds the limit of " +
                           std::to_string(kMaxDims));
  }
  if (m.backend > static_cast<uint16_t>(BackendKind::kCudaIpc)) {
    return InvalidArgument("unknown backend " + std::to_string(m.backend));
  }
  if (m.device_ordinal < -1) return InvalidArgument("device ordinal must be -1 or above");
  if (m.buffers > kMaxBuffers) {
    return InvalidArgument("buffers " + std::to_string(m.buffers) + " is above the limit of " +
                           std::to_string(kMaxBuffers));
  }
  if (m.buffers != 0 && !m.base.view().empty()) {
    return InvalidArgument("buffers is for new allocations; a view has its allocation's");
  }
  return ValidateDType({m.dtype_code, m.dtype_bits, m.dtype_lanes});
}

Status Validate(const AttachRequest& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.name, "attach.name"));
  if ((m.flags & ~uint32_t{kAttachReadOnly | kAttachWriteRequired}) != 0) {
    return InvalidArgument("attach has unknown flags");
  }
  if ((m.flags & kAttachReadOnly) && (m.flags & kAttachWriteRequired)) {
    return InvalidArgument("attach asks for read-only and for write access at once");
  }
  GPB_RETURN_IF_ERROR(CheckReserved(m.reserved, "attach.reserved"));
  return ValidateName(m.name.view());
}

Status Validate(const DetachRequest&) { return Status::Ok(); }

Status Validate(const DestroyRequest& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.name, "destroy.name"));
  return ValidateName(m.name.view());
}

Status Validate(const StatRequest& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.name, "stat.name"));
  return ValidateName(m.name.view());
}

Status Validate(const ListRequest& m) { return CheckPage(m.max_entries, MaxRecords<ListReply>()); }
Status Validate(const DevicesRequest& m) { return CheckPage(m.max_entries, MaxRecords<DevicesReply>()); }
Status Validate(const DevicesReply& m) { return CheckListHead(m); }
Status Validate(const UsageRequest& m) { return CheckPage(m.max_entries, MaxRecords<UsageReply>()); }
Status Validate(const PeersRequest& m) { return CheckPage(m.max_entries, MaxRecords<PeersReply>()); }
Status Validate(const PeersReply& m) { return CheckListHead(m); }
Status ValidateRecord(const PeerRecord& r) {
  if (!r.role.terminated() || !r.state.terminated() || !r.tree.terminated() || !r.peer.terminated() ||
      !r.last_error.terminated()) {
    return ProtocolError("peer record text is not terminated");
  }
  return Status::Ok();
}
Status Validate(const FollowRequest& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.tree, "follow.tree"));
  GPB_RETURN_IF_ERROR(CheckText(m.from, "follow.from"));
  GPB_RETURN_IF_ERROR(CheckText(m.group, "follow.group"));
  GPB_RETURN_IF_ERROR(ValidateName(m.tree.view()));
  if (m.mode > 0777) return InvalidArgument("follow.mode must be 0..0777");
  return CheckReserved(m.reserved, "follow.reserved");
}
Status Validate(const FollowReply&) { return Status::Ok(); }
Status Validate(const UnfollowRequest& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.tree, "unfollow.tree"));
  GPB_RETURN_IF_ERROR(ValidateName(m.tree.view()));
  if ((m.flags & ~kUnfollowRemove) != 0) return InvalidArgument("unfollow.flags has unknown bits");
  return CheckReserved(m.reserved, "unfollow.reserved");
}
Status Validate(const UnfollowReply&) { return Status::Ok(); }
Status Validate(const UsageReply& m) { return CheckListHead(m); }
Status ValidateRecord(const UsageRecord& r) {
  GPB_RETURN_IF_ERROR(CheckReserved(r.reserved, "usage.reserved"));
  if ((r.flags & ~kUsageExempt) != 0) return ProtocolError("usage.flags has unknown bits");
  return Status::Ok();
}
Status ValidateRecord(const DeviceRecord& r) {
  return r.ordinal >= 0 ? Status::Ok() : ProtocolError("device ordinal " + std::to_string(r.ordinal) + " is negative");
}

Status Validate(const ClientsRequest& m) {
  return CheckPage(m.max_entries, MaxRecords<ClientsReply>());
}
Status Validate(const LeasesRequest& m) { return CheckPage(m.max_entries, MaxRecords<LeasesReply>()); }
Status Validate(const StatusRequest& m) { return CheckReserved(m.reserved, "status.reserved"); }
Status Validate(const ShutdownRequest& m) { return CheckReserved(m.reserved, "shutdown.reserved"); }

Status Validate(const DrainRequest& m) {
  if (m.on > 1) return InvalidArgument("drain.on must be 0 or 1");
  return CheckReserved(m.reserved, "drain.reserved");
}
Status Validate(const ReloadRequest& m) { return CheckReserved(m.reserved, "reload.reserved"); }
Status Validate(const DrainReply&) { return Status::Ok(); }
Status Validate(const ReloadReply&) { return Status::Ok(); }

Status Validate(const HelloReply& m) { return CheckText(m.registry_name, "hello.registry_name"); }

Status Validate(const AttachReply& m) {
  if (m.has_fd > 1 || (m.access & ~uint32_t{kAccessRead | kAccessWrite}) != 0) {
    return ProtocolError("attach reply has bad flags");
  }
  return ValidateDescriptor(m.slot);
}

Status Validate(const SlotReply& m) { return ValidateDescriptor(m.slot); }
Status Validate(const DetachReply&) { return Status::Ok(); }
Status Validate(const DestroyReply&) { return Status::Ok(); }
Status Validate(const ListReply& m) { return CheckListHead(m); }
Status Validate(const ClientsReply& m) { return CheckListHead(m); }
Status Validate(const LeasesReply& m) { return CheckListHead(m); }

Status Validate(const StatusReply& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.registry_name, "status.registry_name"));
  return CheckText(m.broker_version, "status.broker_version");
}

Status Validate(const ShutdownReply&) { return Status::Ok(); }

Status Validate(const WriteBeginRequest& m) { return CheckReserved(m.reserved, "write_begin.reserved"); }
Status Validate(const CommitRequest& m) {
  if ((m.flags & ~kCommitKnownFlags) != 0) return InvalidArgument("commit has unknown flags");
  if (m.buffer < 0 || m.buffer >= static_cast<int32_t>(kMaxBuffers)) {
    return InvalidArgument("commit names buffer " + std::to_string(m.buffer));
  }
  return Status::Ok();
}
Status Validate(const AcquireRequest& m) {  // any release_pin: one not held is ignored
  if ((m.flags & ~kAcquireCarried) != 0) return ProtocolError("acquire.flags has unknown bits");
  if ((m.flags & kAcquireCarried) != 0 && (m.buffer < 0 || m.buffer >= static_cast<int32_t>(kMaxBuffers))) {
    return InvalidArgument("acquire of a carried pin names buffer " + std::to_string(m.buffer));
  }
  return Status::Ok();
}
Status Validate(const ReleaseRequest& m) {
  return m.pin == 0 ? InvalidArgument("release of pin 0") : Status::Ok();
}
Status Validate(const WriteBeginReply& m) {
  if (m.nbuffers == 0 || m.nbuffers > kMaxBuffers || m.buffer < 0 ||
      m.buffer >= static_cast<int32_t>(m.nbuffers)) {
    return ProtocolError("write_begin reply names buffer " + std::to_string(m.buffer) + " of " +
                         std::to_string(m.nbuffers));
  }
  return Status::Ok();
}
Status Validate(const CommitReply&) { return Status::Ok(); }
Status Validate(const AcquireReply& m) {
  if (m.version == 0 || m.pin == 0 || m.buffer < 0 || m.buffer >= static_cast<int32_t>(kMaxBuffers) ||
      (m.flags & ~uint32_t{kAcquireWriting}) != 0) {
    return ProtocolError("acquire reply names version " + std::to_string(m.version) + " in buffer " +
                         std::to_string(m.buffer));
  }
  return Status::Ok();
}
Status Validate(const ReleaseReply& m) {
  return m.released > 1 ? ProtocolError("release reply is malformed") : Status::Ok();
}

Status Validate(const ErrorReply& m) {
  GPB_RETURN_IF_ERROR(CheckText(m.message, "error.message"));
  if (m.code == 0 || m.code > static_cast<uint16_t>(Code::kBusy)) {
    return ProtocolError("error reply has unknown code " + std::to_string(m.code));
  }
  return Status::Ok();
}

Status Validate(const Notice& m) { return CheckText(m.message, "notice.message"); }

Status ValidateRecord(const SlotDescriptor& r) { return ValidateDescriptor(r); }
Status ValidateRecord(const ClientRecord& r) { return CheckText(r.name, "client.name"); }
Status ValidateRecord(const LeaseRecord& r) { return CheckText(r.slot, "lease.slot"); }

std::string TypeName(uint16_t type) {
  switch (static_cast<MsgType>(type & ~kReplyBit)) {
    case MsgType::kHello: return "hello";
    case MsgType::kCreate: return "create";
    case MsgType::kAttach: return "attach";
    case MsgType::kDetach: return "detach";
    case MsgType::kDestroy: return "destroy";
    case MsgType::kList: return "list";
    case MsgType::kStat: return "stat";
    case MsgType::kClients: return "clients";
    case MsgType::kLeases: return "leases";
    case MsgType::kStatus: return "status";
    case MsgType::kShutdown: return "shutdown";
    case MsgType::kDrain: return "drain";
    case MsgType::kReload: return "reload";
    case MsgType::kDevices: return "devices";
    case MsgType::kWriteBegin: return "write_begin";
    case MsgType::kCommit: return "commit";
    case MsgType::kAcquire: return "acquire";
    case MsgType::kRelease: return "release";
    case MsgType::kUsage: return "usage";
    case MsgType::kPeers: return "peers";
    case MsgType::kFollow: return "follow";
    case MsgType::kUnfollow: return "unfollow";
    case MsgType::kNotice: return "notice";
    case MsgType::kError: return "error";
  }
  return "type " + std::to_string(type);
}

}  // namespace gpubroker::wire

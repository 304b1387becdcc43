// libFuzzer target: the protocol decoder. Any bytes a peer can send go
// through ParseFrame and the payload decoder of every message type; nothing
// may crash, and whatever decodes must satisfy the validators' guarantees.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/validate.h"
#include "common/wire.h"

using namespace gpubroker;
using namespace gpubroker::wire;

namespace {

void Require(bool ok) {
  if (!ok) std::abort();
}

template <Payload T>
void Try(const Frame& f) {
  auto m = Decode<T>(f.payload);
  if (m.ok()) Require(Validate(*m).ok());
}

template <ListPayload T>
void TryList(const Frame& f) {
  auto m = DecodeList<T>(f.payload);
  if (m.ok()) Require(m->records.size() == m->head.count && m->head.count <= MaxRecords<T>());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto frame = ParseFrame(std::span(reinterpret_cast<const std::byte*>(data), size));
  if (!frame.ok()) return 0;
  const Frame& f = *frame;
  Require(f.payload.size() + sizeof(Header) == size);
  switch (f.type) {
    case MsgType::kHello: Try<HelloRequest>(f); Try<HelloReply>(f); break;
    case MsgType::kCreate: {
      auto m = Decode<CreateRequest>(f.payload);
      if (m.ok()) {
        Require(m->name.terminated() && ValidateName(m->name.view()).ok() && m->ndim <= kMaxDims);
        Require(m->mode <= 0777 && (m->flags & ~kCreateKnownFlags) == 0);
      }
      break;
    }
    case MsgType::kAttach: Try<AttachRequest>(f); Try<AttachReply>(f); break;
    case MsgType::kDetach: Try<DetachRequest>(f); Try<DetachReply>(f); break;
    case MsgType::kDestroy: Try<DestroyRequest>(f); Try<DestroyReply>(f); break;
    case MsgType::kList: Try<ListRequest>(f); TryList<ListReply>(f); break;
    case MsgType::kStat: Try<StatRequest>(f); Try<SlotReply>(f); break;
    case MsgType::kClients: Try<ClientsRequest>(f); TryList<ClientsReply>(f); break;
    case MsgType::kDevices: Try<DevicesRequest>(f); TryList<DevicesReply>(f); break;
    case MsgType::kLeases: Try<LeasesRequest>(f); TryList<LeasesReply>(f); break;
    case MsgType::kStatus: Try<StatusRequest>(f); Try<StatusReply>(f); break;
    case MsgType::kShutdown: Try<ShutdownRequest>(f); Try<ShutdownReply>(f); break;
    case MsgType::kDrain: Try<DrainRequest>(f); Try<DrainReply>(f); break;
    case MsgType::kReload: Try<ReloadRequest>(f); Try<ReloadReply>(f); break;
    case MsgType::kWriteBegin: Try<WriteBeginRequest>(f); Try<WriteBeginReply>(f); break;
    case MsgType::kCommit: Try<CommitRequest>(f); Try<CommitReply>(f); break;
    case MsgType::kAcquire: Try<AcquireRequest>(f); Try<AcquireReply>(f); break;
    case MsgType::kRelease: Try<ReleaseRequest>(f); Try<ReleaseReply>(f); break;
    case MsgType::kUsage: Try<UsageRequest>(f); TryList<UsageReply>(f); break;
    case MsgType::kPeers: Try<PeersRequest>(f); TryList<PeersReply>(f); break;
    case MsgType::kFollow: {
      auto m = Decode<FollowRequest>(f.payload);
      if (m.ok()) Require(m->tree.terminated() && ValidateName(m->tree.view()).ok() && m->mode <= 0777);
      Try<FollowReply>(f);
      break;
    }
    case MsgType::kUnfollow: Try<UnfollowRequest>(f); Try<UnfollowReply>(f); break;
    case MsgType::kNotice: Try<Notice>(f); break;
    case MsgType::kError: Try<ErrorReply>(f); break;
  }
  return 0;
}

// Versions (docs/live.md): writers begin and commit buffers, readers pin the
// newest committed one. The rules live here, in the broker's one thread; the
// registry's live record is how readers see the outcome without asking.
#include <spdlog/spdlog.h>

#include "broker/request_handler.h"

namespace gpubroker {
namespace {

std::string Who(const ClientEntry& c) {
  return "client " + std::to_string(c.id) + " (pid " + std::to_string(c.peer.pid) + ")";
}

}  // namespace

SlotDescriptor RequestHandler::Current(const SlotDescriptor& d) const {
  SlotDescriptor out = d;
  if (d.live_index < registry_.capacity()) {
    const LiveState& s = registry_.GetLive(d.live_index);
    if (s.allocation_id == d.allocation_id) {
      out.version = s.version;
      if (s.version != 0) out.updated_ns = s.committed_ns;
    }
  }
  return out;
}

Result<Allocation*> RequestHandler::LeasedAllocation(ClientEntry& client, uint64_t allocation_id,
                                                     bool write) {
  auto lease = client.leases.find(allocation_id);
  if (lease == client.leases.end()) {
    return NotFound("this client holds no lease on allocation " + std::to_string(allocation_id) +
                    ": attach one of its slots first");
  }
  if (write && !lease->second.writable) {
    return PermissionDenied("allocation " + std::to_string(allocation_id) + " (slot '" + lease->second.slot +
                            "') was attached without write access");
  }
  Allocation* a = table_.FindAllocation(allocation_id);
  if (a == nullptr || a->live_index == kNoLiveRecord) return Internal("leased allocation is missing");
  return a;
}

void RequestHandler::Publish(const Allocation& a, Versions::Wake wake) {
  registry_.UpdateLive(a.live_index, a.versions.state(), wake.readers, wake.writers);
}

Result<Reply> RequestHandler::OnWriteBegin(Request r, const wire::WriteBeginRequest& m) {
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(r.client, m.allocation_id, true));
  Versions::Wake wake;
  GPB_ASSIGN_OR_RETURN(int32_t chosen, a->versions.Begin(r.client.id, r.client.peer.pid, wake));
  Publish(*a, wake);
  const LiveState& s = a->versions.state();
  wire::WriteBeginReply reply{s.version, s.writes, chosen, s.nbuffers};
  return Reply{wire::EncodeReply(r.id, reply)};
}

Result<Reply> RequestHandler::OnCommit(Request r, const wire::CommitRequest& m) {
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(r.client, m.allocation_id, true));
  Versions::Wake wake;
  if (m.flags & wire::kCommitAbort) {
    GPB_RETURN_IF_ERROR(a->versions.Abort(r.client.id, m.buffer, wake));
    spdlog::debug("allocation {}: {} gave buffer {} back unpublished", a->id, Who(r.client), m.buffer);
    Publish(*a, wake);
    return Reply{wire::EncodeReply(r.id, wire::CommitReply{0})};
  }
  GPB_ASSIGN_OR_RETURN(uint64_t version, a->versions.Commit(r.client.id, m.buffer, NowNs(), wake));
  Publish(*a, wake);
  if (options_.committed) options_.committed(a->id);
  return Reply{wire::EncodeReply(r.id, wire::CommitReply{version})};
}

size_t RequestHandler::ExpireCarriedPins(std::chrono::steady_clock::time_point now) {
  size_t dropped = 0;
  for (const auto& [id, entry] : table_.allocations()) {
    Allocation* a = table_.FindAllocation(id);
    if (a->live_index == kNoLiveRecord) continue;
    Versions::Wake wake;
    const uint32_t held = a->versions.ExpireCarried(now, wake);
    if (held == 0) continue;
    Publish(*a, wake);
    spdlog::info("allocation {}: {} pin(s) carried over the restart dropped: their readers did not come back "
                 "within {} s",
                 id, held, std::chrono::duration_cast<std::chrono::seconds>(kCarriedPinGrace).count());
    dropped += held;
  }
  return dropped;
}

Result<Reply> RequestHandler::OnAcquire(Request r, const wire::AcquireRequest& m) {
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(r.client, m.allocation_id, false));
  Versions::Wake wake;
  // A reader that held `m.version` in `m.buffer` from the broker before a
  // warm restart takes that pin over: no new count, the carried one
  // becomes its own.
  Result<Pin> pin = (m.flags & wire::kAcquireCarried) != 0
                        ? a->versions.TakeOverCarried(r.client.id, last_pin_ + 1, m.buffer, m.version, wake)
                        : a->versions.Acquire(r.client.id, last_pin_ + 1, m.release_pin, wake);
  if (!pin.ok()) return pin.status();
  ++last_pin_;
  Publish(*a, wake);
  const LiveState& s = a->versions.state();
  wire::AcquireReply reply{};
  reply.version = pin->version;
  reply.writes = s.writes;
  reply.committed_ns = s.committed_ns;
  reply.buffer = pin->buffer;
  reply.pin = pin->id;
  if (s.nbuffers == 1 && s.writing >= 0) reply.flags |= wire::kAcquireWriting;
  return Reply{wire::EncodeReply(r.id, reply)};
}

Result<Reply> RequestHandler::OnRelease(Request r, const wire::ReleaseRequest& m) {
  Allocation* a = table_.FindAllocation(m.allocation_id);
  size_t held = 0;
  if (a != nullptr && a->live_index != kNoLiveRecord) {
    Versions::Wake wake;
    held = a->versions.Release(r.client.id, m.pin, wake);
    if (held != 0) Publish(*a, wake);
  }
  return Reply{wire::EncodeReply(r.id, wire::ReleaseReply{held != 0 ? 1u : 0u, 0})};
}

void RequestHandler::ForgetLiveState(ClientEntry& client, uint64_t allocation_id) {
  Allocation* a = table_.FindAllocation(allocation_id);
  if (a == nullptr || a->live_index == kNoLiveRecord) return;
  Versions::Wake wake;
  const int32_t abandoned = a->versions.Forget(client.id, wake);
  Publish(*a, wake);
  // Within the writer's budget: a write begun and dropped in a loop cannot flood the log.
  if (abandoned >= 0 && log_budget_.Allow(client.peer.uid)) {
    spdlog::info("allocation {}: the write into buffer {} was abandoned", a->id, abandoned);
  }
}

}  // namespace gpubroker

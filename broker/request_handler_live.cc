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

Result<Reply> RequestHandler::OnWriteBegin(Request r, const wire::WriteBeginRequest& m) {
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(r.client, m.allocation_id, true));
  LiveState s = registry_.GetLive(a->live_index);
  if (a->writer == r.client.id) {
    return InvalidArgument("this client is already writing buffer " + std::to_string(s.writing) +
                           " of allocation " + std::to_string(a->id) + ": commit or abort it first");
  }
  if (a->writer != 0) {
    const ClientEntry* other = table_.FindClient(a->writer);
    return Busy("allocation " + std::to_string(a->id) + " is being written by " +
                (other != nullptr ? Who(*other) : "another client") + "; one writer at a time");
  }
  int32_t chosen = -1;
  if (s.nbuffers == 1) {
    chosen = 0;  // in place: readers learn from `writes` that their read may be torn
  } else {
    // A buffer nobody pins that does not hold the newest version; the
    // oldest such, so the versions readers may still want go last.
    for (uint32_t b = 0; b < s.nbuffers; ++b) {
      if (static_cast<int32_t>(b) == s.buffer || s.pins[b] != 0) continue;
      if (chosen < 0 || s.buffer_version[b] < s.buffer_version[chosen]) chosen = static_cast<int32_t>(b);
    }
    if (chosen < 0) {
      std::string pins;
      for (uint32_t b = 0; b < s.nbuffers; ++b) {
        pins += (b ? ", " : "") + std::to_string(s.pins[b]);
      }
      return Busy("every buffer of allocation " + std::to_string(a->id) +
                  " is pinned by readers or holds the newest version (pins per buffer: " + pins +
                  "); wait for a release, or create the slot with more buffers");
    }
    s.buffer_version[chosen] = 0;
  }
  s.writing = chosen;
  s.writer_pid = r.client.peer.pid;
  ++s.writes;
  a->writer = r.client.id;
  registry_.UpdateLive(a->live_index, s, false, false);
  wire::WriteBeginReply reply{s.version, s.writes, chosen, s.nbuffers};
  return Reply{wire::EncodeReply(r.id, reply)};
}

Result<Reply> RequestHandler::OnCommit(Request r, const wire::CommitRequest& m) {
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(r.client, m.allocation_id, true));
  LiveState s = registry_.GetLive(a->live_index);
  if (a->writer != r.client.id || s.writing != m.buffer) {
    return InvalidArgument("this client is not writing buffer " + std::to_string(m.buffer) + " of allocation " +
                           std::to_string(a->id) + " (begin a write first)");
  }
  if (m.flags & wire::kCommitAbort) {
    spdlog::debug("allocation {}: {} gave buffer {} back unpublished", a->id, Who(r.client), m.buffer);
    EndWrite(*a, false);
    return Reply{wire::EncodeReply(r.id, wire::CommitReply{0})};
  }
  a->writer = 0;
  s.writing = -1;
  s.writer_pid = 0;
  ++s.version;
  s.buffer = m.buffer;
  s.buffer_version[m.buffer] = s.version;
  s.committed_ns = NowNs();
  registry_.UpdateLive(a->live_index, s, true, true);
  return Reply{wire::EncodeReply(r.id, wire::CommitReply{s.version})};
}

void RequestHandler::EndWrite(Allocation& a, bool abandoned) {
  LiveState s = registry_.GetLive(a.live_index);
  if (s.writing >= 0) {
    s.buffer_version[s.writing] = 0;  // reclaimed, unpublished
    // One buffer is written in place: a write that ends uncommitted leaves
    // no whole version until the next commit (readers wait for it).
    if (s.nbuffers == 1) s.buffer = -1;
  }
  if (abandoned) {  // within the writer's budget: a write begun and dropped in a loop cannot flood the log
    const ClientEntry* writer = table_.FindClient(a.writer);
    if (log_budget_.Allow(writer != nullptr ? writer->peer.uid : a.perms.uid)) {
      spdlog::info("allocation {}: the write into buffer {} was abandoned", a.id, s.writing);
    }
  }
  s.writing = -1;
  s.writer_pid = 0;
  a.writer = 0;
  registry_.UpdateLive(a.live_index, s, false, true);
}

size_t RequestHandler::ExpireCarriedPins(std::chrono::steady_clock::time_point now) {
  size_t dropped = 0;
  for (const auto& [id, entry] : table_.allocations()) {
    Allocation* a = table_.FindAllocation(id);
    uint32_t held = 0;
    for (uint32_t n : a->carried) held += n;
    if (held == 0 || now < a->carried_until || a->live_index == kNoLiveRecord) continue;
    LiveState s = registry_.GetLive(a->live_index);
    for (uint32_t b = 0; b < kMaxBuffers; ++b) s.pins[b] -= std::min(s.pins[b], a->carried[b]);
    a->carried.fill(0);
    registry_.UpdateLive(a->live_index, s, false, true);
    spdlog::info("allocation {}: {} pin(s) carried over the restart dropped: their readers did not come back "
                 "within {} s",
                 id, held, std::chrono::duration_cast<std::chrono::seconds>(kCarriedPinGrace).count());
    dropped += held;
  }
  return dropped;
}

// A reader that held `m.version` in `m.buffer` from the broker before a warm
// restart takes that pin over: no new count, the carried one becomes its own.
Result<Reply> RequestHandler::TakeOverCarriedPin(Request r, Allocation& a, const wire::AcquireRequest& m) {
  LiveState s = registry_.GetLive(a.live_index);
  const auto b = static_cast<uint32_t>(m.buffer);
  if (b >= s.nbuffers || a.carried[b] == 0 || s.buffer_version[b] != m.version) {
    return NotFound("no pin on version " + std::to_string(m.version) + " in buffer " + std::to_string(b) +
                    " of allocation " + std::to_string(a.id) +
                    " was carried over the restart (or its time ran out): the version may have been overwritten");
  }
  --a.carried[b];
  Pin pin{m.version, m.buffer, ++last_pin_};
  r.client.pins[a.id].emplace(pin.id, pin);
  wire::AcquireReply reply{};
  reply.version = m.version;
  reply.writes = s.writes;
  reply.committed_ns = s.committed_ns;
  reply.buffer = m.buffer;
  reply.pin = pin.id;
  return Reply{wire::EncodeReply(r.id, reply)};
}

Result<Reply> RequestHandler::OnAcquire(Request r, const wire::AcquireRequest& m) {
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(r.client, m.allocation_id, false));
  if ((m.flags & wire::kAcquireCarried) != 0) return TakeOverCarriedPin(r, *a, m);
  LiveState s = registry_.GetLive(a->live_index);
  if (s.version == 0) {
    return NotFound("nothing has been committed to allocation " + std::to_string(a->id) + " yet");
  }
  if (s.buffer < 0) {
    return NotFound("allocation " + std::to_string(a->id) + " holds no whole version: a write into its one buffer " +
                    "ended without a commit (version " + std::to_string(s.version) +
                    " was overwritten in place); the next commit makes one");
  }
  std::map<uint64_t, Pin>& held = r.client.pins[a->id];
  // A reader holds the version it reads and the next; a bound keeps a
  // client that never releases from growing the table. The pin this acquire
  // releases does not count.
  const size_t holding = held.size() - (m.release_pin != 0 && held.count(m.release_pin) != 0 ? 1 : 0);
  if (holding > s.nbuffers) {
    return Busy("this connection holds " + std::to_string(holding) + " pins on allocation " +
                std::to_string(a->id) + ", one more than it has buffers: release one first");
  }
  Pin pin{s.version, s.buffer, ++last_pin_};
  held.emplace(pin.id, pin);
  ++s.pins[s.buffer];
  registry_.UpdateLive(a->live_index, s, false, false);
  // The new pin first: the version the reader moves to is never unpinned.
  if (m.release_pin != 0 && m.release_pin != pin.id) DropPins(r.client, a->id, m.release_pin);
  wire::AcquireReply reply{};
  reply.version = s.version;
  reply.writes = s.writes;
  reply.committed_ns = s.committed_ns;
  reply.buffer = s.buffer;
  reply.pin = pin.id;
  if (s.nbuffers == 1 && s.writing >= 0) reply.flags |= wire::kAcquireWriting;
  return Reply{wire::EncodeReply(r.id, reply)};
}

Result<Reply> RequestHandler::OnRelease(Request r, const wire::ReleaseRequest& m) {
  bool held = DropPins(r.client, m.allocation_id, m.pin) != 0;
  return Reply{wire::EncodeReply(r.id, wire::ReleaseReply{held ? 1u : 0u, 0})};
}

size_t RequestHandler::DropPins(ClientEntry& client, uint64_t allocation_id, std::optional<uint64_t> pin_id) {
  auto it = client.pins.find(allocation_id);
  if (it == client.pins.end()) return 0;
  std::vector<Pin> dropped;
  for (auto p = it->second.begin(); p != it->second.end();) {
    if (pin_id && p->first != *pin_id) {
      ++p;
      continue;
    }
    dropped.push_back(p->second);
    p = it->second.erase(p);
  }
  if (it->second.empty()) client.pins.erase(it);
  Allocation* a = table_.FindAllocation(allocation_id);
  if (dropped.empty() || a == nullptr || a->live_index == kNoLiveRecord) return dropped.size();
  LiveState s = registry_.GetLive(a->live_index);
  for (const Pin& pin : dropped) {
    if (pin.buffer >= 0 && s.pins[pin.buffer] > 0) --s.pins[pin.buffer];
  }
  registry_.UpdateLive(a->live_index, s, false, true);
  return dropped.size();
}

void RequestHandler::ForgetLiveState(ClientEntry& client, uint64_t allocation_id) {
  DropPins(client, allocation_id, std::nullopt);
  Allocation* a = table_.FindAllocation(allocation_id);
  if (a != nullptr && a->writer == client.id) EndWrite(*a, true);
}

}  // namespace gpubroker

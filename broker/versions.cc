#include "broker/versions.h"

#include <cstdio>
#include <cstdlib>

namespace gpubroker {
namespace {

const std::map<uint64_t, Pin> kNoPins;

std::string Of(const LiveState& s) { return " of allocation " + std::to_string(s.allocation_id); }

}  // namespace

Versions Versions::New(uint64_t allocation_id, uint32_t buffers, uint64_t now_ns) {
  Versions v;
  v.s_.allocation_id = allocation_id;
  v.s_.nbuffers = buffers == 0 ? 1 : buffers;
  v.s_.buffer = -1;
  v.s_.writing = -1;
  if (buffers == 0) {
    v.s_.version = 1;
    v.s_.buffer = 0;
    v.s_.buffer_version[0] = 1;
    v.s_.committed_ns = now_ns;
  }
  v.Checked();
  return v;
}

Versions Versions::Adopted(LiveState previous, Clock::time_point carried_until) {
  Versions v;
  v.s_ = previous;
  LiveState& s = v.s_;
  if (s.writing >= 0 && static_cast<uint32_t>(s.writing) < s.nbuffers) {  // abandoned, as at a disconnect
    s.buffer_version[s.writing] = 0;
    if (s.nbuffers == 1) s.buffer = -1;  // written in place: nothing whole until a commit
    ++s.writes;
  }
  s.writing = -1;
  s.writer_pid = 0;
  for (uint32_t b = 0; b < kMaxBuffers; ++b) {
    // Only a pin on a whole version is worth keeping.
    if (b >= s.nbuffers || s.buffer_version[b] == 0) s.pins[b] = 0;
    v.carried_[b] = s.pins[b];
  }
  v.carried_until_ = carried_until;
  return v;  // the caller checks it: a bad record from the last broker is dropped, not asserted on
}

const std::map<uint64_t, Pin>& Versions::PinsOf(uint64_t client) const {
  auto it = pins_.find(client);
  return it == pins_.end() ? kNoPins : it->second;
}

uint32_t Versions::carried() const {
  uint32_t n = 0;
  for (uint32_t c : carried_) n += c;
  return n;
}

Result<int32_t> Versions::Begin(uint64_t client, pid_t pid, Wake& wake) {
  if (writer_ == client) {
    return InvalidArgument("this client is already writing buffer " + std::to_string(s_.writing) + Of(s_) +
                           ": commit or abort it first");
  }
  if (writer_ != 0) {
    return Busy("allocation " + std::to_string(s_.allocation_id) + " is being written by client " +
                std::to_string(writer_) + " (pid " + std::to_string(s_.writer_pid) + "); one writer at a time");
  }
  int32_t chosen = -1;
  if (s_.nbuffers == 1) {
    chosen = 0;  // in place: readers learn from `writes` that their read may be torn
  } else {
    // A buffer nobody pins that does not hold the newest version; the
    // oldest such, so the versions readers may still want go last.
    for (uint32_t b = 0; b < s_.nbuffers; ++b) {
      if (static_cast<int32_t>(b) == s_.buffer || s_.pins[b] != 0) continue;
      if (chosen < 0 || s_.buffer_version[b] < s_.buffer_version[chosen]) chosen = static_cast<int32_t>(b);
    }
    if (chosen < 0) {
      std::string pins;
      for (uint32_t b = 0; b < s_.nbuffers; ++b) pins += (b ? ", " : "") + std::to_string(s_.pins[b]);
      return Busy("every buffer" + Of(s_) + " is pinned by readers or holds the newest version (pins per buffer: " +
                  pins + "); wait for a release, or create the slot with more buffers");
    }
    s_.buffer_version[chosen] = 0;
  }
  s_.writing = chosen;
  s_.writer_pid = pid;
  ++s_.writes;
  writer_ = client;
  wake = {};
  Checked();
  return chosen;
}

Result<uint64_t> Versions::Commit(uint64_t client, int32_t buffer, uint64_t now_ns, Wake& wake, uint64_t at) {
  if (writer_ != client || s_.writing != buffer) {
    return InvalidArgument("this client is not writing buffer " + std::to_string(buffer) + Of(s_) +
                           " (begin a write first)");
  }
  if (at != 0 && at <= s_.version) {
    return InvalidArgument("version " + std::to_string(at) + Of(s_) + " is not above its newest, " +
                           std::to_string(s_.version));
  }
  writer_ = 0;
  s_.writing = -1;
  s_.writer_pid = 0;
  s_.version = at != 0 ? at : s_.version + 1;
  s_.buffer = buffer;
  s_.buffer_version[buffer] = s_.version;
  s_.committed_ns = now_ns;
  wake = {true, true};
  Checked();
  return s_.version;
}

Status Versions::Abort(uint64_t client, int32_t buffer, Wake& wake) {
  if (writer_ != client || s_.writing != buffer) {
    return InvalidArgument("this client is not writing buffer " + std::to_string(buffer) + Of(s_) +
                           " (begin a write first)");
  }
  EndWrite(wake);
  Checked();
  return Status::Ok();
}

void Versions::EndWrite(Wake& wake) {
  if (s_.writing >= 0) {
    s_.buffer_version[s_.writing] = 0;  // reclaimed, unpublished
    // One buffer is written in place: a write that ends uncommitted leaves
    // no whole version until the next commit (readers wait for it).
    if (s_.nbuffers == 1) s_.buffer = -1;
  }
  s_.writing = -1;
  s_.writer_pid = 0;
  writer_ = 0;
  wake.writers = true;
}

Result<Pin> Versions::Acquire(uint64_t client, uint64_t pin_id, uint64_t release_pin, Wake& wake) {
  if (s_.version == 0) return NotFound("nothing has been committed to allocation " + std::to_string(s_.allocation_id) + " yet");
  if (s_.buffer < 0) {
    return NotFound("allocation " + std::to_string(s_.allocation_id) +
                    " holds no whole version: a write into its one buffer ended without a commit (version " +
                    std::to_string(s_.version) + " was overwritten in place); the next commit makes one");
  }
  std::map<uint64_t, Pin>& held = pins_[client];
  // A reader holds the version it reads and the next; a bound keeps a
  // client that never releases from growing the table. The pin this acquire
  // releases does not count.
  const size_t holding = held.size() - (release_pin != 0 && held.count(release_pin) != 0 ? 1 : 0);
  if (holding > s_.nbuffers) {
    if (held.empty()) pins_.erase(client);
    return Busy("this connection holds " + std::to_string(holding) + " pins" + Of(s_) +
                ", one more than it has buffers: release one first");
  }
  Pin pin{s_.version, s_.buffer, pin_id};
  held.emplace(pin.id, pin);
  ++s_.pins[s_.buffer];
  wake = {};
  // The new pin first: the version the reader moves to is never unpinned.
  if (release_pin != 0 && release_pin != pin.id) Release(client, release_pin, wake);
  Checked();
  return pin;
}

Result<Pin> Versions::TakeOverCarried(uint64_t client, uint64_t pin_id, int32_t buffer, uint64_t version,
                                      Wake& wake) {
  const auto b = static_cast<uint32_t>(buffer);
  if (buffer < 0 || b >= s_.nbuffers || carried_[b] == 0 || s_.buffer_version[b] != version) {
    return NotFound("no pin on version " + std::to_string(version) + " in buffer " + std::to_string(buffer) + Of(s_) +
                    " was carried over the restart (or its time ran out): the version may have been overwritten");
  }
  --carried_[b];  // no new count: the carried one becomes the client's
  Pin pin{version, buffer, pin_id};
  pins_[client].emplace(pin.id, pin);
  wake = {};
  Checked();
  return pin;
}

size_t Versions::Release(uint64_t client, std::optional<uint64_t> pin, Wake& wake) {
  auto it = pins_.find(client);
  if (it == pins_.end()) return 0;
  size_t dropped = 0;
  for (auto p = it->second.begin(); p != it->second.end();) {
    if (pin && p->first != *pin) {
      ++p;
      continue;
    }
    if (p->second.buffer >= 0 && s_.pins[p->second.buffer] > 0) --s_.pins[p->second.buffer];
    p = it->second.erase(p);
    ++dropped;
  }
  if (it->second.empty()) pins_.erase(it);
  if (dropped != 0) wake.writers = true;
  Checked();
  return dropped;
}

int32_t Versions::Forget(uint64_t client, Wake& wake) {
  Release(client, std::nullopt, wake);
  if (writer_ != client) return -1;
  const int32_t abandoned = s_.writing;
  EndWrite(wake);
  Checked();
  return abandoned;
}

uint32_t Versions::ExpireCarried(Clock::time_point now, Wake& wake) {
  const uint32_t held = carried();
  if (held == 0 || now < carried_until_) return 0;
  for (uint32_t b = 0; b < kMaxBuffers; ++b) s_.pins[b] -= std::min(s_.pins[b], carried_[b]);
  carried_.fill(0);
  wake.writers = true;
  Checked();
  return held;
}

std::string Versions::CheckInvariants() const {
  if (s_.nbuffers == 0 || s_.nbuffers > kMaxBuffers) return "nbuffers " + std::to_string(s_.nbuffers);
  std::array<uint32_t, kMaxBuffers> counted = carried_;
  for (const auto& [client, held] : pins_) {
    if (held.empty()) return "client " + std::to_string(client) + " has an empty pin list";
    for (const auto& [id, pin] : held) {
      if (pin.buffer < 0 || static_cast<uint32_t>(pin.buffer) >= s_.nbuffers) return "a pin on no buffer";
      if (id != pin.id) return "a pin filed under another id";
      ++counted[pin.buffer];
    }
  }
  for (uint32_t b = 0; b < kMaxBuffers; ++b) {
    if (counted[b] != s_.pins[b]) {
      return "buffer " + std::to_string(b) + ": the record counts " + std::to_string(s_.pins[b]) +
             " pins, the holders " + std::to_string(counted[b]);
    }
    if (b >= s_.nbuffers && (s_.buffer_version[b] != 0 || carried_[b] != 0)) return "state past the last buffer";
  }
  if ((writer_ != 0) != (s_.writing >= 0)) return "a writer without a buffer being written, or the reverse";
  if (s_.writing >= 0) {
    if (static_cast<uint32_t>(s_.writing) >= s_.nbuffers) return "writing past the last buffer";
    if (s_.nbuffers > 1 && s_.writing == s_.buffer) return "writing the buffer of the newest version";
    if (s_.nbuffers > 1 && s_.pins[s_.writing] != 0) return "writing a pinned buffer";
  }
  if (s_.buffer >= 0) {
    if (static_cast<uint32_t>(s_.buffer) >= s_.nbuffers) return "the newest version past the last buffer";
    if (s_.buffer_version[s_.buffer] != s_.version && !(s_.nbuffers == 1 && s_.writing == 0)) {
      return "the newest buffer holds version " + std::to_string(s_.buffer_version[s_.buffer]) + ", not " +
             std::to_string(s_.version);
    }
  } else if (s_.nbuffers > 1 && s_.version != 0) {
    return "a committed version in no buffer";
  }
  for (uint32_t b = 0; b < s_.nbuffers; ++b) {
    if (s_.buffer_version[b] > s_.version) return "a buffer ahead of the newest version";
  }
  return "";
}

void Versions::Checked() const {
#if !defined(NDEBUG) || defined(GPUBROKER_CHECK_VERSIONS)
  // Every transition, in debug builds and in the sanitized ones CI runs
  // (which define NDEBUG): a broken rule ends the broker, saying which.
  const std::string broken = CheckInvariants();
  if (!broken.empty()) {
    std::fprintf(stderr, "gpubrokerd: a version rule broke%s: %s (Versions::CheckInvariants)\n", Of(s_).c_str(),
                 broken.c_str());
    std::abort();
  }
#endif
}

}  // namespace gpubroker

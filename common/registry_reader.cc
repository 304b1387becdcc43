#include "common/registry_reader.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/backoff.h"
#include "common/wire.h"

namespace gpubroker {

struct RegistryReader::Mapping {
  void* base = nullptr;
  size_t size = 0;
  const RegistryHeader* header = nullptr;
  RegistryGeometry geometry{};
  ~Mapping() {
    if (base != nullptr) ::munmap(base, size);
  }
};

RegistryReader::RegistryReader(std::unique_ptr<Mapping> m) : m_(std::move(m)) {}
RegistryReader::RegistryReader(RegistryReader&&) noexcept = default;
RegistryReader& RegistryReader::operator=(RegistryReader&&) noexcept = default;
RegistryReader::~RegistryReader() = default;

Result<RegistryReader> RegistryReader::FromFd(UniqueFd fd) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat the registry", errno);
  if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(sizeof(RegistryHeader)) ||
      static_cast<uint64_t>(st.st_size) > (uint64_t{1} << 40)) {
    return ProtocolError("the registry descriptor is not a registry (" + std::to_string(st.st_size) + " bytes)");
  }
  auto m = std::make_unique<Mapping>();
  m->size = static_cast<size_t>(st.st_size);
  m->base = ::mmap(nullptr, m->size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (m->base == MAP_FAILED) {
    m->base = nullptr;
    return PosixError("map the registry", errno);
  }
  m->header = static_cast<const RegistryHeader*>(m->base);
  const RegistryHeader& h = *m->header;
  if (h.magic.load(std::memory_order_acquire) != kRegistryMagic) {
    return Unavailable("the registry is not ready or not a gpubroker registry");
  }
  if (h.layout_version != kRegistryLayoutVersion) {
    return Unsupported("the registry has layout version " + std::to_string(h.layout_version) +
                       "; this library reads version " + std::to_string(kRegistryLayoutVersion));
  }
  if (h.capacity == 0 || h.capacity > kMaxRegistryCapacity) {
    return ProtocolError("the registry has a corrupt capacity");
  }
  m->geometry = ComputeGeometry(h.capacity);
  if (h.header_bytes != sizeof(RegistryHeader) || h.slot_bytes != sizeof(SlotRecord) ||
      h.live_bytes != sizeof(LiveRecord) ||
      h.index_buckets != m->geometry.index_buckets || m->size < m->geometry.total_bytes) {
    return ProtocolError("the registry has a corrupt geometry (its header does not fit its " +
                         std::to_string(m->size) + " bytes)");
  }
  return RegistryReader(std::move(m));
}

const RegistryHeader& RegistryReader::header() const { return *m_->header; }

const SlotRecord& RegistryReader::slot(uint32_t index) const {
  auto* base = static_cast<const std::byte*>(m_->base);
  return reinterpret_cast<const SlotRecord*>(base + m_->geometry.slots_offset)[index];
}

const LiveRecord* RegistryReader::live(uint32_t index) const {
  if (index >= m_->geometry.capacity) return nullptr;
  auto* base = static_cast<const std::byte*>(m_->base);
  return reinterpret_cast<const LiveRecord*>(base + m_->geometry.live_offset) + index;
}

namespace {

Status ValidateLive(const LiveState& s) {
  if (s.nbuffers == 0 || s.nbuffers > kMaxBuffers) {
    return ProtocolError("live record has " + std::to_string(s.nbuffers) + " buffers");
  }
  if (s.buffer < -1 || s.buffer >= static_cast<int32_t>(s.nbuffers) || s.writing < -1 ||
      s.writing >= static_cast<int32_t>(s.nbuffers) || (s.version == 0 && s.buffer >= 0) ||
      (s.version != 0 && s.buffer < 0 && s.nbuffers != 1)) {
    return ProtocolError("live record names buffer " + std::to_string(s.buffer) + " (writing " +
                         std::to_string(s.writing) + ") of " + std::to_string(s.nbuffers));
  }
  return Status::Ok();
}

}  // namespace

Result<LiveState> RegistryReader::Live(const SlotDescriptor& d) const {
  const LiveRecord* r = live(d.live_index);
  if (r == nullptr) return ProtocolError("slot '" + std::string(d.name) + "' names no live record");
  LiveState s{};
  if (!r->state.LoadInto(s)) {
    return Unavailable("a live record stayed mid-write (no change for " + std::to_string(Backoff::kStuck.count()) +
                       " ms, or changes for " + std::to_string(Backoff::kLimit.count()) +
                       "): is the broker stuck, or the registry damaged?");
  }
  if (s.allocation_id != d.allocation_id) {
    return NotFound("the allocation of slot '" + std::string(d.name) + "' is gone");
  }
  GPB_RETURN_IF_ERROR(ValidateLive(s));
  return s;
}

void RegistryReader::WithVersion(SlotDescriptor& d) const {
  if (auto s = Live(d); s.ok()) {
    d.version = s->version;
    if (s->version != 0) d.updated_ns = s->committed_ns;
  }
}

std::vector<LiveState> RegistryReader::LiveStates() const {
  std::vector<LiveState> out;
  for (uint32_t i = 0; i < m_->geometry.capacity; ++i) {
    LiveState s{};
    if (live(i)->state.LoadInto(s) && s.allocation_id != 0 && ValidateLive(s).ok()) out.push_back(s);
  }
  return out;
}

const std::atomic<uint32_t>* RegistryReader::CommitsWord(const SlotDescriptor& d) const {
  const LiveRecord* r = live(d.live_index);
  return r != nullptr ? &r->commits : nullptr;
}

const std::atomic<uint32_t>* RegistryReader::ReleasesWord(const SlotDescriptor& d) const {
  const LiveRecord* r = live(d.live_index);
  return r != nullptr ? &r->releases : nullptr;
}

bool RegistryReader::Running() const {
  return header().state.load(std::memory_order_acquire) == wire::kStateRunning;
}

Result<SlotDescriptor> RegistryReader::Lookup(std::string_view name) const {
  // Read straight into the result: one copy of the record, not three.
  Result<SlotDescriptor> found{SlotDescriptor{}};
  if (Status s = FindInto(name, *found); !s.ok()) found = std::move(s);
  return found;
}

Status RegistryReader::FindInto(std::string_view name, SlotDescriptor& d) const {
  auto* base = static_cast<const std::byte*>(m_->base);
  auto* buckets = reinterpret_cast<const std::atomic<uint32_t>*>(base + m_->geometry.index_offset);
  const uint32_t mask = m_->geometry.index_buckets - 1;
  const uint32_t capacity = m_->geometry.capacity;
  uint64_t s1 = header().index_seq.load(std::memory_order_acquire);
  for (Backoff backoff; backoff.Next(s1); s1 = header().index_seq.load(std::memory_order_acquire)) {
    // each slot read backs off on its own too
    if (s1 & 1) continue;
    bool torn = false;
    uint32_t pos = static_cast<uint32_t>(NameHash(name)) & mask;
    for (uint32_t probe = 0; probe <= mask; ++probe, pos = (pos + 1) & mask) {
      uint32_t b = buckets[pos].load(std::memory_order_acquire);
      if (b == kBucketEmpty) break;
      if (b == kBucketTombstone || b > capacity) continue;
      if (!slot(b - 1).LoadInto(d)) {
        torn = true;
        break;
      }
      if (d.state == static_cast<uint16_t>(SlotState::kLive) && strnlen(d.name, sizeof d.name) == name.size() &&
          std::memcmp(d.name, name.data(), name.size()) == 0) {
        GPB_RETURN_IF_ERROR(ValidateDescriptor(d));
        WithVersion(d);
        return Status::Ok();
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (!torn && header().index_seq.load(std::memory_order_relaxed) == s1) {
      return NotFound("no slot named '" + std::string(name) + "'");
    }
  }
  return Unavailable("the registry's index stayed mid-write (no change for " +
                     std::to_string(Backoff::kStuck.count()) + " ms, or changes for " +
                     std::to_string(Backoff::kLimit.count()) + "): is the broker stuck, or the registry damaged?");
}

std::vector<SlotDescriptor> RegistryReader::ListLive() const {
  std::vector<SlotDescriptor> out;
  for (uint32_t i = 0; i < m_->geometry.capacity; ++i) {
    std::optional<SlotDescriptor> d = slot(i).Load();
    if (d && d->state == static_cast<uint16_t>(SlotState::kLive) && ValidateDescriptor(*d).ok()) {
      WithVersion(*d);
      out.push_back(*d);
    }
  }
  return out;
}

}  // namespace gpubroker

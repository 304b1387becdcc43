#include "broker/registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "common/futex.h"
#include "common/posix.h"
#include "common/registry_reader.h"
#include "common/slot_descriptor.h"
#include "common/wire.h"

namespace gpubroker {
namespace {

// The start time of process `pid` (field 22 of /proc/<pid>/stat), written to
// the registry's header beside the pid: what tells a reused pid apart.
uint64_t ProcessStartTicks(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return 0;
  // The command name (field 2) may hold spaces; fields resume after the last ')'.
  size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  for (int i = 3; i < 22; ++i) rest >> field;  // skip fields 3..21
  uint64_t ticks = 0;
  rest >> ticks;
  return ticks;
}

}  // namespace


Result<std::unique_ptr<Registry>> Registry::Create(const RegistryOptions& options) {
  if (options.capacity == 0 || options.capacity > kMaxRegistryCapacity) {
    return InvalidArgument("registry capacity must be 1.." + std::to_string(kMaxRegistryCapacity));
  }
  std::unique_ptr<Registry> r(new Registry());
  GPB_RETURN_IF_ERROR(r->Map(options));
  return r;
}

Status Registry::Map(const RegistryOptions& options) {
  geometry_ = ComputeGeometry(options.capacity);
  name_ = options.name;
  std::string label = "gpubroker-registry:" + name_;
  UniqueFd fd(::memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return PosixError("memfd_create for the registry", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(geometry_.total_bytes)) != 0) {
    return PosixError("size the registry to " + std::to_string(geometry_.total_bytes) + " bytes", errno);
  }
  base_ = ::mmap(nullptr, geometry_.total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base_ == MAP_FAILED) {
    base_ = nullptr;
    return PosixError("map the registry", errno);
  }
  // This mapping stays the only writable one: the seal refuses every later
  // writable mapping and write(), whoever holds a descriptor; the mode makes a
  // reopen through /proc read-only for anyone but the broker's user.
  if (::fchmod(fd.get(), 0444) != 0) return PosixError("fchmod the registry", errno);
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) != 0) {
    return PosixError("seal the registry (needs Linux 5.1 or later)", errno);
  }
  std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  read_only_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!read_only_.valid()) return PosixError("reopen the registry read-only", errno);

  header_ = static_cast<RegistryHeader*>(base_);
  header_->layout_version = kRegistryLayoutVersion;
  header_->header_bytes = sizeof(RegistryHeader);
  header_->slot_bytes = sizeof(SlotRecord);
  header_->capacity = geometry_.capacity;
  header_->index_buckets = geometry_.index_buckets;
  header_->live_bytes = sizeof(LiveRecord);
  header_->broker_pid = ::getpid();
  header_->broker_start_ticks = ProcessStartTicks(::getpid());
  header_->boot_generation = options.boot_generation;
  header_->state.store(wire::kStateRunning, std::memory_order_relaxed);
  header_->magic.store(kRegistryMagic, std::memory_order_release);

  slots_.assign(geometry_.capacity, SlotDescriptor{});
  buckets_.assign(geometry_.index_buckets, kBucketEmpty);
  free_.reserve(geometry_.capacity);
  for (uint32_t i = geometry_.capacity; i-- > 0;) free_.push_back(i);
  live_.assign(geometry_.capacity, LiveState{});
  live_free_.reserve(geometry_.capacity);
  for (uint32_t i = geometry_.capacity; i-- > 0;) live_free_.push_back(i);
  return Status::Ok();
}

Registry::~Registry() {
  if (header_ != nullptr) {
    header_->state.store(wire::kStateStopping, std::memory_order_release);
    WakeAllLive();
  }
  waker_.Stop();
  if (base_ != nullptr) ::munmap(base_, geometry_.total_bytes);
}

Result<UniqueFd> Registry::Share() const {
  UniqueFd copy(::fcntl(read_only_.get(), F_DUPFD_CLOEXEC, 0));
  if (!copy.valid()) return PosixError("dup the registry descriptor", errno);
  return copy;
}

SlotRecord& Registry::record(uint32_t index) {
  return reinterpret_cast<SlotRecord*>(static_cast<std::byte*>(base_) + geometry_.slots_offset)[index];
}

std::atomic<uint32_t>* Registry::buckets() {
  return reinterpret_cast<std::atomic<uint32_t>*>(static_cast<std::byte*>(base_) + geometry_.index_offset);
}

// Writes one index bucket to the private copy and to the segment.
void Registry::SetBucket(uint32_t pos, uint32_t value) {
  buckets_[pos] = value;
  buckets()[pos].store(value, std::memory_order_release);
}

void Registry::Publish(uint32_t index) {
  record(index).Store(slots_[index]);
  header_->table_version.fetch_add(1, std::memory_order_release);
}

Result<uint32_t> Registry::Insert(const SlotDescriptor& d) {
  // What the broker publishes, every client must be able to read: the same
  // check the clients make (a record they cannot decode broke listing for
  // everyone).
  if (Status valid = ValidateDescriptor(d); !valid.ok()) {
    return InvalidArgument("'" + std::string(d.name, strnlen(d.name, sizeof d.name)) +
                           "' cannot be published: " + valid.message());
  }
  std::string name(d.name);
  if (by_name_.count(name) != 0) return AlreadyExists("a slot named '" + name + "' exists");
  if (free_.empty()) {
    return ResourceExhausted("registry is full (" + std::to_string(capacity()) + " slots)");
  }
  uint32_t index = free_.back();
  free_.pop_back();
  uint64_t generation = slots_[index].generation + 1;
  slots_[index] = d;
  slots_[index].generation = generation;
  slots_[index].state = static_cast<uint16_t>(SlotState::kLive);
  Publish(index);  // before the index points at it
  IndexInsert(name, index);
  by_name_.emplace(std::move(name), index);
  return index;
}

void Registry::Update(uint32_t index, const SlotDescriptor& d) {
  uint64_t generation = slots_[index].generation;
  slots_[index] = d;
  slots_[index].generation = generation;
  slots_[index].state = static_cast<uint16_t>(SlotState::kLive);
  Publish(index);
}

void Registry::Remove(uint32_t index) {
  std::string name(slots_[index].name);
  IndexErase(name, index);
  by_name_.erase(name);
  uint64_t generation = slots_[index].generation;
  slots_[index] = SlotDescriptor{};
  slots_[index].generation = generation;
  Publish(index);
  free_.push_back(index);
  if (tombstones_ > geometry_.index_buckets / 4) RebuildIndex();
}

std::optional<uint32_t> Registry::Find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

std::optional<uint32_t> Registry::Scan(uint32_t cursor, uint32_t max,
                                       const std::function<void(const SlotDescriptor&)>& fn) const {
  uint32_t emitted = 0;
  for (uint32_t i = cursor; i < geometry_.capacity; ++i) {
    if (slots_[i].state != static_cast<uint16_t>(SlotState::kLive)) continue;
    if (emitted == max) return i;
    fn(slots_[i]);
    ++emitted;
  }
  return std::nullopt;
}

void Registry::SetState(uint32_t state) {
  header_->state.store(state, std::memory_order_release);
  if (state == wire::kStateStopping) WakeAllLive();
}

LiveRecord& Registry::live_record(uint32_t index) {
  return reinterpret_cast<LiveRecord*>(static_cast<std::byte*>(base_) + geometry_.live_offset)[index];
}

Result<uint32_t> Registry::AddLive(const LiveState& s) {
  if (live_free_.empty()) {
    return ResourceExhausted("the registry's live table is full (" + std::to_string(capacity()) +
                             " allocations, some kept only by leases)");
  }
  uint32_t index = live_free_.back();
  live_free_.pop_back();
  UpdateLive(index, s, false, false);
  return index;
}

void Registry::UpdateLive(uint32_t index, const LiveState& s, bool committed, bool released) {
  live_[index] = s;
  LiveRecord& r = live_record(index);
  r.state.Store(s);
  // After the state: a waiter that read the old word and then the old state
  // is woken; one that reads the new word sees the new state.
  if (committed) {
    r.commits.fetch_add(1, std::memory_order_release);
    waker_.WakeAll(&r.commits);
  }
  if (released) {
    r.releases.fetch_add(1, std::memory_order_release);
    waker_.WakeAll(&r.releases);
  }
}

void Registry::RemoveLive(uint32_t index) {
  UpdateLive(index, LiveState{}, true, true);
  live_free_.push_back(index);
}

void Registry::WakeAllLive() {
  for (uint32_t i = 0; i < geometry_.capacity; ++i) {
    if (live_[i].allocation_id == 0) continue;
    LiveRecord& r = live_record(i);
    r.commits.fetch_add(1, std::memory_order_release);
    waker_.WakeAll(&r.commits);
    r.releases.fetch_add(1, std::memory_order_release);
    waker_.WakeAll(&r.releases);
  }
}

void Registry::IndexInsert(std::string_view name, uint32_t index) {
  const uint32_t mask = geometry_.index_buckets - 1;
  uint32_t pos = static_cast<uint32_t>(NameHash(name)) & mask;
  while (true) {
    uint32_t b = buckets_[pos];
    if (b == kBucketEmpty || b == kBucketTombstone) {
      if (b == kBucketTombstone) --tombstones_;
      SetBucket(pos, index + 1);
      return;
    }
    pos = (pos + 1) & mask;  // terminates: buckets >= 2 * capacity
  }
}

void Registry::IndexErase(std::string_view name, uint32_t index) {
  const uint32_t mask = geometry_.index_buckets - 1;
  uint32_t pos = static_cast<uint32_t>(NameHash(name)) & mask;
  for (uint32_t probe = 0; probe <= mask; ++probe, pos = (pos + 1) & mask) {
    uint32_t b = buckets_[pos];
    if (b == kBucketEmpty) return;
    if (b == index + 1) {
      SetBucket(pos, kBucketTombstone);
      ++tombstones_;
      return;
    }
  }
}

void Registry::RebuildIndex() {
  auto& seq = header_->index_seq;
  seq.fetch_add(1, std::memory_order_relaxed);  // odd: readers retry
  std::atomic_thread_fence(std::memory_order_release);
  for (uint32_t i = 0; i < geometry_.index_buckets; ++i) {
    buckets_[i] = kBucketEmpty;
    buckets()[i].store(kBucketEmpty, std::memory_order_relaxed);
  }
  tombstones_ = 0;
  for (const auto& [name, index] : by_name_) IndexInsert(name, index);
  seq.fetch_add(1, std::memory_order_release);
}

}  // namespace gpubroker

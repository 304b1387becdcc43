#include "registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstring>

#include "posix.h"
#include "registry_reader.h"
#include "wire.h"

namespace bip = boost::interprocess;

namespace gpubroker {

struct Registry::Segment {
  bip::mapped_region region;
};

namespace {

// Decides whether an existing segment may be replaced.
Status CheckExisting(const std::string& name) {
  try {
    bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_only);
    bip::offset_t size = 0;
    if (!shm.get_size(size) || size < static_cast<bip::offset_t>(sizeof(RegistryHeader))) {
      return Status::Ok();  // a torn segment from a broker that died while creating it
    }
    bip::mapped_region region(shm, bip::read_only, 0, sizeof(RegistryHeader));
    auto* h = static_cast<const RegistryHeader*>(region.get_address());
    if (h->magic.load(std::memory_order_acquire) != kRegistryMagic) return Status::Ok();
    if (h->layout_version != kRegistryLayoutVersion) {
      return Unsupported("registry segment /dev/shm/" + name + " has layout version " +
                         std::to_string(h->layout_version) + " but this broker writes version " +
                         std::to_string(kRegistryLayoutVersion) +
                         "; stop the broker that uses it, or remove the file if none does, "
                         "or choose another registry name");
    }
    if (ProcessIsAlive(h->broker_pid, h->broker_start_ticks) && h->broker_pid != ::getpid()) {
      return AlreadyExists("registry segment /dev/shm/" + name + " belongs to a running broker (pid " +
                           std::to_string(h->broker_pid) + ")");
    }
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error) return Status::Ok();
    return Status(Code::kIo, "cannot inspect registry segment " + name + ": " + e.what());
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Registry>> Registry::Create(const RegistryOptions& options) {
  if (options.capacity == 0 || options.capacity > kMaxRegistryCapacity) {
    return InvalidArgument("registry capacity must be 1.." + std::to_string(kMaxRegistryCapacity));
  }
  GPB_RETURN_IF_ERROR(CheckExisting(options.name));
  std::unique_ptr<Registry> r(new Registry());
  GPB_RETURN_IF_ERROR(r->Map(options));
  return r;
}

Status Registry::Map(const RegistryOptions& options) {
  geometry_ = ComputeGeometry(options.capacity);
  name_ = options.name;
  segment_ = std::make_unique<Segment>();
  try {
    bip::shared_memory_object::remove(name_.c_str());  // stale: checked above
    bip::permissions perms(static_cast<int>(options.mode));
    bip::shared_memory_object shm(bip::create_only, name_.c_str(), bip::read_write, perms);
    int fd = shm.get_mapping_handle().handle;
    // The umask must not narrow what the config asked for.
    if (::fchmod(fd, options.mode) != 0) return PosixError("fchmod registry segment", errno);
    if (options.group && ::fchown(fd, static_cast<uid_t>(-1), *options.group) != 0) {
      return PosixError("fchown registry segment", errno);
    }
    shm.truncate(static_cast<bip::offset_t>(geometry_.total_bytes));
    segment_->region = bip::mapped_region(shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    return Status(Code::kIo, "cannot create registry segment /dev/shm/" + name_ + ": " + e.what());
  }
  void* base = segment_->region.get_address();
  std::memset(base, 0, geometry_.total_bytes);
  header_ = static_cast<RegistryHeader*>(base);
  header_->layout_version = kRegistryLayoutVersion;
  header_->header_bytes = sizeof(RegistryHeader);
  header_->slot_bytes = sizeof(SlotRecord);
  header_->capacity = geometry_.capacity;
  header_->index_buckets = geometry_.index_buckets;
  header_->broker_pid = ::getpid();
  header_->broker_start_ticks = ProcessStartTicks(::getpid());
  header_->boot_generation = options.boot_generation;
  header_->state.store(wire::kStateRunning, std::memory_order_relaxed);
  header_->magic.store(kRegistryMagic, std::memory_order_release);

  slots_.assign(geometry_.capacity, SlotDescriptor{});
  free_.reserve(geometry_.capacity);
  for (uint32_t i = geometry_.capacity; i-- > 0;) free_.push_back(i);
  return Status::Ok();
}

Registry::~Registry() {
  if (header_ != nullptr) {
    header_->state.store(wire::kStateStopping, std::memory_order_release);
    if (!keep_) bip::shared_memory_object::remove(name_.c_str());
  }
}

SlotRecord& Registry::record(uint32_t index) {
  auto* base = static_cast<std::byte*>(segment_->region.get_address());
  return reinterpret_cast<SlotRecord*>(base + geometry_.slots_offset)[index];
}

std::atomic<uint32_t>* Registry::buckets() {
  auto* base = static_cast<std::byte*>(segment_->region.get_address());
  return reinterpret_cast<std::atomic<uint32_t>*>(base + geometry_.index_offset);
}

void Registry::Publish(uint32_t index) {
  record(index).Store(slots_[index]);
  header_->table_version.fetch_add(1, std::memory_order_release);
}

Result<uint32_t> Registry::Insert(const SlotDescriptor& d) {
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

void Registry::SetState(uint32_t state) { header_->state.store(state, std::memory_order_release); }

void Registry::IndexInsert(std::string_view name, uint32_t index) {
  const uint32_t mask = geometry_.index_buckets - 1;
  uint32_t pos = static_cast<uint32_t>(NameHash(name)) & mask;
  while (true) {
    uint32_t b = buckets()[pos].load(std::memory_order_relaxed);
    if (b == kBucketEmpty || b == kBucketTombstone) {
      if (b == kBucketTombstone) --tombstones_;
      buckets()[pos].store(index + 1, std::memory_order_release);
      return;
    }
    pos = (pos + 1) & mask;  // terminates: buckets >= 2 * capacity
  }
}

void Registry::IndexErase(std::string_view name, uint32_t index) {
  const uint32_t mask = geometry_.index_buckets - 1;
  uint32_t pos = static_cast<uint32_t>(NameHash(name)) & mask;
  for (uint32_t probe = 0; probe <= mask; ++probe, pos = (pos + 1) & mask) {
    uint32_t b = buckets()[pos].load(std::memory_order_relaxed);
    if (b == kBucketEmpty) return;
    if (b == index + 1) {
      buckets()[pos].store(kBucketTombstone, std::memory_order_release);
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
    buckets()[i].store(kBucketEmpty, std::memory_order_relaxed);
  }
  tombstones_ = 0;
  for (const auto& [name, index] : by_name_) IndexInsert(name, index);
  seq.fetch_add(1, std::memory_order_release);
}

}  // namespace gpubroker

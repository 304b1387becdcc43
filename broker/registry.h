// The broker's side of the shared registry segment: the only writer.
//
// Keeps a private copy of every descriptor and a name map, and mirrors each
// change into the segment through the slot's seqlock, so readers in other
// processes see whole descriptors only. Not thread-safe: the broker's event
// loop is its one user.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gpubroker/status.hpp"
#include "registry_layout.h"

namespace gpubroker {

struct RegistryOptions {
  std::string name;  // segment name, /dev/shm/<name>
  uint32_t capacity = 4096;
  uint32_t mode = 0644;
  std::optional<gid_t> group;
  uint64_t boot_generation = 0;
};

class Registry {
 public:
  // Creates the segment. An existing segment of a broker that is gone is
  // replaced; one whose broker is alive, or of another layout version, is
  // refused with a message that says what to do.
  static Result<std::unique_ptr<Registry>> Create(const RegistryOptions& options);

  // Unmaps the segment and removes it, unless KeepOnExit() was called.
  ~Registry();
  // Leaves the segment in place when the broker stops, marked stopping, for
  // the next broker to take over (a warm restart).
  void KeepOnExit() { keep_ = true; }
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Publishes a new live slot; kAlreadyExists / kResourceExhausted.
  Result<uint32_t> Insert(const SlotDescriptor& d);
  // Rewrites a live slot in place (same name).
  void Update(uint32_t index, const SlotDescriptor& d);
  // Removes a live slot: the name is gone for every reader at once.
  void Remove(uint32_t index);

  std::optional<uint32_t> Find(std::string_view name) const;
  const SlotDescriptor& Get(uint32_t index) const { return slots_[index]; }
  // Live slots in table order from `cursor`; returns the next cursor or nullopt.
  std::optional<uint32_t> Scan(uint32_t cursor, uint32_t max,
                               const std::function<void(const SlotDescriptor&)>& fn) const;

  void SetState(uint32_t state);
  uint32_t capacity() const { return geometry_.capacity; }
  uint32_t live() const { return static_cast<uint32_t>(by_name_.size()); }
  const std::string& name() const { return name_; }
  uint64_t boot_generation() const { return header_->boot_generation; }

 private:
  Registry() = default;
  Status Map(const RegistryOptions& options);
  SlotRecord& record(uint32_t index);
  std::atomic<uint32_t>* buckets();
  void IndexInsert(std::string_view name, uint32_t index);
  void IndexErase(std::string_view name, uint32_t index);
  void RebuildIndex();
  void Publish(uint32_t index);

  struct Segment;
  std::unique_ptr<Segment> segment_;
  std::string name_;
  RegistryHeader* header_ = nullptr;
  RegistryGeometry geometry_{};
  std::vector<SlotDescriptor> slots_;  // private copy, the source of truth
  std::vector<uint32_t> free_;         // free table entries, used LIFO
  std::unordered_map<std::string, uint32_t> by_name_;
  uint32_t tombstones_ = 0;
  bool keep_ = false;
};

}  // namespace gpubroker

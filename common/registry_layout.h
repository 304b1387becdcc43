// The shared-memory registry segment: a header, a fixed table of slots and a
// name index. docs/registry.md describes the same layout in prose.
//
//   [RegistryHeader][SlotRecord x capacity][atomic<uint32_t> x index_buckets]
//
// Only the broker writes. Slot records are seqlocked; the index is an open-
// addressing hash table of slot numbers (0 empty, kTombstone deleted, else
// index + 1) that readers probe lock-free; a rebuild of the index is fenced by
// `index_seq` so a reader that overlapped it retries.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "common/seqlock.h"
#include "common/slot_descriptor.h"

namespace gpubroker {

inline constexpr uint64_t kRegistryMagic = 0x3147455242504721ull;  // "!GPBREG1"
inline constexpr uint32_t kRegistryLayoutVersion = 2;
inline constexpr uint32_t kBucketEmpty = 0;
inline constexpr uint32_t kBucketTombstone = 0xffffffffu;
inline constexpr uint32_t kMaxRegistryCapacity = 1u << 20;

struct RegistryHeader {
  std::atomic<uint64_t> magic;  // written last, with release, once the segment is ready
  uint32_t layout_version;
  uint32_t header_bytes;
  uint32_t slot_bytes;
  uint32_t capacity;
  uint32_t index_buckets;  // a power of two, >= 2 * capacity
  int32_t broker_pid;
  uint64_t broker_start_ticks;  // /proc/<pid>/stat start time; tells a reused pid apart
  uint64_t boot_generation;     // random per broker start
  std::atomic<uint32_t> state;  // wire::BrokerState
  uint32_t reserved0;
  std::atomic<uint64_t> table_version;  // bumps on every change to any slot
  std::atomic<uint64_t> index_seq;      // odd while the index is being rebuilt
  uint8_t reserved[56];
};
static_assert(sizeof(RegistryHeader) == 128);

using SlotRecord = SeqLocked<SlotDescriptor>;
static_assert(sizeof(SlotRecord) == 456);

struct RegistryGeometry {
  uint32_t capacity;
  uint32_t index_buckets;
  size_t slots_offset;
  size_t index_offset;
  size_t total_bytes;
};

inline RegistryGeometry ComputeGeometry(uint32_t capacity) {
  uint32_t buckets = 1;
  while (buckets < 2 * capacity) buckets <<= 1;
  RegistryGeometry g{capacity, buckets, sizeof(RegistryHeader), 0, 0};
  g.index_offset = g.slots_offset + size_t{capacity} * sizeof(SlotRecord);
  g.total_bytes = g.index_offset + size_t{buckets} * sizeof(std::atomic<uint32_t>);
  return g;
}

// FNV-1a; the index's hash. Part of the layout: changing it changes the version.
inline uint64_t NameHash(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace gpubroker

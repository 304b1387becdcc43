// The shared-memory registry segment: a header, a fixed table of slots, a
// name index and a table of live records (one per allocation: its committed
// version and the futex words readers wait on). docs/registry.md describes
// the same layout in prose.
//
//   [RegistryHeader][SlotRecord x capacity][atomic<uint32_t> x index_buckets]
//   [LiveRecord x capacity]
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
inline constexpr uint32_t kRegistryLayoutVersion = 3;
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
  uint32_t live_bytes;          // sizeof(LiveRecord)
  std::atomic<uint64_t> table_version;  // bumps on every change to any slot
  std::atomic<uint64_t> index_seq;      // odd while the index is being rebuilt
  uint8_t reserved[56];
};
static_assert(sizeof(RegistryHeader) == 128);

using SlotRecord = SeqLocked<SlotDescriptor>;
static_assert(sizeof(SlotRecord) == 472);

// The version state of one allocation (docs/live.md). Buffers are numbered
// 0..nbuffers-1; a buffer's version is 0 while it holds none (never
// written, being written, or reclaimed from a writer that went away).
struct LiveState {
  uint64_t allocation_id;  // 0: the record is free
  uint64_t version;        // newest committed version; 0: none yet
  uint64_t committed_ns;   // CLOCK_REALTIME of that commit
  uint64_t writes;         // writes begun, ever: a reader of a one-buffer slot compares it
  uint64_t buffer_version[kMaxBuffers];
  uint32_t pins[kMaxBuffers];  // clients pinning each buffer
  int32_t buffer;              // the buffer holding `version`; -1: none
  int32_t writing;             // the buffer being written; -1: none
  int32_t writer_pid;          // who writes it (in the broker's pid namespace); 0: nobody
  uint32_t nbuffers;
};
static_assert(sizeof(LiveState) == 144);

// A live record: the seqlocked state and two futex words. `commits` changes
// after every commit (and when the allocation goes, or the broker stops):
// readers wait on it. `releases` changes after every unpin and every end of
// a write: a writer that found every buffer pinned waits on it.
struct LiveRecord {
  SeqLocked<LiveState> state;
  std::atomic<uint32_t> commits;
  std::atomic<uint32_t> releases;
};
static_assert(sizeof(LiveRecord) == 160);

struct RegistryGeometry {
  uint32_t capacity;
  uint32_t index_buckets;
  size_t slots_offset;
  size_t index_offset;
  size_t live_offset;
  size_t total_bytes;
};

inline RegistryGeometry ComputeGeometry(uint32_t capacity) {
  uint32_t buckets = 1;
  while (buckets < 2 * capacity) buckets <<= 1;
  RegistryGeometry g{capacity, buckets, sizeof(RegistryHeader), 0, 0, 0};
  g.index_offset = g.slots_offset + size_t{capacity} * sizeof(SlotRecord);
  g.live_offset = g.index_offset + size_t{buckets} * sizeof(std::atomic<uint32_t>);
  g.live_offset = (g.live_offset + 63) / 64 * 64;
  g.total_bytes = g.live_offset + size_t{capacity} * sizeof(LiveRecord);
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

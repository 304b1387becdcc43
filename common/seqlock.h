// A sequence lock over a trivially copyable value in shared memory.
//
// One writer (the broker); any number of readers in other processes, which
// never block the writer and never wait on anything a crashed process could
// hold: a reader that keeps seeing a write in progress backs off and gives up
// after a bounded time (common/backoff.h), not a number of tries. The payload is copied word by word with release stores and
// acquire loads: data-race-free in the C++ memory model without standalone
// fences (which ThreadSanitizer does not model), and plain moves on x86.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

#include "common/backoff.h"

namespace gpubroker {

template <typename T>
class SeqLocked {
  static_assert(std::is_trivially_copyable_v<T>);
  static_assert(sizeof(T) % 8 == 0);
  static constexpr size_t kWords = sizeof(T) / 8;

 public:
  // Writer only.
  void Store(const T& value) {
    uint64_t words[kWords];
    std::memcpy(words, &value, sizeof(T));
    uint64_t s = seq_.load(std::memory_order_relaxed);
    seq_.store(s + 1, std::memory_order_relaxed);
    // Release: no reader can see a new word without seeing the odd count first.
    for (size_t i = 0; i < kWords; ++i) words_[i].store(words[i], std::memory_order_release);
    seq_.store(s + 2, std::memory_order_release);
  }

  // Copies a consistent value into `out`; false if every try for
  // Backoff's limits overlapped a write (`out` then holds a torn copy: do not
  // use it).
  bool LoadInto(T& out) const {
    auto* bytes = reinterpret_cast<unsigned char*>(&out);
    uint64_t s1 = seq_.load(std::memory_order_acquire);
    for (Backoff backoff; backoff.Next(s1); s1 = seq_.load(std::memory_order_acquire)) {
      if (s1 & 1) continue;
      // Acquire: the re-read of the count below cannot move above these loads.
      for (size_t i = 0; i < kWords; ++i) {
        uint64_t w = words_[i].load(std::memory_order_acquire);
        std::memcpy(bytes + i * 8, &w, 8);
      }
      if (seq_.load(std::memory_order_relaxed) == s1) return true;
    }
    return false;
  }

  // A consistent copy, or nullopt if every try overlapped a write.
  std::optional<T> Load() const {
    T value;
    if (!LoadInto(value)) return std::nullopt;
    return value;
  }

  uint64_t sequence() const { return seq_.load(std::memory_order_acquire); }

 private:
  std::atomic<uint64_t> seq_{0};
  std::atomic<uint64_t> words_[kWords];
};

}  // namespace gpubroker

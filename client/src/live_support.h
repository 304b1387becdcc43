// What the writers and readers of versions share (docs/live.md): finding a
// slot's live record in the registry this client has now, deadlines, and
// sleeping on a record's futex word.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "client/src/client_core.h"
#include "common/registry_reader.h"
#include "gpubroker/client.hpp"

namespace gpubroker::live {

using Clock = std::chrono::steady_clock;

// Where a slot's live record is in the registry this client has now: after a
// broker restart the record moves, so it is looked up again by name.
class LiveLocator {
 public:
  LiveLocator(std::shared_ptr<MappingCache> cache, const View& view) : cache_(std::move(cache)), view_(view) {}

  Result<std::pair<std::shared_ptr<const RegistryReader>, SlotDescriptor>> Locate() {
    GPB_ASSIGN_OR_RETURN(std::shared_ptr<const RegistryReader> registry, cache_->registry());
    if (registry != registry_) {
      GPB_ASSIGN_OR_RETURN(SlotDescriptor d, registry->Lookup(view_.name()));
      if (d.allocation_id != view_.slot().allocation_id) {
        return NotFound("slot '" + view_.name() + "' now names another allocation (it was replaced): open it again");
      }
      registry_ = registry;
      descriptor_ = d;
    }
    return std::make_pair(registry_, descriptor_);
  }

 private:
  std::shared_ptr<MappingCache> cache_;
  const View& view_;
  std::shared_ptr<const RegistryReader> registry_;
  SlotDescriptor descriptor_{};
};

// Milliseconds left until `deadline` (-1 stays "no limit").
std::chrono::nanoseconds Left(std::optional<Clock::time_point> deadline);
std::optional<Clock::time_point> DeadlineAfter(int timeout_ms);

// NotFound once the view's name is gone or names another allocation (the
// slot was destroyed, or replaced by a new one of that name).
Status StillNamed(const RegistryReader& registry, const View& view);

// A wait is cut into slices this long, after each of which the broker's
// liveness is checked: a broker killed outright wakes nobody. While a
// stopping broker still answers, the slices are shorter (its successor is
// looked for as often as a reconnect tries).
inline constexpr std::chrono::seconds kLivenessSlice{1};
inline constexpr std::chrono::milliseconds kStoppingSlice{20};

// Sleeps until `word` moves from `seen` or `until` passes. Anyone who maps
// the registry can wake the word's waiters at will; a wake that changed
// nothing costs a load and goes back to sleep, and a flood of them turns
// the futex into a check every millisecond until the word moves: a
// neighbour's wakes cost this process at most ~1,000 loads a second, and a
// commit at most 1 ms of latency while the flood lasts.
void SleepWhileUnchanged(const std::atomic<uint32_t>* word, uint32_t seen, Clock::time_point until);

}  // namespace gpubroker::live

// The versions of one allocation (docs/live.md), as one state machine: who
// writes which buffer, which reader pins which version, which pins a warm
// restart carried over, and the live record readers see in the registry.
// Every transition is a method; each says which waiters the registry must
// wake; CheckInvariants() says whether the pieces still agree (debug builds
// and GPUBROKER_CHECK_VERSIONS builds, the sanitized ones CI runs, check after
// every transition and end the broker if one broke; so does the handler fuzzer).
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "common/registry_layout.h"
#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

namespace gpubroker {

// A reader's hold on one committed version (docs/live.md): the writer never
// reuses its buffer while it stands. Each acquire takes a new one; a release
// names the one it ends (a reader lets go of the version it read only once
// its GPU work on it is done, after taking the next).
struct Pin {
  uint64_t version = 0;
  int32_t buffer = -1;
  uint64_t id = 0;  // new at every acquire: a release names the one it ends
};

class Versions {
 public:
  using Clock = std::chrono::steady_clock;

  // What a transition asks the registry to do with the new state.
  struct Wake {
    bool readers = false;  // a version was committed (or none is whole any more)
    bool writers = false;  // a buffer may have come free
  };

  Versions() = default;
  // A new allocation: a plain one (buffers == 0) holds version 1 in its one
  // buffer from the start; a live one holds nothing until its first commit.
  static Versions New(uint64_t allocation_id, uint32_t buffers, uint64_t now_ns);
  // Taken over from the broker before a warm restart: committed versions and
  // their pins (carried until `carried_until`, for their readers to take
  // over); a write under way is abandoned. Unchecked: ask CheckInvariants.
  static Versions Adopted(LiveState previous, Clock::time_point carried_until);

  const LiveState& state() const { return s_; }
  uint64_t writer() const { return writer_; }  // the client writing; 0: none
  // The pins a client holds; empty if none.
  const std::map<uint64_t, Pin>& PinsOf(uint64_t client) const;
  uint32_t carried() const;  // pins carried over a restart, not yet taken over or dropped

  // Transitions. `client` is the connection asking; `pin_id` the id to give
  // a new pin (unique for the broker's lifetime).
  Result<int32_t> Begin(uint64_t client, pid_t pid, Wake& wake);
  // Publishes as the next version, or as `at` (above the newest) if nonzero.
  Result<uint64_t> Commit(uint64_t client, int32_t buffer, uint64_t now_ns, Wake& wake, uint64_t at = 0);
  Status Abort(uint64_t client, int32_t buffer, Wake& wake);
  // Pins the newest whole version, then drops `release_pin` (0: none) of the
  // client's. A client holds at most buffers + 1 pins.
  Result<Pin> Acquire(uint64_t client, uint64_t pin_id, uint64_t release_pin, Wake& wake);
  // A reader of the broker before a restart takes its carried pin over.
  Result<Pin> TakeOverCarried(uint64_t client, uint64_t pin_id, int32_t buffer, uint64_t version, Wake& wake);
  // Drops the client's pin `pin` (every pin it holds, if none is named);
  // returns how many went.
  size_t Release(uint64_t client, std::optional<uint64_t> pin, Wake& wake);
  // The client let go of the allocation: its pins and its write go too.
  // Returns the buffer whose write was abandoned, or -1.
  int32_t Forget(uint64_t client, Wake& wake);
  // Drops the carried pins if `now` is past their time; returns how many.
  uint32_t ExpireCarried(Clock::time_point now, Wake& wake);

  // "" while every rule holds; else the first that does not.
  std::string CheckInvariants() const;

 private:
  void EndWrite(Wake& wake);
  void Checked() const;  // CheckInvariants() after a transition, where built in (above)

  LiveState s_{};
  uint64_t writer_ = 0;
  std::map<uint64_t, std::map<uint64_t, Pin>> pins_;  // by client, then pin id
  std::array<uint32_t, kMaxBuffers> carried_{};
  Clock::time_point carried_until_{};
};

}  // namespace gpubroker

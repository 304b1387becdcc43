// gpubrokerctl wait: blocks until a slot's allocation has a version newer
// than a given one. It waits as a Reader does, on the shared registry, so a
// waiting gpubrokerctl costs the broker nothing.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "gpubroker/client.hpp"

namespace gpubroker::ctl {

struct WaitFlags {
  std::string name;
  std::string version;  // --version: wait for one newer than this; empty: newer than the current one
  std::string timeout;  // --timeout, in seconds; empty: no limit
  bool json = false;
};

// "2", "0.25", "1e-3": a finite, non-negative number of seconds, as
// milliseconds rounded up (so 0.0001 still waits, and 0 is a single look).
Result<std::chrono::milliseconds> ParseSeconds(std::string_view text);

// Prints the version reached and returns 0; on a timeout, kExitTimeout.
int WaitCmd(Client& c, const WaitFlags& flags);

}  // namespace gpubroker::ctl

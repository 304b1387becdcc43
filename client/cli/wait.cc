#include "client/cli/wait.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "client/cli/exit_status.h"
#include "client/cli/output.h"
#include "common/parse.h"

namespace gpubroker::ctl {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Reader::Wait takes its timeout as an int of milliseconds (24 days): a
// longer --timeout is waited for in slices.
constexpr milliseconds kSlice{std::chrono::hours(24)};

// The version to wait past, and the allocation it is a version of (0: not
// known yet).
struct Baseline {
  uint64_t version = 0;
  uint64_t allocation_id = 0;
};

// --version, or else the version `name` has now, read from the shared
// registry before attaching: a script that sees this process's lease appear
// knows the baseline is taken, so any commit after that is waited for.
Result<Baseline> ChooseBaseline(Client& c, const WaitFlags& f) {
  if (!f.version.empty()) {
    GPB_ASSIGN_OR_RETURN(uint64_t v, ParseUnsigned(f.version, UINT64_MAX, "--version"));
    return Baseline{v, 0};
  }
  GPB_ASSIGN_OR_RETURN(SlotInfo slot, c.Lookup(f.name));
  return Baseline{slot.version, slot.allocation_id};
}

std::string SecondsText(milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(ms.count()) / 1000.0);
  return buf;
}

// The first version newer than `after`, within `timeout` (none: no limit).
// Reader::Wait ends by itself when the slot is destroyed or replaced
// (kNotFound) or the broker stops (kUnavailable).
Result<uint64_t> WaitPast(Reader& reader, const std::string& name, uint64_t after,
                          std::optional<milliseconds> timeout) {
  const Clock::time_point start = Clock::now();
  while (true) {
    int slice_ms = -1;
    if (timeout) {
      auto left = std::chrono::duration_cast<milliseconds>(start + *timeout - Clock::now());
      slice_ms = static_cast<int>(std::clamp(left, milliseconds(0), kSlice).count());
    }
    Result<uint64_t> reached = reader.Wait(after, slice_ms);
    if (reached.ok() || reached.status().code() != Code::kTimeout) return reached;
    if (timeout && Clock::now() - start >= *timeout) {
      auto latest = reader.Latest();
      return Timeout("no version of '" + name + "' after " + std::to_string(after) + " within " +
                     SecondsText(*timeout) +
                     (latest.ok() ? " (newest: " + std::to_string(*latest) + ")" : std::string()));
    }
  }
}

}  // namespace

Result<milliseconds> ParseSeconds(std::string_view text) {
  double seconds = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
  // About 31 years: far past any sensible wait, far below overflow.
  constexpr double kMaxSeconds = 1e9;
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(seconds) ||
      seconds < 0 || seconds > kMaxSeconds) {
    return InvalidArgument("'" + Printable(text) + "' is not a number of seconds from 0 to 1e9 (e.g. 30 or 0.5)");
  }
  return milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000.0)));
}

int WaitCmd(Client& c, const WaitFlags& f) {
  std::optional<milliseconds> timeout;
  if (!f.timeout.empty()) {
    auto t = ParseSeconds(f.timeout);
    if (!t.ok()) return Report(t.status().Annotate("--timeout"));
    timeout = *t;
  }
  auto base = ChooseBaseline(c, f);
  if (!base.ok()) return Report(base.status());
  auto reader = c.OpenReader(f.name);
  if (!reader.ok()) return Report(reader.status());
  if (base->allocation_id != 0 && base->allocation_id != reader->view().slot().allocation_id) {
    // Replaced between the look and the attach: the baseline is the new one's.
    auto latest = reader->Latest();
    if (!latest.ok()) return Report(latest.status());
    base->version = *latest;
  }
  auto reached = WaitPast(*reader, f.name, base->version, timeout);
  if (!reached.ok()) return Report(reached.status());
  if (f.json) {
    std::cout << JsonText({{"name", f.name}, {"version", *reached}, {"after", base->version}}) << "\n";
  } else {
    std::cout << *reached << "\n";
  }
  return kExitOk;
}

}  // namespace gpubroker::ctl

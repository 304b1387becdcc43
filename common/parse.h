// One strict parser per user-facing value. The YAML reader, the daemon's flags
// and gpubrokerctl all use these, so "0644junk" or "-1" means the same thing
// (an error naming the text) wherever it is typed. Errors are kInvalidArgument;
// the config reader wraps them with the file position.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

namespace gpubroker {

// An octal permission of at most 0777: "0640", "640". Nothing else: no sign,
// no "0x", no trailing text, no digit 8 or 9.
Result<uint32_t> ParseMode(std::string_view text);

// A byte count: digits with an optional unit B, KiB, MiB, GiB or TiB
// ("4096", "64MiB"). No sign, no spaces, no overflow.
Result<uint64_t> ParseBytes(std::string_view text);

// A non-negative decimal integer no larger than `max`.
Result<uint64_t> ParseUnsigned(std::string_view text, uint64_t max, std::string_view what);

// A device: "cpu" / "host" (no CUDA device), a CUDA ordinal "0" / "cuda:1",
// or "GPU-<uuid>".
struct DeviceSpec {
  friend bool operator==(const DeviceSpec&, const DeviceSpec&) = default;
  bool cpu = false;
  int32_t ordinal = -1;  // -1: none given
  std::optional<DeviceUuid> uuid;
};
Result<DeviceSpec> ParseDevice(std::string_view text);

// `text` with every control character (and DEL, and bytes >= 0x80) written
// as \xNN, for logs: a client-supplied name cannot forge a log line.
std::string Printable(std::string_view text);

}  // namespace gpubroker

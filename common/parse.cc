#include "common/parse.h"

#include <charconv>

namespace gpubroker {
namespace {

bool AllDigits(std::string_view s, char highest) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > highest) return false;
  }
  return true;
}

}  // namespace

Result<uint32_t> ParseMode(std::string_view text) {
  uint32_t v = 0;
  if (AllDigits(text, '7') && text.size() <= 4) {
    std::from_chars(text.data(), text.data() + text.size(), v, 8);
    if (v <= 0777) return v;
  }
  return InvalidArgument("'" + Printable(text) + "' is not an octal mode 0000..0777 (e.g. 0640)");
}

Result<uint64_t> ParseUnsigned(std::string_view text, uint64_t max, std::string_view what) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (!AllDigits(text, '9') || ec != std::errc() || p != text.data() + text.size() || v > max) {
    return InvalidArgument(std::string(what) + " must be an integer 0.." + std::to_string(max) + ", not '" +
                           Printable(text) + "'");
  }
  return v;
}

Result<uint64_t> ParseBytes(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + digits, v);
  if (digits == 0) {
    return InvalidArgument("'" + Printable(text) +
                           "' is not a size: give a non-negative number of bytes, optionally with a unit "
                           "(4096, 64MiB, 2GiB)");
  }
  if (ec != std::errc()) return InvalidArgument("size '" + Printable(text) + "' overflows 64 bits");
  std::string_view unit = text.substr(digits);
  uint64_t scale = 1;
  if (unit == "" || unit == "B") scale = 1;
  else if (unit == "KiB") scale = 1ull << 10;
  else if (unit == "MiB") scale = 1ull << 20;
  else if (unit == "GiB") scale = 1ull << 30;
  else if (unit == "TiB") scale = 1ull << 40;
  else return InvalidArgument("unknown size unit '" + Printable(unit) + "' (use B, KiB, MiB, GiB or TiB)");
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(v, scale, &bytes)) {
    return InvalidArgument("size '" + Printable(text) + "' overflows 64 bits");
  }
  return bytes;
}

Result<DeviceSpec> ParseDevice(std::string_view text) {
  DeviceSpec d;
  if (text == "cpu" || text == "host") {
    d.cpu = true;
    return d;
  }
  if (text.rfind("GPU-", 0) == 0) {
    GPB_ASSIGN_OR_RETURN(d.uuid, ParseUuid(text));
    return d;
  }
  std::string_view digits = text.rfind("cuda:", 0) == 0 ? text.substr(5) : text;
  auto ordinal = ParseUnsigned(digits, 1u << 16, "a CUDA device ordinal");
  if (!ordinal.ok()) {
    return InvalidArgument("'" + Printable(text) +
                           "' is not a device: use cpu, a CUDA ordinal (0, cuda:1) or GPU-<uuid>");
  }
  d.ordinal = static_cast<int32_t>(*ordinal);
  return d;
}

std::string Printable(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else if (c == '\\') {
      out += "\\\\";
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

}  // namespace gpubroker

#include "client/cli/output.h"

#include <cstdio>
#include <sstream>

namespace gpubroker::ctl {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

static std::string JsonArray(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
  return out + "]";
}

std::string SlotJson(const SlotInfo& s) {
  std::ostringstream o;
  o << "{\"name\":" << JsonString(s.name) << ",\"backend\":" << JsonString(std::string(BackendName(s.backend)))
    << ",\"device\":" << JsonString(s.device.type == Device::kCpu ? "cpu" : FormatUuid(s.device.uuid))
    << ",\"dtype\":" << JsonString(DTypeName(s.dtype)) << ",\"shape\":" << JsonArray(s.shape)
    << ",\"strides\":" << JsonArray(s.strides) << ",\"nbytes\":" << s.nbytes
    << ",\"byte_offset\":" << s.byte_offset << ",\"allocation_id\":" << s.allocation_id
    << ",\"allocation_bytes\":" << s.allocation_bytes << ",\"owner_uid\":" << s.owner_uid
    << ",\"owner_gid\":" << s.owner_gid << ",\"mode\":" << JsonString(ModeText(s.mode))
    << ",\"lease_count\":" << s.lease_count << ",\"version\":" << s.version
    << ",\"generation\":" << s.generation << ",\"created_ns\":" << s.created_ns
    << ",\"updated_ns\":" << s.updated_ns << "}";
  return o.str();
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

std::string ShapeText(const std::vector<int64_t>& v) {
  std::string out = "(";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  if (v.size() == 1) out += ",";
  return out + ")";
}

std::string ModeText(uint32_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", mode);
  return buf;
}

std::string Table::Render() const {
  std::vector<size_t> width;
  for (const auto& row : rows_) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows_) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace gpubroker::ctl

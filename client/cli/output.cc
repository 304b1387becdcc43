#include "client/cli/output.h"

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace gpubroker::ctl {
namespace {

using nlohmann::json;

std::string DeviceText(const SlotInfo& s) {
  return s.device.type == Device::kCpu ? "cpu" : "cuda:" + std::to_string(s.device.ordinal);
}
std::string DeviceId(const SlotInfo& s) { return s.device.type == Device::kCpu ? "cpu" : FormatUuid(s.device.uuid); }

// name, json key, about, json value, text.
constexpr SlotField kFields[] = {
    {"name", "name", "slot name", [](const SlotInfo& s) -> json { return s.name; },
     [](const SlotInfo& s) { return s.name; }},
    {"backend", "backend", "host, cuda_vmm or cuda_ipc",
     [](const SlotInfo& s) -> json { return std::string(BackendName(s.backend)); },
     [](const SlotInfo& s) { return std::string(BackendName(s.backend)); }},
    {"device", "device", "cpu, or cuda:N in this process's numbering (JSON: cpu or the GPU's UUID)",
     [](const SlotInfo& s) -> json { return DeviceId(s); }, DeviceText},
    {"uuid", "device_uuid", "the GPU's UUID; - for host memory",
     [](const SlotInfo& s) -> json { return s.device.type == Device::kCpu ? "" : FormatUuid(s.device.uuid); },
     [](const SlotInfo& s) { return s.device.type == Device::kCpu ? std::string("-") : FormatUuid(s.device.uuid); }},
    {"dtype", "dtype", "element type", [](const SlotInfo& s) -> json { return DTypeName(s.dtype); },
     [](const SlotInfo& s) { return DTypeName(s.dtype); }},
    {"shape", "shape", "sizes", [](const SlotInfo& s) -> json { return s.shape; },
     [](const SlotInfo& s) { return ShapeText(s.shape); }},
    {"strides", "strides", "strides, in elements", [](const SlotInfo& s) -> json { return s.strides; },
     [](const SlotInfo& s) { return ShapeText(s.strides); }},
    {"bytes", "nbytes", "bytes the view spans", [](const SlotInfo& s) -> json { return s.nbytes; },
     [](const SlotInfo& s) { return HumanBytes(s.nbytes); }},
    {"nbytes", "nbytes", "bytes the view spans, as a number", [](const SlotInfo& s) -> json { return s.nbytes; },
     [](const SlotInfo& s) { return std::to_string(s.nbytes); }},
    {"offset", "byte_offset", "offset of the view in its allocation",
     [](const SlotInfo& s) -> json { return s.byte_offset; }, [](const SlotInfo& s) { return std::to_string(s.byte_offset); }},
    {"allocation", "allocation_id", "allocation id", [](const SlotInfo& s) -> json { return s.allocation_id; },
     [](const SlotInfo& s) { return std::to_string(s.allocation_id); }},
    {"allocation_bytes", "allocation_bytes", "size of the allocation",
     [](const SlotInfo& s) -> json { return s.allocation_bytes; },
     [](const SlotInfo& s) { return std::to_string(s.allocation_bytes); }},
    {"owner", "owner", "owner's user name", [](const SlotInfo& s) -> json { return UserName(s.owner_uid); },
     [](const SlotInfo& s) { return UserName(s.owner_uid); }},
    {"uid", "owner_uid", "owner's uid", [](const SlotInfo& s) -> json { return s.owner_uid; },
     [](const SlotInfo& s) { return std::to_string(s.owner_uid); }},
    {"group", "group", "owner group's name", [](const SlotInfo& s) -> json { return GroupName(s.owner_gid); },
     [](const SlotInfo& s) { return GroupName(s.owner_gid); }},
    {"gid", "owner_gid", "owner group's gid", [](const SlotInfo& s) -> json { return s.owner_gid; },
     [](const SlotInfo& s) { return std::to_string(s.owner_gid); }},
    {"mode", "mode", "permission bits", [](const SlotInfo& s) -> json { return ModeText(s.mode); },
     [](const SlotInfo& s) { return ModeText(s.mode); }},
    {"leases", "lease_count", "leases on the allocation", [](const SlotInfo& s) -> json { return s.lease_count; },
     [](const SlotInfo& s) { return std::to_string(s.lease_count); }},
    {"version", "version", "newest committed version (0: none yet; a slot made without buffers is 1)",
     [](const SlotInfo& s) -> json { return s.version; }, [](const SlotInfo& s) { return std::to_string(s.version); }},
    {"buffers", "buffers", "buffers its allocation holds (more than 1: readers keep a version while one is written)",
     [](const SlotInfo& s) -> json { return s.buffers; }, [](const SlotInfo& s) { return std::to_string(s.buffers); }},
    {"buffer_bytes", "buffer_bytes", "bytes of each buffer",
     [](const SlotInfo& s) -> json { return s.buffer_bytes; },
     [](const SlotInfo& s) { return std::to_string(s.buffer_bytes); }},
    {"generation", "generation", "table entry generation", [](const SlotInfo& s) -> json { return s.generation; },
     [](const SlotInfo& s) { return std::to_string(s.generation); }},
    {"created", "created_ns", "when it was created (JSON: ns since the epoch)",
     [](const SlotInfo& s) -> json { return s.created_ns; }, [](const SlotInfo& s) { return DateText(s.created_ns); }},
    {"updated", "updated_ns", "when it last changed (JSON: ns since the epoch)",
     [](const SlotInfo& s) -> json { return s.updated_ns; }, [](const SlotInfo& s) { return DateText(s.updated_ns); }},
};

}  // namespace

std::span<const SlotField> SlotFields() { return kFields; }

Result<std::vector<const SlotField*>> SelectFields(const std::string& list) {
  std::vector<const SlotField*> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = std::min(list.find(',', start), list.size());
    std::string name = list.substr(start, end - start);
    auto it = std::find_if(std::begin(kFields), std::end(kFields), [&](const SlotField& f) { return f.name == name; });
    if (it == std::end(kFields)) {
      std::string known;
      for (const auto& f : kFields) known += (known.empty() ? "" : ", ") + std::string(f.name);
      return InvalidArgument("unknown field '" + name + "'; the fields are: " + known);
    }
    out.push_back(&*it);
    start = end + 1;
  }
  return out;
}

Result<Format> ParseFormat(const std::string& text) {
  if (text == "table") return Format::kTable;
  if (text == "csv") return Format::kCsv;
  if (text == "csv,noheader") return Format::kCsvNoHeader;
  if (text == "json") return Format::kJson;
  return InvalidArgument("unknown format '" + text + "'; use table, csv, csv,noheader or json");
}

std::string JsonText(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json SlotJson(const SlotInfo& s) {
  json o = json::object();
  for (const auto& f : kFields) o[std::string(f.json_key)] = f.json(s);
  return o;
}

std::string RenderSlots(const std::vector<SlotInfo>& slots, const std::vector<const SlotField*>& fields,
                        Format format) {
  if (format == Format::kJson) {
    json out = json::array();
    for (const auto& s : slots) {
      json o = json::object();
      for (const SlotField* f : fields) o[std::string(f->json_key)] = f->json(s);
      out.push_back(std::move(o));
    }
    return JsonText(out) + "\n";
  }
  std::vector<std::string> header;
  for (const SlotField* f : fields) {
    std::string h(f->name);
    if (format == Format::kTable) std::transform(h.begin(), h.end(), h.begin(), ::toupper);
    header.push_back(std::move(h));
  }
  Table t(std::move(header));
  for (const auto& s : slots) {
    std::vector<std::string> row;
    for (const SlotField* f : fields) row.push_back(f->text(s));
    t.Add(std::move(row));
  }
  return format == Format::kTable ? t.Render() : t.RenderCsv(format == Format::kCsv);
}

std::string ShowLine(std::string_view label, std::string_view value) {
  constexpr size_t kColumn = 18;
  std::string line = label.empty() ? std::string() : std::string(label) + ":";
  line.append(line.size() < kColumn ? kColumn - line.size() : 1, ' ');
  return line.append(value) + "\n";
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

std::string UserName(uid_t uid) {
  passwd pw{}, *found = nullptr;
  char buf[4096];
  if (::getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) return found->pw_name;
  return std::to_string(uid);
}

std::string GroupName(gid_t gid) {
  group gr{}, *found = nullptr;
  char buf[4096];
  if (::getgrgid_r(gid, &gr, buf, sizeof buf, &found) == 0 && found != nullptr) return found->gr_name;
  return std::to_string(gid);
}

bool UnderPrefix(const std::string& name, const std::string& prefix) {
  return prefix.empty() || name == prefix ||
         (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 && name[prefix.size()] == '/');
}

std::string DateText(uint64_t ns) {
  if (ns == 0) return "-";
  time_t seconds = static_cast<time_t>(ns / 1000000000ull);
  tm utc{};
  ::gmtime_r(&seconds, &utc);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &utc);
  return buf;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
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

std::string Table::RenderCsv(bool header) const {
  std::string out;
  for (size_t r = header ? 0 : 1; r < rows_.size(); ++r) {
    for (size_t i = 0; i < rows_[r].size(); ++i) out += (i ? "," : "") + CsvField(rows_[r][i]);
    out += "\n";
  }
  return out;
}

}  // namespace gpubroker::ctl

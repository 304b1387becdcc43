#include "broker/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <string_view>

namespace gpubroker {
namespace {

std::optional<uint64_t> ReadLimit(const std::string& file) {
  std::ifstream in(file);
  std::string text;
  if (!(in >> text) || text == "max") return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) return std::nullopt;
  if (v >= (uint64_t{1} << 62)) return std::nullopt;  // v1's "unlimited" is a huge number
  return v;
}

// Walks `relative` from the mount point up to the root, keeping the tightest limit.
void TightestOnPath(const std::string& mount, std::string relative, const char* file, HostMemoryInfo& out) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(mount) / fs::path(relative).relative_path();
  while (true) {
    if (auto v = ReadLimit((p / file).string()); v && (!out.cgroup || *v < *out.cgroup)) {
      out.cgroup = *v;
      out.cgroup_path = (p / file).string();
    }
    if (p == fs::path(mount) || !p.has_parent_path() || p.parent_path() == p) break;
    p = p.parent_path();
  }
}

}  // namespace

uint64_t HostMemoryInfo::DefaultCap() const {
  uint64_t total = physical;
  if (cgroup && (total == 0 || *cgroup < total)) total = *cgroup;
  return total / 2;
}

HostMemoryInfo ReadHostMemory() {
  HostMemoryInfo m;
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) m.physical = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    // "0::/path" (v2) or "4:memory:/path" (v1)
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string_view controllers = std::string_view(line).substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (controllers.empty()) {
      for (const char* mount : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
        TightestOnPath(mount, path, "memory.max", m);
      }
    } else if (controllers == "memory" || controllers.find("memory,") != std::string_view::npos ||
               controllers.find(",memory") != std::string_view::npos) {
      TightestOnPath("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes", m);
    }
  }
  return m;
}

}  // namespace gpubroker

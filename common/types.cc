#include <cstdio>

#include "gpubroker/types.hpp"

namespace gpubroker {
namespace {

struct NamedDType {
  std::string_view name;
  DType dtype;
};

constexpr NamedDType kDTypes[] = {
    {"int8", {DType::kInt, 8, 1}},         {"int16", {DType::kInt, 16, 1}},
    {"int32", {DType::kInt, 32, 1}},       {"int64", {DType::kInt, 64, 1}},
    {"uint8", {DType::kUInt, 8, 1}},       {"uint16", {DType::kUInt, 16, 1}},
    {"uint32", {DType::kUInt, 32, 1}},     {"uint64", {DType::kUInt, 64, 1}},
    {"float16", {DType::kFloat, 16, 1}},   {"float32", {DType::kFloat, 32, 1}},
    {"float64", {DType::kFloat, 64, 1}},   {"bfloat16", {DType::kBfloat, 16, 1}},
    {"complex64", {DType::kComplex, 64, 1}}, {"complex128", {DType::kComplex, 128, 1}},
    {"bool", {DType::kBool, 8, 1}},
};

}  // namespace

Result<DType> ParseDType(std::string_view text) {
  for (const auto& d : kDTypes) {
    if (d.name == text) return d.dtype;
  }
  return InvalidArgument("unknown dtype '" + std::string(text) +
                         "' (expected int8..int64, uint8..uint64, float16, float32, "
                         "float64, bfloat16, complex64, complex128 or bool)");
}

std::vector<std::string> DTypeNames() {
  std::vector<std::string> names;
  for (const auto& d : kDTypes) names.emplace_back(d.name);
  return names;
}

std::string DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return std::string(d.name);
  }
  return "dl(" + std::to_string(dtype.code) + "," + std::to_string(dtype.bits) + "," +
         std::to_string(dtype.lanes) + ")";
}

Result<BackendKind> ParseBackend(std::string_view text) {
  if (text == "host") return BackendKind::kHost;
  if (text == "cuda_vmm") return BackendKind::kCudaVmm;
  if (text == "cuda_ipc") return BackendKind::kCudaIpc;
  return InvalidArgument("unknown backend '" + std::string(text) +
                         "' (expected host, cuda_vmm or cuda_ipc)");
}

std::string_view BackendName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kHost: return "host";
    case BackendKind::kCudaVmm: return "cuda_vmm";
    case BackendKind::kCudaIpc: return "cuda_ipc";
  }
  return "unknown";
}

std::string FormatUuid(const DeviceUuid& u) {
  char buf[64];
  std::snprintf(buf, sizeof buf,
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
                u[13], u[14], u[15]);
  return buf;
}

Result<DeviceUuid> ParseUuid(std::string_view text) {
  auto bad = [&] {
    return InvalidArgument("'" + std::string(text) +
                           "' is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
  };
  if (text.rfind("GPU-", 0) != 0) return bad();
  text.remove_prefix(4);
  DeviceUuid out{};
  size_t nibbles = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '-') {
      if (i != 8 && i != 13 && i != 18 && i != 23) return bad();
      continue;
    }
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (v < 0 || nibbles >= 32) return bad();
    out[nibbles / 2] = static_cast<uint8_t>(out[nibbles / 2] | (v << (nibbles % 2 ? 0 : 4)));
    ++nibbles;
  }
  if (nibbles != 32 || text.size() != 36) return bad();
  return out;
}

}  // namespace gpubroker

#include "common/validate.h"

#include <string>

namespace gpubroker {
namespace {

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '.' || c == '-' || c == '/' || c == ':';
}

bool IsNameStart(char c) { return IsNameChar(c) && c != '.' && c != '-' && c != '/' && c != ':'; }

}  // namespace

Status ValidateName(std::string_view name) {
  if (name.empty()) return InvalidArgument("slot name is empty");
  if (name.size() > kMaxNameLength) {
    return InvalidArgument("slot name is " + std::to_string(name.size()) +
                           " bytes long; the limit is " + std::to_string(kMaxNameLength));
  }
  for (char c : name) {
    if (!IsNameChar(c)) {
      return InvalidArgument("slot name '" + std::string(name) +
                             "' contains a character outside [A-Za-z0-9_.:/-]");
    }
  }
  if (!IsNameStart(name.front())) {
    return InvalidArgument("slot name '" + std::string(name) +
                           "' must start with a letter, a digit or '_'");
  }
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view part = name.substr(start, end - start);
    if (part.empty() || part == "..") {
      return InvalidArgument("slot name '" + std::string(name) +
                             "' has an empty or '..' path component");
    }
    start = end + 1;
  }
  return Status::Ok();
}

Status ValidateDType(DType dtype) {
  switch (dtype.code) {
    case DType::kInt:
    case DType::kUInt:
    case DType::kFloat:
    case DType::kBfloat:
    case DType::kComplex:
    case DType::kBool: break;
    default: return InvalidArgument("dtype code " + std::to_string(dtype.code) + " is not supported");
  }
  if (dtype.bits == 0 || dtype.bits % 8 != 0 || dtype.lanes == 0) {
    return InvalidArgument("dtype " + DTypeName(dtype) + " is not a whole number of bytes");
  }
  return Status::Ok();
}

static Status CheckShape(std::span<const int64_t> shape) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) {
    return InvalidArgument("ndim " + std::to_string(shape.size()) + " exceeds the limit of " +
                           std::to_string(kMaxDims));
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return InvalidArgument("shape[" + std::to_string(i) + "] is negative (" +
                             std::to_string(shape[i]) + ")");
    }
  }
  return Status::Ok();
}

Result<std::vector<int64_t>> ContiguousStrides(std::span<const int64_t> shape) {
  GPB_RETURN_IF_ERROR(CheckShape(shape));
  std::vector<int64_t> strides(shape.size());
  int64_t step = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = step;
    int64_t dim = shape[i] == 0 ? 1 : shape[i];
    if (__builtin_mul_overflow(step, dim, &step)) {
      return InvalidArgument("shape has more elements than fit in 64 bits");
    }
  }
  return strides;
}

Result<uint64_t> ViewExtentBytes(DType dtype, std::span<const int64_t> shape,
                                 std::span<const int64_t> strides) {
  GPB_RETURN_IF_ERROR(ValidateDType(dtype));
  GPB_RETURN_IF_ERROR(CheckShape(shape));
  if (strides.size() != shape.size()) {
    return InvalidArgument("strides have " + std::to_string(strides.size()) +
                           " entries but shape has " + std::to_string(shape.size()));
  }
  uint64_t max_offset = 0;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (strides[i] < 0) {
      return InvalidArgument("strides[" + std::to_string(i) + "] is negative; not supported");
    }
    if (shape[i] == 0) return uint64_t{0};
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t term = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(shape[i] - 1),
                               static_cast<uint64_t>(strides[i]), &term) ||
        __builtin_add_overflow(max_offset, term, &max_offset)) {
      return InvalidArgument("shape and strides address more elements than fit in 64 bits");
    }
  }
  uint64_t bytes = 0;
  if (__builtin_add_overflow(max_offset, uint64_t{1}, &bytes) ||
      __builtin_mul_overflow(bytes, uint64_t{dtype.itemsize()}, &bytes)) {
    return InvalidArgument("shape and strides span more bytes than fit in 64 bits");
  }
  return bytes;
}

Result<uint64_t> CheckViewFits(DType dtype, std::span<const int64_t> shape,
                               std::span<const int64_t> strides, uint64_t byte_offset,
                               uint64_t allocation_bytes) {
  GPB_ASSIGN_OR_RETURN(uint64_t extent, ViewExtentBytes(dtype, shape, strides));
  if (byte_offset % dtype.itemsize() != 0) {
    return InvalidArgument("byte offset " + std::to_string(byte_offset) +
                           " is not a multiple of the element size " +
                           std::to_string(dtype.itemsize()));
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(byte_offset, extent, &end) || end > allocation_bytes) {
    return InvalidArgument("view of " + std::to_string(extent) + " bytes at offset " +
                           std::to_string(byte_offset) + " does not fit in an allocation of " +
                           std::to_string(allocation_bytes) + " bytes");
  }
  return extent;
}

}  // namespace gpubroker

// Checks on everything a client, a config file or shared memory can hand us:
// slot names, dtypes, shapes and strides. All arithmetic is overflow-checked.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

namespace gpubroker {

// 1..127 bytes of [A-Za-z0-9_.:/-], starting with a letter, digit or '_', with
// no empty path component ("a//b", trailing '/') and no ".." component.
Status ValidateName(std::string_view name);

// A dtype we can describe to DLPack consumers: a known code, whole bytes.
Status ValidateDType(DType dtype);

// Row-major strides (in elements) for `shape`.
Result<std::vector<int64_t>> ContiguousStrides(std::span<const int64_t> shape);

// Bytes a view spans from its first element: 0 for an empty tensor, otherwise
// (max element offset + 1) * itemsize. Rejects negative sizes or strides,
// ndim > kMaxDims and any overflow.
Result<uint64_t> ViewExtentBytes(DType dtype, std::span<const int64_t> shape,
                                 std::span<const int64_t> strides);

// Checks that a view at `byte_offset` with this layout lies inside an
// allocation of `allocation_bytes` and that the offset is element-aligned;
// returns the extent.
Result<uint64_t> CheckViewFits(DType dtype, std::span<const int64_t> shape,
                               std::span<const int64_t> strides, uint64_t byte_offset,
                               uint64_t allocation_bytes);

}  // namespace gpubroker

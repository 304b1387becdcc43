// One kernel launch that copies many device buffers: the batched copy of
// Subscriber.copy_into (batch_copy.cc loads it with the driver API).
//
// The copies are cut into chunks of kChunk bytes, numbered across the whole
// batch; each block takes chunks grid-stride, finds the copy its chunk is in
// by binary search over the copies' first chunk numbers, and moves it in
// 16-byte words where source, destination and length allow, else in bytes.

#include <cstdint>

namespace {
constexpr unsigned long long kChunk = 64 * 1024;
constexpr int kUnroll = 4;
}  // namespace

struct GpbCopySegment {
  unsigned long long src, dst, bytes, first_chunk;
};

extern "C" __global__ void __launch_bounds__(256) gpb_batch_copy(const GpbCopySegment* segments, int count,
                                                                 unsigned long long chunks) {
  __shared__ int found;
  for (unsigned long long c = blockIdx.x; c < chunks; c += gridDim.x) {
    if (threadIdx.x == 0) {
      int lo = 0, hi = count - 1;  // the last copy whose first chunk is <= c
      while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (segments[mid].first_chunk <= c) lo = mid; else hi = mid - 1;
      }
      found = lo;
    }
    __syncthreads();
    const GpbCopySegment s = segments[found];
    __syncthreads();  // every thread has read `found` before the next chunk's search
    const unsigned long long offset = (c - s.first_chunk) * kChunk;
    const unsigned long long left = s.bytes - offset;
    const unsigned long long len = left < kChunk ? left : kChunk;
    const char* src = reinterpret_cast<const char*>(s.src) + offset;
    char* dst = reinterpret_cast<char*>(s.dst) + offset;
    if (((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | len) & 15) == 0) {
      const uint4* from = reinterpret_cast<const uint4*>(src);
      uint4* to = reinterpret_cast<uint4*>(dst);
      const unsigned long long words = len / 16;
      unsigned long long i = threadIdx.x;
      for (; i + (kUnroll - 1) * blockDim.x < words; i += kUnroll * blockDim.x) {
        uint4 v[kUnroll];
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) v[k] = from[i + k * blockDim.x];
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) to[i + k * blockDim.x] = v[k];
      }
      for (; i < words; i += blockDim.x) to[i] = from[i];
    } else {
      for (unsigned long long i = threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
    }
  }
}

#include "client/src/batch_copy.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "client/batch_copy_fatbin.h"  // kBatchCopyFatbin: batch_copy.cu, built for sm_80, sm_90 and PTX
#include "common/cuda_driver.h"

namespace gpubroker {
namespace {

constexpr uint64_t kChunk = 64 * 1024;  // as in batch_copy.cu
constexpr unsigned kThreads = 256;

struct Segment {  // batch_copy.cu's GpbCopySegment
  uint64_t src, dst, bytes, first_chunk;
};

// The kernel, loaded once into each context that runs a plan.
Result<CUfunction> KernelIn(const CudaDriver& d, CUcontext ctx) {
  static std::mutex mu;
  static auto* loaded = new std::map<CUcontext, CUfunction>();  // lives as long as the process, as the modules do
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = loaded->find(ctx); it != loaded->end()) return it->second;
  CUmodule module = nullptr;
  if (CUresult r = d.cuModuleLoadData(&module, kBatchCopyFatbin); r != CUDA_SUCCESS) {
    return Unsupported("the batched copy's kernel does not load on this device (" + d.Check(r, "cuModuleLoadData").message() +
                       ")");
  }
  CUfunction fn = nullptr;
  GPB_RETURN_IF_ERROR(d.Check(d.cuModuleGetFunction(&fn, module, "gpb_batch_copy"), "cuModuleGetFunction"));
  loaded->emplace(ctx, fn);
  return fn;
}

}  // namespace

struct CopyPlan::Impl {
  const CudaDriver* driver = nullptr;
  int ordinal = 0;
  CUfunction kernel = nullptr;
  CUdeviceptr table = 0;
  int count = 0;
  uint64_t chunks = 0;
  unsigned blocks = 0;

  ~Impl() {
    if (table == 0) return;
    auto ctx = EnterUnlessCurrent(*driver, ordinal);
    if (ctx.ok()) driver->cuMemFree(table);
  }
};

CopyPlan::CopyPlan(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CopyPlan::CopyPlan(CopyPlan&&) noexcept = default;
CopyPlan& CopyPlan::operator=(CopyPlan&&) noexcept = default;
CopyPlan::~CopyPlan() = default;

Result<CopyPlan> CopyPlan::Make(int ordinal, std::span<const CopySegment> copies) {
  if (copies.empty()) return InvalidArgument("a batched copy needs at least one copy");
  if (copies.size() > (1u << 30)) return InvalidArgument("too many copies in one batch");
  GPB_ASSIGN_OR_RETURN(const CudaDriver* d, CudaDriver::Get());
  if (ordinal < 0 || ordinal >= d->device_count()) {
    return InvalidArgument("no CUDA device " + std::to_string(ordinal) + " in this process");
  }
  GPB_ASSIGN_OR_RETURN(std::optional<ScopedDeviceContext> scope, EnterUnlessCurrent(*d, ordinal));
  CUcontext ctx = nullptr;
  GPB_RETURN_IF_ERROR(d->Check(d->cuCtxGetCurrent(&ctx), "cuCtxGetCurrent"));
  auto impl = std::make_unique<Impl>();
  impl->driver = d;
  impl->ordinal = ordinal;
  GPB_ASSIGN_OR_RETURN(impl->kernel, KernelIn(*d, ctx));
  std::vector<Segment> table;
  table.reserve(copies.size());
  uint64_t chunks = 0;
  for (const CopySegment& c : copies) {
    table.push_back(Segment{c.src, c.dst, c.bytes, chunks});
    chunks += (c.bytes + kChunk - 1) / kChunk;
  }
  GPB_RETURN_IF_ERROR(d->Check(d->cuMemAlloc(&impl->table, table.size() * sizeof(Segment)), "cuMemAlloc"));
  GPB_RETURN_IF_ERROR(
      d->Check(d->cuMemcpyHtoD(impl->table, table.data(), table.size() * sizeof(Segment)), "cuMemcpyHtoD"));
  CUdevice device = 0;
  int sms = 0;
  GPB_RETURN_IF_ERROR(d->Check(d->cuDeviceGet(&device, ordinal), "cuDeviceGet"));
  GPB_RETURN_IF_ERROR(d->Check(
      d->cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device), "cuDeviceGetAttribute"));
  impl->count = static_cast<int>(table.size());
  impl->chunks = chunks;
  impl->blocks = static_cast<unsigned>(std::clamp<uint64_t>(chunks, 1, static_cast<uint64_t>(std::max(sms, 1)) * 8));
  return CopyPlan(std::move(impl));
}

Status CopyPlan::Run(void* stream) const {
  if (!impl_) return InvalidArgument("this copy plan is empty");
  const Impl& p = *impl_;
  if (p.chunks == 0) return Status::Ok();  // nothing but empty copies
  GPB_ASSIGN_OR_RETURN(std::optional<ScopedDeviceContext> scope, EnterUnlessCurrent(*p.driver, p.ordinal));
  CUdeviceptr table = p.table;
  int count = p.count;
  unsigned long long chunks = p.chunks;
  void* args[] = {&table, &count, &chunks};
  return p.driver->Check(p.driver->cuLaunchKernel(p.kernel, p.blocks, 1, 1, kThreads, 1, 1, 0,
                                                  static_cast<CUstream>(stream), args, nullptr),
                         "cuLaunchKernel (batched copy)");
}

}  // namespace gpubroker

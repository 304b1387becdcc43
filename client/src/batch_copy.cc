#include "client/src/batch_copy.h"

#include <algorithm>
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

}  // namespace

// A plan owns what it made: the kernel's module and the table, both in the
// context it was made in, and a reference to that context where it is the
// device's primary one, so that neither goes while the plan lives (a
// cuda_vmm client maps without keeping a context of its own).
struct CopyPlan::Impl {
  const CudaDriver* driver = nullptr;
  int ordinal = 0;
  CUcontext context = nullptr;  // where the module and the table live
  bool retained = false;        // a primary-context reference this plan holds
  CUmodule module = nullptr;
  CUfunction kernel = nullptr;
  CUdeviceptr table = 0;
  int count = 0;
  uint64_t chunks = 0;
  unsigned blocks = 0;

  ~Impl() {
    if (context == nullptr) return;
    CUcontext previous = nullptr;
    driver->cuCtxGetCurrent(&previous);
    if (previous != context) driver->cuCtxSetCurrent(context);
    if (table != 0) driver->cuMemFree(table);
    if (module != nullptr) driver->cuModuleUnload(module);
    if (previous != context) driver->cuCtxSetCurrent(previous);
    CUdevice device = 0;
    if (retained && driver->cuDeviceGet(&device, ordinal) == CUDA_SUCCESS) driver->cuDevicePrimaryCtxRelease(device);
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
  std::vector<Segment> table;
  table.reserve(copies.size());
  uint64_t chunks = 0;
  for (const CopySegment& c : copies) {
    if (c.bytes > (uint64_t{1} << 48)) return InvalidArgument("a copy of " + std::to_string(c.bytes) + " bytes");
    table.push_back(Segment{c.src, c.dst, c.bytes, chunks});
    chunks += (c.bytes + kChunk - 1) / kChunk;
  }
  GPB_ASSIGN_OR_RETURN(std::optional<ScopedDeviceContext> scope, EnterUnlessCurrent(*d, ordinal));
  auto impl = std::make_unique<Impl>();
  impl->driver = d;
  impl->ordinal = ordinal;
  CUdevice device = 0;
  GPB_RETURN_IF_ERROR(d->Check(d->cuDeviceGet(&device, ordinal), "cuDeviceGet"));
  GPB_RETURN_IF_ERROR(d->Check(d->cuCtxGetCurrent(&impl->context), "cuCtxGetCurrent"));
  CUcontext primary = nullptr;
  GPB_RETURN_IF_ERROR(d->Check(d->cuDevicePrimaryCtxRetain(&primary, device), "cuDevicePrimaryCtxRetain"));
  if (primary == impl->context) {
    impl->retained = true;
  } else {
    d->cuDevicePrimaryCtxRelease(device);  // a context of the caller's own: the caller keeps it
  }
  if (CUresult r = d->cuModuleLoadData(&impl->module, kBatchCopyFatbin); r != CUDA_SUCCESS) {
    impl->module = nullptr;
    return Unsupported("the batched copy's kernel does not load on this device (" +
                       d->Check(r, "cuModuleLoadData").message() + ")");
  }
  GPB_RETURN_IF_ERROR(
      d->Check(d->cuModuleGetFunction(&impl->kernel, impl->module, "gpb_batch_copy"), "cuModuleGetFunction"));
  GPB_RETURN_IF_ERROR(d->Check(d->cuMemAlloc(&impl->table, table.size() * sizeof(Segment)), "cuMemAlloc"));
  GPB_RETURN_IF_ERROR(
      d->Check(d->cuMemcpyHtoD(impl->table, table.data(), table.size() * sizeof(Segment)), "cuMemcpyHtoD"));
  int sms = 0;
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
  const CudaDriver& d = *p.driver;
  CUcontext previous = nullptr;
  GPB_RETURN_IF_ERROR(d.Check(d.cuCtxGetCurrent(&previous), "cuCtxGetCurrent"));
  if (previous != p.context) GPB_RETURN_IF_ERROR(d.Check(d.cuCtxSetCurrent(p.context), "cuCtxSetCurrent"));
  CUdeviceptr table = p.table;
  int count = p.count;
  unsigned long long chunks = p.chunks;
  void* args[] = {&table, &count, &chunks};
  Status launched = d.Check(
      d.cuLaunchKernel(p.kernel, p.blocks, 1, 1, kThreads, 1, 1, 0, static_cast<CUstream>(stream), args, nullptr),
      "cuLaunchKernel (batched copy)");
  if (previous != p.context) d.cuCtxSetCurrent(previous);
  return launched;
}

}  // namespace gpubroker

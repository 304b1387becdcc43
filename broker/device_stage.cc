#include "broker/device_stage.h"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "common/cuda_driver.h"

namespace gpubroker {
namespace {

// A device's primary context, retained until the last of the stage, the
// memory it mapped and its pinned blocks lets go.
struct ContextHold {
  ContextHold(const CudaDriver& d, CUdevice device, CUcontext ctx) : d(d), device(device), ctx(ctx) {}
  ~ContextHold() { d.cuDevicePrimaryCtxRelease(device); }
  const CudaDriver& d;
  CUdevice device;
  CUcontext ctx;
};

// A device's context, and the stream and event the stage's copies use.
struct DeviceContext {
  std::shared_ptr<ContextHold> hold;
  CUcontext ctx = nullptr;
  CUstream stream = nullptr;
  CUevent event = nullptr;
};

// Makes `ctx` current on this thread for a scope.
class Current {
 public:
  Current(const CudaDriver& d, CUcontext ctx) : d_(d) {
    d_.cuCtxGetCurrent(&previous_);
    d_.cuCtxSetCurrent(ctx);
  }
  ~Current() { d_.cuCtxSetCurrent(previous_); }

 private:
  const CudaDriver& d_;
  CUcontext previous_ = nullptr;
};

class VmmMemory final : public DeviceMemory {
 public:
  VmmMemory(const CudaDriver& d, std::shared_ptr<ContextHold> hold, int ordinal, CUdeviceptr ptr, uint64_t bytes)
      : d_(d), hold_(std::move(hold)), ordinal_(ordinal), ptr_(ptr), bytes_(bytes) {}
  ~VmmMemory() override {
    Current in(d_, hold_->ctx);
    d_.cuMemUnmap(ptr_, bytes_);
    d_.cuMemAddressFree(ptr_, bytes_);
  }
  uint64_t address() const override { return ptr_; }
  int ordinal() const override { return ordinal_; }
  uint64_t bytes() const override { return bytes_; }

 private:
  const CudaDriver& d_;
  std::shared_ptr<ContextHold> hold_;
  int ordinal_;
  CUdeviceptr ptr_;
  uint64_t bytes_;
};

// The pinned blocks: made on first use, kept until the last holder of the
// pool lets go (a block held by a send outlives nothing it needs).
struct Pool {
  const CudaDriver* d = nullptr;
  std::shared_ptr<ContextHold> hold;  // any device's: the blocks are portable
  std::mutex mu;
  std::vector<uint8_t*> free;
  size_t made = 0;
  bool starved = false;
  Status error;                    // the last cuMemHostAlloc's, while it fails
  std::function<void()> on_freed;  // posts the stage's `freed` to the loop
  ~Pool() {
    if (!hold) return;
    Current in(*d, hold->ctx);
    for (uint8_t* p : free) d->cuMemFreeHost(p);
  }
};

class CudaStage final : public DeviceStage {
 public:
  CudaStage(boost::asio::io_context& io, const CudaDriver& d) : io_(io), d_(d), pool_(std::make_shared<Pool>()) {
    pool_->d = &d;
    pool_->on_freed = [this] {
      boost::asio::post(io_, [alive = std::weak_ptr<char>(alive_), this] {
        if (alive.lock() && freed) freed();
      });
    };
    worker_ = std::thread([this] { Run(); });
  }

  ~CudaStage() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    worker_.join();
    alive_.reset();
    {
      std::lock_guard<std::mutex> lock(pool_->mu);
      pool_->on_freed = nullptr;
    }
    for (auto& [ordinal, c] : devices_) {
      Current in(d_, c.ctx);
      d_.cuEventDestroy(c.event);
      d_.cuStreamDestroy(c.stream);
    }
    // The contexts stay retained while mapped memory or a block (held by a
    // send, or by a peer's record) is alive: ContextHold.
  }

  Result<std::shared_ptr<const DeviceMemory>> Map(UniqueFd fd, uint64_t bytes, const DeviceUuid& uuid,
                                                  bool writable) override {
    if (!fd.valid()) return gpubroker::Internal("a cuda_vmm attach carried no file descriptor");
    GPB_ASSIGN_OR_RETURN(int ordinal, d_.OrdinalOf(uuid));
    GPB_ASSIGN_OR_RETURN(DeviceContext * c, Context(ordinal));
    Current in(d_, c->ctx);
    const CUmemAllocationProp prop = VmmAllocationProperties(ordinal);
    size_t granularity = 0;
    GPB_RETURN_IF_ERROR(d_.Check(
        d_.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
        "cuMemGetAllocationGranularity"));
    const uint64_t size = (bytes + granularity - 1) / granularity * granularity;
    GPB_ASSIGN_OR_RETURN(CUdeviceptr ptr, MapVmmFd(d_, fd.get(), size, granularity));
    auto memory = std::make_shared<const VmmMemory>(d_, c->hold, ordinal, ptr, size);
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = ordinal;
    access.flags = writable ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ;
    GPB_RETURN_IF_ERROR(d_.Check(d_.cuMemSetAccess(ptr, size, &access, 1), "cuMemSetAccess"));
    return std::shared_ptr<const DeviceMemory>(memory);
  }

  std::shared_ptr<uint8_t> Block() override {
    std::shared_ptr<Pool> pool = pool_;
    uint8_t* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(pool->mu);
      if (!pool->free.empty()) {
        p = pool->free.back();
        pool->free.pop_back();
      } else if (pool->made < kMaxBlocks && pool->hold) {
        Current in(d_, pool->hold->ctx);
        void* made = nullptr;
        pool->error = d_.Check(d_.cuMemHostAlloc(&made, kBlockBytes, CU_MEMHOSTALLOC_PORTABLE),
                               "cuMemHostAlloc of a pinned staging block");
        if (pool->error.ok()) {
          p = static_cast<uint8_t*>(made);
          ++pool->made;
        }
      }
      if (p == nullptr) {
        pool->starved = true;
        return nullptr;
      }
    }
    return std::shared_ptr<uint8_t>(p, [pool](uint8_t* b) {
      std::function<void()> wake;
      {
        std::lock_guard<std::mutex> lock(pool->mu);
        pool->free.push_back(b);
        if (pool->starved) wake = pool->on_freed;
        pool->starved = false;
      }
      if (wake) wake();
    });
  }

  Status BlockError() override {
    std::lock_guard<std::mutex> lock(pool_->mu);
    return pool_->made == pool_->free.size() ? pool_->error : Status::Ok();
  }

  void Drain() override {
    std::unique_lock<std::mutex> lock(mu_);
    drained_.wait(lock, [this] { return jobs_.empty() && !busy_; });
  }

  void ToHost(std::shared_ptr<const DeviceMemory> memory, uint64_t offset, std::shared_ptr<uint8_t> block, size_t n,
              Done done) override {
    Queue(Job{std::move(memory), offset, std::move(block), n, false, std::move(done)});
  }
  void ToDevice(std::shared_ptr<const DeviceMemory> memory, uint64_t offset, std::shared_ptr<uint8_t> block,
                size_t n, Done done) override {
    Queue(Job{std::move(memory), offset, std::move(block), n, true, std::move(done)});
  }

  Status ToDeviceNow(const DeviceMemory& memory, uint64_t offset, const void* from, size_t n) override {
    GPB_ASSIGN_OR_RETURN(DeviceContext * c, Context(memory.ordinal()));
    Current in(d_, c->ctx);
    GPB_RETURN_IF_ERROR(d_.Check(d_.cuMemcpyHtoD(memory.address() + offset, from, n), "cuMemcpyHtoD"));
    // From pageable memory the call may return before the bytes reach the
    // device: they count as landed only once they have.
    return d_.Check(d_.cuCtxSynchronize(), "cuCtxSynchronize");
  }

  // The first device's context also makes the pinned blocks.
  Result<DeviceContext*> Context(int ordinal) {
    std::lock_guard<std::mutex> lock(contexts_mu_);
    auto it = devices_.find(ordinal);
    if (it != devices_.end()) return &it->second;
    DeviceContext c;
    CUdevice device = 0;
    GPB_RETURN_IF_ERROR(d_.Check(d_.cuDeviceGet(&device, ordinal), "cuDeviceGet"));
    GPB_RETURN_IF_ERROR(d_.Check(d_.cuDevicePrimaryCtxRetain(&c.ctx, device), "cuDevicePrimaryCtxRetain"));
    c.hold = std::make_shared<ContextHold>(d_, device, c.ctx);
    Current in(d_, c.ctx);
    Status s = d_.Check(d_.cuStreamCreate(&c.stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    // Blocking sync: the copier sleeps until a copy ends, never spins a core.
    if (s.ok()) s = d_.Check(d_.cuEventCreate(&c.event, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC), "cuEventCreate");
    if (!s.ok()) {
      if (c.stream != nullptr) d_.cuStreamDestroy(c.stream);
      return s;
    }
    {
      std::lock_guard<std::mutex> pool_lock(pool_->mu);
      if (!pool_->hold) pool_->hold = c.hold;
    }
    return &devices_.emplace(ordinal, c).first->second;
  }

 private:
  struct Job {
    std::shared_ptr<const DeviceMemory> memory;
    uint64_t offset;
    std::shared_ptr<uint8_t> block;
    size_t n;
    bool to_device;
    Done done;
  };

  void Queue(Job job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

  void Run() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping
        job = std::move(jobs_.front());
        jobs_.pop_front();
        busy_ = true;
      }
      Status s = Copy(job);
      boost::asio::post(io_, [alive = std::weak_ptr<char>(alive_), done = std::move(job.done), s] {
        if (alive.lock()) done(s);
      });
      job.block.reset();  // back to the pool: a copy to the device is done with it
      job.memory.reset();
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_ = false;
      }
      drained_.notify_all();
    }
  }

  Status Copy(const Job& job) {
    if (job.offset > job.memory->bytes() || job.n > job.memory->bytes() - job.offset || job.n > kBlockBytes) {
      return gpubroker::Internal("a staged copy outside its memory");
    }
    GPB_ASSIGN_OR_RETURN(DeviceContext * c, Context(job.memory->ordinal()));
    Current in(d_, c->ctx);
    const CUdeviceptr at = job.memory->address() + job.offset;
    GPB_RETURN_IF_ERROR(job.to_device
                            ? d_.Check(d_.cuMemcpyHtoDAsync(at, job.block.get(), job.n, c->stream), "cuMemcpyHtoDAsync")
                            : d_.Check(d_.cuMemcpyDtoHAsync(job.block.get(), at, job.n, c->stream), "cuMemcpyDtoHAsync"));
    Status s = d_.Check(d_.cuEventRecord(c->event, c->stream), "cuEventRecord");
    if (s.ok()) s = d_.Check(d_.cuEventSynchronize(c->event), "cuEventSynchronize");
    if (!s.ok()) d_.cuCtxSynchronize();  // the block goes back to the pool: not while a copy may still use it
    return s;
  }

  boost::asio::io_context& io_;
  const CudaDriver& d_;
  std::shared_ptr<char> alive_ = std::make_shared<char>();
  std::shared_ptr<Pool> pool_;
  std::mutex contexts_mu_;
  std::map<int, DeviceContext> devices_;
  std::mutex mu_;
  std::condition_variable cv_, drained_;
  std::deque<Job> jobs_;
  bool busy_ = false, stopping_ = false;
  std::thread worker_;
};

}  // namespace

Result<std::unique_ptr<DeviceStage>> DeviceStage::Create(boost::asio::io_context& io) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* d, CudaDriver::Get());
  return std::unique_ptr<DeviceStage>(std::make_unique<CudaStage>(io, *d));
}

}  // namespace gpubroker

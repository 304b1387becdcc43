#include "client/src/live_cuda.h"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "common/cuda_driver.h"

namespace gpubroker {
namespace {

// One thread per process waits for writers' and readers' streams, in order,
// and runs what was to happen after each.
class StreamWatcher {
 public:
  static StreamWatcher& Get() {
    static StreamWatcher* watcher = new StreamWatcher();  // lives as long as the process
    return *watcher;
  }

  // Retains the device's primary context here, on the caller's thread, while
  // the caller still holds it: a caller whose only reference is its own scope
  // (a cuda_vmm client maps without keeping a context) would otherwise drop
  // the last one on return, and the context, with the event recorded in it,
  // would go before the watcher's thread retained it.
  Status Add(const CudaDriver& driver, int ordinal, CUevent event, std::function<void(Status)> done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = contexts_.find(ordinal);
      if (it == contexts_.end()) {
        CUdevice device = 0;
        CUcontext ctx = nullptr;
        GPB_RETURN_IF_ERROR(driver.Check(driver.cuDeviceGet(&device, ordinal), "cuDeviceGet"));
        GPB_RETURN_IF_ERROR(
            driver.Check(driver.cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain"));
        it = contexts_.emplace(ordinal, ctx).first;  // kept: the watcher lives as long as the process
      }
      queue_.push_back(Item{&driver, it->second, event, std::move(done)});
      if (!started_) {
        std::thread([this] { Run(); }).detach();
        started_ = true;
      }
    }
    cv_.notify_one();
    return Status::Ok();
  }

 private:
  struct Item {
    const CudaDriver* driver;
    CUcontext context;  // the device's primary context, retained by Add
    CUevent event;
    std::function<void(Status)> done;
  };

  void Run() {
    while (true) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      const CudaDriver& d = *item.driver;
      Status s = Status::Ok();
      if (current_ != item.context) {
        s = d.Check(d.cuCtxSetCurrent(item.context), "cuCtxSetCurrent");
        if (s.ok()) current_ = item.context;
      }
      if (s.ok()) s = d.Check(d.cuEventSynchronize(item.event), "cuEventSynchronize");
      d.cuEventDestroy(item.event);
      item.done(s);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool started_ = false;
  std::map<int, CUcontext> contexts_;  // by ordinal, under mu_
  // Touched by the watcher thread alone.
  CUcontext current_ = nullptr;
};

}  // namespace

Result<bool> StreamIdle(int ordinal, void* stream) {
  auto s = static_cast<CUstream>(stream);
  GPB_ASSIGN_OR_RETURN(const CudaDriver* driver, CudaDriver::Get());
  GPB_ASSIGN_OR_RETURN(std::optional<ScopedDeviceContext> ctx, EnterUnlessCurrent(*driver, ordinal));
  CUresult r = driver->cuStreamQuery(s);
  if (r == CUDA_ERROR_NOT_READY) return false;
  GPB_RETURN_IF_ERROR(driver->Check(r, "cuStreamQuery"));
  return true;
}

Status WhenStreamDone(int ordinal, void* stream, std::function<void(Status)> done) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* driver, CudaDriver::Get());
  GPB_ASSIGN_OR_RETURN(std::optional<ScopedDeviceContext> ctx, EnterUnlessCurrent(*driver, ordinal));
  CUevent e = nullptr;
  // Blocking sync: the watcher sleeps until the stream gets there, never spins a core.
  GPB_RETURN_IF_ERROR(driver->Check(driver->cuEventCreate(&e, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC),
                                    "cuEventCreate"));
  if (Status s = driver->Check(driver->cuEventRecord(e, static_cast<CUstream>(stream)), "cuEventRecord on the stream");
      !s.ok()) {
    driver->cuEventDestroy(e);
    return s;
  }
  if (Status s = StreamWatcher::Get().Add(*driver, ordinal, e, std::move(done)); !s.ok()) {
    driver->cuEventDestroy(e);
    return s;
  }
  return Status::Ok();
}

}  // namespace gpubroker

#include "client/src/live_cuda.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

#include "common/cuda_driver.h"

namespace gpubroker {
namespace {

// Waits for writers' and readers' streams and runs what was to happen after
// each: one thread per stream with something pending (by device and stream
// handle), so what waits for one stream never waits behind another, slower
// one (a reader's release behind a long kernel holds up no commit). Items of
// one stream finish in the order they were queued, as its work does. A
// thread that has had nothing to wait for for kIdle ends; the next item on
// its stream starts another.
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
  Status Add(const CudaDriver& driver, int ordinal, void* stream, CUevent event, std::function<void(Status)> done) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = contexts_.find(ordinal);
    if (it == contexts_.end()) {
      CUdevice device = 0;
      CUcontext ctx = nullptr;
      GPB_RETURN_IF_ERROR(driver.Check(driver.cuDeviceGet(&device, ordinal), "cuDeviceGet"));
      GPB_RETURN_IF_ERROR(driver.Check(driver.cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain"));
      it = contexts_.emplace(ordinal, ctx).first;  // kept: the watcher lives as long as the process
    }
    const Key key{ordinal, stream};
    std::shared_ptr<Lane>& lane = lanes_[key];
    if (!lane) {
      auto fresh = std::make_shared<Lane>();
      try {
        std::thread([this, key, fresh] { Run(key, fresh); }).detach();
      } catch (const std::system_error& e) {
        lanes_.erase(key);
        return ResourceExhausted(std::string("no thread to wait for the stream: ") + e.what());
      }
      lane = std::move(fresh);
    }
    lane->queue.push_back(Item{&driver, it->second, event, std::move(done)});
    lane->cv.notify_one();
    return Status::Ok();
  }

 private:
  static constexpr std::chrono::seconds kIdle{10};
  using Key = std::pair<int, void*>;  // device ordinal, stream handle (0: that device's legacy stream)
  struct Item {
    const CudaDriver* driver;
    CUcontext context;  // the device's primary context, retained by Add
    CUevent event;
    std::function<void(Status)> done;
  };
  struct Lane {
    std::condition_variable cv;  // with mu_
    std::deque<Item> queue;      // under mu_
  };

  void Run(Key key, std::shared_ptr<Lane> lane) {
    CUcontext current = nullptr;
    while (true) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!lane->cv.wait_for(lock, kIdle, [&lane] { return !lane->queue.empty(); })) {
          lanes_.erase(key);  // under the lock, empty: no item is lost
          return;
        }
        item = std::move(lane->queue.front());
        lane->queue.pop_front();
      }
      const CudaDriver& d = *item.driver;
      Status s = Status::Ok();
      if (current != item.context) {
        s = d.Check(d.cuCtxSetCurrent(item.context), "cuCtxSetCurrent");
        if (s.ok()) current = item.context;
      }
      if (s.ok()) s = d.Check(d.cuEventSynchronize(item.event), "cuEventSynchronize");
      d.cuEventDestroy(item.event);
      item.done(s);
    }
  }

  std::mutex mu_;
  std::map<int, CUcontext> contexts_;             // by ordinal, under mu_
  std::map<Key, std::shared_ptr<Lane>> lanes_;  // a thread's each, under mu_
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
  if (Status s = StreamWatcher::Get().Add(*driver, ordinal, stream, e, std::move(done)); !s.ok()) {
    driver->cuEventDestroy(e);
    return s;
  }
  return Status::Ok();
}

}  // namespace gpubroker

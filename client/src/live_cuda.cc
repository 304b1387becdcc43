#include "client/src/live_cuda.h"

#include <condition_variable>
#include <deque>
#include <mutex>
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

  void Add(const CudaDriver& driver, int ordinal, CUevent event, std::function<void(Status)> done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(Item{&driver, ordinal, event, std::move(done)});
      if (!started_) {
        std::thread([this] { Run(); }).detach();
        started_ = true;
      }
    }
    cv_.notify_one();
  }

 private:
  struct Item {
    const CudaDriver* driver;
    int ordinal;
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
      Status s = Status::Ok();
      {
        auto ctx = ScopedDeviceContext::Enter(*item.driver, item.ordinal);
        s = ctx.ok() ? item.driver->Check(item.driver->cuEventSynchronize(item.event), "cuEventSynchronize")
                     : ctx.status();
        item.driver->cuEventDestroy(item.event);
      }
      item.done(s);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool started_ = false;
};

}  // namespace

Status WhenStreamDone(int ordinal, void* stream, std::function<void(Status)> done) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* driver, CudaDriver::Get());
  GPB_ASSIGN_OR_RETURN(ScopedDeviceContext ctx, ScopedDeviceContext::Enter(*driver, ordinal));
  CUevent e = nullptr;
  GPB_RETURN_IF_ERROR(driver->Check(driver->cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate"));
  if (Status s = driver->Check(driver->cuEventRecord(e, static_cast<CUstream>(stream)), "cuEventRecord on the reader's stream");
      !s.ok()) {
    driver->cuEventDestroy(e);
    return s;
  }
  StreamWatcher::Get().Add(*driver, ordinal, e, std::move(done));
  return Status::Ok();
}

}  // namespace gpubroker

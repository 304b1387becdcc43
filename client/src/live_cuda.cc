#include "client/src/live_cuda.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "common/cuda_driver.h"

namespace gpubroker {
namespace {

class CudaWriterEvents final : public WriterEvents {
 public:
  CudaWriterEvents(const CudaDriver& driver, int ordinal, uint32_t nbuffers)
      : driver_(driver), ordinal_(ordinal), events_(nbuffers, nullptr), handles_(nbuffers) {}

  ~CudaWriterEvents() override {
    auto ctx = ScopedDeviceContext::Enter(driver_, ordinal_);
    for (CUevent e : events_) {
      if (e != nullptr) driver_.cuEventDestroy(e);
    }
  }

  Result<IpcEventHandle> Record(uint32_t buffer, void* stream) override {
    if (buffer >= events_.size()) return InvalidArgument("buffer " + std::to_string(buffer) + " is out of range");
    GPB_ASSIGN_OR_RETURN(ScopedDeviceContext ctx, ScopedDeviceContext::Enter(driver_, ordinal_));
    if (events_[buffer] == nullptr) {
      CUevent e = nullptr;
      GPB_RETURN_IF_ERROR(driver_.Check(
          driver_.cuEventCreate(&e, CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING), "cuEventCreate"));
      CUipcEventHandle h{};
      if (Status s = driver_.Check(driver_.cuIpcGetEventHandle(&h, e), "cuIpcGetEventHandle"); !s.ok()) {
        driver_.cuEventDestroy(e);
        return s;
      }
      static_assert(sizeof h == sizeof(IpcEventHandle));
      std::memcpy(handles_[buffer].data(), &h, sizeof h);
      events_[buffer] = e;
    }
    GPB_RETURN_IF_ERROR(driver_.Check(driver_.cuEventRecord(events_[buffer], static_cast<CUstream>(stream)),
                                      "cuEventRecord on the writer's stream"));
    return handles_[buffer];
  }

 private:
  const CudaDriver& driver_;
  int ordinal_;
  std::vector<CUevent> events_;
  std::vector<IpcEventHandle> handles_;
};

class CudaReaderEvents final : public ReaderEvents {
 public:
  CudaReaderEvents(const CudaDriver& driver, int ordinal) : driver_(driver), ordinal_(ordinal) {}

  ~CudaReaderEvents() override {
    auto ctx = ScopedDeviceContext::Enter(driver_, ordinal_);
    for (auto& [handle, e] : opened_) driver_.cuEventDestroy(e);
  }

  Status StreamWait(const IpcEventHandle& handle, void* stream) override {
    GPB_ASSIGN_OR_RETURN(ScopedDeviceContext ctx, ScopedDeviceContext::Enter(driver_, ordinal_));
    auto it = opened_.find(handle);
    if (it == opened_.end()) {
      // A writer makes one event per buffer and keeps it: a handful per writer.
      constexpr size_t kMaxOpened = 64;
      if (opened_.size() >= kMaxOpened) {
        for (auto& [h, e] : opened_) driver_.cuEventDestroy(e);
        opened_.clear();
      }
      CUipcEventHandle h{};
      std::memcpy(&h, handle.data(), sizeof h);
      CUevent e = nullptr;
      GPB_RETURN_IF_ERROR(driver_.Check(driver_.cuIpcOpenEventHandle(&e, h),
                                        "cuIpcOpenEventHandle (the writer's commit event)"));
      it = opened_.emplace(handle, e).first;
    }
    return driver_.Check(driver_.cuStreamWaitEvent(static_cast<CUstream>(stream), it->second, 0),
                         "cuStreamWaitEvent on the writer's commit event");
  }

 private:
  const CudaDriver& driver_;
  int ordinal_;
  std::map<IpcEventHandle, CUevent> opened_;
};

// One thread per process waits for readers' streams, in order, and runs what
// was to happen after each.
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

Result<std::unique_ptr<WriterEvents>> WriterEvents::Create(int ordinal, uint32_t nbuffers) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* driver, CudaDriver::Get());
  if (ordinal < 0) return Unsupported("the slot's GPU is not visible to this process");
  return std::unique_ptr<WriterEvents>(new CudaWriterEvents(*driver, ordinal, nbuffers));
}

Result<std::unique_ptr<ReaderEvents>> ReaderEvents::Create(int ordinal) {
  GPB_ASSIGN_OR_RETURN(const CudaDriver* driver, CudaDriver::Get());
  if (ordinal < 0) return Unsupported("the slot's GPU is not visible to this process");
  return std::unique_ptr<ReaderEvents>(new CudaReaderEvents(*driver, ordinal));
}

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

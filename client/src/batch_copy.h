// Many device-to-device copies on one GPU in one kernel launch: the batched
// copy behind Subscriber.copy_into. A copy per tensor is launch-bound (1,000
// tensors of 1.3 MB take twice the time their bytes need); one launch over
// the whole batch runs at the copy bandwidth.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "gpubroker/status.hpp"

namespace gpubroker {

struct CopySegment {
  uint64_t src = 0;  // device addresses, both on the plan's device
  uint64_t dst = 0;
  uint64_t bytes = 0;
};

// A batch made once (its table of copies uploaded to the device) and run
// any number of times: an engine copies the same parameters every step.
class CopyPlan {
 public:
  // kUnsupported where this library was built without its kernel or the
  // driver cannot load it (the caller copies another way); kInvalidArgument
  // for an empty batch or an ordinal this process has no device for.
  static Result<CopyPlan> Make(int ordinal, std::span<const CopySegment> copies);
  CopyPlan(CopyPlan&&) noexcept;
  CopyPlan& operator=(CopyPlan&&) noexcept;
  ~CopyPlan();

  // Queues the copies on `stream` (a CUstream of the plan's device; null:
  // the legacy default stream) and returns at once.
  Status Run(void* stream) const;

  struct Impl;

 private:
  explicit CopyPlan(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace gpubroker

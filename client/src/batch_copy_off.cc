#include "client/src/batch_copy.h"

namespace gpubroker {

struct CopyPlan::Impl {};

Result<CopyPlan> CopyPlan::Make(int, std::span<const CopySegment> copies) {
  if (copies.empty()) return InvalidArgument("a batched copy needs at least one copy");  // as with CUDA
  return Unsupported("this client library was built without CUDA support");
}
CopyPlan::CopyPlan(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CopyPlan::CopyPlan(CopyPlan&&) noexcept = default;
CopyPlan& CopyPlan::operator=(CopyPlan&&) noexcept = default;
CopyPlan::~CopyPlan() = default;
Status CopyPlan::Run(void*) const { return Unsupported("this client library was built without CUDA support"); }

}  // namespace gpubroker

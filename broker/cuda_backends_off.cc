// Built instead of cuda_backends.cc when no CUDA toolkit was found.
#include "broker/cuda_backends.h"

namespace gpubroker {

bool AddCudaBackends(BackendSet& backends, const CudaLimits&) {
  backends.Disable(BackendKind::kCudaVmm, "this broker was built without CUDA support");
  backends.Disable(BackendKind::kCudaIpc, "this broker was built without CUDA support");
  return false;
}

std::vector<DeviceUuid> VisibleCudaDevices() { return {}; }

}  // namespace gpubroker

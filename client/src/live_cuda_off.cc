// Built instead of live_cuda.cc when no CUDA toolkit was found.
#include "client/src/live_cuda.h"

namespace gpubroker {

Result<bool> StreamIdle(int, void*) { return Unsupported("this client library was built without CUDA support"); }

Status WhenStreamDone(int, void*, std::function<void(Status)>) {
  return Unsupported("this client library was built without CUDA support");
}

}  // namespace gpubroker

// Built instead of live_cuda.cc when no CUDA toolkit was found.
#include "client/src/live_cuda.h"

namespace gpubroker {

Result<std::unique_ptr<WriterEvents>> WriterEvents::Create(int, uint32_t) {
  return Unsupported("this client library was built without CUDA support");
}

Result<std::unique_ptr<ReaderEvents>> ReaderEvents::Create(int) {
  return Unsupported("this client library was built without CUDA support");
}

Status WhenStreamDone(int, void*, std::function<void(Status)>) {
  return Unsupported("this client library was built without CUDA support");
}

}  // namespace gpubroker

#include "broker/backend.h"

namespace gpubroker {

void BackendSet::Add(std::unique_ptr<Backend> backend) {
  BackendKind kind = backend->kind();
  missing_.erase(kind);
  backends_[kind] = std::move(backend);
}

void BackendSet::Disable(BackendKind kind, std::string reason) {
  backends_.erase(kind);
  missing_[kind] = std::move(reason);
}

Result<Backend*> BackendSet::Get(BackendKind kind) const {
  auto it = backends_.find(kind);
  if (it != backends_.end()) return it->second.get();
  auto why = missing_.find(kind);
  std::string reason = why != missing_.end() ? why->second : "not built into this broker";
  return Unsupported("backend " + std::string(BackendName(kind)) + " is not available: " + reason);
}

}  // namespace gpubroker

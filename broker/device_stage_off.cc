// A build without CUDA: trees in CUDA memory are not replicated.
#include "broker/device_stage.h"

namespace gpubroker {

Result<std::unique_ptr<DeviceStage>> DeviceStage::Create(boost::asio::io_context&) {
  return Unsupported("this gpubrokerd was built without CUDA");
}

}  // namespace gpubroker

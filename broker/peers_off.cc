// A broker built without UCX has no peers (docs/multinode.md).
#include "broker/peers.h"

namespace gpubroker {

Result<std::unique_ptr<Peers>> Peers::Start(boost::asio::io_context&, RequestHandler&, const PeersConfig&) {
  return Unsupported("peers: this gpubrokerd was built without UCX, so it can neither serve nor follow trees "
                     "on other nodes (install libucx-dev and rebuild)");
}

}  // namespace gpubroker

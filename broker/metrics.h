// The broker's Prometheus metrics, served over HTTP by prometheus-cpp's
// exposer (its own threads; every metric it reads is thread-safe). Counters
// and the attach histogram are updated as requests are answered; gauges at
// each tick of the event loop. docs/operations.md lists them, with PromQL.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "broker/request_handler.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace gpubroker {

class Metrics final : public RequestObserver {
 public:
  // Serves http://<listen>/metrics ("127.0.0.1:9464"; port 0 picks a free
  // one). Fails, saying why, if the address cannot be bound.
  static Result<std::unique_ptr<Metrics>> Start(const std::string& listen, std::string_view version,
                                                uint64_t started_ns);
  ~Metrics() override;

  int port() const;  // the port actually bound

  void Answered(uint16_t type, const Status& result, std::chrono::nanoseconds took) override;
  void RefusedConnection(const Status& why) override;

  // The gauges, from the handler's tables (on the broker's thread).
  void Update(const RequestHandler& handler, size_t slots, bool draining);
  void Adopted(size_t slots);
  // gpubroker_peer: the connections to brokers on other nodes.
  void Peers(const std::vector<wire::PeerRecord>& peers);
  // Descriptors the closer has yet to close (FdCloser::pending).
  void Closing(uint64_t pending);

 private:
  Metrics();
  // gpubroker_uid_*: each uid's use against its share.
  void UpdateUsage(const RequestHandler& handler);
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  uint64_t started_ns_ = 0;
};

// Why a request or connection was refused, as the metrics label it:
// permission, quota (a per-uid cap), limit (any other cap or memory) or
// draining; empty for an error that is not a refusal (a bad argument, a
// missing name), which gpubroker_requests_total counts by its code.
std::string_view RefusalReason(const Status& s);

}  // namespace gpubroker

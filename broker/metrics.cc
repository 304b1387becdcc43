#include "broker/metrics.h"

#include <array>
#include <map>
#include <tuple>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "common/wire.h"

namespace gpubroker {

struct Metrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests(prometheus::BuildCounter()
                     .Name("gpubroker_requests_total")
                     .Help("Requests answered, by message type and outcome (ok or the error code)")
                     .Register(r)),
        refusals(prometheus::BuildCounter()
                     .Name("gpubroker_refusals_total")
                     .Help("Requests and connections refused, by reason: permission, quota (per-uid caps), "
                           "limit (other caps, memory), draining, connection (another reason at connect)")
                     .Register(r)),
        attaches(prometheus::BuildCounter().Name("gpubroker_attaches_total").Help("Attaches granted").Register(r)
                     .Add({})),
        detaches(prometheus::BuildCounter().Name("gpubroker_detaches_total").Help("Detaches").Register(r).Add({})),
        attach_seconds(prometheus::BuildHistogram()
                           .Name("gpubroker_attach_duration_seconds")
                           .Help("Time the broker takes to answer an attach (check, share the handle), "
                                 "excluding the socket")
                           .Register(r)
                           .Add({}, prometheus::Histogram::BucketBoundaries{2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4,
                                                                             2e-4, 5e-4, 1e-3, 5e-3, 2e-2})),
        request_seconds(prometheus::BuildHistogram()
                            .Name("gpubroker_request_duration_seconds")
                            .Help("Time the broker takes to answer a request, by message type, socket excluded")
                            .Register(r)),
        bytes(prometheus::BuildGauge()
                  .Name("gpubroker_allocated_bytes")
                  .Help("Bytes allocated, by backend and device (cpu or the GPU's UUID)")
                  .Register(r)),
        allocations(prometheus::BuildGauge()
                        .Name("gpubroker_allocations")
                        .Help("Allocations, by backend and device")
                        .Register(r)),
        slots(prometheus::BuildGauge().Name("gpubroker_slots").Help("Live slots").Register(r).Add({})),
        clients(prometheus::BuildGauge().Name("gpubroker_clients").Help("Connected clients").Register(r).Add({})),
        leases(prometheus::BuildGauge().Name("gpubroker_leases").Help("Leases held by clients").Register(r).Add({})),
        draining(prometheus::BuildGauge()
                     .Name("gpubroker_draining")
                     .Help("1 while the broker refuses new creates and attaches")
                     .Register(r)
                     .Add({})),
        start_time(prometheus::BuildGauge()
                       .Name("gpubroker_start_time_seconds")
                       .Help("When this broker process started, in seconds since the epoch")
                       .Register(r)
                       .Add({})),
        uptime(prometheus::BuildGauge()
                   .Name("gpubroker_uptime_seconds")
                   .Help("Seconds since this broker process started")
                   .Register(r)
                   .Add({})),
        adopted(prometheus::BuildGauge()
                    .Name("gpubroker_warm_restart_adopted_slots")
                    .Help("Slots this broker took over from the previous one at a warm restart")
                    .Register(r)
                    .Add({})),
        closing(prometheus::BuildGauge()
                    .Name("gpubroker_descriptors_closing")
                    .Help("Client sockets and descriptors handed to the closer and not yet closed (one a client "
                          "keeps stuck shows here)")
                    .Register(r)
                    .Add({})),
        info(prometheus::BuildGauge().Name("gpubroker_info").Help("1, labelled with the broker's version").Register(r)),
        uid_bytes(prometheus::BuildGauge()
                      .Name("gpubroker_uid_bytes")
                      .Help("Bytes of memory a uid's slots name, by uid and memory (host or device): what its "
                            "share counts")
                      .Register(r)),
        uid_slots(prometheus::BuildGauge()
                      .Name("gpubroker_uid_slots")
                      .Help("Slots a uid owns, with the destroyed allocations its leases keep alive")
                      .Register(r)),
        share_bytes(prometheus::BuildGauge()
                        .Name("gpubroker_uid_share_bytes")
                        .Help("What one uid (not root or the admin group) may hold, by memory: a quarter of the "
                              "cap, or limits.max_bytes_per_uid for all memory (memory=\"any\"); 0: no limit")
                        .Register(r)),
        share_slots(prometheus::BuildGauge()
                        .Name("gpubroker_uid_share_slots")
                        .Help("Slots one uid (not root or the admin group) may own: limits.max_slots_per_uid")
                        .Register(r)
                        .Add({})),
        peer(prometheus::BuildGauge()
                 .Name("gpubroker_peer")
                 .Help("Per connection to a broker on another node (docs/multinode.md), by role (follower: a "
                       "tree kept here; source: a follower served), tree and peer: what=version (newest held "
                       "here, or read by the follower), behind (follower: versions the source has that are not "
                       "here yet), up (1 while connected and authenticated), bytes and versions (moved; a "
                       "follower's since the broker started, a source's since the follower connected), "
                       "last_seconds and last_bytes_per_second (the last version's transfer), errors, passed_on "
                       "(source: versions sent on while they still arrived here), abandoned (follower: versions "
                       "the source gave up after sending them in part)")
                 .Register(r)) {}

  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& refusals;
  prometheus::Counter& attaches;
  prometheus::Counter& detaches;
  prometheus::Histogram& attach_seconds;
  prometheus::Family<prometheus::Histogram>& request_seconds;
  prometheus::Family<prometheus::Gauge>& bytes;
  prometheus::Family<prometheus::Gauge>& allocations;
  prometheus::Gauge& slots;
  prometheus::Gauge& clients;
  prometheus::Gauge& leases;
  prometheus::Gauge& draining;
  prometheus::Gauge& start_time;
  prometheus::Gauge& uptime;
  prometheus::Gauge& adopted;
  prometheus::Gauge& closing;
  prometheus::Family<prometheus::Gauge>& info;
  prometheus::Family<prometheus::Gauge>& uid_bytes;
  prometheus::Family<prometheus::Gauge>& uid_slots;
  prometheus::Family<prometheus::Gauge>& share_bytes;
  prometheus::Gauge& share_slots;
  prometheus::Family<prometheus::Gauge>& peer;
  std::vector<prometheus::Gauge*> peer_gauges;  // replaced at every update: connections come and go
  // Per uid with something held: host bytes, device bytes, slots. A uid
  // that holds nothing any more is removed, so the page does not grow with
  // every uid that ever connected.
  std::map<uid_t, std::array<prometheus::Gauge*, 3>> by_uid;
  // Every (backend, device) seen: set to 0, not dropped, when its last allocation goes.
  std::map<std::pair<std::string, std::string>, std::pair<prometheus::Gauge*, prometheus::Gauge*>> by_device;
};

std::string_view RefusalReason(const Status& s) {
  switch (s.code()) {
    case Code::kPermissionDenied: return "permission";
    case Code::kResourceExhausted:
      return s.message().find("_per_uid") != std::string::npos ? "quota" : "limit";
    case Code::kUnavailable: return "draining";
    default: return {};  // a mistake or a missing name, not a refusal
  }
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()), f_(std::make_unique<Families>(*registry_)) {}
Metrics::~Metrics() = default;

Result<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen, std::string_view version,
                                                uint64_t started_ns) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->started_ns_ = started_ns;
  m->f_->info.Add({{"version", std::string(version)}}).Set(1);
  m->f_->start_time.Set(static_cast<double>(started_ns) / 1e9);
  // Every reason from the start, at 0: a series that first appears at 1 is
  // no increase to rate(), so a dashboard would miss the first refusal.
  for (const char* reason : {"permission", "quota", "limit", "draining", "connection"}) {
    m->f_->refusals.Add({{"reason", reason}});
  }
  try {
    // Several threads, and a connection that has not sent its request within
    // 2 s is dropped: a client that connects and says nothing (one idle
    // connection held the one thread for civetweb's 30 s default) cannot
    // keep a scrape waiting.
    m->exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", listen, "num_threads", "8", "request_timeout_ms", "2000", "enable_keep_alive", "no"});
  } catch (const std::exception& e) {
    return Status(Code::kIo, "metrics: cannot listen at " + listen + ": " + e.what());
  }
  m->exposer_->RegisterCollectable(m->registry_);
  return m;
}

int Metrics::port() const {
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void Metrics::Answered(uint16_t type, const Status& result, std::chrono::nanoseconds took) {
  const bool ok = result.ok();
  // Anyone may send any type number: unknown ones share one label, so a
  // client cannot grow the metrics page.
  std::string name = wire::TypeName(type);
  if (name.rfind("type ", 0) == 0) name = "unknown";
  f_->requests.Add({{"type", name}, {"outcome", ok ? "ok" : std::string(CodeName(result.code()))}})
      .Increment();
  if (!ok && !RefusalReason(result).empty()) {
    f_->refusals.Add({{"reason", std::string(RefusalReason(result))}}).Increment();
  }
  static const prometheus::Histogram::BucketBoundaries kBuckets{2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4,
                                                                 2e-4, 5e-4, 1e-3, 5e-3, 2e-2};
  f_->request_seconds.Add({{"type", name}}, kBuckets)
      .Observe(std::chrono::duration<double>(took).count());
  if (ok && type == static_cast<uint16_t>(wire::MsgType::kAttach)) {
    f_->attaches.Increment();
    f_->attach_seconds.Observe(std::chrono::duration<double>(took).count());
  }
  if (ok && type == static_cast<uint16_t>(wire::MsgType::kDetach)) f_->detaches.Increment();
}

void Metrics::RefusedConnection(const Status& why) {
  std::string_view reason = RefusalReason(why);
  f_->refusals.Add({{"reason", reason.empty() ? "connection" : std::string(reason)}}).Increment();
}

void Metrics::Update(const RequestHandler& handler, size_t slots, bool draining) {
  const LeaseTable& t = handler.leases();
  f_->slots.Set(static_cast<double>(slots));
  f_->clients.Set(static_cast<double>(t.clients().size()));
  f_->leases.Set(static_cast<double>(t.total_leases()));
  f_->draining.Set(draining ? 1 : 0);
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  f_->uptime.Set(static_cast<double>(now.tv_sec) + now.tv_nsec / 1e9 - static_cast<double>(started_ns_) / 1e9);
  std::map<std::pair<std::string, std::string>, std::pair<double, double>> totals;  // bytes, count
  for (const auto& [id, a] : t.allocations()) {
    Device d = a.memory ? a.memory->device() : Device{};
    std::string device = d.type == Device::kCpu ? "cpu" : FormatUuid(d.uuid);
    auto& [bytes, count] = totals[{std::string(BackendName(a.backend)), device}];
    bytes += static_cast<double>(a.memory ? a.memory->size() : a.bytes);
    count += 1;
  }
  for (auto& [key, gauges] : f_->by_device) {
    if (!totals.count(key)) {
      gauges.first->Set(0);
      gauges.second->Set(0);
    }
  }
  for (const auto& [key, value] : totals) {
    auto it = f_->by_device.find(key);
    if (it == f_->by_device.end()) {
      prometheus::Labels labels{{"backend", key.first}, {"device", key.second}};
      it = f_->by_device.emplace(key, std::make_pair(&f_->bytes.Add(labels), &f_->allocations.Add(labels))).first;
    }
    it->second.first->Set(value.first);
    it->second.second->Set(value.second);
  }
  UpdateUsage(handler);
}

void Metrics::UpdateUsage(const RequestHandler& handler) {
  const RequestHandler::UidShare share = handler.Share();
  f_->share_bytes.Add({{"memory", "host"}}).Set(static_cast<double>(share.host_bytes));
  f_->share_bytes.Add({{"memory", "device"}}).Set(static_cast<double>(share.device_bytes));
  f_->share_bytes.Add({{"memory", "any"}}).Set(static_cast<double>(share.bytes));
  f_->share_slots.Set(share.slots);
  const auto& usage = handler.leases().usage();
  for (auto it = f_->by_uid.begin(); it != f_->by_uid.end();) {
    auto u = usage.find(it->first);
    if (u == usage.end() || (u->second.slots + u->second.orphans == 0 && u->second.bytes == 0)) {
      f_->uid_bytes.Remove(it->second[0]);
      f_->uid_bytes.Remove(it->second[1]);
      f_->uid_slots.Remove(it->second[2]);
      it = f_->by_uid.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [uid, u] : usage) {
    if (u.slots + u.orphans == 0 && u.bytes == 0) continue;
    auto it = f_->by_uid.find(uid);
    if (it == f_->by_uid.end()) {
      const std::string id = std::to_string(uid);
      it = f_->by_uid.emplace(uid, std::array<prometheus::Gauge*, 3>{&f_->uid_bytes.Add({{"uid", id}, {"memory", "host"}}),
                                                                     &f_->uid_bytes.Add({{"uid", id}, {"memory", "device"}}),
                                                                     &f_->uid_slots.Add({{"uid", id}})})
               .first;
    }
    it->second[0]->Set(static_cast<double>(u.host_bytes));
    it->second[1]->Set(static_cast<double>(u.device_bytes));
    it->second[2]->Set(u.slots + u.orphans);
  }
}

void Metrics::Peers(const std::vector<wire::PeerRecord>& peers) {
  for (prometheus::Gauge* g : f_->peer_gauges) f_->peer.Remove(g);
  f_->peer_gauges.clear();
  for (const wire::PeerRecord& p : peers) {
    const std::string role(p.role.view()), tree(p.tree.view());
    std::string peer(p.peer.view());
    if (role == "source") peer = peer.substr(0, peer.rfind(':'));  // a follower's port changes at each connection
    const bool up = std::string_view(p.state.view()) != "retrying" &&
                    std::string_view(p.state.view()) != "authenticating";
    const double seconds = static_cast<double>(p.last_ns) / 1e9;
    const double per_version = p.versions == 0 ? 0 : static_cast<double>(p.bytes) / static_cast<double>(p.versions);
    const std::pair<const char*, double> values[] = {
        {"version", static_cast<double>(p.version)},
        {"behind", p.source_version > p.version && role == "follower" ? static_cast<double>(p.source_version - p.version)
                                                                        : 0.0},
        {"up", up ? 1.0 : 0.0},
        {"bytes", static_cast<double>(p.bytes)},
        {"versions", static_cast<double>(p.versions)},
        {"last_seconds", seconds},
        {"last_bytes_per_second", seconds > 0 ? per_version / seconds : 0.0},
        {"errors", static_cast<double>(p.errors)},
        {role == "source" ? "passed_on" : "abandoned", static_cast<double>(role == "source" ? p.passed_on : p.abandoned)},
    };
    for (const auto& [what, value] : values) {
      prometheus::Gauge& g = f_->peer.Add({{"role", role}, {"tree", tree}, {"peer", peer}, {"what", what}});
      g.Set(value);
      f_->peer_gauges.push_back(&g);
    }
  }
}

void Metrics::Adopted(size_t slots) { f_->adopted.Set(static_cast<double>(slots)); }

void Metrics::Closing(uint64_t pending) { f_->closing.Set(static_cast<double>(pending)); }

}  // namespace gpubroker

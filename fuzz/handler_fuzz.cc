// libFuzzer target: the broker's request handler fed decoded-or-not messages
// from several clients that connect and disconnect at will. Nothing may crash,
// every reply must parse, and the lease bookkeeping must stay consistent:
// every lease belongs to a live client, each uid's count of allocations no
// slot names that its leases keep matches a recount, a live record's pins
// match the connections' pins, and once everyone is gone none remain.
//
// Input: records of [op u8][client u8][length u16][length bytes]. op & 3:
// 0 connect, 1 disconnect (with op's top bit: a warm restart instead, below),
// 2 raw bytes, 3 a valid header of type bytes[0] around the rest (so payload
// decoders are reached often).
//
// A warm restart: every connection ends with the broker; a new handler over a
// new registry adopts the slots and live records the old one left (their
// memory "from the fd store"), pins carried over. Clients then connect anew
// and may claim carried pins with any buffer and version they like.
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "broker/registry.h"
#include "broker/request_handler.h"

using namespace gpubroker;

namespace {

void Require(bool ok) {
  if (!ok) std::abort();
}

// Host-like memory without the kernel: the fuzzer must not allocate gigabytes.
class SmallBackend final : public Backend {
 public:
  struct Memory final : BackendMemory {
    explicit Memory(uint64_t b) : bytes(b) {}
    uint64_t size() const override { return bytes; }
    Device device() const override { return Device{}; }
    Result<SharedHandle> Share(uint32_t) override { return SharedHandle{}; }
    uint64_t bytes;
  };
  BackendKind kind() const override { return BackendKind::kHost; }
  Result<std::unique_ptr<BackendMemory>> Allocate(const AllocationRequest& r) override {
    if (r.bytes > (1u << 20)) return ResourceExhausted("fuzz backend holds at most 1 MiB");
    return std::unique_ptr<BackendMemory>(new Memory(r.bytes));
  }
  Result<std::unique_ptr<BackendMemory>> Adopt(UniqueFd, uint64_t bytes, const Device&) override {
    return std::unique_ptr<BackendMemory>(new Memory(bytes));
  }
};

// What a warm restart hands the next broker: the slots, the live records,
// an fd per allocation (the fuzz backend's memory has none: any fd does).
struct Handover {
  std::vector<SlotDescriptor> slots;
  std::map<uint64_t, LiveState> live;
  std::map<uint64_t, UniqueFd> fds;
};

Handover HandOver(const RequestHandler& h, const Registry& registry) {
  Handover out;
  registry.Scan(0, UINT32_MAX, [&](const SlotDescriptor& d) { out.slots.push_back(d); });
  for (const auto& [aid, a] : h.leases().allocations()) {
    if (a.live_index != kNoLiveRecord) out.live[aid] = a.versions.state();
    out.fds.emplace(aid, UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)));
  }
  return out;
}

void CheckLeases(const RequestHandler& h, const Registry& registry) {
  const LeaseTable& t = h.leases();
  uint64_t by_clients = 0;
  std::map<uid_t, uint32_t> orphans;
  for (const auto& [id, c] : t.clients()) {
    for (const auto& [aid, lease] : c.leases) {
      Require(lease.count > 0);
      Require(t.allocations().count(aid) == 1);
      by_clients += lease.count;
    }
  }
  Require(by_clients == t.total_leases());
  for (const auto& [aid, a] : t.allocations()) {
    if (a.live_index != kNoLiveRecord) {
      // The version rules hold, and the registry shows exactly that state.
      Require(a.versions.CheckInvariants().empty());
      const LiveState& s = registry.GetLive(a.live_index);
      Require(std::memcmp(&s, &a.versions.state(), sizeof s) == 0);
      Require(s.allocation_id == aid);
      // Only connections that hold a lease pin or write.
      if (a.versions.writer() != 0) Require(t.clients().count(a.versions.writer()) == 1);
    }
    if (!a.slots.empty()) continue;
    std::set<uid_t> holders;
    for (const auto& [id, c] : t.clients()) {
      if (c.leases.count(aid) != 0) holders.insert(c.peer.uid);
    }
    for (uid_t uid : holders) ++orphans[uid];
  }
  for (uid_t uid : {0u, 1000u, 1001u, 2000u, 65534u}) Require(t.Usage(uid).orphans == orphans[uid]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int counter = 0;
  RegistryOptions ro;
  ro.name = "gpbfuzz-" + std::to_string(::getpid()) + "-" + std::to_string(counter++ % 4);
  ro.capacity = 32;
  auto registry = Registry::Create(ro);
  Require(registry.ok());
  BackendSet backends;
  backends.Add(std::make_unique<SmallBackend>());
  HandlerOptions ho;
  ho.limits.max_connections = 8;
  ho.limits.reserved_admin_connections = 2;  // the default (8) would keep every user but root and admins out
  ho.limits.max_bytes_per_uid = 4u << 20;
  ho.limits.max_host_bytes = 64u << 20;
  ho.admin_group = 4242;
  auto handler = std::make_unique<RequestHandler>(**registry, backends, ho);
  std::map<uint8_t, uint64_t> clients;
  int restarts = 0;
  size_t pos = 0;
  while (pos + 4 <= size) {
    uint8_t op = data[pos], who = data[pos + 1] % 6;
    uint16_t len;
    std::memcpy(&len, data + pos + 2, 2);
    pos += 4;
    len = static_cast<uint16_t>(std::min<size_t>(len, size - pos));
    const uint8_t* body = data + pos;
    pos += len;
    switch (op & 3) {
      case 0:
        if (clients.count(who) == 0) {
          // Identities: root, two users in one group, an admin-group member, nobody.
          static const PeerCredentials peers[] = {{1, 0, 0, {}}, {2, 1000, 1000, {}}, {3, 1001, 1000, {}},
                                                  {4, 2000, 2000, {4242}}, {5, 65534, 65534, {}},
                                                  {6, 1000, 1000, {}}};
          auto id = handler->OnConnect(peers[who]);
          if (id.ok()) clients[who] = *id;
        }
        break;
      case 1:
        if (op & 0x80) {
          if (restarts++ == 4) break;  // a few per input: each makes a registry
          Handover last = HandOver(*handler, **registry);
          clients.clear();  // their connections ended with the broker
          handler.reset();
          RegistryOptions next = ro;
          next.name = ro.name + "-" + std::to_string(restarts);
          registry = Registry::Create(next);
          Require(registry.ok());
          handler = std::make_unique<RequestHandler>(**registry, backends, ho);
          handler->Adopt(last.slots, last.live, std::move(last.fds));
          if (len > 0 && body[0] & 1) {  // the carried pins' time may be up
            handler->ExpireCarriedPins(std::chrono::steady_clock::now() + std::chrono::hours(1));
          }
        } else if (auto it = clients.find(who); it != clients.end()) {
          handler->OnDisconnect(it->second);
          clients.erase(it);
        }
        break;
      default: {
        auto it = clients.find(who);
        if (it == clients.end()) break;
        std::vector<std::byte> message;
        if ((op & 3) == 3 && len > 0) {
          message = wire::EncodeRaw(body[0] % 20, 1, std::as_bytes(std::span(body + 1, len - 1u)));
        } else {
          message.assign(reinterpret_cast<const std::byte*>(body), reinterpret_cast<const std::byte*>(body) + len);
        }
        Reply reply = handler->Handle(it->second, message);
        Require(wire::ParseFrame(reply.bytes).ok());
        break;
      }
    }
    CheckLeases(*handler, **registry);
  }
  for (auto& [who, id] : clients) handler->OnDisconnect(id);
  Require(handler->leases().total_leases() == 0);
  Require(handler->leases().clients().empty());
  return 0;
}

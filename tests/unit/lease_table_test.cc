// LeaseTable's running totals against a recount of the table, through a
// random sequence of the operations the broker performs.
#include "broker/lease_table.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace gpubroker {
namespace {

class FakeMemory final : public BackendMemory {
 public:
  FakeMemory(uint64_t size, Device::Type type) : size_(size), type_(type) {}
  uint64_t size() const override { return size_; }
  Device device() const override { return Device{type_, type_ == Device::kCuda ? 0 : -1, {}}; }
  Result<SharedHandle> Share(uint32_t) override { return Unsupported("fake"); }

 private:
  uint64_t size_;
  Device::Type type_;
};

void ExpectTotalsMatchARecount(const LeaseTable& t) {
  uint64_t leases = 0, host = 0, cuda = 0;
  std::map<uid_t, uint32_t> orphans;  // allocations no slot views, by the uids leasing them
  for (const auto& [id, a] : t.allocations()) {
    leases += a.leases;
    (a.memory->device().type == Device::kCuda ? cuda : host) += a.memory->size();
    if (!a.slots.empty()) continue;
    std::set<uid_t> holders;
    for (const auto& [cid, c] : t.clients()) {
      if (c.leases.count(id) != 0) holders.insert(c.peer.uid);
    }
    for (uid_t uid : holders) ++orphans[uid];
  }
  ASSERT_EQ(t.total_leases(), leases);
  ASSERT_EQ(t.BytesOn(Device::kCpu), host);
  ASSERT_EQ(t.BytesOn(Device::kCuda), cuda);
  for (uid_t uid = 0; uid < 4; ++uid) ASSERT_EQ(t.Usage(uid).orphans, orphans[uid]) << "uid " << uid;
}

TEST(LeaseTable, RunningTotalsMatchARecountThroughRandomOperations) {
  std::mt19937_64 rng(std::random_device{}());
  LeaseTable t;
  std::vector<uint64_t> clients, allocations;
  uint64_t next_client = 1;
  bool saw_orphans = false;
  bool saw_leases = false;
  for (int step = 0; step < 20000; ++step) {
    switch (rng() % 6) {
      case 0: {
        PeerCredentials peer;
        peer.uid = static_cast<uid_t>(rng() % 4);  // several connections of one uid
        clients.push_back(next_client);
        t.AddClient(next_client++, peer, 0);
        break;
      }
      case 1: {
        Allocation a;
        a.id = t.NextAllocationId();
        a.memory = std::make_unique<FakeMemory>(1 + rng() % 4096, rng() % 2 ? Device::kCuda : Device::kCpu);
        Allocation& added = t.AddAllocation(std::move(a));
        if (rng() % 2) t.AddSlot(added, 0);
        allocations.push_back(added.id);
        break;
      }
      case 2:
      case 3:
        if (!clients.empty() && !allocations.empty()) {
          ClientEntry* c = t.FindClient(clients[rng() % clients.size()]);
          Allocation* a = t.FindAllocation(allocations[rng() % allocations.size()]);
          if (c && a) t.TakeLease(*c, *a, "s");
        }
        break;
      case 4:
        if (!clients.empty() && !allocations.empty()) {
          ClientEntry* c = t.FindClient(clients[rng() % clients.size()]);
          uint64_t id = allocations[rng() % allocations.size()];
          if (c && t.DropLease(*c, id) >= 0) t.FreeIfUnused(id);
        }
        break;
      case 5:
        if (!clients.empty()) {
          size_t i = rng() % clients.size();
          for (uint64_t id : t.RemoveClient(clients[i])) t.FreeIfUnused(id);
          clients.erase(clients.begin() + static_cast<ptrdiff_t>(i));
        }
        break;
    }
    if (!allocations.empty() && rng() % 8 == 0) {  // a slot comes or goes: unnamed, unleased ones are freed
      uint64_t id = allocations[rng() % allocations.size()];
      if (Allocation* a = t.FindAllocation(id)) {
        uint32_t index = static_cast<uint32_t>(rng() % 3);
        if (rng() % 3 == 0) {
          t.AddSlot(*a, index);
        } else {
          t.RemoveSlot(*a, index);
        }
      }
      t.FreeIfUnused(id);
    }
    ExpectTotalsMatchARecount(t);
    if (HasFatalFailure()) return;
    for (uid_t uid = 0; uid < 4; ++uid) saw_orphans = saw_orphans || t.Usage(uid).orphans > 0;
    saw_leases = saw_leases || t.total_leases() > 0;
  }
  // The sequence did exercise leases (at some point: random operations may
  // well end with none, which made this check fail now and then).
  EXPECT_TRUE(saw_leases);
  EXPECT_TRUE(saw_orphans);         // and leases on allocations no slot names
}

}  // namespace
}  // namespace gpubroker

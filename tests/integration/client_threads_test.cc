// One Client shared by many threads against a real broker: requests are
// serialised, the mapping cache is consistent, and every view reads what was
// written. Run under ThreadSanitizer in CI.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "tests/integration/harness.h"

namespace gpubroker::testing {
namespace {

TEST(ClientThreads, SharedClientStaysConsistent) {
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  auto client = broker->Connect("threads");
  ASSERT_TRUE(client.ok());
  constexpr int kThreads = 6, kRounds = 200, kSlots = 4;
  for (int s = 0; s < kSlots; ++s) {
    CreateOptions o;
    o.name = "t/" + std::to_string(s);
    o.shape = {4096};
    auto v = client->CreateAndAttach(o);
    ASSERT_TRUE(v.ok());
    std::memset(v->data(), s + 1, 4096);
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        int s = (t + r) % kSlots;
        auto v = client->Attach("t/" + std::to_string(s));
        if (!v.ok() || static_cast<uint8_t*>(v->data())[r % 4096] != s + 1) ++failures;
        if (r % 16 == 0 && !client->Stat("t/" + std::to_string(s)).ok()) ++failures;
        if (r % 32 == 0 && !client->Lookup("t/" + std::to_string(s)).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto info = client->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->leases, 0u) << "every view is gone, so every lease must be";
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

// FdCloser: a close that a client can make slow happens on the closer's
// thread, never on the caller's, and Stop does not wait for it forever.
#include "broker/fd_closer.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <thread>

#include "tests/support/lingering_socket.h"

namespace gpubroker {
namespace {

bool WaitUntil(const std::function<bool()>& done, std::chrono::seconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling a condition
  }
  return true;
}

TEST(FdCloser, ALingeringCloseHappensOnItsThreadNotTheCallers) {
  auto lingering = testing::LingeringSocket::Make(2);
  ASSERT_TRUE(lingering.ok()) << lingering.status().ToString();
  FdCloser closer;
  closer.Close(lingering->Take());
  // Had Close closed it here, it would have waited out the linger first.
  EXPECT_EQ(closer.pending(), 1u) << "the close did not wait for the linger: nothing tested";
  EXPECT_TRUE(WaitUntil([&] { return closer.closed() == 1; }, std::chrono::seconds(30)));
  EXPECT_EQ(closer.pending(), 0u);
}

TEST(FdCloser, StopLeavesACloseStuckLongerThanItsPatience) {
  auto lingering = testing::LingeringSocket::Make(30);
  ASSERT_TRUE(lingering.ok()) << lingering.status().ToString();
  FdCloser closer;
  closer.Close(lingering->Take());
  auto start = std::chrono::steady_clock::now();
  closer.Stop(std::chrono::milliseconds(200));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20)) << "Stop waited out the linger";
  EXPECT_EQ(closer.pending(), 1u);
}

}  // namespace
}  // namespace gpubroker

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

// A socket lingering 30 s on unsent bytes: closed by the closer at once (it
// resets the socket), never by the caller.
TEST(FdCloser, ALingeringSocketIsClosedAtOnceAndNotByTheCaller) {
  auto lingering = testing::LingeringSocket::Make(30);
  ASSERT_TRUE(lingering.ok()) << lingering.status().ToString();
  FdCloser closer;
  const auto start = std::chrono::steady_clock::now();
  closer.Close(lingering->Take());
  EXPECT_TRUE(WaitUntil([&] { return closer.closed() == 1; }, std::chrono::seconds(20)))
      << "the close waited out the linger";
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_EQ(closer.pending(), 0u);
}

// Many at once, from a caller that never waits: all closed, in a few threads.
TEST(FdCloser, ClosesEverythingHandedOver) {
  FdCloser closer;
  for (int i = 0; i < 500; ++i) closer.Close(UniqueFd(::socket(AF_UNIX, SOCK_STREAM, 0)));
  EXPECT_TRUE(WaitUntil([&] { return closer.closed() == 500; }, std::chrono::seconds(20))) << closer.closed();
  closer.Stop();
  EXPECT_EQ(closer.pending(), 0u);
}

}  // namespace
}  // namespace gpubroker

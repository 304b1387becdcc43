// Backoff: the retries of a lock-free read end by time, not by count; a
// writer paused for a scheduler's period is waited out, a stuck one is not
// waited on for ever.
#include "common/backoff.h"

#include <gtest/gtest.h>

#include <chrono>

namespace gpubroker {
namespace {

using Clock = std::chrono::steady_clock;

TEST(Backoff, GivesUpOnAWordThatStopsMovingAfterStuckNotBefore) {
  const auto start = Clock::now();
  Backoff backoff;
  uint64_t tries = 0;
  while (backoff.Next(7)) ++tries;
  const auto took = Clock::now() - start;
  EXPECT_GT(tries, static_cast<uint64_t>(Backoff::kSpins));
  EXPECT_GE(took, Backoff::kStuck);
  EXPECT_LT(took, Backoff::kLimit);
}

TEST(Backoff, WaitsOutAWriterPausedForAQuotaPeriod) {
  // The word stays odd (a write under way) for 150 ms, as a broker thread
  // throttled by a CPU quota in the middle of a write, then the write ends.
  const auto start = Clock::now();
  const auto resumes = start + std::chrono::milliseconds(150);
  Backoff backoff;
  uint64_t seq = 1;
  while (true) {
    if (Clock::now() >= resumes) seq = 2;
    ASSERT_TRUE(backoff.Next(seq)) << "gave up after "
                                   << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()
                                   << " ms on a writer paused for 150 ms";
    if (seq == 2) break;
  }
}

TEST(Backoff, AWordThatKeepsMovingIsFollowedUpToTheLimit) {
  const auto start = Clock::now();
  Backoff backoff;
  uint64_t seq = 0;
  while (backoff.Next(seq)) seq += 2;  // churn: every try overlapped another write
  const auto took = Clock::now() - start;
  EXPECT_GE(took, Backoff::kLimit);
  EXPECT_LT(took, Backoff::kLimit + std::chrono::seconds(1));
}

}  // namespace
}  // namespace gpubroker

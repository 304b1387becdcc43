// The version state machine of one allocation (broker/versions.h): each
// transition, the rules it keeps, and the pins a warm restart carries.
#include "broker/versions.h"

#include <gtest/gtest.h>

namespace gpubroker {
namespace {

constexpr uint64_t kWriter = 1, kReader = 2, kOther = 3;

// Every transition below is followed by this: the rules still hold.
void Holds(const Versions& v) { EXPECT_EQ(v.CheckInvariants(), ""); }

// A live allocation of `buffers` buffers with version 1 committed.
Versions WithVersionOne(uint32_t buffers) {
  Versions v = Versions::New(1, buffers, 0);
  Versions::Wake wake;
  EXPECT_EQ(*v.Commit(kWriter, *v.Begin(kWriter, 1, wake), 0, wake), 1u);
  return v;
}

TEST(Versions, APlainSlotHoldsVersionOneAndALiveOneNothing) {
  Versions plain = Versions::New(7, 0, 123);
  EXPECT_EQ(plain.state().version, 1u);
  EXPECT_EQ(plain.state().buffer, 0);
  EXPECT_EQ(plain.state().committed_ns, 123u);
  Versions live = Versions::New(8, 2, 123);
  EXPECT_EQ(live.state().version, 0u);
  EXPECT_EQ(live.state().buffer, -1);
  Versions::Wake wake;
  EXPECT_EQ(live.Acquire(kReader, 1, 0, wake).status().code(), Code::kNotFound);
  Holds(live);
}

TEST(Versions, OneWriterCommitsIntoABufferNobodyPins) {
  Versions v = Versions::New(1, 2, 0);
  Versions::Wake wake;
  auto b = v.Begin(kWriter, 100, wake);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(v.Begin(kOther, 101, wake).status().code(), Code::kBusy) << "one writer at a time";
  EXPECT_EQ(v.Begin(kWriter, 100, wake).status().code(), Code::kInvalidArgument) << "already writing";
  EXPECT_EQ(v.Commit(kOther, *b, 0, wake).status().code(), Code::kInvalidArgument) << "not its write";
  ASSERT_EQ(*v.Commit(kWriter, *b, 0, wake), 1u);
  EXPECT_TRUE(wake.readers && wake.writers);
  auto pin = v.Acquire(kReader, 10, 0, wake);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(pin->buffer, *b);
  auto next = v.Begin(kWriter, 100, wake);
  ASSERT_TRUE(next.ok());
  EXPECT_NE(*next, *b) << "never the buffer a reader pins";
  ASSERT_EQ(*v.Commit(kWriter, *next, 0, wake), 2u);
  EXPECT_EQ(v.Begin(kWriter, 100, wake).status().code(), Code::kBusy)
      << "one buffer pinned, the other holds the newest";
  EXPECT_EQ(v.Release(kReader, pin->id, wake), 1u);
  EXPECT_TRUE(wake.writers);
  auto third = v.Begin(kWriter, 100, wake);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*third, *b);
  Holds(v);
}

TEST(Versions, AnAcquireMovesThePinAndAClientHoldsAtMostBuffersPlusOne) {
  Versions v = WithVersionOne(2);
  Versions::Wake wake;
  auto first = v.Acquire(kReader, 10, 0, wake);
  ASSERT_TRUE(first.ok());
  auto moved = v.Acquire(kReader, 11, first->id, wake);  // releases the first in the same step
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(v.PinsOf(kReader).size(), 1u);
  EXPECT_EQ(v.state().pins[moved->buffer], 1u);
  for (uint64_t id = 12; id < 14; ++id) ASSERT_TRUE(v.Acquire(kReader, id, 0, wake).ok());
  EXPECT_EQ(v.Acquire(kReader, 14, 0, wake).status().code(), Code::kBusy) << "3 pins on 2 buffers: no more";
  Holds(v);
}

TEST(Versions, AOneBufferWriteThatEndsUncommittedLeavesNothingWhole) {
  Versions v = WithVersionOne(1);
  Versions::Wake wake;
  ASSERT_TRUE(v.Begin(kWriter, 1, wake).ok());
  EXPECT_EQ(v.Forget(kWriter, wake), 0) << "the writer left mid-write";
  EXPECT_EQ(v.state().buffer, -1);
  EXPECT_EQ(v.Acquire(kReader, 1, 0, wake).status().code(), Code::kNotFound) << "version 1 was overwritten in place";
  ASSERT_EQ(*v.Commit(kWriter, *v.Begin(kWriter, 1, wake), 0, wake), 2u);
  EXPECT_TRUE(v.Acquire(kReader, 1, 0, wake).ok());
  Holds(v);
}

TEST(Versions, ForgettingAClientDropsItsPinsAndItsWrite) {
  Versions v = WithVersionOne(3);
  Versions::Wake wake;
  ASSERT_TRUE(v.Acquire(kReader, 1, 0, wake).ok());
  ASSERT_TRUE(v.Acquire(kReader, 2, 0, wake).ok());
  ASSERT_TRUE(v.Begin(kWriter, 1, wake).ok());
  EXPECT_EQ(v.Forget(kReader, wake), -1);
  EXPECT_TRUE(v.PinsOf(kReader).empty());
  EXPECT_GE(v.Forget(kWriter, wake), 0);
  EXPECT_EQ(v.writer(), 0u);
  Holds(v);
}

// Pins of the broker before a warm restart: counted until their readers
// take them over, or until their time is up.
TEST(Versions, PinsCarriedOverARestartAreTakenOverOrExpire) {
  Versions before = WithVersionOne(2);
  Versions::Wake wake;
  auto pinned = before.Acquire(kReader, 1, 0, wake);
  ASSERT_TRUE(pinned.ok());
  ASSERT_TRUE(before.Commit(kWriter, *before.Begin(kWriter, 1, wake), 0, wake).ok());
  ASSERT_TRUE(before.Begin(kWriter, 1, wake).status().code() == Code::kBusy);

  const auto start = Versions::Clock::now();
  Versions after = Versions::Adopted(before.state(), start + std::chrono::seconds(30));
  Holds(after);
  EXPECT_EQ(after.carried(), 1u);
  EXPECT_EQ(after.Begin(kWriter, 1, wake).status().code(), Code::kBusy) << "the carried pin holds the buffer";
  EXPECT_EQ(after.TakeOverCarried(kReader, 5, pinned->buffer, pinned->version + 1, wake).status().code(),
            Code::kNotFound)
      << "another version than the buffer holds";
  auto taken = after.TakeOverCarried(kReader, 5, pinned->buffer, pinned->version, wake);
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(after.carried(), 0u);
  EXPECT_EQ(after.state().pins[pinned->buffer], 1u) << "the count moved to the reader, not doubled";
  EXPECT_EQ(after.TakeOverCarried(kOther, 6, pinned->buffer, pinned->version, wake).status().code(),
            Code::kNotFound)
      << "one carried pin, taken over once";
  EXPECT_EQ(after.Release(kReader, taken->id, wake), 1u);
  EXPECT_TRUE(after.Begin(kWriter, 1, wake).ok());
  Holds(after);

  // A reader that never comes back: the pin goes when its time is up, not before.
  Versions lonely = Versions::Adopted(before.state(), start + std::chrono::seconds(30));
  EXPECT_EQ(lonely.ExpireCarried(start + std::chrono::seconds(29), wake), 0u);
  EXPECT_EQ(lonely.Begin(kWriter, 1, wake).status().code(), Code::kBusy);
  wake = {};
  EXPECT_EQ(lonely.ExpireCarried(start + std::chrono::seconds(31), wake), 1u);
  EXPECT_TRUE(wake.writers);
  EXPECT_EQ(lonely.state().pins[pinned->buffer], 0u);
  EXPECT_TRUE(lonely.Begin(kWriter, 1, wake).ok());
  Holds(lonely);
}

TEST(Versions, AWriteUnderWayAtTheRestartIsNotAdopted) {
  Versions before = WithVersionOne(2);
  Versions::Wake wake;
  auto writing = before.Begin(kWriter, 1, wake);
  ASSERT_TRUE(writing.ok());
  Versions after = Versions::Adopted(before.state(), Versions::Clock::now());
  Holds(after);
  EXPECT_EQ(after.writer(), 0u);
  EXPECT_EQ(after.state().writing, -1);
  EXPECT_EQ(after.state().buffer_version[*writing], 0u) << "its buffer reclaimed";
  EXPECT_EQ(after.state().version, 1u);
}

TEST(Versions, TheInvariantsCatchARecordThatDisagrees) {
  Versions v = WithVersionOne(2);
  Versions::Wake wake;
  LiveState s = v.state();
  ++s.pins[s.buffer];  // a pin nobody holds, and no carried one
  s.nbuffers = 2;
  Versions broken = Versions::Adopted(s, Versions::Clock::now());
  EXPECT_EQ(broken.CheckInvariants(), "") << "adopted: the count is carried, so it agrees";
  LiveState ahead = v.state();
  ahead.buffer_version[1 - ahead.buffer] = ahead.version + 5;
  EXPECT_NE(Versions::Adopted(ahead, Versions::Clock::now()).CheckInvariants(), "");
}

}  // namespace
}  // namespace gpubroker

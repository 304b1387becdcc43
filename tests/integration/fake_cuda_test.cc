// What the client does around CUDA streams when they are slow or fail, on a
// machine without a GPU: a real broker serving cuda_vmm trees through the
// test's fake driver (tests/support/fake_cuda.cc, on LD_LIBRARY_PATH for the
// broker and this process), streams held busy and entry points failed on
// purpose. A unit test of the logic, not of CUDA: the GPU machine runs the
// same paths on real streams (live_test, python_gpu_test).
#include <cuda.h>
#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "tests/integration/harness.h"
#include "tests/integration/service_harness.h"

namespace gpubroker::testing {
namespace {

// Streams are any handles to the fake: these two are the test's.
void* const kStreamA = reinterpret_cast<void*>(0xa000);
void* const kStreamB = reinterpret_cast<void*>(0xb000);
constexpr uint64_t kBytes = 64 << 10;

class FakeCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = FakeCudaDriver();
    ASSERT_NE(fake_, nullptr) << "libcuda.so.1 here is not the test's fake (LD_LIBRARY_PATH must name "
                                 "tests/fake_cuda of the build)";
    fake_->reset();  // whatever a case before left held or failing
    broker_ = BrokerProcess::Start();
    ASSERT_NE(broker_, nullptr);
    auto c = broker_->Connect();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_.emplace(std::move(c).value());
    CreateOptions o;
    o.name = "weights";
    o.shape = {static_cast<int64_t>(kBytes)};
    o.backend = BackendKind::kCudaVmm;
    o.buffers = 2;
    auto created = client_->Create(o);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    auto w = client_->OpenWriter("weights");
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    writer_.emplace(std::move(w).value());
    ASSERT_EQ(writer_->view().device().type, Device::kCuda) << "the tree must be on the fake device";
    ASSERT_TRUE(Publish().ok());  // version 1
    auto r = client_->OpenReader("weights");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    reader_.emplace(std::move(r).value());
  }

  void TearDown() override {
    if (fake_ != nullptr) fake_->reset();
  }

  // Writes fresh random bytes into a begun buffer and commits them on
  // `stream`; remembers the bytes of the version it returns.
  Result<uint64_t> Publish(void* stream = nullptr, int wait_ms = 0) {
    GPB_ASSIGN_OR_RETURN(uint32_t buffer, writer_->Begin(wait_ms));
    std::vector<uint8_t> bytes = RandomBytes(kBytes);
    std::memcpy(writer_->view().data(buffer), bytes.data(), kBytes);
    GPB_ASSIGN_OR_RETURN(uint64_t version, writer_->Commit(stream));
    written_[version] = std::move(bytes);
    return version;
  }

  // Pins over every buffer of the tree, from the registry.
  uint32_t Pins() {
    auto registry = broker_->OpenRegistry();
    EXPECT_TRUE(registry.ok()) << registry.status().ToString();
    if (!registry.ok()) return ~0u;
    auto d = registry->Lookup("weights");
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    if (!d.ok()) return ~0u;
    auto s = registry->Live(*d);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return ~0u;
    uint32_t pins = 0;
    for (uint32_t b = 0; b < s->nbuffers; ++b) pins += s->pins[b];
    return pins;
  }

  // Acquires the newest version and checks every byte of it.
  void AcquireWhole(void* stream, uint64_t expect) {
    auto a = reader_->Acquire(stream);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_EQ(a->version, expect);
    ASSERT_EQ(std::memcmp(reader_->view().data(a->buffer), written_[expect].data(), kBytes), 0)
        << "version " << expect << " is not what was written";
  }

  const FakeCuda* fake_ = nullptr;
  std::unique_ptr<BrokerProcess> broker_;
  std::optional<Client> client_;
  std::optional<Writer> writer_;
  std::optional<Reader> reader_;
  std::map<uint64_t, std::vector<uint8_t>> written_;
};

// A release on a stream still busy waits for it: the writer cannot take the
// buffer back until the stream has run what was queued on it.
TEST_F(FakeCudaTest, AReleaseWaitsForItsStream) {
  AcquireWhole(kStreamA, 1);
  fake_->hold(kStreamA);
  ASSERT_TRUE(reader_->Release(kStreamA).ok());
  ASSERT_EQ(*Publish(), 2u);  // into the other buffer
  EXPECT_EQ(writer_->Begin(0).status().code(), Code::kBusy) << "version 1's buffer was taken while its stream ran";
  fake_->finish(kStreamA);
  auto buffer = writer_->Begin(10000);  // the watcher's release reaches the broker
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  EXPECT_EQ(Pins(), 0u);
}

// Closing a reader whose last stream is busy keeps its pin until that stream
// is done, whether the reader is destroyed or another is moved over it.
TEST_F(FakeCudaTest, ClosingAReaderWaitsForItsLastStream) {
  for (bool by_move : {false, true}) {
    SCOPED_TRACE(by_move ? "closed by a move over it" : "destroyed");
    auto latest = reader_->Latest();
    ASSERT_TRUE(latest.ok());
    const uint64_t newest = *latest;
    AcquireWhole(kStreamA, newest);
    fake_->hold(kStreamA);
    if (by_move) {
      auto other = client_->OpenReader("weights");
      ASSERT_TRUE(other.ok());
      *reader_ = std::move(other).value();
    } else {
      reader_.reset();
    }
    ASSERT_EQ(*Publish(), newest + 1);
    EXPECT_EQ(writer_->Begin(0).status().code(), Code::kBusy) << "the closed reader's buffer was taken at once";
    fake_->finish(kStreamA);
    auto buffer = writer_->Begin(10000);
    ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
    ASSERT_TRUE(writer_->Abort().ok());
    EXPECT_EQ(Pins(), 0u);
    if (!by_move) {
      auto r = client_->OpenReader("weights");
      ASSERT_TRUE(r.ok());
      reader_.emplace(std::move(r).value());
    }
  }
}

// Item 11: one thread per stream. A release waiting behind a busy stream
// holds up no commit on another stream.
TEST_F(FakeCudaTest, ACommitOnOneStreamDoesNotWaitForAnother) {
  AcquireWhole(kStreamA, 1);
  fake_->hold(kStreamA);
  ASSERT_TRUE(reader_->Release(kStreamA).ok());  // waits for stream A
  fake_->hold(kStreamB);
  auto v = Publish(kStreamB);  // commit queued behind stream B's work
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(*v, 2u);
  auto before = reader_->Latest();
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(*before, 1u) << "version 2 was published before its stream had run its writes";
  fake_->finish(kStreamB);
  auto seen = reader_->Wait(1, 10000);
  ASSERT_TRUE(seen.ok()) << seen.status().ToString() << ": the commit waited for stream A, still held";
  EXPECT_EQ(*seen, 2u);
  AcquireWhole(nullptr, 2);
  EXPECT_EQ(Pins(), 2u) << "version 1, still read on stream A, and version 2";
  fake_->finish(kStreamA);
  ASSERT_TRUE(reader_->Release().ok());
  ASSERT_TRUE(WaitFor([&] { return Pins() == 0; }));
}

// Item 11: a begin while the last commit still waits for its stream honours
// its own wait (0 waits for no reader, but for that commit, without limit).
TEST_F(FakeCudaTest, ABeginBehindAPendingCommitHonoursItsWait) {
  fake_->hold(kStreamA);
  ASSERT_EQ(*Publish(kStreamA), 2u);
  auto begin = std::async(std::launch::async, [this] { return writer_->Begin(50); });
  if (begin.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    fake_->finish(kStreamA);  // lets it return, for the test to end
    FAIL() << "Begin(50) went on waiting for the commit's stream";
  }
  auto early = begin.get();
  EXPECT_EQ(early.status().code(), Code::kBusy) << early.status().ToString();
  EXPECT_NE(early.status().message().find("previous commit"), std::string::npos) << early.status().ToString();
  fake_->finish(kStreamA);
  auto v = Publish(nullptr, 10000);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v, 3u);
  AcquireWhole(nullptr, 3);
}

// Item 7: an acquire whose stream cannot be asked fails, and the pin it
// would have let go stays held and known: a later release frees it.
TEST_F(FakeCudaTest, AnAcquireWhoseStreamFailsLeaksNoPin) {
  AcquireWhole(kStreamA, 1);
  ASSERT_EQ(*Publish(), 2u);
  const uint64_t asked = fake_->calls("cuStreamQuery");
  fake_->fail("cuStreamQuery", 1, CUDA_ERROR_ILLEGAL_ADDRESS);
  auto failed = reader_->Acquire(kStreamA);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("cuStreamQuery"), std::string::npos) << failed.status().ToString();
  EXPECT_EQ(fake_->calls("cuStreamQuery"), asked + 1);
  EXPECT_EQ(Pins(), 1u) << "version 1 is still the reader's";
  ASSERT_TRUE(reader_->Release(kStreamA).ok());  // the stream is idle: from the watcher at once
  ASSERT_TRUE(WaitFor([&] { return Pins() == 0; })) << Pins();
  ASSERT_TRUE(writer_->Begin(0).ok()) << "version 1's buffer is free again";
  ASSERT_TRUE(writer_->Abort().ok());
  AcquireWhole(kStreamA, 2);
}

// Item 7: a release that cannot wait for its stream (an event cannot be
// recorded on it: the stream is broken, nothing more runs on it) goes at
// once; done again and again, the connection never fills with pins.
TEST_F(FakeCudaTest, ReleasesThatCannotWaitForTheirStreamGoAtOnce) {
  fake_->hold(kStreamA);  // every acquire below finds the stream busy
  const uint64_t recorded = fake_->calls("cuEventRecord");
  constexpr int kRounds = 50;
  for (int i = 0; i < kRounds; ++i) {
    if (i % 5 == 0) {
      ASSERT_TRUE(Publish().ok());
    }
    fake_->fail("cuEventRecord", 1, CUDA_ERROR_LAUNCH_FAILED);
    auto a = reader_->Acquire(kStreamA);  // the previous pin: released at once
    ASSERT_TRUE(a.ok()) << "round " << i << ": " << a.status().ToString();
    ASSERT_LE(Pins(), 1u) << "round " << i;
  }
  EXPECT_EQ(fake_->calls("cuEventRecord"), recorded + kRounds - 1) << "not every release went by the stream";
  fake_->fail("cuEventRecord", 1, CUDA_ERROR_LAUNCH_FAILED);
  ASSERT_TRUE(reader_->Release(kStreamA).ok());
  EXPECT_EQ(Pins(), 0u);
}

// Item 10: a commit whose stream cannot be waited on, or whose writes
// failed, ends the write: the version is not published, and the writer can
// begin again (and has nothing to abort).
TEST_F(FakeCudaTest, ACommitWhoseStreamFailsEndsTheWrite) {
  for (const char* what : {"cuEventRecord", "cuStreamQuery"}) {
    SCOPED_TRACE(what);
    auto before = reader_->Latest();
    ASSERT_TRUE(before.ok());
    fake_->hold(kStreamA);
    auto begun = writer_->Begin(0);
    ASSERT_TRUE(begun.ok()) << begun.status().ToString();
    fake_->fail(what, 1, CUDA_ERROR_LAUNCH_FAILED);
    auto failed = writer_->Commit(kStreamA);
    ASSERT_FALSE(failed.ok()) << "the commit went ahead";
    EXPECT_NE(failed.status().message().find(what), std::string::npos) << failed.status().ToString();
    EXPECT_EQ(writer_->next_version(), 0u) << "the failed commit left the write begun";
    EXPECT_TRUE(writer_->Abort().ok()) << "nothing is begun: an abort has nothing to do";
    fake_->finish(kStreamA);
    auto latest = reader_->Latest();
    ASSERT_TRUE(latest.ok());
    EXPECT_EQ(*latest, *before) << "a version whose writes failed was published";
    auto v = Publish(nullptr, 1000);
    ASSERT_TRUE(v.ok()) << "the writer cannot begin again: " << v.status().ToString();
    EXPECT_EQ(*v, *before + 1) << "the failed version took a number (it was committed after all)";
    AcquireWhole(nullptr, *v);
    ASSERT_TRUE(reader_->Release().ok());
  }
}

// Item 8: a release the stream watcher sends late, after the client has
// reconnected to a warm-restarted broker, names a pin of the broker before;
// it must not drop the pin another reader of the same client took from the
// broker after (pin ids are unique over the broker's restarts, not counted
// again from the same base on each connection).
TEST(FakeCudaRestart, ALateReleaseAfterAWarmRestartDropsNoOtherReadersPin) {
  const FakeCuda* fake = FakeCudaDriver();
  ASSERT_NE(fake, nullptr) << "libcuda.so.1 here is not the test's fake";
  fake->reset();
  struct Reset {
    const FakeCuda* fake;
    ~Reset() { fake->reset(); }  // a failed assertion leaves nothing held for the next case
  } reset{fake};
  ServiceHarness manager;
  auto broker = manager.StartBroker();
  ASSERT_NE(broker, nullptr);
  ConnectOptions options = broker->Options("late release");
  options.reconnect_timeout_ms = 10000;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  CreateOptions o;
  o.name = "weights";
  o.shape = {static_cast<int64_t>(kBytes)};
  o.backend = BackendKind::kCudaVmm;
  o.buffers = 3;
  ASSERT_TRUE(client->Create(o).ok());
  auto writer = client->OpenWriter("weights");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Begin(0).ok());
  ASSERT_EQ(*writer->Commit(), 1u);
  auto first = client->OpenReader("weights");
  ASSERT_TRUE(first.ok());
  auto held = first->Acquire(kStreamA);
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  fake->hold(kStreamA);
  ASSERT_TRUE(first->Release(kStreamA).ok());  // sent once stream A is done: after the restart

  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  auto next = manager.RestartBroker(*broker);
  ASSERT_NE(next, nullptr);
  auto second = client->OpenReader("weights");  // the client reconnects
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  auto taken = second->Acquire();
  ASSERT_TRUE(taken.ok()) << taken.status().ToString();
  ASSERT_EQ(taken->version, 1u);
  ASSERT_EQ(taken->buffer, held->buffer);
  auto pins = [&] {
    auto registry = next->OpenRegistry();
    auto d = registry.ok() ? registry->Lookup("weights") : Result<SlotDescriptor>(registry.status());
    auto s = d.ok() ? registry->Live(*d) : Result<LiveState>(d.status());
    return s.ok() ? s->pins[held->buffer] : ~0u;
  };
  ASSERT_EQ(pins(), 2u) << "the first reader's pin, carried over the restart, and the second's";
  // A commit queued on stream A behind the late release: once it is seen,
  // the release has reached the broker before it (one thread per stream,
  // in order, on the client's one connection).
  ASSERT_TRUE(writer->Begin(10000).ok());
  auto v2 = writer->Commit(kStreamA);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  auto before = client->Info();
  ASSERT_TRUE(before.ok());
  fake->finish(kStreamA);
  auto seen = second->Wait(1, 10000);
  ASSERT_TRUE(seen.ok()) << seen.status().ToString();
  ASSERT_EQ(*seen, *v2);
  auto after = client->Info();
  ASSERT_TRUE(after.ok());
  // Answered between the two: the late release, the commit, one Info. A
  // release never sent would leave nothing here to drop a pin.
  EXPECT_EQ(after->requests - before->requests, 3u) << "the late release did not reach the broker";
  EXPECT_EQ(pins(), 2u) << "the late release of the old broker's pin dropped the second reader's";
  auto unchanged = second->Unchanged();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_TRUE(*unchanged);
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

// Versions across processes (docs/live.md): a producer and consumers in
// processes of their own, on the backend the run names (host in CI; cuda_vmm
// and cuda_ipc on the GPU machine, where the peers stamp and check with
// kernels on their own streams).
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <random>
#include <sstream>
#include <thread>

#include "common/futex.h"
#include "tests/integration/harness.h"
#if GPUBROKER_GPU_KERNELS
#include "tests/gpu/kernels.h"
#endif

namespace gpubroker::testing {
namespace {

constexpr int kTensors = 8;

uint64_t Versions() {
  const char* v = std::getenv("GPUBROKER_LIVE_VERSIONS");
  return v != nullptr ? std::strtoull(v, nullptr, 10) : 1000;
}

class LiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = BrokerProcess::Start();
    ASSERT_NE(broker_, nullptr);
    auto c = broker_->Connect();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_.emplace(std::move(c).value());
    seed_ = std::random_device{}() | (uint64_t{std::random_device{}()} << 20);
  }

  // A live arena of `buffers` buffers and kTensors views of different sizes
  // (GPU runs: up to 8 MiB each, so a version takes the kernels a while).
  void CreateStateDict(const std::string& name, uint32_t buffers) {
    // On the test's fake driver the peers stamp and check from the CPU: host sizes.
    const bool gpu = TestBackend() != BackendKind::kHost && FakeCudaDriver() == nullptr;
    std::vector<uint64_t> sizes;
    uint64_t total = 0;
    for (int t = 0; t < kTensors; ++t) {
      uint64_t bytes = (gpu ? uint64_t{1} << 20 : uint64_t{16} << 10) * (t % 4 + 1) + 8 * t;
      sizes.push_back(bytes);
      total += (bytes + 255) / 256 * 256;
    }
    CreateOptions arena;
    arena.name = name;
    arena.shape = {static_cast<int64_t>(total)};
    arena.backend = TestBackend();
    arena.buffers = buffers;
    arena.mode = 0600;
    auto created = client_->Create(arena);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    uint64_t offset = 0;
    for (int t = 0; t < kTensors; ++t) {
      CreateOptions o;
      o.name = name + "/" + std::to_string(t);
      o.dtype = DType{DType::kUInt, 64, 1};
      o.shape = {static_cast<int64_t>(sizes[t] / 8)};
      o.base = name;
      o.byte_offset = offset;
      auto view = client_->Create(o);
      ASSERT_TRUE(view.ok()) << view.status().ToString();
      offset += (sizes[t] + 255) / 256 * 256;
    }
  }

  std::unique_ptr<ChildProcess> Peer(std::vector<std::string> args) {
    args.insert(args.begin(), {LIVE_PEER_PATH, broker_->socket()});
    return ChildProcess::Exec(args);
  }

  // A consumer of "weights" up to version `final`, attached and about to wait.
  std::unique_ptr<ChildProcess> Consumer(uint64_t final) {
    auto c = Peer({"consume", "weights", S(kTensors), S(final), S(seed_)});
    EXPECT_EQ(c->channel().ReceiveLine(), "ready");
    return c;
  }

  LiveState LiveOf(const std::string& name) {
    auto registry = broker_->OpenRegistry();
    EXPECT_TRUE(registry.ok()) << registry.status().ToString();
    if (!registry.ok()) return LiveState{};
    auto d = registry->Lookup(name);
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    if (!d.ok()) return LiveState{};
    auto s = registry->Live(*d);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? *s : LiveState{};
  }

  std::string S(uint64_t n) { return std::to_string(n); }

  std::unique_ptr<BrokerProcess> broker_;
  std::optional<Client> client_;
  uint64_t seed_ = 0;
};

TEST_F(LiveTest, FourConsumersSeeOnlyWholeVersionsThatOnlyGrow) {
  CreateStateDict("weights", 2);  // double buffering: every hold of a reader counts
  const uint64_t versions = Versions();
  std::vector<std::unique_ptr<ChildProcess>> consumers;
  // Each consumer attached and waiting before the first version: the
  // producer races all four from its first commit.
  for (int i = 0; i < 4; ++i) {
    consumers.push_back(Consumer(versions));
  }
  auto producer = Peer({"produce", "weights", S(kTensors), S(versions), S(seed_)});
  EXPECT_EQ(producer->channel().ReceiveLine(), "done " + S(versions));
  EXPECT_EQ(producer->Wait(), 0);
  uint64_t total_seen = 0;
  for (auto& c : consumers) {
    std::istringstream line(c->channel().ReceiveLine());
    std::string word, first_word, last_word;
    uint64_t seen = 0, first = 0, last = 0;
    line >> word >> seen >> first_word >> first >> last_word >> last;
    EXPECT_EQ(word, "seen") << line.str();
    EXPECT_EQ(last, versions);
    // The race this test is for: each consumer held versions while the
    // producer was still writing the next ones, not only the final one.
    EXPECT_LT(first, versions) << "a consumer first held the final version: it raced nothing";
    EXPECT_GE(seen, 2u) << line.str();
    total_seen += seen;
    EXPECT_EQ(c->Wait(), 0);
  }
  std::printf("  %s: %llu versions, the 4 consumers checked %llu of them whole\n",
              std::string(BackendName(TestBackend())).c_str(), static_cast<unsigned long long>(versions),
              static_cast<unsigned long long>(total_seen));
  LiveState s = LiveOf("weights");
  EXPECT_EQ(s.version, versions);
  // Every pin given back: on CUDA a consumer's last release is sent from its
  // stream watcher, or the broker takes it back at the hang-up, after the exit.
  EXPECT_TRUE(WaitFor([&] {
    LiveState now = LiveOf("weights");
    return now.pins[0] + now.pins[1] == 0;
  })) << "pins left: " << LiveOf("weights").pins[0] + LiveOf("weights").pins[1];
}

TEST_F(LiveTest, AProducerKilledMidWriteLeavesTheLastVersionWholeAndItsBufferReclaimed) {
  CreateStateDict("weights", 2);
  auto first = Peer({"produce", "weights", S(kTensors), "5", S(seed_)});
  ASSERT_EQ(first->channel().ReceiveLine(), "done 5");
  ASSERT_EQ(first->Wait(), 0);
  auto stalled = Peer({"stall-writer", "weights", S(kTensors), S(seed_)});
  std::string begun = stalled->channel().ReceiveLine();
  ASSERT_EQ(begun.rfind("begun ", 0), 0u) << begun;
  EXPECT_GE(LiveOf("weights").writing, 0);
  stalled->Kill(SIGKILL);
  stalled->Wait();
  // The broker sees the connection close; until then a new writer is busy.
  ASSERT_TRUE(WaitFor([&] { return LiveOf("weights").writing == -1; }));
  LiveState s = LiveOf("weights");
  EXPECT_EQ(s.version, 5u);
  EXPECT_EQ(s.writer_pid, 0);
  // Version 5 reads whole, and the next producer carries on from it.
  auto check = Consumer(5);
  EXPECT_EQ(check->channel().ReceiveLine(), "seen 1 first 5 last 5");
  EXPECT_EQ(check->Wait(), 0);
  auto next = Peer({"produce", "weights", S(kTensors), "3", S(seed_)});
  EXPECT_EQ(next->channel().ReceiveLine(), "done 8");
  EXPECT_EQ(next->Wait(), 0);
  auto again = Consumer(8);
  EXPECT_EQ(again->channel().ReceiveLine(), "seen 1 first 8 last 8");
  EXPECT_EQ(again->Wait(), 0);
}

// One buffer: the write is in place, so a writer killed halfway leaves no
// whole version at all. A reader that held the last one learns that what it
// read may be torn; an acquire finds nothing to take (not version 5 with half
// of the next one in it) until the next commit; nothing stays pinned.
TEST_F(LiveTest, AOneBufferProducerKilledMidWriteLeavesNoVersionCalledWhole) {
  CreateStateDict("weights", 1);
  auto first = Peer({"produce", "weights", S(kTensors), "5", S(seed_)});
  ASSERT_EQ(first->channel().ReceiveLine(), "done 5");
  ASSERT_EQ(first->Wait(), 0);
  auto reader = client_->OpenReader("weights");
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto held = reader->Acquire();
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  EXPECT_EQ(held->version, 5u);
  auto unchanged = reader->Unchanged();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_TRUE(*unchanged);
  auto stalled = Peer({"stall-writer", "weights", S(kTensors), S(seed_)});
  std::string begun = stalled->channel().ReceiveLine();
  ASSERT_EQ(begun.rfind("begun ", 0), 0u) << begun;
  stalled->Kill(SIGKILL);
  stalled->Wait();
  ASSERT_TRUE(WaitFor([&] { return LiveOf("weights").writing == -1; }));
  unchanged = reader->Unchanged();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(*unchanged) << "a write began in the one buffer after version 5 was acquired";
  auto again = reader->Acquire();
  ASSERT_FALSE(again.ok()) << "acquired version " << again->version << " of a buffer written halfway";
  EXPECT_EQ(again.status().code(), Code::kNotFound) << again.status().ToString();
  EXPECT_TRUE(reader->Release().ok());  // CUDA: sent once the (idle) stream is found done, from the watcher
  EXPECT_TRUE(WaitFor([&] { return LiveOf("weights").pins[0] == 0; })) << "the pin of version 5 is never given back";
  // The next producer's first commit makes a whole version again.
  auto next = Peer({"produce", "weights", S(kTensors), "3", S(seed_)});
  EXPECT_EQ(next->channel().ReceiveLine(), "done 8");
  EXPECT_EQ(next->Wait(), 0);
  auto check = Consumer(8);
  EXPECT_EQ(check->channel().ReceiveLine(), "seen 1 first 8 last 8");
  EXPECT_EQ(check->Wait(), 0);
  auto taken = reader->Acquire();
  ASSERT_TRUE(taken.ok()) << taken.status().ToString();
  EXPECT_EQ(taken->version, 8u);
  EXPECT_TRUE(reader->Release().ok());
  EXPECT_TRUE(WaitFor([&] { return LiveOf("weights").pins[0] == 0; })) << "the pin of version 8 is never given back";
}

// Killed right after its last commit call: on the GPU the writes behind it
// may not have run yet. Readers still only ever see whole versions (the last
// one, or the one before it) and nobody is left waiting on the dead writer.
TEST_F(LiveTest, AProducerKilledRightAfterCommittingLeavesOnlyWholeVersions) {
  CreateStateDict("weights", 2);
  auto dying = Peer({"produce", "weights", S(kTensors), "20", S(seed_), "die"});
  ASSERT_EQ(dying->channel().ReceiveLine(), "dying after 20");
  dying->Wait();
  auto check = Consumer(19);
  std::string seen = check->channel().ReceiveLine();
  EXPECT_TRUE(seen == "seen 1 first 19 last 19" || seen == "seen 1 first 20 last 20") << seen;
  EXPECT_EQ(check->Wait(), 0);
  ASSERT_TRUE(WaitFor([&] { return LiveOf("weights").writing == -1; }));
  auto next = Peer({"produce", "weights", S(kTensors), "1", S(seed_)});
  std::string done = next->channel().ReceiveLine();
  EXPECT_TRUE(done == "done 20" || done == "done 21") << done;
  EXPECT_EQ(next->Wait(), 0);
}

TEST_F(LiveTest, AConsumerKilledWhilePinningGivesItsBufferBack) {
  CreateStateDict("weights", 2);
  auto first = Peer({"produce", "weights", S(kTensors), "1", S(seed_)});
  ASSERT_EQ(first->channel().ReceiveLine(), "done 1");
  ASSERT_EQ(first->Wait(), 0);
  auto reader = Peer({"stall-reader", "weights"});
  std::string pinned = reader->channel().ReceiveLine();
  ASSERT_EQ(pinned.rfind("pinned 1 ", 0), 0u) << pinned;
  const uint32_t pinned_buffer = static_cast<uint32_t>(std::stoul(pinned.substr(9)));
  auto second = Peer({"produce", "weights", S(kTensors), "1", S(seed_)});
  ASSERT_EQ(second->channel().ReceiveLine(), "done 2");
  ASSERT_EQ(second->Wait(), 0);
  // Version 2 is the newest and version 1 is pinned: no buffer is free.
  auto writer = client_->OpenWriter("weights");
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  EXPECT_EQ(writer->Begin(0).status().code(), Code::kBusy);
  reader->Kill(SIGKILL);
  reader->Wait();
  // The writer waits on the releases word (no polling) for the broker to
  // take the dead reader's pin back.
  auto buffer = writer->Begin(30000);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  EXPECT_EQ(*buffer, pinned_buffer);
  EXPECT_EQ(LiveOf("weights").pins[pinned_buffer], 0u);
  EXPECT_TRUE(writer->Abort().ok());
}

TEST_F(LiveTest, AWaitEndsAtItsTimeoutAndWhenTheBrokerStops) {
  CreateStateDict("weights", 2);
  auto reader = client_->OpenReader("weights");
  ASSERT_TRUE(reader.ok());
  auto latest = reader->Latest();
  ASSERT_TRUE(latest.ok()) << latest.status().ToString();
  EXPECT_EQ(*latest, 0u);
  auto timed_out = reader->Wait(0, 50);
  EXPECT_EQ(timed_out.status().code(), Code::kTimeout);
  EXPECT_NE(timed_out.status().message().find("50 ms"), std::string::npos) << timed_out.status().message();
  ConnectOptions options = broker_->Options("waiter");
  options.reconnect_timeout_ms = 0;
  auto quick = Client::Connect(options);
  ASSERT_TRUE(quick.ok());
  auto waiting = quick->OpenReader("weights");
  ASSERT_TRUE(waiting.ok());
  broker_->Stop(SIGTERM);
  // The stopping broker wakes every waiter; with no broker to reconnect to,
  // the wait says so instead of sleeping out its time.
  auto stopped = waiting->Wait(0, 120000);
  EXPECT_EQ(stopped.status().code(), Code::kUnavailable) << stopped.status().ToString();
}

// Creates and destroys at full speed beside a reader (issue 22, item 9):
// lock-free lookups retry through the churn for as long as it takes, never
// giving up after a count of tries with `unavailable`, and a wait under way
// ends at the commit that follows.
TEST_F(LiveTest, LookupsAndAWaitGoOnThroughCreateAndDestroyChurn) {
  CreateStateDict("weights", 2);
  auto reader = client_->OpenReader("weights");
  ASSERT_TRUE(reader.ok());
  std::atomic<bool> churning{true};
  Result<uint64_t> waited = Timeout("not yet");
  std::thread waiter([&] { waited = reader->Wait(0, 60000); });
  auto churner = broker_->Connect("churn");
  ASSERT_TRUE(churner.ok());
  std::string churn_failed;
  // 3000 rounds, or fewer where they would outlast the wait's 60 s (a loaded
  // machine, the fake driver's memfds): the wait must end at the commit.
  const auto churn_end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int rounds = 0;
  std::thread churn([&] {
    for (; rounds < 3000 && churn_failed.empty() && std::chrono::steady_clock::now() < churn_end; ++rounds) {
      const int i = rounds;
      CreateOptions o;
      o.name = "churn/" + std::to_string(i % 64);
      o.shape = {64};
      Status s = churner->Create(o).status();
      if (s.ok()) s = churner->Destroy(o.name);
      if (!s.ok()) churn_failed = s.ToString();
    }
    churning = false;
  });
  uint64_t lookups = 0;
  std::vector<std::string> failures;
  while (churning) {
    auto found = client_->Lookup("weights/" + std::to_string(lookups % kTensors));
    if (!found.ok()) failures.push_back(found.status().ToString());
    ++lookups;
  }
  churn.join();
  ASSERT_EQ(churn_failed, "");
  EXPECT_GT(lookups, 0u) << "no lookup ran during the churn";
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << lookups << " lookups failed, first: "
                                << (failures.empty() ? "" : failures.front());
  auto writer = client_->OpenWriter("weights");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Begin().ok());
  ASSERT_EQ(*writer->Commit(), 1u);
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.status().ToString();
  EXPECT_EQ(*waited, 1u);
  std::printf("  %llu lookups during %d creates and destroys, none failed\n", static_cast<unsigned long long>(lookups),
              rounds);
}

// Anyone who maps the registry can wake a record's waiters at will. A
// waiter woken for nothing goes back to sleep at the cost of a load, and
// under a flood of such wakes checks its word at most every millisecond: a
// neighbour waking it in a loop (as fast as one core can) costs it little.
TEST_F(LiveTest, AWaiterWokenForNothingByANeighbourStaysCheap) {
  // Host memory whatever the run's backend: the wait is the same, and the
  // waiter is forked (a process that mapped CUDA memory cannot fork one that does).
  CreateOptions o;
  o.name = "woken";
  o.shape = {4096};
  o.buffers = 2;
  o.backend = BackendKind::kHost;
  ASSERT_TRUE(client_->Create(o).ok());
  auto registry = broker_->OpenRegistry();
  ASSERT_TRUE(registry.ok()) << registry.status().ToString();
  auto d = registry->Lookup("woken");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto* word = const_cast<std::atomic<uint32_t>*>(registry->CommitsWord(*d));
  ASSERT_NE(word, nullptr);
  ChildProcess waiter([&](Channel& ch) {
    auto c = broker_->Connect("waiter");
    if (!c.ok()) return 1;
    auto reader = c->OpenReader("woken");
    if (!reader.ok()) return 2;
    ch.SendLine("ready");
    rusage before{}, after{};
    ::getrusage(RUSAGE_SELF, &before);
    auto w = reader->Wait(0, 2000);  // nothing is committed: it times out
    ::getrusage(RUSAGE_SELF, &after);
    auto us = [](const rusage& r) {
      return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000LL + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
    };
    ch.SendLine(w.ok() ? "WOKE at " + std::to_string(*w) : std::string(CodeName(w.status().code())));
    ch.SendLine(std::to_string(us(after) - us(before)));
    return 0;
  });
  ASSERT_EQ(waiter.channel().ReceiveLine(), "ready");
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wakes{0};
  std::thread neighbour([&] {
    while (!stop.load()) {
      FutexWake(word, INT_MAX);
      wakes.fetch_add(1, std::memory_order_relaxed);
    }
  });
  EXPECT_EQ(waiter.channel().ReceiveLine(), "timeout");
  stop = true;
  neighbour.join();
  const long long cpu_us = std::stoll("0" + waiter.channel().ReceiveLine());
  EXPECT_EQ(waiter.Wait(), 0);
  std::printf("  a 2 s wait under %llu wakes by a neighbour took %lld us of the waiter's CPU\n",
              static_cast<unsigned long long>(wakes.load()), cpu_us);
  EXPECT_GT(wakes.load(), 10000u) << "the neighbour hardly woke anyone: the test proves nothing";
  EXPECT_LT(cpu_us, 400000) << "the waiter spun: " << cpu_us << " us of CPU in a 2 s wait";
}

// A wait for a broker that is gone looks for a restarted one no longer than
// the wait may last: its timeout holds, whatever the reconnect time.
TEST_F(LiveTest, AWaitForAKilledBrokerEndsAtItsOwnTimeout) {
  CreateStateDict("weights", 2);
  ConnectOptions options = broker_->Options("patient");
  options.reconnect_timeout_ms = 600000;
  auto c = Client::Connect(options);
  ASSERT_TRUE(c.ok());
  auto reader = c->OpenReader("weights");
  ASSERT_TRUE(reader.ok());
  broker_->Stop(SIGKILL);
  auto waited = reader->Wait(0, 200);
  EXPECT_EQ(waited.status().code(), Code::kTimeout) << waited.status().ToString();
  EXPECT_NE(waited.status().message().find("not answering"), std::string::npos) << waited.status().message();
}

// A broker started afresh after a crash knows none of the old names; a
// producer makes its tree again under the same name. A reader of the old
// tree must learn that it is another allocation, never take the new versions
// for its own (its mapping is the old memory), and the old writer is told
// the same.
TEST_F(LiveTest, AReaderOfAKilledBrokerTakesNoVersionOfTheTreeMadeAgainAfterIt) {
  ConnectOptions options = broker_->Options("reader and writer from before");
  options.reconnect_timeout_ms = 10000;
  auto old_client = Client::Connect(options);
  ASSERT_TRUE(old_client.ok());
  CreateStateDict("weights", 2);
  auto writer = old_client->OpenWriter("weights");
  ASSERT_TRUE(writer.ok());
  auto begun_first = writer->Begin(0);
  ASSERT_TRUE(begun_first.ok()) << begun_first.status().ToString();
  auto committed = writer->Commit();
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  ASSERT_EQ(*committed, 1u);
  auto reader = old_client->OpenReader("weights");
  ASSERT_TRUE(reader.ok());
  auto first = reader->Wait(0, 1000);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_EQ(*first, 1u);
  broker_->Stop(SIGKILL);
  auto next = BrokerProcess::Restart(*broker_);
  ASSERT_NE(next, nullptr);
  auto again = next->Connect("producer, again");
  ASSERT_TRUE(again.ok());
  client_.emplace(std::move(again).value());
  CreateStateDict("weights", 2);  // the same layout, made in the same order
  auto second = client_->OpenWriter("weights");
  ASSERT_TRUE(second.ok());
  for (uint64_t v = 1; v <= 3; ++v) {
    auto b = second->Begin(0);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    auto c = second->Commit();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    ASSERT_EQ(*c, v);
  }
  auto seen = reader->Wait(1, 10000);
  ASSERT_FALSE(seen.ok()) << "the old reader took version " << *seen << " of the new tree for its own";
  EXPECT_EQ(seen.status().code(), Code::kNotFound) << seen.status().ToString();
  EXPECT_NE(seen.status().message().find("open it again"), std::string::npos) << seen.status().message();
  auto begun = writer->Begin(0);
  ASSERT_FALSE(begun.ok()) << "the old writer began buffer " << *begun << " of the new tree";
  EXPECT_EQ(begun.status().code(), Code::kNotFound) << begun.status().ToString();
  EXPECT_NE(begun.status().message().find("'weights'"), std::string::npos) << begun.status().message();
  // Opened again, the reader follows the new tree.
  auto fresh = old_client->OpenReader("weights");
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  auto newest = fresh->Wait(0, 1000);
  ASSERT_TRUE(newest.ok()) << newest.status().ToString();
  EXPECT_EQ(*newest, 3u);
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

// Closing a reader gives its pin back once the stream of its last acquire
// has run the work queued on it, not at once: a writer must not take a
// buffer a kernel still reads. (Host memory has no stream: at once.) Both
// ways a reader closes: its destructor, and another reader moved over it.
TEST_F(LiveTest, ClosingAReaderReleasesOnceItsStreamIsDone) {
  CreateStateDict("weights", 2);
  auto writer = client_->OpenWriter("weights");
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  auto begun = writer->Begin(-1);
  ASSERT_TRUE(begun.ok()) << begun.status().ToString();
  auto committed = writer->Commit();
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  // A stream kept busy: by a kernel on a GPU; on the test's fake driver
  // (CI), held by the test.
  const FakeCuda* fake = TestBackend() != BackendKind::kHost ? FakeCudaDriver() : nullptr;
#if GPUBROKER_GPU_KERNELS
  const bool kernels = TestBackend() != BackendKind::kHost && fake == nullptr;
#else
  const bool kernels = false;
#endif
  const bool gpu = kernels || fake != nullptr;
  for (const bool by_move : {false, true}) {
    SCOPED_TRACE(by_move ? "another reader moved over it" : "its destructor");
    void* stream = fake != nullptr ? reinterpret_cast<void*>(0xc000) : nullptr;
#if GPUBROKER_GPU_KERNELS
    if (kernels) stream = gpu::NewStream();
#endif
    uint32_t buffer = 0;
    {
      auto reader = client_->OpenReader("weights");
      ASSERT_TRUE(reader.ok()) << reader.status().ToString();
      ASSERT_TRUE(reader->Wait(0, 10000).ok());
      auto held = reader->Acquire(stream);
      ASSERT_TRUE(held.ok()) << held.status().ToString();
      buffer = held->buffer;
      ASSERT_EQ(LiveOf("weights").pins[buffer], 1u);
#if GPUBROKER_GPU_KERNELS
      if (kernels) {
        ASSERT_TRUE(gpu::Spin(stream, 2'000'000'000));  // a kernel still "reading" for 2 s
      }
#endif
      if (fake != nullptr) fake->hold(stream);
      if (by_move) {
        auto other = client_->OpenReader("weights");
        ASSERT_TRUE(other.ok()) << other.status().ToString();
        *reader = std::move(*other);  // closes the reader that pinned
        if (gpu) {
          EXPECT_EQ(LiveOf("weights").pins[buffer], 1u) << "moved over with a kernel queued: released at once";
        }
      }
    }  // the reader closes here (after a move: the other one, which pins nothing)
    if (gpu) {
      EXPECT_EQ(LiveOf("weights").pins[buffer], 1u) << "closed with a kernel queued: released at once";
#if GPUBROKER_GPU_KERNELS
      if (kernels) {
        ASSERT_TRUE(gpu::SyncStream(stream));
        gpu::FreeStream(stream);
      }
#endif
      if (fake != nullptr) fake->finish(stream);
    }
    EXPECT_TRUE(WaitFor([&] { return LiveOf("weights").pins[buffer] == 0; })) << "the pin was never given back";
  }
}

}  // namespace
}  // namespace gpubroker::testing

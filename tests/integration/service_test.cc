// The broker as a service: the notify protocol, reload, drain, and a warm
// restart through the fd store, against a harness that plays systemd.
#include <algorithm>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>

#include "tests/integration/harness.h"
#include "tests/integration/service_harness.h"

namespace gpubroker::testing {
namespace {

// On the run's backend (host; cuda_vmm on the fake driver in CI: warm
// restarts that carry CUDA memory in the fd store).
CreateOptions Bytes(const std::string& name, size_t n) {
  CreateOptions o;
  o.name = name;
  o.shape = {static_cast<int64_t>(n)};
  o.mode = 0644;
  o.backend = TestBackend();
  return o;
}

std::vector<uint8_t> Contents(const View& v) {
  auto* p = static_cast<const uint8_t*>(v.data());
  return {p, p + v.nbytes()};
}

Client Connect(const BrokerProcess& b, int reconnect_ms = 0) {
  ConnectOptions o = b.Options("service-test");
  o.reconnect_timeout_ms = reconnect_ms;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return std::move(c).value();
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(Service, NotifiesReadyStatusWatchdogReloadAndStopping) {
  ServiceHarness manager;
  auto options = manager.Options({}, 200000);  // WATCHDOG_USEC: ping every 100 ms
  options.wait_for_socket = false;
  auto broker = BrokerProcess::Start(options);
  ASSERT_NE(broker, nullptr);
  ASSERT_TRUE(manager.Expect("READY=1"));
  auto c = broker->Connect();  // ready means the socket answers
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(c->Create(Bytes("svc/a", 64)).ok());
  EXPECT_TRUE(manager.Expect("STATUS=1 slots, 1 clients"));
  EXPECT_TRUE(manager.Expect("WATCHDOG=1"));
  EXPECT_TRUE(manager.Expect("WATCHDOG=1"));
  ::kill(broker->pid(), SIGHUP);
  EXPECT_TRUE(manager.Expect("RELOADING=1"));
  EXPECT_TRUE(manager.Expect("READY=1"));
  EXPECT_TRUE(c->Stat("svc/a").ok());  // still serving after the reload
  ::kill(broker->pid(), SIGTERM);
  EXPECT_TRUE(manager.Expect("STOPPING=1"));
  EXPECT_EQ(broker->Stop(0), 0);
}

TEST(Service, WarmRestartKeepsEveryBufferAndTheClientsLeases) {
  ServiceHarness manager;
  auto broker = manager.StartBroker();
  ASSERT_NE(broker, nullptr);
  Client holder = Connect(*broker, 10000);
  auto data = RandomBytes(1 << 20);
  auto a = holder.CreateAndAttach(Bytes("warm/a", data.size()));
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->device().type == Device::kCuda, TestBackend() != BackendKind::kHost) << "not on the run's backend";
  std::memcpy(a->data(), data.data(), data.size());
  ASSERT_TRUE(holder.Create(Bytes("warm/arena", 64 * 1024)).ok());
  CreateOptions v = Bytes("warm/arena/v", 4096);
  v.base = "warm/arena";
  v.byte_offset = 8192;
  auto view = holder.CreateAndAttach(v);
  ASSERT_TRUE(view.ok());
  auto arena_data = RandomBytes(4096);
  std::memcpy(view->data(), arena_data.data(), arena_data.size());
  ASSERT_TRUE(holder.Create(Bytes("warm/gone", 4096)).ok());
  ASSERT_TRUE(holder.Destroy("warm/gone").ok());
  auto before = holder.Stat("warm/a");
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  auto restart = manager.RestartOptions();
  std::vector<std::string> stored = manager.StoredNames();
  EXPECT_EQ(stored.size(), 3u) << "the registry and one stored fd per live allocation (warm/gone's was removed)";
  EXPECT_EQ(std::count(stored.begin(), stored.end(), "gpb-registry"), 1);
  EXPECT_TRUE(Contents(*a) == data) << "a view must stay valid while the broker is down";

  auto next = BrokerProcess::Restart(*broker, restart);
  ASSERT_NE(next, nullptr);
  ASSERT_TRUE(manager.Expect("READY=1"));
  Client newcomer = Connect(*next);
  auto again = newcomer.Attach("warm/a");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(Contents(*again) == data) << "a new client sees other bytes after the restart";
  auto again_v = newcomer.Attach("warm/arena/v");
  ASSERT_TRUE(again_v.ok());
  EXPECT_TRUE(Contents(*again_v) == arena_data);
  EXPECT_EQ(newcomer.Stat("warm/gone").status().code(), Code::kNotFound);
  auto after = newcomer.Stat("warm/a");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->version, before->version);
  EXPECT_EQ(after->created_ns, before->created_ns);
  EXPECT_EQ(after->allocation_id, before->allocation_id);
  EXPECT_EQ(after->mode, before->mode);

  // The holder's next call reconnects and re-takes its leases by itself.
  auto seen = holder.Stat("warm/a");
  ASSERT_TRUE(seen.ok()) << seen.status().ToString();
  EXPECT_EQ(seen->lease_count, 2u) << "holder's lease + newcomer's";
  EXPECT_EQ(holder.Stat("warm/arena")->lease_count, 2u);
  EXPECT_TRUE(Contents(*a) == data);
  a->reset();
  again->reset();
  EXPECT_EQ(newcomer.Stat("warm/a")->lease_count, 0u);
  auto info = newcomer.Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->leases, 2u);  // the arena: one view each
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

// Versions survive a warm restart: the newest committed version, in its
// buffer, with its bytes, and the pins on it; the write under way does not
// (a writer's unfinished buffer is reclaimed), and the next commit
// carries on from the adopted version. A reader waiting through the restart
// is woken by the stopping broker and finds the new one by itself.
TEST(Service, WarmRestartKeepsCommittedVersions) {
  ServiceHarness manager;
  auto broker = manager.StartBroker();
  ASSERT_NE(broker, nullptr);
  Client producer = Connect(*broker, 10000);
  CreateOptions live = Bytes("warm/live", 4096);
  live.buffers = 2;
  ASSERT_TRUE(producer.Create(live).ok());
  auto writer = producer.OpenWriter("warm/live");
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  std::vector<uint8_t> committed;
  uint32_t committed_buffer = 0;
  for (int v = 1; v <= 3; ++v) {
    auto b = writer->Begin();
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    committed = RandomBytes(4096);
    std::memcpy(writer->view().data(*b), committed.data(), committed.size());
    committed_buffer = *b;
    ASSERT_EQ(*writer->Commit(), static_cast<uint64_t>(v));
  }
  auto unfinished = writer->Begin();  // under way when the broker stops
  ASSERT_TRUE(unfinished.ok());
  std::memset(writer->view().data(*unfinished), 0xee, 4096);
  Client follower = Connect(*broker, 10000);
  auto reader = follower.OpenReader("warm/live");
  ASSERT_TRUE(reader.ok());
  ASSERT_EQ(reader->Acquire()->version, 3u);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);

  auto next = manager.RestartBroker(*broker);
  ASSERT_NE(next, nullptr);
  Client newcomer = Connect(*next);
  EXPECT_EQ(newcomer.Stat("warm/live")->version, 3u);
  EXPECT_EQ(newcomer.Lookup("warm/live")->version, 3u);
  auto registry = next->OpenRegistry();
  ASSERT_TRUE(registry.ok());
  auto d = registry->Lookup("warm/live");
  ASSERT_TRUE(d.ok());
  LiveState s = *registry->Live(*d);
  EXPECT_EQ(s.buffer, static_cast<int32_t>(committed_buffer));
  EXPECT_EQ(s.writing, -1) << "the write under way is not adopted";
  EXPECT_EQ(s.pins[committed_buffer], 1u) << "the reader's pin is carried over (until it takes it over, or 30 s)";
  EXPECT_EQ(s.pins[0] + s.pins[1], 1u);
  auto fresh = newcomer.OpenReader("warm/live");
  ASSERT_TRUE(fresh.ok());
  auto got = fresh->Acquire();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, 3u);
  auto* p = static_cast<const uint8_t*>(fresh->view().data(got->buffer));
  EXPECT_TRUE(std::equal(committed.begin(), committed.end(), p)) << "version 3's bytes";
  // The old reader reconnects on its own and follows the next version.
  EXPECT_EQ(writer->Commit().status().code(), Code::kInvalidArgument) << "the write went with the old broker";
  auto b = writer->Begin();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(writer->next_version(), 4u);
  ASSERT_EQ(*writer->Commit(), 4u);
  auto waited = reader->Wait(3, 10000);
  ASSERT_TRUE(waited.ok()) << waited.status().ToString();
  EXPECT_EQ(*waited, 4u);
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

// A reader's pin survives a warm restart (issue 22, item 2): two buffers, the
// reader pins version 1, the writer commits 2 and has no free buffer. After
// the restart the writer must not take the reader's buffer; the reader takes
// its pin over at its next call and reads version 1 whole; once it moves on,
// the writer gets the buffer.
TEST(Service, AReadersPinSurvivesAWarmRestart) {
  ServiceHarness manager;
  auto broker = manager.StartBroker();
  ASSERT_NE(broker, nullptr);
  Client producer = Connect(*broker, 10000);
  CreateOptions live = Bytes("warm/pinned", 4096);
  live.buffers = 2;
  ASSERT_TRUE(producer.Create(live).ok());
  auto writer = producer.OpenWriter("warm/pinned");
  ASSERT_TRUE(writer.ok());
  std::vector<uint8_t> v1 = RandomBytes(4096), v2 = RandomBytes(4096);
  auto b1 = writer->Begin();
  ASSERT_TRUE(b1.ok());
  std::memcpy(writer->view().data(*b1), v1.data(), v1.size());
  ASSERT_EQ(*writer->Commit(), 1u);
  Client consumer = Connect(*broker, 10000);
  auto reader = consumer.OpenReader("warm/pinned");
  ASSERT_TRUE(reader.ok());
  auto pinned = reader->Acquire();
  ASSERT_TRUE(pinned.ok());
  ASSERT_EQ(pinned->version, 1u);
  auto b2 = writer->Begin();
  ASSERT_TRUE(b2.ok());
  ASSERT_NE(*b2, pinned->buffer);
  std::memcpy(writer->view().data(*b2), v2.data(), v2.size());
  ASSERT_EQ(*writer->Commit(), 2u);
  EXPECT_EQ(writer->Begin(0).status().code(), Code::kBusy) << "the reader pins one buffer, version 2 is the other";
  EXPECT_EQ(broker->Stop(SIGTERM), 0);

  auto next = manager.RestartBroker(*broker);
  ASSERT_NE(next, nullptr);
  auto registry = next->OpenRegistry();
  ASSERT_TRUE(registry.ok());
  auto d = registry->Lookup("warm/pinned");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(registry->Live(*d)->pins[pinned->buffer], 1u) << "the pin is carried over";
  // The writer reconnects and still finds no free buffer.
  auto taken = writer->Begin(0);
  EXPECT_EQ(taken.status().code(), Code::kBusy) << (taken.ok() ? "took buffer " + std::to_string(*taken) : "");
  // The reader's next call takes its pin over: what it read is still version 1.
  auto unchanged = reader->Unchanged();
  ASSERT_TRUE(unchanged.ok()) << unchanged.status().ToString();
  EXPECT_TRUE(*unchanged);
  auto* p = static_cast<const uint8_t*>(reader->view().data(pinned->buffer));
  EXPECT_TRUE(std::equal(v1.begin(), v1.end(), p)) << "version 1's bytes, whole";
  EXPECT_EQ(writer->Begin(0).status().code(), Code::kBusy) << "taken over, the pin still holds";
  // Moving on releases it, and the writer has its buffer.
  auto moved = reader->Acquire();
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_EQ(moved->version, 2u);
  auto b3 = writer->Begin(0);
  ASSERT_TRUE(b3.ok()) << b3.status().ToString();
  EXPECT_EQ(*b3, pinned->buffer);
  ASSERT_EQ(*writer->Commit(), 3u);
  auto* q = static_cast<const uint8_t*>(reader->view().data(moved->buffer));
  EXPECT_TRUE(std::equal(v2.begin(), v2.end(), q)) << "version 2, pinned now, untouched by the commit of 3";
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

// A two-buffer live slot `name` on the run's backend with version 1
// committed: its writer.
Result<Writer> TwoBuffersAtVersionOne(Client& c, const std::string& name) {
  CreateOptions live = Bytes(name, 4096);
  live.buffers = 2;
  GPB_RETURN_IF_ERROR(c.Create(live).status());
  GPB_ASSIGN_OR_RETURN(Writer w, c.OpenWriter(name));
  GPB_RETURN_IF_ERROR(w.Begin().status());
  GPB_ASSIGN_OR_RETURN(uint64_t v, w.Commit());
  if (v != 1) return Internal("the first commit made version " + std::to_string(v));
  return w;
}

// Closing a reader after a warm restart, its client already reconnected:
// the pin the new broker carries for it is taken over and given back at once,
// not held until the carried pins' grace ends (the writer of a two-buffer
// tree would wait that long for its buffer).
TEST(Service, AReaderClosedAfterAWarmRestartGivesItsCarriedPinBack) {
  ServiceHarness manager;
  auto broker = manager.StartBroker();
  ASSERT_NE(broker, nullptr);
  Client producer = Connect(*broker, 10000);
  auto writer = TwoBuffersAtVersionOne(producer, "warm/closed");
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  Client consumer = Connect(*broker, 10000);
  std::optional<Reader> reader;
  {
    auto r = consumer.OpenReader("warm/closed");
    ASSERT_TRUE(r.ok());
    reader.emplace(std::move(r).value());
  }
  auto pinned = reader->Acquire();
  ASSERT_TRUE(pinned.ok());
  ASSERT_TRUE(writer->Begin().ok());
  ASSERT_EQ(*writer->Commit(), 2u);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);

  auto next = manager.RestartBroker(*broker);
  ASSERT_NE(next, nullptr);
  ASSERT_TRUE(consumer.Info().ok());  // the consumer's client reconnects
  EXPECT_EQ(writer->Begin(0).status().code(), Code::kBusy) << "the carried pin holds";
  reader.reset();
  auto registry = next->OpenRegistry();
  ASSERT_TRUE(registry.ok());
  auto d = registry->Lookup("warm/closed");
  ASSERT_TRUE(d.ok());
  // On CUDA the release follows the reader's stream, on the client's stream
  // watcher: close returns before it is sent.
  EXPECT_TRUE(WaitFor([&] { return registry->Live(*d)->pins[pinned->buffer] == 0; }))
      << "the closed reader's carried pin is still held";
  auto buffer = writer->Begin(0);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  EXPECT_EQ(*buffer, pinned->buffer);
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

// Closing a reader whose broker is gone returns at once: it does not wait
// for a broker to come back (however long the client would reconnect for),
// as what it held went with the broker.
TEST(Service, ClosingAReaderWhoseBrokerIsGoneDoesNotWaitForIt) {
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  Client producer = Connect(*broker);
  auto writer = TwoBuffersAtVersionOne(producer, "gone/closed");
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  Client consumer = Connect(*broker, 120000);
  auto reader = consumer.OpenReader("gone/closed");
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(reader->Acquire().ok());
  broker->Stop(SIGKILL);
  auto closed = std::async(std::launch::async, [r = std::move(reader).value()]() mutable { Reader gone = std::move(r); });
  EXPECT_EQ(closed.wait_for(std::chrono::seconds(30)), std::future_status::ready)
      << "closing the reader waits for the broker to come back";
}

// A restart with the configuration's pools already adopted from the fd store
// keeps each unchanged pool (same allocation, same bytes), and applies what
// changed meanwhile: a resized pool is made anew, a dropped one goes.
TEST(Service, WarmRestartKeepsConfiguredPoolsAndAppliesChangedOnes) {
  ServiceHarness manager;
  const std::string dir = ::testing::TempDir() + "/gpb-pools-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/gpubroker.yaml";
  auto pool = [](const std::string& name, int bytes) {
    return "  - name: " + name + "\n    bytes: " + std::to_string(bytes) + "\n    mode: \"0644\"\n";
  };
  WriteFile(path, "pools:\n" + pool("pool/keep", 65536) + pool("pool/resize", 64) + pool("pool/drop", 64));
  auto broker = manager.StartBroker({"--config", path});
  ASSERT_NE(broker, nullptr);
  Client holder = Connect(*broker, 10000);
  auto keep = holder.Attach("pool/keep");
  ASSERT_TRUE(keep.ok()) << keep.status().ToString();
  auto data = RandomBytes(65536);
  std::memcpy(keep->data(), data.data(), data.size());
  auto before = holder.Stat("pool/keep");
  ASSERT_TRUE(before.ok());

  // The same pools: the restart the unit's example config once failed.
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::vector<std::unique_ptr<BrokerProcess>> brokers;
  brokers.push_back(std::move(broker));
  brokers.push_back(manager.RestartBroker(*brokers.back(), {"--config", path}));
  ASSERT_NE(brokers.back(), nullptr) << "the restarted broker did not come up with its own pools adopted";
  auto same = holder.Stat("pool/keep");
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_EQ(same->allocation_id, before->allocation_id);
  EXPECT_EQ(same->created_ns, before->created_ns);

  // Then one pool resized and one dropped while the broker was down.
  WriteFile(path, "pools:\n" + pool("pool/keep", 65536) + pool("pool/resize", 128));
  EXPECT_EQ(brokers.back()->Stop(SIGTERM), 0);
  brokers.push_back(manager.RestartBroker(*brokers.back(), {"--config", path}));
  ASSERT_NE(brokers.back(), nullptr);
  Client newcomer = Connect(*brokers.back());
  auto again = newcomer.Attach("pool/keep");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->slot().allocation_id, before->allocation_id);
  EXPECT_TRUE(Contents(*again) == data) << "an unchanged pool lost its contents across the restart";
  EXPECT_TRUE(Contents(*keep) == data) << "a view held across the restarts must stay valid";
  auto resized = newcomer.Stat("pool/resize");
  ASSERT_TRUE(resized.ok());
  EXPECT_EQ(resized->nbytes, 128u);
  EXPECT_EQ(newcomer.Stat("pool/drop").status().code(), Code::kNotFound);
  EXPECT_EQ(brokers.back()->Stop(SIGTERM), 0);
  std::filesystem::remove_all(dir);
}

// Under systemd, stderr is the journal's stream ($JOURNAL_STREAM names its
// device and inode): each line then carries its syslog priority, and no
// timestamp of its own, since journald adds one.
TEST(Service, LinesForTheJournalCarryTheirPriorityAndNoTimestamp) {
  ServiceHarness manager;
  const std::string dir = ::testing::TempDir() + "/gpb-journal-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string log = dir + "/stderr", path = dir + "/gpubroker.yaml";
  WriteFile(log, "");
  WriteFile(path, "logging:\n  level: info\n");
  struct stat st {};
  ASSERT_EQ(::stat(log.c_str(), &st), 0);
  auto options = manager.Options({"--config", path, "--log-level", "info"});
  options.log_file = log;
  options.env.emplace_back("JOURNAL_STREAM", std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino));
  auto broker = BrokerProcess::Start(options);
  ASSERT_NE(broker, nullptr);
  ASSERT_TRUE(manager.Expect("READY=1"));
  WriteFile(path, "logging:\n  levle: info\n");  // a reload that fails: an error line
  ::kill(broker->pid(), SIGHUP);
  ASSERT_TRUE(manager.Expect("READY=1"));
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::ifstream in(log);
  std::string line;
  int info = 0, error = 0;
  while (std::getline(in, line)) {
    ASSERT_GE(line.size(), 3u) << line;
    ASSERT_TRUE(line[0] == '<' && line[2] == '>' && line[1] >= '0' && line[1] <= '7') << "no priority: " << line;
    EXPECT_FALSE(line.size() > 7 && std::isdigit(static_cast<unsigned char>(line[3])) && line[7] == '-')
        << "a timestamp of its own: " << line;
    if (line[1] == '6') ++info;
    if (line[1] == '3' && line.find("levle") != std::string::npos) ++error;
  }
  EXPECT_GT(info, 0);
  EXPECT_EQ(error, 1) << "the rejected reload must be one line at priority 3 (error)";
  std::filesystem::remove_all(dir);
}

TEST(Service, ReloadAppliesAValidConfigAndRejectsAnInvalidOne) {
  ServiceHarness manager;
  auto probe = BrokerProcess::Start();  // for a scratch directory
  ASSERT_NE(probe, nullptr);
  std::string path = probe->dir() + "/gpubroker.yaml";
  WriteFile(path, "pools:\n  - name: pool/one\n    bytes: 4096\n    mode: \"0644\"\n");
  probe->Stop(SIGTERM);
  auto broker = manager.StartBroker({"--config", path});
  ASSERT_NE(broker, nullptr);
  Client c = Connect(*broker);
  ASSERT_TRUE(c.Stat("pool/one").ok());

  WriteFile(path, "pools:\n  - name: pool/two\n    dtype: float32\n    shape: [16]\n    mode: \"0644\"\n"
                  "limits:\n  max_slots: 3\n");
  ASSERT_EQ(::kill(broker->pid(), SIGHUP), 0);
  ASSERT_TRUE(manager.Expect("RELOADING=1"));
  ASSERT_TRUE(manager.Expect("READY=1"));
  EXPECT_EQ(c.Stat("pool/one").status().code(), Code::kNotFound);
  EXPECT_TRUE(c.Stat("pool/two").ok());
  EXPECT_EQ(c.Info()->max_slots, 3u);

  WriteFile(path, "pools:\n  - name: pool/three\n    bytes: 64\n    mdoe: \"0644\"\n");
  Status s = c.Reload();
  EXPECT_EQ(s.code(), Code::kConfig);
  EXPECT_NE(s.message().find("gpubroker.yaml:4:5: unknown key 'mdoe'"), std::string::npos) << s.message();
  EXPECT_TRUE(c.Stat("pool/two").ok()) << "the running configuration must stay";
  EXPECT_EQ(c.Stat("pool/three").status().code(), Code::kNotFound);
  EXPECT_EQ(c.Info()->max_slots, 3u);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

TEST(Service, DrainRefusesNewWorkWhileLeasesKeepWorking) {
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  Client c = Connect(*broker);
  auto v = c.CreateAndAttach(Bytes("drain/x", 4096));
  ASSERT_TRUE(v.ok());
  auto data = RandomBytes(4096);
  std::memcpy(v->data(), data.data(), data.size());
  ASSERT_TRUE(c.Drain(true).ok());
  EXPECT_EQ(c.Info()->state, "draining");
  Status create = c.Create(Bytes("drain/y", 64)).status();
  EXPECT_EQ(create.code(), Code::kUnavailable);
  EXPECT_NE(create.message().find("draining"), std::string::npos);
  Client other = Connect(*broker);
  EXPECT_EQ(other.Attach("drain/x").status().code(), Code::kUnavailable);
  EXPECT_TRUE(Contents(*v) == data);
  EXPECT_EQ(c.Stat("drain/x")->lease_count, 1u);
  v->reset();  // detach still works
  EXPECT_EQ(c.Stat("drain/x")->lease_count, 0u);
  ASSERT_TRUE(c.Drain(false).ok());
  EXPECT_TRUE(c.Create(Bytes("drain/y", 64)).ok());
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

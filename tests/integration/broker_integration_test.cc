// End to end against a real gpubrokerd, with clients in separate processes.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "tests/integration/harness.h"
#include "common/seqpacket.h"
#include "common/wire.h"
#include "tests/support/require.h"

namespace gpubroker::testing {
namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

CreateOptions Bytes(const std::string& name, size_t n, uint32_t mode = 0600) {
  CreateOptions o;
  o.name = name;
  o.shape = {static_cast<int64_t>(n)};
  o.mode = mode;
  return o;
}

std::vector<uint8_t> Contents(const View& v) {
  auto* p = static_cast<const uint8_t*>(v.data());
  return std::vector<uint8_t>(p, p + v.nbytes());
}

class BrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = BrokerProcess::Start();
    ASSERT_NE(broker_, nullptr);
  }
  void TearDown() override {
    if (broker_ && broker_->pid() > 0) {
      EXPECT_EQ(broker_->Stop(SIGTERM), 0) << "the broker's exit code";
    }
  }
  Client Connect(const std::string& name = "test") {
    auto c = broker_->Connect(name);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(c).value();
  }
  uint32_t LeasesOf(Client& c, const std::string& slot) {
    auto s = c.Stat(slot);
    return s.ok() ? s->lease_count : 9999;
  }
  std::unique_ptr<BrokerProcess> broker_;
};

TEST_F(BrokerTest, ConsumerInAnotherProcessReadsAndWritesTheSameBytes) {
  const size_t n = (1 << 20) + 13;
  Client producer = Connect("producer");
  auto view = producer.CreateAndAttach(Bytes("data", n));
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  auto sent = RandomBytes(n);
  std::memcpy(view->data(), sent.data(), n);

  auto reply = RandomBytes(n);
  ChildProcess consumer([&](Channel& ch) {
    auto c = Client::Connect(broker_->Options("consumer"));
    if (!c.ok()) return 10;
    auto v = c->Attach("data");
    if (!v.ok() || v->nbytes() != n || !v->writable()) return 11;
    ch.Send(v->data(), n);
    auto incoming = ch.Receive(n);
    if (incoming.size() != n) return 12;
    std::memcpy(v->data(), incoming.data(), n);
    ch.SendLine("written");
    return 0;
  });
  auto seen = consumer.channel().Receive(n);
  ASSERT_EQ(seen.size(), n);
  EXPECT_TRUE(seen == sent) << "the consumer read bytes the producer did not write";
  consumer.channel().Send(reply);
  ASSERT_EQ(consumer.channel().ReceiveLine(), "written");
  EXPECT_TRUE(Contents(*view) == reply) << "the producer does not see the consumer's writes";
  EXPECT_EQ(consumer.Wait(), 0);
}

TEST_F(BrokerTest, ArenaViewAtAnOffsetCostsOneLeasePerProcess) {
  Client producer = Connect("producer");
  auto arena = producer.CreateAndAttach(Bytes("arena", 64 * 1024, 0644));
  ASSERT_TRUE(arena.ok());
  CreateOptions t;
  t.name = "arena/t";
  t.base = "arena";
  t.byte_offset = 8192;
  t.dtype = *ParseDType("float32");
  t.shape = {16, 32};
  t.mode = 0644;
  auto info = producer.Create(t);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->allocation_id, arena->slot().allocation_id);
  auto data = RandomBytes(16 * 32 * 4);
  std::memcpy(static_cast<uint8_t*>(arena->data()) + 8192, data.data(), data.size());

  ChildProcess consumer([&](Channel& ch) {
    auto c = Client::Connect(broker_->Options("consumer"));
    if (!c.ok()) return 10;
    auto v = c->Attach("arena/t");
    if (!v.ok() || v->shape() != std::vector<int64_t>{16, 32} || v->strides() != std::vector<int64_t>{32, 1})
      return 11;
    auto whole = c->Attach("arena");  // same allocation: served from this process's mapping
    if (!whole.ok()) return 12;
    if (static_cast<uint8_t*>(whole->data()) + 8192 != v->data()) return 13;
    ch.Send(v->data(), v->nbytes());
    ch.ReceiveLine();  // hold until the parent has looked at the leases
    return 0;
  });
  auto seen = consumer.channel().Receive(data.size());
  EXPECT_TRUE(seen == data);
  auto leases = producer.Leases();
  ASSERT_TRUE(leases.ok());
  int consumer_leases = 0;
  for (const auto& l : *leases) {
    if (l.client_id != producer.client_id()) consumer_leases += static_cast<int>(l.count);
  }
  EXPECT_EQ(consumer_leases, 1) << "the second attach of a mapped allocation went to the broker";
  consumer.channel().SendLine("go");
  EXPECT_EQ(consumer.Wait(), 0);
}

TEST_F(BrokerTest, DestroyWhileAttachedKeepsTheMemoryUntilTheLastDetach) {
  const size_t n = 300000;
  auto data = RandomBytes(n);
  {
    Client producer = Connect("producer");
    auto v = producer.CreateAndAttach(Bytes("doomed", n));
    ASSERT_TRUE(v.ok());
    std::memcpy(v->data(), data.data(), n);
  }  // the producer's lease goes with its view
  ChildProcess consumer([&](Channel& ch) {
    auto c = Client::Connect(broker_->Options("consumer"));
    if (!c.ok()) return 10;
    auto v = c->Attach("doomed");
    if (!v.ok()) return 11;
    ch.SendLine("attached");
    ch.ReceiveLine();  // destroyed now
    ch.Send(v->data(), n);
    v->reset();
    ch.SendLine("detached");
    ch.ReceiveLine();
    return 0;
  });
  ASSERT_EQ(consumer.channel().ReceiveLine(), "attached");
  Client admin = Connect("admin");
  ASSERT_TRUE(admin.Destroy("doomed").ok());
  EXPECT_EQ(admin.Stat("doomed").status().code(), Code::kNotFound);
  EXPECT_EQ(CountMemfds(broker_->pid(), "doomed"), 1);
  consumer.channel().SendLine("read");
  EXPECT_TRUE(consumer.channel().Receive(n) == data);
  ASSERT_EQ(consumer.channel().ReceiveLine(), "detached");
  EXPECT_EQ(CountMemfds(broker_->pid(), "doomed"), 0) << "memory outlived the last lease";
  consumer.channel().SendLine("bye");
  EXPECT_EQ(consumer.Wait(), 0);
}

TEST_F(BrokerTest, KilledClientGivesItsLeasesBack) {
  Client owner = Connect("owner");
  ASSERT_TRUE(owner.Create(Bytes("k/a", 4096)).ok());
  ASSERT_TRUE(owner.Create(Bytes("k/b", 4096)).ok());
  ChildProcess victim([&](Channel& ch) {
    auto c = Client::Connect(broker_->Options("victim"));
    if (!c.ok()) return 10;
    auto a = c->Attach("k/a");
    auto b = c->Attach("k/b");
    if (!a.ok() || !b.ok()) return 11;
    ch.SendLine("holding");
    ch.ReceiveLine();  // blocks until killed
    return 0;
  });
  ASSERT_EQ(victim.channel().ReceiveLine(), "holding");
  EXPECT_EQ(LeasesOf(owner, "k/a"), 1u);
  EXPECT_EQ(LeasesOf(owner, "k/b"), 1u);
  victim.Kill(SIGKILL);
  EXPECT_EQ(victim.Wait(), 128 + SIGKILL);
  EXPECT_TRUE(WaitFor([&] { return LeasesOf(owner, "k/a") == 0 && LeasesOf(owner, "k/b") == 0; }));
  auto info = owner.Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->leases, 0u);
  ASSERT_TRUE(owner.Destroy("k/a").ok());
  ASSERT_TRUE(owner.Destroy("k/b").ok());
  EXPECT_EQ(CountMemfds(broker_->pid(), "k/"), 0);
}

TEST_F(BrokerTest, AnotherUidIsRefusedAPrivateSlotAndGetsNoFd) {
  GPUBROKER_NEEDS_ROOT("to run a client as nobody");
  Client owner = Connect("owner");
  ASSERT_TRUE(owner.Create(Bytes("secret", 4096, 0600)).ok());
  auto shared = owner.CreateAndAttach(Bytes("public", 4096, 0644));
  ASSERT_TRUE(shared.ok());
  auto data = RandomBytes(4096);
  std::memcpy(shared->data(), data.data(), data.size());

  ChildProcess intruder([&](Channel& ch) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNogroup) != 0 || ::setuid(kNobody) != 0) return 20;
    auto c = Client::Connect(broker_->Options("nobody"));
    if (!c.ok()) return 21;
    int fds_before = static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                                    std::filesystem::directory_iterator()));
    auto secret = c->Attach("secret");
    int fds_after = static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                                   std::filesystem::directory_iterator()));
    if (secret.ok()) return 22;
    if (secret.status().code() != Code::kPermissionDenied) return 23;
    if (fds_after != fds_before) return 24;  // no fd slipped through
    if (c->Destroy("public").code() != Code::kPermissionDenied) return 25;
    // Mode 0644: read-only for others. Asked to write, refused; as allowed, read-only.
    if (c->Attach("public").status().code() != Code::kPermissionDenied) return 27;
    auto pub = c->Attach("public", AttachMode::kAsAllowed);
    if (!pub.ok() || pub->writable()) return 26;
    ch.Send(pub->data(), 4096);
    return 0;
  });
  EXPECT_TRUE(intruder.channel().Receive(4096) == data);
  EXPECT_EQ(intruder.Wait(), 0);
  EXPECT_TRUE(owner.Stat("public").ok());
}

TEST_F(BrokerTest, GarbageOnTheSocketDoesNotStopService) {
  auto expect_error = [](int fd) {
    std::vector<std::byte> buf(wire::kMaxMessageBytes);
    auto r = ReceiveRecord(fd, buf, false);
    ASSERT_TRUE(r.ok());
    ASSERT_FALSE(r->closed);
    auto frame = wire::ParseFrame(std::span(buf).first(r->size));
    ASSERT_TRUE(frame.ok()) << frame.status().ToString();
    EXPECT_EQ(frame->type, wire::MsgType::kError);
  };
  auto raw = ConnectSeqpacket(broker_->socket());
  ASSERT_TRUE(raw.ok());
  int fd = raw->get();
  auto junk = RandomBytes(300);
  ASSERT_TRUE(*SendRecord(fd, std::as_bytes(std::span(junk)), -1, false));
  expect_error(fd);
  std::vector<std::byte> huge(wire::kMaxMessageBytes + 4096, std::byte{1});
  ASSERT_TRUE(*SendRecord(fd, huge, -1, false));
  expect_error(fd);
  std::vector<std::byte> tiny(5, std::byte{2});
  ASSERT_TRUE(*SendRecord(fd, tiny, -1, false));
  expect_error(fd);
  wire::AttachRequest early{};
  early.name.set("x");
  ASSERT_TRUE(*SendRecord(fd, wire::EncodeRequest(1, early), -1, false));  // before hello
  expect_error(fd);
  int devnull = ::open("/dev/null", O_RDONLY);
  auto with_fd = SendRecord(fd, wire::EncodeRequest(2, wire::StatusRequest{}), devnull, false);
  if (with_fd.ok()) {
    expect_error(fd);  // the broker refuses it
  } else {
    EXPECT_EQ(with_fd.status().code(), Code::kPermissionDenied) << with_fd.status().ToString();  // the kernel does
  }
  ::close(devnull);
  auto idle = ConnectSeqpacket(broker_->socket());  // connected, silent
  ASSERT_TRUE(idle.ok());

  Client c = Connect("well-behaved");
  auto v = c.CreateAndAttach(Bytes("after-garbage", 64));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(::kill(broker_->pid(), 0), 0);
}

TEST_F(BrokerTest, LookupAndCachedAttachNeedNoRoundTrip) {
  Client c = Connect();
  auto v = c.CreateAndAttach(Bytes("cached", 4096, 0644));
  ASSERT_TRUE(v.ok());
  ASSERT_EQ(::kill(broker_->pid(), SIGSTOP), 0);  // a broker that answers nothing
  auto looked = c.Lookup("cached");
  auto again = c.Attach("cached");
  ::kill(broker_->pid(), SIGCONT);
  ASSERT_TRUE(looked.ok()) << looked.status().ToString();
  EXPECT_EQ(looked->allocation_id, v->slot().allocation_id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->data(), v->data());
  EXPECT_EQ(c.Lookup("missing").status().code(), Code::kNotFound);
}

TEST_F(BrokerTest, GracefulStopRemovesSocketAndRegistryAndViewsStayValid) {
  Client c = Connect();
  auto v = c.CreateAndAttach(Bytes("survivor", 8192));
  ASSERT_TRUE(v.ok());
  auto data = RandomBytes(8192);
  std::memcpy(v->data(), data.data(), data.size());
  EXPECT_EQ(broker_->Stop(SIGTERM), 0);
  EXPECT_FALSE(std::filesystem::exists(broker_->socket()));
  EXPECT_FALSE(std::filesystem::exists("/dev/shm/" + broker_->registry()));
  EXPECT_TRUE(Contents(*v) == data);
  Status s = c.Stat("survivor").status();
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("broker"), std::string::npos);
  // Lookup reads the registry, which this process still maps: it must not
  // answer from a stopped broker's registry as if nothing had happened.
  EXPECT_EQ(c.Lookup("survivor").status().code(), Code::kUnavailable);
  EXPECT_EQ(c.ListRegistry().status().code(), Code::kUnavailable);
}

// A killed broker cannot mark its registry stopped: the hung-up connection
// tells. A call that waits for a restart says so on stderr, once.
TEST_F(BrokerTest, AfterTheBrokerIsKilledLookupAsksAndAWaitingCallSaysWhy) {
  ConnectOptions o = broker_->Options("lookup after kill");
  o.reconnect_timeout_ms = 1000;
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->CreateAndAttach(Bytes("gone", 64)).ok());
  ASSERT_TRUE(c->Lookup("gone").ok());
  broker_->Stop(SIGKILL);
  std::fflush(stderr);
  const std::string said_path = broker_->dir() + "/stderr.txt";
  UniqueFd said(::open(said_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(said.valid());
  UniqueFd saved(::dup(STDERR_FILENO));
  ::dup2(said.get(), STDERR_FILENO);
  auto looked = c->Lookup("gone");
  auto listed = c->ListRegistry();
  std::fflush(stderr);
  ::dup2(saved.get(), STDERR_FILENO);
  EXPECT_EQ(looked.status().code(), Code::kUnavailable) << "answered from a dead broker's registry";
  EXPECT_NE(looked.status().message().find("within 1000 ms"), std::string::npos) << looked.status().ToString();
  EXPECT_EQ(listed.status().code(), Code::kUnavailable);
  std::ifstream in(said_path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("gpubroker: the broker at " + broker_->socket() + " is gone"), std::string::npos) << text;
  EXPECT_NE(text.find("reconnecting for up to 1 s"), std::string::npos) << text;
  EXPECT_EQ(text.find("gpubroker:", 1), text.rfind("gpubroker:")) << "one line per outage: " << text;
}

// CreateOptions::exist_ok: a program run twice gets its first run's slot,
// and nothing else.
TEST_F(BrokerTest, ExistOkReturnsOnlyTheSlotThisCreateWouldHaveMade) {
  Client c = Connect();
  CreateOptions o;
  o.name = "again";
  o.dtype = *ParseDType("float32");
  o.shape = {4, 8};
  o.exist_ok = true;
  auto first = c.CreateAndAttach(o);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto data = RandomBytes(first->nbytes());
  std::memcpy(first->data(), data.data(), data.size());
  auto second = c.CreateAndAttach(o);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->slot().allocation_id, first->slot().allocation_id);
  EXPECT_TRUE(Contents(*second) == data);
  auto info = c.Create(o);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->allocation_id, first->slot().allocation_id);
  o.shape = {8, 4};
  Status other = c.Create(o).status();
  EXPECT_EQ(other.code(), Code::kAlreadyExists);
  EXPECT_NE(other.message().find("shape (4, 8), not (8, 4)"), std::string::npos) << other.ToString();
  o.shape = {4, 8};
  o.buffers = 2;
  EXPECT_NE(c.Create(o).status().message().find("1 buffers, not 2"), std::string::npos);
  o.buffers = 0;
  o.exist_ok = false;
  EXPECT_EQ(c.Create(o).status().code(), Code::kAlreadyExists);
}

TEST_F(BrokerTest, KilledBrokerLeavesViewsReadableAndANewBrokerTakesOver) {
  Client c = Connect();
  auto v = c.CreateAndAttach(Bytes("orphan", 8192));
  ASSERT_TRUE(v.ok());
  auto data = RandomBytes(8192);
  std::memcpy(v->data(), data.data(), data.size());
  broker_->Stop(SIGKILL);
  EXPECT_TRUE(Contents(*v) == data);
  EXPECT_EQ(c.Stat("orphan").status().code(), Code::kUnavailable);
  auto next = BrokerProcess::Restart(*broker_);
  ASSERT_NE(next, nullptr) << "a new broker did not replace the stale socket and registry";
  auto c2 = next->Connect();
  ASSERT_TRUE(c2.ok());
  EXPECT_TRUE(c2->CreateAndAttach(Bytes("fresh", 64)).ok());
  EXPECT_EQ(c2->Stat("orphan").status().code(), Code::kNotFound);
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

// Allocation ids are how a client knows what it has mapped, across a
// reconnect too: a broker started afresh must not give a new slot the id of
// memory an old client still maps, or that client, once it has reconnected,
// is handed its old mapping for the new slot.
TEST_F(BrokerTest, AClientOfAStoppedBrokerIsNeverHandedItsOldMemoryForANewSlot) {
  ConnectOptions o = broker_->Options("from before");
  o.reconnect_timeout_ms = 10000;
  auto old_client = Client::Connect(o);
  ASSERT_TRUE(old_client.ok());
  auto held = old_client->CreateAndAttach(Bytes("x", 8192, 0666));
  ASSERT_TRUE(held.ok());
  auto before = RandomBytes(8192);
  std::memcpy(held->data(), before.data(), before.size());
  broker_->Stop(SIGKILL);
  auto next = BrokerProcess::Restart(*broker_);
  ASSERT_NE(next, nullptr);
  auto c2 = next->Connect();
  ASSERT_TRUE(c2.ok());
  auto fresh = c2->CreateAndAttach(Bytes("x", 8192, 0666));  // same name, same size, same order
  ASSERT_TRUE(fresh.ok());
  auto after = RandomBytes(8192);
  std::memcpy(fresh->data(), after.data(), after.size());
  EXPECT_NE(fresh->slot().allocation_id, held->slot().allocation_id);
  // The old client's next request reconnects and takes its leases again by name.
  auto stat = old_client->Stat("x");
  ASSERT_TRUE(stat.ok()) << stat.status().ToString();
  auto again = old_client->Attach("x");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->slot().allocation_id, fresh->slot().allocation_id);
  EXPECT_TRUE(Contents(*again) == after) << "the old client read its old memory under the new slot";
  EXPECT_TRUE(Contents(*held) == before);  // what it held stays readable
  EXPECT_EQ(next->Stop(SIGTERM), 0);
}

TEST(BrokerLimits, EachLimitHasItsOwnErrorAndServiceGoesOn) {
  auto broker = BrokerProcess::Start(
      {"--max-slots", "2", "--max-host-bytes", "8192", "--max-connections", "3", "--reserved-admin-connections", "0"});
  ASSERT_NE(broker, nullptr);
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());
  Status bytes = c->Create(Bytes("big", 16384)).status();
  EXPECT_EQ(bytes.code(), Code::kResourceExhausted);
  EXPECT_NE(bytes.message().find("limits.max_host_bytes"), std::string::npos) << bytes.message();
  ASSERT_TRUE(c->Create(Bytes("a", 64)).ok());
  ASSERT_TRUE(c->Create(Bytes("b", 64)).ok());
  Status slots = c->Create(Bytes("c", 64)).status();
  EXPECT_EQ(slots.code(), Code::kResourceExhausted);
  EXPECT_NE(slots.message().find("slot limit"), std::string::npos) << slots.message();
  Status name = c->Create(Bytes(std::string(128, 'n'), 64)).status();
  EXPECT_EQ(name.code(), Code::kInvalidArgument);
  EXPECT_NE(name.message().find("127"), std::string::npos) << name.message();
  auto second = broker->Connect();
  auto third = broker->Connect();
  ASSERT_TRUE(second.ok() && third.ok());
  auto fourth = broker->Connect();
  ASSERT_FALSE(fourth.ok());
  EXPECT_EQ(fourth.status().code(), Code::kResourceExhausted);
  EXPECT_NE(fourth.status().message().find("too many connections"), std::string::npos)
      << fourth.status().ToString();
  auto v = c->Attach("a");  // everyone else is still served
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// The broker's descriptors cut down to a few more than it holds: creates and
// new connections are refused with the reason, and service goes on. Not built
// under the sanitizers: their runtimes open descriptors of their own (UBSan
// probes memory through a pipe) and report false errors when there are none.
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
TEST(BrokerLimits, OutOfFileDescriptorsIsAClearErrorAndServiceGoesOn) {
  auto broker = BrokerProcess::Start({"--default-backend", "host"});
  ASSERT_NE(broker, nullptr);
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());
  size_t open = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(broker->pid()) + "/fd")) {
    ++open;
  }
  const rlimit tight{open + 3, open + 3};
  ASSERT_EQ(::prlimit(broker->pid(), RLIMIT_NOFILE, &tight, nullptr), 0) << std::strerror(errno);

  Status full;
  int made = 0;
  for (; made < 16; ++made) {
    full = c->Create(Bytes("fd/" + std::to_string(made), 64)).status();
    if (!full.ok()) break;
  }
  ASSERT_FALSE(full.ok()) << "no create failed under an open-file limit of " << tight.rlim_cur;
  EXPECT_EQ(full.code(), Code::kResourceExhausted) << full.ToString();
  EXPECT_NE(full.message().find("open-file limit"), std::string::npos) << full.message();

  auto refused = broker->Connect("late");  // must fail at once, not hang in the backlog
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kUnavailable) << refused.status().ToString();

  auto info = c->Info();  // the connected client is still served
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->slots, static_cast<uint32_t>(made));
  ASSERT_TRUE(c->Destroy("fd/0").ok());
  ASSERT_TRUE(c->Destroy("fd/1").ok());
  auto again = broker->Connect("after");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->Create(Bytes("fd/again", 64)).ok());
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}
#endif

TEST_F(BrokerTest, PoolsFromTheConfigExistAtStart) {
  std::string path = broker_->dir() + "/pools.yaml";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fputs("pools:\n  - name: pool/a\n    dtype: float16\n    shape: [8, 8]\n    mode: \"0644\"\n", f);
  std::fclose(f);
  broker_->Stop(SIGTERM);
  auto b = BrokerProcess::Start({"--config", path});
  ASSERT_NE(b, nullptr);
  auto c = b->Connect();
  ASSERT_TRUE(c.ok());
  auto v = c->Attach("pool/a");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(DTypeName(v->dtype()), "float16");
  EXPECT_EQ(v->nbytes(), 128u);
  EXPECT_EQ(b->Stop(SIGTERM), 0);
}

TEST_F(BrokerTest, BadConfigStopsTheBrokerWithTheReason) {
  std::string path = broker_->dir() + "/bad.yaml";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fputs("registry:\n  capacity: -3\n", f);
  std::fclose(f);
  std::string cmd = std::string(GPUBROKERD_PATH) + " --config " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[512] = {};
  size_t got = std::fread(buf, 1, sizeof buf - 1, p);
  int status = ::pclose(p);
  std::string out(buf, got);
  EXPECT_EQ(ExitCode(status), 2);
  EXPECT_NE(out.find("bad.yaml:2:13"), std::string::npos) << out;
}

}  // namespace
}  // namespace gpubroker::testing

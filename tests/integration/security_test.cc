// The trust boundary, tried as a hostile local user would: a real broker,
// clients running as distinct unprivileged uids (the test runs as root, as CI
// does, and drops privileges in forked children). docs/SECURITY.md is the
// threat model these tests hold the broker to; docs/RELIABILITY.md lists each
// attack with its outcome.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/integration/harness.h"
#include "common/seqpacket.h"
#include "common/wire.h"
#include "broker/log_budget.h"
#include "tests/support/lingering_socket.h"
#include "tests/support/require.h"

namespace gpubroker::testing {
namespace {

constexpr uid_t kOwner = 1000, kGroupMate = 1001, kOther = 1002, kThird = 1003;
constexpr gid_t kOwnerGroup = 1000;

bool Become(uid_t uid) {
  gid_t gid = uid == kGroupMate ? kOwnerGroup : uid;
  return BecomeUser(uid, gid);
}

CreateOptions Slot(const std::string& name, int64_t bytes, uint32_t mode,
                   BackendKind backend = BackendKind::kHost) {
  CreateOptions o;
  o.name = name;
  o.dtype = *ParseDType("uint8");
  o.shape = {bytes};
  o.mode = mode;
  o.backend = backend;
  return o;
}

CreateOptions SecuritySlot(const std::string& name, int64_t bytes, uint32_t mode, BackendKind backend) {
  return Slot(name, bytes, mode, backend);
}

std::string Code(const Status& s) { return s.ok() ? "ok" : std::string(CodeName(s.code())); }

// Runs `body` as `uid` in a child; the child's lines come back in order.
std::vector<std::string> RunAs(uid_t uid, const std::function<void(Channel&)>& body) {
  ChildProcess child([&](Channel& ch) {
    if (!Become(uid)) return 90;
    body(ch);
    ch.SendLine("end");
    return 0;
  });
  std::vector<std::string> lines;
  for (std::string l = child.channel().ReceiveLine(); !l.empty() && l != "end";
       l = child.channel().ReceiveLine()) {
    lines.push_back(l);
  }
  EXPECT_EQ(child.Wait(), 0);
  return lines;
}

// A directory of the test's own, removed with everything in it when it goes.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag)
      : path(std::filesystem::temp_directory_path() / ("gpbtest-" + tag + "-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

// A broker that logs at info level into `log`.
std::unique_ptr<BrokerProcess> BrokerLoggingTo(const std::filesystem::path& log, std::vector<std::string> args = {}) {
  LaunchOptions launch;
  launch.args = std::move(args);
  launch.args.insert(launch.args.end(), {"--log-level", "info"});
  launch.log_file = log.string();
  return BrokerProcess::Start(launch);
}

// A raw connection that speaks the protocol by hand.
struct Raw {
  UniqueFd fd;
  uint32_t next_id = 0;

  static Raw Dial(const std::string& socket) {
    auto fd = ConnectSeqpacket(socket);
    EXPECT_TRUE(fd.ok()) << fd.status().ToString();
    timeval tv{10, 0};
    ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return Raw{std::move(fd).value()};
  }
  template <typename Q>
  bool Send(const Q& request, bool nonblocking = false) {
    auto r = SendRecord(fd.get(), wire::EncodeRequest(++next_id, request), -1, nonblocking);
    return r.ok() && *r;
  }
  Result<Received> Receive(std::vector<std::byte>& buffer, bool nonblocking = false) {
    return ReceiveRecord(fd.get(), buffer, nonblocking);
  }
  bool Hello() {
    wire::HelloRequest hello{};
    hello.protocol_version = wire::kProtocolVersion;
    hello.client_name.set("raw");
    std::vector<std::byte> buffer(wire::kMaxMessageBytes);
    return Send(hello) && Receive(buffer).ok();
  }
};

// The error a received record carries, or "" if it is not one.
std::string ErrorText(std::span<const std::byte> record) {
  auto frame = wire::ParseFrame(record);
  if (!frame.ok() || frame->type != wire::MsgType::kError) return "";
  auto e = wire::Decode<wire::ErrorReply>(frame->payload);
  return e.ok() ? std::string(e->message.view()) : "";
}

// A memory cgroup of its own for the broker (v2 where the memory controller is
// delegated, else v1), removed when the test ends.
class MemoryCgroup {
 public:
  static std::unique_ptr<MemoryCgroup> Make(uint64_t limit) {
    std::string name = "gpbtest-" + std::to_string(::getpid());
    std::ifstream self("/proc/self/cgroup");
    std::string line, v1_path, v2_path;
    while (std::getline(self, line)) {
      if (line.rfind("0::", 0) == 0) v2_path = line.substr(3);
      size_t a = line.find(":memory:");
      if (a != std::string::npos) v1_path = line.substr(a + 8);
    }
    auto try_make = [&](const std::string& dir, const char* file) -> std::unique_ptr<MemoryCgroup> {
      std::error_code ec;
      if (!std::filesystem::create_directory(dir, ec)) return nullptr;
      std::ofstream(dir + "/" + file) << limit;
      std::ifstream back(dir + "/" + file);
      uint64_t v = 0;
      if (!(back >> v) || v > limit) {
        std::filesystem::remove(dir, ec);
        return nullptr;
      }
      return std::unique_ptr<MemoryCgroup>(new MemoryCgroup(dir));
    };
    std::ifstream controllers("/sys/fs/cgroup/cgroup.subtree_control");
    std::string c((std::istreambuf_iterator<char>(controllers)), {});
    if (c.find("memory") != std::string::npos && !v2_path.empty()) {
      if (auto g = try_make("/sys/fs/cgroup" + v2_path + "/" + name, "memory.max")) return g;
    }
    if (!v1_path.empty() && std::filesystem::exists("/sys/fs/cgroup/memory")) {
      std::string base = "/sys/fs/cgroup/memory" + (v1_path == "/" ? std::string() : v1_path);
      if (auto g = try_make(base + "/" + name, "memory.limit_in_bytes")) return g;
    }
    return nullptr;
  }
  ~MemoryCgroup() {
    std::error_code ec;
    std::filesystem::remove(dir_, ec);
  }
  const std::string& dir() const { return dir_; }

 private:
  explicit MemoryCgroup(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

// 1. Memory: with the broker in a 256 MiB cgroup, clients' creates run into
// its own cap (half the cgroup) long before the kernel's OOM killer would
// pick the broker; the broker serves on and nothing already held is lost.
TEST(Security, MemoryCapsHoldInsideACgroup) {
  GPUBROKER_NEEDS_ROOT("for a cgroup and other uids");
  auto cgroup = MemoryCgroup::Make(256u << 20);
  // Not a requirement of any run: a container may have no cgroup to give.
  GPUBROKER_NEEDS(cgroup != nullptr, false, "a writable memory cgroup");
  LaunchOptions launch;
  launch.cgroup = cgroup->dir();
  launch.args = {"--max-bytes-per-uid", "0"};  // no per-uid share: the broker's own cap is what is tested
  auto broker = BrokerProcess::Start(launch);
  ASSERT_NE(broker, nullptr);
  auto lines = RunAs(kOther, [&](Channel& ch) {
    auto c = broker->Connect("hog");
    if (!c.ok()) return ch.SendLine("connect " + c.status().ToString());
    ch.SendLine("huge " + c->Create(Slot("hog/huge", int64_t{1} << 40, 0600)).status().ToString());
    int made = 0;
    Status last;
    for (; made < 64; ++made) {  // 64 x 8 MiB would be twice the cgroup
      last = c->Create(Slot("hog/" + std::to_string(made), 8 << 20, 0600)).status();
      if (!last.ok()) break;
    }
    ch.SendLine("made " + std::to_string(made));
    ch.SendLine("last " + last.ToString());
    auto v = c->Attach("hog/0");
    ch.SendLine(std::string("held ") + (v.ok() ? "ok" : v.status().ToString()));
  });
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[0].find("resource_exhausted"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("limits.max_host_bytes"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1], "made 16") << "128 MiB, half the cgroup, is 16 slots of 8 MiB";
  EXPECT_NE(lines[2].find("resource_exhausted"), std::string::npos) << lines[2];
  EXPECT_NE(lines[2].find("limits.max_host_bytes"), std::string::npos) << lines[2];
  EXPECT_EQ(lines[3], "held ok");
  EXPECT_EQ(::kill(broker->pid(), 0), 0) << "the broker died";
  auto root = broker->Connect("root");
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  EXPECT_EQ(root->Info()->slots, 16u);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// Quotas belong to the uid that owns the slots, not to a connection: a new
// connection starts nowhere fresh, and one uid's use leaves others theirs.
TEST(Security, QuotasFollowTheUidAcrossConnections) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  auto broker = BrokerProcess::Start({"--max-bytes-per-uid", "1MiB", "--max-slots-per-uid", "3"});
  ASSERT_NE(broker, nullptr);
  auto lines = RunAs(kOther, [&](Channel& ch) {
    {
      auto a = broker->Connect("first");
      for (int i = 0; i < 3; ++i) (void)a->Create(Slot("q/" + std::to_string(i), 256 << 10, 0600));
      ch.SendLine(Code(a->Create(Slot("q/3", 1024, 0600)).status()));
    }
    auto b = broker->Connect("second");
    Status slots = b->Create(Slot("q/3", 1024, 0600)).status();
    ch.SendLine(slots.ToString());
    (void)b->Destroy("q/2");
    Status bytes = b->Create(Slot("q/big", 600 << 10, 0600)).status();
    ch.SendLine(bytes.ToString());
    ch.SendLine(Code(b->Create(Slot("q/small", 256 << 10, 0600)).status()));
  });
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "resource_exhausted");
  EXPECT_NE(lines[1].find("limits.max_slots_per_uid"), std::string::npos) << lines[1];
  EXPECT_NE(lines[2].find("limits.max_bytes_per_uid"), std::string::npos) << lines[2];
  EXPECT_EQ(lines[3], "ok");
  auto other = RunAs(kThird, [&](Channel& ch) {
    auto c = broker->Connect("third");
    ch.SendLine(Code(c->Create(Slot("q3/a", 1 << 20, 0600)).status()));
  });
  EXPECT_EQ(other, std::vector<std::string>{"ok"});
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// Destroy is like unlink: a view keeps its memory after the name goes. Each
// allocation also takes a record of the registry's live table while it
// lives, so a user that kept destroyed allocations alive without limit (its
// own, or others' it may read) filled the table and every create failed,
// root's too. They count with the uid's slots now.
TEST(Security, DestroyedMemoryKeptByViewsCannotFillTheBroker) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  auto broker = BrokerProcess::Start({"--max-slots-per-uid", "4", "--capacity", "32"});
  ASSERT_NE(broker, nullptr);
  auto root = broker->Connect("root");
  ASSERT_TRUE(root.ok());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(root->Create(Slot("pub/" + std::to_string(i), 64, 0644)).ok());
  ChildProcess hoarder([&](Channel& ch) {
    if (!Become(kOther)) return 90;
    auto c = broker->Connect("hoarder");
    if (!c.ok()) return 91;
    std::vector<View> held;
    Status refused;
    for (int i = 0; i < 32 && refused.ok(); ++i) {  // its own slots, destroyed, their views kept
      auto v = c->CreateAndAttach(Slot("mine/" + std::to_string(i), 64, 0600));
      if (!v.ok()) {
        refused = v.status();
        break;
      }
      held.push_back(std::move(v).value());
      (void)c->Destroy("mine/" + std::to_string(i));
    }
    ch.SendLine(std::to_string(held.size()) + " " + refused.ToString());
    // A lease on a slot of someone else's.
    ch.SendLine(c->Attach("pub/0", AttachMode::kReadOnly).status().ToString());
    (void)ch.ReceiveLine();  // until root has created more
    held.clear();
    ch.SendLine(Code(c->Attach("pub/0", AttachMode::kReadOnly).status()));
    return 0;
  });
  std::string own = hoarder.channel().ReceiveLine();
  EXPECT_EQ(own.rfind("4 resource_exhausted", 0), 0u) << own;
  EXPECT_NE(own.find("destroyed allocations"), std::string::npos) << own;
  EXPECT_NE(own.find("limits.max_slots_per_uid"), std::string::npos) << own;
  std::string theirs = hoarder.channel().ReceiveLine();
  EXPECT_NE(theirs.find("let go of those views first"), std::string::npos) << theirs;
  // Meanwhile everyone else creates as before.
  for (int i = 8; i < 24; ++i) {
    auto made = root->Create(Slot("pub/" + std::to_string(i), 64, 0644));
    ASSERT_TRUE(made.ok()) << made.status().ToString();
  }
  hoarder.channel().SendLine("go");
  EXPECT_EQ(hoarder.channel().ReceiveLine(), "ok");  // views let go: leases again
  EXPECT_EQ(hoarder.Wait(), 0);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// The fd a reader receives: every way to write through it fails, and the
// owner's bytes are unchanged afterwards, every one of them.
TEST(Security, AReadLeaseCannotBeTurnedIntoAWrite) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  const size_t n = 1 << 20;
  auto data = RandomBytes(n);
  ChildProcess owner([&](Channel& ch) {
    if (!Become(kOwner)) return 90;
    auto c = broker->Connect("owner");
    auto v = c->CreateAndAttach(Slot("ro/data", static_cast<int64_t>(n), 0644));
    if (!v.ok()) return 91;
    std::memcpy(v->data(), data.data(), n);
    ch.SendLine("written");
    ch.ReceiveLine();  // the reader is done
    ch.SendLine(std::memcmp(v->data(), data.data(), n) == 0 ? "intact" : "CHANGED");
    return 0;
  });
  ASSERT_EQ(owner.channel().ReceiveLine(), "written");
  auto lines = RunAs(kOther, [&](Channel& ch) {
    auto c = broker->Connect("reader");
    auto v = c->Attach("ro/data", AttachMode::kAsAllowed);
    if (!v.ok()) return ch.SendLine("attach " + v.status().ToString());
    ch.SendLine(std::string("writable=") + (v->writable() ? "yes" : "no"));
    // The library closes the fd once mapped; an attacker keeps it: ask for
    // it by hand, read-write.
    Raw raw = Raw::Dial(broker->socket());
    wire::AttachRequest attach{};
    attach.name.set("ro/data");
    std::vector<std::byte> buffer(wire::kMaxMessageBytes);
    int fd = -1;
    if (raw.Hello() && raw.Send(attach)) {
      auto r = raw.Receive(buffer);
      if (r.ok() && !r->fds.empty()) fd = r->fds.front().release();
    }
    ch.SendLine(std::string("found=") + (fd >= 0 ? "yes" : "no"));
    std::string proc = "/proc/self/fd/" + std::to_string(fd);
    int reopened = ::open(proc.c_str(), O_RDWR);
    ch.SendLine(std::string("reopen-rw=") + (reopened >= 0 ? "OPENED" : std::strerror(errno)));
    void* w = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ch.SendLine(std::string("mmap-rw=") + (w != MAP_FAILED ? "MAPPED" : std::strerror(errno)));
    int prot = ::mprotect(v->data(), 4096, PROT_READ | PROT_WRITE);
    ch.SendLine(std::string("mprotect=") + (prot == 0 ? "GRANTED" : std::strerror(errno)));
    ch.SendLine(std::string("write=") + (::pwrite(fd, "x", 1, 0) == 1 ? "WROTE" : std::strerror(errno)));
    ch.SendLine(std::string("punch=") +
                (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0 ? "PUNCHED"
                                                                                            : "refused"));
    CreateOptions view = Slot("ro/mine", 16, 0600);
    view.base = "ro/data";
    ch.SendLine("view=" + Code(c->Create(view).status()));
    ch.SendLine("attach-rw=" + Code(c->Attach("ro/data", AttachMode::kReadWrite).status()));
  });
  std::vector<std::string> expected = {"writable=no",
                                       "found=yes",
                                       std::string("reopen-rw=") + std::strerror(EACCES),
                                       std::string("mmap-rw=") + std::strerror(EACCES),
                                       std::string("mprotect=") + std::strerror(EACCES),
                                       std::string("write=") + std::strerror(EBADF),
                                       "punch=refused",
                                       "view=permission_denied",
                                       "attach-rw=permission_denied"};
  EXPECT_EQ(lines, expected);
  owner.channel().SendLine("done");
  EXPECT_EQ(owner.channel().ReceiveLine(), "intact");
  EXPECT_EQ(owner.Wait(), 0);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// A view can narrow access to its allocation, never widen it: not by its own
// mode, not by being owned by someone else, not by write-only access.
TEST(Security, ViewsCannotWidenTheirAllocation) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  const BackendKind backend = TestBackend();  // the GPU runner repeats this on CUDA slots
  auto Slot = [backend](const std::string& name, int64_t bytes, uint32_t mode) {
    return SecuritySlot(name, bytes, mode, backend);
  };
  auto owner = RunAs(kOwner, [&](Channel& ch) {
    auto c = broker->Connect("owner");
    ch.SendLine(Code(c->Create(Slot("g/arena", 4096, 0660)).status()));
    ch.SendLine(Code(c->Create(Slot("p/arena", 4096, 0600)).status()));
    CreateOptions peek = Slot("p/peek", 16, 0644);
    peek.base = "p/arena";
    ch.SendLine(c->Create(peek).status().ToString());
    ch.SendLine(Code(c->Create(Slot("o/arena", 4096, 0606)).status()));
    ch.SendLine(Code(c->Create(Slot("w/arena", 4096, 0620)).status()));
  });
  ASSERT_EQ(owner.size(), 5u);
  EXPECT_EQ(owner[0], "ok");
  EXPECT_NE(owner[2].find("cannot grant more"), std::string::npos) << owner[2];
  auto other = RunAs(kOther, [&](Channel& ch) {
    auto c = broker->Connect("other");
    ch.SendLine(Code(c->Attach("g/open").status()));
    ch.SendLine(Code(c->Attach("p/peek").status()));
    CreateOptions v = Slot("o/view", 16, 0606);
    v.base = "o/arena";
    ch.SendLine(Code(c->Create(v).status()));
    ch.SendLine(Code(c->Attach("o/view").status()));
  });
  auto mate = RunAs(kGroupMate, [&](Channel& ch) {
    auto c = broker->Connect("mate");
    CreateOptions wide = Slot("g/open", 16, 0666);
    wide.base = "g/arena";
    ch.SendLine(Code(c->Create(wide).status()));
    CreateOptions wo = Slot("w/mine", 16, 0620);
    wo.base = "w/arena";
    ch.SendLine(Code(c->Create(wo).status()));
    ch.SendLine(Code(c->Attach("w/mine").status()));  // write-only on the allocation
    ch.SendLine(Code(c->Attach("o/view").status()));
  });
  // The group mate may not open the arena to all; its write-only view does
  // not let it read; it may not use another's view into an allocation its
  // group may not touch (o/arena is 0606: nothing for the group).
  EXPECT_EQ(mate, (std::vector<std::string>{"permission_denied", "ok", "permission_denied", "permission_denied"}));
  EXPECT_EQ(other, (std::vector<std::string>{"not_found", "not_found", "ok", "ok"}));
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// One uid opening connections it never uses: capped per uid, silent ones are
// closed, and root and the admin group always find a connection.
TEST(Security, AConnectionFloodLocksNobodyOut) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  auto broker = BrokerProcess::Start({"--max-connections", "40", "--max-connections-per-uid", "8",
                                      "--reserved-admin-connections", "4", "--hello-timeout-ms", "60000"});
  ASSERT_NE(broker, nullptr);
  // Four uids try 9 each and hold 8 (their cap): 32 connections, leaving the 4
  // kept for administrators and 4 more; a fifth uid takes those.
  std::vector<std::unique_ptr<ChildProcess>> floods;
  for (uid_t uid : {2001u, 2002u, 2003u, 2004u, 2005u}) {
    floods.push_back(std::make_unique<ChildProcess>([&, uid](Channel& ch) {
      if (!BecomeUser(uid, uid)) return 90;
      std::vector<UniqueFd> held;
      for (int i = 0; i < (uid == 2005u ? 5 : 9); ++i) {
        auto fd = ConnectSeqpacket(broker->socket());
        if (fd.ok()) held.push_back(std::move(fd).value());
      }
      ch.SendLine("holding");
      ch.ReceiveLine();
      return 0;
    }));
    ASSERT_EQ(floods.back()->channel().ReceiveLine(), "holding");
  }
  auto lines = RunAs(kOther, [&](Channel& ch) {
    auto c = broker->Connect("late");
    ch.SendLine(c.ok() ? "connected" : c.status().ToString());
  });
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("kept for administrators"), std::string::npos) << lines[0];
  auto root = broker->Connect("root");
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  auto info = root->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->clients, 37u) << "8 x 4 uids, 4 for the fifth, and root";
  for (auto& f : floods) f->channel().SendLine("go");
  for (auto& f : floods) EXPECT_EQ(f->Wait(), 0);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

TEST(Security, AConnectionThatNeverSaysHelloIsClosed) {
  auto broker = BrokerProcess::Start({"--hello-timeout-ms", "200"});
  ASSERT_NE(broker, nullptr);
  Raw raw = Raw::Dial(broker->socket());
  std::vector<std::byte> buffer(wire::kMaxMessageBytes);
  auto r = raw.Receive(buffer);  // blocks until the broker gives up on us
  ASSERT_TRUE(r.ok());
  EXPECT_NE(ErrorText(std::span(buffer).first(r->size)).find("no hello within 200 ms"), std::string::npos);
  auto eof = raw.Receive(buffer);
  EXPECT_TRUE(eof.ok() && eof->closed);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// A client that sends attaches and never reads the replies holds at most
// --max-fds-in-flight descriptors in its queue, and everyone else is served.
TEST(Security, AClientThatDoesNotReadCannotHoardDescriptors) {
  auto broker = BrokerProcess::Start({"--max-fds-in-flight", "8"});
  ASSERT_NE(broker, nullptr);
  auto owner = broker->Connect("owner");
  ASSERT_TRUE(owner->Create(Slot("f/x", 4096, 0644)).ok());
  Raw raw = Raw::Dial(broker->socket());
  ASSERT_TRUE(raw.Hello());
  wire::AttachRequest attach{};
  attach.name.set("f/x");
  int sent = 0;
  while (sent < 2000 && raw.Send(attach, true)) ++sent;
  ASSERT_GT(sent, 8);
  // Everyone else is served meanwhile (and this round trip orders the test
  // after the broker has dealt with what the hoarder sent).
  auto other = broker->Connect("other");
  ASSERT_TRUE(other.ok());
  for (int i = 0; i < 50; ++i) {
    auto v = other->Attach("f/x");
    ASSERT_TRUE(v.ok()) << v.status().ToString();
  }
  // What sits in the hoarder's queue: no more than 8 descriptors. The broker
  // is stopped while it is counted, so nothing new arrives meanwhile.
  ASSERT_EQ(::kill(broker->pid(), SIGSTOP), 0);
  std::vector<std::byte> buffer(wire::kMaxMessageBytes);
  int queued_fds = 0, replies = 0;
  while (true) {
    auto r = raw.Receive(buffer, true);
    ASSERT_TRUE(r.ok());
    if (r->would_block) break;
    ++replies;
    queued_fds += static_cast<int>(r->fds.size());
  }
  ASSERT_EQ(::kill(broker->pid(), SIGCONT), 0);
  EXPECT_GT(queued_fds, 0);
  EXPECT_LE(queued_fds, 8);
  // Once it reads, it gets every reply it asked for.
  while (replies < sent) {
    auto r = raw.Receive(buffer);
    ASSERT_TRUE(r.ok() && !r->closed && !r->would_block) << "reply " << replies << " of " << sent;
    ++replies;
  }
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// Nothing to squat: no name in /dev/shm is used, and the registry a client
// receives is read-only for it by every road.
TEST(Security, TheRegistryCannotBeSquattedOrWritten) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  std::string name = "gpbtest-squat-" + std::to_string(::getpid());
  ChildProcess squatter([&](Channel&) {
    if (!Become(kOther)) return 90;
    int fd = ::shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0666);
    return fd >= 0 ? 0 : 91;
  });
  ASSERT_EQ(squatter.Wait(), 0);
  auto broker = BrokerProcess::Start({"--registry", name});
  ASSERT_NE(broker, nullptr) << "a squatted /dev/shm name stopped the broker";
  auto owner = broker->Connect();
  ASSERT_TRUE(owner->Create(Slot("reg/a", 64, 0644)).ok());
  auto lines = RunAs(kOther, [&](Channel& ch) {
    auto reader = broker->OpenRegistry();
    ch.SendLine(reader.ok() && reader->Lookup("reg/a").ok() ? "reads" : "CANNOT READ");
    // The registry's fd exactly as a client receives it at hello.
    auto received = broker->RegistryFd();
    ch.SendLine(received.ok() && received->valid() ? "received" : "NO FD: " + received.status().ToString());
    if (!received.ok()) return;
    const int fd = received->get();
    std::string proc = "/proc/self/fd/" + std::to_string(fd);
    ch.SendLine(std::string("reopen-rw=") + (::open(proc.c_str(), O_RDWR) >= 0 ? "OPENED" : "refused"));
    void* w = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ch.SendLine(std::string("mmap-rw=") + (w != MAP_FAILED ? "MAPPED" : "refused"));
    ch.SendLine(std::string("write=") + (::pwrite(fd, "x", 1, 0) == 1 ? "WROTE" : "refused"));
  });
  EXPECT_EQ(lines,
            (std::vector<std::string>{"reads", "received", "reopen-rw=refused", "mmap-rw=refused", "write=refused"}));
  ::shm_unlink(("/" + name).c_str());
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// Any client can hand the broker a descriptor whose last close blocks (a
// TCP socket lingering on unsent bytes) with a request, and hang up. The
// broker's loop never waits for that close: on Linux 6.16 and later the
// kernel refuses the descriptor at the client's sendmsg (SO_PASSRIGHTS);
// before that, the broker closes it on a thread of its own. Root's status
// answers while that close is still due.
TEST(Security, ADescriptorWhoseCloseBlocksNeverStallsTheLoop) {
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  // Two roads in: the descriptor read with a request, and one left unread in
  // the queue of a connection that stopped reading its replies (the broker
  // then stops reading it) and hangs up. The attacker keeps its listeners.
  std::vector<LingeringSocket> held;
  std::string path = "refused by the kernel";
  for (bool unread : {false, true}) {
    auto lingering = LingeringSocket::Make(20);
    ASSERT_TRUE(lingering.ok()) << lingering.status().ToString();
    auto raw = ConnectSeqpacket(broker->socket());
    ASSERT_TRUE(raw.ok()) << raw.status().ToString();
    if (unread) {  // requests whose replies it never reads, until the broker stops reading it
      int small = 4096;
      ::setsockopt(raw->get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
      auto request = wire::EncodeRequest(1, wire::StatusRequest{});
      for (int i = 0; i < 256; ++i) (void)SendRecord(raw->get(), request, -1, true);
    }
    auto sent = SendRecord(raw->get(), wire::EncodeRequest(1, wire::StatusRequest{}), lingering->get(), unread);
    if (sent.ok() && *sent) {
      path = "closed by the broker";
      lingering->Take().reset();  // ours goes while the message is in flight: the broker's copy is the last
    } else if (!sent.ok()) {
      EXPECT_EQ(sent.status().code(), Code::kPermissionDenied) << sent.status().ToString();
      linger now{1, 0};  // ours is the only copy: closed at once (abortive)
      ::setsockopt(lingering->get(), SOL_SOCKET, SO_LINGER, &now, sizeof now);
    }
    if (!unread && sent.ok()) {
      std::vector<std::byte> buffer(wire::kMaxMessageBytes);
      auto answer = ReceiveRecord(raw->get(), buffer, false);  // read by the broker: the refusal
      ASSERT_TRUE(answer.ok()) << answer.status().ToString();
    }
    raw->reset();  // hang up
    held.push_back(std::move(lingering).value());
  }
  RecordProperty("descriptors", path);
  std::printf("  the descriptors were %s\n", path.c_str());
  const auto start = std::chrono::steady_clock::now();
  auto root = broker->Connect("root-status");
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  auto info = root->Info();
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_LT(took, std::chrono::seconds(5)) << "status waited for a client's descriptor to close";
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// A user who first makes a gpubroker/ directory under a directory anyone
// may write (as /tmp) and answers there is not trusted by another user's
// client: the directory is the squatter's, but its parent could be written
// by anyone. And what a broker says is escaped before anyone prints it.
TEST(Security, ClientsTrustNoSquattersBrokerAndPrintNothingRaw) {
  GPUBROKER_NEEDS_ROOT("to run a squatter and a client as other users");
  auto base = std::filesystem::temp_directory_path() / ("gpbtest-squat-" + std::to_string(::getpid()));
  std::filesystem::create_directories(base);
  ::chmod(base.c_str(), 01777);  // as /tmp
  const std::string sock = (base / "gpubroker" / "gpubroker.sock").string();
  // The squatter: a listener of its own, and, to the one who connects
  // anyway, an error reply full of terminal escapes.
  ChildProcess squatter([&](Channel& ch) {
    if (!Become(kOther)) return 90;
    ::mkdir((base / "gpubroker").c_str(), 0755);
    UniqueFd l(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
    if (::bind(l.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(l.get(), 4) != 0) return 91;
    ::chmod(sock.c_str(), 0666);
    ch.SendLine("listening");
    while (true) {
      UniqueFd c(::accept(l.get(), nullptr, nullptr));
      if (!c.valid()) return 92;
      std::vector<std::byte> buffer(wire::kMaxMessageBytes);
      auto r = ReceiveRecord(c.get(), buffer, false);
      if (!r.ok() || r->closed) continue;
      (void)SendRecord(c.get(), wire::EncodeError(1, PermissionDenied("\x1b]0;pwned\x07\x1b[2Jgotcha")), -1, false);
    }
  });
  ASSERT_EQ(squatter.channel().ReceiveLine(), "listening");
  auto refused = RunAs(kOwner, [&](Channel& ch) {
    ConnectOptions o;
    o.socket_path = sock;
    o.reconnect_timeout_ms = 0;
    auto c = Client::Connect(o);
    ch.SendLine(c.ok() ? "TRUSTED" : std::string(CodeName(c.status().code())) + " " + c.status().message());
  });
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0].rfind("permission_denied", 0), 0u) << refused[0];
  EXPECT_NE(refused[0].find("can be written by others"), std::string::npos) << refused[0];
  // The same listener reached by the user who runs it (trusted, as its own):
  // what it says comes back escaped.
  auto escaped = RunAs(kOther, [&](Channel& ch) {
    ConnectOptions o;
    o.socket_path = sock;
    o.reconnect_timeout_ms = 0;
    auto c = Client::Connect(o);
    ch.SendLine(c.ok() ? "CONNECTED" : c.status().message());
  });
  ASSERT_EQ(escaped.size(), 1u);
  EXPECT_EQ(escaped[0].find('\x1b'), std::string::npos) << "a raw escape came through";
  EXPECT_NE(escaped[0].find("\\x1b]0;pwned\\x07"), std::string::npos) << escaped[0];
  ::kill(squatter.pid(), SIGKILL);
  std::filesystem::remove_all(base);
}

// Only a stale socket of the broker's own uid is ever removed.
TEST(Security, TheSocketPathIsNeverClobbered) {
  auto dir = std::filesystem::temp_directory_path() / ("gpbtest-sock-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 01777);  // anyone may add files, as in /tmp; none may move another's
  std::string file = (dir / "regular").string();
  std::ofstream(file) << "precious";
  LaunchOptions launch;
  launch.socket = file;
  launch.wait_for_socket = false;
  launch.log_file = (dir / "log1").string();
  auto broker = BrokerProcess::Start(launch);
  ASSERT_NE(broker, nullptr);
  EXPECT_EQ(broker->Stop(0), 1);
  std::ifstream in(file);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
  std::stringstream log;
  log << std::ifstream(dir / "log1").rdbuf();
  EXPECT_NE(log.str().find(file + " exists and is not a socket"), std::string::npos) << log.str();

  if (::geteuid() == 0) {  // another user's socket
    std::string theirs = (dir / "theirs.sock").string();
    ChildProcess binder([&](Channel&) {
      if (!Become(kOther)) return 90;
      int s = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, theirs.c_str(), sizeof addr.sun_path - 1);
      return ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 ? 0 : 91;
    });
    ASSERT_EQ(binder.Wait(), 0);
    launch.socket = theirs;
    launch.log_file = (dir / "log2").string();
    auto second = BrokerProcess::Start(launch);
    ASSERT_NE(second, nullptr);
    EXPECT_EQ(second->Stop(0), 1);
    EXPECT_TRUE(std::filesystem::is_socket(theirs));
    std::stringstream log2;
    log2 << std::ifstream(dir / "log2").rdbuf();
    EXPECT_NE(log2.str().find("belongs to uid 1002"), std::string::npos) << log2.str();
  }
  // A directory anyone may write to, without the sticky bit: anyone could
  // swap the socket for theirs, so the broker will not listen there.
  ::chmod(dir.c_str(), 0777);
  launch.socket = (dir / "gpubroker.sock").string();
  launch.log_file = (dir / "log3").string();
  auto third = BrokerProcess::Start(launch);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(third->Stop(0), 1);
  std::stringstream log3;
  log3 << std::ifstream(dir / "log3").rdbuf();
  EXPECT_NE(log3.str().find("has mode 0777: others may write to it"), std::string::npos) << log3.str();
  std::filesystem::remove_all(dir);
}

// A reload either applies the whole new configuration or none of it.
TEST(Security, AFailedReloadChangesNothing) {
  TempDir tmp("reload");
  const std::filesystem::path dir = tmp.path;
  std::string config = (dir / "gpubroker.yaml").string();
  std::ofstream(config) << "limits:\n  max_slots: 10\n";
  auto broker = BrokerLoggingTo(dir / "log", {"--config", config});
  ASSERT_NE(broker, nullptr);
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());
  std::ofstream(config) << "limits:\n  max_slots: 5\npools:\n  - name: p\n    bytes: 64\n    group: no-such-group-here\n";
  Status s = c->Reload();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no-such-group-here"), std::string::npos) << s.message();
  EXPECT_EQ(c->Info()->max_slots, 10u) << "a rejected reload applied its limits";
  EXPECT_EQ(c->Stat("p").status().code(), Code::kNotFound);
  std::ofstream(config) << "limits:\n  max_slots: 5\npools:\n  - name: p\n    bytes: 64\n";
  ASSERT_TRUE(c->Reload().ok());
  EXPECT_EQ(c->Info()->max_slots, 5u);
  EXPECT_TRUE(c->Stat("p").ok());
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::stringstream log;
  log << std::ifstream(dir / "log").rdbuf();
  size_t rejected = log.str().find("reload rejected");
  ASSERT_NE(rejected, std::string::npos);
  EXPECT_EQ(log.str().find("configuration reloaded"), log.str().rfind("configuration reloaded"))
      << "one successful reload, one log line";
  EXPECT_GT(log.str().find("configuration reloaded"), rejected) << log.str();
}

TEST(Security, AClientNameCannotForgeALogLine) {
  TempDir dir("log");
  auto broker = BrokerLoggingTo(dir.path / "log");
  ASSERT_NE(broker, nullptr);
  {
    auto c = broker->Connect("evil\n2026-01-01 00:00:00.000 [info] forged line");
    ASSERT_TRUE(c.ok());
  }
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::ifstream in(dir.path / "log");
  std::string line;
  bool escaped = false;
  while (std::getline(in, line)) {
    EXPECT_NE(line.rfind("2026-01-01 00:00:00.000", 0), 0u) << "a forged line reached the log";
    escaped = escaped || line.find("evil\\x0a2026-01-01") != std::string::npos;
  }
  EXPECT_TRUE(escaped);
}

// A connection that sends nothing but garbage gets an error for each
// record, and the log gets at most a line a second from it, saying how many
// it left out.
TEST(Security, GarbageCannotFloodTheLog) {
  TempDir dir("spam");
  auto broker = BrokerLoggingTo(dir.path / "log");
  ASSERT_NE(broker, nullptr);
  constexpr int kRecords = 2000;
  const auto started = std::chrono::steady_clock::now();
  {
    Raw raw = Raw::Dial(broker->socket());
    ASSERT_TRUE(raw.Hello());
    std::vector<std::byte> garbage(64, std::byte{0x5a}), buffer(wire::kMaxMessageBytes);
    for (int i = 0; i < kRecords; ++i) {
      ASSERT_TRUE(SendRecord(raw.fd.get(), garbage, -1, false).ok());
      auto reply = raw.Receive(buffer);
      ASSERT_TRUE(reply.ok());
      ASSERT_FALSE(ErrorText(std::span(buffer).first(reply->size)).empty()) << "record " << i;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());  // still serving
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::ifstream in(dir.path / "log");
  int lines = 0;
  for (std::string line; std::getline(in, line);) lines += line.find("rejected message") != std::string::npos;
  EXPECT_GE(lines, 1);
  EXPECT_LE(lines, 1 + static_cast<int>(seconds) + 1) << lines << " lines for " << kRecords << " records in "
                                                       << seconds << " s";
}

// Ordinary requests cannot flood the log either: a user that creates and
// destroys in a loop, and connects, says hello with a name of escape bytes
// and hangs up in a loop, gets its uid's budget of lines (a burst, then a few
// a second) and one that says how many were left out.
TEST(Security, OrdinaryRequestsCannotFloodTheLog) {
  GPUBROKER_NEEDS_ROOT("to run the flood as another uid");
  TempDir dir("flood");
  auto broker = BrokerLoggingTo(dir.path / "log");
  ASSERT_NE(broker, nullptr);
  constexpr int kCycles = 1500;
  const auto started = std::chrono::steady_clock::now();
  auto lines = RunAs(kOther, [&](Channel& ch) {
    auto c = broker->Connect("flood");
    if (!c.ok()) return ch.SendLine(c.status().ToString());
    for (int i = 0; i < kCycles; ++i) {
      if (!c->Create(Slot("flood/x", 64, 0600)).ok() || !c->Destroy("flood/x").ok()) return ch.SendLine("FAILED");
    }
    ConnectOptions o = broker->Options(std::string("\x1b[2J\x1b]0;x\x07"));
    for (int i = 0; i < kCycles / 3; ++i) {
      if (!Client::Connect(o).ok()) return ch.SendLine("CONNECT FAILED");
    }
    ch.SendLine("done");
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_EQ(lines, std::vector<std::string>{"done"});
  auto root = broker->Connect();
  ASSERT_TRUE(root.ok());  // still serving
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::ifstream in(dir.path / "log");
  int from_other = 0, notes = 0, raw_escapes = 0;
  const std::string uid = "uid " + std::to_string(kOther);
  for (std::string line; std::getline(in, line);) {
    from_other += line.find(uid) != std::string::npos || line.find("'flood/x'") != std::string::npos;
    notes += line.find("were not logged") != std::string::npos;
    raw_escapes += line.find('\x1b') != std::string::npos;
  }
  const int budget = static_cast<int>(LogBudget::kBurst + LogBudget::kPerSecond * (seconds + 1));
  std::printf("  %d cycles in %.1f s: %d lines from the flooding uid (budget %d), %d notes\n", kCycles + kCycles / 3,
              seconds, from_other, budget, notes);
  EXPECT_LE(from_other, budget) << "lines for " << 3 * kCycles << " requests in " << seconds << " s";
  EXPECT_GE(notes, 1) << "no line said how many were left out";
  EXPECT_EQ(raw_escapes, 0);
}

// Connections that never say hello, in a loop, each closed by the broker:
// its line for each ("no hello within ...") takes from the uid's budget too.
TEST(Security, SilentConnectionsCannotFloodTheLog) {
  GPUBROKER_NEEDS_ROOT("to run the flood as another uid");
  TempDir dir("silent");
  auto broker = BrokerLoggingTo(dir.path / "log", {"--hello-timeout-ms", "50", "--max-connections", "512",
                                                            "--max-connections-per-uid", "256"});
  ASSERT_NE(broker, nullptr);
  constexpr int kBatches = 8, kPerBatch = 100;
  const auto started = std::chrono::steady_clock::now();
  auto lines = RunAs(kOther, [&](Channel& ch) {
    std::vector<std::byte> buffer(wire::kMaxMessageBytes);
    for (int b = 0; b < kBatches; ++b) {
      std::vector<Raw> batch;
      for (int i = 0; i < kPerBatch; ++i) batch.push_back(Raw::Dial(broker->socket()));
      for (auto& raw : batch) {  // until the broker has closed each
        while (true) {
          auto r = raw.Receive(buffer);
          if (!r.ok() || r->closed) break;
        }
      }
    }
    ch.SendLine("done");
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_EQ(lines, std::vector<std::string>{"done"});
  ASSERT_TRUE(broker->Connect().ok());  // still serving
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  std::ifstream in(dir.path / "log");
  int silent = 0, notes = 0;
  for (std::string line; std::getline(in, line);) {
    silent += line.find("no hello within") != std::string::npos;
    notes += line.find("were not logged") != std::string::npos;
  }
  const int budget = static_cast<int>(LogBudget::kBurst + LogBudget::kPerSecond * (seconds + 1));
  std::printf("  %d silent connections in %.1f s: %d lines (budget %d), %d notes\n", kBatches * kPerBatch, seconds,
              silent, budget, notes);
  ASSERT_LT(budget, kBatches * kPerBatch) << "the flood must outgrow the budget for this test to mean anything";
  EXPECT_LE(silent, budget);
  EXPECT_GE(silent, 1) << "the line is still written, within the budget";
}

// Errors that name the real problem.
TEST(Security, MisuseGetsAClearError) {
  auto broker = BrokerProcess::Start({"--default-backend", "host", "--max-host-bytes", "1GiB"});
  ASSERT_NE(broker, nullptr);
  Raw raw = Raw::Dial(broker->socket());
  ASSERT_TRUE(raw.Hello());
  {  // 200 descriptors riding one message
    std::vector<int> fds;
    for (int i = 0; i < 200; ++i) fds.push_back(::open("/dev/null", O_RDONLY));
    auto bytes = wire::EncodeRequest(9, wire::StatusRequest{});
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    iovec iov{bytes.data(), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    // Refused by the kernel where it can (SO_PASSRIGHTS, Linux 6.16 on), else
    // by the broker with a clear error.
    const ssize_t sent = ::sendmsg(raw.fd.get(), &msg, 0);
    const int why = errno;
    for (int fd : fds) ::close(fd);
    if (sent < 0) {
      EXPECT_EQ(why, EPERM) << std::strerror(why);
    } else {
      std::vector<std::byte> buffer(wire::kMaxMessageBytes);
      auto r = raw.Receive(buffer);
      ASSERT_TRUE(r.ok());
      EXPECT_NE(ErrorText(std::span(buffer).first(r->size)).find("may not send file descriptors"),
                std::string::npos);
    }
  }
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());
  Status huge = c->Create(Slot("e/huge", INT64_MAX, 0600)).status();
  EXPECT_NE(huge.message().find("limits.max_host_bytes"), std::string::npos) << huge.message();
  CreateOptions gpu = Slot("e/gpu", 64, 0600);
  gpu.backend.reset();
  gpu.device = 0;
  Status device = c->Create(gpu).status();
  EXPECT_EQ(device.code(), Code::kInvalidArgument) << device.ToString();
  EXPECT_NE(device.message().find("CUDA device was asked for"), std::string::npos) << device.message();
  CreateOptions long_base = Slot("e/view", 16, 0600);
  long_base.base = std::string(200, 'b');
  Status base = c->Create(long_base).status();
  EXPECT_EQ(base.code(), Code::kInvalidArgument);
  EXPECT_NE(base.message().find("127"), std::string::npos) << base.message();
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

// The broker's logic, driven message by message with a fake backend.
#include "broker/request_handler.h"
#include "common/slot_descriptor.h"
#include "broker/server.h"
#include "common/registry_reader.h"

#include <gtest/gtest.h>

#include <set>
#include <fcntl.h>
#include <unistd.h>

namespace gpubroker {
namespace {

// Counts live allocations and can run out of memory on demand.
class FakeBackend final : public Backend {
 public:
  struct Memory final : BackendMemory {
    Memory(FakeBackend* owner, uint64_t bytes) : owner(owner), bytes(bytes) { ++owner->live; }
    ~Memory() override { --owner->live; }
    uint64_t size() const override { return bytes; }
    Device device() const override { return Device{}; }
    Result<SharedHandle> Share(uint32_t) override {
      return SharedHandle{UniqueFd(::open("/dev/null", O_RDONLY)), std::nullopt};
    }
    FakeBackend* owner;
    uint64_t bytes;
  };
  BackendKind kind() const override { return BackendKind::kHost; }
  Result<std::unique_ptr<BackendMemory>> Allocate(const AllocationRequest& r) override {
    if (r.bytes > capacity) return ResourceExhausted("out of fake memory");
    return std::unique_ptr<BackendMemory>(new Memory(this, r.bytes));
  }
  int live = 0;
  uint64_t capacity = 1 << 20;
};

class HandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    RegistryOptions ro;
    ro.name = "gpbtest-handler-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    ro.capacity = 16;
    registry_ = std::move(Registry::Create(ro)).value();
    auto backend = std::make_unique<FakeBackend>();
    fake_ = backend.get();
    backends_.Add(std::move(backend));
    options_.limits.max_connections = 8;
    options_.limits.reserved_admin_connections = 2;
    handler_ = std::make_unique<RequestHandler>(*registry_, backends_, options_);
  }

  void Rebuild(Limits limits, std::optional<gid_t> admin_group = std::nullopt) {
    options_.limits = limits;
    options_.admin_group = admin_group;
    handler_ = std::make_unique<RequestHandler>(*registry_, backends_, options_);
  }

  uint64_t Connect(uid_t uid, gid_t gid, std::vector<gid_t> groups = {}) {
    auto id = handler_->OnConnect({100, uid, gid, std::move(groups)});
    EXPECT_TRUE(id.ok());
    wire::HelloRequest hello{};
    hello.protocol_version = wire::kProtocolVersion;
    hello.client_name.set("test");
    EXPECT_TRUE(Call<wire::HelloReply>(*id, hello).ok());
    return *id;
  }

  template <typename R, typename Q>
  Result<R> Call(uint64_t client, const Q& request, UniqueFd* fd = nullptr) {
    Reply reply = handler_->Handle(client, wire::EncodeRequest(++request_id_, request));
    auto frame = wire::ParseFrame(reply.bytes);
    if (!frame.ok()) return frame.status();
    EXPECT_EQ(frame->request_id, request_id_);
    if (frame->type == wire::MsgType::kError) {
      auto e = wire::Decode<wire::ErrorReply>(frame->payload);
      return Status(static_cast<Code>(e->code), std::string(e->message.view()));
    }
    if (fd != nullptr) *fd = std::move(reply.fd);
    return wire::Decode<R>(frame->payload);
  }

  static wire::CreateRequest CreateMsg(const std::string& name, int64_t n, uint32_t mode = 0600,
                                       bool attach = false) {
    wire::CreateRequest m{};
    m.name.set(name);
    m.ndim = 1;
    m.shape[0] = n;
    m.dtype_code = DType::kFloat;
    m.dtype_bits = 32;
    m.dtype_lanes = 1;
    m.mode = mode;
    m.device_ordinal = -1;
    m.flags = attach ? uint32_t{wire::kCreateAttach} : 0u;
    return m;
  }

  Result<wire::AttachReply> Attach(uint64_t client, const std::string& name) {
    wire::AttachRequest m{};
    m.name.set(name);
    return Call<wire::AttachReply>(client, m);
  }

  Status Destroy(uint64_t client, const std::string& name) {
    wire::DestroyRequest m{};
    m.name.set(name);
    return Call<wire::DestroyReply>(client, m).status();
  }

  uint32_t LeaseCount(const std::string& name) {
    return registry_->Get(*registry_->Find(name)).lease_count;
  }

  std::unique_ptr<Registry> registry_;
  BackendSet backends_;
  FakeBackend* fake_ = nullptr;
  HandlerOptions options_;
  std::unique_ptr<RequestHandler> handler_;
  uint32_t request_id_ = 0;
};

TEST_F(HandlerTest, RequestsBeforeHelloAreRefused) {
  auto id = handler_->OnConnect({1, 0, 0, {}});
  ASSERT_TRUE(id.ok());
  Status s = Attach(*id, "x").status();
  EXPECT_EQ(s.code(), Code::kProtocol);
  EXPECT_NE(s.message().find("hello"), std::string::npos);
}

// A client whose uid the broker's user namespace does not map reads as the
// overflow uid, shared by every such client: it is refused, and told why.
TEST_F(HandlerTest, APeerWithAnUnmappedUidIsRefusedAndToldWhy) {
  PeerCredentials peer{1, 65534, 65534, {}};
  peer.unmapped = true;
  Status s = handler_->OnConnect(peer).status();
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_NE(s.message().find("the overflow uid"), std::string::npos) << s.message();
  peer.unmapped = false;  // the same number for a real user of the broker's namespace
  EXPECT_TRUE(handler_->OnConnect(peer).ok());
}

TEST(UidMap, OnlyTheIdentityMapOfEveryUidIsTheHosts) {
  EXPECT_TRUE(IsHostUserNamespace("         0          0 4294967295\n"));
  EXPECT_FALSE(IsHostUserNamespace("         0          0          1\n"));  // unshare --map-root-user
  EXPECT_FALSE(IsHostUserNamespace("0 0 65536\n"));                      // covers 65534, still ambiguous
  EXPECT_FALSE(IsHostUserNamespace("0 1000 1\n1 100000 65536\n"));      // rootless podman
  EXPECT_FALSE(IsHostUserNamespace("0 0 4294967295\n0 0 1\n"));
  EXPECT_FALSE(IsHostUserNamespace("garbage"));
  EXPECT_FALSE(IsHostUserNamespace(""));
}

TEST_F(HandlerTest, GarbageGetsAnErrorWithItsRequestId) {
  uint64_t c = Connect(0, 0);
  std::vector<std::byte> junk(40, std::byte{0x5a});
  std::memcpy(junk.data() + offsetof(wire::Header, request_id), "\x07\x00\x00\x00", 4);
  Reply reply = handler_->Handle(c, junk);
  auto frame = wire::ParseFrame(reply.bytes);
  ASSERT_TRUE(frame.ok());
  EXPECT_EQ(frame->type, wire::MsgType::kError);
  EXPECT_EQ(frame->request_id, 7u);
  EXPECT_FALSE(reply.close_connection);
  // and the connection still works
  EXPECT_TRUE(Call<wire::StatusReply>(c, wire::StatusRequest{}).ok());
}

TEST_F(HandlerTest, DestroyKeepsMemoryUntilTheLastLease) {
  uint64_t a = Connect(0, 0);
  uint64_t b = Connect(0, 0);
  UniqueFd fd;
  auto created = Call<wire::AttachReply>(a, CreateMsg("buf", 256, 0600, true), &fd);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_TRUE(fd.valid());
  ASSERT_TRUE(Attach(b, "buf").ok());
  EXPECT_EQ(LeaseCount("buf"), 2u);
  ASSERT_TRUE(Destroy(a, "buf").ok());
  EXPECT_FALSE(registry_->Find("buf"));
  EXPECT_EQ(fake_->live, 1);
  ASSERT_TRUE(Call<wire::DetachReply>(a, wire::DetachRequest{created->slot.allocation_id}).ok());
  EXPECT_EQ(fake_->live, 1);
  handler_->OnDisconnect(b);  // b never detached: its connection closing returns the lease
  EXPECT_EQ(fake_->live, 0);
}

TEST_F(HandlerTest, DisconnectReturnsEveryLease) {
  uint64_t a = Connect(0, 0);
  ASSERT_TRUE(Call<wire::SlotReply>(a, CreateMsg("s", 16)).ok());
  uint64_t b = Connect(0, 0);
  ASSERT_TRUE(Attach(b, "s").ok());
  ASSERT_TRUE(Attach(b, "s").ok());
  EXPECT_EQ(LeaseCount("s"), 2u);
  handler_->OnDisconnect(b);
  EXPECT_EQ(LeaseCount("s"), 0u);
  EXPECT_EQ(fake_->live, 1);  // the slot itself still holds it
  EXPECT_EQ(handler_->leases().total_leases(), 0u);
}

TEST_F(HandlerTest, DetachWithoutALeaseIsNotFound) {
  uint64_t a = Connect(0, 0);
  EXPECT_EQ(Call<wire::DetachReply>(a, wire::DetachRequest{12345}).status().code(), Code::kNotFound);
}

// Where clients' root is not the machine's (pods on a shared node), root can
// be made a user like any other, even when the broker itself runs as root.
TEST_F(HandlerTest, RootIsAnAdministratorUnlessConfiguredOtherwise) {
  uint64_t owner = Connect(1000, 1000);
  ASSERT_TRUE(Call<wire::SlotReply>(owner, CreateMsg("private", 4, 0600)).ok());
  EXPECT_TRUE(Attach(Connect(0, 0), "private").ok());
  options_.root_is_admin = false;
  Rebuild(options_.limits);
  owner = Connect(1000, 1000);
  ASSERT_TRUE(Call<wire::SlotReply>(owner, CreateMsg("theirs", 4, 0600)).ok());
  uint64_t root = Connect(0, 0);
  EXPECT_EQ(Attach(root, "theirs").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(Destroy(root, "theirs").code(), Code::kPermissionDenied);
  ASSERT_TRUE(Call<wire::SlotReply>(root, CreateMsg("roots", 4, 0600)).ok());
  EXPECT_TRUE(Attach(root, "roots").ok()) << "root still owns what it creates";
}

TEST_F(HandlerTest, ModeBitsDecideAttachAndDestroy) {
  uint64_t owner = Connect(1000, 1000);
  uint64_t peer = Connect(1001, 1000);  // same group
  uint64_t other = Connect(2000, 2000);
  ASSERT_TRUE(Call<wire::SlotReply>(owner, CreateMsg("private", 4, 0600)).ok());
  ASSERT_TRUE(Call<wire::SlotReply>(owner, CreateMsg("group", 4, 0640)).ok());
  EXPECT_EQ(Attach(peer, "private").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(Attach(other, "private").status().code(), Code::kPermissionDenied);
  auto g = Attach(peer, "group");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->access, uint32_t{wire::kAccessRead});  // no w bit for the group
  EXPECT_EQ(Attach(other, "group").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(Destroy(peer, "group").code(), Code::kPermissionDenied);
  auto own = Attach(owner, "private");
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(own->access, uint32_t{wire::kAccessRead | wire::kAccessWrite});
  EXPECT_TRUE(Destroy(owner, "private").ok());
  uint64_t root = Connect(0, 0);
  EXPECT_TRUE(Attach(root, "group").ok());
}

TEST_F(HandlerTest, AdminGroupMayDoEverything) {
  Rebuild(Limits{.max_connections = 8, .reserved_admin_connections = 2}, gid_t{4242});
  uint64_t owner = Connect(1000, 1000);
  uint64_t admin = Connect(3000, 3000, {4242});
  uint64_t nobody = Connect(3001, 3001);
  ASSERT_TRUE(Call<wire::SlotReply>(owner, CreateMsg("p", 4, 0600)).ok());
  EXPECT_TRUE(Attach(admin, "p").ok());
  EXPECT_EQ(Call<wire::ShutdownReply>(nobody, wire::ShutdownRequest{}).status().code(),
            Code::kPermissionDenied);
  EXPECT_FALSE(handler_->shutdown_requested());
  EXPECT_TRUE(Destroy(admin, "p").ok());
  EXPECT_TRUE(Call<wire::ShutdownReply>(admin, wire::ShutdownRequest{}).ok());
  EXPECT_TRUE(handler_->shutdown_requested());
}

// Which trees come from other nodes is the operator's: follow and unfollow
// are an administrator's, and reach the peers only from one.
TEST_F(HandlerTest, FollowAndUnfollowAreAnAdministratorsAndReachThePeers) {
  wire::FollowRequest follow{};
  follow.tree.set("policy");
  follow.from.set("10.0.0.1:7400");
  follow.group.set("inference");
  follow.mode = 0640;
  wire::UnfollowRequest unfollow{};
  unfollow.tree.set("policy");
  unfollow.flags = wire::kUnfollowRemove;
  EXPECT_EQ(Call<wire::FollowReply>(Connect(0, 0), follow).status().code(), Code::kUnsupported)
      << "no peers (no peers.key_file): said so";
  std::vector<FollowConfig> followed;
  std::vector<std::pair<std::string, bool>> unfollowed;
  options_.follow = [&](const FollowConfig& fc) {
    followed.push_back(fc);
    return Status::Ok();
  };
  options_.unfollow = [&](const std::string& tree, bool remove) {
    unfollowed.emplace_back(tree, remove);
    return tree == "policy" ? Status::Ok() : NotFound("not followed");
  };
  Rebuild(options_.limits, gid_t{4242});
  uint64_t nobody = Connect(1000, 1000);
  EXPECT_EQ(Call<wire::FollowReply>(nobody, follow).status().code(), Code::kPermissionDenied);
  EXPECT_EQ(Call<wire::UnfollowReply>(nobody, unfollow).status().code(), Code::kPermissionDenied);
  EXPECT_TRUE(followed.empty() && unfollowed.empty()) << "a refused request reaches no peer";
  uint64_t admin = Connect(3000, 3000, {4242});
  ASSERT_TRUE(Call<wire::FollowReply>(admin, follow).ok());
  ASSERT_EQ(followed.size(), 1u);
  EXPECT_EQ(followed[0], (FollowConfig{"policy", "10.0.0.1:7400", "inference", 0640}));
  ASSERT_TRUE(Call<wire::UnfollowReply>(admin, unfollow).ok());
  EXPECT_EQ(unfollowed, (std::vector<std::pair<std::string, bool>>{{"policy", true}}));
  unfollow.tree.set("other");
  EXPECT_EQ(Call<wire::UnfollowReply>(admin, unfollow).status().code(), Code::kNotFound);
  follow.mode = 01777;
  EXPECT_EQ(Call<wire::FollowReply>(admin, follow).status().code(), Code::kInvalidArgument);
  follow.mode = 0640;
  follow.tree.set("../x");
  EXPECT_EQ(Call<wire::FollowReply>(admin, follow).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(followed.size(), 1u) << "a malformed request reaches no peer";
}

TEST_F(HandlerTest, ViewsIntoAnArenaAreCheckedAgainstTheAllocation) {
  uint64_t a = Connect(0, 0);
  ASSERT_TRUE(Call<wire::SlotReply>(a, CreateMsg("arena", 1024)).ok());  // 4 KiB
  wire::CreateRequest view = CreateMsg("arena/w", 16);
  view.base.set("arena");
  view.byte_offset = 4096 - 64;
  auto ok = Call<wire::SlotReply>(a, view);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->slot.allocation_id, registry_->Get(*registry_->Find("arena")).allocation_id);
  view.name.set("arena/too-far");
  view.byte_offset = 4096 - 60;
  EXPECT_EQ(Call<wire::SlotReply>(a, view).status().code(), Code::kInvalidArgument);
  view.base.set("missing");
  EXPECT_EQ(Call<wire::SlotReply>(a, view).status().code(), Code::kNotFound);
  EXPECT_EQ(fake_->live, 1);
  ASSERT_TRUE(Destroy(a, "arena").ok());
  EXPECT_EQ(fake_->live, 1);  // arena/w still views it
  ASSERT_TRUE(Destroy(a, "arena/w").ok());
  EXPECT_EQ(fake_->live, 0);
}

TEST_F(HandlerTest, OutOfMemoryIsAClearErrorAndServiceGoesOn) {
  uint64_t a = Connect(0, 0);
  fake_->capacity = 100;
  Status s = Call<wire::SlotReply>(a, CreateMsg("big", 1000)).status();
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_NE(s.message().find("out of fake memory"), std::string::npos);
  EXPECT_FALSE(registry_->Find("big"));
  EXPECT_TRUE(Call<wire::SlotReply>(a, CreateMsg("small", 10)).ok());
}

TEST_F(HandlerTest, TheSlotQuotaNotGivenIsAQuarterOfTheRegistry) {
  uint64_t a = Connect(1000, 1000);  // the fixture's registry holds 16
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Call<wire::SlotReply>(a, CreateMsg("q" + std::to_string(i), 4)).ok());
  Status fifth = Call<wire::SlotReply>(a, CreateMsg("q4", 4)).status();
  EXPECT_EQ(fifth.code(), Code::kResourceExhausted);
  EXPECT_NE(fifth.message().find("(limits.max_slots_per_uid 4)"), std::string::npos) << fifth.message();
  EXPECT_TRUE(Call<wire::SlotReply>(Connect(1001, 1001), CreateMsg("theirs", 4)).ok());
}

// Without limits.max_bytes_per_uid, each uid but root and the admin group
// may hold a quarter of the host-memory cap: one user cannot take it all.
TEST_F(HandlerTest, EachUidHasAFairShareOfACapByDefault) {
  Rebuild(Limits{.max_host_bytes = 4096 * 16});  // a share: 16 KiB
  uint64_t hog = Connect(1000, 1000);
  for (int i = 0; i < 2; ++i) {  // 8 KiB each: 16 KiB
    ASSERT_TRUE(Call<wire::SlotReply>(hog, CreateMsg("hog/" + std::to_string(i), 2048)).ok()) << i;
  }
  Status more = Call<wire::SlotReply>(hog, CreateMsg("hog/more", 2048)).status();
  EXPECT_EQ(more.code(), Code::kResourceExhausted) << more.ToString();
  EXPECT_NE(more.message().find("a quarter of limits.max_host_bytes"), std::string::npos) << more.message();
  // Others still get theirs, root beyond a share.
  EXPECT_TRUE(Call<wire::SlotReply>(Connect(1001, 1001), CreateMsg("other/0", 1024)).ok());
  EXPECT_TRUE(Call<wire::SlotReply>(Connect(0, 0), CreateMsg("root/0", 5 * 1024)).ok());
  // The share follows what is held: a destroy frees room.
  ASSERT_TRUE(Destroy(hog, "hog/0").ok());
  EXPECT_TRUE(Call<wire::SlotReply>(hog, CreateMsg("hog/more", 2048)).ok());
  // Also when someone else keeps a view of the destroyed slot: the share
  // counts what the uid's slots name, so nobody can hold it down.
  uint64_t keeper = Connect(0, 0);
  ASSERT_TRUE(Attach(keeper, "hog/1").ok());
  ASSERT_TRUE(Destroy(hog, "hog/1").ok());
  EXPECT_TRUE(Call<wire::SlotReply>(hog, CreateMsg("hog/again", 2048)).ok())
      << "a view another user kept of a destroyed slot still counted against the share";
}

TEST_F(HandlerTest, LimitsEachHaveTheirOwnError) {
  Rebuild(Limits{.max_slots = 2, .max_bytes_per_uid = 100, .max_connections = 3, .reserved_admin_connections = 0});
  uint64_t a = Connect(1000, 1000);
  Status bytes = Call<wire::SlotReply>(a, CreateMsg("x", 26)).status();  // 104 bytes
  EXPECT_EQ(bytes.code(), Code::kResourceExhausted);
  EXPECT_NE(bytes.message().find("limits.max_bytes_per_uid"), std::string::npos) << bytes.message();
  ASSERT_TRUE(Call<wire::SlotReply>(a, CreateMsg("x", 10)).ok());
  ASSERT_TRUE(Call<wire::SlotReply>(a, CreateMsg("y", 10)).ok());
  Status slots = Call<wire::SlotReply>(a, CreateMsg("z", 1)).status();
  EXPECT_EQ(slots.code(), Code::kResourceExhausted);
  EXPECT_NE(slots.message().find("slot limit"), std::string::npos);
  EXPECT_EQ(Call<wire::SlotReply>(a, CreateMsg("x", 1)).status().code(), Code::kAlreadyExists);
  Connect(0, 0);
  Connect(0, 0);
  Status conns = handler_->OnConnect({1, 0, 0, {}}).status();
  EXPECT_EQ(conns.code(), Code::kResourceExhausted);
  EXPECT_NE(conns.message().find("connections"), std::string::npos);
}

// A slot of no bytes is refused at create, naming why; before, the broker
// made it and every client's listing failed on the record it published.
TEST_F(HandlerTest, ASlotOfNoBytesIsRefusedAndListingGoesOn) {
  uint64_t nobody = Connect(65534, 65534);
  auto zero = Call<wire::SlotReply>(nobody, CreateMsg("nb/zero", 0, 0644));
  ASSERT_FALSE(zero.ok()) << "a slot of 0 bytes was made";
  EXPECT_EQ(zero.status().code(), Code::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("0 bytes"), std::string::npos) << zero.status().message();
  EXPECT_FALSE(registry_->Find("nb/zero").has_value());
  for (uint32_t i = 0; i < registry_->capacity(); ++i) {
    ASSERT_TRUE(ValidateDescriptor(registry_->Get(i)).ok()) << "record " << i << " cannot be read by clients";
  }
}

TEST_F(HandlerTest, UnknownBackendIsUnsupported) {
  backends_.Disable(BackendKind::kCudaVmm, "no CUDA driver on this host");
  uint64_t a = Connect(0, 0);
  wire::CreateRequest m = CreateMsg("g", 4);
  m.backend = static_cast<uint16_t>(BackendKind::kCudaVmm);
  Status s = Call<wire::SlotReply>(a, m).status();
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("no CUDA driver"), std::string::npos);
}

TEST_F(HandlerTest, StoppingRefusesNewWork) {
  uint64_t a = Connect(0, 0);
  ASSERT_TRUE(Call<wire::SlotReply>(a, CreateMsg("s", 4)).ok());
  handler_->SetStopping();
  EXPECT_EQ(Call<wire::SlotReply>(a, CreateMsg("t", 4)).status().code(), Code::kUnavailable);
  EXPECT_EQ(Attach(a, "s").status().code(), Code::kUnavailable);
}


// ---- versions (docs/live.md) ------------------------------------------------

class LiveTest : public HandlerTest {
 protected:
  // A live slot of `buffers` buffers, attached by `client` (writable).
  uint64_t CreateLive(uint64_t client, const std::string& name, uint8_t buffers, uint32_t mode = 0644) {
    wire::CreateRequest m = CreateMsg(name, 64, mode, true);
    m.buffers = buffers;
    auto created = Call<wire::AttachReply>(client, m);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? created->slot.allocation_id : 0;
  }
  LiveState Live(const std::string& name) {
    const SlotDescriptor& d = registry_->Get(*registry_->Find(name));
    return registry_->GetLive(d.live_index);
  }
  Result<wire::WriteBeginReply> Begin(uint64_t client, uint64_t allocation) {
    return Call<wire::WriteBeginReply>(client, wire::WriteBeginRequest{allocation, 0});
  }
  Result<wire::CommitReply> Commit(uint64_t client, uint64_t allocation, int32_t buffer, uint32_t flags = 0) {
    wire::CommitRequest m{};
    m.allocation_id = allocation;
    m.buffer = buffer;
    m.flags = flags;
    return Call<wire::CommitReply>(client, m);
  }
  Result<wire::AcquireReply> Acquire(uint64_t client, uint64_t allocation, uint64_t release_pin = 0) {
    return Call<wire::AcquireReply>(client, wire::AcquireRequest{allocation, release_pin});
  }
  // Begins and commits; returns the version.
  uint64_t Publish(uint64_t client, uint64_t allocation) {
    auto b = Begin(client, allocation);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    if (!b.ok()) return 0;
    auto c = Commit(client, allocation, b->buffer);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? c->version : 0;
  }
};

TEST_F(LiveTest, APlainSlotIsVersionOneInOneBuffer) {
  uint64_t w = Connect(0, 0);
  ASSERT_TRUE(Call<wire::SlotReply>(w, CreateMsg("plain", 16)).ok());
  LiveState s = Live("plain");
  EXPECT_EQ(s.version, 1u);
  EXPECT_EQ(s.buffer, 0);
  EXPECT_EQ(s.nbuffers, 1u);
  EXPECT_EQ(registry_->Get(*registry_->Find("plain")).version, 1u);
}

TEST_F(LiveTest, ALiveSlotHasNoVersionUntilItsFirstCommit) {
  uint64_t w = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 3);
  const SlotDescriptor& d = registry_->Get(*registry_->Find("live"));
  EXPECT_EQ(d.nbuffers, 3u);
  EXPECT_EQ(d.buffer_bytes % 512, 0u);
  EXPECT_GE(d.allocation_bytes, 3 * d.buffer_bytes);
  EXPECT_EQ(Live("live").version, 0u);
  EXPECT_EQ(Acquire(w, a).status().code(), Code::kNotFound);
  EXPECT_EQ(Publish(w, a), 1u);
  EXPECT_EQ(Publish(w, a), 2u);
  wire::StatRequest stat_request{};
  stat_request.name.set("live");
  auto stat = Call<wire::SlotReply>(w, stat_request);
  ASSERT_TRUE(stat.ok());
  EXPECT_EQ(stat->slot.version, 2u);  // replies show the committed version
}

TEST_F(LiveTest, ViewsMustFitInOneBuffer) {
  uint64_t w = Connect(0, 0);
  CreateLive(w, "arena", 2);
  const uint64_t buffer_bytes = registry_->Get(*registry_->Find("arena")).buffer_bytes;
  wire::CreateRequest view = CreateMsg("arena/x", 16);
  view.base.set("arena");
  view.byte_offset = buffer_bytes - 32;  // 64 bytes would cross into buffer 1
  EXPECT_EQ(Call<wire::SlotReply>(w, view).status().code(), Code::kInvalidArgument);
  view.byte_offset = buffer_bytes - 64;
  EXPECT_TRUE(Call<wire::SlotReply>(w, view).ok());
  view.name.set("arena/y");
  view.buffers = 2;  // a view takes its allocation's buffers
  EXPECT_EQ(Call<wire::SlotReply>(w, view).status().code(), Code::kInvalidArgument);
}

TEST_F(LiveTest, AWriterGetsTheOldestBufferNobodyPinsAndNeverTheNewest) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 3);
  ASSERT_TRUE(Attach(r, "live").ok());
  for (int i = 0; i < 3; ++i) Publish(w, a);  // v1..v3 in buffers 0, 1, 2
  LiveState s = Live("live");
  ASSERT_EQ(s.version, 3u);
  auto pinned = Acquire(r, a);
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(pinned->version, 3u);
  EXPECT_EQ(Live("live").pins[pinned->buffer], 1u);
  auto b = Begin(w, a);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->buffer, pinned->buffer);
  EXPECT_EQ(Live("live").buffer_version[b->buffer], 0u);  // being written: holds no version
  EXPECT_EQ(b->version, 3u);
  ASSERT_TRUE(Commit(w, a, b->buffer).ok());
  // v4 is the newest; v3 is pinned; the one left is the oldest.
  auto next = Begin(w, a);
  ASSERT_TRUE(next.ok());
  s = Live("live");
  EXPECT_NE(next->buffer, s.buffer);
  EXPECT_NE(next->buffer, pinned->buffer);
  ASSERT_TRUE(Commit(w, a, next->buffer).ok());
  // Now v5 is newest, v3 pinned, v4's buffer free: a third begin takes it.
  auto third = Begin(w, a);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(Live("live").buffer_version[third->buffer], 0u);
  ASSERT_TRUE(Commit(w, a, third->buffer).ok());
}

TEST_F(LiveTest, EveryBufferPinnedIsBusyAndAReleaseFreesOne) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 2);
  ASSERT_TRUE(Attach(r, "live").ok());
  Publish(w, a);
  auto pin = Acquire(r, a);  // pins v1; v2 will be the newest
  ASSERT_TRUE(pin.ok());
  Publish(w, a);
  auto busy = Begin(w, a);
  EXPECT_EQ(busy.status().code(), Code::kBusy);
  EXPECT_NE(busy.status().message().find("pinned"), std::string::npos) << busy.status().message();
  // A release naming an older pin of this client changes nothing.
  auto stale = Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, pin->pin + 100});
  ASSERT_TRUE(stale.ok());
  EXPECT_EQ(stale->released, 0u);
  EXPECT_EQ(Begin(w, a).status().code(), Code::kBusy);
  auto released = Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, pin->pin});
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(released->released, 1u);
  auto b = Begin(w, a);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->buffer, pin->buffer);
}

TEST_F(LiveTest, EveryAcquireIsAPinOfItsOwnAndAReleaseEndsOnlyTheOneItNames) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 3);
  ASSERT_TRUE(Attach(r, "live").ok());
  Publish(w, a);
  auto first = Acquire(r, a);
  ASSERT_TRUE(first.ok());
  Publish(w, a);
  auto second = Acquire(r, a);  // the reader's kernels may still read version 1
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->version, 2u);
  LiveState s = Live("live");
  EXPECT_EQ(s.pins[first->buffer], 1u);
  EXPECT_EQ(s.pins[second->buffer], 1u);
  ASSERT_EQ(Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, first->pin})->released, 1u);
  s = Live("live");
  EXPECT_EQ(s.pins[first->buffer], 0u);
  EXPECT_EQ(s.pins[second->buffer], 1u);
  // The same version again is another pin: a late release of the earlier
  // one (a reader's background release) leaves the later one standing.
  auto again = Acquire(r, a);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->version, 2u);
  EXPECT_NE(again->pin, second->pin);
  EXPECT_EQ(Live("live").pins[again->buffer], 2u);
  EXPECT_EQ(Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, second->pin})->released, 1u);
  EXPECT_EQ(Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, second->pin})->released, 0u);
  EXPECT_EQ(Live("live").pins[again->buffer], 1u);
  // A connection holds at most one pin more than the slot has buffers.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Acquire(r, a).ok());
  EXPECT_EQ(Acquire(r, a).status().code(), Code::kBusy);
}

// One buffer is written in place: a write that ends without a commit (an
// abort, or the writer's connection gone) leaves no whole version, and no
// acquire hands out the torn buffer as the last committed version.
TEST_F(LiveTest, AOneBufferWriteEndedUncommittedLeavesNoVersionToAcquire) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "one", 1);
  ASSERT_TRUE(Attach(r, "one").ok());
  ASSERT_EQ(Publish(w, a), 1u);
  ASSERT_TRUE(Acquire(r, a).ok());
  auto begun = Begin(w, a);
  ASSERT_TRUE(begun.ok());
  ASSERT_TRUE(Commit(w, a, begun->buffer, wire::kCommitAbort).ok());
  LiveState s = Live("one");
  EXPECT_EQ(s.version, 1u);
  EXPECT_EQ(s.buffer, -1) << "the torn buffer is still marked as holding version 1";
  auto torn = Acquire(r, a);
  ASSERT_FALSE(torn.ok()) << "acquired version " << torn->version << " of a buffer written over";
  EXPECT_EQ(torn.status().code(), Code::kNotFound);
  EXPECT_NE(torn.status().message().find("no whole version"), std::string::npos) << torn.status().message();
  ASSERT_EQ(Publish(w, a), 2u);
  auto whole = Acquire(r, a);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  EXPECT_EQ(whole->version, 2u);
  // The same when the writer goes away mid-write.
  ASSERT_TRUE(Begin(w, a).ok());
  handler_->OnDisconnect(w);
  EXPECT_EQ(Live("one").buffer, -1);
  EXPECT_EQ(Acquire(r, a).status().code(), Code::kNotFound);
}

// Pin ids are the broker's, not a connection's: a release sent late on a
// new connection (after a reconnect) names none of another's pins.
TEST_F(LiveTest, PinIdsAreUniqueAcrossConnections) {
  uint64_t w = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 3);
  ASSERT_EQ(Publish(w, a), 1u);
  std::set<uint64_t> ids;
  for (int c = 0; c < 4; ++c) {
    uint64_t r = Connect(0, 0);
    ASSERT_TRUE(Attach(r, "live").ok());
    auto pin = Acquire(r, a);
    ASSERT_TRUE(pin.ok()) << pin.status().ToString();
    EXPECT_TRUE(ids.insert(pin->pin).second) << "pin id " << pin->pin << " given twice";
  }
}

TEST_F(LiveTest, AnAcquireCanReleaseThePinBeforeItInTheSameMessage) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t other = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 2);
  ASSERT_TRUE(Attach(r, "live").ok());
  ASSERT_TRUE(Attach(other, "live").ok());
  Publish(w, a);
  auto first = Acquire(r, a);
  auto others = Acquire(other, a);
  ASSERT_TRUE(first.ok() && others.ok());
  Publish(w, a);
  auto second = Acquire(r, a, first->pin);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->version, 2u);
  LiveState s = Live("live");
  EXPECT_EQ(s.pins[first->buffer], 1u);  // the other connection's pin stays
  EXPECT_EQ(s.pins[second->buffer], 1u);
  EXPECT_EQ(Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, first->pin})->released, 0u);  // gone already
  // Re-acquiring the same version while releasing its pin keeps it pinned.
  auto again = Acquire(r, a, second->pin);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Live("live").pins[again->buffer], 1u);
  // Another connection's pin, or one never given, is not this one's to drop.
  auto third = Acquire(r, a, others->pin);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(Live("live").pins[others->buffer], 1u);
  EXPECT_TRUE(Acquire(r, a, 0xdeadbeef).ok());
  // The pin an acquire releases does not count against the bound: a reader
  // that always moves on never runs into it.
  uint64_t pin = others->pin;
  for (int i = 0; i < 10; ++i) {
    auto next = Acquire(other, a, pin);
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    pin = next->pin;
  }
}

TEST_F(LiveTest, OneWriterAtATimeAndOnlyItCommits) {
  uint64_t w = Connect(0, 0);
  uint64_t other = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 2, 0666);
  ASSERT_TRUE(Attach(other, "live").ok());
  auto b = Begin(w, a);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Begin(w, a).status().code(), Code::kInvalidArgument);  // commit or abort first
  auto second = Begin(other, a);
  EXPECT_EQ(second.status().code(), Code::kBusy);
  EXPECT_NE(second.status().message().find("being written"), std::string::npos);
  EXPECT_EQ(Commit(other, a, b->buffer).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(Commit(w, a, (b->buffer + 1) % 2).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(Commit(w, a, b->buffer)->version, 1u);
  EXPECT_TRUE(Begin(other, a).ok());
}

TEST_F(LiveTest, WritingNeedsAWritableLeaseAndAcquiringNeedsALease) {
  uint64_t w = Connect(1000, 1000);
  uint64_t reader = Connect(2000, 2000);
  uint64_t stranger = Connect(3000, 3000);
  uint64_t a = CreateLive(w, "live", 2, 0644);
  Publish(w, a);
  ASSERT_TRUE(Attach(reader, "live").ok());  // read-only: mode 0644
  EXPECT_EQ(Begin(reader, a).status().code(), Code::kPermissionDenied);
  EXPECT_TRUE(Acquire(reader, a).ok());
  EXPECT_EQ(Acquire(stranger, a).status().code(), Code::kNotFound);  // no lease: attach first
  EXPECT_EQ(Begin(stranger, a).status().code(), Code::kNotFound);
}

TEST_F(LiveTest, AnAbortedOrAbandonedWriteIsReclaimedUnpublished) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 2);
  ASSERT_TRUE(Attach(r, "live").ok());
  Publish(w, a);
  auto b = Begin(w, a);
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(Commit(w, a, b->buffer, wire::kCommitAbort)->version, 0u);
  LiveState s = Live("live");
  EXPECT_EQ(s.version, 1u);
  EXPECT_EQ(s.writing, -1);
  EXPECT_EQ(s.buffer_version[b->buffer], 0u);
  // A writer that goes away mid-write: its buffer is reclaimed, the last
  // committed version stays the newest, and the next writer may begin.
  uint64_t w2 = Connect(0, 0);
  ASSERT_TRUE(Attach(w2, "live").ok());
  auto begun = Begin(w2, a);
  ASSERT_TRUE(begun.ok());
  EXPECT_EQ(Live("live").writer_pid, 100);
  handler_->OnDisconnect(w2);
  s = Live("live");
  EXPECT_EQ(s.writing, -1);
  EXPECT_EQ(s.writer_pid, 0);
  EXPECT_EQ(s.version, 1u);
  auto got = Acquire(r, a);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, 1u);
  EXPECT_TRUE(Begin(w, a).ok());
}

TEST_F(LiveTest, AReaderThatGoesAwayOrDetachesLosesItsPin) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 2);
  auto lease = Attach(r, "live");
  ASSERT_TRUE(lease.ok());
  Publish(w, a);
  auto pin = Acquire(r, a);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(Live("live").pins[pin->buffer], 1u);
  ASSERT_TRUE(Call<wire::DetachReply>(r, wire::DetachRequest{a}).ok());
  EXPECT_EQ(Live("live").pins[pin->buffer], 0u);
  ASSERT_TRUE(Attach(r, "live").ok());
  ASSERT_TRUE(Acquire(r, a).ok());
  handler_->OnDisconnect(r);
  LiveState s = Live("live");
  EXPECT_EQ(s.pins[0] + s.pins[1], 0u);
}

TEST_F(LiveTest, OneBufferWritesInPlaceAndCountsEveryWrite) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 1);
  ASSERT_TRUE(Attach(r, "live").ok());
  Publish(w, a);
  auto pin = Acquire(r, a);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(pin->flags & wire::kAcquireWriting, 0u);
  // The pin does not stop the writer: the reader learns of the write from
  // the writes counter (and the flag, if it acquires during it).
  auto b = Begin(w, a);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->buffer, 0);
  EXPECT_GT(b->writes, pin->writes);
  auto during = Acquire(r, a);
  ASSERT_TRUE(during.ok());
  EXPECT_NE(during->flags & wire::kAcquireWriting, 0u);
  EXPECT_EQ(during->version, 1u);
  EXPECT_EQ(Commit(w, a, 0)->version, 2u);
}

TEST_F(LiveTest, CommitsWakeTheWordReadersWaitOnAndReleasesTheWritersWord) {
  uint64_t w = Connect(0, 0);
  uint64_t r = Connect(0, 0);
  uint64_t a = CreateLive(w, "live", 2);
  ASSERT_TRUE(Attach(r, "live").ok());
  auto fd = registry_->Share();
  ASSERT_TRUE(fd.ok());
  auto reader = RegistryReader::FromFd(std::move(*fd));
  ASSERT_TRUE(reader.ok());
  auto d = reader->Lookup("live");
  ASSERT_TRUE(d.ok());
  const std::atomic<uint32_t>* commits = reader->CommitsWord(*d);
  const std::atomic<uint32_t>* releases = reader->ReleasesWord(*d);
  ASSERT_NE(commits, nullptr);
  uint32_t c0 = commits->load(), r0 = releases->load();
  Publish(w, a);
  EXPECT_NE(commits->load(), c0);
  EXPECT_EQ(reader->Live(*d)->version, 1u);
  EXPECT_EQ(reader->Lookup("live")->version, 1u);
  auto pin = Acquire(r, a);
  uint32_t r1 = releases->load();
  EXPECT_NE(r1, r0);  // the commit ended a write
  ASSERT_TRUE(Call<wire::ReleaseReply>(r, wire::ReleaseRequest{a, pin->pin}).ok());
  EXPECT_NE(releases->load(), r1);
  // The allocation goes: its record is cleared and its readers woken.
  uint32_t c1 = commits->load();
  ASSERT_TRUE(Destroy(w, "live").ok());
  ASSERT_TRUE(Call<wire::DetachReply>(w, wire::DetachRequest{a}).ok());
  ASSERT_TRUE(Call<wire::DetachReply>(r, wire::DetachRequest{a}).ok());
  EXPECT_NE(commits->load(), c1);
  EXPECT_EQ(reader->Live(*d).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace gpubroker

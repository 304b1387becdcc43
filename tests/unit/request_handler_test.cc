// The broker's logic, driven message by message with a fake backend.
#include "broker/request_handler.h"
#include "broker/server.h"

#include <gtest/gtest.h>
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

}  // namespace
}  // namespace gpubroker

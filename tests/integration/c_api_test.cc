// The C ABI against a real broker: batch attach and DLPack export, the calls
// the Python package's fast paths stand on.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cstring>
#include <string>
#include <vector>

#include "gpubroker/gpubroker.h"
#include "tests/integration/harness.h"

namespace gpubroker::testing {
namespace {

// The leading fields of DLPack's structs, as a consumer reads them.
struct DLTensorView {
  void* data;
  int32_t device_type, device_id;
  int32_t ndim;
  uint8_t code, bits;
  uint16_t lanes;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct ManagedView {
  DLTensorView t;
  void* ctx;
  void (*deleter)(ManagedView*);
};
struct ManagedVersionedView {
  uint32_t major, minor;
  void* ctx;
  void (*deleter)(ManagedVersionedView*);
  uint64_t flags;
  DLTensorView t;
};

class CApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = BrokerProcess::Start();
    ASSERT_NE(broker_, nullptr);
    auto c = broker_->Connect("producer");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    producer_.emplace(std::move(c).value());
    // An arena of three tensors of different shapes, filled with fresh random bytes.
    CreateOptions arena;
    arena.name = "m";
    arena.shape = {kArenaBytes};
    arena.mode = 0644;
    auto whole = producer_->CreateAndAttach(arena);
    ASSERT_TRUE(whole.ok()) << whole.status().ToString();
    data_ = RandomBytes(kArenaBytes);
    std::memcpy(whole->data(), data_.data(), data_.size());
    const std::vector<std::vector<int64_t>> shapes = {{8, 4}, {100}, {3, 5, 7}};
    for (size_t i = 0; i < shapes.size(); ++i) {
      CreateOptions t;
      t.name = "m/t" + std::to_string(i);
      t.base = "m";
      t.byte_offset = i * 1024;
      t.dtype = *ParseDType("float32");
      t.shape = shapes[i];
      t.mode = 0644;
      ASSERT_TRUE(producer_->Create(t).ok());
    }
  }
  void TearDown() override {
    producer_.reset();
    if (broker_) {
      EXPECT_EQ(broker_->Stop(SIGTERM), 0);
    }
  }
  gpb_client* ConnectC(const char* name) {
    gpb_client* c = nullptr;
    gpb_error err{};
    EXPECT_EQ(gpb_connect(broker_->socket().c_str(), name, &c, &err), GPB_OK) << err.message;
    return c;
  }
  // Leases held on the arena by clients other than the producer.
  uint32_t ConsumerLeases() {
    auto leases = producer_->Leases();
    EXPECT_TRUE(leases.ok());
    uint32_t n = 0;
    for (const auto& l : *leases) {
      if (l.client_id != producer_->client_id()) n += l.count;
    }
    return n;
  }

  static constexpr int64_t kArenaBytes = 4096;
  std::unique_ptr<BrokerProcess> broker_;
  std::optional<Client> producer_;
  std::vector<uint8_t> data_;
};

TEST_F(CApiTest, AttachManyInAnotherProcessSeesEveryByteOnOneLease) {
  ChildProcess consumer([&](Channel& ch) {
    gpb_client* c = nullptr;
    if (gpb_connect(broker_->socket().c_str(), "consumer", &c, nullptr) != GPB_OK) return 10;
    const char* names[] = {"m/t0", "m/t1", "m/t2"};
    gpb_view* views[3] = {};
    gpb_error err{};
    if (gpb_attach_many(c, names, 3, 1, views, &err) != GPB_OK) return 11;
    for (gpb_view* v : views) {
      gpb_slot_info info{};
      info.struct_size = sizeof info;
      if (gpb_view_info(v, &info, nullptr) != GPB_OK) return 1;
      ch.Send(gpb_view_data(v), info.nbytes);
    }
    ch.ReceiveLine();  // hold the views while the parent counts leases
    for (gpb_view* v : views) gpb_view_release(v);
    gpb_client_release(c);
    return 0;
  });
  const size_t sizes[] = {8 * 4 * 4, 100 * 4, 3 * 5 * 7 * 4};
  for (size_t i = 0; i < 3; ++i) {
    auto seen = consumer.channel().Receive(sizes[i]);
    std::vector<uint8_t> want(data_.begin() + static_cast<ptrdiff_t>(i * 1024),
                              data_.begin() + static_cast<ptrdiff_t>(i * 1024 + sizes[i]));
    EXPECT_TRUE(seen == want) << "tensor " << i;
  }
  EXPECT_EQ(ConsumerLeases(), 1u) << "three slots of one arena should share one lease";
  consumer.channel().SendLine("go");
  EXPECT_EQ(consumer.Wait(), 0);
}

TEST_F(CApiTest, AttachManyIsAllOrNoneAndNamesTheMissingSlot) {
  gpb_client* c = ConnectC("consumer");
  const char* names[] = {"m/t0", "m/missing", "m/t2"};
  gpb_view* views[3] = {};
  gpb_error err{};
  EXPECT_EQ(gpb_attach_many(c, names, 3, 0, views, &err), GPB_NOT_FOUND);
  EXPECT_NE(std::string(err.message).find("m/missing"), std::string::npos) << err.message;
  EXPECT_EQ(views[0], nullptr);
  EXPECT_EQ(ConsumerLeases(), 0u) << "the view of m/t0 outlived a failed batch";
  const char* null_name[] = {"m/t0", nullptr};
  EXPECT_EQ(gpb_attach_many(c, null_name, 2, 0, views, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("names[1]"), std::string::npos) << err.message;
  EXPECT_EQ(gpb_attach_many(c, nullptr, 0, 0, nullptr, &err), GPB_OK);  // nothing asked, nothing done
  gpb_client_release(c);
}

TEST_F(CApiTest, AbiVersionAndLayoutDescribeThisHeader) {
  EXPECT_EQ(gpb_abi_version(), uint32_t{GPB_ABI_VERSION});
  const std::string layout = gpb_abi_layout();
  EXPECT_NE(layout.find("struct gpb_slot_info " + std::to_string(sizeof(gpb_slot_info)) + "\n"), std::string::npos)
      << layout;
  EXPECT_NE(layout.find("  lease_count " + std::to_string(offsetof(gpb_slot_info, lease_count)) + " 4\n"),
            std::string::npos)
      << layout;
  EXPECT_NE(layout.find("struct gpb_create_args " + std::to_string(sizeof(gpb_create_args)) + "\n"),
            std::string::npos)
      << layout;
}

// Where no GPU is, a batched copy is refused by name and the caller copies
// another way (Python's copy_into falls back to a copy per tensor); with one,
// the GPU suite's python_gpu_test runs it. Bad arguments are named either way.
TEST_F(CApiTest, CopyPlanArgumentsAreCheckedAndNoGpuIsUnsupported) {
  gpb_error err{};
  gpb_copy_plan* plan = nullptr;
  EXPECT_EQ(gpb_copy_plan_create(0, nullptr, 1, &plan, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("copies"), std::string::npos) << err.message;
  gpb_copy one{reinterpret_cast<const void*>(0x1000), reinterpret_cast<void*>(0x2000), 16};
  EXPECT_EQ(gpb_copy_plan_create(0, &one, 1, nullptr, &err), GPB_INVALID_ARGUMENT);
  EXPECT_EQ(gpb_copy_plan_run(nullptr, nullptr, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("plan"), std::string::npos) << err.message;
  EXPECT_EQ(gpb_copy_plan_create(0, &one, 0, &plan, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("at least one copy"), std::string::npos) << err.message;
  uint8_t uuid[16];
  gpb_error probe{};
  if (gpb_device_uuid(0, uuid, &probe) != GPB_OK) {  // no driver or no device 0 here
    EXPECT_EQ(gpb_copy_plan_create(0, &one, 1, &plan, &err), GPB_UNSUPPORTED);
    EXPECT_EQ(plan, nullptr);
  } else {
    EXPECT_EQ(gpb_copy_plan_create(1 << 20, &one, 1, &plan, &err), GPB_INVALID_ARGUMENT);
    EXPECT_NE(std::string(err.message).find("no CUDA device"), std::string::npos) << err.message;
  }
  gpb_copy_plan_destroy(nullptr);  // a no-op, as free(NULL)
}

// A caller built against a smaller gpb_slot_info gets no byte written past
// it; a caller that forgot struct_size is told so.
TEST_F(CApiTest, StructSizeBoundsWhatTheLibraryReadsAndWrites) {
  gpb_client* c = ConnectC("consumer");
  gpb_error err{};
  gpb_slot_info info{};
  EXPECT_EQ(gpb_stat(c, "m/t1", &info, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("struct_size"), std::string::npos) << err.message;

  // An older caller's struct: the size and the name only.
  const uint32_t older = offsetof(gpb_slot_info, generation);
  std::memset(&info, 0xAB, sizeof info);
  info.struct_size = older;
  ASSERT_EQ(gpb_stat(c, "m/t1", &info, &err), GPB_OK) << err.message;
  EXPECT_EQ(info.struct_size, older);
  EXPECT_STREQ(info.name, "m/t1");
  const auto* bytes = reinterpret_cast<const uint8_t*>(&info);
  for (size_t i = older; i < sizeof info; ++i) ASSERT_EQ(bytes[i], 0xAB) << "byte " << i << " written";

  info.struct_size = sizeof info;
  ASSERT_EQ(gpb_lookup(c, "m/t1", &info, &err), GPB_OK) << err.message;
  EXPECT_EQ(info.struct_size, sizeof info);
  EXPECT_EQ(info.shape[0], 100);

  const int64_t shape[] = {4};
  gpb_create_args args{};
  args.name = "new";
  args.dtype = {2, 8, 1};
  args.ndim = 1;
  args.shape = shape;
  args.device = -1;
  args.mode = 0600;
  EXPECT_EQ(gpb_create(c, &args, nullptr, nullptr, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("gpb_create_args.struct_size"), std::string::npos) << err.message;
  args.struct_size = sizeof args;
  EXPECT_EQ(gpb_create(c, &args, nullptr, nullptr, &err), GPB_OK) << err.message;
  // A second run of the same program: GPB_CREATE_EXIST_OK returns the slot.
  EXPECT_EQ(gpb_create(c, &args, nullptr, nullptr, &err), GPB_ALREADY_EXISTS);
  args.flags = GPB_CREATE_EXIST_OK;
  ASSERT_EQ(gpb_create(c, &args, nullptr, &info, &err), GPB_OK) << err.message;
  EXPECT_STREQ(info.name, "new");
  args.flags = 4;
  EXPECT_EQ(gpb_create(c, &args, nullptr, nullptr, &err), GPB_INVALID_ARGUMENT);
  EXPECT_NE(std::string(err.message).find("unknown bits 4"), std::string::npos) << err.message;
  gpb_client_release(c);

  // Timeouts through the C ABI: -1 keeps a default, below that is refused.
  gpb_client* timed = nullptr;
  ASSERT_EQ(gpb_connect_with(broker_->socket().c_str(), "timed", -1, 0, &timed, &err), GPB_OK) << err.message;
  gpb_client_release(timed);
  EXPECT_EQ(gpb_connect_with(broker_->socket().c_str(), "timed", -2, 0, &timed, &err), GPB_INVALID_ARGUMENT);
}

// An exception inside the library (here std::bad_alloc, in a process whose
// address space is capped) comes back as a code, not as a crash. Not built
// under AddressSanitizer, which cannot run under an address-space cap; the
// plain build runs it.
#if !defined(__SANITIZE_ADDRESS__)
TEST_F(CApiTest, AnExceptionInsideTheLibraryIsAReturnedCode) {
  gpb_client* c = ConnectC("consumer");
  pid_t pid = ::fork();
  if (pid == 0) {
    rlimit cap{};
    cap.rlim_cur = cap.rlim_max = 1ull << 30;  // far above what the child uses, far below what it asks for
    if (::setrlimit(RLIMIT_AS, &cap) != 0) ::_exit(100);
    const char* names[] = {"m/t0"};
    gpb_view* out[1] = {};
    gpb_error err{};
    // Room for 2^32 names is asked before any name is read.
    int32_t rc = gpb_attach_many(c, names, size_t{1} << 32, 0, out, &err);
    ::_exit(rc == GPB_RESOURCE_EXHAUSTED && std::strstr(err.message, "out of memory") != nullptr ? 0 : 101);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  gpb_client_release(c);
}
#endif

TEST_F(CApiTest, DlpackTensorDescribesTheViewAndHoldsTheLeaseUntilDeleted) {
  gpb_client* c = ConnectC("consumer");
  gpb_view* view = nullptr;
  gpb_error err{};
  ASSERT_EQ(gpb_attach(c, "m/t2", 0, &view, &err), GPB_OK) << err.message;
  void* legacy = nullptr;
  ASSERT_EQ(gpb_view_dlpack(view, 0, &legacy, &err), GPB_OK) << err.message;
  auto* m = static_cast<ManagedView*>(legacy);
  EXPECT_EQ(m->t.data, gpb_view_data(view));
  EXPECT_EQ(std::memcmp(m->t.data, data_.data() + 2048, 3 * 5 * 7 * 4), 0);
  EXPECT_EQ(m->t.device_type, 1);  // kDLCPU
  EXPECT_EQ(m->t.ndim, 3);
  EXPECT_EQ(std::vector<int64_t>(m->t.shape, m->t.shape + 3), (std::vector<int64_t>{3, 5, 7}));
  EXPECT_EQ(std::vector<int64_t>(m->t.strides, m->t.strides + 3), (std::vector<int64_t>{35, 7, 1}));
  EXPECT_EQ(m->t.code, 2);  // kDLFloat
  EXPECT_EQ(m->t.bits, 32);
  EXPECT_EQ(m->t.lanes, 1);
  EXPECT_EQ(m->t.byte_offset, 0u);

  gpb_view_release(view);  // the tensor keeps its own reference
  EXPECT_EQ(ConsumerLeases(), 1u);
  EXPECT_EQ(std::memcmp(m->t.data, data_.data() + 2048, 3 * 5 * 7 * 4), 0);
  m->deleter(m);  // as a consumer does when its array goes
  EXPECT_EQ(ConsumerLeases(), 0u);

  gpb_view* readonly = nullptr;
  ASSERT_EQ(gpb_attach(c, "m/t1", 1, &readonly, &err), GPB_OK) << err.message;
  void* versioned = nullptr;
  ASSERT_EQ(gpb_view_dlpack(readonly, 1, &versioned, &err), GPB_OK) << err.message;
  auto* mv = static_cast<ManagedVersionedView*>(versioned);
  EXPECT_EQ(mv->major, 1u);
  EXPECT_EQ(mv->flags & 1, 1u) << "a read-only view must export a read-only tensor";
  EXPECT_EQ(mv->t.data, gpb_view_data(readonly));
  EXPECT_EQ(mv->t.shape[0], 100);
  gpb_view_release(readonly);
  gpb_dlpack_delete(versioned, 1);  // no consumer took it
  EXPECT_EQ(ConsumerLeases(), 0u);

  EXPECT_EQ(gpb_view_dlpack(nullptr, 0, &legacy, &err), GPB_INVALID_ARGUMENT);
  gpb_client_release(c);
}

TEST_F(CApiTest, AttachManyAsDlpackIsAllOrNone) {
  gpb_client* c = ConnectC("consumer");
  const char* names[] = {"m/t0", "m/t1", "m/t2"};
  void* managed[3] = {};
  gpb_error err{};
  ASSERT_EQ(gpb_attach_many_dlpack(c, names, 3, 0, 0, managed, &err), GPB_OK) << err.message;
  const size_t offsets[] = {0, 1024, 2048};
  const int64_t first_dims[] = {8, 100, 3};
  for (int i = 0; i < 3; ++i) {
    auto* m = static_cast<ManagedView*>(managed[i]);
    EXPECT_EQ(m->t.shape[0], first_dims[i]);
    EXPECT_EQ(std::memcmp(m->t.data, data_.data() + offsets[i], 32), 0) << "tensor " << i;
  }
  EXPECT_EQ(ConsumerLeases(), 1u) << "the tensors share the arena's one lease";
  for (void* m : managed) gpb_dlpack_delete(m, 0);
  EXPECT_EQ(ConsumerLeases(), 0u);

  const char* with_missing[] = {"m/t0", "m/t1", "m/none"};
  EXPECT_EQ(gpb_attach_many_dlpack(c, with_missing, 3, 0, 1, managed, &err), GPB_NOT_FOUND);
  EXPECT_NE(std::string(err.message).find("m/none"), std::string::npos) << err.message;
  EXPECT_EQ(ConsumerLeases(), 0u) << "tensors of a failed batch were kept";
  gpb_client_release(c);
}

}  // namespace
}  // namespace gpubroker::testing

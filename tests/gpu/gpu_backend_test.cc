// Both CUDA backends end to end on a real GPU: a real broker, the test
// process as producer, consumers exec'd as separate processes. Skips (with the
// reason) where there is no CUDA driver or device.
#include <execinfo.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <random>
#include <sstream>

#include "common/cuda_driver.h"
#include "tests/integration/harness.h"
#include "tests/gpu/kernels.h"
#include "client/src/channel.h"
#include "common/registry_reader.h"
#include <algorithm>
#include <fstream>
#include "tests/integration/service_harness.h"
#include "tests/support/require.h"

namespace gpubroker::testing {
namespace {

// For a case that hangs on the device (docs/gpu-testing.md, "Known open"):
// each step of it on stderr with the time, and the stack of the thread that
// takes SIGUSR1 (the main one, unless it blocks it) written there too.
void Step(const char* what) {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  std::fprintf(stderr, "[step %ld.%03ld] %s\n", static_cast<long>(ts.tv_sec), ts.tv_nsec / 1000000, what);
}

void WriteStack(int) {
  void* frames[64];
  const int n = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, n, STDERR_FILENO);
}

const bool kStackOnSigusr1 = [] {
  ::signal(SIGUSR1, WriteStack);
  return true;
}();

uint64_t FreshSeed() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng();
}

class GpuTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto driver = CudaDriver::Get();
    GPUBROKER_NEEDS_GPU(driver.ok(), driver.status().message());
    broker_ = BrokerProcess::Start();
    ASSERT_NE(broker_, nullptr);
    auto c = broker_->Connect("gpu-test");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_.emplace(std::move(c).value());
  }
  void TearDown() override {
    client_.reset();
    if (broker_) {
      EXPECT_EQ(broker_->Stop(SIGTERM), 0);
    }
  }

  BackendKind backend() const { return *ParseBackend(GetParam()); }

  CreateOptions Words(const std::string& name, size_t bytes, int device = -1) {
    CreateOptions o;
    o.name = name;
    o.backend = backend();
    o.dtype = *ParseDType("uint64");
    o.shape = {static_cast<int64_t>(bytes / 8)};
    o.device = device;
    o.mode = 0666;
    return o;
  }

  // Runs gpu_peer and returns its first output line.
  std::unique_ptr<ChildProcess> Peer(std::vector<std::string> args,
                                     std::vector<std::pair<std::string, std::string>> env = {}) {
    args.insert(args.begin(), {GPU_PEER_PATH, broker_->socket()});
    return ChildProcess::Exec(args, env);
  }

  std::unique_ptr<BrokerProcess> broker_;
  std::optional<Client> client_;
};

TEST_P(GpuTest, ConsumerProcessChecksEveryElementAndWritesBack) {
  const size_t bytes = 64u << 20;
  auto v = client_->CreateAndAttach(Words("data", bytes));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->device().type, Device::kCuda);
  uint64_t seed = FreshSeed(), reply_seed = FreshSeed();
  ASSERT_TRUE(gpu::SetDevice(v->device().ordinal));
  ASSERT_TRUE(gpu::FillPattern(v->data(), bytes, seed));

  auto consumer = Peer({"check", "data", std::to_string(seed), std::to_string(reply_seed)});
  std::string line = consumer->channel().ReceiveLine();
  EXPECT_EQ(line.rfind("mismatches 0 ", 0), 0u) << line;
  EXPECT_EQ(consumer->channel().ReceiveLine(), "written");
  EXPECT_EQ(consumer->Wait(), 0);
  EXPECT_EQ(gpu::CountMismatches(v->data(), bytes, reply_seed), 0) << "producer does not see the consumer's writes";
  EXPECT_GT(gpu::CountMismatches(v->data(), bytes, seed), 0);  // the check can fail
}

TEST_P(GpuTest, ArenaOfManySlotsIsOpenedOncePerProcess) {
  const int kSlots = 100;
  const size_t slot_bytes = 256 * 1024;
  auto arena = client_->CreateAndAttach(Words("arena", kSlots * slot_bytes));
  ASSERT_TRUE(arena.ok()) << arena.status().ToString();
  ASSERT_TRUE(gpu::SetDevice(arena->device().ordinal));
  uint64_t seed = FreshSeed();
  for (int i = 0; i < kSlots; ++i) {
    CreateOptions o = Words("arena/" + std::to_string(i), slot_bytes);
    o.base = "arena";
    o.byte_offset = static_cast<uint64_t>(i) * slot_bytes;
    o.backend.reset();
    ASSERT_TRUE(client_->Create(o).ok());
    ASSERT_TRUE(gpu::FillPattern(static_cast<char*>(arena->data()) + o.byte_offset, slot_bytes,
                                 seed + static_cast<uint64_t>(i)));
  }
  auto consumer = Peer({"check-many", "arena", std::to_string(kSlots), std::to_string(seed)});
  EXPECT_EQ(consumer->channel().ReceiveLine(), "mismatches 0");
  auto leases = client_->Leases();
  ASSERT_TRUE(leases.ok());
  uint32_t consumer_leases = 0;
  for (const auto& l : *leases) {
    if (l.client_id != client_->client_id()) consumer_leases += l.count;
  }
  EXPECT_EQ(consumer_leases, 1u) << "100 slots of one allocation should cost one open";
  consumer->channel().SendLine("done");
  EXPECT_EQ(consumer->Wait(), 0);
}

TEST_P(GpuTest, KilledConsumerIsReclaimedAndMemoryReturnsAfterDestroy) {
  const size_t bytes = 1ull << 30;
  ASSERT_TRUE(gpu::SetDevice(0));
  // The broker's context on device 0 comes with its first allocation there:
  // make it before the baseline.
  ASSERT_TRUE(client_->Create(Words("warm-up", 1u << 20, 0)).ok());
  ASSERT_TRUE(client_->Destroy("warm-up").ok());
  size_t free0 = 0, total = 0, free1 = 0;
  ASSERT_TRUE(gpu::MemInfo(&free0, &total));
  ASSERT_TRUE(client_->Create(Words("big", bytes, 0)).ok());
  auto holder = Peer({"hold", "big"});
  ASSERT_EQ(holder->channel().ReceiveLine(), "holding");
  ASSERT_TRUE(gpu::MemInfo(&free1, &total));
  EXPECT_LE(free1 + bytes, free0 + (4u << 20)) << "the slot did not take device memory";
  EXPECT_EQ(client_->Stat("big")->lease_count, 1u);
  holder->Kill(SIGKILL);
  EXPECT_EQ(holder->Wait(), 128 + SIGKILL);
  EXPECT_TRUE(WaitFor([&] { return client_->Stat("big")->lease_count == 0; }));
  ASSERT_TRUE(client_->Destroy("big").ok());
  size_t free2 = 0;
  EXPECT_TRUE(WaitFor([&] { return gpu::MemInfo(&free2, &total) && free2 + (4u << 20) >= free0; }))
      << "free " << free2 << " vs baseline " << free0;
}

TEST_P(GpuTest, DataOutlivesAProducerThatExited) {
  const size_t bytes = 32u << 20;
  uint64_t seed = FreshSeed();
  auto producer = Peer({"produce", "orphaned", GetParam(), std::to_string(bytes), std::to_string(seed)});
  ASSERT_EQ(producer->channel().ReceiveLine(), "done");
  ASSERT_EQ(producer->Wait(), 0);  // gone, with its context
  auto consumer = Peer({"check", "orphaned", std::to_string(seed)});
  std::string line = consumer->channel().ReceiveLine();
  EXPECT_EQ(line.rfind("mismatches 0 ", 0), 0u) << line;
  EXPECT_EQ(consumer->Wait(), 0);
}

TEST_P(GpuTest, OutOfDeviceMemoryIsAClearErrorAndServiceGoesOn) {
  Status s = client_->Create(Words("huge", 1ull << 40)).status();  // 1 TiB
  EXPECT_EQ(s.code(), Code::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("out of device memory"), std::string::npos) << s.message();
  auto ok = client_->CreateAndAttach(Words("after-oom", 1u << 20));
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
}

TEST_P(GpuTest, BufferOnOneGpuIsReadFromTheOther) {
  GPUBROKER_NEEDS_GPUS(gpu::DeviceCount(), 2);
  const size_t bytes = 16u << 20;
  auto v = client_->CreateAndAttach(Words("on-gpu1", bytes, 1));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->device().ordinal, 1);
  uint64_t seed = FreshSeed();
  ASSERT_TRUE(gpu::SetDevice(1));
  ASSERT_TRUE(gpu::FillPattern(v->data(), bytes, seed));
  auto reader = Peer({"check-on", "0", "on-gpu1", std::to_string(seed)});
  std::string line = reader->channel().ReceiveLine();
  EXPECT_EQ(line, "mismatches 0 ordinal 1") << line;
  EXPECT_EQ(reader->Wait(), 0);
}

TEST_P(GpuTest, ProcessesWithDifferentVisibleDevicesAgreeByUuid) {
  GPUBROKER_NEEDS_GPUS(gpu::DeviceCount(), 2);
  const size_t bytes = 8u << 20;
  auto v = client_->CreateAndAttach(Words("by-uuid", bytes, 1));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  std::string uuid = FormatUuid(v->device().uuid);
  uint64_t seed = FreshSeed();
  ASSERT_TRUE(gpu::SetDevice(1));
  ASSERT_TRUE(gpu::FillPattern(v->data(), bytes, seed));
  struct Case {
    std::string visible;
    int ordinal;
  } cases[] = {{"1", 0}, {"1,0", 0}, {"0,1", 1}};
  for (const auto& c : cases) {
    auto peer = Peer({"check", "by-uuid", std::to_string(seed)}, {{"CUDA_VISIBLE_DEVICES", c.visible}});
    std::string line = peer->channel().ReceiveLine();
    EXPECT_EQ(line, "mismatches 0 ordinal " + std::to_string(c.ordinal) + " uuid " + uuid)
        << "CUDA_VISIBLE_DEVICES=" << c.visible;
    EXPECT_EQ(peer->Wait(), 0);
  }
}

TEST_P(GpuTest, KilledBrokerLeavesGpuViewsReadableAndANewBrokerServes) {
  const size_t bytes = 32u << 20;
  auto v = client_->CreateAndAttach(Words("crash", bytes, 0));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  uint64_t seed = FreshSeed();
  ASSERT_TRUE(gpu::SetDevice(v->device().ordinal));
  ASSERT_TRUE(gpu::FillPattern(v->data(), bytes, seed));
  broker_->Stop(SIGKILL);
  EXPECT_EQ(gpu::CountMismatches(v->data(), bytes, seed), 0) << "a view died with the broker";
  Status s = client_->Stat("crash").status();
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("broker unavailable"), std::string::npos) << s.message();
  auto next = BrokerProcess::Restart(*broker_);
  ASSERT_NE(next, nullptr) << "a new broker did not replace the stale registry";
  auto c = next->Connect();
  ASSERT_TRUE(c.ok());
  auto fresh = c->CreateAndAttach(Words("after-crash", 1u << 20, 0));
  EXPECT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_EQ(gpu::CountMismatches(v->data(), bytes, seed), 0);
  v->reset();
  client_.reset();
  EXPECT_EQ(next->Stop(SIGTERM), 0);
  broker_.reset();
}

TEST_P(GpuTest, DeviceByteLimitIsItsOwnError) {
  broker_->Stop(SIGTERM);
  broker_ = BrokerProcess::Start({"--max-bytes-per-device", "64MiB"});
  ASSERT_NE(broker_, nullptr);
  auto c = broker_->Connect();
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->Create(Words("fits", 32u << 20, 0)).ok());
  Status s = c->Create(Words("over", 48u << 20, 0)).status();
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_NE(s.message().find("device byte limit"), std::string::npos) << s.message();
  ASSERT_TRUE(c->Destroy("fits").ok());
  EXPECT_TRUE(c->Create(Words("over", 48u << 20, 0)).ok()) << "freed bytes were not returned";
  client_.reset();
}

INSTANTIATE_TEST_SUITE_P(Backends, GpuTest, ::testing::Values("cuda_vmm", "cuda_ipc"),
                         [](const auto& info) { return info.param; });

// Legacy IPC handles are bearer tokens: in the shared registry only for
// slots every local user may read.
TEST(GpuIpcHandles, OnlyWorldReadableSlotsExposeTheirHandle) {
  GPUBROKER_NEEDS_GPU(CudaDriver::Get().ok(), "no CUDA driver here");
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());
  auto registry = broker->OpenRegistry();
  ASSERT_TRUE(registry.ok());
  auto handle_of = [&](const std::string& name) {
    auto d = registry->Lookup(name);
    EXPECT_TRUE(d.ok());
    return std::vector<uint8_t>(d->ipc_handle, d->ipc_handle + sizeof d->ipc_handle);
  };
  const std::vector<uint8_t> zero(64, 0);
  for (uint32_t mode : {0600u, 0640u, 0660u, 0644u, 0604u}) {
    CreateOptions o;
    o.name = "ipc/" + std::to_string(mode);
    o.backend = BackendKind::kCudaIpc;
    o.shape = {1 << 20};
    o.mode = mode;
    ASSERT_TRUE(c->Create(o).ok());
    bool world = (mode & 04) != 0;
    EXPECT_EQ(handle_of(o.name) != zero, world) << "mode " << std::oct << mode;
  }
  // And byte for byte: the real handle of a private slot appears nowhere in the segment.
  ConnectOptions co = broker->Options("scanner");
  auto conn = gpubroker::Channel::Open(co);
  ASSERT_TRUE(conn.ok());
  wire::AttachRequest attach{};
  attach.name.set("ipc/384");  // mode 0600
  UniqueFd none;
  auto reply = (*conn)->Call<wire::AttachReply>(attach, &none);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  std::vector<uint8_t> secret(reply->slot.ipc_handle, reply->slot.ipc_handle + 64);
  ASSERT_NE(secret, zero) << "the owner's attach reply carries the handle";
  auto segment = broker->RegistryFd();
  ASSERT_TRUE(segment.ok()) << segment.status().ToString();
  std::vector<uint8_t> bytes(1 << 24);
  ssize_t got = ::pread(segment->get(), bytes.data(), bytes.size(), 0);
  ASSERT_GT(got, 4096);
  bytes.resize(static_cast<size_t>(got));
  EXPECT_EQ(std::search(bytes.begin(), bytes.end(), secret.begin(), secret.end()), bytes.end())
      << "a private slot's IPC handle is readable in shared memory";
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

// A broker restart through the service manager's fd store: cuda_vmm memory
// lives on (a bare exported fd keeps it), a holder's mapping stays valid, a
// new consumer reads every element; legacy cuda_ipc slots cannot survive.
TEST(GpuService, WarmRestartKeepsVmmBuffers) {
  GPUBROKER_NEEDS_GPU(CudaDriver::Get().ok(), "no CUDA driver here");
  Step("start");
  ServiceHarness manager;
  auto broker = BrokerProcess::Start(manager.Options());
  ASSERT_NE(broker, nullptr);
  ASSERT_TRUE(manager.Expect("READY=1"));
  ConnectOptions options = broker->Options("holder");
  options.reconnect_timeout_ms = 10000;
  auto holder = Client::Connect(options);
  ASSERT_TRUE(holder.ok());
  const size_t bytes = 256u << 20;
  CreateOptions o;
  o.name = "warm/gpu";
  o.backend = BackendKind::kCudaVmm;
  o.dtype = *ParseDType("uint64");
  o.shape = {static_cast<int64_t>(bytes / 8)};
  o.device = 0;
  o.mode = 0666;
  auto v = holder->CreateAndAttach(o);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  Step("created");
  uint64_t seed = FreshSeed();
  ASSERT_TRUE(gpu::SetDevice(v->device().ordinal));
  ASSERT_TRUE(gpu::FillPattern(v->data(), bytes, seed));
  CreateOptions legacy = o;
  legacy.name = "warm/legacy";
  legacy.backend = BackendKind::kCudaIpc;
  legacy.shape = {1024};
  ASSERT_TRUE(holder->Create(legacy).ok());

  Step("filled; stopping the broker");
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
  Step("stopped; checking the mapping");
  EXPECT_EQ(gpu::CountMismatches(v->data(), bytes, seed), 0) << "mapping lost while the broker was down";
  Step("checked; restarting");
  auto next = BrokerProcess::Restart(*broker, manager.RestartOptions());
  ASSERT_NE(next, nullptr);
  ASSERT_TRUE(manager.Expect("READY=1"));

  Step("ready again; the consumer");
  auto consumer = ChildProcess::Exec({GPU_PEER_PATH, next->socket(), "check", "warm/gpu", std::to_string(seed)});
  std::string line = consumer->channel().ReceiveLine();
  Step("the consumer answered");
  EXPECT_EQ(line.rfind("mismatches 0 ", 0), 0u) << line;
  EXPECT_EQ(consumer->Wait(), 0);
  Step("the consumer exited");
  EXPECT_EQ(gpu::CountMismatches(v->data(), bytes, seed), 0);
  Step("consumer done; checked again, reconnecting");
  auto stat = holder->Stat("warm/gpu");  // reconnects, re-takes the lease
  ASSERT_TRUE(stat.ok()) << stat.status().ToString();
  EXPECT_EQ(stat->lease_count, 1u);
  EXPECT_EQ(holder->Stat("warm/legacy").status().code(), Code::kNotFound);
  Step("reconnected; stopping");
  v->reset();
  EXPECT_EQ(next->Stop(SIGTERM), 0);
  Step("done");
}

TEST(GpuDriver, WithoutADriverGpuRequestsFailCleanly) {
  GPUBROKER_NEEDS(!CudaDriver::Get().ok(), false, "a machine without a CUDA driver");
  auto broker = BrokerProcess::Start();
  ASSERT_NE(broker, nullptr);
  auto c = broker->Connect();
  ASSERT_TRUE(c.ok());
  CreateOptions o;
  o.name = "gpu";
  o.shape = {16};
  o.backend = BackendKind::kCudaVmm;
  Status s = c->Create(o).status();
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("no CUDA driver on this host"), std::string::npos) << s.message();
  o.backend.reset();  // the default is host memory here
  auto v = c->CreateAndAttach(o);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->device().type, Device::kCpu);
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

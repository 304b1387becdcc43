#include "registry.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <atomic>
#include <random>
#include <thread>

#include "registry_reader.h"
#include "wire.h"

namespace bip = boost::interprocess;

namespace gpubroker {
namespace {

std::string UniqueName() {
  static int counter = 0;
  return "gpbtest-reg-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

SlotDescriptor Slot(const std::string& name, int64_t n = 4) {
  SlotDescriptor d{};
  std::strncpy(d.name, name.c_str(), sizeof d.name - 1);
  d.backend = static_cast<uint16_t>(BackendKind::kHost);
  d.dtype_code = DType::kUInt;
  d.dtype_bits = 8;
  d.dtype_lanes = 1;
  d.ndim = 1;
  d.shape[0] = n;
  d.strides[0] = 1;
  d.nbytes = static_cast<uint64_t>(n);
  d.allocation_bytes = static_cast<uint64_t>(n);
  return d;
}

std::unique_ptr<Registry> Make(const std::string& name, uint32_t capacity = 64) {
  RegistryOptions o;
  o.name = name;
  o.capacity = capacity;
  o.boot_generation = 5;
  auto r = Registry::Create(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

TEST(Registry, ReaderSeesInsertsUpdatesAndRemovals) {
  std::string name = UniqueName();
  auto reg = Make(name);
  auto reader = RegistryReader::Open(name);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->boot_generation(), 5u);
  EXPECT_TRUE(reader->BrokerAlive());

  auto index = reg->Insert(Slot("a/b", 16));
  ASSERT_TRUE(index.ok());
  auto found = reader->Lookup("a/b");
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(found->shape[0], 16);
  EXPECT_EQ(found->generation, 1u);

  SlotDescriptor d = reg->Get(*index);
  d.lease_count = 3;
  reg->Update(*index, d);
  EXPECT_EQ(reader->Lookup("a/b")->lease_count, 3u);

  EXPECT_EQ(reg->Insert(Slot("a/b")).status().code(), Code::kAlreadyExists);
  reg->Remove(*index);
  EXPECT_EQ(reader->Lookup("a/b").status().code(), Code::kNotFound);
  auto again = reg->Insert(Slot("a/b"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(reader->Lookup("a/b")->generation, 2u);  // the entry was reused
}

TEST(Registry, FullTableIsAnError) {
  auto reg = Make(UniqueName(), 3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reg->Insert(Slot("s" + std::to_string(i))).ok());
  Status s = reg->Insert(Slot("one-more")).status();
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_NE(s.message().find("full"), std::string::npos);
}

TEST(Registry, ChurnKeepsTheIndexExact) {
  std::string name = UniqueName();
  auto reg = Make(name, 128);
  auto reader = RegistryReader::Open(name);
  ASSERT_TRUE(reader.ok());
  std::mt19937 rng(std::random_device{}());
  std::map<std::string, uint32_t> live;
  for (int step = 0; step < 20000; ++step) {  // many removals: forces index rebuilds
    std::string n = "n" + std::to_string(rng() % 300);
    auto it = live.find(n);
    if (it != live.end()) {
      reg->Remove(it->second);
      live.erase(it);
    } else if (live.size() < 128) {
      auto index = reg->Insert(Slot(n));
      ASSERT_TRUE(index.ok());
      live[n] = *index;
    }
  }
  for (int i = 0; i < 300; ++i) {
    std::string n = "n" + std::to_string(i);
    auto found = reader->Lookup(n);
    EXPECT_EQ(found.ok(), live.count(n) == 1) << n;
  }
  EXPECT_EQ(reader->ListLive().size(), live.size());
}

TEST(Registry, ReadersNeverSeeTornSlots) {
  std::string name = UniqueName();
  auto reg = Make(name);
  SlotDescriptor first = Slot("hot", 1);
  first.version = 1;
  first.lease_count = 1;
  auto index = reg->Insert(first);
  ASSERT_TRUE(index.ok());
  std::atomic<bool> done{false};
  std::atomic<int64_t> reads{0};
  std::atomic<int64_t> torn{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      auto reader = RegistryReader::Open(name);
      if (!reader.ok()) return;
      while (!done.load()) {
        auto d = reader->Lookup("hot");
        if (!d.ok()) continue;
        ++reads;
        // The writer keeps version == shape == strides == lease_count.
        int64_t v = static_cast<int64_t>(d->version);
        if (d->shape[0] != v || d->strides[0] != 1 || d->lease_count != d->version ||
            d->nbytes != d->version || d->allocation_bytes != d->version) {
          ++torn;
        }
      }
    });
  }
  // Write until the readers have overlapped many writes (bounded either way).
  for (uint64_t v = 1; v <= 50'000'000 && (v < 100'000 || reads.load() < 100'000); ++v) {
    SlotDescriptor d = Slot("hot", static_cast<int64_t>(v));
    d.version = v;
    d.lease_count = static_cast<uint32_t>(v);
    reg->Update(*index, d);
  }
  done = true;
  for (auto& t : readers) t.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(torn.load(), 0);
}

TEST(Registry, SegmentOfADeadBrokerIsReplaced) {
  std::string name = UniqueName();
  pid_t child = ::fork();
  if (child == 0) {
    RegistryOptions o;
    o.name = name;
    o.capacity = 8;
    auto r = Registry::Create(o);
    if (!r.ok()) ::_exit(1);
    (void)r->release();  // leave the segment behind, as a crash would
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  auto stale = RegistryReader::Open(name);
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(stale->BrokerAlive());
  auto reg = Make(name);
  ASSERT_NE(reg, nullptr);
  EXPECT_EQ(reg->capacity(), 64u);
}

TEST(Registry, SegmentOfALiveBrokerIsRefused) {
  std::string name = UniqueName();
  int go[2], ready[2];
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  if (child == 0) {
    RegistryOptions o;
    o.name = name;
    auto r = Registry::Create(o);
    char c = r.ok() ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    (void)!::read(go[0], &c, 1);
    ::_exit(0);  // the destructor does not run: the segment stays
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  RegistryOptions o;
  o.name = name;
  Status s = Registry::Create(o).status();
  EXPECT_EQ(s.code(), Code::kAlreadyExists);
  EXPECT_NE(s.message().find(std::to_string(child)), std::string::npos) << s.message();
  (void)!::write(go[1], "x", 1);
  ::waitpid(child, nullptr, 0);
  bip::shared_memory_object::remove(name.c_str());
}

TEST(Registry, SegmentOfAnotherLayoutVersionIsRefused) {
  std::string name = UniqueName();
  {
    bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write);
    shm.truncate(4096);
    bip::mapped_region region(shm, bip::read_write);
    auto* h = static_cast<RegistryHeader*>(region.get_address());
    h->layout_version = 99;
    h->magic.store(kRegistryMagic);
  }
  RegistryOptions o;
  o.name = name;
  Status s = Registry::Create(o).status();
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("layout version 99"), std::string::npos) << s.message();
  EXPECT_EQ(RegistryReader::Open(name).status().code(), Code::kUnsupported);
  bip::shared_memory_object::remove(name.c_str());
}

TEST(Registry, StoppedBrokerRemovesItsSegment) {
  std::string name = UniqueName();
  { auto reg = Make(name); }
  EXPECT_EQ(RegistryReader::Open(name).status().code(), Code::kUnavailable);
}

}  // namespace
}  // namespace gpubroker

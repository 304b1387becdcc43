#include "broker/registry.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "common/registry_reader.h"
#include "common/wire.h"

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
  d.nbuffers = 1;
  d.buffer_bytes = d.allocation_bytes;
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

Result<RegistryReader> Reader(const Registry& reg) {
  GPB_ASSIGN_OR_RETURN(UniqueFd fd, reg.Share());
  return RegistryReader::FromFd(std::move(fd));
}

TEST(Registry, ReaderSeesInsertsUpdatesAndRemovals) {
  std::string name = UniqueName();
  auto reg = Make(name);
  auto reader = Reader(*reg);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->boot_generation(), 5u);
  EXPECT_TRUE(reader->Running());

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
  auto reader = Reader(*reg);
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
      auto reader = Reader(*reg);
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

TEST(Registry, NothingInDevShm) {
  std::string name = UniqueName();
  auto reg = Make(name);
  ASSERT_NE(reg, nullptr);
  EXPECT_FALSE(std::filesystem::exists("/dev/shm/" + name));
}

// What a client receives cannot be made to write the registry, by any road:
// a writable mapping, write(), resizing, or a reopen through /proc (which,
// run as root, the mode does not stop: the seal does).
TEST(Registry, SharedDescriptorCannotWrite) {
  auto reg = Make(UniqueName());
  ASSERT_TRUE(reg->Insert(Slot("a")).ok());
  auto fd = reg->Share();
  ASSERT_TRUE(fd.ok());
  struct stat st {};
  ASSERT_EQ(::fstat(fd->get(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0444u);
  EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0), MAP_FAILED);
  void* ro = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd->get(), 0);
  ASSERT_NE(ro, MAP_FAILED);
  EXPECT_NE(::mprotect(ro, 4096, PROT_READ | PROT_WRITE), 0);
  ::munmap(ro, 4096);
  EXPECT_LT(::write(fd->get(), "x", 1), 0);
  EXPECT_NE(::ftruncate(fd->get(), 0), 0);
  std::string path = "/proc/self/fd/" + std::to_string(fd->get());
  UniqueFd rw(::open(path.c_str(), O_RDWR));
  if (rw.valid()) {  // root: the mode does not bind, the seal does
    EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rw.get(), 0), MAP_FAILED);
    EXPECT_LT(::pwrite(rw.get(), "x", 1, 0), 0);
    EXPECT_NE(::fallocate(rw.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096), 0);
    EXPECT_NE(::ftruncate(rw.get(), 0), 0);
  }
  auto reader = Reader(*reg);
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE(reader->Lookup("a").ok());
}

// A copy of a registry with random bytes scribbled over it: the reader
// answers errors or validated records, never a crash or a hang.
TEST(Registry, ScribbledSegmentGivesErrorsNotCrashes) {
  auto reg = Make(UniqueName(), 32);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(reg->Insert(Slot("s" + std::to_string(i))).ok());
  auto fd = reg->Share();
  ASSERT_TRUE(fd.ok());
  struct stat st {};
  ASSERT_EQ(::fstat(fd->get(), &st), 0);
  std::vector<char> image(static_cast<size_t>(st.st_size));
  ASSERT_EQ(::pread(fd->get(), image.data(), image.size(), 0), static_cast<ssize_t>(image.size()));
  std::mt19937 rng(std::random_device{}());
  int opened = 0;
  for (int round = 0; round < 500; ++round) {
    std::vector<char> bad = image;
    int hits = 1 + static_cast<int>(rng() % 16);
    for (int h = 0; h < hits; ++h) {
      // Bias towards the header and the index, where the structure lives.
      size_t where = rng() % 3 == 0 ? rng() % sizeof(RegistryHeader) : rng() % bad.size();
      bad[where] = static_cast<char>(rng());
    }
    if (round % 50 == 0) bad.resize(rng() % bad.size());  // shorter than its header says
    UniqueFd copy(::memfd_create("scribbled", MFD_CLOEXEC));
    ASSERT_TRUE(copy.valid());
    ASSERT_EQ(::write(copy.get(), bad.data(), bad.size()), static_cast<ssize_t>(bad.size()));
    auto reader = RegistryReader::FromFd(std::move(copy));
    if (!reader.ok()) continue;
    ++opened;
    for (const SlotDescriptor& d : reader->ListLive()) EXPECT_TRUE(ValidateDescriptor(d).ok());
    for (int i = 0; i < 25; ++i) {
      auto d = reader->Lookup("s" + std::to_string(i));
      if (d.ok()) {
        EXPECT_TRUE(ValidateDescriptor(*d).ok());
      }
    }
  }
  EXPECT_GT(opened, 0);  // most scribbles leave the header readable: the body was exercised
}

TEST(Registry, ForeignSegmentsAreRefusedWithTheReason) {
  auto make = [](uint32_t layout, uint32_t capacity, size_t bytes) {
    UniqueFd fd(::memfd_create("foreign", MFD_CLOEXEC));
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(bytes)), 0);
    RegistryHeader h{};
    h.layout_version = layout;
    h.header_bytes = sizeof(RegistryHeader);
    h.slot_bytes = sizeof(SlotRecord);
    h.capacity = capacity;
    h.index_buckets = ComputeGeometry(capacity == 0 ? 1 : capacity).index_buckets;
    h.magic.store(kRegistryMagic);
    EXPECT_EQ(::pwrite(fd.get(), &h, sizeof h, 0), static_cast<ssize_t>(sizeof h));
    return fd;
  };
  auto old = RegistryReader::FromFd(make(99, 8, 1 << 20));
  EXPECT_EQ(old.status().code(), Code::kUnsupported);
  EXPECT_NE(old.status().message().find("layout version 99"), std::string::npos);
  // A capacity whose table would run past the end of the mapping.
  auto big = RegistryReader::FromFd(make(kRegistryLayoutVersion, 1000, 4096));
  EXPECT_EQ(big.status().code(), Code::kProtocol);
  EXPECT_NE(big.status().message().find("geometry"), std::string::npos);
  EXPECT_EQ(RegistryReader::FromFd(make(kRegistryLayoutVersion, 0, 4096)).status().code(), Code::kProtocol);
  UniqueFd tiny(::memfd_create("tiny", MFD_CLOEXEC));
  EXPECT_EQ(RegistryReader::FromFd(std::move(tiny)).status().code(), Code::kProtocol);
}

}  // namespace
}  // namespace gpubroker

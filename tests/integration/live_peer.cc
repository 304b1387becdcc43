// A client process for the version tests (live_test), started with exec so
// that it may use CUDA. Writes and checks buffers stamped with their version
// (tests/gpu/kernels.h): on the GPU with kernels on its own stream, on the
// host with loops. Talks line by line on stdout; reads stdin only to hold.
//
//   live_peer SOCKET produce NAME COUNT VERSIONS SEED [die]  commit VERSIONS versions of NAME/0..COUNT-1
//                                                       (die: SIGKILL itself right after the last commit call)
//   live_peer SOCKET consume NAME COUNT FINAL SEED      follow versions up to FINAL, checking each whole
//                                                       (says "ready" once attached, before its first wait)
//   live_peer SOCKET stall-writer NAME COUNT SEED       begin a version, write half of it, hold
//   live_peer SOCKET stall-reader NAME                  pin the newest version, hold
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "gpubroker/client.hpp"
#include "tests/gpu/kernels.h"

using namespace gpubroker;

namespace {

int Fail(const std::string& what) {
  std::cout << "error " << what << std::endl;
  return 1;
}

uint64_t U64(const char* s) { return std::strtoull(s, nullptr, 0); }

// Tensor t's seed: its words differ from every other tensor's.
uint64_t TensorSeed(uint64_t seed, size_t t) { return seed + (uint64_t{t} << 32); }

struct Gpu {
  bool cuda = false;
  void* stream = nullptr;
};

Result<std::vector<View>> Tensors(Client& client, const std::string& name, int count) {
  std::vector<View> out;
  for (int t = 0; t < count; ++t) {
    auto v = client.Attach(name + "/" + std::to_string(t), AttachMode::kReadOnly);
    if (!v.ok()) return v.status();
    out.push_back(*v);
  }
  return out;
}

Gpu Open(const View& v) {
  Gpu d;
#if GPUBROKER_GPU_KERNELS
  if (v.device().type == gpubroker::Device::kCuda) {
    d.cuda = gpu::SetDevice(v.device().ordinal);
    d.stream = gpu::NewStream();
  }
#else
  (void)v;
#endif
  return d;
}

bool Stamp(const Gpu& d, void* p, size_t bytes, uint64_t seed, uint64_t version) {
#if GPUBROKER_GPU_KERNELS
  if (d.cuda) return gpu::StampVersion(p, bytes, seed, version, d.stream);
#endif
  auto* words = static_cast<uint64_t*>(p);
  for (size_t i = 0; i < bytes / 8; ++i) {
    std::atomic_ref<uint64_t>(words[i]).store(gpu::VersionWord(seed, i, version), std::memory_order_relaxed);
  }
  return true;
}

int64_t Mismatches(const Gpu& d, const void* p, size_t bytes, uint64_t seed, uint64_t version) {
#if GPUBROKER_GPU_KERNELS
  if (d.cuda) return gpu::CountVersionMismatches(p, bytes, seed, version, d.stream);
#endif
  auto* words = static_cast<const uint64_t*>(p);
  int64_t bad = 0;
  for (size_t i = 0; i < bytes / 8; ++i) {
    uint64_t w = std::atomic_ref<const uint64_t>(words[i]).load(std::memory_order_relaxed);
    bad += w != gpu::VersionWord(seed, i, version);
  }
  return bad;
}

void Hold() {
  std::string line;
  std::getline(std::cin, line);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return Fail("usage");
  ConnectOptions options;
  options.socket_path = argv[1];
  options.client_name = std::string("live_peer ") + argv[2];
  auto client = Client::Connect(options);
  if (!client.ok()) return Fail(client.status().ToString());
  const std::string cmd = argv[2];
  const std::string name = argv[3];

  if ((cmd == "produce" && argc >= 7) || (cmd == "stall-writer" && argc >= 6)) {
    const int count = std::atoi(argv[4]);
    const uint64_t versions = cmd == "produce" ? U64(argv[5]) : 1;
    const uint64_t seed = U64(argv[cmd == "produce" ? 6 : 5]);
    auto writer = client->OpenWriter(name);
    if (!writer.ok()) return Fail(writer.status().ToString());
    auto tensors = Tensors(*client, name, count);
    if (!tensors.ok()) return Fail(tensors.status().ToString());
    Gpu d = Open(writer->view());
    uint64_t last = 0;
    for (uint64_t i = 0; i < versions; ++i) {
      auto buffer = writer->Begin(-1);  // readers release what they pin
      if (!buffer.ok()) return Fail(buffer.status().ToString());
      const uint64_t version = writer->next_version();
      for (size_t t = 0; t < tensors->size(); ++t) {
        const View& v = (*tensors)[t];
        size_t bytes = cmd == "produce" ? v.nbytes() : v.nbytes() / 2;
        if (!Stamp(d, v.data(*buffer), bytes, TensorSeed(seed, t), version)) return Fail("stamp");
      }
      if (cmd == "stall-writer") {
        std::cout << "begun " << *buffer << " " << version << std::endl;
        Hold();
        return 0;
      }
      auto committed = writer->Commit(d.stream);  // no host wait: sent once the stream has run the writes
      if (!committed.ok()) return Fail(committed.status().ToString());
      if (*committed != version) return Fail("committed " + std::to_string(*committed) + ", expected " + std::to_string(version));
      last = *committed;
      if (i + 1 == versions && argc >= 8 && std::string(argv[7]) == "die") {
        std::cout << "dying after " << last << std::endl;
        std::raise(SIGKILL);  // the GPU may not have run the last writes yet
      }
    }
#if GPUBROKER_GPU_KERNELS
    if (d.cuda) gpu::FreeStream(d.stream);  // waits for the last writes
#endif
    std::cout << "done " << last << std::endl;
    return 0;
  }

  if (cmd == "consume" && argc >= 7) {
    const int count = std::atoi(argv[4]);
    const uint64_t final_version = U64(argv[5]);
    const uint64_t seed = U64(argv[6]);
    auto reader = client->OpenReader(name);
    if (!reader.ok()) return Fail(reader.status().ToString());
    auto tensors = Tensors(*client, name, count);
    if (!tensors.ok()) return Fail(tensors.status().ToString());
    Gpu d = Open(reader->view());
    std::cout << "ready" << std::endl;
    uint64_t first = 0, last = 0, seen = 0;
    while (last < final_version) {
      auto newer = reader->Wait(last, 60000);
      if (!newer.ok()) return Fail(newer.status().ToString());
      auto got = reader->Acquire(d.stream);
      if (!got.ok()) return Fail(got.status().ToString());
      if (got->version <= last || got->version < *newer) {
        return Fail("version went from " + std::to_string(last) + " to " + std::to_string(got->version));
      }
      // Twice over: a writer that touched a pinned buffer is caught even if
      // it started after the first pass.
      for (int pass = 0; pass < 2; ++pass) {
        for (size_t t = 0; t < tensors->size(); ++t) {
          const View& v = (*tensors)[t];
          int64_t bad = Mismatches(d, v.data(got->buffer), v.nbytes(), TensorSeed(seed, t), got->version);
          if (bad != 0) {
            std::cout << "torn version " << got->version << " tensor " << t << " words " << bad << std::endl;
            return 2;
          }
        }
      }
      if (Status s = reader->Release(d.stream); !s.ok()) return Fail(s.ToString());
      if (seen++ == 0) first = got->version;
      last = got->version;
    }
    std::cout << "seen " << seen << " first " << first << " last " << last << std::endl;
    return 0;
  }

  if (cmd == "stall-reader") {
    auto reader = client->OpenReader(name);
    if (!reader.ok()) return Fail(reader.status().ToString());
    auto newer = reader->Wait(0, 60000);
    if (!newer.ok()) return Fail(newer.status().ToString());
    auto got = reader->Acquire();
    if (!got.ok()) return Fail(got.status().ToString());
    std::cout << "pinned " << got->version << " " << got->buffer << std::endl;
    Hold();
    return 0;
  }
  return Fail("usage");
}

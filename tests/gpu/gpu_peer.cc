// A client process for the GPU tests, started with exec (a process that has
// used CUDA cannot fork a child that uses it). Talks line by line on
// stdin/stdout.
//
//   gpu_peer SOCKET check NAME SEED [NEWSEED]   attach, count mismatches, optionally rewrite
//   gpu_peer SOCKET check-on DEVICE NAME SEED   same, from a context on DEVICE (peer access)
//   gpu_peer SOCKET check-many PREFIX COUNT SEED attach PREFIX/0.., check each, then hold
//   gpu_peer SOCKET produce NAME BACKEND BYTES SEED   create, fill, exit
//   gpu_peer SOCKET hold NAME                   attach and wait for EOF on stdin
#include <unistd.h>

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

// Prints "mismatches N ordinal K uuid U" for one attached slot.
int CheckView(const View& v, uint64_t seed) {
  if (!gpu::SetDevice(v.device().ordinal)) return Fail("cudaSetDevice");
  int64_t bad = gpu::CountMismatches(v.data(), v.nbytes(), seed);
  std::cout << "mismatches " << bad << " ordinal " << v.device().ordinal << " uuid "
            << FormatUuid(v.device().uuid) << std::endl;
  return bad == 0 ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Fail("usage");
  ConnectOptions options;
  options.socket_path = argv[1];
  options.client_name = std::string("gpu_peer ") + argv[2];
  auto client = Client::Connect(options);
  if (!client.ok()) return Fail(client.status().ToString());
  std::string cmd = argv[2];

  if (cmd == "check" && argc >= 5) {
    auto v = client->Attach(argv[3]);
    if (!v.ok()) return Fail(v.status().ToString());
    int rc = CheckView(*v, U64(argv[4]));
    if (argc >= 6) {
      if (!gpu::FillPattern(v->data(), v->nbytes(), U64(argv[5]))) return Fail("fill");
      std::cout << "written" << std::endl;
    }
    return rc;
  }
  if (cmd == "check-on" && argc >= 6) {
    int device = std::atoi(argv[3]);
    if (!gpu::SetDevice(device)) return Fail("cudaSetDevice");
    gpu::MemInfo(nullptr, nullptr);  // makes the context current on this thread
    auto v = client->Attach(argv[4]);
    if (!v.ok()) return Fail(v.status().ToString());
    int64_t bad = gpu::CountMismatches(v->data(), v->nbytes(), U64(argv[5]));  // runs on `device`
    std::cout << "mismatches " << bad << " ordinal " << v->device().ordinal << std::endl;
    return bad == 0 ? 0 : 2;
  }
  if (cmd == "check-many" && argc >= 6) {
    int count = std::atoi(argv[4]);
    uint64_t seed = U64(argv[5]);
    int64_t total = 0;
    std::vector<View> held;  // all views stay alive: the allocation is mapped once
    for (int i = 0; i < count; ++i) {
      auto v = client->Attach(std::string(argv[3]) + "/" + std::to_string(i));
      if (!v.ok()) return Fail(v.status().ToString());
      held.push_back(*v);
      gpu::SetDevice(v->device().ordinal);
      int64_t bad = gpu::CountMismatches(v->data(), v->nbytes(), seed + static_cast<uint64_t>(i));
      total += bad < 0 ? 1 : bad;
    }
    std::cout << "mismatches " << total << std::endl;
    std::string line;
    std::getline(std::cin, line);
    return total == 0 ? 0 : 2;
  }
  if (cmd == "produce" && argc >= 7) {
    CreateOptions o;
    o.name = argv[3];
    auto backend = ParseBackend(argv[4]);
    if (!backend.ok()) return Fail(backend.status().ToString());
    o.backend = *backend;
    o.dtype = *ParseDType("uint64");
    o.shape = {static_cast<int64_t>(U64(argv[5]) / 8)};
    o.mode = 0666;
    auto v = client->CreateAndAttach(o);
    if (!v.ok()) return Fail(v.status().ToString());
    if (!gpu::SetDevice(v->device().ordinal) || !gpu::FillPattern(v->data(), v->nbytes(), U64(argv[6]))) {
      return Fail("fill");
    }
    std::cout << "done" << std::endl;
    return 0;
  }
  if (cmd == "hold" && argc >= 4) {
    auto v = client->Attach(argv[3]);
    if (!v.ok()) return Fail(v.status().ToString());
    std::cout << "holding" << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
    }
    return 0;
  }
  return Fail("unknown command " + cmd);
}

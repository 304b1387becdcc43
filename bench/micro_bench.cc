// Micro-benchmarks (Google Benchmark) against a real broker, each with its
// baseline in the same run:
//   name look-up with 1,000 and 10,000 live slots: an in-process
//     std::unordered_map (baseline), the shared-memory registry read (names
//     spread over the table, and one name repeated), and Client::Lookup (the
//     same read, converted to a SlotInfo);
//   attach of a slot whose allocation this process already maps, next to
//     a copy of the SlotInfo a view carries (its floor).
// Usage: micro_bench [--benchmark_min_time=0.01]   (any Google Benchmark flag)
#include <benchmark/benchmark.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tests/integration/harness.h"
#include "common/registry_reader.h"

using namespace gpubroker;

namespace {

constexpr int kLookups = 4096;  // names cycled through per run, spread over the table

struct World {
  std::unique_ptr<testing::BrokerProcess> broker;
  std::optional<Client> client;
  std::optional<RegistryReader> reader;
  int live = 0;

  static World& Get() {
    static World w;
    return w;
  }
  static std::string Name(int i) { return "bench/slot/" + std::to_string(i); }

  // Makes exactly `n` slots live (64-byte host buffers), creating or destroying.
  bool SetLive(int n) {
    if (!broker) {
      broker = testing::BrokerProcess::Start({"--capacity", "16384"});
      if (!broker) return false;
      auto c = broker->Connect("micro_bench");
      if (!c.ok()) return false;
      client.emplace(std::move(c).value());
      auto r = broker->OpenRegistry();
      if (!r.ok()) return false;
      reader.emplace(std::move(r).value());
    }
    for (; live < n; ++live) {
      CreateOptions o;
      o.name = Name(live);
      o.shape = {64};
      o.backend = BackendKind::kHost;  // not the GPU default where there is one
      if (!client->Create(o).ok()) return false;
    }
    for (; live > n; --live) {
      if (!client->Destroy(Name(live - 1)).ok()) return false;
    }
    return true;
  }

  // kLookups names of `live` slots, in an order that jumps around the table.
  static std::vector<std::string> Names(int live) {
    std::vector<std::string> names;
    for (int i = 0; i < kLookups; ++i) names.push_back(Name(static_cast<int>((i * 7919LL) % live)));
    return names;
  }
};

// `spread`: cycle through names all over the table (each look-up touches
// records the previous ones did not: a cold-cache worst case); else one
// name again and again (a consumer polling its slot).
template <typename F>
void LookupLoop(benchmark::State& state, F&& lookup, bool spread = true) {
  World& w = World::Get();
  if (!w.SetLive(static_cast<int>(state.range(0)))) {
    state.SkipWithError("could not start the broker or create slots");
    return;
  }
  std::vector<std::string> names = World::Names(w.live);
  if (!spread) names.resize(1);
  size_t i = 0;
  for (auto _ : state) {
    if (!lookup(names[i])) {
      state.SkipWithError("look-up failed");
      return;
    }
    i = (i + 1) % names.size();
  }
  state.counters["live_slots"] = static_cast<double>(w.live);
}

void BM_UnorderedMapFind(benchmark::State& state) {
  std::unordered_map<std::string, int> map;
  for (int i = 0; i < state.range(0); ++i) map[World::Name(i)] = i;
  std::vector<std::string> names = World::Names(static_cast<int>(state.range(0)));
  size_t i = 0;
  for (auto _ : state) {
    auto it = map.find(names[i]);
    benchmark::DoNotOptimize(it);
    i = (i + 1) % names.size();
  }
}

bool RegistryRead(const std::string& name) {
  auto d = World::Get().reader->Lookup(name);
  benchmark::DoNotOptimize(d);
  return d.ok();
}

void BM_RegistryLookup(benchmark::State& state) { LookupLoop(state, RegistryRead); }
void BM_RegistryLookupOneName(benchmark::State& state) { LookupLoop(state, RegistryRead, false); }

void BM_ClientLookup(benchmark::State& state) {
  LookupLoop(state, [](const std::string& n) {
    auto s = World::Get().client->Lookup(n);
    benchmark::DoNotOptimize(s);
    return s.ok();
  });
}

void BM_SlotInfoCopy(benchmark::State& state) {
  World& w = World::Get();
  if (!w.SetLive(std::max(w.live, 1))) {
    state.SkipWithError("could not start the broker");
    return;
  }
  auto info = w.client->Lookup(World::Name(0));
  for (auto _ : state) {
    SlotInfo copy = *info;
    benchmark::DoNotOptimize(copy);
  }
}

void BM_CachedAttach(benchmark::State& state) {
  World& w = World::Get();
  if (!w.SetLive(std::max(w.live, 1))) {
    state.SkipWithError("could not start the broker");
    return;
  }
  auto held = w.client->Attach(World::Name(0));  // maps the allocation
  if (!held.ok()) {
    state.SkipWithError(held.status().ToString().c_str());
    return;
  }
  for (auto _ : state) {
    auto v = w.client->Attach(World::Name(0));
    benchmark::DoNotOptimize(v);
  }
}

BENCHMARK(BM_UnorderedMapFind)->Arg(1000)->Arg(10000);
BENCHMARK(BM_RegistryLookup)->Arg(1000);
BENCHMARK(BM_ClientLookup)->Arg(1000);
BENCHMARK(BM_RegistryLookup)->Arg(10000);
BENCHMARK(BM_RegistryLookupOneName)->Arg(10000);
BENCHMARK(BM_ClientLookup)->Arg(10000);
BENCHMARK(BM_SlotInfoCopy);
BENCHMARK(BM_CachedAttach);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  World& w = World::Get();
  if (w.broker) {
    w.reader.reset();
    w.client.reset();
    return w.broker->Stop(SIGTERM) == 0 ? 0 : 1;
  }
  return 0;
}

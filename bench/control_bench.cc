// Control-path latencies against a real broker, each next to a baseline
// measured in the same run:
//   raw SOCK_SEQPACKET ping-pong between two processes (the floor)
//   no-op request (status), attach + detach of a host slot.
// (Cached attach and look-ups are in micro_bench.)
// Usage: control_bench [--iterations N]
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "client/src/channel.h"
#include "tests/integration/harness.h"

using Clock = std::chrono::steady_clock;
using gpubroker::testing::BrokerProcess;

namespace {

struct Stats {
  double p50_us, p99_us, mean_us;
};

Stats Measure(int iterations, const std::function<void()>& op) {
  for (int i = 0; i < iterations / 10 + 1; ++i) op();  // warm-up
  std::vector<double> us(static_cast<size_t>(iterations));
  for (auto& sample : us) {
    auto t0 = Clock::now();
    op();
    sample = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  }
  double sum = 0;
  for (double v : us) sum += v;
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100], sum / static_cast<double>(us.size())};
}

// Round trips of a 64-byte record (the size of a small request) to a child
// process that echoes it.
Stats RawPingPong(int iterations) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  pid_t child = ::fork();
  if (child == 0) {
    ::close(sv[0]);
    char buf[64];
    while (::recv(sv[1], buf, sizeof buf, 0) > 0) ::send(sv[1], buf, sizeof buf, 0);
    ::_exit(0);
  }
  ::close(sv[1]);
  char buf[64] = {};
  Stats s = Measure(iterations, [&] {
    ::send(sv[0], buf, sizeof buf, 0);
    ::recv(sv[0], buf, sizeof buf, 0);
  });
  ::close(sv[0]);
  ::waitpid(child, nullptr, 0);
  return s;
}

// Attach + detach of a host slot, step by step, as Client::Attach and the
// view's release do them: where the microseconds go.
void HostAttachSteps(const BrokerProcess& broker, int iterations) {
  auto conn = gpubroker::Channel::Open(broker.Options("steps"));
  if (!conn.ok()) std::abort();
  std::vector<double> steps[5];
  auto us = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::micro>(b - a).count();
  };
  for (int i = 0; i < iterations; ++i) {
    gpubroker::wire::AttachRequest m{};
    m.name.set("bench/slot");
    gpubroker::UniqueFd fd;
    auto t0 = Clock::now();
    auto reply = (*conn)->Call<gpubroker::wire::AttachReply>(m, &fd);
    auto t1 = Clock::now();
    if (!reply.ok()) std::abort();
    void* p = ::mmap(nullptr, reply->slot.allocation_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    auto t2 = Clock::now();
    fd.reset();
    auto t3 = Clock::now();
    ::munmap(p, reply->slot.allocation_bytes);
    auto t4 = Clock::now();
    (void)(*conn)->Call<gpubroker::wire::DetachReply>(gpubroker::wire::DetachRequest{reply->slot.allocation_id});
    auto t5 = Clock::now();
    steps[0].push_back(us(t0, t1));
    steps[1].push_back(us(t1, t2));
    steps[2].push_back(us(t2, t3));
    steps[3].push_back(us(t3, t4));
    steps[4].push_back(us(t4, t5));
  }
  std::printf("\nattach + detach of a host slot, step by step (p50, microseconds)\n");
  const char* names[] = {"attach request (fd received)", "mmap", "close(fd)", "munmap", "detach request"};
  for (int i = 0; i < 5; ++i) {
    std::sort(steps[i].begin(), steps[i].end());
    std::printf("  %-32s %9.2f\n", names[i], steps[i][steps[i].size() / 2]);
  }
}

void Row(const char* what, const Stats& s, const Stats* base) {
  std::printf("%-36s %9.2f %9.2f %9.2f", what, s.p50_us, s.p99_us, s.mean_us);
  if (base != nullptr) std::printf("   %6.2fx raw", s.p50_us / base->p50_us);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 20000;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0) iterations = std::max(10, std::atoi(argv[i + 1]));
  }
  auto broker = BrokerProcess::Start();
  if (!broker) {
    std::fprintf(stderr, "control_bench: could not start gpubrokerd\n");
    return 1;
  }
  auto client = broker->Connect("bench");
  if (!client.ok()) return 1;
  gpubroker::CreateOptions o;
  o.name = "bench/slot";
  o.shape = {1 << 20};
  o.backend = gpubroker::BackendKind::kHost;  // not the GPU default where there is one
  if (!client->Create(o).ok()) return 1;

  Stats raw = RawPingPong(iterations);
  Stats noop = Measure(iterations, [&] { (void)client->Info(); });
  Stats attach_detach = Measure(iterations, [&] {
    auto v = client->Attach("bench/slot");
    if (!v.ok()) std::abort();
  });  // the view goes at once: attach, mmap, munmap, detach

  std::printf("control path, %d iterations, 1 MiB host slot\n", iterations);
  std::printf("%-36s %9s %9s %9s\n", "scenario (microseconds)", "p50", "p99", "mean");
  Row("raw SOCK_SEQPACKET ping-pong", raw, nullptr);
  Row("no-op request (status)", noop, &raw);
  Row("attach + detach (2 round trips)", attach_detach, &raw);
  HostAttachSteps(*broker, std::min(iterations, 5000));
  // One line per figure for bench/run.py: scenario, ours, baseline, unit, aim.
  std::printf("summary\tcontrol round trip, no-op request (p50)\t%.2f\t%.2f\tus\tratio<=1.5\n", noop.p50_us,
              raw.p50_us);
  std::printf("summary\tattach + detach, host slot (p50)\t%.2f\t%.2f\tus\t-\n", attach_detach.p50_us,
              raw.p50_us);
  return broker->Stop(SIGTERM) == 0 ? 0 : 1;
}

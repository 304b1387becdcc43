// Test harness: a real gpubrokerd on a temporary socket and registry, client
// processes made with fork, and pipes to talk to them.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gpubroker/client.hpp"
#include "common/registry_reader.h"

namespace gpubroker::testing {

std::vector<uint8_t> RandomBytes(size_t n);

// The backend tests that take one should use: $GPUBROKER_TEST_BACKEND
// (host, cuda_vmm, cuda_ipc), host by default. The GPU runner sets it.
BackendKind TestBackend();

// The controls of the test's fake CUDA driver (tests/support/fake_cuda.cc)
// when it is the libcuda.so.1 this process loads; nullptr otherwise (no
// driver, or a real one). Streams are any handles to it: `hold` keeps what
// is queued on one from finishing until `finish`; `fail` makes the next
// `times` calls of the entry point `name` return `code`; `calls` counts them.
struct FakeCuda {
  void (*hold)(void* stream) = nullptr;
  void (*finish)(void* stream) = nullptr;
  void (*fail)(const char* name, int times, int code) = nullptr;
  uint64_t (*calls)(const char* name) = nullptr;
  void (*reset)() = nullptr;  // every stream finished, every failure forgotten
};
const FakeCuda* FakeCudaDriver();

// Loads libcuda.so.1, without initialising it, into this process (once), so
// that children it forks to act as other uids have it: they may not be able
// to read its directory (the fake driver in a 0700 checkout's build). The
// library's handle; nullptr where there is none.
void* PreloadCudaLibrary();

// Polls `done` until it holds or `limit` passes; returns its last value.
bool WaitFor(const std::function<bool()>& done,
             std::chrono::milliseconds limit = std::chrono::seconds(10));

// A wait status as a shell shows it: the exit code, or 128 + the signal that
// ended the process (a crash is never 0). -1 for a status that is neither.
int ExitCode(int wait_status);

// Open memfds of a process whose name contains `label`.
int CountMemfds(pid_t pid, const std::string& label);

// How to start a broker beyond the defaults: extra flags, environment, and
// fds handed over as a service manager does (at 3, 4, ... with LISTEN_FDS,
// LISTEN_FDNAMES and LISTEN_PID).
struct LaunchOptions {
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::pair<std::string, int>> fds;
  bool wait_for_socket = true;
  std::string cgroup;    // a cgroup directory the broker joins before it starts
  std::string log_file;  // where its stdout and stderr go (default: inherited)
  std::string socket;    // a socket path of the test's choosing (default: in its directory)
};

// Drops this process to `uid`, `gid` and supplementary `groups` (needs root).
bool BecomeUser(uid_t uid, gid_t gid, const std::vector<gid_t>& groups = {});

class BrokerProcess {
 public:
  // Starts gpubrokerd and waits until its socket answers.
  static std::unique_ptr<BrokerProcess> Start(std::vector<std::string> extra_args = {});
  static std::unique_ptr<BrokerProcess> Start(const LaunchOptions& options);
  // Same socket and registry as `previous`, which must have stopped.
  static std::unique_ptr<BrokerProcess> Restart(const BrokerProcess& previous, const LaunchOptions& options);
  // Same socket and registry as `previous` (which must have stopped).
  static std::unique_ptr<BrokerProcess> Restart(const BrokerProcess& previous);
  ~BrokerProcess();

  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }
  const std::string& registry() const { return registry_; }
  const std::string& dir() const { return dir_; }
  ConnectOptions Options(const std::string& client_name = "test") const;
  Result<Client> Connect(const std::string& client_name = "test") const;
  // The registry, as a client receives it at hello (a raw hello of its own).
  Result<RegistryReader> OpenRegistry() const;
  Result<UniqueFd> RegistryFd() const;
  // Sends `signo` and reaps the broker; returns its ExitCode.
  int Stop(int signo = SIGTERM);

 private:
  BrokerProcess() = default;
  Status Launch(const LaunchOptions& options);
  pid_t pid_ = -1;
  std::string dir_, socket_, registry_;
  bool owns_dir_ = true;
};

// A line-and-bytes channel over two pipes.
class Channel {
 public:
  Channel(int in, int out) : in_(in), out_(out) {}
  void Send(const void* data, size_t n);
  void Send(const std::vector<uint8_t>& bytes) { Send(bytes.data(), bytes.size()); }
  void SendLine(const std::string& line);
  // Reads exactly n bytes; empty on EOF.
  std::vector<uint8_t> Receive(size_t n);
  std::string ReceiveLine();
  int in() const { return in_; }
  int out() const { return out_; }

 private:
  int in_, out_;
};

class ChildProcess {
 public:
  // Forks; the child runs `body` and exits with its return value.
  explicit ChildProcess(const std::function<int(Channel&)>& body);
  // Forks and executes `argv` with the channel as its stdin and stdout, after
  // setting (or, for an empty value, unsetting) the variables in `env`.
  static std::unique_ptr<ChildProcess> Exec(
      const std::vector<std::string>& argv,
      const std::vector<std::pair<std::string, std::string>>& env = {});
  ~ChildProcess();
  Channel& channel() { return *channel_; }
  pid_t pid() const { return pid_; }
  // Waits and returns the exit code (or 128 + signal).
  int Wait();
  void Kill(int signo);

 private:
  pid_t pid_ = -1;
  std::unique_ptr<Channel> channel_;
  bool reaped_ = false;
};

}  // namespace gpubroker::testing

#include "tests/integration/harness.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "common/seqpacket.h"
#include "common/wire.h"

namespace gpubroker::testing {

std::vector<uint8_t> RandomBytes(size_t n) {
  static std::mt19937_64 rng(std::random_device{}());
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

BackendKind TestBackend() {
  const char* v = std::getenv("GPUBROKER_TEST_BACKEND");
  auto kind = ParseBackend(v != nullptr ? v : "host");
  if (!kind.ok()) {  // a typo must not test host memory under a GPU run's name
    std::fprintf(stderr, "GPUBROKER_TEST_BACKEND=%s: %s\n", v, kind.status().ToString().c_str());
    std::exit(2);
  }
  return *kind;
}

void* PreloadCudaLibrary() {
  static void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);  // kept for the process's life
  return lib;
}

const FakeCuda* FakeCudaDriver() {
  static const FakeCuda* found = []() -> const FakeCuda* {
    static FakeCuda fake;
    void* lib = PreloadCudaLibrary();
    if (lib == nullptr) return nullptr;
    fake.hold = reinterpret_cast<void (*)(void*)>(::dlsym(lib, "gpbfake_hold"));
    fake.finish = reinterpret_cast<void (*)(void*)>(::dlsym(lib, "gpbfake_finish"));
    fake.fail = reinterpret_cast<void (*)(const char*, int, int)>(::dlsym(lib, "gpbfake_fail"));
    fake.calls = reinterpret_cast<uint64_t (*)(const char*)>(::dlsym(lib, "gpbfake_calls"));
    fake.reset = reinterpret_cast<void (*)()>(::dlsym(lib, "gpbfake_reset"));
    return fake.hold && fake.finish && fake.fail && fake.calls && fake.reset ? &fake : nullptr;
  }();
  return found;
}

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return done();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // polling a condition
  }
  return true;
}

int ExitCode(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

int CountMemfds(pid_t pid, const std::string& label) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.rfind("/memfd:", 0) == 0 && target.find(label) != std::string::npos) ++n;
  }
  return n;
}

std::unique_ptr<BrokerProcess> BrokerProcess::Start(std::vector<std::string> extra_args) {
  LaunchOptions o;
  o.args = std::move(extra_args);
  return Start(o);
}

std::unique_ptr<BrokerProcess> BrokerProcess::Start(const LaunchOptions& options) {
  static std::atomic<int> counter{0};
  std::unique_ptr<BrokerProcess> b(new BrokerProcess());
  char tmpl[] = "/tmp/gpbtest-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return nullptr;
  ::chmod(tmpl, 0755);  // clients of other uids must reach the socket
  b->dir_ = tmpl;
  b->socket_ = b->dir_ + "/broker.sock";
  b->registry_ = "gpbtest-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  if (!b->Launch(options).ok()) return nullptr;
  return b;
}

std::unique_ptr<BrokerProcess> BrokerProcess::Restart(const BrokerProcess& previous) {
  return Restart(previous, LaunchOptions{});
}

std::unique_ptr<BrokerProcess> BrokerProcess::Restart(const BrokerProcess& previous,
                                                      const LaunchOptions& options) {
  std::unique_ptr<BrokerProcess> b(new BrokerProcess());
  b->dir_ = previous.dir_;
  b->socket_ = previous.socket_;
  b->registry_ = previous.registry_;
  b->owns_dir_ = false;
  if (!b->Launch(options).ok()) return nullptr;
  return b;
}

Status BrokerProcess::Launch(const LaunchOptions& options) {
  if (!options.socket.empty()) socket_ = options.socket;
  std::vector<std::string> args = {GPUBROKERD_PATH, "--socket", socket_};
  // The harness's defaults, unless the test gives its own.
  auto given = [&](const std::string& flag) {
    return std::find(options.args.begin(), options.args.end(), flag) != options.args.end();
  };
  if (!given("--registry")) args.insert(args.end(), {"--registry", registry_});
  if (!given("--log-level")) args.insert(args.end(), {"--log-level", "warn"});
  args.insert(args.end(), options.args.begin(), options.args.end());
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    // A test that dies (or gives up on a stuck thread with _Exit) takes its
    // brokers with it, rather than leaving them holding its output pipes.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(126);
    if (!options.cgroup.empty()) {
      FILE* procs = std::fopen((options.cgroup + "/cgroup.procs").c_str(), "w");
      if (procs == nullptr || std::fprintf(procs, "0\n") < 0 || std::fclose(procs) != 0) ::_exit(126);
    }
    if (!options.log_file.empty()) {
      int log = ::open(options.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (log < 0) ::_exit(126);
      ::dup2(log, 1);
      ::dup2(log, 2);
    }
    // Hand fds over as a service manager does: at 3, 4, ... (moved out of the way first).
    std::vector<int> high;
    for (const auto& [name, fd] : options.fds) high.push_back(::fcntl(fd, F_DUPFD, 100));
    std::string names;
    for (size_t i = 0; i < high.size(); ++i) {
      ::dup2(high[i], 3 + static_cast<int>(i));
      names += (i ? ":" : "") + options.fds[i].first;
    }
    for (int fd : high) ::close(fd);
    if (!high.empty()) {
      ::setenv("LISTEN_FDS", std::to_string(high.size()).c_str(), 1);
      ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    }
    for (const auto& [name, value] : options.env) ::setenv(name.c_str(), value.c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (!options.wait_for_socket) return Status::Ok();
  bool up = WaitFor([&] {
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    return ConnectSeqpacket(socket_).ok();
  });
  if (!up || pid_ < 0) return Unavailable("gpubrokerd did not start");
  return Status::Ok();
}

BrokerProcess::~BrokerProcess() {
  if (pid_ > 0) Stop(SIGKILL);
  if (owns_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    ::shm_unlink(("/" + registry_).c_str());
  }
}

bool BecomeUser(uid_t uid, gid_t gid, const std::vector<gid_t>& groups) {
  return ::setgroups(groups.size(), groups.data()) == 0 && ::setgid(gid) == 0 && ::setuid(uid) == 0;
}

ConnectOptions BrokerProcess::Options(const std::string& client_name) const {
  ConnectOptions o;
  o.socket_path = socket_;
  o.client_name = client_name;
  o.reply_timeout_ms = 10000;
  o.reconnect_timeout_ms = 0;  // tests of restarts ask for reconnection themselves
  return o;
}

Result<RegistryReader> BrokerProcess::OpenRegistry() const {
  GPB_ASSIGN_OR_RETURN(UniqueFd fd, RegistryFd());
  return RegistryReader::FromFd(std::move(fd));
}

Result<UniqueFd> BrokerProcess::RegistryFd() const {
  GPB_ASSIGN_OR_RETURN(UniqueFd socket, ConnectSeqpacket(socket_));
  wire::HelloRequest hello{};
  hello.protocol_version = wire::kProtocolVersion;
  hello.client_name.set("registry-reader");
  GPB_ASSIGN_OR_RETURN(bool sent, SendRecord(socket.get(), wire::EncodeRequest(1, hello), -1, false));
  if (!sent) return Unavailable("cannot send hello");
  std::vector<std::byte> buffer(wire::kMaxMessageBytes);
  GPB_ASSIGN_OR_RETURN(Received r, ReceiveRecord(socket.get(), buffer, false));
  if (r.fds.empty()) return ProtocolError("hello reply carried no registry");
  return std::move(r.fds.front());
}

Result<Client> BrokerProcess::Connect(const std::string& client_name) const {
  return Client::Connect(Options(client_name));
}

int BrokerProcess::Stop(int signo) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, signo);
  int status = 0;
  if (::waitpid(pid_, &status, 0) != pid_) status = -1;
  pid_ = -1;
  return status == -1 ? -1 : ExitCode(status);
}

void Channel::Send(const void* data, size_t n) {
  auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(out_, p, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void Channel::SendLine(const std::string& line) { Send((line + "\n").data(), line.size() + 1); }

std::vector<uint8_t> Channel::Receive(size_t n) {
  std::vector<uint8_t> out(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(in_, out.data() + got, n - got);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return {};
    }
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string Channel::ReceiveLine() {
  std::string line;
  char c;
  while (::read(in_, &c, 1) == 1) {
    if (c == '\n') return line;
    line += c;
  }
  return line;
}

ChildProcess::ChildProcess(const std::function<int(Channel&)>& body) {
  PreloadCudaLibrary();  // a child that becomes another uid may not read the fake driver's directory
  int to_child[2], from_child[2];
  if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0) return;
  pid_ = ::fork();
  if (pid_ == 0) {
    ::close(to_child[1]);
    ::close(from_child[0]);
    Channel ch(to_child[0], from_child[1]);
    int rc = body(ch);
    ::_exit(rc);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  channel_ = std::make_unique<Channel>(from_child[0], to_child[1]);
}

std::unique_ptr<ChildProcess> ChildProcess::Exec(
    const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& env) {
  return std::make_unique<ChildProcess>([&](Channel& ch) {
    ::dup2(ch.in(), 0);
    ::dup2(ch.out(), 1);
    for (const auto& [name, value] : env) {
      if (value.empty()) ::unsetenv(name.c_str());
      else ::setenv(name.c_str(), value.c_str(), 1);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    return 127;
  });
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (channel_) {
    ::close(channel_->in());
    ::close(channel_->out());
  }
}

int ChildProcess::Wait() {
  int status = 0;
  if (::waitpid(pid_, &status, 0) != pid_) return -1;
  reaped_ = true;
  return ExitCode(status);
}

void ChildProcess::Kill(int signo) { ::kill(pid_, signo); }

}  // namespace gpubroker::testing

// gpubrokerctl doctor: why attaching fails, or is slow, for this process on
// this machine. Each check says OK, or what is wrong and what to do.
#include "client/cli/doctor.h"

#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "client/cli/output.h"
#include "common/posix.h"
#include "common/seqpacket.h"
#include "common/socket_path.h"
#if GPUBROKER_HAVE_CUDA
#include "common/cuda_driver.h"
#endif

namespace gpubroker::ctl {
namespace {

enum class Verdict { kOk, kInfo, kWarn, kFail };

struct Finding {
  std::string check;
  Verdict verdict;
  std::string detail;
  std::string advice;  // what to do; empty when nothing need be done
};

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kOk: return "ok";
    case Verdict::kInfo: return "info";
    case Verdict::kWarn: return "warn";
    case Verdict::kFail: return "fail";
  }
  return "?";
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

std::string WhySocket(const std::string& socket, bool from_flag) {
  if (from_flag) return "given with --socket";
  if (!Env("GPUBROKER_SOCKET").empty()) return "from $GPUBROKER_SOCKET";
  if (socket == UserSocketPath()) return "your own broker's ($XDG_RUNTIME_DIR), which is running";
  std::string user = UserSocketPath();
  if (!user.empty()) {
    return "the system broker's: no usable socket of your own broker at " + user;
  }
  return "the system broker's: the default for root, and for a user without a broker of their own";
}

// This process's supplementary groups, read once.
const std::vector<gid_t>& MyGroups() {
  static const std::vector<gid_t> groups = [] {
    std::vector<gid_t> g(static_cast<size_t>(std::max(::getgroups(0, nullptr), 0)));
    if (!g.empty()) g.resize(static_cast<size_t>(std::max(::getgroups(static_cast<int>(g.size()), g.data()), 0)));
    return g;
  }();
  return groups;
}

std::string Groups() {
  std::string out;
  for (gid_t g : MyGroups()) out += (out.empty() ? "" : ",") + GroupName(g);
  return out.empty() ? "-" : out;
}

bool InGroup(gid_t gid) {
  return ::getegid() == gid || std::find(MyGroups().begin(), MyGroups().end(), gid) != MyGroups().end();
}

// The owner / group / other triplet, as the broker picks it; the broker may
// grant more (administrators) or less (a view checks its allocation too).
bool MayRead(const SlotInfo& s) {
  const uid_t me = ::geteuid();
  if (me == 0) return true;
  if (me == s.owner_uid) return s.mode & 0400;
  if (InGroup(s.owner_gid)) return s.mode & 0040;
  return s.mode & 0004;
}

std::string NsLink(pid_t pid, const char* ns) {
  char buf[128];
  std::string path = (pid == 0 ? std::string("/proc/self") : "/proc/" + std::to_string(pid)) + "/ns/" + ns;
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

class Doctor {
 public:
  Doctor(std::string socket, bool from_flag) : socket_(std::move(socket)), from_flag_(from_flag) {}

  std::vector<Finding> Run() {
    Identity();
    if (!SocketReachable()) return std::move(findings_);
    auto client = ConnectClient();
    if (!client) return std::move(findings_);
    Slots(*client);
    Cuda();
    Namespaces();
    Limits();
    Latency(*client);
    Peers(*client);
    return std::move(findings_);
  }

 private:
  void Add(std::string check, Verdict v, std::string detail, std::string advice = "") {
    findings_.push_back({std::move(check), v, std::move(detail), std::move(advice)});
  }

  void Identity() {
    Add("identity", Verdict::kInfo,
        "you are " + UserName(::geteuid()) + " (uid " + std::to_string(::geteuid()) + "), group " +
            GroupName(::getegid()) + ", groups " + Groups());
  }

  bool SocketReachable() {
    const std::string why = WhySocket(socket_, from_flag_);
    struct stat st {};
    if (::stat(socket_.c_str(), &st) != 0 && errno == EACCES) {
      Add("socket", Verdict::kFail, "a directory on the path to " + socket_ + " is closed to you (" + why + ")",
          "that broker is not yours to use (a per-user broker serves only its user): use your own or the "
          "system broker");
      return false;
    }
    if (::stat(socket_.c_str(), &st) != 0) {
      Add("socket", Verdict::kFail, "no socket at " + socket_ + " (" + why + ")",
          "start a broker (gpubrokerd, or systemctl [--user] start gpubroker), or set GPUBROKER_SOCKET to a "
          "running broker's socket");
      return false;
    }
    if (!S_ISSOCK(st.st_mode)) {
      Add("socket", Verdict::kFail, socket_ + " is not a socket", "point GPUBROKER_SOCKET at the broker's socket");
      return false;
    }
    if (::access(socket_.c_str(), W_OK) != 0) {
      Add("socket", Verdict::kFail,
          "you may not connect to " + socket_ + " (mode " + ModeText(st.st_mode & 0777) + ", owner " +
              UserName(st.st_uid) + ", group " + GroupName(st.st_gid) + ")",
          "ask to be added to group " + GroupName(st.st_gid) + " (then log in again), or use a broker of your own");
      return false;
    }
    auto fd = ConnectSeqpacket(socket_);
    if (!fd.ok()) {
      Add("socket", Verdict::kFail, fd.status().message(),
          "the socket is stale (no broker behind it): start the broker again");
      return false;
    }
    Add("socket", Verdict::kOk, socket_ + " (" + why + ")");
    ucred cred{};
    socklen_t len = sizeof cred;
    ::getsockopt(fd->get(), SOL_SOCKET, SO_PEERCRED, &cred, &len);
    broker_pid_here_ = cred.pid;
    if (Status trust = VerifyBrokerPeer(fd->get(), socket_); !trust.ok()) {
      Add("broker", Verdict::kFail, trust.message(),
          "do not use this socket; start your own broker in a directory only you can write");
      return false;
    }
    Add("broker", Verdict::kOk,
        "answers, runs as " + UserName(cred.uid) +
            (cred.pid > 0 ? ", pid " + std::to_string(cred.pid) : ", in another pid namespace"));
    return true;
  }

  std::optional<Client> ConnectClient() {
    ConnectOptions o;
    o.socket_path = socket_;
    o.client_name = "gpubrokerctl-doctor";
    o.reconnect_timeout_ms = 0;
    o.reply_timeout_ms = 5000;  // a stopped broker must not keep the doctor waiting
    auto c = Client::Connect(o);
    if (!c.ok()) {
      const bool silent = c.status().message().find("no reply within the timeout") != std::string::npos ||
                          c.status().message().find("timed out") != std::string::npos ||
                          c.status().message().find("Resource temporarily unavailable") != std::string::npos;
      Add("hello", Verdict::kFail, c.status().ToString(),
          silent ? "the broker accepted the connection but did not answer within 5 s: it is stopped or stuck "
                   "(systemctl status gpubroker; its watchdog restarts a stuck one)"
                 : "the broker refused this client: its message says why (a limit, draining, another protocol "
                   "version)");
      return std::nullopt;
    }
    auto info = c->Info();
    if (info.ok()) {
      Add("hello", info->state == "running" ? Verdict::kOk : Verdict::kWarn,
          "gpubrokerd " + info->version + ", " + info->state,
          info->state == "running"    ? ""
          : info->state == "degraded" ? "part of its configuration (a pool, the metrics endpoint) is not in effect: "
                                        "its log says which (journalctl -u gpubroker -p warning)"
                                      : "it refuses new creates and attaches until `gpubrokerctl drain --off`");
    }
    return std::move(c).value();
  }

  // Every slot record decodes on this side: the broker's list (each record
  // checked as it arrives) and the registry's (a record that does not
  // validate is skipped there) name the same slots. Slots made or removed
  // between the two reads are told apart by asking twice.
  void Records(Client& c) {
    std::vector<std::string> missing;
    size_t listed = 0;
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto asked = c.List();
      if (!asked.ok()) {
        if (asked.status().code() != Code::kProtocol) return;  // said elsewhere (permission, a gone broker)
        Add("records", Verdict::kFail, "a slot record the broker sent does not decode here: " + asked.status().message(),
            "the broker accepted a slot this client cannot read (a client and a broker of different versions?): "
            "report it with the broker's log; `gpubrokerctl rm` of that slot lets the others list again");
        return;
      }
      auto read = c.ListRegistry();
      if (!read.ok()) return;
      std::set<std::string> in_registry;
      for (const auto& s : *read) in_registry.insert(s.name);
      missing.clear();
      for (const auto& s : *asked) {
        if (!in_registry.count(s.name)) missing.push_back(s.name);
      }
      listed = asked->size();
      if (missing.empty()) break;
    }
    if (missing.empty()) {
      Add("records", Verdict::kOk, "every slot record decodes: " + std::to_string(listed) +
                                       " through the broker, the same in the shared registry");
      return;
    }
    std::string names;
    for (const auto& n : missing) names += (names.empty() ? "" : ", ") + n;
    Add("records", Verdict::kFail, "the broker lists slots whose registry records do not validate here: " + names,
        "report it with the broker's log and `gpubrokerctl show` of each; lock-free lookups of these names fail");
  }

  void Slots(Client& c) {
    if (auto devices = c.Devices(); devices.ok()) {
      broker_devices_ = std::move(devices).value();
    } else {
      Add("cuda", Verdict::kInfo, "the broker does not list its GPUs (" + devices.status().message() + ")");
    }
    auto slots = c.ListRegistry();
    if (!slots.ok()) {
      Add("registry", Verdict::kFail, slots.status().ToString(),
          "the shared registry could not be read: report this with the broker's log");
      return;
    }
    Add("registry", Verdict::kOk, "readable without asking the broker: " + std::to_string(slots->size()) + " slot(s)");
    Records(c);
    std::vector<std::string> refused;
    for (const auto& s : *slots) {
      if (!MayRead(s)) {
        refused.push_back(s.name + " (owner " + UserName(s.owner_uid) + ", group " + GroupName(s.owner_gid) +
                          ", mode " + ModeText(s.mode) + ")");
      }
      if (s.device.type == Device::kCuda) gpu_slots_[FormatUuid(s.device.uuid)].push_back(s.name);
    }
    if (refused.empty()) {
      Add("permissions", Verdict::kOk, "you may attach every slot listed");
    } else {
      std::string list;
      for (size_t i = 0; i < refused.size() && i < 5; ++i) list += (i ? "; " : "") + refused[i];
      if (refused.size() > 5) list += "; and " + std::to_string(refused.size() - 5) + " more";
      Add("permissions", Verdict::kWarn,
          std::to_string(refused.size()) + " slot(s) you may not attach: " + list,
          "their owners decide: a mode with r for you (group or other), or your uid in their group");
    }
  }

  void Cuda() {
    const std::string visible = Env("CUDA_VISIBLE_DEVICES");
    const std::string where = visible.empty() ? "" : " (CUDA_VISIBLE_DEVICES=" + visible + ")";
#if GPUBROKER_HAVE_CUDA
    std::string theirs;
    for (const auto& d : broker_devices_) {
      theirs += (theirs.empty() ? "" : ", ") + std::string("cuda:") + std::to_string(d.broker_ordinal) + " " +
                FormatUuid(d.uuid);
    }
    Add("cuda", Verdict::kInfo, broker_devices_.empty() ? "the broker sees no GPU: it serves host memory"
                                                         : "the broker sees " + theirs);
    auto driver = CudaDriver::Get();
    if (!driver.ok()) {
      const bool needed = !gpu_slots_.empty();  // a host-only consumer needs no GPU
      Add("cuda", needed ? Verdict::kFail : Verdict::kInfo, driver.status().message() + where,
          needed ? "GPU slots need the NVIDIA driver and a visible GPU in this process (CUDA_VISIBLE_DEVICES; "
                   "in a container, the NVIDIA runtime and a GPU request)"
                 : "");
      return;
    }
    std::string uuids;
    for (int i = 0; i < (*driver)->device_count(); ++i) {
      if (auto u = (*driver)->UuidOf(i); u.ok()) uuids += (i ? ", " : "") + std::string("cuda:") + std::to_string(i) + " " + FormatUuid(*u);
    }
    Add("cuda", Verdict::kOk, "this process sees " + std::to_string((*driver)->device_count()) + " GPU(s)" + where +
                                  (uuids.empty() ? "" : ": " + uuids));
    std::string hidden;
    for (const auto& d : broker_devices_) {
      if (!(*driver)->OrdinalOf(d.uuid).ok()) hidden += (hidden.empty() ? "" : ", ") + FormatUuid(d.uuid);
    }
    if (!hidden.empty()) {
      Add("cuda", Verdict::kInfo, "GPUs the broker has that this process cannot see" + where + ": " + hidden,
          "slots on them need that GPU visible here (a GPU this process sees may map them by peer access)");
    }
    for (const auto& [uuid, names] : gpu_slots_) {
      if ((*driver)->ParseDevice(uuid).ok()) continue;
      Add("cuda", Verdict::kWarn,
          std::to_string(names.size()) + " slot(s) (e.g. " + names.front() + ") are on " + uuid +
              ", which this process cannot see" + where,
          "make that GPU visible to this process (CUDA_VISIBLE_DEVICES, or the container's GPU request)");
    }
#else
    Add("cuda", gpu_slots_.empty() ? Verdict::kInfo : Verdict::kWarn,
        "this gpubrokerctl was built without CUDA: it cannot check this process's GPUs",
        gpu_slots_.empty() ? "" : "use a build with the CUDA toolkit to check GPU slots");
#endif
  }

  void Namespaces() {
    if (broker_pid_here_ <= 0) {
      Add("namespaces", Verdict::kInfo,
          "the broker is in another pid namespace (a container, or you are in one): fine, the socket carries "
          "everything");
      return;
    }
    std::vector<std::string> differ, unknown;
    for (const char* ns : {"user", "pid", "ipc", "net", "mnt"}) {
      std::string mine = NsLink(0, ns), theirs = NsLink(broker_pid_here_, ns);
      if (theirs.empty()) unknown.push_back(ns);
      else if (mine != theirs) differ.push_back(ns);
    }
    if (unknown.size() == 5) {
      Add("namespaces", Verdict::kInfo,
          "cannot compare this process's namespaces with the broker's (its are not readable to you): fine, the "
          "socket carries everything");
      return;
    }
    std::string detail = differ.empty() ? (unknown.empty() ? "same namespaces as the broker"
                                                           : "no namespace of those compared differs")
                                        : "own namespaces: ";
    for (size_t i = 0; i < differ.size(); ++i) detail += (i ? ", " : "") + differ[i];
    if (!unknown.empty()) {
      detail += "; cannot compare ";
      for (size_t i = 0; i < unknown.size(); ++i) detail += (i ? ", " : "") + unknown[i];
      detail += " (the broker's are not readable to you)";
    }
    if (std::find(differ.begin(), differ.end(), "user") != differ.end()) {
      detail += "; in another user namespace the broker knows you by your uid as mapped into its own";
    }
    Add("namespaces", Verdict::kInfo, detail);
  }

  void Limits() {
    rlimit files{};
    ::getrlimit(RLIMIT_NOFILE, &files);
    bool low = files.rlim_cur < 4096;
    Add("limits", low ? Verdict::kWarn : Verdict::kOk,
        "open files " + std::to_string(files.rlim_cur) + " (hard " + std::to_string(files.rlim_max) + ")",
        low ? "each attach receives a descriptor while it maps: raise it (ulimit -n, or LimitNOFILE=) "
              "if you attach many slots at once"
            : "");
    rlimit memlock{};
    ::getrlimit(RLIMIT_MEMLOCK, &memlock);
    Add("limits", Verdict::kInfo,
        "locked memory " + (memlock.rlim_cur == RLIM_INFINITY ? std::string("unlimited")
                                                               : HumanBytes(memlock.rlim_cur)) +
            " (pinning host slots for fast GPU copies counts against it)");
  }

  void Latency(Client& c) {
    std::vector<double> us;
    for (int i = 0; i < 21; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      if (!c.Info().ok()) return;
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(us.begin() + 1, us.end());  // the first includes waking the broker up
    double p50 = us[1 + (us.size() - 1) / 2];
    char text[128];
    std::snprintf(text, sizeof text, "a round trip to the broker takes %.0f us (median of 20; first %.0f us)", p50,
                  us[0]);
    Add("latency", p50 > 1000 ? Verdict::kWarn : Verdict::kOk, text,
        p50 > 1000 ? "the broker or this machine is busy: a first attach needs one round trip; cached attaches "
                     "need none"
                   : "");
  }

  // Each tree followed from another node (docs/multinode.md): connected and
  // authenticated, or why not. Administrators only see them; nothing is said
  // where there are none.
  void Peers(Client& c) {
    auto peers = c.Peers();
    if (!peers.ok()) return;
    for (const PeerInfo& p : *peers) {
      if (p.role != "follower") continue;
      const std::string what = "'" + p.tree + "' from " + p.peer;
      if (p.state != "retrying" && p.state != "authenticating") {
        const uint64_t behind = p.source_version > p.version ? p.source_version - p.version : 0;
        Add("peers", Verdict::kOk, "follows " + what + ": version " + std::to_string(p.version) + ", " +
                                       std::to_string(behind) + " behind the source, " + p.state);
        continue;
      }
      std::string advice = "check that the source runs and listens there (peers.listen), and that the replication "
                           "network lets this node reach it";
      if (p.last_error.find("cluster key") != std::string::npos) {
        advice = "both nodes need the same cluster key file (peers.key_file)";
      } else if (p.last_error.find("not exported") != std::string::npos) {
        advice = "the source must list the tree in its peers.export";
      }
      Add("peers", Verdict::kFail,
          "does not follow " + what + " (" + p.state + "; " + std::to_string(p.errors) + " failed tries" +
              (p.last_error.empty() ? std::string() : "; last: " + p.last_error) + ")",
          advice);
    }
  }

  std::string socket_;
  bool from_flag_;
  pid_t broker_pid_here_ = 0;
  std::map<std::string, std::vector<std::string>> gpu_slots_;  // device UUID -> slot names
  std::vector<BrokerDevice> broker_devices_;
  std::vector<Finding> findings_;
};

}  // namespace

int RunDoctor(const std::string& socket, bool socket_from_flag, bool json) {
  std::vector<Finding> findings = Doctor(socket, socket_from_flag).Run();
  bool failed = std::any_of(findings.begin(), findings.end(), [](const Finding& f) { return f.verdict == Verdict::kFail; });
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& f : findings) {
      out.push_back({{"check", f.check}, {"status", VerdictName(f.verdict)}, {"detail", f.detail}, {"advice", f.advice}});
    }
    std::cout << JsonText(out) << "\n";
  } else {
    for (const auto& f : findings) {
      std::string tag = VerdictName(f.verdict);
      std::transform(tag.begin(), tag.end(), tag.begin(), ::toupper);
      std::cout << tag << std::string(6 - tag.size(), ' ') << f.check << std::string(f.check.size() < 12 ? 12 - f.check.size() : 1, ' ')
                << f.detail << "\n";
      if (!f.advice.empty()) std::cout << std::string(18, ' ') << "-> " << f.advice << "\n";
    }
  }
  return failed ? 1 : 0;
}

}  // namespace gpubroker::ctl

#include "client/cli/top.h"

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include "client/cli/exit_status.h"
#include "client/cli/output.h"
#include "common/parse.h"
#include "common/validate.h"

namespace gpubroker::ctl {
namespace {

volatile sig_atomic_t g_stop = 0;
void OnStopSignal(int) { g_stop = 1; }
void OnResize(int) {}  // only to wake the wait, so the screen is redrawn at the new size

// What one refresh asked the broker.
struct Sample {
  std::chrono::steady_clock::time_point at;
  BrokerInfo broker;
  std::vector<SlotInfo> slots;
  Result<std::vector<ClientInfo>> clients = std::vector<ClientInfo>{};  // kPermissionDenied: not admin
  Result<std::vector<LeaseInfo>> leases = std::vector<LeaseInfo>{};
};

Result<Sample> Take(Client& c, const std::string& prefix) {
  Sample s;
  s.at = std::chrono::steady_clock::now();
  GPB_ASSIGN_OR_RETURN(s.broker, c.Info());
  GPB_ASSIGN_OR_RETURN(auto slots, c.List());
  for (auto& slot : slots) {
    if (UnderPrefix(slot.name, prefix)) s.slots.push_back(std::move(slot));
  }
  s.clients = c.Clients();
  if (!s.clients.ok() && s.clients.status().code() != Code::kPermissionDenied) return s.clients.status();
  if (s.clients.ok()) {
    s.leases = c.Leases();
    if (!s.leases.ok()) return s.leases.status();
  }
  return s;
}

std::string Fixed(double v, int decimals) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// "12.5/s" from a count that grew by `delta` in `seconds`; "-" before a second sample.
std::string Rate(std::optional<double> delta, double seconds) {
  if (!delta || seconds <= 0) return "-";
  return Fixed(*delta / seconds, 1) + "/s";
}

std::string Duration(uint64_t ns) {
  uint64_t s = ns / 1000000000ull;
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
  if (s < 86400) return std::to_string(s / 3600) + "h" + std::to_string((s / 60) % 60) + "m";
  return std::to_string(s / 86400) + "d" + std::to_string((s / 3600) % 24) + "h";
}

uint64_t RealtimeNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string Age(uint64_t then_ns, uint64_t now_ns) {
  if (then_ns == 0) return "-";
  if (then_ns >= now_ns) return "now";
  const uint64_t ns = now_ns - then_ns;
  if (ns < 10000000000ull) return Fixed(static_cast<double>(ns) / 1e9, 1) + "s ago";
  return Duration(ns) + " ago";
}

// What each client pins and writes: "policy@v17", "writes policy".
std::string PinsOf(uint64_t client_id, const std::vector<LeaseInfo>& leases) {
  std::string out;
  for (const auto& l : leases) {
    if (l.client_id != client_id) continue;
    std::string part;
    if (l.pinned_version != 0) part = l.slot + "@v" + std::to_string(l.pinned_version);
    if (l.writing_buffer >= 0) part += (part.empty() ? "" : ",") + std::string("writes ") + l.slot;
    if (!part.empty()) out += (out.empty() ? "" : " ") + part;
  }
  return out.empty() ? "-" : out;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

std::string Render(const Sample& now, const Sample* before, size_t cols, size_t rows, const TopFlags& flags,
                   bool terminal) {
  const double dt = before != nullptr ? std::chrono::duration<double>(now.at - before->at).count() : 0;
  const BrokerInfo& b = now.broker;
  const uint64_t wall = RealtimeNs();
  std::vector<std::string> head;
  std::string when = DateText(wall);
  head.push_back("gpubrokerd " + Printable(b.version) + " pid " + std::to_string(b.pid) + ": " + b.state + ", up " +
                 Duration(wall > b.started_ns ? wall - b.started_ns : 0) + "    " + when);
  head.push_back("slots " + std::to_string(b.slots) + " of " + std::to_string(b.max_slots) + "   allocations " +
                 std::to_string(b.allocations) + " (" + HumanBytes(b.bytes_host) + " host, " +
                 HumanBytes(b.bytes_device) + " device)   clients " + std::to_string(b.clients) + " holding " +
                 std::to_string(b.leases) + " leases");
  auto grew = [&](uint64_t now_count, uint64_t before_count) -> std::optional<double> {
    if (before == nullptr || now_count < before_count) return std::nullopt;  // a restarted broker counts anew
    return static_cast<double>(now_count - before_count);
  };
  head.push_back("requests " + Rate(grew(b.requests, before ? before->broker.requests : 0), dt) + "   refusals " +
                 Rate(grew(b.refusals, before ? before->broker.refusals : 0), dt) + "   (since start: " +
                 std::to_string(b.requests) + " requests, " + std::to_string(b.refusals) + " refused)");
  head.push_back("");

  // Clients take at most a third of the screen; slots the rest.
  std::vector<std::string> client_lines;
  if (now.clients.ok()) {
    Table t({"CLIENT", "NAME", "PID", "USER", "LEASES", "PINS"});
    for (const auto& k : *now.clients) {
      t.Add({std::to_string(k.id), Printable(k.name), std::to_string(k.pid), UserName(k.uid),
             std::to_string(k.lease_count), PinsOf(k.id, *now.leases)});
    }
    client_lines = Lines(t.Render());
  } else {
    client_lines.push_back("clients: " + std::to_string(b.clients) +
                           " connected (who they are and what they pin: root or the broker's admin group only)");
  }
  const size_t footer = terminal ? 2 : 0;
  const size_t fixed = head.size() + footer + 1;  // the blank line between the tables
  if (rows > fixed && client_lines.size() > (rows - fixed) / 3 + 1) {
    const size_t keep = std::max<size_t>((rows - fixed) / 3, 2);
    const size_t more = client_lines.size() - keep;
    client_lines.resize(keep);
    client_lines.push_back("... and " + std::to_string(more) + " more clients");
  }

  std::map<std::string, const SlotInfo*> previous;
  if (before != nullptr) {
    for (const auto& s : before->slots) previous[s.name] = &s;
  }
  Table slots({"SLOT", "DTYPE", "SHAPE", "BYTES", "VERSION", "COMMITS", "LEASES", "UPDATED"});
  for (const auto& s : now.slots) {
    std::optional<double> commits;
    auto p = previous.find(s.name);
    if (p != previous.end() && p->second->allocation_id == s.allocation_id && s.version >= p->second->version) {
      commits = static_cast<double>(s.version - p->second->version);
    }
    slots.Add({Printable(s.name), DTypeName(s.dtype), ShapeText(s.shape), HumanBytes(s.nbytes),
               std::to_string(s.version), s.buffers > 1 ? Rate(commits, dt) : "-",
               std::to_string(s.lease_count), Age(s.updated_ns, wall)});
  }
  std::vector<std::string> slot_lines = Lines(slots.Render());
  if (now.slots.empty()) slot_lines.push_back(flags.prefix.empty() ? "(no slots)" : "(no slot under " + flags.prefix + ")");
  if (rows > 0) {
    const size_t room = rows > fixed + client_lines.size() ? rows - fixed - client_lines.size() : 2;
    if (slot_lines.size() > room && room >= 2) {
      const size_t more = slot_lines.size() - (room - 1);
      slot_lines.resize(room - 1);
      slot_lines.push_back("... and " + std::to_string(more) + " more slots");
    }
  }

  std::vector<std::string> all = head;
  all.insert(all.end(), slot_lines.begin(), slot_lines.end());
  all.push_back("");
  all.insert(all.end(), client_lines.begin(), client_lines.end());
  if (terminal) {
    all.push_back("");
    all.push_back("q quits, any other key refreshes; every " + Fixed(flags.delay, flags.delay < 1 ? 1 : 0) + " s");
  }
  std::string out;
  for (auto& line : all) {
    if (cols > 0 && line.size() > cols) line.resize(cols);
    out += line + "\n";
  }
  return out;
}

// The terminal as `top` leaves it: the alternate screen with the cursor
// hidden while running, keys read one at a time without echo; put back on
// every way out (return, q, Ctrl-C, SIGTERM).
class Terminal {
 public:
  Terminal() : out_(::isatty(STDOUT_FILENO) == 1), in_(::isatty(STDIN_FILENO) == 1) {
    struct sigaction sa {};
    sa.sa_handler = OnStopSignal;  // no SA_RESTART: the wait below wakes
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
    sa.sa_handler = OnResize;
    ::sigaction(SIGWINCH, &sa, &old_winch_);
    if (in_ && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      raw_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    if (out_) std::cout << "\x1b[?1049h\x1b[?25l" << std::flush;
  }
  ~Terminal() {
    if (out_) std::cout << "\x1b[?25h\x1b[?1049l" << std::flush;
    if (raw_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGWINCH, &old_winch_, nullptr);
  }
  Terminal(const Terminal&) = delete;
  Terminal& operator=(const Terminal&) = delete;

  bool screen() const { return out_; }
  std::pair<size_t, size_t> Size() const {
    winsize w{};
    if (out_ && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return {w.ws_col, w.ws_row};
    return {0, 0};  // no limit
  }
  void Show(const std::string& screen) {
    if (out_) std::cout << "\x1b[H\x1b[2J";
    std::cout << screen << (out_ ? "" : "\n") << std::flush;
  }
  // Waits up to `ms`; false when the user asked to quit.
  bool Wait(int ms) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!g_stop) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return true;
      pollfd p{in_ ? STDIN_FILENO : -1, POLLIN, 0};
      const int n = ::poll(&p, 1, static_cast<int>(left.count()));
      if (n < 0 && errno == EINTR) {
        if (g_stop) break;
        return true;  // a resize: redraw now
      }
      if (n > 0 && (p.revents & POLLIN) != 0) {
        char key = 0;
        if (::read(STDIN_FILENO, &key, 1) == 1) return key != 'q' && key != 'Q';
        return true;
      }
      if (n > 0) in_ = false;  // the terminal went away: wait out the delay on the clock alone
    }
    return false;
  }

 private:
  bool out_;
  bool in_;
  bool raw_ = false;
  termios saved_{};
  struct sigaction old_int_ {}, old_term_ {}, old_winch_ {};
};

}  // namespace

int TopCmd(Client& c, const TopFlags& flags) {
  if (!std::isfinite(flags.delay) || flags.delay < 0.1 || flags.delay > 3600) {
    return Report(InvalidArgument("--delay must be between 0.1 and 3600 seconds"));
  }
  if (flags.iterations < 0) return Report(InvalidArgument("--iterations must be 0 (no end) or more"));
  if (!flags.prefix.empty()) {
    Status valid = ValidateName(flags.prefix);
    if (!valid.ok()) return Report(valid);
  }
  g_stop = 0;
  std::optional<Sample> before;
  Status failed;
  {
    Terminal term;
    for (int shown = 0;;) {
      auto now = Take(c, flags.prefix);
      if (!now.ok()) {
        failed = now.status();
        break;
      }
      auto [cols, rows] = term.Size();
      term.Show(Render(*now, before ? &*before : nullptr, cols, rows, flags, term.screen()));
      before = std::move(*now);
      if (++shown == flags.iterations) break;
      if (!term.Wait(static_cast<int>(flags.delay * 1000))) break;
    }
  }  // the terminal is restored before any error is printed
  return failed.ok() ? kExitOk : Report(failed);
}

}  // namespace gpubroker::ctl

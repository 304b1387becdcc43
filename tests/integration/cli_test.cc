// gpubrokerctl's outputs and exit statuses against a real broker.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/integration/harness.h"
#include "tests/support/require.h"

namespace gpubroker::testing {
namespace {

std::string UserNameOf(uid_t uid) {
  passwd* pw = ::getpwuid(uid);
  return pw != nullptr ? pw->pw_name : std::to_string(uid);
}

struct CtlRun {
  int status;
  std::string out;  // stdout and stderr
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = BrokerProcess::Start();
    ASSERT_NE(broker_, nullptr);
  }
  CtlRun Ctl(const std::string& args, const std::string& socket = "") {
    return Shell(std::string(GPUBROKERCTL_PATH) + " --socket " + (socket.empty() ? broker_->socket() : socket) +
                 " " + args);
  }
  // As nobody: neither root nor in the broker's admin group.
  CtlRun CtlAsNobody(const std::string& args) {
    return Shell("setpriv --reuid=65534 --regid=65534 --clear-groups " + std::string(GPUBROKERCTL_PATH) +
                 " --socket " + broker_->socket() + " " + args);
  }
  static CtlRun Shell(const std::string& command) {
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    return {ExitCode(status), out};
  }
  // gpubrokerctl in the background; its stdout and stderr come on the
  // child's channel.
  std::unique_ptr<ChildProcess> StartCtl(const std::string& args) {
    return ChildProcess::Exec({"/bin/sh", "-c",
                               "exec " + std::string(GPUBROKERCTL_PATH) + " --socket " + broker_->socket() + " " +
                                   args + " 2>&1"});
  }
  // What a background gpubrokerctl printed, once it has exited, and its status.
  static CtlRun Finish(ChildProcess& ctl) {
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(ctl.channel().in(), buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    return {ctl.Wait(), out};
  }
  std::unique_ptr<BrokerProcess> broker_;
};

TEST_F(CliTest, CreateListShowRemove) {
  CtlRun create = Ctl("create models/w --dtype bfloat16 --shape 4,8 --mode 0640");
  ASSERT_EQ(create.status, 0) << create.out;
  EXPECT_NE(create.out.find("created models/w: bfloat16 (4, 8), 64 B"), std::string::npos) << create.out;

  CtlRun ls = Ctl("ls");
  ASSERT_EQ(ls.status, 0);
  EXPECT_EQ(ls.out.rfind("NAME", 0), 0u) << ls.out;
  EXPECT_NE(ls.out.find("models/w"), std::string::npos);
  EXPECT_NE(ls.out.find("bfloat16"), std::string::npos);
  EXPECT_NE(ls.out.find("0640"), std::string::npos);

  CtlRun json = Ctl("ls --json");
  ASSERT_EQ(json.status, 0);
  EXPECT_EQ(json.out.front(), '[');
  EXPECT_NE(json.out.find("\"name\":\"models/w\""), std::string::npos) << json.out;
  EXPECT_NE(json.out.find("\"shape\":[4,8]"), std::string::npos);
  EXPECT_NE(json.out.find("\"strides\":[8,1]"), std::string::npos);

  CtlRun show = Ctl("show models/w");
  ASSERT_EQ(show.status, 0);
  EXPECT_NE(show.out.find("\ndtype:            bfloat16\n"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("\nleases:           0\n"), std::string::npos);
  EXPECT_NE(show.out.find("\nowner:            " + UserNameOf(::geteuid()) + "\n"), std::string::npos);
  EXPECT_NE(show.out.find(" UTC\n"), std::string::npos) << "times as dates";

  EXPECT_EQ(Ctl("rm models/w").status, 0);
  CtlRun gone = Ctl("show models/w");
  EXPECT_EQ(gone.status, 4);
  EXPECT_NE(gone.out.find("not_found"), std::string::npos);
}

TEST_F(CliTest, LsShowsSlotsAClientCreatedAndClientsShowsHolders) {
  auto c = broker_->Connect("weights-producer");
  ASSERT_TRUE(c.ok());
  CreateOptions o;
  o.name = "kv/cache";
  o.shape = {1024};
  auto v = c->CreateAndAttach(o);
  ASSERT_TRUE(v.ok());
  CtlRun ls = Ctl("ls");
  EXPECT_NE(ls.out.find("kv/cache"), std::string::npos) << ls.out;
  CtlRun clients = Ctl("clients");
  ASSERT_EQ(clients.status, 0) << clients.out;
  EXPECT_NE(clients.out.find("weights-producer"), std::string::npos) << clients.out;
  EXPECT_NE(clients.out.find("kv/cache"), std::string::npos);
  CtlRun status = Ctl("status --json");
  ASSERT_EQ(status.status, 0);
  EXPECT_NE(status.out.find("\"slots\":1"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("\"leases\":1"), std::string::npos);
}

TEST_F(CliTest, ExitStatusesScriptsCanRelyOn) {
  EXPECT_EQ(Ctl("show no/such").status, 4);
  EXPECT_EQ(Ctl("create dup --bytes 16").status, 0);
  EXPECT_EQ(Ctl("create dup --bytes 16").status, 6);
  CtlRun bad = Ctl("create 'bad name' --bytes 16");
  EXPECT_EQ(bad.status, 8);
  EXPECT_NE(bad.out.find("character outside"), std::string::npos) << bad.out;
  EXPECT_EQ(Ctl("create x --dtype float7 --bytes 4").status, 8);
  CtlRun zero = Ctl("create x --bytes 0");
  EXPECT_EQ(zero.status, 8);
  EXPECT_NE(zero.out.find("--bytes 0: a slot holds at least one byte"), std::string::npos) << zero.out;
  CtlRun empty = Ctl("create x --shape 4,0");
  EXPECT_EQ(empty.status, 8);
  EXPECT_NE(empty.out.find("would hold 0 bytes"), std::string::npos) << empty.out;
  EXPECT_EQ(Ctl("frobnicate").status, 2);
  CtlRun down = Ctl("status", broker_->dir() + "/nothing.sock");
  EXPECT_EQ(down.status, 3);
  EXPECT_NE(down.out.find("no broker at"), std::string::npos) << down.out;
}

TEST_F(CliTest, DrainAndReload) {
  EXPECT_EQ(Ctl("drain").status, 0);
  CtlRun draining = Ctl("status");
  EXPECT_NE(draining.out.find(": draining"), std::string::npos);
  EXPECT_EQ(draining.status, 9) << "a draining broker is not OK to scripts and probes";
  EXPECT_EQ(Ctl("status --live").status, 0) << "but it is alive: a liveness probe must not restart it";
  CtlRun refused = Ctl("create x --bytes 16");
  EXPECT_EQ(refused.status, 9) << "a broker that answers and refuses is not a missing broker (3)";
  EXPECT_NE(refused.out.find("draining"), std::string::npos) << refused.out;
  EXPECT_EQ(Ctl("drain --off").status, 0);
  EXPECT_EQ(Ctl("status").status, 0);
  EXPECT_EQ(Ctl("create x --bytes 16").status, 0);
  EXPECT_EQ(Ctl("reload").status, 0);
  EXPECT_EQ(Ctl("show x").status, 0);  // a reload keeps what clients made
}

// A state dict: an arena "m" and views "m/a", "m/b"; "mx" shares the prefix's
// letters but is not under it.
TEST_F(CliTest, PrefixesFieldsCsvAndRecursiveRemove) {
  ASSERT_EQ(Ctl("create m --bytes 4096 --mode 0644").status, 0);
  ASSERT_EQ(Ctl("create m/a --base m --offset 0 --shape 4 --dtype float32").status, 0);
  ASSERT_EQ(Ctl("create m/b --base m --offset 256 --shape 2,2 --dtype float32").status, 0);
  ASSERT_EQ(Ctl("create mx --bytes 16").status, 0);
  CtlRun csv = Ctl("ls m --format csv --fields name,nbytes,dtype");
  EXPECT_EQ(csv.status, 0);
  EXPECT_EQ(csv.out, "name,nbytes,dtype\nm,4096,uint8\nm/a,16,float32\nm/b,16,float32\n");
  EXPECT_EQ(Ctl("ls m/a --format csv,noheader --fields name,shape").out, "m/a,\"(4,)\"\n");
  EXPECT_EQ(Ctl("ls m --json --fields name,version").out,
            "[{\"name\":\"m\",\"version\":1},{\"name\":\"m/a\",\"version\":1},{\"name\":\"m/b\",\"version\":1}]\n");
  CtlRun bad_field = Ctl("ls --fields name,nme");
  EXPECT_EQ(bad_field.status, 8);
  EXPECT_NE(bad_field.out.find("unknown field 'nme'; the fields are: name,"), std::string::npos) << bad_field.out;
  EXPECT_EQ(Ctl("ls --format yaml").status, 8);
  EXPECT_EQ(Ctl("ls nothing/here").status, 4);

  EXPECT_EQ(Ctl("rm -r m").status, 0);
  EXPECT_EQ(Ctl("ls --format csv,noheader --fields name").out, "mx\n") << "m and everything under it, not mx";
  CtlRun several = Ctl("create a --bytes 16 && " + std::string(GPUBROKERCTL_PATH) + " --socket " +
                       broker_->socket() + " create b --bytes 16");
  ASSERT_EQ(several.status, 0) << several.out;
  CtlRun rm = Ctl("rm a nope b");
  EXPECT_EQ(rm.status, 4) << "the first failure decides the status";
  EXPECT_NE(rm.out.find("not_found: no slot named 'nope'"), std::string::npos) << rm.out;
  EXPECT_EQ(Ctl("ls --format csv,noheader --fields name").out, "mx\n") << "every name was tried";
}

TEST_F(CliTest, ClientsMarksTheCallerAndVersionNeedsNoBroker) {
  // A name is anyone's to choose: bytes that are not UTF-8 and terminal
  // escapes must neither break the JSON nor reach the terminal.
  auto odd = broker_->Connect("odd\xff\x1b]0;title\x07");
  ASSERT_TRUE(odd.ok()) << odd.status().ToString();
  CtlRun clients = Ctl("clients");
  EXPECT_EQ(clients.out.find('\x1b'), std::string::npos) << "a raw escape reached the terminal";
  CtlRun odd_json = Ctl("clients --json");
  EXPECT_EQ(odd_json.status, 0) << odd_json.out;
  EXPECT_NE(odd_json.out.find("odd\xef\xbf\xbd"), std::string::npos) << odd_json.out;
  ASSERT_EQ(clients.status, 0);
  EXPECT_NE(clients.out.find("*  gpubrokerctl"), std::string::npos) << clients.out;
  CtlRun json = Ctl("clients --json");
  EXPECT_NE(json.out.find("\"self\":true"), std::string::npos) << json.out;
  CtlRun version = Ctl("--version", broker_->dir() + "/nothing.sock");
  EXPECT_EQ(version.status, 0);
  EXPECT_EQ(version.out.rfind("gpubrokerctl 0.", 0), 0u) << version.out;
}

// The completion script is made from the CLI's own commands and options, and
// completes slot names from the broker named on the line.
TEST_F(CliTest, BashCompletionComesFromTheCliItself) {
  ASSERT_EQ(Ctl("create weights/l0 --bytes 16").status, 0);
  const std::string script = broker_->dir() + "/completion.bash";
  ASSERT_EQ(Ctl("completion bash > " + script).status, 0);
  auto complete = [&](const std::string& words, int cword) {
    std::string cmd = "PATH=" + std::filesystem::path(GPUBROKERCTL_PATH).parent_path().string() +
                      ":$PATH bash -c 'source " + script + " && COMP_WORDS=(" + words + ") COMP_CWORD=" +
                      std::to_string(cword) + " && { _gpubrokerctl; echo \"${COMPREPLY[*]}\"; }'";
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
    return out;
  };
  EXPECT_EQ(complete("gpubrokerctl dr", 1), "drain\n");
  EXPECT_EQ(complete("gpubrokerctl rm --r", 2), "--recursive\n");
  EXPECT_EQ(complete("gpubrokerctl --socket " + broker_->socket() + " show weights/", 4), "weights/l0\n");
  EXPECT_EQ(complete("gpubrokerctl --socket " + broker_->socket() + " wait weights/", 4), "weights/l0\n");
  EXPECT_EQ(complete("gpubrokerctl wait --t", 2), "--timeout\n");
  // Option values come from the program, not from the broker's slot names.
  EXPECT_EQ(complete("gpubrokerctl ls --format ''", 3), "table csv csv,noheader json\n");
  EXPECT_EQ(complete("gpubrokerctl status --format ''", 3), "table json\n");
  EXPECT_EQ(complete("gpubrokerctl ls --fields na", 3), "name\n");
  EXPECT_EQ(complete("gpubrokerctl ls --fields name,ba", 3), "name,backend\n");
  EXPECT_EQ(complete("gpubrokerctl create x --dtype bf", 4), "bfloat16\n");
  EXPECT_EQ(complete("gpubrokerctl create x --backend cuda_", 4), "cuda_vmm cuda_ipc\n");
  EXPECT_EQ(complete("gpubrokerctl create x --shape ''", 4), "\n") << "a size has no words to offer";
  EXPECT_EQ(complete("gpubrokerctl completion ''", 2), "bash zsh fish\n");
  // --socket after the subcommand counts too.
  EXPECT_EQ(complete("gpubrokerctl ls --socket " + broker_->socket() + " weights/", 4), "weights/l0\n");
}

// zsh and fish get scripts made the same way, and complete the same words
// (zsh through its completion functions stood in for by ones that print
// what they are given; fish through its own `complete -C`).
TEST_F(CliTest, ZshAndFishCompletionComeFromTheCliToo) {
  ASSERT_EQ(Ctl("create weights/l0 --bytes 16").status, 0);
  const std::string dir = std::filesystem::path(GPUBROKERCTL_PATH).parent_path().string();
  const std::string zsh = broker_->dir() + "/completion.zsh";
  const std::string fish = broker_->dir() + "/completion.fish";
  ASSERT_EQ(Ctl("completion zsh > " + zsh).status, 0);
  ASSERT_EQ(Ctl("completion fish > " + fish).status, 0);
  const bool have_zsh = Shell("command -v zsh").status == 0;
  const bool have_fish = Shell("command -v fish").status == 0;
  GPUBROKER_NEEDS(have_zsh && have_fish, std::getenv("CI") != nullptr, "zsh and fish (.ci/deps --tests)");

  // words: the line as zsh splits it; current: the 1-based index completed.
  auto zsh_complete = [&](const std::string& words, int current) {
    return Shell("PATH=" + dir + ":$PATH zsh -f -c '"
                 "compdef() { :; }; "
                 "compadd() { while [[ $# -gt 0 && $1 != -- ]]; do shift; done; shift; print -r -- \"$*\"; }; "
                 "compset() { return 1; }; _files() { print files; }; "
                 "_describe() { local -a c; c=(\"${(@P)2}\"); print -r -- ${c%%:*}; }; "
                 "source " + zsh + "; words=(" + words + "); CURRENT=" + std::to_string(current) +
                 "; _gpubrokerctl'")
        .out;
  };
  // The stand-ins do not filter by what is typed (zsh does): every command comes back.
  EXPECT_NE(zsh_complete("gpubrokerctl dr", 2).find(" drain "), std::string::npos) << zsh_complete("gpubrokerctl dr", 2);
  EXPECT_EQ(zsh_complete("gpubrokerctl ls --format \"\"", 4), "table csv csv,noheader json\n");
  EXPECT_NE(zsh_complete("gpubrokerctl create x --dtype \"\"", 5).find("bfloat16"), std::string::npos);
  EXPECT_EQ(zsh_complete("gpubrokerctl --socket " + broker_->socket() + " show \"\"", 5), "weights/l0\n");
  EXPECT_EQ(zsh_complete("gpubrokerctl rm --socket " + broker_->socket() + " \"\"", 5), "weights/l0\n");

  auto fish_complete = [&](const std::string& line) {
    CtlRun r = Shell("PATH=" + dir + ":$PATH fish --no-config -c 'source " + fish + "; complete -C \"" + line +
                     "\"'");
    std::string words;  // the candidates, without fish's tab-separated descriptions
    std::stringstream in(r.out);
    std::string row;
    while (std::getline(in, row)) words += (words.empty() ? "" : " ") + row.substr(0, row.find('\t'));
    return words;
  };
  EXPECT_NE((" " + fish_complete("gpubrokerctl ") + " ").find(" drain "), std::string::npos);
  EXPECT_EQ(fish_complete("gpubrokerctl ls --format "), "csv csv,noheader json table");
  EXPECT_EQ(fish_complete("gpubrokerctl ls --fields name,ba"), "name,backend");
  EXPECT_NE(fish_complete("gpubrokerctl create x --dtype ").find("bfloat16"), std::string::npos);
  EXPECT_EQ(fish_complete("gpubrokerctl --socket " + broker_->socket() + " show "), "weights/l0");
}

// The conventions people bring from git, systemctl and kubectl.
TEST_F(CliTest, ConventionsNewUsersExpect) {
  const std::string ctl = GPUBROKERCTL_PATH;
  ASSERT_EQ(Ctl("create a --bytes 16").status, 0);
  // The global --socket after the subcommand.
  CtlRun after = Shell(ctl + " ls --socket " + broker_->socket() + " --format csv,noheader --fields name");
  EXPECT_EQ(after.status, 0) << after.out;
  EXPECT_EQ(after.out, "a\n");
  // --format json wherever --json is.
  for (const char* cmd : {"status", "show a", "clients", "leases", "doctor"}) {
    CtlRun r = Ctl(std::string(cmd) + " --format json");
    EXPECT_EQ(r.out.substr(0, 1), r.out.find('[') == 0 ? "[" : "{") << cmd << ": " << r.out;
    EXPECT_EQ(Ctl(std::string(cmd) + " --json").out.substr(0, 1), r.out.substr(0, 1)) << cmd;
  }
  EXPECT_EQ(Ctl("status --format yaml").status, 2);
  // Usage errors say who is speaking, as the other errors do.
  CtlRun usage = Ctl("ls --no-such-flag");
  EXPECT_EQ(usage.status, 2);
  EXPECT_EQ(usage.out.rfind("gpubrokerctl: ", 0), 0u) << usage.out;
  // --shape and --bytes together were a silent choice of one of them.
  CtlRun both = Ctl("create b --shape 4 --bytes 16");
  EXPECT_EQ(both.status, 2);
  EXPECT_NE(both.out.find("--shape excludes --bytes"), std::string::npos) << both.out;
  EXPECT_EQ(Ctl("show b").status, 4) << "nothing was made";
  // --exist-ok, as mkdir -p: a second run of a script is fine, a different slot is not.
  CtlRun again = Ctl("create a --bytes 16 --exist-ok");
  EXPECT_EQ(again.status, 0) << again.out;
  EXPECT_EQ(again.out, "exists: a\n");
  CtlRun other = Ctl("create a --bytes 32 --exist-ok");
  EXPECT_EQ(other.status, 6);
  EXPECT_NE(other.out.find("shape (16,), not (32,)"), std::string::npos) << other.out;
  EXPECT_EQ(Ctl("create fresh --bytes 16 --exist-ok").out.rfind("created fresh: ", 0), 0u);
  // The broker's usage errors exit 2 too, saying who speaks.
  CtlRun broker_usage = Shell(std::string(GPUBROKERD_PATH) + " --no-such-flag");
  EXPECT_EQ(broker_usage.status, 2) << broker_usage.out;
  EXPECT_EQ(broker_usage.out.rfind("gpubrokerd: ", 0), 0u) << broker_usage.out;
  EXPECT_EQ(Shell(std::string(GPUBROKERD_PATH) + " --check-config").status, 2) << "a missing FILE is a usage error";
  // Both programs say their version the same way.
  CtlRun ctl_version = Shell(ctl + " --version");
  CtlRun broker_version = Shell(std::string(GPUBROKERD_PATH) + " --version");
  EXPECT_EQ(ctl_version.out.rfind("gpubrokerctl ", 0), 0u) << ctl_version.out;
  EXPECT_EQ(broker_version.out.rfind("gpubrokerd ", 0), 0u) << broker_version.out;
  EXPECT_EQ(ctl_version.out.substr(ctl_version.out.find(' ')), broker_version.out.substr(broker_version.out.find(' ')));
}

// Errors that point at the real cause, and only at what applies.
TEST_F(CliTest, HintsPointAtTheCause) {
  CtlRun file = Ctl("ls", "/etc/passwd");
  EXPECT_EQ(file.status, 8) << file.out;
  EXPECT_NE(file.out.find("/etc/passwd is not a socket but a regular file"), std::string::npos) << file.out;
  EXPECT_EQ(file.out.find("GPUBROKER_SOCKET"), std::string::npos) << "the flag was given: " << file.out;
  CtlRun given = Ctl("ls", broker_->dir() + "/nothing.sock");
  EXPECT_EQ(given.status, 3);
  EXPECT_NE(given.out.find("start one there (gpubrokerd --socket " + broker_->dir() + "/nothing.sock)"),
            std::string::npos) << given.out;
  EXPECT_EQ(given.out.find("GPUBROKER_SOCKET"), std::string::npos) << given.out;
  CtlRun env = Shell("GPUBROKER_SOCKET=" + broker_->dir() + "/nothing.sock " + GPUBROKERCTL_PATH + " ls");
  EXPECT_NE(env.out.find("(from $GPUBROKER_SOCKET)"), std::string::npos) << env.out;
  CtlRun config = Shell(std::string(GPUBROKERD_PATH) + " --config " + broker_->dir() + "/nosuch.yaml");
  EXPECT_EQ(config.status, 2);
  EXPECT_NE(config.out.find("nosuch.yaml: No such file or directory"), std::string::npos) << config.out;
}

// `top` as a person sees it: in a real terminal (tmux), the screen holds the
// slots with their versions and commit rates, the clients with what they pin,
// and the request rate; q leaves and gives the terminal back.
TEST_F(CliTest, TopShowsSlotsVersionsClientsAndRatesOnScreen) {
  GPUBROKER_NEEDS(Shell("command -v tmux").status == 0, std::getenv("CI") != nullptr, "tmux (.ci/deps --tests)");
  ASSERT_EQ(Ctl("create policy --bytes 4096 --buffers 2").status, 0);
  ASSERT_EQ(Ctl("create plain --shape 16,16 --dtype float32").status, 0);
  auto producer = broker_->Connect("trainer");
  ASSERT_TRUE(producer.ok());
  auto writer = producer->OpenWriter("policy");
  ASSERT_TRUE(writer.ok());
  for (int v = 0; v < 3; ++v) {
    ASSERT_TRUE(writer->Begin().ok());
    ASSERT_TRUE(writer->Commit().ok());
  }
  auto consumer = broker_->Connect("engine");
  ASSERT_TRUE(consumer.ok());
  auto reader = consumer->OpenReader("policy");
  ASSERT_TRUE(reader.ok());
  auto pinned = reader->Acquire();
  ASSERT_TRUE(pinned.ok());
  ASSERT_EQ(pinned->version, 3u);

  const std::string session = "gpubroker-top-" + std::to_string(::getpid());
  ASSERT_EQ(Shell("tmux -L " + session + " new-session -d -s top -x 120 -y 30 '" + GPUBROKERCTL_PATH +
                  " --socket " + broker_->socket() + " top --delay 0.2; echo top exited $?; sleep 30'")
                .status,
            0);
  auto screen = [&] { return Shell("tmux -L " + session + " capture-pane -p -t top").out; };
  // Polls the screen until `want` is on it (or ten seconds pass).
  auto wait_for = [&](const std::string& want) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    std::string now = screen();
    while (now.find(want) == std::string::npos && std::chrono::steady_clock::now() < deadline) now = screen();
    return now;
  };
  std::string first = wait_for("requests ");
  EXPECT_NE(first.find("SLOT"), std::string::npos) << first;
  // A commit while top runs shows as the new version and a commit rate.
  ASSERT_TRUE(writer->Begin().ok());
  ASSERT_TRUE(writer->Commit().ok());
  std::string shown = wait_for("policy@v3");
  auto line_of = [&](const std::string& text, const std::string& start) {
    auto at = text.find("\n" + start);
    return at == std::string::npos ? std::string() : text.substr(at + 1, text.find('\n', at + 1) - at - 1);
  };
  shown = wait_for(" 4  ");
  const std::string policy = line_of(shown, "policy ");
  EXPECT_NE(policy.find("uint8"), std::string::npos) << shown;
  EXPECT_NE(policy.find(" 4  "), std::string::npos) << "the newest version: " << shown;
  EXPECT_NE(policy.find("/s"), std::string::npos) << "a commit rate: " << shown;
  EXPECT_NE(line_of(shown, "plain ").find("(16, 16)"), std::string::npos) << shown;
  EXPECT_NE(shown.find("engine"), std::string::npos) << shown;
  EXPECT_NE(shown.find("policy@v3"), std::string::npos) << "the engine's pin: " << shown;
  EXPECT_NE(shown.find("trainer"), std::string::npos) << shown;
  EXPECT_NE(shown.find("requests "), std::string::npos);
  EXPECT_NE(line_of(shown, "requests ").find("/s"), std::string::npos) << "a rate once two screens are taken: " << shown;
  EXPECT_NE(shown.find("q quits"), std::string::npos) << shown;

  ASSERT_EQ(Shell("tmux -L " + session + " send-keys -t top q").status, 0);
  std::string after = wait_for("top exited");
  EXPECT_NE(after.find("top exited 0"), std::string::npos) << after;
  EXPECT_EQ(after.find("SLOT"), std::string::npos) << "the alternate screen is gone: " << after;
  Shell("tmux -L " + session + " kill-server");
}

// status: each uid's use against its share. An admin sees every uid, anyone
// else their own.
TEST_F(CliTest, StatusShowsEachUidsUseAgainstItsShare) {
  GPUBROKER_NEEDS_ROOT("(to create as another user)");
  ASSERT_EQ(Ctl("create mine --bytes 1MiB").status, 0);
  ASSERT_EQ(::chmod(broker_->dir().c_str(), 0755), 0);
  CtlRun made = CtlAsNobody("create theirs --bytes 2MiB");
  ASSERT_EQ(made.status, 0) << made.out;
  CtlRun root = Ctl("status");
  EXPECT_NE(root.out.find("uid 0 (root): 1 slots, 1.0 MiB host, 0 B device (root or admin group: no share "
                          "applies)"),
            std::string::npos)
      << root.out;
  EXPECT_NE(root.out.find("uid 65534 (" + UserNameOf(65534) + "): 1 of "), std::string::npos) << root.out;
  EXPECT_NE(root.out.find(" slots, 2.0 MiB of "), std::string::npos) << "a share of the host cap: " << root.out;
  CtlRun nobody = CtlAsNobody("status");
  EXPECT_EQ(nobody.out.find("uid 0 "), std::string::npos) << "another uid's use is an admin's to see: " << nobody.out;
  EXPECT_NE(nobody.out.find("uid 65534 "), std::string::npos) << nobody.out;
}

// A socket only a group may use: the refusal names the group to join.
TEST_F(CliTest, ThePermissionErrorNamesTheGroup) {
  GPUBROKER_NEEDS_ROOT("(to connect as another user)");
  ASSERT_EQ(::chmod(broker_->socket().c_str(), 0660), 0);
  CtlRun r = CtlAsNobody("ls");
  EXPECT_EQ(r.status, 5) << r.out;
  EXPECT_NE(r.out.find("the socket is mode 0660, owner uid 0, group root; members of group root may connect, "
                       "and you are not one (ask for it: usermod -aG root $USER"),
            std::string::npos)
      << r.out;
}

TEST_F(CliTest, DoctorSaysOkOrWhatToDoAndItsStatusSaysWhetherAnythingFailed) {
  ASSERT_EQ(Ctl("create weights/l0 --bytes 16").status, 0);
  CtlRun healthy = Ctl("doctor");
  EXPECT_EQ(healthy.status, 0) << healthy.out;
  for (const char* line : {"OK    socket      " , "OK    broker      answers", "OK    hello       ",
                           "OK    registry    readable without asking the broker: 1 slot(s)",
                           "OK    records     every slot record decodes: 1 through the broker, the same in the "
                           "shared registry",
                           "OK    permissions you may attach every slot listed", "latency     a round trip"}) {
    EXPECT_NE(healthy.out.find(line), std::string::npos) << line << "\n" << healthy.out;
  }
  ASSERT_EQ(Ctl("drain").status, 0);
  CtlRun draining = Ctl("doctor --json");
  EXPECT_EQ(draining.status, 0) << "a warning is not a failure";
  EXPECT_NE(draining.out.find(R"("check":"hello","detail":"gpubrokerd )"), std::string::npos) << draining.out;
  EXPECT_NE(draining.out.find(R"("status":"warn")"), std::string::npos) << draining.out;
  CtlRun none = Ctl("doctor", broker_->dir() + "/nothing.sock");
  EXPECT_EQ(none.status, 1);
  EXPECT_NE(none.out.find("FAIL  socket      no socket at " + broker_->dir() + "/nothing.sock (given with --socket)"),
            std::string::npos) << none.out;
  EXPECT_NE(none.out.find("-> start a broker"), std::string::npos) << none.out;
}

// gpubrokerd --check-config: the whole configuration as a start would check
// it, pools included, with nothing bound or created; exit 0 or 2.
TEST(CheckConfig, ChecksWhatAStartWouldAndTouchesNothing) {
  const std::string dir = ::testing::TempDir() + "/gpb-check-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  auto check = [&](const std::string& yaml) {
    std::ofstream(dir + "/c.yaml") << "socket:\n  path: " << dir << "/run/s.sock\n" << yaml;
    std::string cmd = std::string(GPUBROKERD_PATH) + " --check-config " + dir + "/c.yaml 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    return CtlRun{ExitCode(::pclose(p)), out};
  };
  CtlRun good = check("pools:\n  - name: in\n    backend: host\n    shape: [64, 1024]\n    dtype: float32\n");
  EXPECT_EQ(good.status, 0) << good.out;
  EXPECT_NE(good.out.find("OK (socket " + dir + "/run/s.sock, 1 pool(s), default backend host)"), std::string::npos)
      << good.out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/run")) << "checking binds and creates nothing";
  CtlRun group = check("pools:\n  - name: in\n    backend: host\n    bytes: 4096\n    group: no-such-group-here\n");
  EXPECT_EQ(group.status, 2);
  EXPECT_NE(group.out.find("pool 'in': unknown group 'no-such-group-here'"), std::string::npos) << group.out;
  CtlRun big = check("limits:\n  max_host_bytes: 1MiB\npools:\n  - name: in\n    backend: host\n    bytes: 2MiB\n");
  EXPECT_EQ(big.status, 2);
  EXPECT_NE(big.out.find("exceeds limits.max_host_bytes"), std::string::npos) << big.out;
  int empty = std::system((std::string(GPUBROKERD_PATH) + " --check-config '' >/dev/null 2>&1").c_str());
  EXPECT_EQ(ExitCode(empty), 2) << "an empty FILE is a usage error, not a broker start";
  CtlRun key = check("logging:\n  levle: info\n");
  EXPECT_EQ(key.status, 2);
  EXPECT_NE(key.out.find("c.yaml:4:3: unknown key 'levle'"), std::string::npos) << key.out;
  std::filesystem::remove_all(dir);
}

// A live slot of `buffers` buffers in host memory, made by `c`.
void CreateLive(Client& c, const std::string& name, uint32_t buffers, uint32_t mode = 0600) {
  CreateOptions o;
  o.name = name;
  o.shape = {64};
  o.backend = BackendKind::kHost;
  o.buffers = buffers;
  o.mode = mode;
  ASSERT_TRUE(c.Create(o).ok());
}

// Leases on `name`'s allocation, as the broker counts them (0 if it has none).
uint32_t LeasesOn(Client& c, const std::string& name) {
  auto s = c.Stat(name);
  return s.ok() ? s->lease_count : 0;
}

// A version committed by a writer in this process (gpubrokerctl is another):
// `wait` prints exactly the version reached; it takes the version current
// when it starts as its baseline before it attaches, so once its lease shows,
// the next commit is the one it waits for.
TEST_F(CliTest, WaitPrintsTheVersionAWriterCommits) {
  auto producer = broker_->Connect("producer");
  ASSERT_TRUE(producer.ok());
  CreateLive(*producer, "feed", 2);
  CtlRun none = Ctl("wait feed --version 0 --timeout 0");
  EXPECT_EQ(none.status, 10) << "nothing committed yet: " << none.out;

  auto first = StartCtl("wait feed");
  ASSERT_TRUE(WaitFor([&] { return LeasesOn(*producer, "feed") == 1; })) << "gpubrokerctl never attached";
  auto writer = producer->OpenWriter("feed");
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  ASSERT_TRUE(writer->Begin().ok());
  auto v1 = writer->Commit();
  ASSERT_TRUE(v1.ok() && *v1 == 1u);
  CtlRun reached = Finish(*first);
  EXPECT_EQ(reached.status, 0) << reached.out;
  EXPECT_EQ(reached.out, "1\n");

  // Default baseline now 1: a commit of 2 ends it, and --json says so.
  auto second = StartCtl("wait feed --json");
  ASSERT_TRUE(WaitFor([&] { return LeasesOn(*producer, "feed") == 2; })) << "gpubrokerctl never attached";
  ASSERT_TRUE(writer->Begin().ok());
  ASSERT_TRUE(writer->Commit().ok());
  CtlRun json = Finish(*second);
  EXPECT_EQ(json.status, 0) << json.out;
  EXPECT_EQ(json.out, "{\"after\":1,\"name\":\"feed\",\"version\":2}\n");

  // --version 0 on a committed slot: at once (--timeout 0: not one wait).
  CtlRun at_once = Ctl("wait feed --version 0 --timeout 0");
  EXPECT_EQ(at_once.status, 0) << at_once.out;
  EXPECT_EQ(at_once.out, "2\n");
  EXPECT_EQ(Ctl("wait feed --version 1").out, "2\n");

  auto started = std::chrono::steady_clock::now();
  CtlRun timeout = Ctl("wait feed --timeout 0.2");
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(200));
  EXPECT_EQ(timeout.status, 10) << timeout.out;
  EXPECT_NE(timeout.out.find("timeout: no version of 'feed' after 2 within 0.2 s (newest: 2)"), std::string::npos)
      << timeout.out;
  EXPECT_EQ(Ctl("wait feed --version 7 --timeout 0").status, 10);
  EXPECT_EQ(Ctl("wait feed --timeout -1").status, 8);
  EXPECT_EQ(Ctl("wait feed --timeout 1s").status, 8);
  EXPECT_EQ(Ctl("wait feed --version x").status, 8);
  EXPECT_EQ(Ctl("wait no/such --timeout 1").status, 4);

  // A plain slot is version 1: --version 0 returns at once there too.
  EXPECT_EQ(Ctl("create plain --bytes 16").status, 0);
  EXPECT_EQ(Ctl("wait plain --version 0 --timeout 0").out, "1\n");
}

// The name goes while gpubrokerctl waits: its own lease keeps the memory, so
// no version would ever come; it notices, says so and exits 4. Ctrl-C ends it
// at once, and its lease with it; a broker that stops ends it with 3.
TEST_F(CliTest, WaitEndsWhenTheSlotGoesOnSigintAndWhenTheBrokerStops) {
  auto producer = broker_->Connect("producer");
  ASSERT_TRUE(producer.ok());
  CreateLive(*producer, "feed", 2);
  auto removed = StartCtl("wait feed");
  ASSERT_TRUE(WaitFor([&] { return LeasesOn(*producer, "feed") == 1; }));
  ASSERT_EQ(Ctl("rm feed").status, 0);
  CtlRun gone = Finish(*removed);
  EXPECT_EQ(gone.status, 4) << gone.out;
  EXPECT_NE(gone.out.find("not_found: slot 'feed' was destroyed"), std::string::npos) << gone.out;

  CreateLive(*producer, "feed2", 1);
  auto interrupted = StartCtl("wait feed2");
  ASSERT_TRUE(WaitFor([&] { return LeasesOn(*producer, "feed2") == 1; }));
  interrupted->Kill(SIGINT);
  EXPECT_EQ(Finish(*interrupted).status, 128 + SIGINT);
  EXPECT_TRUE(WaitFor([&] { return LeasesOn(*producer, "feed2") == 0; })) << "its lease went with it";

  auto orphaned = StartCtl("wait feed2");
  ASSERT_TRUE(WaitFor([&] { return LeasesOn(*producer, "feed2") == 1; }));
  broker_->Stop();
  CtlRun stopped = Finish(*orphaned);
  EXPECT_EQ(stopped.status, 3) << stopped.out;
  EXPECT_NE(stopped.out.find("unavailable: waiting for a version"), std::string::npos) << stopped.out;
}

TEST_F(CliTest, CreateBuffersAndLsShowVersionsAndBuffers) {
  CtlRun live = Ctl("create live --bytes 64 --buffers 3");
  ASSERT_EQ(live.status, 0) << live.out;
  EXPECT_EQ(live.out, "created live: uint8 (64,), 64 B, 3 buffer(s), no version yet\n");
  ASSERT_EQ(Ctl("create plain --bytes 16").status, 0);
  EXPECT_EQ(Ctl("ls --format json --fields name,version,buffers").out,
            "[{\"buffers\":3,\"name\":\"live\",\"version\":0},{\"buffers\":1,\"name\":\"plain\",\"version\":1}]\n");
  CtlRun json = Ctl("ls --format json");
  EXPECT_NE(json.out.find("\"buffer_bytes\":512,\"buffers\":3,"), std::string::npos) << json.out;
  CtlRun table = Ctl("ls");
  EXPECT_EQ(table.out.rfind("NAME ", 0), 0u);
  EXPECT_NE(table.out.find("  VERSION  BUFFERS\n"), std::string::npos) << table.out;

  auto c = broker_->Connect("producer");
  ASSERT_TRUE(c.ok());
  auto writer = c->OpenWriter("live");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Begin().ok());
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(Ctl("ls live --format csv,noheader --fields name,version,buffers").out, "live,1,3\n")
      << "the committed version, not the one the slot was made with";
  EXPECT_NE(Ctl("show live --json").out.find("\"version\":1,"), std::string::npos);

  CtlRun too_many = Ctl("create x --bytes 16 --buffers 9");
  EXPECT_EQ(too_many.status, 8);
  EXPECT_NE(too_many.out.find("--buffers must be an integer 0..8"), std::string::npos) << too_many.out;
  CtlRun view = Ctl("create live/v --base live --offset 0 --bytes 8 --buffers 2");
  EXPECT_EQ(view.status, 8);
  EXPECT_NE(view.out.find("a view (--base) has its base's buffers"), std::string::npos) << view.out;
  ASSERT_EQ(Ctl("create live/v --base live --offset 0 --shape 8").status, 0);
  EXPECT_EQ(Ctl("ls live/v --format csv,noheader --fields name,version,buffers").out, "live/v,1,3\n")
      << "a view has its allocation's versions and buffers";
}

// show: who pins which version in which buffer, and who writes; `leases`
// lists the same per client. Both need admin rights; show without them
// still shows the slot and says what it leaves out.
TEST_F(CliTest, ShowAndLeasesSayWhoPinsAndWhoWrites) {
  auto producer = broker_->Connect("producer");
  auto consumer = broker_->Connect("consumer");
  ASSERT_TRUE(producer.ok() && consumer.ok());
  CreateLive(*producer, "feed", 2, 0644);
  auto writer = producer->OpenWriter("feed");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Begin().ok());
  ASSERT_TRUE(writer->Commit().ok());
  auto reader = consumer->OpenReader("feed");
  ASSERT_TRUE(reader.ok());
  auto pinned = reader->Acquire();
  ASSERT_TRUE(pinned.ok() && pinned->version == 1u);
  auto writing = writer->Begin();
  ASSERT_TRUE(writing.ok());
  ASSERT_NE(*writing, pinned->buffer);
  const std::string pid = std::to_string(::getpid());
  const std::string r = std::to_string(consumer->client_id()), w = std::to_string(producer->client_id());
  const std::string b = std::to_string(pinned->buffer), wb = std::to_string(*writing);

  CtlRun show = Ctl("show feed");
  ASSERT_EQ(show.status, 0) << show.out;
  EXPECT_NE(show.out.find("\nversion:          1\nbuffers:          2\n"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("\npins:             version 1 in buffer " + b + ": client " + r + " (consumer, pid " +
                          pid + ")\nwriter:           buffer " + wb + ": client " + w + " (producer, pid " + pid +
                          ")\n"),
            std::string::npos)
      << show.out;
  CtlRun json = Ctl("show feed --json");
  EXPECT_NE(json.out.find("\"pins\":[{\"buffer\":" + b + ",\"client_id\":" + r +
                          ",\"client_name\":\"consumer\",\"pid\":" + pid + ",\"version\":1}]"),
            std::string::npos)
      << json.out;
  EXPECT_NE(json.out.find("\"writer\":{\"buffer\":" + wb + ",\"client_id\":" + w +
                          ",\"client_name\":\"producer\",\"pid\":" + pid + "}"),
            std::string::npos)
      << json.out;

  auto slot = producer->Stat("feed");
  ASSERT_TRUE(slot.ok());
  const std::string allocation = "\"allocation_bytes\":" + std::to_string(slot->allocation_bytes) +
                                 ",\"allocation_id\":" + std::to_string(slot->allocation_id);
  CtlRun leases = Ctl("leases --json");
  ASSERT_EQ(leases.status, 0) << leases.out;
  EXPECT_NE(leases.out.find("{" + allocation + ",\"client_id\":" + r + ",\"client_name\":\"consumer\",\"count\":1," +
                            "\"pid\":" + pid + ",\"pinned_buffer\":" + b + ",\"pinned_version\":1,\"self\":false," +
                            "\"slot\":\"feed\",\"writing_buffer\":null}"),
            std::string::npos)
      << leases.out;
  EXPECT_NE(leases.out.find("{" + allocation + ",\"client_id\":" + w + ",\"client_name\":\"producer\",\"count\":1," +
                            "\"pid\":" + pid + ",\"pinned_buffer\":null,\"pinned_version\":null,\"self\":false," +
                            "\"slot\":\"feed\",\"writing_buffer\":" + wb + "}"),
            std::string::npos)
      << leases.out;
  CtlRun table = Ctl("leases");
  EXPECT_NE(table.out.find("PINNED_VERSION  PINNED_BUFFER  WRITING_BUFFER\n"), std::string::npos) << table.out;

  ASSERT_TRUE(reader->Release().ok());
  ASSERT_TRUE(writer->Abort().ok());
  CtlRun after = Ctl("show feed");
  EXPECT_NE(after.out.find("\npins:             none\nwriter:           none\n"), std::string::npos) << after.out;

  GPUBROKER_NEEDS_ROOT("to run gpubrokerctl as another user");
  ASSERT_EQ(std::system("command -v setpriv >/dev/null"), 0) << "setpriv (util-linux) is missing";
  CtlRun not_admin = CtlAsNobody("show feed");
  EXPECT_EQ(not_admin.status, 0) << not_admin.out;
  EXPECT_NE(not_admin.out.find("\nversion:          1\n"), std::string::npos) << not_admin.out;
  EXPECT_NE(not_admin.out.find("\npins:             not shown: the broker tells only root or its admin group\n"),
            std::string::npos)
      << not_admin.out;
  EXPECT_NE(CtlAsNobody("show feed --json").out.find("\"pins_error\":\"permission_denied: "), std::string::npos);
  EXPECT_EQ(CtlAsNobody("leases").status, 5);
}

TEST_F(CliTest, ShutdownStopsTheBroker) {
  EXPECT_EQ(Ctl("shutdown").status, 0);
  EXPECT_EQ(broker_->Stop(0), 0);  // reap: it has exited on its own
}

}  // namespace
}  // namespace gpubroker::testing

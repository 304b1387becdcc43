// gpubrokerctl's outputs and exit statuses against a real broker.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/integration/harness.h"

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
    std::string cmd = std::string(GPUBROKERCTL_PATH) + " --socket " +
                      (socket.empty() ? broker_->socket() : socket) + " " + args + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    return {WEXITSTATUS(status), out};
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
  EXPECT_EQ(refused.status, 3);
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
                      std::to_string(cword) + " && _gpubrokerctl && echo \"${COMPREPLY[*]}\"'";
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
}

TEST_F(CliTest, DoctorSaysOkOrWhatToDoAndItsStatusSaysWhetherAnythingFailed) {
  ASSERT_EQ(Ctl("create weights/l0 --bytes 16").status, 0);
  CtlRun healthy = Ctl("doctor");
  EXPECT_EQ(healthy.status, 0) << healthy.out;
  for (const char* line : {"OK    socket      " , "OK    broker      answers", "OK    hello       ",
                           "OK    registry    readable without asking the broker: 1 slot(s)",
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
    return CtlRun{WEXITSTATUS(::pclose(p)), out};
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
  EXPECT_EQ(WEXITSTATUS(empty), 2) << "an empty FILE is a usage error, not a broker start";
  CtlRun key = check("logging:\n  levle: info\n");
  EXPECT_EQ(key.status, 2);
  EXPECT_NE(key.out.find("c.yaml:4:3: unknown key 'levle'"), std::string::npos) << key.out;
  std::filesystem::remove_all(dir);
}

TEST_F(CliTest, ShutdownStopsTheBroker) {
  EXPECT_EQ(Ctl("shutdown").status, 0);
  int status = broker_->Stop(0);  // reap: it has exited on its own
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace gpubroker::testing

// gpubrokerctl's outputs and exit statuses against a real broker.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>

#include "tests/integration/harness.h"

namespace gpubroker::testing {
namespace {

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
  EXPECT_NE(show.out.find("dtype:       bfloat16"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("leases:      0"), std::string::npos);

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
  EXPECT_NE(Ctl("status").out.find(": draining"), std::string::npos);
  CtlRun refused = Ctl("create x --bytes 16");
  EXPECT_EQ(refused.status, 3);
  EXPECT_NE(refused.out.find("draining"), std::string::npos) << refused.out;
  EXPECT_EQ(Ctl("drain --off").status, 0);
  EXPECT_EQ(Ctl("create x --bytes 16").status, 0);
  EXPECT_EQ(Ctl("reload").status, 0);
  EXPECT_EQ(Ctl("show x").status, 0);  // a reload keeps what clients made
}

TEST_F(CliTest, ShutdownStopsTheBroker) {
  EXPECT_EQ(Ctl("shutdown").status, 0);
  int status = broker_->Stop(0);  // reap: it has exited on its own
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace gpubroker::testing

// The permission matrix: owner / group / other / admin group / root, times
// attach / write access / destroy, for every interesting mode. Clients run as
// real other uids (needs root, as CI is); a refused attach leaves no new fd.
// Write access is tried for real, by a write through the view in a process
// of its own (a refused write kills it). GPUBROKER_TEST_BACKEND runs the same
// matrix on CUDA slots, written by a kernel.
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "tests/integration/harness.h"
#include "tests/support/require.h"
#if GPUBROKER_GPU_KERNELS
#include "tests/gpu/kernels.h"
#endif

namespace gpubroker::testing {
namespace {

struct Identity {
  const char* name;
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};

constexpr gid_t kAdminGroup = 4242;
const Identity kOwner{"owner", 1000, 1000, {}};
const Identity kIdentities[] = {
    {"owner", 1000, 1000, {}},
    {"group", 1001, 1000, {}},          // primary group is the slot's
    {"group-supp", 1004, 1004, {1000}},  // a supplementary group is the slot's
    {"other", 1002, 1002, {}},
    {"admin", 1003, 1003, {kAdminGroup}},
    {"nobody", 65534, 65534, {}},
    {"root", 0, 0, {}},
};
const uint32_t kModes[] = {0000, 0400, 0600, 0640, 0660, 0604, 0606, 0644, 0666};

int OpenFds() {
  return static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                        std::filesystem::directory_iterator()));
}

bool Become(const Identity& who) {
  return ::setgroups(who.groups.size(), who.groups.data()) == 0 && ::setgid(who.gid) == 0 &&
         ::setuid(who.uid) == 0;
}

// What the mode bits (or admin rights) allow: bit 4 attach, 2 write/destroy.
bool Allowed(const Identity& who, uint32_t mode, uint32_t bit) {
  if (who.uid == 0 || std::find(who.groups.begin(), who.groups.end(), kAdminGroup) != who.groups.end()) {
    return true;
  }
  if (who.uid == kOwner.uid) return (mode >> 6) & bit;
  bool group = who.gid == kOwner.gid ||
               std::find(who.groups.begin(), who.groups.end(), kOwner.gid) != who.groups.end();
  return group ? ((mode >> 3) & bit) != 0 : (mode & bit) != 0;
}

std::string Slot(uint32_t mode, const std::string& what) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "m%04o/%s", mode, what.c_str());
  return buf;
}

// Whether a write through a fresh attach of `name` lands, tried in a process
// of its own (forked before this one touches CUDA): "yes", "no" (the write
// faulted or failed), or why it could not be tried.
std::string TryWrite(const BrokerProcess& broker, const std::string& name, const std::string& who) {
  pid_t pid = ::fork();
  if (pid == 0) {
    auto c = Client::Connect(broker.Options(who + "-writer"));
    if (!c.ok()) ::_exit(2);
    auto v = c->Attach(name, AttachMode::kAsAllowed);
    if (!v.ok()) ::_exit(3);
    if (v->device().type == Device::kCpu) {
      *static_cast<volatile uint8_t*>(v->data()) = 0x5a;  // SIGSEGV where the mapping is read-only
      ::_exit(0);
    }
#if GPUBROKER_GPU_KERNELS
    ::_exit(gpu::FillPattern(v->data(), v->nbytes(), 0x5a5a) ? 0 : 1);
#else
    ::_exit(4);
#endif
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return "NOT-TRIED";
  const int code = ExitCode(status);
  if (code == 0) return "yes";
  if (code == 1 || code == 128 + SIGSEGV || code == 128 + SIGBUS) return "no";
  return "FAILED-" + std::to_string(code);
}

TEST(Permissions, ModeBitsAdminGroupAndRoot) {
  GPUBROKER_NEEDS_ROOT("to run clients as other users");
  auto broker = BrokerProcess::Start({"--admin-group", std::to_string(kAdminGroup)});
  ASSERT_NE(broker, nullptr);

  ChildProcess owner([&](Channel&) {
    if (!Become(kOwner)) return 20;
    auto c = Client::Connect(broker->Options("owner"));
    if (!c.ok()) return 21;
    for (uint32_t mode : kModes) {
      CreateOptions o;
      o.shape = {4096};
      o.mode = mode;
      o.backend = TestBackend();
      o.name = Slot(mode, "attach");
      if (!c->Create(o).ok()) return 22;
      for (const Identity& who : kIdentities) {
        o.name = Slot(mode, std::string("destroy-") + who.name);
        if (!c->Create(o).ok()) return 23;
      }
    }
    return 0;
  });
  ASSERT_EQ(owner.Wait(), 0);

  for (const Identity& who : kIdentities) {
    SCOPED_TRACE(who.name);
    ChildProcess client([&](Channel& ch) {
      if (!Become(who)) return 30;
      std::map<uint32_t, std::string> wrote;  // before this process maps anything
      for (uint32_t mode : kModes) {
        if (Allowed(who, mode, 4)) wrote[mode] = TryWrite(*broker, Slot(mode, "attach"), who.name);
      }
      auto c = Client::Connect(broker->Options(who.name));
      if (!c.ok()) return 31;
      for (uint32_t mode : kModes) {
        int before = OpenFds();
        auto v = c->Attach(Slot(mode, "attach"), AttachMode::kAsAllowed);
        int after = OpenFds();
        std::string line = Slot(mode, "") + " attach=" + (v.ok() ? "ok" : std::string(CodeName(v.status().code())));
        if (v.ok()) {
          line += std::string(" granted=") + (v->writable() ? "rw" : "r") + " write=" + wrote[mode];
        } else if (after != before) {
          line += " LEAKED-FD";
        }
        // Asking for write access where there is none is refused, not quietly downgraded.
        auto rw = c->Attach(Slot(mode, "attach"), AttachMode::kReadWrite);
        line += " rw=" + std::string(rw.ok() ? (rw->writable() ? "ok" : "READ-ONLY") : CodeName(rw.status().code()));
        Status d = c->Destroy(Slot(mode, std::string("destroy-") + who.name));
        line += std::string(" destroy=") + (d.ok() ? "ok" : std::string(CodeName(d.code())));
        ch.SendLine(line);
      }
      return 0;
    });
    for (uint32_t mode : kModes) {
      std::string expect = Slot(mode, "");
      // A legacy IPC handle cannot be opened read-only (CUDA has no such
      // mapping: docs/SECURITY.md), so on cuda_ipc whoever may read can write.
      const bool can_write = Allowed(who, mode, 2) || TestBackend() == BackendKind::kCudaIpc;
      expect += Allowed(who, mode, 4) ? std::string(" attach=ok granted=") + (Allowed(who, mode, 2) ? "rw" : "r") +
                                            " write=" + (can_write ? "yes" : "no")
                                      : " attach=permission_denied";
      expect += Allowed(who, mode, 4) && Allowed(who, mode, 2) ? " rw=ok" : " rw=permission_denied";
      expect += Allowed(who, mode, 2) ? " destroy=ok" : " destroy=permission_denied";
      EXPECT_EQ(client.channel().ReceiveLine(), expect);
    }
    EXPECT_EQ(client.Wait(), 0);
  }
  EXPECT_EQ(broker->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace gpubroker::testing

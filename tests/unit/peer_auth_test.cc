// The cluster key and the peers' challenge (broker/peer_auth.h): which key
// files are refused, and that a proof holds only for its key, its role and
// its pair of nonces.
#include "broker/peer_auth.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace gpubroker {
namespace {

class KeyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gpb-key-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string Write(const std::string& name, const std::string& bytes, mode_t mode) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << bytes;
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }
  std::string dir_;
};

TEST_F(KeyFile, OnlyAPrivateRegularFileOfSaneSizeIsAKey) {
  const std::string key(32, 'k');
  EXPECT_TRUE(ClusterKey::Load(Write("good", key, 0600)).ok());
  EXPECT_TRUE(ClusterKey::Load(Write("readonly", key, 0400)).ok());

  auto open = ClusterKey::Load(Write("open", key, 0644));
  EXPECT_EQ(open.status().code(), Code::kPermissionDenied);
  EXPECT_NE(open.status().message().find("mode 0644"), std::string::npos) << open.status().message();
  EXPECT_NE(open.status().message().find("chmod 600"), std::string::npos);
  EXPECT_EQ(ClusterKey::Load(Write("group", key, 0640)).status().code(), Code::kPermissionDenied);

  auto shorter = ClusterKey::Load(Write("short", std::string(31, 'k'), 0600));
  EXPECT_EQ(shorter.status().code(), Code::kInvalidArgument);
  EXPECT_NE(shorter.status().message().find("31 bytes"), std::string::npos);
  EXPECT_EQ(ClusterKey::Load(Write("long", std::string(4097, 'k'), 0600)).status().code(), Code::kInvalidArgument);

  // A link could point anywhere (a file another user controls): refused.
  const std::string link = dir_ + "/link";
  ASSERT_EQ(::symlink((dir_ + "/good").c_str(), link.c_str()), 0);
  EXPECT_FALSE(ClusterKey::Load(link).ok());
  EXPECT_FALSE(ClusterKey::Load(dir_).ok()) << "a directory";
  auto missing = ClusterKey::Load(dir_ + "/none");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("peers.key_file"), std::string::npos);
}

TEST(PeerAuth, AProofHoldsForItsKeyRoleAndNoncesOnly) {
  const ClusterKey key = ClusterKey::FromBytes(std::string(32, 'a'));
  const ClusterKey other = ClusterKey::FromBytes(std::string(31, 'a') + "b");
  const Nonce f = FreshNonce(), s = FreshNonce();
  EXPECT_NE(f, s) << "fresh nonces";
  const Mac proof = key.Prove("follower", f, s);
  const std::string_view mac(reinterpret_cast<const char*>(proof.data()), proof.size());
  EXPECT_TRUE(key.Verify("follower", f, s, mac));
  EXPECT_FALSE(other.Verify("follower", f, s, mac)) << "another key";
  EXPECT_FALSE(key.Verify("source", f, s, mac)) << "reflected back as the other role";
  EXPECT_FALSE(key.Verify("follower", s, f, mac)) << "nonces swapped";
  EXPECT_FALSE(key.Verify("follower", f, FreshNonce(), mac)) << "replayed to another challenge";
  EXPECT_FALSE(key.Verify("follower", f, s, mac.substr(1))) << "short";
  EXPECT_FALSE(key.Verify("follower", f, s, std::string(32, '\0')));
}

}  // namespace
}  // namespace gpubroker

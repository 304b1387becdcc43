#include "broker/config.h"

#include <unistd.h>

#include <cstdlib>

#include <gtest/gtest.h>

#include "broker/broker.h"
#include "common/socket_path.h"

namespace gpubroker {
namespace {

Status Parse(const std::string& yaml) { return ParseConfig(yaml, "test.yaml").status(); }

TEST(Config, EmbeddedDefaultParses) {
  auto c = ParseConfig(EmbeddedDefaultConfig(), "<embedded>");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->registry_name, "gpubroker");
  EXPECT_EQ(c->default_backend, "auto");
  EXPECT_EQ(c->socket_mode, 0666u);
  EXPECT_EQ(c->log_format, "auto") << "as docs/config.md says: the journal's format under systemd";
}

// The embedded config names no socket: the broker takes $GPUBROKER_SOCKET,
// else the place its clients look first (tests/systemd/rootless_test.sh runs
// the rule as users other than root).
TEST(Config, ASocketPathLeftOutFollowsTheClientsRule) {
  ::unsetenv("GPUBROKER_SOCKET");
  auto c = LoadConfig({});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  if (::geteuid() == 0) {
    EXPECT_EQ(c->socket_path, kSystemSocketPath);
    EXPECT_EQ(ClientDefaultSocketPath(), kSystemSocketPath);
  }
  ::setenv("GPUBROKER_SOCKET", "/tmp/elsewhere/b.sock", 1);
  c = LoadConfig({});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->socket_path, "/tmp/elsewhere/b.sock");
  EXPECT_EQ(ClientDefaultSocketPath(), "/tmp/elsewhere/b.sock");
  // A flag (or a file's socket.path) wins over the environment.
  c = LoadConfig({"", [](Config& config) {
                    config.socket_path = "/tmp/flag.sock";
                    return Status::Ok();
                  }});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->socket_path, "/tmp/flag.sock");
  ::setenv("GPUBROKER_SOCKET", "relative.sock", 1);
  c = LoadConfig({});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("socket.path must be an absolute path, not 'relative.sock'"),
            std::string::npos)
      << c.status().message();
  ::unsetenv("GPUBROKER_SOCKET");
}

TEST(Config, ExampleFileParses) {
  auto c = LoadConfigFile(GPUBROKER_SOURCE_DIR "/config/gpubroker.yaml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->pools.size(), 2u);
  EXPECT_EQ(c->pools[0].name, "staging/input");
  EXPECT_EQ(c->pools[0].shape, (std::vector<int64_t>{64, 1024}));
  EXPECT_EQ(c->pools[1].bytes, 16u << 20);
  EXPECT_EQ(c->limits.max_bytes_per_device, 70ull << 30);
  EXPECT_EQ(c->limits.max_connections_per_uid, 64u);
  EXPECT_EQ(c->socket_mode, 0660u);
}

TEST(Config, UnknownKeyNamesLineAndColumn) {
  Status s = Parse("socket:\n  path: /tmp/x.sock\n  mdoe: \"0600\"\n");
  EXPECT_EQ(s.code(), Code::kConfig);
  EXPECT_NE(s.message().find("test.yaml:3:3"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("mdoe"), std::string::npos);
}

// YAML keeps one of two equal keys without a word; a config with both would
// pass --check-config and then not do what one of them says.
TEST(Config, AKeyGivenTwiceIsRefused) {
  Status top = Parse("logging:\n  level: info\nlogging:\n  level: loud\n");
  EXPECT_EQ(top.code(), Code::kConfig);
  EXPECT_NE(top.message().find("test.yaml:3:1: key 'logging' appears twice in the top level"), std::string::npos)
      << top.message();
  Status inner = Parse("registry:\n  capacity: 16\n  capacity: 99999999\n");
  EXPECT_EQ(inner.code(), Code::kConfig);
  EXPECT_NE(inner.message().find("key 'capacity' appears twice in registry"), std::string::npos) << inner.message();
}

TEST(Config, WrongTypesAndImpossibleValues) {
  struct Case {
    const char* yaml;
    const char* where;
    const char* what;
  } cases[] = {
      {"registry:\n  capacity: lots\n", "test.yaml:2:13", "capacity"},
      {"registry:\n  capacity: 0\n", "test.yaml:2:13", "at least 1"},
      {"registry:\n  capacity: 99999999\n", "test.yaml:2:13", "registry.capacity"},
      {"socket:\n  mode: \"0999\"\n", "test.yaml:2:9", "octal"},
      {"socket:\n  path: relative.sock\n", "test.yaml:2:9", "absolute"},
      {"logging:\n  level: loud\n", "test.yaml:2:10", "logging.level"},
      {"logging:\n  format: xml\n", "test.yaml:2:11", "auto, text, json or journal"},
      {"limits:\n  max_bytes_per_uid: 12XB\n", "test.yaml:2:22", "unit"},
      {"limits:\n  max_bytes_per_client: 1GiB\n", "test.yaml:2:25", "max_bytes_per_uid"},
      {"limits:\n  max_host_bytes: -1\n", "test.yaml:2:19", "not a size"},
      {"limits:\n  max_connections: 8\n  reserved_admin_connections: 8\n", "test.yaml:2:3", "below"},
      {"limits:\n  hello_timeout_ms: 0\n", "test.yaml:2:3", "hello_timeout_ms"},
      {"registry:\n  mode: \"0644\"\n", "test.yaml:2:9", "over the socket"},
      {"socket:\n  mode: \"0644junk\"\n", "test.yaml:2:9", "octal"},
      {"pools:\n  - name: p\n    dtype: float7\n    shape: [4]\n", "test.yaml:3:12", "dtype"},
      {"pools:\n  - name: p\n", "test.yaml:2:5", "shape or bytes"},
      {"pools:\n  - name: \"a/../x\"\n    bytes: 4\n", "test.yaml:2:11", "'..'"},
      {"pools:\n  - name: p\n    shape: [4]\n  - name: p\n    shape: [4]\n", "test.yaml:4:5", "twice"},
      {"pools:\n  - name: p\n    dtype: float32\n    shape: [4]\n    bytes: 8\n", "test.yaml:5:12", "smaller"},
      {"default_backend: gpu\n", "test.yaml:1:18", "default_backend"},
      {"registry: [1, 2]\n", "test.yaml:1:11", "mapping"},
      {"socket:\n  path: [unclosed\n", "test.yaml:", ""},
  };
  for (const auto& c : cases) {
    Status s = Parse(c.yaml);
    EXPECT_EQ(s.code(), Code::kConfig) << c.yaml;
    EXPECT_NE(s.message().find(c.where), std::string::npos) << c.yaml << " -> " << s.message();
    EXPECT_NE(s.message().find(c.what), std::string::npos) << c.yaml << " -> " << s.message();
  }
}

TEST(Config, PoolDeviceIsAnOrdinalOrAUuid) {
  auto c = ParseConfig(
      "pools:\n  - name: a\n    device: 1\n    bytes: 64\n"
      "  - name: b\n    device: GPU-a1d6f876-708f-2787-a05e-d22e6235cc19\n    bytes: 64\n",
      "test.yaml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->pools[0].device_ordinal, 1);
  ASSERT_TRUE(c->pools[1].device_uuid.has_value());
  EXPECT_EQ(FormatUuid(*c->pools[1].device_uuid), "GPU-a1d6f876-708f-2787-a05e-d22e6235cc19");
  Status s = Parse("pools:\n  - name: a\n    device: GPU-zz\n    bytes: 64\n");
  EXPECT_NE(s.message().find("test.yaml:3:13"), std::string::npos) << s.message();
}

TEST(Config, CrossFieldRules) {
  Status quota = Parse("registry:\n  capacity: 64\nlimits:\n  max_slots_per_uid: 64\n");
  EXPECT_EQ(quota.code(), Code::kConfig);
  EXPECT_NE(quota.message().find("limits.max_slots_per_uid (64) is not below registry.capacity (64)"),
            std::string::npos)
      << quota.message();
  EXPECT_TRUE(Parse("registry:\n  capacity: 64\n").ok());  // not given: a quarter of the capacity
  EXPECT_TRUE(Parse("registry:\n  capacity: 64\nlimits:\n  max_slots_per_uid: 16\n").ok());
  EXPECT_TRUE(Parse("registry:\n  capacity: 64\nlimits:\n  max_slots_per_uid: 0\n").ok());
  Status s = Parse("registry:\n  capacity: 4\nlimits:\n  max_slots: 8\n");
  EXPECT_EQ(s.code(), Code::kConfig);
  EXPECT_NE(s.message().find("max_slots"), std::string::npos);
}

TEST(Config, FlagsAreCheckedLikeTheFile) {
  // What main() does with --registry, --max-connections and --socket.
  auto c = ParseConfig(EmbeddedDefaultConfig(), "<embedded>");
  ASSERT_TRUE(c.ok());
  Config bad = *c;
  bad.registry_name = std::string(70, 'r');
  EXPECT_NE(ValidateConfig(bad).message().find("registry.name"), std::string::npos);
  bad = *c;
  bad.limits.max_connections = 0;
  EXPECT_NE(ValidateConfig(bad).message().find("max_connections"), std::string::npos);
  bad = *c;
  bad.socket_path = "relative.sock";
  EXPECT_NE(ValidateConfig(bad).message().find("absolute"), std::string::npos);
  EXPECT_TRUE(ValidateConfig(*c).ok());
}

// The peers section (docs/multinode.md): what a follower and a source are
// told, and every way of getting it wrong named.
TEST(Config, Peers) {
  auto c = ParseConfig(R"(
peers:
  listen: 10.0.0.1:7400
  key_file: /etc/gpubroker/cluster.key
  interface: eth1
  export: [policy, critic]
  stall_timeout_ms: 2500
  fanout: 2
  follow:
    - {tree: policy, from: 10.0.0.2:7400, group: "0", mode: "0640"}
    - {tree: critic, from: 10.0.0.2:7400, device: cpu}
    - {tree: value, from: 10.0.0.2:7400, device: "cuda:1"}
)", "test.yaml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->peers.enabled());
  EXPECT_EQ(c->peers.listen, "10.0.0.1:7400");
  EXPECT_EQ(c->peers.exports, (std::vector<std::string>{"policy", "critic"}));
  EXPECT_EQ(c->peers.stall_timeout_ms, 2500u);
  EXPECT_EQ(c->peers.fanout, 2u);
  EXPECT_EQ(ParseConfig("", "empty.yaml")->peers.fanout, 0u) << "no limit unless configured";
  ASSERT_EQ(c->peers.follow.size(), 3u);
  EXPECT_EQ(c->peers.follow[0].tree, "policy");
  EXPECT_EQ(c->peers.follow[0].from, "10.0.0.2:7400");
  EXPECT_EQ(c->peers.follow[0].mode, 0640u);
  EXPECT_FALSE(c->peers.follow[0].device.has_value()) << "unset: where the source's tree is";
  ASSERT_TRUE(c->peers.follow[1].device.has_value());
  EXPECT_TRUE(c->peers.follow[1].device->cpu);
  ASSERT_TRUE(c->peers.follow[2].device.has_value());
  EXPECT_FALSE(c->peers.follow[2].device->cpu);
  EXPECT_EQ(c->peers.follow[2].device->ordinal, 1);
  EXPECT_FALSE(ParseConfig("", "empty.yaml")->peers.enabled()) << "no peers unless configured";
  auto runtime_only = ParseConfig("peers: {key_file: /etc/gpubroker/cluster.key}", "key.yaml");
  ASSERT_TRUE(runtime_only.ok()) << runtime_only.status().ToString();
  EXPECT_TRUE(runtime_only->peers.enabled()) << "a key alone: the broker follows at run time (gpubrokerctl follow)";

  const std::pair<const char*, const char*> bad[] = {
      {"peers: {listen: '0.0.0.0:7400'}", "peers.key_file"},  // no key, no peers
      {"peers: {listen: '0.0.0.0:7400', key_file: relative.key}", "absolute path of the cluster key"},
      {"peers: {listen: 'host:7400', key_file: /k}", "is not IPV4:PORT"},
      {"peers: {listen: '10.0.0.1', key_file: /k}", "is not IPV4:PORT"},
      {"peers: {key_file: /k, follow: [{tree: p, from: '10.0.0.1:0'}]}", "peers.follow.from"},
      {"peers: {key_file: /k, follow: [{tree: p}]}", "needs tree and from"},
      {"peers: {key_file: /k, follow: [{tree: 'a b', from: '10.0.0.1:1'}]}", "peers.follow.tree"},
      {"peers: {key_file: /k, follow: [{tree: p, from: '10.0.0.1:1'}, {tree: p, from: '10.0.0.2:1'}]}",
       "followed twice"},
      {"peers: {key_file: /k, follow: [{tree: p, from: '10.0.0.1:1', owner: x}]}", "unknown key 'owner'"},
      {"peers: {key_file: /k, follow: [{tree: p, from: '10.0.0.1:1', device: tpu}]}", "peers.follow.device"},
      {"peers: {key_file: /k, export: policy}", "peers.export must be a list"},
      {"peers: {key_file: /k, stall_timeout_ms: 10}", "at least 100"},
      {"peers: {key_file: /k, fanout: 5000}", "peers.fanout"},
      {"peers: {key_file: /k, fanout: -1}", "peers.fanout"},
      {"peers: {port: 1}", "unknown key 'port' in peers"},
      {"peers: {key_file: relative.key}", "absolute path of the cluster key"},  // a key alone is checked too
  };
  for (const auto& [yaml, want] : bad) {
    Status s = Parse(yaml);
    EXPECT_EQ(s.code(), Code::kConfig) << yaml;
    EXPECT_NE(s.message().find(want), std::string::npos) << yaml << " -> " << s.message();
  }
}

TEST(Config, Groups) {
  EXPECT_EQ(*LookupGroup("0"), 0u);
  EXPECT_EQ(LookupGroup("no-such-group-here").status().code(), Code::kConfig);
}

}  // namespace
}  // namespace gpubroker

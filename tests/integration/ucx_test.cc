// The peer transport (broker/ucx.h) over real sockets on 127.0.0.1: messages
// both ways, every byte of reads both ways from fresh random memory, the
// limits it enforces, and a peer process killed mid-read. ctest runs it with
// UCX_NET_DEVICES=lo, so that no byte leaves through another interface.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "broker/ucx.h"

namespace gpubroker::ucx {
namespace {

using namespace std::chrono_literals;

// Progresses the workers until `done()` or `limit`, sleeping on their
// descriptors when none has anything left to do.
bool Drive(const std::vector<Worker*>& workers, const std::function<bool()>& done,
           std::chrono::seconds limit = 20s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    bool more = false;
    for (Worker* w : workers) more |= w->Progress(1ms);
    if (more || done()) continue;
    bool armed = true;
    for (Worker* w : workers) armed = w->Arm() && armed;
    if (!armed) continue;
    std::vector<pollfd> fds;
    for (Worker* w : workers) fds.push_back(pollfd{w->fd(), POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
  }
  return true;
}

std::vector<uint8_t> RandomBytes(size_t n) {
  std::mt19937_64 rng(std::random_device{}());
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(&v[i], &x, 8);
  }
  return v;
}

// What a side tells the other about its memory: address, size, packed key.
std::string Describe(const Registration& r) {
  std::string m(16, '\0');
  uint64_t a = r.address(), n = r.bytes();
  std::memcpy(&m[0], &a, 8);
  std::memcpy(&m[8], &n, 8);
  return m + r.packed_key();
}

struct Described {
  uint64_t address = 0, bytes = 0;
  std::string key;
};
Described Parse(std::string_view m) {
  Described d;
  if (m.size() < 16) return d;
  std::memcpy(&d.address, &m[0], 8);
  std::memcpy(&d.bytes, &m[8], 8);
  d.key = std::string(m.substr(16));
  return d;
}

// Reads all of `from` into `into` in 1 MiB pieces, all in flight at once;
// counts the reads that completed and those that failed.
struct Reads {
  int ok = 0, failed = 0, issued = 0;
  Status first_error = Status::Ok();
  bool finished() const { return ok + failed == issued; }
};
void ReadAll(Endpoint& ep, const RemoteKey& key, const Described& from, std::vector<uint8_t>& into, Reads& reads) {
  constexpr size_t kPiece = 1 << 20;
  for (size_t off = 0; off < from.bytes; off += kPiece) {
    size_t n = std::min(kPiece, static_cast<size_t>(from.bytes) - off);
    ++reads.issued;
    Status s = ep.Get(into.data() + off, n, from.address + off, key, [&reads](Status done) {
      if (done.ok()) {
        ++reads.ok;
      } else {
        if (reads.first_error.ok()) reads.first_error = done;
        ++reads.failed;
      }
    });
    if (!s.ok()) {
      ++reads.failed;
      if (reads.first_error.ok()) reads.first_error = s;
    }
  }
}

size_t FirstDifference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return i;
  }
  return a.size();
}

TEST(Ucx, MessagesAndReadsBothWaysCarryEveryByte) {
  auto server = Worker::Make("ucx_test server", {}, true);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto client = Worker::Make("ucx_test client", {}, true);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  constexpr size_t kBytes = 16 << 20;
  std::vector<uint8_t> server_data = RandomBytes(kBytes), client_data = RandomBytes(kBytes);
  std::vector<uint8_t> server_got(kBytes, 0), client_got(kBytes, 0);
  auto server_memory = (*server)->Register(server_data.data(), kBytes);
  auto client_memory = (*client)->Register(client_data.data(), kBytes);
  ASSERT_TRUE(server_memory.ok() && client_memory.ok());

  std::shared_ptr<Endpoint> accepted;
  ASSERT_TRUE((*server)->Listen("127.0.0.1", 0, [&](const std::shared_ptr<Endpoint>& ep) { accepted = ep; }).ok());
  ASSERT_NE((*server)->listen_port(), 0);
  RemoteKey server_key, client_key;  // each side's key to the other's memory
  Reads server_reads, client_reads;
  int failures = 0;
  (*server)->OnFailure([&](const std::shared_ptr<Endpoint>&, const Status&) { ++failures; });
  (*client)->OnFailure([&](const std::shared_ptr<Endpoint>&, const Status&) { ++failures; });
  // The client says hello with its memory; the server answers with its own
  // and reads the client's; the client reads the server's.
  (*server)->OnMessage([&](const std::shared_ptr<Endpoint>& from, uint16_t type, std::string_view body) {
    ASSERT_EQ(type, 1);
    ASSERT_EQ(from, accepted);
    Described d = Parse(body);
    ASSERT_EQ(d.bytes, kBytes);
    auto key = from->Unpack(d.key);
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    server_key = std::move(*key);
    ASSERT_TRUE(from->Send(2, Describe(**server_memory)).ok());
    ReadAll(*from, server_key, d, server_got, server_reads);
  });
  auto ep = (*client)->Connect("127.0.0.1", (*server)->listen_port());
  ASSERT_TRUE(ep.ok()) << ep.status().ToString();
  (*client)->OnMessage([&](const std::shared_ptr<Endpoint>& from, uint16_t type, std::string_view body) {
    ASSERT_EQ(type, 2);
    ASSERT_EQ(from, *ep);
    Described d = Parse(body);
    auto key = from->Unpack(d.key);
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    client_key = std::move(*key);
    ReadAll(*from, client_key, d, client_got, client_reads);
  });
  ASSERT_TRUE((*ep)->Send(1, Describe(**client_memory)).ok());
  ASSERT_TRUE(Drive({server->get(), client->get()}, [&] {
    return server_reads.issued > 0 && client_reads.issued > 0 && server_reads.finished() && client_reads.finished();
  })) << "server reads " << server_reads.ok << "/" << server_reads.issued << ", client reads " << client_reads.ok
      << "/" << client_reads.issued;
  EXPECT_EQ(server_reads.failed, 0) << server_reads.first_error.ToString();
  EXPECT_EQ(client_reads.failed, 0) << client_reads.first_error.ToString();
  EXPECT_EQ(server_reads.ok, 16);
  EXPECT_EQ(FirstDifference(server_got, client_data), kBytes) << "the server's copy of the client's bytes";
  EXPECT_EQ(FirstDifference(client_got, server_data), kBytes) << "the client's copy of the server's bytes";
  EXPECT_EQ(accepted->peer().rfind("127.0.0.1:", 0), 0u) << accepted->peer();
  EXPECT_EQ(failures, 0);
  server_key = RemoteKey();  // keys go before their endpoints
  client_key = RemoteKey();
}

// Connections by worker address, as brokers make them (a source connects
// to its follower's worker, whose address came over the broker's own
// handshake; no listener of UCX's): messages arrive on no endpoint of the
// receiver's (or on its own, where UCX pairs two): fresh random bodies, each
// checked whole, in order, both ways.
TEST(Ucx, WorkersConnectedByAddressExchangeMessagesBothWays) {
  auto a = Worker::Make("ucx_test a");
  auto b = Worker::Make("ucx_test b");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_FALSE((*a)->address().empty());
  (*b)->SetAnonymousMaxMessage(64 * 1024);
  auto ab = (*a)->ConnectTo((*b)->address(), "b");
  auto ba = (*b)->ConnectTo((*a)->address(), "a");
  ASSERT_TRUE(ab.ok() && ba.ok()) << ab.status().ToString() << ba.status().ToString();
  (*ba)->SetMaxMessage(64 * 1024);
  std::vector<std::string> to_b, to_a, at_b, at_a;
  for (int i = 0; i < 64; ++i) {
    auto r = RandomBytes(8 + (i * 997) % (60 * 1024));
    to_b.emplace_back(r.begin(), r.end());
    r = RandomBytes(8 + (i * 131) % 8000);
    to_a.emplace_back(r.begin(), r.end());
  }
  int failures = 0;
  (*a)->OnFailure([&](const std::shared_ptr<Endpoint>&, const Status&) { ++failures; });
  (*b)->OnFailure([&](const std::shared_ptr<Endpoint>&, const Status&) { ++failures; });
  (*a)->OnMessage([&](const std::shared_ptr<Endpoint>&, uint16_t type, std::string_view body) {
    if (type == 7) at_a.emplace_back(body);
  });
  (*b)->OnMessage([&](const std::shared_ptr<Endpoint>&, uint16_t type, std::string_view body) {
    if (type == 7) at_b.emplace_back(body);
  });
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE((*ab)->Send(7, to_b[i]).ok());
    ASSERT_TRUE((*ba)->Send(7, to_a[i]).ok());
  }
  ASSERT_TRUE(Drive({a->get(), b->get()}, [&] { return at_a.size() >= 64 && at_b.size() >= 64; }))
      << at_a.size() << " at a, " << at_b.size() << " at b";
  EXPECT_EQ(at_b, to_b) << "in order, every byte";
  EXPECT_EQ(at_a, to_a);
  EXPECT_EQ(failures, 0);
  EXPECT_EQ((*a)->ConnectTo("", "nobody").status().code(), Code::kInvalidArgument);
}

// A message of a head and bytes UCX reads in place (how the broker sends a
// version's chunks): each arrives whole and in order, and the memory stays
// alive while the send needs it though the sender dropped its own hold
// (under the sanitizers, a read after it went would be reported).
TEST(Ucx, AHeadAndBytesReadInPlaceArriveAsOneMessage) {
  auto a = Worker::Make("ucx_test in-place a");
  auto b = Worker::Make("ucx_test in-place b");
  ASSERT_TRUE(a.ok() && b.ok());
  (*b)->SetAnonymousMaxMessage(kMaxRaisedMessage);
  auto ab = (*a)->ConnectTo((*b)->address(), "b");
  ASSERT_TRUE(ab.ok()) << ab.status().ToString();
  std::vector<std::string> sent, got;
  int done = 0;
  (*b)->OnMessage([&](const std::shared_ptr<Endpoint>&, uint16_t type, std::string_view body) {
    if (type == 5) got.emplace_back(body);
  });
  for (int i = 0; i < 256; ++i) {
    auto head = RandomBytes(1 + i % 40);
    auto bytes = std::make_shared<std::vector<uint8_t>>(RandomBytes(1 + (i * 7919) % (kMaxRaisedMessage - 64)));
    sent.emplace_back(std::string(head.begin(), head.end()) + std::string(bytes->begin(), bytes->end()));
    const void* at = bytes->data();
    const size_t n = bytes->size();
    ASSERT_TRUE((*ab)->Send(5, std::string(head.begin(), head.end()), at, n, std::move(bytes),
                            [&](Status s) { done += s.ok(); })
                    .ok());
  }
  ASSERT_TRUE(Drive({a->get(), b->get()}, [&] { return got.size() >= 256 && done == 256; }))
      << got.size() << " arrived, " << done << " sends done";
  EXPECT_EQ(got, sent) << "in order, every byte of head and body";
  EXPECT_EQ((*ab)->Send(5, "h", sent[0].data(), kMaxRaisedMessage, nullptr).code(), Code::kInvalidArgument)
      << "the head counts toward the limit";
}

TEST(Ucx, LimitsAndBadAddressesAreNamed) {
  auto w = Worker::Make("ucx_test limits");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto bad = (*w)->Connect("not-an-address", 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'not-an-address' is not an IPv4 address"), std::string::npos);
  EXPECT_FALSE((*w)->Register(nullptr, 10).ok());
  std::shared_ptr<Endpoint> accepted;
  ASSERT_TRUE((*w)->Listen("127.0.0.1", 0, [&](const std::shared_ptr<Endpoint>& ep) { accepted = ep; }).ok());
  EXPECT_FALSE((*w)->Listen("127.0.0.1", 0, nullptr).ok()) << "one listener per worker";
  auto ep = (*w)->Connect("127.0.0.1", (*w)->listen_port());
  ASSERT_TRUE(ep.ok());
  Status big = (*ep)->Send(1, std::string(kMaxRaisedMessage + 1, 'x'));
  EXPECT_EQ(big.code(), Code::kInvalidArgument);
  EXPECT_NE(big.message().find("over the limit of " + std::to_string(kMaxRaisedMessage)), std::string::npos)
      << big.message();
  int got = 0;
  (*w)->OnMessage([&](const std::shared_ptr<Endpoint>&, uint16_t type, std::string_view body) {
    EXPECT_EQ(type, 9);
    EXPECT_EQ(body.size(), kMaxMessage);
    ++got;
  });
  ASSERT_TRUE((*ep)->Send(9, std::string(kMaxMessage, 'y')).ok()) << "the limit itself is allowed";
  ASSERT_TRUE(Drive({w->get()}, [&] { return got == 1; }));
  (*ep)->Close();
  EXPECT_FALSE((*ep)->open());
  EXPECT_FALSE((*ep)->Send(1, "after close").ok());
}

// A peer that speaks raw UCX, not through Endpoint (which refuses to send
// what a hostile peer would). It stays connected until it goes, so that what
// the worker reports is its refusal, not the peer hanging up.
class RawPeer {
 public:
  explicit RawPeer(uint16_t port, bool rma = false) {
    ucp_params_t p{};
    p.field_mask = UCP_PARAM_FIELD_FEATURES;
    p.features = UCP_FEATURE_AM | (rma ? UCP_FEATURE_RMA : 0);
    ok_ = ucp_init(&p, nullptr, &ctx_) == UCS_OK;
    ucp_worker_params_t wp{};
    ok_ = ok_ && ucp_worker_create(ctx_, &wp, &worker_) == UCS_OK;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&a);
    ep.sockaddr.addrlen = sizeof a;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ok_ = ok_ && ucp_ep_create(worker_, &ep, &ep_) == UCS_OK;
  }
  ~RawPeer() {
    if (ep_ != nullptr) {
      ucp_request_param_t cp{};
      cp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      cp.flags = UCP_EP_CLOSE_FLAG_FORCE;
      void* c = ucp_ep_close_nbx(ep_, &cp);
      while (c != nullptr && !UCS_PTR_IS_ERR(c) && ucp_request_check_status(c) == UCS_INPROGRESS) {
        ucp_worker_progress(worker_);
      }
      if (c != nullptr && !UCS_PTR_IS_ERR(c)) ucp_request_free(c);
    }
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (ctx_ != nullptr) ucp_cleanup(ctx_);
  }
  bool ok() const { return ok_; }
  // Sends one active message of our id with a header of `header_bytes` and
  // `body_bytes` of body, progressing `other` (the worker it goes to) until
  // this side is done with it.
  bool Send(size_t header_bytes, size_t body_bytes, Worker& other) {
    header_.assign(header_bytes, 'h');
    body_.assign(body_bytes, 'b');
    ucp_request_param_t rp{};
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    rp.flags = UCP_AM_SEND_FLAG_REPLY;
    void* r = ucp_am_send_nbx(ep_, 1, header_.data(), header_.size(), body_.data(), body_.size(), &rp);
    if (UCS_PTR_IS_ERR(r)) return false;
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (r != nullptr && ucp_request_check_status(r) == UCS_INPROGRESS && std::chrono::steady_clock::now() < end) {
      ucp_worker_progress(worker_);
      other.Progress(1ms);
    }
    if (r != nullptr) ucp_request_free(r);
    return true;
  }
  void Progress() { ucp_worker_progress(worker_); }
  // Reads (or writes) [address, address + bytes) of the other side with a
  // key to memory of its own, which UCX over TCP does not check: what an
  // unauthenticated peer would try. True if UCX reported success.
  bool Rma(bool write, uint64_t address, std::vector<uint8_t>& local, Worker& other) {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = local.data();
    mp.length = local.size();
    ucp_mem_h mem = nullptr;
    if (ucp_mem_map(ctx_, &mp, &mem) != UCS_OK) return false;
    void* packed = nullptr;
    size_t length = 0;
    ucp_rkey_h key = nullptr;
    bool ok = ucp_rkey_pack(ctx_, mem, &packed, &length) == UCS_OK && ucp_ep_rkey_unpack(ep_, packed, &key) == UCS_OK;
    if (packed != nullptr) ucp_rkey_buffer_release(packed);
    if (ok) {
      ucp_request_param_t rp{};
      void* r = write ? ucp_put_nbx(ep_, local.data(), local.size(), address, key, &rp)
                      : ucp_get_nbx(ep_, local.data(), local.size(), address, key, &rp);
      ok = !UCS_PTR_IS_ERR(r);
      const auto end = std::chrono::steady_clock::now() + 3s;
      while (ok && r != nullptr && ucp_request_check_status(r) == UCS_INPROGRESS &&
             std::chrono::steady_clock::now() < end) {
        ucp_worker_progress(worker_);
        other.Progress(1ms);
      }
      if (ok && r != nullptr) {
        ok = ucp_request_check_status(r) == UCS_OK;
        ucp_request_cancel(worker_, r);
        ucp_request_free(r);
      }
      if (ok && write) {  // a put is complete once a flush of the endpoint is
        void* f = ucp_ep_flush_nbx(ep_, &rp);
        while (f != nullptr && !UCS_PTR_IS_ERR(f) && ucp_request_check_status(f) == UCS_INPROGRESS &&
               std::chrono::steady_clock::now() < end) {
          ucp_worker_progress(worker_);
          other.Progress(1ms);
        }
        ok = f == nullptr || (!UCS_PTR_IS_ERR(f) && ucp_request_check_status(f) == UCS_OK);
        if (f != nullptr && !UCS_PTR_IS_ERR(f)) ucp_request_free(f);
      }
      ucp_rkey_destroy(key);
    }
    ucp_mem_unmap(ctx_, mem);
    return ok;
  }

 private:
  bool ok_ = false;
  ucp_context_h ctx_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  std::string header_, body_;
};

// The broker's worker (no RMA): a peer that never authenticated, holding a
// key to its own memory, can neither read nor write ours. (With RMA, UCX
// over TCP serves both at any address, unchecked: found by a review.)
TEST(Ucx, WithoutRmaAPeerCanNeitherReadNorWriteOurMemory) {
  auto w = Worker::Make("ucx_test victim");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<std::shared_ptr<Endpoint>> accepted;
  ASSERT_TRUE((*w)->Listen("127.0.0.1", 0, [&](const std::shared_ptr<Endpoint>& ep) { accepted.push_back(ep); }).ok());
  std::vector<uint8_t> secret = RandomBytes(4096), target(4096, 0x5a);
  RawPeer attacker((*w)->listen_port(), true);
  ASSERT_TRUE(attacker.ok());
  std::vector<uint8_t> stolen(secret.size(), 0);
  attacker.Rma(false, reinterpret_cast<uint64_t>(secret.data()), stolen, **w);
  EXPECT_NE(stolen, secret) << "an unauthenticated peer read our memory";
  std::vector<uint8_t> garbage(target.size(), 0x41);
  attacker.Rma(true, reinterpret_cast<uint64_t>(target.data()), garbage, **w);
  EXPECT_EQ(target, std::vector<uint8_t>(4096, 0x5a)) << "an unauthenticated peer wrote our memory";
}

TEST(Ucx, AHostileMessageEndsItsConnectionAndTheListenerServesOn) {
  auto w = Worker::Make("ucx_test hostile");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<std::shared_ptr<Endpoint>> accepted;
  ASSERT_TRUE((*w)->Listen("127.0.0.1", 0, [&](const std::shared_ptr<Endpoint>& ep) { accepted.push_back(ep); }).ok());
  std::vector<std::string> failures;
  int messages = 0;
  (*w)->OnFailure([&](const std::shared_ptr<Endpoint>&, const Status& why) { failures.push_back(why.message()); });
  (*w)->OnMessage([&](const std::shared_ptr<Endpoint>&, uint16_t, std::string_view) { ++messages; });
  // Too big (UCX would fetch it by rendezvous), then a header not of our size.
  {
    RawPeer big((*w)->listen_port());
    ASSERT_TRUE(big.ok());
    ASSERT_TRUE(big.Send(2, 64 * 1024, **w));
    ASSERT_TRUE(Drive({w->get()}, [&] {
      big.Progress();
      return !failures.empty();
    })) << "the oversized message was not refused";
    EXPECT_NE(failures[0].find("65536 bytes (the limit is 8192)"), std::string::npos) << failures[0];
  }
  {
    RawPeer odd((*w)->listen_port());
    ASSERT_TRUE(odd.ok());
    ASSERT_TRUE(odd.Send(5, 10, **w));
    ASSERT_TRUE(Drive({w->get()}, [&] {
      odd.Progress();
      return failures.size() >= 2;
    })) << "the odd header was not refused";
    ASSERT_GE(failures.size(), 2u);
    EXPECT_NE(failures[1].find("a 5-byte header"), std::string::npos) << failures[1];
  }
  EXPECT_EQ(messages, 0) << "a refused message reached the handler";
  for (const auto& ep : accepted) EXPECT_FALSE(ep->open()) << ep->peer();
  // The worker goes on: a well-behaved peer is heard.
  auto ep = (*w)->Connect("127.0.0.1", (*w)->listen_port());
  ASSERT_TRUE(ep.ok());
  ASSERT_TRUE((*ep)->Send(3, "hello").ok());
  ASSERT_TRUE(Drive({w->get()}, [&] { return messages == 1; }));
}

// A peer process that serves its memory until killed. Forked before this
// process starts UCX; tells its port, address, size and key on `out`.
[[noreturn]] void ServeUntilKilled(int out) {
  auto w = Worker::Make("ucx_test peer", {}, true);
  if (!w.ok()) ::_exit(2);
  static std::vector<uint8_t> data(64 << 20, 0x5a);
  auto memory = (*w)->Register(data.data(), data.size());
  if (!memory.ok()) ::_exit(3);
  std::vector<std::shared_ptr<Endpoint>> peers;
  if (!(*w)->Listen("127.0.0.1", 0, [&](const std::shared_ptr<Endpoint>& ep) { peers.push_back(ep); }).ok()) {
    ::_exit(4);
  }
  std::string told = std::to_string((*w)->listen_port()) + "\n" + Describe(**memory);
  uint32_t n = told.size();
  if (::write(out, &n, 4) != 4 || ::write(out, told.data(), n) != static_cast<ssize_t>(n)) ::_exit(5);
  Drive({w->get()}, [] { return false; }, 3600s);
  ::_exit(0);
}

TEST(Ucx, AKilledPeerFailsItsConnectionAndEveryReadInFlight) {
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(pipefd[0]);
    ServeUntilKilled(pipefd[1]);
  }
  ::close(pipefd[1]);
  uint32_t n = 0;
  ASSERT_EQ(::read(pipefd[0], &n, 4), 4);
  std::string told(n, '\0');
  ASSERT_EQ(::read(pipefd[0], told.data(), n), static_cast<ssize_t>(n));
  ::close(pipefd[0]);
  const uint16_t port = static_cast<uint16_t>(std::stoi(told.substr(0, told.find('\n'))));
  Described d = Parse(told.substr(told.find('\n') + 1));
  ASSERT_EQ(d.bytes, 64u << 20);

  auto w = Worker::Make("ucx_test reader", {}, true);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Status failure = Status::Ok();
  (*w)->OnFailure([&](const std::shared_ptr<Endpoint>&, const Status& why) { failure = why; });
  auto ep = (*w)->Connect("127.0.0.1", port);
  ASSERT_TRUE(ep.ok());
  auto key = (*ep)->Unpack(d.key);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  std::vector<uint8_t> into(d.bytes, 0);
  Reads reads;
  ReadAll(**ep, *key, d, into, reads);
  ASSERT_EQ(reads.issued, 64);
  // Once the first piece has landed, the peer dies with the rest in flight.
  ASSERT_TRUE(Drive({w->get()}, [&] { return reads.ok + reads.failed > 0; }));
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the peer ended by itself (status " << status << ")";
  ASSERT_TRUE(Drive({w->get()}, [&] { return reads.finished() && !failure.ok(); }))
      << "reads " << reads.ok << " ok, " << reads.failed << " failed of " << reads.issued << "; failure "
      << failure.ToString();
  EXPECT_FALSE((*ep)->open());
  EXPECT_EQ((*ep)->error().code(), Code::kUnavailable) << (*ep)->error().ToString();
  EXPECT_GT(reads.failed, 0) << "every read landed before the kill: nothing was in flight to fail";
  *key = RemoteKey();
}

}  // namespace
}  // namespace gpubroker::ucx

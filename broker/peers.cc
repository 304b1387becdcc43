#include "broker/peers.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>

#include "broker/device_stage.h"
#include "broker/peer_auth.h"
#include "broker/ucx.h"
#include "common/validate.h"
#include "common/wire.h"

namespace gpubroker {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// ---- what peers say to each other (little-endian, fixed layouts) ----------

// The handshake, on TCP (a Handshake): hello, challenge, proof, then
// accept or refused. Then what the follower says goes on that TCP
// connection, and what the source says on UCX, each message's body after
// the follower's session token: one ordered channel each way.
enum Msg : uint16_t {
  kHello = 1,      // follower, TCP: kMagic, then its nonce
  kChallenge = 2,  // source, TCP: its nonce, then its proof
  kProof = 3,      // follower, TCP: its proof, its session token, its worker's address
  kFollow = 4,     // follower: FollowBody
  kRefused = 5,    // source, TCP: why, as text; the connection ends
  kAccept = 16,    // source, TCP: empty
  kRedirect = 17,  // source, TCP: "IPv4:PORT" of a follower of ours that serves the tree on: ask there
  kLayout = 6,     // source: SlotRecords of the tree, the arena first
  kTree = 7,       // source: TreeHead
  kVersion = 8,    // source: VersionBody; that version is pinned for this follower (or, kPassedOn, still
                   // arriving at the source, which follows it from another), its chunks follow
  kChunk = 9,      // source: ChunkHead, then the bytes at that offset of the version's buffer
  kDone = 10,      // follower: VersionBody; every chunk landed (and, for two buffers or more, is committed),
                   // or a version passed on was given up (the answer to an early kVerdict)
  kVerdict = 11,   // source, one-buffer trees and versions passed on: VerdictBody
  kBusy = 12,      // follower: VersionBody; no local buffer is free: unpin it, offer nothing until kWant
  kWant = 13,      // follower: WantBody; a local buffer is free again
  kPing = 14,      // follower, every stall_timeout_ms / 3: PingBody
  kPong = 15,      // source: the answer
};

constexpr char kMagic[8] = {'G', 'P', 'B', 'P', 'E', 'E', 'R', '6'};

// Names a follower's session: random, given to the source in the
// handshake; a UCX message with a token no session has is dropped (anyone
// who reaches the worker can send one).
using Token = std::array<uint8_t, 16>;

Token FreshToken() {
  const Nonce n = FreshNonce();
  Token t;
  std::copy(n.begin(), n.begin() + t.size(), t.begin());
  return t;
}

std::string TokenBytes(const Token& t) { return std::string(reinterpret_cast<const char*>(t.data()), t.size()); }

struct FollowBody {
  uint64_t have;   // the source's version whose bytes the follower holds (0: none)
  char tree[128];  // NUL-terminated
  uint16_t relay_port;  // the follower serves the tree on at this port of its address (0: it does not)
  uint8_t redirects;    // how many sources sent it on before this one
  uint8_t flags;        // kServeHere
  uint32_t reserved;
};
// Serve it here, whatever peers.fanout says: the follower was sent on before
// and that one failed it (so a broken relay costs one try, not a loop).
constexpr uint8_t kServeHere = 1;
// A follower is sent on at most this many times in a row, then served.
constexpr uint8_t kMaxRedirects = 8;

struct SlotRecord {
  char name[128];  // under the tree: "" for the tree's own slot (the arena), else the key
  uint64_t byte_offset;
  uint64_t nbytes;  // the arena: bytes per buffer
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  uint32_t ndim;
  uint8_t dtype_code;
  uint8_t dtype_bits;
  uint16_t dtype_lanes;
};
constexpr size_t kRecordsPerMessage = (ucx::kMaxMessage - sizeof(Token)) / sizeof(SlotRecord);
constexpr uint32_t kMaxTreeSlots = 4096;

struct TreeHead {
  uint64_t buffer_bytes;
  uint32_t nbuffers;
  uint32_t slots;   // records sent before this
  uint32_t memory;  // where the source's tree lives: kHostMemory or kCudaMemory
  uint32_t reserved;
};
constexpr uint32_t kHostMemory = 0, kCudaMemory = 1;

struct VersionBody {
  uint64_t version;
  int32_t buffer;  // the source's (for the logs)
  uint32_t flags;
};
// The source follows this tree from another and passes the version on
// while it still arrives there (chunk by chunk, as it lands): the follower
// says done once every chunk landed and commits only on a whole verdict.
// A verdict that it is not whole may come before the last chunk (the
// source's own read of it failed); the follower then drops it and says
// done all the same, so that each version offered is answered once.
constexpr uint32_t kPassedOn = 1;

struct ChunkHead {
  uint64_t version;
  uint64_t offset;  // within the buffer; chunks come in order, back to back
};

struct WantBody {
  uint64_t have;
};

// How far the version being read has come: a source gives a follower that
// makes no progress for stall_timeout_ms up (on a slow link, the last chunk
// is handed to the network long before it lands).
struct PingBody {
  uint64_t version;  // being read (0: none)
  uint64_t landed;   // bytes of it landed
};

struct VerdictBody {
  uint64_t version;
  uint32_t whole;
  uint32_t reserved;
};

// A version moves as chunks of this size, this many in flight per follower
// (sent, not yet handed to the network): after the proof, a follower
// accepts messages of a chunk and its head. A chunk, its head and UCX's
// own headers fit in one of UCX's TCP receive segments (64 KiB unless
// UCX_TCP_RX_SEG_SIZE says otherwise), so UCX hands each message over
// from the segment it arrived in: a message one byte larger arrives in two
// and is copied whole again before the handler sees it, at a third of the
// rate (docs/PERFORMANCE.md, section 11).
constexpr size_t kChunkBytes = 64 * 1024 - 512;
constexpr size_t kChunksInFlight = 256;
constexpr size_t kChunkMessage = sizeof(Token) + sizeof(ChunkHead) + kChunkBytes;
static_assert(kChunkMessage <= ucx::kMaxRaisedMessage);
// A tree in GPU memory goes through pinned blocks of whole chunks.
constexpr size_t kStagedBytes = DeviceStage::kBlockBytes / kChunkBytes * kChunkBytes;
static_assert(kStagedBytes > 0);

template <typename T>
std::string Bytes(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

template <typename T>
std::optional<T> Parse(std::string_view body) {
  if (body.size() != sizeof(T)) return std::nullopt;
  T v;
  std::memcpy(&v, body.data(), sizeof v);
  return v;
}

// Text from a peer, fit to log: printable ASCII, at most 300 characters.
std::string Clean(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 300)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

std::string IpOf(const std::string& peer) { return peer.substr(0, peer.rfind(':')); }

// ---- the broker's own client, through the handler --------------------------

class Mapping {
 public:
  Mapping() = default;
  Mapping(uint8_t* base, size_t bytes) : base_(base), bytes_(bytes) {}
  Mapping(Mapping&& o) noexcept : base_(std::exchange(o.base_, nullptr)), bytes_(o.bytes_) {}
  Mapping& operator=(Mapping&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Mapping() {
    if (base_ != nullptr) ::munmap(base_, bytes_);
  }
  uint8_t* base() const { return base_; }
  size_t bytes() const { return bytes_; }

 private:
  uint8_t* base_ = nullptr;
  size_t bytes_ = 0;
};

class InternalClient {
 public:
  explicit InternalClient(RequestHandler& h) : h_(h) {}

  template <typename Rep, typename Req>
  Result<Rep> Call(uint64_t client, const Req& req, UniqueFd* fd = nullptr) {
    Reply r = h_.Handle(client, wire::EncodeRequest(++id_, req));
    GPB_ASSIGN_OR_RETURN(wire::Frame f, wire::ParseFrame(r.bytes));
    if (f.type == wire::MsgType::kError) {
      GPB_ASSIGN_OR_RETURN(auto e, wire::Decode<wire::ErrorReply>(f.payload));
      return Status(static_cast<Code>(e.code), std::string(e.message.view()));
    }
    if (fd != nullptr) *fd = std::move(r.fd);
    return wire::Decode<Rep>(f.payload);
  }

  // Attaches `name` (write access if `write`) and maps the whole
  // allocation: host memory here, cuda_vmm memory through `stage` (made
  // on first use; an error where there is no CUDA).
  struct Mapped {
    wire::AttachReply reply;
    Mapping host;
    std::shared_ptr<const DeviceMemory> device;
  };
  Result<Mapped> AttachMapped(uint64_t client, const std::string& name, bool write,
                              const std::function<Result<DeviceStage*>()>& stage) {
    wire::AttachRequest req{};
    req.name.set(name);
    req.flags = write ? wire::kAttachWriteRequired : wire::kAttachReadOnly;
    UniqueFd fd;
    GPB_ASSIGN_OR_RETURN(wire::AttachReply reply, (Call<wire::AttachReply>(client, req, &fd)));
    const SlotDescriptor& slot = reply.slot;
    const uint64_t bytes = slot.buffer_bytes * slot.nbuffers;
    if (slot.backend == static_cast<uint16_t>(BackendKind::kCudaVmm)) {
      auto st = stage();
      if (!st.ok()) return st.status().Annotate("tree '" + name + "' is in GPU memory");
      DeviceUuid uuid;
      std::memcpy(uuid.data(), slot.device_uuid, uuid.size());
      GPB_ASSIGN_OR_RETURN(auto device, (*st)->Map(std::move(fd), slot.allocation_bytes, uuid, write));
      if (device->bytes() < bytes) return gpubroker::Internal("the memory of '" + name + "' is smaller than its buffers");
      return Mapped{reply, Mapping(), std::move(device)};
    }
    if (slot.backend != static_cast<uint16_t>(BackendKind::kHost) || !fd.valid()) {
      return Unsupported("tree '" + name + "' is in " + std::string(BackendName(static_cast<BackendKind>(slot.backend))) +
                         " memory; trees are replicated from host and cuda_vmm memory only");
    }
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) < bytes) {
      return gpubroker::Internal("the memory of '" + name + "' is smaller than its buffers");
    }
    void* p = ::mmap(nullptr, bytes, write ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return ResourceExhausted("mapping '" + name + "': " + std::strerror(errno));
    return Mapped{reply, Mapping(static_cast<uint8_t*>(p), bytes), nullptr};
  }

 private:
  RequestHandler& h_;
  uint32_t id_ = 0;
};

// ---- the handshake, on a TCP connection of its own --------------------------
//
// Frames of [u16 type][u32 length][body]. No UCX code sees a peer before
// the handshake: a follower that proved it holds the cluster key gets the
// source's worker address, the source gets the follower's, and each
// connects to the other's worker (ucx.h). UCX's own listener, which parses
// what anyone sends it, is not used.
constexpr size_t kMaxHandshake = 8 * 1024;

class Handshake : public std::enable_shared_from_this<Handshake> {
 public:
  using Frame = std::function<void(const Status&, uint16_t type, std::string body)>;
  Handshake(boost::asio::ip::tcp::socket socket, std::string peer)
      : socket_(std::move(socket)), peer_(std::move(peer)) {
    NoDelay();
  }
  // Small messages go at once (a done waits for no acknowledgement).
  void NoDelay() {
    boost::system::error_code ec;
    if (socket_.is_open()) socket_.set_option(boost::asio::ip::tcp::no_delay(true), ec);
  }
  const std::string& peer() const { return peer_; }
  boost::asio::ip::tcp::socket& socket() { return socket_; }

  // One frame; an error if the connection ends or the frame is too long.
  void Read(Frame then) {
    auto self = shared_from_this();
    boost::asio::async_read(socket_, boost::asio::buffer(head_),
                            [self, then = std::move(then)](const boost::system::error_code& ec, size_t) mutable {
                              if (ec) return then(Unavailable("the handshake ended: " + ec.message()), 0, {});
                              uint16_t type = 0;
                              uint32_t length = 0;
                              std::memcpy(&type, self->head_.data(), sizeof type);
                              std::memcpy(&length, self->head_.data() + sizeof type, sizeof length);
                              if (length > kMaxHandshake) {
                                return then(ProtocolError("a handshake message of " + std::to_string(length) +
                                                          " bytes"), 0, {});
                              }
                              self->body_.assign(length, '\0');
                              boost::asio::async_read(
                                  self->socket_, boost::asio::buffer(self->body_),
                                  [self, type, then = std::move(then)](const boost::system::error_code& ec2,
                                                                       size_t) mutable {
                                    if (ec2) return then(Unavailable("the handshake ended: " + ec2.message()), 0, {});
                                    then(Status::Ok(), type, std::move(self->body_));
                                  });
                            });
  }

  // Queues a frame; `then`, if given, once it is written (or failed).
  // Frames go out one at a time, in order.
  void Write(uint16_t type, std::string_view body, std::function<void()> then = {}) {
    std::string frame(sizeof(uint16_t) + sizeof(uint32_t), '\0');
    const uint32_t length = static_cast<uint32_t>(body.size());
    std::memcpy(frame.data(), &type, sizeof type);
    std::memcpy(frame.data() + sizeof type, &length, sizeof length);
    frame.append(body);
    out_.push_back({std::move(frame), std::move(then)});
    if (out_.size() == 1) WriteNext();
  }

  void Close() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

 private:
  void WriteNext() {
    auto self = shared_from_this();
    boost::asio::async_write(socket_, boost::asio::buffer(out_.front().first),
                             [self](const boost::system::error_code& ec, size_t) {
                               auto then = std::move(self->out_.front().second);
                               self->out_.pop_front();
                               if (ec) self->out_.clear();  // the connection is gone: nothing more goes
                               if (!self->out_.empty()) self->WriteNext();
                               if (then) then();
                             });
  }

  boost::asio::ip::tcp::socket socket_;
  std::string peer_;
  std::deque<std::pair<std::string, std::function<void()>>> out_;
  std::array<uint8_t, sizeof(uint16_t) + sizeof(uint32_t)> head_{};
  std::string body_;
};

class PeersImpl final : public Peers {
 public:
  PeersImpl(boost::asio::io_context& io, RequestHandler& handler, PeersConfig config, ClusterKey key,
            std::unique_ptr<ucx::Worker> worker)
      : io_(io), handler_(handler), internal_(handler), config_(std::move(config)), key_(std::move(key)),
        worker_(std::move(worker)), fd_(io, worker_->fd()), tick_(io), accept_retry_(io) {}

  ~PeersImpl() override {
    stopping_ = true;
    alive_.reset();
    tick_.cancel();
    accept_retry_.cancel();
    if (acceptor_) {
      boost::system::error_code ec;
      acceptor_->close(ec);
    }
    for (auto& h : handshakes_) h.hs->Close();
    for (auto& f : following_) {
      if (f.hs) f.hs->Close();
    }
    for (auto& f : leaving_) {
      if (f.hs) f.hs->Close();
    }
    fd_.release();  // UCX's descriptor: the worker closes it
    following_.splice(following_.end(), leaving_);
    worker_.reset();  // sends still in flight end here; stopping_ keeps their handlers quiet
    for (auto& [ep, s] : served_) {
      if (s.client != 0) handler_.OnDisconnect(s.client);
    }
    for (auto& f : following_) {
      if (f.client != 0) handler_.OnDisconnect(f.client);
    }
  }

  Status Begin() {
    worker_->OnMessage([this](const std::shared_ptr<ucx::Endpoint>&, uint16_t type, std::string_view body) {
      OnMessage(type, body);
    });
    worker_->OnFailure([this](const std::shared_ptr<ucx::Endpoint>& ep, const Status& why) { OnFailure(ep, why); });
    // Chunks come from the source's worker, on no endpoint of ours where
    // UCX does not pair it with ours; a session's token says whose.
    worker_->SetAnonymousMaxMessage(kChunkMessage);
    if (!config_.listen.empty()) {
      GPB_ASSIGN_OR_RETURN(auto addr, ParsePeerAddress(config_.listen, true));
      namespace ip = boost::asio::ip;
      boost::system::error_code ec;
      const ip::tcp::endpoint at(ip::make_address_v4(addr.first, ec), addr.second);
      acceptor_ = std::make_unique<ip::tcp::acceptor>(io_);
      if (!ec) acceptor_->open(ip::tcp::v4(), ec);
      if (!ec) acceptor_->set_option(ip::tcp::acceptor::reuse_address(true), ec);
      if (!ec) acceptor_->bind(at, ec);
      if (!ec) acceptor_->listen(boost::asio::socket_base::max_listen_connections, ec);
      if (ec) return Unavailable("peers.listen " + config_.listen + ": " + ec.message());
      listen_port_ = acceptor_->local_endpoint(ec).port();
      Accept();
      spdlog::info("peers: serving {} tree(s) to followers at {}:{} (reachable from the cluster's nodes only: "
                   "docs/SECURITY.md)", config_.exports.size(), addr.first, listen_port_);
    }
    for (const FollowConfig& fc : config_.follow) {
      GPB_RETURN_IF_ERROR(Add(fc).Annotate("peers.follow '" + fc.tree + "'"));
    }
    Tick();
    Watch();
    return Status::Ok();
  }

  Status Follow(const FollowConfig& fc) override {
    GPB_RETURN_IF_ERROR(ValidateName(fc.tree));
    if (fc.mode > 0777) return InvalidArgument("mode " + std::to_string(fc.mode) + " is not 0..0777");
    // A tree of someone else's is never taken over (one of the broker's
    // own user is, as with peers.follow: that is where followers' are).
    if (auto existing = handler_.TreeSlots(fc.tree); existing.ok() && existing->front().owner_uid != ::geteuid()) {
      return AlreadyExists("a tree named '" + fc.tree + "' of uid " + std::to_string(existing->front().owner_uid) +
                           " exists here; remove it first (gpubrokerctl rm -r " + fc.tree + ")");
    }
    return Add(fc);
  }

  Status Unfollow(const std::string& tree, bool remove) override {
    auto it = std::find_if(following_.begin(), following_.end(), [&](const Following& f) { return f.config.tree == tree; });
    if (it == following_.end()) return NotFound("this broker does not follow '" + tree + "' (gpubrokerctl peers)");
    // Out of the list now (a follow of it again may come next); the
    // connection and the local write end from the loop, not inside the
    // request that asked (the handler is not entered again from its own).
    leaving_.splice(leaving_.end(), following_, it);
    boost::asio::post(io_, [this, remove] {
      while (!leaving_.empty()) {
        Following& f = leaving_.front();
        if (f.hs) f.hs->Close();
        f.hs.reset();
        AbortWrite(f);
        if (remove && f.client != 0 && LocalHolds(f)) (void)DestroyLocal(f);
        DropLocal(f);
        spdlog::info("peers: no longer following '{}' from {}; {}", f.config.tree, f.config.from,
                     remove ? "the local tree removed" : "the local tree keeps version " + std::to_string(f.report.version));
        leaving_.pop_front();
      }
    });
    return Status::Ok();
  }

  uint16_t port() const override { return listen_port_; }

  // Called inside the handler's commit: the offers go from the loop, after it.
  void Committed(uint64_t allocation_id) override {
    boost::asio::post(io_, [this, allocation_id] {
      bool sent = false;
      for (auto& [ep, s] : served_) {
        if (s.allocation_id == allocation_id) sent |= Offer(s);
      }
      if (sent) Kick();
    });
  }

  std::vector<PeerReport> Report() const override {
    std::vector<PeerReport> out;
    for (const auto& [ep, s] : served_) {
      PeerReport r = s.report;
      r.role = "source";
      r.peer = s.ep->peer();
      r.state = s.arriving ? "passing on" : s.pin != 0 ? "reading" : s.waiting ? "waiting for a buffer" : "ready";
      out.push_back(std::move(r));
    }
    for (const auto& f : following_) {
      PeerReport r = f.report;
      r.role = "follower";
      r.tree = f.config.tree;
      r.peer = f.via.empty() ? f.config.from : f.via;
      static const char* kStates[] = {"retrying", "authenticating", "layout", "ready", "waiting for a buffer",
                                      "reading", "reading"};
      static_assert(std::size(kStates) == Following::kVerdict + 1);
      r.state = kStates[f.state];
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  // ---- the source's side -------------------------------------------------

  struct Following;  // the follower's side, below: a tree followed here may be passed on as it arrives

  struct Exported {  // a tree's memory, mapped once while any follower reads it (or a send from it is in flight)
    std::shared_ptr<const Mapping> mapping;      // host memory
    std::shared_ptr<const DeviceMemory> device;  // or GPU memory, read through the stage
    int users = 0;
  };

  // A follower that proved it holds the key: what it says comes on `ctl`
  // (the handshake's TCP connection), what we say goes to its worker on `ep`.
  struct Served {
    std::shared_ptr<ucx::Endpoint> ep;
    std::shared_ptr<Handshake> ctl;
    uint64_t serial = 0;  // sends in flight name their connection by this
    Token peer_token{};   // the follower's: on what we send it
    Clock::time_point since = Clock::now();  // of the session
    Clock::time_point heard = Clock::now();  // its last message
    Clock::time_point ponged{};
    uint64_t client = 0;  // the handler's, once following
    uint64_t allocation_id = 0;
    uint64_t buffer_bytes = 0;
    uint32_t nbuffers = 0;
    std::shared_ptr<const Mapping> mapping;      // the exported tree's, in host memory
    std::shared_ptr<const DeviceMemory> device;  // or in GPU memory
    bool waiting = false;  // the follower has no free buffer: offer nothing until it wants
    uint64_t have = 0;     // the newest version the follower holds
    // The version being sent: pinned by `pin`, in `buffer`; `offset` bytes
    // handed to UCX (GPU memory: to the stage, on their way to UCX).
    uint64_t pin = 0, pinned = 0, writes = 0;
    int32_t buffer = -1;
    uint64_t offset = 0;
    size_t all_in_flight = 0;  // chunks not yet done with, of any version: what Watch progresses
    uint64_t generation = 0;   // of the version sent: a block copied from GPU memory for one before is not sent
    Clock::time_point sent_all{};  // when the last chunk went; the follower has stall_timeout_ms to say done...
    Clock::time_point progressed{};  // ... from its offer or its last ping that said more had landed
    uint64_t landed = 0;             // the most its pings said had landed of the version sent
    // Passed on while it arrives here (a tree we follow): `arriving` until
    // our own follower commits it (then `pin` holds it), the chunks going
    // as they land; the follower gets a verdict after its done.
    bool passed_on = false, arriving = false, said_done = false;
    uint64_t gave_up = 0;  // a version passed on that we could not finish: its answer (done or busy) is awaited
    uint16_t relay_port = 0;  // it serves the tree on, there (peers.fanout sends others to it)
    uint64_t sent_on = 0;     // followers we sent to it
    PeerReport report;
  };

  // An unproven TCP connection on the source's side, until its handshake ends.
  struct Pending {
    std::shared_ptr<Handshake> hs;
    Clock::time_point since = Clock::now();
  };

  void Accept() {
    acceptor_->async_accept([this, alive = std::weak_ptr<int>(alive_)](const boost::system::error_code& ec,
                                                                        boost::asio::ip::tcp::socket socket) {
      if (alive.expired() || stopping_ || ec == boost::asio::error::operation_aborted) return;
      if (ec) {  // out of descriptors, say: try again shortly rather than spin
        LogRefusal("0.0.0.0:0", "accepting a connection: " + ec.message());
        accept_retry_.expires_after(100ms);
        accept_retry_.async_wait([this](const boost::system::error_code& e) {
          if (!e) Accept();
        });
        return;
      }
      OnAccepted(std::move(socket));
      Accept();
    });
  }

  void OnAccepted(boost::asio::ip::tcp::socket socket) {
    boost::system::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    if (ec) return;
    const std::string ip = remote.address().to_string();
    const std::string peer = ip + ":" + std::to_string(remote.port());
    size_t unproven_from_ip = 0, from_ip = 0;
    for (const Pending& p : handshakes_) unproven_from_ip += IpOf(p.hs->peer()) == ip;
    for (const auto& [e, s] : served_) from_ip += IpOf(s.ep->peer()) == ip;
    if (handshakes_.size() >= kMaxUnproven || unproven_from_ip >= kMaxUnprovenPerIp || from_ip >= kMaxPerIp ||
        served_.size() >= kMaxServed) {
      LogRefusal(peer, "too many connections (from this address, or unauthenticated)");
      return;  // the socket closes here
    }
    auto hs = std::make_shared<Handshake>(std::move(socket), peer);
    handshakes_.push_back(Pending{hs});
    hs->Read([this, hs, alive = std::weak_ptr<int>(alive_)](const Status& st, uint16_t type, std::string body) {
      if (alive.expired() || !Unproven(hs)) return;
      if (!st.ok()) return EndHandshake(hs);
      if (type != kHello || body.size() != sizeof kMagic + sizeof(Nonce) ||
          std::memcmp(body.data(), kMagic, sizeof kMagic) != 0) {
        return RefuseHandshake(hs, "the first message must be a gpubroker peer hello (version 6)");
      }
      Nonce follower{};
      std::memcpy(follower.data(), body.data() + sizeof kMagic, sizeof(Nonce));
      const Nonce source = FreshNonce();
      const Mac proof = key_.Prove("source", follower, source);
      std::string reply(reinterpret_cast<const char*>(source.data()), source.size());
      reply.append(reinterpret_cast<const char*>(proof.data()), proof.size());
      hs->Write(kChallenge, reply);
      hs->Read([this, hs, follower, source, alive](const Status& st2, uint16_t type2, std::string body2) {
        if (alive.expired() || !Unproven(hs)) return;
        if (!st2.ok()) return EndHandshake(hs);
        OnProof(hs, follower, source, type2, body2);
      });
    });
  }

  // The follower's proof, its token and its worker's address.
  void OnProof(const std::shared_ptr<Handshake>& hs, const Nonce& follower, const Nonce& source, uint16_t type,
               std::string_view body) {
    if (type != kProof || body.size() <= sizeof(Mac) + sizeof(Token) ||
        !key_.Verify("follower", follower, source, body.substr(0, sizeof(Mac)))) {
      return RefuseHandshake(hs, "it did not prove it holds the cluster key");
    }
    Token peer_token{};
    std::memcpy(peer_token.data(), body.data() + sizeof(Mac), sizeof peer_token);
    auto ep = worker_->ConnectTo(body.substr(sizeof(Mac) + sizeof(Token)), hs->peer());
    if (!ep.ok()) return RefuseHandshake(hs, "its worker address: " + ep.status().message());
    Served& s = served_[ep->get()];
    s.ep = *ep;
    s.ctl = hs;
    s.serial = ++serial_;
    s.peer_token = peer_token;
    EndHandshake(hs, false);
    hs->Write(kAccept, "");
    Listen(s);
  }

  // What the follower says, one message at a time; its connection's end
  // ends the session.
  void Listen(Served& s) {
    ucx::Endpoint* key = s.ep.get();
    const uint64_t serial = s.serial;
    s.ctl->Read([this, key, serial, alive = std::weak_ptr<int>(alive_)](const Status& st, uint16_t type,
                                                                        std::string body) {
      if (alive.expired()) return;
      auto it = served_.find(key);
      if (it == served_.end() || it->second.serial != serial) return;
      if (!st.ok()) {
        if (it->second.client != 0) {
          spdlog::info("peers: follower {} of '{}' gone: {}", it->second.ep->peer(), it->second.report.tree,
                       st.message());
        }
        auto ep = it->second.ep;
        Forget(it->second);
        ep->Close();
        return;
      }
      OnSourceMessage(it->second, type, body);
      it = served_.find(key);  // it may have been dropped
      if (it != served_.end() && it->second.serial == serial) Listen(it->second);
    });
  }

  bool Unproven(const std::shared_ptr<Handshake>& hs) const {
    return std::any_of(handshakes_.begin(), handshakes_.end(), [&](const Pending& p) { return p.hs == hs; });
  }

  void EndHandshake(const std::shared_ptr<Handshake>& hs, bool close = true) {
    handshakes_.remove_if([&](const Pending& p) { return p.hs == hs; });
    if (close) hs->Close();
  }

  void RefuseHandshake(const std::shared_ptr<Handshake>& hs, const std::string& why) {
    LogRefusal(hs->peer(), why);
    EndHandshake(hs, false);
    hs->Write(kRefused, why, [hs] { hs->Close(); });
  }

  // Ends a served session: its bookkeeping now; then `type` with `body` on
  // its TCP connection, which closes after it, and our endpoint on a later
  // tick (a forced close drops what UCX has not sent).
  void EndServed(Served& s, uint16_t type, const std::string& body) {
    auto ep = s.ep;
    auto ctl = s.ctl;
    s.ctl.reset();
    Forget(s);
    if (ctl) ctl->Write(type, body, [ctl] { ctl->Close(); });
    closing_.push_back({ep, Clock::now() + 200ms});
  }

  bool Exports(const std::string& tree) const {
    return std::find(config_.exports.begin(), config_.exports.end(), tree) != config_.exports.end();
  }

  // One line per peer address and reason a minute at most: a peer that
  // retries (or an attacker) cannot flood the log.
  void LogRefusal(const std::string& peer, const std::string& why) {
    const auto now = Clock::now();
    const std::string key = IpOf(peer) + " " + why.substr(0, 24);
    auto [it, added] = refusals_logged_.try_emplace(key, Clock::time_point{});
    if (!added && now - it->second < 60s) return;
    if (refusals_logged_.size() > 1024) refusals_logged_.clear();
    refusals_logged_[key] = now;
    spdlog::warn("peers: refused {}: {}", peer, why);
  }

  void OnSourceMessage(Served& s, uint16_t type, std::string_view body) {
    s.heard = Clock::now();
    if (type == kPing) {
      auto m = Parse<PingBody>(body);
      if (!m) return RefuseServed(s, "a malformed ping");
      if ((s.pin != 0 || s.arriving) && m->version == s.pinned && m->landed > s.landed &&
          m->landed <= s.offset) {
        s.landed = m->landed;
        s.progressed = s.heard;
      }
      if (s.heard - s.ponged >= 100ms) {  // at most ten answers a second, whatever it sends
        s.ponged = s.heard;
        (void)SendTo(s, kPong, "");
      }
      return;
    }
    if (type == kFollow && s.client == 0) {
      auto m = Parse<FollowBody>(body);
      if (!m || std::memchr(m->tree, 0, sizeof m->tree) == nullptr) return RefuseServed(s, "a malformed follow");
      return ServeTree(s, m->tree, *m);
    }
    if (s.client == 0) return RefuseServed(s, "an unexpected message (type " + std::to_string(type) + ")");
    if (type == kDone) {
      auto m = Parse<VersionBody>(body);
      if (m && s.gave_up != 0 && m->version == s.gave_up) {  // the answer to the version we gave up
        s.gave_up = 0;
        Offer(s);
        return;
      }
      // (UCX may report the last sends complete after the follower's done
      // arrived: what was handed to it is what counts.)
      if (!m || (s.pin == 0 && !s.arriving) || m->version != s.pinned || s.offset < s.buffer_bytes) {
        return RefuseServed(s, "done for a version it was not sent whole");
      }
      if (s.arriving) {  // its verdict once the version is whole here
        s.said_done = true;
        return;
      }
      return Finished(s);
    }
    if (type == kBusy) {
      auto m = Parse<VersionBody>(body);
      if (m && s.gave_up != 0 && m->version == s.gave_up) {
        s.gave_up = 0;
        s.waiting = true;
        return;
      }
      if (!m || (s.pin == 0 && !s.arriving) || m->version != s.pinned) {
        return RefuseServed(s, "busy for a version it was not sent");
      }
      Unpin(s);  // chunks still in flight go out; the follower drops them
      s.arriving = s.passed_on = false;
      s.waiting = true;
      return;
    }
    if (type == kWant) {
      auto m = Parse<WantBody>(body);
      if (!m || !s.waiting) return RefuseServed(s, "a malformed want");
      s.waiting = false;
      s.have = m->have;
      Offer(s);
      return;
    }
    RefuseServed(s, "an unexpected message (type " + std::to_string(type) + ")");
  }

  void RefuseServed(Served& s, const std::string& why) {
    ++s.report.errors;
    LogRefusal(s.ep->peer(), why);
    EndServed(s, kRefused, why);
  }

  // Ends a served session's bookkeeping and its TCP connection (its
  // endpoint is the caller's to close).
  void Forget(Served& s) {
    Drop(s);
    if (s.ctl) s.ctl->Close();
    served_.erase(s.ep.get());
  }

  Status SendTo(Served& s, uint16_t type, std::string_view body, std::function<void(Status)> sent = {}) {
    std::string m = TokenBytes(s.peer_token);
    m.append(body);
    return s.ep->Send(type, std::move(m), std::move(sent));
  }

  void ServeTree(Served& s, const std::string& tree, const FollowBody& asked) {
    const uint64_t have = asked.have;
    if (!Exports(tree)) {
      return RefuseServed(s, "tree '" + Clean(tree) + "' is not exported here (peers.export)");
    }
    if (Served* relay = PlannedRelay(s, tree, asked)) {
      ++relay->sent_on;
      const std::string to = IpOf(relay->ep->peer()) + ":" + std::to_string(relay->relay_port);
      spdlog::info("peers: {} asks for '{}': sent to {}, which serves it on (peers.fanout {})", s.ep->peer(), tree,
                   to, config_.fanout);
      return EndServed(s, kRedirect, to);
    }
    s.relay_port = asked.relay_port;
    auto slots = handler_.TreeSlots(tree);
    if (!slots.ok()) return RefuseServed(s, "tree '" + tree + "': " + slots.status().message());
    if (slots->size() > kMaxTreeSlots) {
      return RefuseServed(s, "tree '" + tree + "' has more than " + std::to_string(kMaxTreeSlots) + " slots");
    }
    auto client = handler_.ConnectInternal("peer " + s.ep->peer() + " follows " + tree);
    if (!client.ok()) return RefuseServed(s, client.status().message());
    s.client = *client;
    auto mapped = internal_.AttachMapped(s.client, tree, false, [this] { return Stage(); });
    if (!mapped.ok()) return RefuseServed(s, mapped.status().message());
    const SlotDescriptor& arena = mapped->reply.slot;
    if (arena.version == 0 && !MadeByFollowing(arena.allocation_id)) {
      // Still being made (a publisher makes the tree's slots one by one,
      // then commits): a layout read now may lack views, and the follower
      // would make a partial tree, then replace it. It asks again shortly.
      // A tree we follow was made whole from its source's layout: it is
      // served on while its first version arrives (Offer passes that on).
      return RefuseServed(s, "tree '" + tree + "' has no version yet (its publisher is still making it)");
    }
    s.allocation_id = arena.allocation_id;
    s.nbuffers = arena.nbuffers;
    s.buffer_bytes = arena.buffer_bytes;
    Exported& e = exported_[s.allocation_id];
    if (e.mapping == nullptr && e.device == nullptr) {  // else mapped already: this one goes
      if (mapped->device) {
        e.device = std::move(mapped->device);
      } else {
        e.mapping = std::make_shared<const Mapping>(std::move(mapped->host));
      }
    }
    ++e.users;
    s.mapping = e.mapping;
    s.device = e.device;
    s.report.tree = tree;
    std::vector<SlotRecord> records;
    const std::string under = tree + "/";
    for (const SlotDescriptor& d : *slots) {
      if (d.allocation_id != s.allocation_id) continue;  // replaced meanwhile: the next follow sees it
      SlotRecord r{};
      std::string_view name(d.name);
      name = name == tree ? std::string_view() : name.substr(under.size());
      name.copy(r.name, name.size());
      r.byte_offset = d.byte_offset;
      r.nbytes = name.empty() ? d.buffer_bytes : d.nbytes;
      std::copy(d.shape, d.shape + kMaxDims, r.shape);
      std::copy(d.strides, d.strides + kMaxDims, r.strides);
      r.ndim = d.ndim;
      r.dtype_code = d.dtype_code;
      r.dtype_bits = d.dtype_bits;
      r.dtype_lanes = d.dtype_lanes;
      records.push_back(r);
    }
    for (size_t i = 0; i < records.size(); i += kRecordsPerMessage) {
      const size_t n = std::min(kRecordsPerMessage, records.size() - i);
      (void)SendTo(s, kLayout, std::string_view(reinterpret_cast<const char*>(&records[i]), n * sizeof(SlotRecord)));
    }
    (void)SendTo(s, kTree, Bytes(TreeHead{arena.buffer_bytes, arena.nbuffers, static_cast<uint32_t>(records.size()),
                                          s.device ? kCudaMemory : kHostMemory, 0}));
    s.have = have;
    spdlog::info("peers: {} follows '{}' ({} buffers of {} bytes)", s.ep->peer(), tree, arena.nbuffers,
                 arena.buffer_bytes);
    Offer(s);
  }

  // Where peers.fanout sends a follower of `tree` instead of serving it
  // here: the follower of ours that serves the tree on and was sent the
  // fewest, once we serve that many ourselves; none if we serve fewer, if
  // none of ours serves it on, or if the follower may not be sent on.
  Served* PlannedRelay(const Served& s, const std::string& tree, const FollowBody& asked) {
    if (config_.fanout == 0 || (asked.flags & kServeHere) != 0 || asked.redirects >= kMaxRedirects) return nullptr;
    size_t direct = 0;
    Served* best = nullptr;
    for (auto& [e, o] : served_) {
      if (&o == &s || o.client == 0 || o.report.tree != tree) continue;
      ++direct;
      // One that holds at least what the follower has (a lagging one would
      // hand it older bytes under a newer number), at another address.
      if (o.relay_port != 0 && o.have >= asked.have && IpOf(o.ep->peer()) != IpOf(s.ep->peer()) &&
          (best == nullptr || o.sent_on < best->sent_on)) {
        best = &o;
      }
    }
    return direct >= config_.fanout ? best : nullptr;
  }

  // Whether the tree's name still names the allocation served.
  bool Current(const Served& s) const {
    auto a = handler_.SlotAllocation(s.report.tree);
    return a.ok() && *a == s.allocation_id;
  }

  // Pins the newest whole version for the follower, if it is not the one it
  // has and nothing is being sent to it, and starts sending it; true if so.
  bool Offer(Served& s) {
    if (s.client == 0 || s.pin != 0 || s.arriving || s.waiting || s.gave_up != 0) return false;
    // A version still arriving here is the newest: it goes on as it lands.
    if (const Following* f = Arriving(s.allocation_id); f != nullptr && f->commit_at != s.have) {
      PassOn(s, *f);
      return true;
    }
    wire::AcquireRequest req{};
    req.allocation_id = s.allocation_id;
    auto got = internal_.Call<wire::AcquireReply>(s.client, req);
    if (!got.ok()) return false;  // nothing whole yet: the next commit offers
    s.pin = got->pin;
    // Any version but the one it has: after the source's tree was made
    // anew, its numbers start again below the follower's. A one-buffer
    // tree being written is offered once the write is committed.
    if (got->version == s.have || (s.nbuffers == 1 && (got->flags & wire::kAcquireWriting) != 0)) {
      Unpin(s);
      return false;
    }
    s.writes = got->writes;
    StartSending(s, got->version, got->buffer, 0);
    return true;
  }

  // Sends the version `f` receives into our local tree as its chunks land
  // (nothing pins it: it is our own write until `f` commits it).
  void PassOn(Served& s, const Following& f) {
    s.arriving = true;
    s.said_done = false;
    s.writes = 0;
    ++s.report.passed_on;
    StartSending(s, f.commit_at, f.buffer, kPassedOn);
  }

  // Offers `version`, in `buffer`, to the follower and starts its chunks.
  void StartSending(Served& s, uint64_t version, int32_t buffer, uint32_t flags) {
    s.pinned = version;
    s.buffer = buffer;
    s.passed_on = (flags & kPassedOn) != 0;
    s.offset = 0;
    ++s.generation;
    s.sent_all = {};
    s.progressed = Clock::now();
    s.landed = 0;
    s.report.source_version = version;
    (void)SendTo(s, kVersion, Bytes(VersionBody{version, buffer, flags}));
    Push(s);
  }

  // Hands UCX the next chunks of the version sent, kChunksInFlight at a
  // time counting those of versions before still in flight (a follower
  // that says busy and want over and over, never draining, grows nothing);
  // of one still arriving here, only what has landed.
  void Push(Served& s) {
    uint64_t end = s.buffer_bytes;
    if (s.arriving) {
      const Following* f = Arriving(s.allocation_id);
      end = f != nullptr && f->buffer == s.buffer ? f->next : 0;
    }
    if (s.device) return PushStaged(s, end);
    while ((s.pin != 0 || s.arriving) && s.all_in_flight < kChunksInFlight && s.offset < end) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, end - s.offset));
      // The bytes go from the mapping itself (UCX reads them in place):
      // the pin keeps them, the mapping lives until the send is done.
      const uint8_t* at = s.mapping->base() + static_cast<uint64_t>(s.buffer) * s.buffer_bytes + s.offset;
      Status sent = s.ep->Send(kChunk, TokenBytes(s.peer_token) + Bytes(ChunkHead{s.pinned, s.offset}), at, n,
                               s.mapping, ChunksGone(s, 1));
      if (!sent.ok()) return;  // the connection is failing: OnFailure drops it
      s.offset += n;
      ++s.all_in_flight;
      s.report.bytes += n;
      if (s.offset >= s.buffer_bytes) s.sent_all = Clock::now();
    }
  }

  // What runs once `chunks` sent to `s` are done with (sent, or dropped
  // unsent): they count no more, and more may go.
  std::function<void(Status)> ChunksGone(const Served& s, size_t chunks) {
    return [this, key = s.ep.get(), serial = s.serial, chunks](const Status&) {
      if (stopping_) return;
      auto it = served_.find(key);
      if (it == served_.end() || it->second.serial != serial) return;
      Served& o = it->second;
      o.all_in_flight -= std::min(o.all_in_flight, chunks);
      Push(o);
    };
  }

  // A tree in GPU memory: a block at a time is copied into pinned host
  // memory by the stage's thread, then sent from there as chunks; blocks
  // are copied, and so sent, in order.
  void PushStaged(Served& s, uint64_t end) {
    while ((s.pin != 0 || s.arriving) && s.offset < end) {
      const uint64_t n = std::min<uint64_t>(kStagedBytes, end - s.offset);
      const size_t chunks = static_cast<size_t>((n + kChunkBytes - 1) / kChunkBytes);
      if (s.all_in_flight + chunks > kChunksInFlight) return;
      std::shared_ptr<uint8_t> block = TakeBlock(s);
      if (!block) {
        if (Status e = stage_->BlockError(); !e.ok()) {
          spdlog::warn("peers: serving '{}' to {}: {}", s.report.tree, s.ep->peer(), e.message());
          ++s.report.errors;
          return EndServed(s, kRefused, "the source has no pinned memory to read its GPU tree through: " +
                                            e.message());
        }
        return;  // every block is in use: the stage's `freed` pushes the waiters again
      }
      const uint64_t version = s.pinned, offset = s.offset;
      stage_->ToHost(s.device, static_cast<uint64_t>(s.buffer) * s.buffer_bytes + offset, block, n,
                     [this, key = s.ep.get(), serial = s.serial, generation = s.generation, version, offset, n,
                      chunks, block, gone = ChunksGone(s, chunks)](const Status& copied) {
        if (stopping_) return;
        auto it = served_.find(key);
        if (it == served_.end() || it->second.serial != serial) return;
        Served& o = it->second;
        if (!copied.ok()) {
          spdlog::warn("peers: reading '{}' from GPU memory for {}: {}", o.report.tree, o.ep->peer(), copied.message());
          ++o.report.errors;
          return EndServed(o, kRefused, "the source could not read its tree: " + copied.message());
        }
        if (o.generation != generation) return gone(Status::Ok());  // a version given up: not sent
        for (uint64_t at = 0; at < n; at += kChunkBytes) {
          const size_t len = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, n - at));
          Status sent = o.ep->Send(kChunk, TokenBytes(o.peer_token) + Bytes(ChunkHead{version, offset + at}),
                                   block.get() + at, len, block, ChunksGone(o, 1));
          if (!sent.ok()) return;  // the connection is failing: OnFailure drops it
          o.report.bytes += len;
        }
        Kick();  // sent from outside Watch: it may be asleep on the worker's descriptor
      });
      s.offset += n;
      s.all_in_flight += chunks;
      if (s.offset >= s.buffer_bytes) s.sent_all = Clock::now();
    }
  }

  // A block for `s` to read into, or null: while others wait for one, it
  // waits behind them (a follower whose sends end must not take back, at
  // once, every block its sends held, starving the rest).
  std::shared_ptr<uint8_t> TakeBlock(Served& s) {
    ucx::Endpoint* key = s.ep.get();
    // Waiters exist only after the pool ran dry, so a block that comes
    // back posts `freed`, which pushes them in order (this one included).
    if (!block_waiters_.empty()) {
      if (std::find(block_waiters_.begin(), block_waiters_.end(), key) == block_waiters_.end()) {
        block_waiters_.push_back(key);
      }
      return nullptr;
    }
    std::shared_ptr<uint8_t> block = stage_->Block();
    if (!block) block_waiters_.push_back(key);
    return block;
  }

  // A block came back: the waiters, first come first served. One that runs
  // out of blocks again waits first next time; those after it wait behind.
  void PushWaiters() {
    std::deque<ucx::Endpoint*> waiting;
    waiting.swap(block_waiters_);
    for (ucx::Endpoint* key : waiting) {
      auto it = served_.find(key);
      if (it != served_.end()) Push(it->second);
    }
  }

  // The stage, made when the first tree in GPU memory is served or followed.
  Result<DeviceStage*> Stage() {
    if (!stage_) {
      GPB_ASSIGN_OR_RETURN(stage_, DeviceStage::Create(io_));
      stage_->freed = [this] { PushWaiters(); };
    }
    return stage_.get();
  }

  void Unpin(Served& s) {
    if (s.pin == 0) return;
    ++s.generation;  // blocks of it still being read from GPU memory are not sent
    wire::ReleaseRequest req{};
    req.allocation_id = s.allocation_id;
    req.pin = s.pin;
    (void)internal_.Call<wire::ReleaseReply>(s.client, req);
    s.pin = 0;
  }

  void Finished(Served& s) {
    bool whole = true;
    if (s.nbuffers == 1) {
      // Written in place: whole only if no write began since the pin.
      wire::AcquireRequest req{};
      req.allocation_id = s.allocation_id;
      auto now = internal_.Call<wire::AcquireReply>(s.client, req);
      whole = now.ok() && now->writes == s.writes && (now->flags & wire::kAcquireWriting) == 0;
      if (now.ok()) {
        wire::ReleaseRequest rel{};
        rel.allocation_id = s.allocation_id;
        rel.pin = now->pin;
        (void)internal_.Call<wire::ReleaseReply>(s.client, rel);
      }
      (void)SendTo(s, kVerdict, Bytes(VerdictBody{s.pinned, whole ? 1u : 0u, 0}));
    } else if (s.passed_on) {  // whole here now, as it is pinned
      (void)SendTo(s, kVerdict, Bytes(VerdictBody{s.pinned, 1u, 0}));
    }
    if (whole) {
      s.have = s.pinned;
      ++s.report.versions;
      s.report.version = s.pinned;
      s.report.last_seconds = std::chrono::duration<double>(Clock::now() - s.sent_all).count();
    }
    Unpin(s);
    Offer(s);
  }

  // Lets go of what a served connection holds (its handler client goes
  // with it: leases and pins).
  void Drop(Served& s) {
    if (s.allocation_id != 0) {
      auto e = exported_.find(s.allocation_id);
      if (e != exported_.end() && --e->second.users == 0) exported_.erase(e);
    }
    if (s.client != 0) handler_.OnDisconnect(s.client);
    s.client = 0;
    s.allocation_id = 0;
    s.pin = 0;
    s.mapping.reset();
    s.device.reset();
  }

  // ---- the follower's side -----------------------------------------------

  struct Following {
    FollowConfig config;
    std::string ip;  // where it connects: the configured source, or `via`
    uint16_t port = 0;
    std::string via;        // IPv4:PORT the source sent it to (peers.fanout); empty: the source itself
    uint8_t redirects = 0;  // in a row
    bool serve_here = false;  // ask the source to serve it itself: the last one it sent us to failed
    gid_t gid = 0;
    // kBuffer: a version was offered and every local buffer is pinned by
    // local readers (or followers of ours) or holds the newest: the source
    // was told (kBusy), and a buffer is begun once one comes free (looked
    // at every tick), then the source is asked again (kWant).
    enum State { kRetrying, kHello, kLayout, kReady, kBuffer, kReading, kVerdict } state = kRetrying;
    std::shared_ptr<Handshake> hs;  // the TCP connection to the source: the handshake, then what we say
    Token token{};                  // ours: on what the source sends us over UCX
    Clock::time_point retry_at;
    std::chrono::milliseconds backoff{100};
    Clock::time_point progress;  // the last message from the source
    Clock::time_point pinged;    // the last ping sent
    std::vector<SlotRecord> layout;
    TreeHead head{};
    uint64_t client = 0;         // the handler's, for the local tree
    uint64_t allocation_id = 0;  // the local tree's
    uint32_t local_buffers = 0;
    Mapping mapping;                             // the local tree, in host memory
    std::shared_ptr<const DeviceMemory> device;  // or in GPU memory, written through the stage
    uint64_t id = 0;       // names it to the stage's copies
    uint64_t attempt = 0;  // of a write: copies of one before land nowhere
    std::shared_ptr<uint8_t> block;  // GPU memory: chunks gathered for one copy, from `block_at`
    uint64_t block_at = 0;
    size_t block_fill = 0;
    uint64_t source_have = 0;  // the source's version whose bytes the local tree's newest holds
    // The version being received, into local `buffer` (-1: no write begun),
    // to be committed as `commit_at`; `passed`: its source passes it on
    // while it arrives there (a verdict follows).
    uint64_t version = 0, commit_at = 0;
    int32_t buffer = -1;
    uint64_t next = 0;      // bytes of it landed in the local tree
    uint64_t received = 0;  // bytes of it received (GPU memory: some still being copied)
    bool passed = false;
    Clock::time_point started;
    uint64_t failures = 0;  // in a row
    Clock::time_point logged;
    PeerReport report;
  };

  Status Add(const FollowConfig& fc) {
    for (const Following& f : following_) {
      if (f.config.tree == fc.tree) {
        return AlreadyExists("'" + fc.tree + "' is followed already, from " + f.config.from + " (unfollow it first)");
      }
    }
    GPB_ASSIGN_OR_RETURN(auto addr, ParsePeerAddress(fc.from, false));
    gid_t gid = ::getegid();
    if (!fc.group.empty()) {
      auto g = LookupGroup(fc.group);
      if (!g.ok()) return InvalidArgument(g.status().message() + ", the local tree's group");
      gid = *g;
    }
    Following& f = following_.emplace_back();
    f.id = ++last_following_;
    f.config = fc;
    f.ip = addr.first;
    f.port = addr.second;
    f.retry_at = Clock::now();
    f.gid = gid;
    return Status::Ok();
  }

  // The handshake on TCP; then our endpoint to the source's worker and the
  // follow on it.
  void Connect(Following& f) {
    namespace ip = boost::asio::ip;
    boost::system::error_code ec;
    const ip::tcp::endpoint to(ip::make_address_v4(f.ip, ec), f.port);
    if (ec) return Retry(f, InvalidArgument("'" + f.config.from + "': " + ec.message()));
    auto hs = std::make_shared<Handshake>(ip::tcp::socket(io_), f.via.empty() ? f.config.from : f.via);
    f.hs = hs;
    f.token = FreshToken();
    f.state = Following::kHello;
    f.progress = f.pinged = Clock::now();
    auto alive = std::weak_ptr<int>(alive_);
    hs->socket().async_connect(to, [this, hs, alive](const boost::system::error_code& e) {
      Following* f = alive.expired() ? nullptr : Shaking(hs);
      if (f == nullptr) return;
      if (e) return Retry(*f, Unavailable("connecting: " + e.message()));
      hs->NoDelay();
      const Nonce nonce = FreshNonce();
      std::string hello(kMagic, sizeof kMagic);
      hello.append(reinterpret_cast<const char*>(nonce.data()), nonce.size());
      hs->Write(kHello, hello);
      hs->Read([this, hs, alive, nonce](const Status& st, uint16_t type, std::string body) {
        Following* f = alive.expired() ? nullptr : Shaking(hs);
        if (f == nullptr) return;
        if (!st.ok()) return Retry(*f, st);
        if (type == kRefused) return Retry(*f, PermissionDenied("the source refused: " + Clean(body)));
        if (type != kChallenge || body.size() != sizeof(Nonce) + sizeof(Mac)) {
          return Retry(*f, ProtocolError("the source did not answer hello with a challenge"));
        }
        Nonce source{};
        std::memcpy(source.data(), body.data(), source.size());
        if (!key_.Verify("source", nonce, source, std::string_view(body).substr(sizeof(Nonce)))) {
          return Retry(*f, PermissionDenied("the source did not prove it holds the cluster key"));
        }
        const Mac proof = key_.Prove("follower", nonce, source);
        std::string m(reinterpret_cast<const char*>(proof.data()), proof.size());
        m += TokenBytes(f->token) + worker_->address();
        hs->Write(kProof, m);
        hs->Read([this, hs, alive](const Status& st2, uint16_t type2, std::string body2) {
          Following* f = alive.expired() ? nullptr : Shaking(hs);
          if (f == nullptr) return;
          if (!st2.ok()) return Retry(*f, st2);
          if (type2 == kRefused) return Retry(*f, PermissionDenied("the source refused: " + Clean(body2)));
          if (type2 != kAccept || !body2.empty()) {
            return Retry(*f, ProtocolError("the source did not accept or refuse the proof"));
          }
          Accepted(*f);
        });
      });
    });
  }

  // The follower whose handshake `hs` is (none once it ended).
  Following* Shaking(const std::shared_ptr<Handshake>& hs) {
    for (auto& f : following_) {
      if (f.hs == hs) return &f;
    }
    return nullptr;
  }

  // Proven both ways: ask for the tree, and listen on the TCP connection
  // for its end (or a refusal); the source answers on UCX.
  void Accepted(Following& f) {
    FollowBody m{};
    m.have = LocalHolds(f) ? f.source_have : 0;
    // We serve it on if we list it: a source with peers.fanout may send others here.
    const bool relay = listen_port_ != 0 && Exports(f.config.tree);
    m.relay_port = relay ? listen_port_ : 0;
    m.redirects = f.redirects;
    m.flags = f.serve_here ? kServeHere : 0;
    std::memcpy(m.tree, f.config.tree.data(), std::min(f.config.tree.size(), sizeof m.tree - 1));
    f.state = Following::kLayout;
    f.progress = Clock::now();
    (void)SendTo(f, kFollow, Bytes(m));
    auto hs = f.hs;
    hs->Read([this, hs, alive = std::weak_ptr<int>(alive_)](const Status& st, uint16_t type, std::string body) {
      Following* f = alive.expired() ? nullptr : Shaking(hs);
      if (f == nullptr) return;
      if (!st.ok()) return Retry(*f, Unavailable("the source ended the connection"));
      if (type == kRefused) return Retry(*f, PermissionDenied("the source refused: " + Clean(body)));
      if (type == kRedirect && f->state == Following::kLayout) return Redirected(*f, Clean(body));
      Retry(*f, ProtocolError("an unexpected message from the source on TCP"));
    });
  }

  // The source serves the tree to as many as its peers.fanout allows and
  // sends us to `to`, a follower of its that serves it on: we ask there at
  // once (no back-off, no error), and go back to the source if that fails.
  void Redirected(Following& f, const std::string& to) {
    auto addr = ParsePeerAddress(to, false);
    if (addr.ok() && addr->second == listen_port_ && !config_.listen.empty() &&
        IpOf(config_.listen) == addr->first) {
      return Retry(f, ProtocolError("the source sent us on to our own address " + to));
    }
    if (!addr.ok() || f.redirects >= kMaxRedirects) {
      return Retry(f, ProtocolError("the source sent us on to '" + to + "'" +
                                    (addr.ok() ? " after " + std::to_string(+kMaxRedirects) + " others" : "")));
    }
    spdlog::info("peers: following '{}': {} sends us to {}, which serves it on", f.config.tree,
                 f.via.empty() ? f.config.from : f.via, to);
    ++f.redirects;
    f.via = to;
    f.ip = addr->first;
    f.port = addr->second;
    if (f.hs) f.hs->Close();
    f.hs.reset();
    f.state = Following::kRetrying;
    f.layout.clear();
    f.retry_at = Clock::now();
  }

  Status SendTo(Following& f, uint16_t type, std::string_view body) {
    if (!f.hs) return Unavailable("not connected");
    f.hs->Write(type, body);
    return Status::Ok();
  }

  // Ends the connection, keeps the local tree's last whole version, and
  // tries again after a back-off.
  void Retry(Following& f, const Status& why) {
    ++f.report.errors;
    f.report.last_error = why.message();
    // One line when a connection is lost, then one a minute while it stays so.
    const auto now = Clock::now();
    if (f.failures++ == 0 || now - f.logged > 60s) {
      f.logged = now;
      spdlog::warn("peers: following '{}' from {}: {}; keeping version {} here, trying again{}", f.config.tree,
                   f.config.from, why.message(), f.report.version,
                   f.failures > 1 ? " (" + std::to_string(f.failures) + " tries failed)" : "");
    }
    AbortWrite(f);
    if (f.hs) f.hs->Close();
    f.hs.reset();
    f.state = Following::kRetrying;
    f.layout.clear();
    f.retry_at = now + f.backoff;
    if (!f.via.empty()) {  // back to the source, asking it to serve us itself this time
      auto addr = ParsePeerAddress(f.config.from, false);
      f.ip = addr.ok() ? addr->first : f.ip;
      f.port = addr.ok() ? addr->second : f.port;
      f.via.clear();
      f.serve_here = true;
    }
    f.redirects = 0;
    f.backoff = std::min<std::chrono::milliseconds>(f.backoff * 2, 2s);
  }

  void AbortWrite(Following& f) {
    if (f.buffer < 0) return;
    wire::CommitRequest req{};
    req.allocation_id = f.allocation_id;
    req.buffer = f.buffer;
    req.flags = wire::kCommitAbort;
    (void)internal_.Call<wire::CommitReply>(f.client, req);
    f.buffer = -1;
    ++f.attempt;
    f.block.reset();
    GaveUp(f.allocation_id);
  }

  Following* FindFollowing(uint64_t id) {
    for (Following& f : following_) {
      if (f.id == id) return &f;
    }
    return nullptr;
  }

  // Whether `allocation_id` is a local tree one of our followings made.
  bool MadeByFollowing(uint64_t allocation_id) const {
    return std::any_of(following_.begin(), following_.end(),
                       [&](const Following& f) { return f.allocation_id == allocation_id; });
  }

  // The follower receiving a version into our local tree `allocation_id`
  // (begun, not yet committed), if any: what we pass on as it lands.
  const Following* Arriving(uint64_t allocation_id) const {
    for (const Following& f : following_) {
      if (f.allocation_id == allocation_id && f.buffer >= 0 &&
          (f.state == Following::kReading || f.state == Following::kVerdict)) {
        return &f;
      }
    }
    return nullptr;
  }

  // Our followers of `allocation_id` that are sent the version arriving
  // there (the caller's lambda for each).
  template <typename Fn>
  void ForArriving(uint64_t allocation_id, Fn fn) {
    for (auto& [ep, s] : served_) {
      if (s.arriving && s.allocation_id == allocation_id) fn(s);
    }
  }

  // The version arriving in `allocation_id` is committed: those it was
  // passed on to pin it like any other, and hear it is whole once they said
  // done.
  void Arrived(uint64_t allocation_id) {
    ForArriving(allocation_id, [&](Served& s) {
      s.arriving = false;
      wire::AcquireRequest req{};
      req.allocation_id = s.allocation_id;
      auto got = internal_.Call<wire::AcquireReply>(s.client, req);
      if (got.ok() && (got->version != s.pinned || got->buffer != s.buffer)) {
        wire::ReleaseRequest rel{};
        rel.allocation_id = s.allocation_id;
        rel.pin = got->pin;
        (void)internal_.Call<wire::ReleaseReply>(s.client, rel);
        got = gpubroker::Internal("another version is newest");
      }
      if (!got.ok()) return Abandon(s);  // not what was sent
      s.pin = got->pin;
      s.writes = got->writes;
      s.progressed = Clock::now();  // its stall is counted from the pin (we were the slow one until now)
      if (s.said_done) Finished(s);
    });
  }

  // The version arriving in `allocation_id` will not be committed here
  // (its source gave it up, or we lost it): those it was passed on to are
  // told, and offered the next once they answered.
  void GaveUp(uint64_t allocation_id) {
    ForArriving(allocation_id, [&](Served& s) { Abandon(s); });
  }

  // Tells one follower the version passed on to it will not be whole; the
  // next is offered once it answered (done or busy), at once if it had.
  void Abandon(Served& s) {
    ++s.generation;  // as for Unpin
    (void)SendTo(s, kVerdict, Bytes(VerdictBody{s.pinned, 0u, 0}));
    s.arriving = s.passed_on = false;
    if (s.said_done) {
      Offer(s);
      return;
    }
    s.gave_up = s.pinned;
  }

  void OnFollowerMessage(Following& f, uint16_t type, std::string_view body) {
    f.progress = Clock::now();
    if (type == kRefused) return Retry(f, PermissionDenied("the source refused: " + Clean(body)));
    if (type == kPong && body.empty() && f.state >= Following::kReady) return;
    switch (f.state) {
      case Following::kHello:
        return Retry(f, ProtocolError("a message from the source before its handshake ended"));
      case Following::kLayout: {
        if (type == kLayout && body.size() % sizeof(SlotRecord) == 0 && !body.empty() &&
            f.layout.size() + body.size() / sizeof(SlotRecord) <= kMaxTreeSlots) {
          const size_t at = f.layout.size();
          f.layout.resize(at + body.size() / sizeof(SlotRecord));
          std::memcpy(&f.layout[at], body.data(), body.size());
          return;
        }
        if (type == kTree && body.size() == sizeof(TreeHead)) {
          std::memcpy(&f.head, body.data(), sizeof f.head);
          if (Status s = LocalTree(f); !s.ok()) return Retry(f, s);
          f.state = Following::kReady;
          f.backoff = 100ms;
          f.failures = 0;
          if (f.via.empty()) f.serve_here = false;  // served by the source: it may plan again next time
          spdlog::info("peers: following '{}' from {} ({} slots, {} buffers of {} bytes)", f.config.tree,
                       f.config.from, f.layout.size(), f.local_buffers, f.head.buffer_bytes);
          return;
        }
        return Retry(f, ProtocolError("a malformed layout from the source"));
      }
      case Following::kReady: {
        // Of a version before: sent before the source knew we were done
        // with it (a busy, or a version it gave up while we said busy).
        if (type == kChunk || type == kVerdict) return;
        auto m = Parse<VersionBody>(body);
        if (type != kVersion || !m || (m->flags & ~kPassedOn) != 0) {
          return Retry(f, ProtocolError("a malformed version message from the source"));
        }
        return StartVersion(f, m->version, (m->flags & kPassedOn) != 0);
      }
      case Following::kBuffer:
        // Of the version refused for want of a buffer, sent before the
        // source knew (our busy answers its verdict too).
        if (type == kChunk || type == kVerdict) return;
        return Retry(f, ProtocolError("an unexpected message from the source while waiting for a buffer"));
      case Following::kReading: {
        if (type == kChunk) return Land(f, body);
        auto m = Parse<VerdictBody>(body);
        if (type == kVerdict && m && f.passed && m->version == f.version && m->whole == 0) {
          // The source could not finish what it passed on: the next comes
          // once we answered.
          AbortWrite(f);
          ++f.report.abandoned;
          f.state = Following::kReady;
          (void)SendTo(f, kDone, Bytes(VersionBody{f.version, -1, 0}));
          return;
        }
        return Retry(f, ProtocolError("an unexpected message from the source while reading"));
      }
      case Following::kVerdict: {
        auto m = Parse<VerdictBody>(body);
        if (type != kVerdict || !m || m->version != f.version) {
          return Retry(f, ProtocolError("an unexpected message from the source instead of its verdict"));
        }
        if (m->whole) return CommitVersion(f);
        AbortWrite(f);  // torn: the next version comes
        ++f.report.abandoned;
        f.state = Following::kReady;
        return;
      }
      case Following::kRetrying:
        return Retry(f, ProtocolError("an unexpected message from the source"));
    }
  }

  // Whether the local tree holds what source_have says (it is the one this
  // follower filled).
  bool LocalHolds(const Following& f) const {
    auto a = handler_.SlotAllocation(f.config.tree);
    return f.allocation_id != 0 && a.ok() && *a == f.allocation_id;
  }

  // The local tree for the source's layout: the one this follower made if
  // it is still there and matches; else one of ours is replaced; a tree of
  // someone else's of that name is left alone (an error). Then attached
  // writable and mapped. A one-buffer source tree gets two buffers here: a
  // version is received beside the last whole one, never over it.
  Status LocalTree(Following& f) {
    const TreeHead& h = f.head;
    if (h.slots != f.layout.size() || h.slots == 0 || f.layout[0].name[0] != '\0' || h.nbuffers == 0 ||
        h.nbuffers > kMaxBuffers || h.buffer_bytes == 0 || h.buffer_bytes > (uint64_t{1} << 48)) {
      return ProtocolError("the source's layout is malformed");
    }
    for (const SlotRecord& r : f.layout) {
      if (std::memchr(r.name, 0, sizeof r.name) == nullptr || r.ndim > kMaxDims) {
        return ProtocolError("the source's layout is malformed");
      }
    }
    f.local_buffers = std::max<uint32_t>(h.nbuffers, 2);
    const std::string& tree = f.config.tree;
    auto existing = handler_.TreeSlots(tree);
    if (!existing.ok() || existing->front().allocation_id != f.allocation_id) DropLocal(f);  // gone or replaced here
    if (existing.ok() && !Matches(f, *existing)) {
      if (existing->front().owner_uid != ::geteuid()) {
        return AlreadyExists("a tree named '" + tree + "' of uid " + std::to_string(existing->front().owner_uid) +
                             " exists here; remove it (gpubrokerctl rm -r " + tree +
                             ") for the follower to make its own");
      }
      // Ours, of another layout (the source's tree was made anew): replace it.
      DropLocal(f);
      GPB_RETURN_IF_ERROR(DestroyLocal(f));
      existing = NotFound("replaced");
    }
    if (!existing.ok()) GPB_RETURN_IF_ERROR(CreateLocal(f));
    if (f.allocation_id == 0) {
      GPB_ASSIGN_OR_RETURN(uint64_t c, Client(f));
      GPB_ASSIGN_OR_RETURN(auto mapped, internal_.AttachMapped(c, tree, true, [this] { return Stage(); }));
      f.mapping = std::move(mapped.host);
      f.device = std::move(mapped.device);
      f.allocation_id = mapped.reply.slot.allocation_id;
      f.report.version = mapped.reply.slot.version;
      const uint64_t mapped_bytes = f.device ? f.device->bytes() : f.mapping.bytes();
      if (mapped.reply.slot.buffer_bytes != h.buffer_bytes || mapped.reply.slot.nbuffers != f.local_buffers ||
          mapped_bytes < h.buffer_bytes * f.local_buffers) {
        DropLocal(f);
        return gpubroker::Internal("the local tree's buffers differ from the source's");
      }
    }
    return Status::Ok();
  }

  Result<uint64_t> Client(Following& f) {
    if (f.client == 0) {
      GPB_ASSIGN_OR_RETURN(f.client, handler_.ConnectInternal("follower of '" + f.config.tree + "' from " +
                                                              f.config.from));
    }
    return f.client;
  }

  void DropLocal(Following& f) {
    AbortWrite(f);
    f.mapping = Mapping();
    f.device.reset();
    f.allocation_id = 0;
    f.source_have = 0;
    if (f.client != 0) handler_.OnDisconnect(f.client);
    f.client = 0;
  }

  // Removes the local tree of that name, the views first (the memory stays
  // while anyone holds a lease on it).
  Status DestroyLocal(Following& f) {
    GPB_ASSIGN_OR_RETURN(uint64_t c, Client(f));
    auto slots = handler_.TreeSlots(f.config.tree);
    if (!slots.ok()) return Status::Ok();
    for (auto it = slots->rbegin(); it != slots->rend(); ++it) {
      wire::DestroyRequest d{};
      d.name.set(it->name);
      (void)internal_.Call<wire::DestroyReply>(c, d);
    }
    return Status::Ok();
  }

  bool Matches(const Following& f, const std::vector<SlotDescriptor>& have) const {
    if (have.size() != f.layout.size()) return false;
    const SlotDescriptor& arena = have.front();
    if (arena.nbuffers != f.local_buffers || arena.buffer_bytes != f.head.buffer_bytes ||
        arena.backend != static_cast<uint16_t>(LocalBackend(f)) || arena.owner_uid != ::geteuid()) {
      return false;
    }
    if (const auto& d = f.config.device; d && !d->cpu) {  // on the GPU peers.follow.device names
      if (d->uuid ? std::memcmp(arena.device_uuid, d->uuid->data(), d->uuid->size()) != 0
                  : d->ordinal >= 0 && arena.device_ordinal != d->ordinal) {
        return false;
      }
    }
    // Both in the same order: the arena, then the views by name.
    for (size_t i = 1; i < have.size(); ++i) {
      const SlotDescriptor& d = have[i];
      const SlotRecord& r = f.layout[i];
      if (std::string_view(d.name) != f.config.tree + "/" + r.name || d.byte_offset != r.byte_offset ||
          d.ndim != r.ndim || d.dtype_code != r.dtype_code || d.dtype_bits != r.dtype_bits ||
          d.dtype_lanes != r.dtype_lanes || !std::equal(d.shape, d.shape + d.ndim, r.shape) ||
          !std::equal(d.strides, d.strides + d.ndim, r.strides)) {
        return false;
      }
    }
    return true;
  }

  // Where the local tree lives: peers.follow.device, else where the
  // source's does (GPU memory: the broker's default device; host memory
  // on a node without GPUs).
  BackendKind LocalBackend(const Following& f) const {
    if (const auto& d = f.config.device) return d->cpu ? BackendKind::kHost : BackendKind::kCudaVmm;
    return f.head.memory == kCudaMemory && handler_.HasBackend(BackendKind::kCudaVmm) ? BackendKind::kCudaVmm
                                                                                     : BackendKind::kHost;
  }

  SlotSpec Spec(const Following& f, const SlotRecord& r) const {
    SlotSpec s;
    const bool arena = r.name[0] == '\0';
    s.name = arena ? f.config.tree : f.config.tree + "/" + r.name;
    s.base = arena ? "" : f.config.tree;
    s.byte_offset = arena ? 0 : r.byte_offset;
    s.nbytes = arena ? f.head.buffer_bytes : 0;
    s.dtype = DType{r.dtype_code, r.dtype_bits, r.dtype_lanes};
    s.shape.assign(r.shape, r.shape + r.ndim);
    s.strides.assign(r.strides, r.strides + r.ndim);
    s.backend = LocalBackend(f);
    if (const auto& d = f.config.device; d && !d->cpu) {
      s.device.ordinal = d->ordinal;
      if (d->uuid) {
        s.device.by_uuid = true;
        s.device.uuid = *d->uuid;
      }
    }
    s.mode = f.config.mode;
    s.buffers = arena ? f.local_buffers : 0;
    return s;
  }

  Status CreateLocal(Following& f) {
    for (size_t i = 0; i < f.layout.size(); ++i) {
      Status s = handler_.CreateOwned(Spec(f, f.layout[i]), f.gid);
      if (s.ok()) continue;
      // Nothing half made stays: the slots made so far go, the views first.
      if (auto c = Client(f); c.ok()) {
        for (size_t j = i; j-- > 0;) {
          wire::DestroyRequest d{};
          d.name.set(Spec(f, f.layout[j]).name);
          (void)internal_.Call<wire::DestroyReply>(*c, d);
        }
      }
      return s.Annotate("making the local tree '" + f.config.tree + "'");
    }
    return Status::Ok();
  }

  // A version is offered: receive it into a local buffer, begun now if none
  // is (kBusy to the source if every one is taken).
  void StartVersion(Following& f, uint64_t version, bool passed) {
    f.report.source_version = version;
    f.version = version;
    f.passed = passed;
    if (f.buffer < 0 && !BeginLocal(f)) {
      (void)SendTo(f, kBusy, Bytes(VersionBody{version, -1, 0}));
      f.state = Following::kBuffer;
      return;
    }
    // The source's number, unless it went back (the source's tree was made
    // anew): local readers never see a version number go down.
    f.commit_at = std::max(f.version, f.report.version + 1);
    f.next = 0;
    f.received = 0;
    ++f.attempt;
    f.block.reset();
    f.started = Clock::now();
    f.state = Following::kReading;
    // Our own followers of this tree take it as it lands.
    bool sent = false;
    for (auto& [ep, s] : served_) {
      if (s.allocation_id == f.allocation_id) sent |= Offer(s);
    }
    if (sent) Kick();
  }

  // False while every local buffer is taken; an error other than that retries.
  bool BeginLocal(Following& f) {
    wire::WriteBeginRequest req{};
    req.allocation_id = f.allocation_id;
    auto begun = internal_.Call<wire::WriteBeginReply>(f.client, req);
    if (begun.ok()) {
      f.buffer = begun->buffer;
      return true;
    }
    if (begun.status().code() != Code::kBusy) Retry(f, begun.status().Annotate("beginning a local write"));
    return false;
  }

  // A chunk: in order, within the buffer, of the version offered.
  void Land(Following& f, std::string_view body) {
    ChunkHead head{};
    if (body.size() <= sizeof head) return Retry(f, ProtocolError("an empty chunk from the source"));
    std::memcpy(&head, body.data(), sizeof head);
    const size_t n = body.size() - sizeof head;
    if (head.version != f.version || head.offset != f.received || n > f.head.buffer_bytes - f.received) {
      return Retry(f, ProtocolError("a chunk out of place from the source (version " + std::to_string(head.version) +
                                    ", offset " + std::to_string(head.offset) + ")"));
    }
    const auto* data = reinterpret_cast<const uint8_t*>(body.data()) + sizeof head;
    const uint64_t at = static_cast<uint64_t>(f.buffer) * f.head.buffer_bytes + f.received;
    f.received += n;
    if (f.device) return StageChunk(f, at, data, n);
    std::memcpy(f.mapping.base() + at, data, n);
    Landed(f, n);
  }

  // A chunk for a local tree in GPU memory: gathered into a pinned block
  // that goes to the device (on the stage's thread) once full, or at the
  // version's end. Should every block be in use, the copies queued are
  // waited for and the chunk is copied at once.
  void StageChunk(Following& f, uint64_t at, const uint8_t* data, size_t n) {
    if (f.block && f.block_fill + n > DeviceStage::kBlockBytes) FlushBlock(f);
    if (!f.block) {
      f.block = stage_->Block();
      if (!f.block) {
        // Every block is in use: once the copies queued have ended, those
        // copied to the device are back; if none is, this chunk is copied
        // at once (after the earlier ones, which it must not overtake).
        stage_->Drain();
        f.block = stage_->Block();
      }
      if (!f.block) {
        if (Status s = stage_->ToDeviceNow(*f.device, at, data, n); !s.ok()) {
          return Retry(f, s.Annotate("writing the local tree in GPU memory"));
        }
        return Landed(f, n);
      }
      f.block_at = at;
      f.block_fill = 0;
    }
    std::memcpy(f.block.get() + f.block_fill, data, n);
    f.block_fill += n;
    if (f.block_fill == DeviceStage::kBlockBytes || f.received == f.head.buffer_bytes) FlushBlock(f);
  }

  void FlushBlock(Following& f) {
    const size_t n = f.block_fill;
    f.block_fill = 0;
    stage_->ToDevice(f.device, f.block_at, std::move(f.block), n,
                     [this, id = f.id, attempt = f.attempt, n](const Status& copied) {
      Following* g = FindFollowing(id);
      if (stopping_ || g == nullptr || g->attempt != attempt) return;  // a write given up since
      if (!copied.ok()) return Retry(*g, copied.Annotate("writing the local tree in GPU memory"));
      Landed(*g, n);
      Kick();  // our own followers' chunks, sent from outside Watch
    });
  }

  // `n` more bytes of the version being read are in the local tree.
  void Landed(Following& f, size_t n) {
    f.next += n;
    f.report.bytes += n;
    ForArriving(f.allocation_id, [&](Served& s) { Push(s); });
    if (f.next < f.head.buffer_bytes) return;
    if (f.head.nbuffers == 1 || f.passed) {  // the source says whether it stayed whole
      (void)SendTo(f, kDone, Bytes(VersionBody{f.version, -1, 0}));
      f.state = Following::kVerdict;
      return;
    }
    CommitVersion(f);
    (void)SendTo(f, kDone, Bytes(VersionBody{f.version, -1, 0}));
  }

  void CommitVersion(Following& f) {
    auto committed = handler_.CommitAt(f.client, f.allocation_id, f.buffer, f.commit_at);
    f.buffer = -1;
    if (!committed.ok()) {
      GaveUp(f.allocation_id);
      return Retry(f, committed.status().Annotate("committing locally"));
    }
    f.source_have = f.version;
    f.report.version = *committed;
    ++f.report.versions;
    f.report.last_seconds = std::chrono::duration<double>(Clock::now() - f.started).count();
    f.state = Following::kReady;
    Arrived(f.allocation_id);
  }

  // ---- both --------------------------------------------------------------

  // A source's message to one of our followers, by the token before its
  // body (from whichever endpoint UCX says it came, if any): anything else
  // is dropped.
  void OnMessage(uint16_t type, std::string_view all) {
    if (all.size() < sizeof(Token)) return;
    Token t{};
    std::copy_n(reinterpret_cast<const uint8_t*>(all.data()), t.size(), t.begin());
    const std::string_view body = all.substr(t.size());
    for (auto& f : following_) {
      if (f.hs && f.state >= Following::kLayout && f.token == t) return OnFollowerMessage(f, type, body);
    }
  }

  void OnFailure(const std::shared_ptr<ucx::Endpoint>& ep, const Status& why) {
    if (auto it = served_.find(ep.get()); it != served_.end()) {
      if (it->second.client != 0) {  // an unproven peer's end is not worth a line (anyone can make many)
        spdlog::info("peers: follower {} of '{}' gone: {}", ep->peer(), it->second.report.tree, why.message());
      }
      Forget(it->second);
      return;
    }

  }

  // Progresses the worker from the loop: until nothing is pending (a budget
  // at a time, so clients are served between), then sleeps on its
  // descriptor. Kick() wakes it early, after a send from outside it. While
  // chunks are being sent it does not sleep: UCX's descriptor says when
  // something arrives, not when a full socket can take more.
  void Watch() {
    if (stopping_) return;
    waiting_ = false;
    const bool more = worker_->Progress(1ms);
    if (more || Sending() || !worker_->Arm()) {
      boost::asio::post(io_, [this] { Watch(); });
      return;
    }
    waiting_ = true;
    fd_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
      if (!ec || ec == boost::asio::error::operation_aborted) Watch();
    });
  }

  bool Sending() const {
    for (const auto& [ep, s] : served_) {
      if (s.all_in_flight != 0) return true;
    }
    return false;
  }

  void Kick() {
    if (waiting_) fd_.cancel();
  }

  void Tick() {
    if (stopping_) return;
    const auto now = Clock::now();
    const auto stall = std::chrono::milliseconds(config_.stall_timeout_ms);
    for (auto it = closing_.begin(); it != closing_.end();) {
      if (now >= it->second) {
        it->first->Close();
        it = closing_.erase(it);
      } else {
        ++it;
      }
    }
    std::vector<std::pair<Served*, std::string>> late;
    std::vector<std::shared_ptr<Handshake>> unproven;  // EndHandshake changes the list
    for (const Pending& p : handshakes_) {
      if (now - p.since > kProveWithin) unproven.push_back(p.hs);
    }
    for (auto& hs : unproven) {
      LogRefusal(hs->peer(), "it did not authenticate in time");
      EndHandshake(hs);
    }
    for (auto& [ep, s] : served_) {
      if (s.client == 0 && now - s.since > kProveWithin) {
        late.push_back({&s, "it did not ask for a tree in time"});
      } else if (now - s.heard > stall) {  // a follower pings every stall_timeout_ms / 3
        late.push_back({&s, "it was not heard from within peers.stall_timeout_ms"});
      } else if (s.pin != 0 && now - std::max(s.sent_all, s.progressed) > stall) {
        late.push_back({&s, "it held version " + std::to_string(s.pinned) +
                                " and neither read more of it nor said done for peers.stall_timeout_ms"});
      } else if (s.client != 0 && !Current(s)) {
        late.push_back({&s, "tree '" + s.report.tree + "' was replaced or removed here"});
      }
    }
    for (auto& [s, why] : late) RefuseServed(*s, why);
    for (auto& f : following_) {
      if (f.state == Following::kRetrying) {
        if (now >= f.retry_at) Connect(f);
      } else if (f.state == Following::kHello && now - f.progress > 2 * kProveWithin) {
        Retry(f, Unavailable("the source did not finish the handshake within " +
                             std::to_string(2 * kProveWithin.count()) + " s"));
      } else if (now - f.progress > stall) {
        // Nothing came for that long, a pong included: a link that went
        // down is not reported otherwise.
        Retry(f, Unavailable("no word from the source for " + std::to_string(config_.stall_timeout_ms) +
                             " ms (peers.stall_timeout_ms)"));
      } else {
        if (f.state == Following::kBuffer && BeginLocal(f)) {
          (void)SendTo(f, kWant, Bytes(WantBody{f.source_have}));
          f.state = Following::kReady;
        }
        if (f.state >= Following::kReady && now - f.pinged > stall / 3) {
          f.pinged = now;
          const bool reading = f.state == Following::kReading;
          (void)SendTo(f, kPing, Bytes(PingBody{reading ? f.version : 0, reading ? f.next : 0}));
        }
      }
    }
    Kick();
    tick_.expires_after(50ms);
    tick_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) Tick();
    });
  }

  static constexpr size_t kMaxUnproven = 64;
  static constexpr size_t kMaxUnprovenPerIp = 4;
  static constexpr size_t kMaxPerIp = 64;   // connections from one address (one per tree it follows)
  static constexpr size_t kMaxServed = 1024;
  static constexpr auto kProveWithin = 2s;

  boost::asio::io_context& io_;
  RequestHandler& handler_;
  InternalClient internal_;
  PeersConfig config_;
  ClusterKey key_;
  std::unique_ptr<ucx::Worker> worker_;
  boost::asio::posix::stream_descriptor fd_;
  boost::asio::steady_timer tick_;
  boost::asio::steady_timer accept_retry_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  uint16_t listen_port_ = 0;
  std::list<Pending> handshakes_;  // unproven connections to the source's port
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // handshakes' handlers check it
  bool waiting_ = false;
  bool stopping_ = false;
  uint64_t serial_ = 0;
  std::map<ucx::Endpoint*, Served> served_;
  std::map<uint64_t, Exported> exported_;  // by allocation id
  std::unique_ptr<DeviceStage> stage_;     // trees in GPU memory: made on first use
  std::deque<ucx::Endpoint*> block_waiters_;  // served followers waiting for one of its blocks
  std::list<Following> following_;
  uint64_t last_following_ = 0;
  std::list<Following> leaving_;  // unfollowed, ending on the loop
  std::vector<std::pair<std::shared_ptr<ucx::Endpoint>, Clock::time_point>> closing_;
  std::map<std::string, Clock::time_point> refusals_logged_;  // by peer address and reason
};
}  // namespace

Result<std::unique_ptr<Peers>> Peers::Start(boost::asio::io_context& io, RequestHandler& handler,
                                            const PeersConfig& config) {
  GPB_ASSIGN_OR_RETURN(ClusterKey key, ClusterKey::Load(config.key_file));
  std::vector<std::pair<std::string, std::string>> settings;
  if (!config.interface.empty()) settings.emplace_back("NET_DEVICES", config.interface);
  GPB_ASSIGN_OR_RETURN(auto worker, ucx::Worker::Make("gpubrokerd", settings));
  auto peers = std::make_unique<PeersImpl>(io, handler, config, std::move(key), std::move(worker));
  GPB_RETURN_IF_ERROR(peers->Begin());
  return std::unique_ptr<Peers>(std::move(peers));
}

}  // namespace gpubroker

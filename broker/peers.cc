#include "broker/peers.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>

#include "broker/peer_auth.h"
#include "broker/ucx.h"
#include "common/validate.h"
#include "common/wire.h"

namespace gpubroker {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// ---- what peers say to each other (little-endian, fixed layouts) ----------

enum Msg : uint16_t {
  kHello = 1,      // follower: kMagic, then its nonce
  kChallenge = 2,  // source: its nonce, then its proof
  kProof = 3,      // follower: its proof
  kFollow = 4,     // follower: FollowBody
  kRefused = 5,    // either: why, as text; the connection ends
  kLayout = 6,     // source: SlotRecords of the tree, the arena first
  kTree = 7,       // source: TreeHead, then the packed memory key
  kVersion = 8,    // source: VersionBody; that version is pinned for this follower
  kDone = 9,       // follower: VersionBody; read (and, for two buffers or more, committed)
  kVerdict = 10,   // source, one-buffer trees: VerdictBody
  kPing = 11,      // follower, when nothing came for a while: are you there?
  kPong = 12,      // source: yes
};

constexpr char kMagic[8] = {'G', 'P', 'B', 'P', 'E', 'E', 'R', '1'};

struct FollowBody {
  uint64_t have;   // the newest version the follower holds (0: none)
  char tree[128];  // NUL-terminated
};

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
constexpr size_t kRecordsPerMessage = ucx::kMaxMessage / sizeof(SlotRecord);
constexpr uint32_t kMaxTreeSlots = 65536;

struct TreeHead {
  uint64_t address;  // of buffer 0, in the source's registration
  uint64_t buffer_bytes;
  uint32_t nbuffers;
  uint32_t slots;  // records sent before this
};

struct VersionBody {
  uint64_t version;
  int32_t buffer;
  uint32_t reserved;
};

struct VerdictBody {
  uint64_t version;
  uint32_t whole;
  uint32_t reserved;
};

template <typename T>
std::string Bytes(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

template <typename T>
std::optional<T> Parse(const std::string& body) {
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

// ---- the broker's own client, through the handler --------------------------

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

  // Attaches `name` (write access if `write`) and maps the whole allocation.
  struct Mapped {
    wire::AttachReply reply;
    uint8_t* base = nullptr;
    size_t bytes = 0;
  };
  Result<Mapped> AttachMapped(uint64_t client, const std::string& name, bool write) {
    wire::AttachRequest req{};
    req.name.set(name);
    req.flags = write ? wire::kAttachWriteRequired : wire::kAttachReadOnly;
    UniqueFd fd;
    GPB_ASSIGN_OR_RETURN(wire::AttachReply reply, (Call<wire::AttachReply>(client, req, &fd)));
    if (reply.slot.backend != static_cast<uint16_t>(BackendKind::kHost) || !fd.valid()) {
      return Unsupported("tree '" + name + "' is in " +
                         std::string(BackendName(static_cast<BackendKind>(reply.slot.backend))) +
                         " memory; replicating trees in CUDA memory is not built yet (host trees only)");
    }
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) < reply.slot.buffer_bytes * reply.slot.nbuffers) {
      return gpubroker::Internal("the memory of '" + name + "' is smaller than its buffers");
    }
    const size_t bytes = reply.slot.buffer_bytes * reply.slot.nbuffers;
    void* p = ::mmap(nullptr, bytes, write ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return ResourceExhausted("mapping '" + name + "': " + std::strerror(errno));
    return Mapped{reply, static_cast<uint8_t*>(p), bytes};
  }

 private:
  RequestHandler& h_;
  uint32_t id_ = 0;
};

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

// Reads of one version: this many bytes at a time, this many in flight (UCX
// over TCP moves a read per progress call; the loop stays responsive).
constexpr size_t kChunk = 256 * 1024;
constexpr size_t kInFlight = 32;

class PeersImpl final : public Peers {
 public:
  PeersImpl(boost::asio::io_context& io, RequestHandler& handler, PeersConfig config, ClusterKey key,
            std::unique_ptr<ucx::Worker> worker)
      : io_(io), handler_(handler), internal_(handler), config_(std::move(config)), key_(std::move(key)),
        worker_(std::move(worker)), fd_(io, worker_->fd()), tick_(io) {}

  ~PeersImpl() override {
    stopping_ = true;
    tick_.cancel();
    fd_.release();  // UCX's descriptor: the worker closes it
    for (auto& [ep, s] : served_) Drop(s);
    for (auto& f : following_) {
      f.key = ucx::RemoteKey();
      if (f.ep) f.ep->Close();
    }
    exported_.clear();   // registrations go before the worker
    worker_.reset();     // reads still in flight end here; stopping_ keeps their handlers quiet
    for (auto& [ep, s] : served_) {
      if (s.client != 0) handler_.OnDisconnect(s.client);
    }
    for (auto& f : following_) {
      if (f.client != 0) handler_.OnDisconnect(f.client);
    }
  }

  Status Begin() {
    worker_->OnMessage([this](const std::shared_ptr<ucx::Endpoint>& ep, uint16_t type, std::string body) {
      OnMessage(ep, type, std::move(body));
    });
    worker_->OnFailure([this](const std::shared_ptr<ucx::Endpoint>& ep, const Status& why) { OnFailure(ep, why); });
    if (!config_.listen.empty()) {
      GPB_ASSIGN_OR_RETURN(auto addr, ParsePeerAddress(config_.listen, true));
      GPB_RETURN_IF_ERROR(worker_->Listen(addr.first, addr.second, [this](const std::shared_ptr<ucx::Endpoint>& ep) {
        OnAccepted(ep);
      }));
      spdlog::info("peers: serving {} tree(s) to followers at {}:{}", config_.exports.size(), addr.first,
                   worker_->listen_port());
    }
    for (const FollowConfig& fc : config_.follow) {
      Following& f = following_.emplace_back();
      f.config = fc;
      auto addr = ParsePeerAddress(fc.from, false);
      f.ip = addr->first;
      f.port = addr->second;
      f.retry_at = Clock::now();
      f.gid = ::getegid();
      if (!fc.group.empty()) {
        auto gid = LookupGroup(fc.group);
        if (!gid.ok()) return gid.status().Annotate("peers.follow '" + fc.tree + "'");
        f.gid = *gid;
      }
    }
    Tick();
    Watch();
    return Status::Ok();
  }

  uint16_t port() const override { return config_.listen.empty() ? 0 : worker_->listen_port(); }

  // Called inside the handler's commit: the offers go from the loop, after it.
  void Committed(uint64_t allocation_id) override {
    boost::asio::post(io_, [this, allocation_id] {
      bool sent = false;
      for (auto& [ep, s] : served_) {
        if (s.allocation_id == allocation_id && s.ready && s.pin == 0) sent |= Offer(s);
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
      r.state = s.state == Served::kFollowing ? (s.pin != 0 ? "reading" : "ready") : "authenticating";
      out.push_back(std::move(r));
    }
    for (const auto& f : following_) {
      PeerReport r = f.report;
      r.role = "follower";
      r.tree = f.config.tree;
      r.peer = f.config.from;
      static const char* kStates[] = {"retrying", "authenticating", "layout", "ready", "waiting for a buffer",
                                      "reading"};
      r.state = kStates[f.state];
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  // ---- the source's side -------------------------------------------------

  // A tree's memory as peers read it: mapped and registered once, while any
  // follower reads it.
  struct Exported {
    Mapping mapping;
    std::unique_ptr<ucx::Registration> registration;
    int users = 0;
  };

  struct Served {
    std::shared_ptr<ucx::Endpoint> ep;
    enum State { kHello, kChallenged, kFollowing } state = kHello;
    Nonce follower{}, source{};
    Clock::time_point since = Clock::now();  // of the state, or of the pin
    uint64_t client = 0;  // the handler's, once following
    uint64_t allocation_id = 0;
    uint32_t nbuffers = 0;
    bool ready = false;
    uint64_t have = 0;    // the newest version the follower holds
    uint64_t pin = 0;     // the version it reads is pinned by this
    uint64_t pinned = 0;  // that version
    uint64_t writes = 0;  // writes begun when it was pinned (one-buffer trees)
    Clock::time_point heard = Clock::now();  // its last message
    PeerReport report;
  };

  void OnAccepted(const std::shared_ptr<ucx::Endpoint>& ep) {
    size_t unproven = 0;
    for (const auto& [e, s] : served_) unproven += s.state != Served::kFollowing;
    if (unproven >= kMaxUnproven) {
      Refuse(ep, "too many connections that have not authenticated");
      return;
    }
    Served& s = served_[ep.get()];
    s.ep = ep;
  }

  void Refuse(const std::shared_ptr<ucx::Endpoint>& ep, const std::string& why) {
    LogRefusal(ep->peer(), why);
    (void)ep->Send(kRefused, why);
    // The refusal goes out before the close: UCX flushes a send before a
    // graceful close, and a forced one drops it, so close on the next tick.
    closing_.push_back({ep, Clock::now() + 200ms});
  }

  // One line per peer address and reason a minute at most: a peer that
  // retries (or an attacker) cannot flood the log.
  void LogRefusal(const std::string& peer, const std::string& why) {
    const auto now = Clock::now();
    const std::string key = peer.substr(0, peer.rfind(':')) + " " + why.substr(0, 40);
    auto [it, added] = refusals_logged_.try_emplace(key, Clock::time_point{});
    if (!added && now - it->second < 60s) return;
    if (refusals_logged_.size() > 1024) refusals_logged_.clear();
    refusals_logged_[key] = now;
    spdlog::warn("peers: refused {}: {}", peer, why);
  }

  void OnSourceMessage(Served& s, uint16_t type, const std::string& body) {
    s.heard = Clock::now();
    switch (s.state) {
      case Served::kHello: {
        if (type != kHello || body.size() != sizeof kMagic + sizeof(Nonce) ||
            std::memcmp(body.data(), kMagic, sizeof kMagic) != 0) {
          return RefuseServed(s, "the first message must be a gpubroker peer hello");
        }
        std::memcpy(s.follower.data(), body.data() + sizeof kMagic, sizeof(Nonce));
        s.source = FreshNonce();
        const Mac proof = key_.Prove("source", s.follower, s.source);
        std::string reply(reinterpret_cast<const char*>(s.source.data()), s.source.size());
        reply.append(reinterpret_cast<const char*>(proof.data()), proof.size());
        s.state = Served::kChallenged;
        (void)s.ep->Send(kChallenge, std::move(reply));
        return;
      }
      case Served::kChallenged: {
        if (type != kProof || !key_.Verify("follower", s.follower, s.source, body)) {
          return RefuseServed(s, "it did not prove it holds the cluster key");
        }
        s.state = Served::kFollowing;
        s.since = Clock::now();
        return;
      }
      case Served::kFollowing:
        break;
    }
    if (type == kFollow && s.client == 0) {
      auto m = Parse<FollowBody>(body);
      if (!m || std::memchr(m->tree, 0, sizeof m->tree) == nullptr) return RefuseServed(s, "a malformed follow");
      return ServeTree(s, m->tree, m->have);
    }
    if (type == kPing && body.empty()) {
      (void)s.ep->Send(kPong, "");
      return;
    }
    if (type == kDone && s.client != 0) {
      auto m = Parse<VersionBody>(body);
      if (!m || s.pin == 0 || m->version != s.pinned) return RefuseServed(s, "done for a version it was not sent");
      return Finished(s);
    }
    RefuseServed(s, "an unexpected message (type " + std::to_string(type) + ")");
  }

  void RefuseServed(Served& s, const std::string& why) {
    ++s.report.errors;
    auto ep = s.ep;
    Drop(s);
    served_.erase(ep.get());
    Refuse(ep, why);
  }

  void ServeTree(Served& s, const std::string& tree, uint64_t have) {
    if (std::find(config_.exports.begin(), config_.exports.end(), tree) == config_.exports.end()) {
      return RefuseServed(s, "tree '" + Clean(tree) + "' is not exported here (peers.export)");
    }
    auto slots = handler_.TreeSlots(tree);
    if (!slots.ok()) return RefuseServed(s, "tree '" + tree + "': " + slots.status().message());
    if (slots->size() > kMaxTreeSlots) return RefuseServed(s, "tree '" + tree + "' has too many slots");
    auto client = handler_.ConnectInternal("peer " + s.ep->peer() + " follows " + tree);
    if (!client.ok()) return RefuseServed(s, client.status().message());
    s.client = *client;
    auto mapped = internal_.AttachMapped(s.client, tree, false);
    if (!mapped.ok()) return RefuseServed(s, mapped.status().message());
    const SlotDescriptor& arena = mapped->reply.slot;
    s.allocation_id = arena.allocation_id;
    s.nbuffers = arena.nbuffers;
    Exported& e = exported_[s.allocation_id];
    if (!e.registration) {
      e.mapping = Mapping(mapped->base, mapped->bytes);
      auto reg = worker_->Register(e.mapping.base(), e.mapping.bytes());
      if (!reg.ok()) {
        exported_.erase(s.allocation_id);
        return RefuseServed(s, reg.status().message());
      }
      e.registration = std::move(*reg);
    } else {
      ::munmap(mapped->base, mapped->bytes);  // mapped and registered already
    }
    ++e.users;
    s.report.tree = tree;
    // The layout: the arena, then each view, as records.
    std::vector<SlotRecord> records;
    const std::string under = tree + "/";
    for (const SlotDescriptor& d : *slots) {
      if (d.allocation_id != s.allocation_id) continue;  // replaced meanwhile: the next follow sees it
      SlotRecord r{};
      std::string_view name(d.name);
      if (name != tree) name.remove_prefix(under.size());
      else name = "";
      std::memcpy(r.name, name.data(), name.size());
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
      (void)s.ep->Send(kLayout, std::string(reinterpret_cast<const char*>(&records[i]), n * sizeof(SlotRecord)));
    }
    TreeHead head{e.registration->address(), arena.buffer_bytes, arena.nbuffers,
                  static_cast<uint32_t>(records.size())};
    (void)s.ep->Send(kTree, Bytes(head) + e.registration->packed_key());
    s.have = have;
    s.ready = true;
    spdlog::info("peers: {} follows '{}' ({} buffers of {} bytes)", s.ep->peer(), tree, arena.nbuffers,
                 arena.buffer_bytes);
    Offer(s);
  }

  // Whether the tree's name still names the allocation served.
  bool Current(const Served& s) const {
    auto a = handler_.SlotAllocation(s.report.tree);
    return a.ok() && *a == s.allocation_id;
  }

  // Pins the newest version for the follower if it is newer than what it
  // has and nothing is pinned for it yet; true if one was sent.
  bool Offer(Served& s) {
    if (!s.ready || s.pin != 0) return false;
    wire::AcquireRequest req{};
    req.allocation_id = s.allocation_id;
    auto got = internal_.Call<wire::AcquireReply>(s.client, req);
    if (!got.ok()) return false;  // nothing whole yet: the next commit offers
    // Any version but the one it has: after the source's tree was made
    // anew, its numbers start again below the follower's.
    if (got->version == s.have) {
      Unpin(s, got->pin);
      return false;
    }
    s.pin = got->pin;
    s.pinned = got->version;
    s.writes = got->writes;
    s.since = Clock::now();
    (void)s.ep->Send(kVersion, Bytes(VersionBody{got->version, got->buffer, 0}));
    return true;
  }

  void Unpin(Served& s, uint64_t pin) {
    wire::ReleaseRequest req{};
    req.allocation_id = s.allocation_id;
    req.pin = pin;
    (void)internal_.Call<wire::ReleaseReply>(s.client, req);
  }

  void Finished(Served& s) {
    if (s.nbuffers == 1) {
      // Written in place: whole only if no write began since the pin.
      const uint64_t writes = CurrentWrites(s);
      const bool whole = writes == s.writes;
      (void)s.ep->Send(kVerdict, Bytes(VerdictBody{s.pinned, whole ? 1u : 0u, 0}));
      if (whole) s.have = s.pinned;
    } else {
      s.have = s.pinned;
    }
    if (s.have == s.pinned) {
      ++s.report.versions;
      s.report.version = s.pinned;
      s.report.last_seconds = std::chrono::duration<double>(Clock::now() - s.since).count();
    }
    Unpin(s, s.pin);
    s.pin = 0;
    Offer(s);
  }

  uint64_t CurrentWrites(Served& s) {
    wire::AcquireRequest req{};
    req.allocation_id = s.allocation_id;
    req.release_pin = 0;
    auto got = internal_.Call<wire::AcquireReply>(s.client, req);
    if (!got.ok()) return ~uint64_t{0};
    Unpin(s, got->pin);
    return got->writes;
  }

  // Lets go of what a served connection holds (its handler client goes
  // with it: leases and pins).
  void Drop(Served& s) {
    if (s.allocation_id != 0) {
      auto e = exported_.find(s.allocation_id);
      if (e != exported_.end() && --e->second.users == 0 && !stopping_) exported_.erase(e);
    }
    if (s.client != 0 && !stopping_) handler_.OnDisconnect(s.client);
    if (!stopping_) s.client = 0;
    s.allocation_id = 0;
    s.pin = 0;
    s.ready = false;
  }

  // ---- the follower's side -----------------------------------------------

  struct Following {
    FollowConfig config;
    std::string ip;
    uint16_t port = 0;
    gid_t gid = 0;
    // kBuffer: a version is offered, and every local buffer is pinned by
    // local readers (or followers of ours) or holds the newest: it is begun
    // once one comes free (looked at every tick).
    enum State { kRetrying, kHello, kLayout, kReady, kBuffer, kReading } state = kRetrying;
    std::shared_ptr<ucx::Endpoint> ep;
    Nonce nonce{};
    Clock::time_point retry_at;
    std::chrono::milliseconds backoff{100};
    Clock::time_point progress;  // the last byte or message while something is owed
    std::vector<SlotRecord> layout;
    TreeHead head{};
    ucx::RemoteKey key;
    uint64_t client = 0;         // the handler's, for the local tree
    uint64_t allocation_id = 0;  // the local tree's
    Mapping mapping;
    // The version being read.
    uint64_t version = 0;
    int32_t source_buffer = -1;
    int32_t buffer = -1;
    size_t next = 0, in_flight = 0;
    uint64_t generation = 0;  // of the connection: reads of an older one are ignored
    Clock::time_point started;
    Clock::time_point pinged;  // the last ping sent
    uint64_t failures = 0;  // in a row
    Clock::time_point logged;
    PeerReport report;
  };

  void Connect(Following& f) {
    ++f.generation;
    auto ep = worker_->Connect(f.ip, f.port);
    if (!ep.ok()) return Retry(f, ep.status());
    f.ep = *ep;
    f.nonce = FreshNonce();
    std::string hello(kMagic, sizeof kMagic);
    hello.append(reinterpret_cast<const char*>(f.nonce.data()), f.nonce.size());
    f.state = Following::kHello;
    f.progress = Clock::now();
    if (Status s = f.ep->Send(kHello, std::move(hello)); !s.ok()) return Retry(f, s);
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
    f.key = ucx::RemoteKey();
    if (f.ep) f.ep->Close();
    f.ep.reset();
    ++f.generation;
    f.state = Following::kRetrying;
    f.layout.clear();
    f.retry_at = Clock::now() + f.backoff;
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
  }

  void OnFollowerMessage(Following& f, uint16_t type, std::string body) {
    f.progress = Clock::now();
    if (type == kRefused) return Retry(f, PermissionDenied("the source refused: " + Clean(body)));
    if (type == kPong && body.empty() && f.state >= Following::kReady) return;
    switch (f.state) {
      case Following::kHello: {
        if (type != kChallenge || body.size() != sizeof(Nonce) + sizeof(Mac)) {
          return Retry(f, ProtocolError("the source did not answer hello with a challenge"));
        }
        Nonce source{};
        std::memcpy(source.data(), body.data(), source.size());
        if (!key_.Verify("source", f.nonce, source, std::string_view(body).substr(sizeof(Nonce)))) {
          return Retry(f, PermissionDenied("the source did not prove it holds the cluster key"));
        }
        const Mac proof = key_.Prove("follower", f.nonce, source);
        (void)f.ep->Send(kProof, std::string(reinterpret_cast<const char*>(proof.data()), proof.size()));
        FollowBody m{};
        m.have = LocalVersion(f);
        std::memcpy(m.tree, f.config.tree.data(), std::min(f.config.tree.size(), sizeof m.tree - 1));
        (void)f.ep->Send(kFollow, Bytes(m));
        f.state = Following::kLayout;
        return;
      }
      case Following::kLayout: {
        if (type == kLayout && body.size() % sizeof(SlotRecord) == 0 && !body.empty() &&
            f.layout.size() + body.size() / sizeof(SlotRecord) <= kMaxTreeSlots) {
          const size_t n = body.size() / sizeof(SlotRecord);
          const size_t at = f.layout.size();
          f.layout.resize(at + n);
          std::memcpy(&f.layout[at], body.data(), body.size());
          return;
        }
        if (type == kTree && body.size() > sizeof(TreeHead)) {
          std::memcpy(&f.head, body.data(), sizeof f.head);
          auto key = f.ep->Unpack(std::string_view(body).substr(sizeof(TreeHead)));
          if (!key.ok()) return Retry(f, key.status());
          f.key = std::move(*key);
          if (Status s = LocalTree(f); !s.ok()) return Retry(f, s);
          f.state = Following::kReady;
          f.backoff = 100ms;
          f.failures = 0;
          spdlog::info("peers: following '{}' from {} ({} slots, {} buffers of {} bytes)", f.config.tree,
                       f.config.from, f.layout.size(), f.head.nbuffers, f.head.buffer_bytes);
          return;
        }
        return Retry(f, ProtocolError("a malformed layout from the source"));
      }
      case Following::kReady: {
        auto m = Parse<VersionBody>(body);
        if (type != kVersion || !m || m->buffer < 0 || static_cast<uint32_t>(m->buffer) >= f.head.nbuffers) {
          return Retry(f, ProtocolError("a malformed version message from the source"));
        }
        return StartRead(f, m->version, m->buffer);
      }
      case Following::kReading: {
        auto m = Parse<VerdictBody>(body);
        if (type != kVerdict || f.head.nbuffers != 1 || !m || m->version != f.version || f.in_flight != 0 ||
            f.next < f.head.buffer_bytes) {
          return Retry(f, ProtocolError("an unexpected message from the source while reading"));
        }
        if (m->whole) return CommitRead(f);
        AbortWrite(f);  // torn: the next version comes
        f.state = Following::kReady;
        return;
      }
      case Following::kRetrying:
        return Retry(f, ProtocolError("an unexpected message from the source"));
    }
  }

  // The local tree of the source's layout: the one there if it is ours and
  // matches, else a new one. Then attached writable and mapped.
  Status LocalTree(Following& f) {
    const TreeHead& h = f.head;
    if (h.slots != f.layout.size() || h.slots == 0 || f.layout[0].name[0] != '\0' || h.nbuffers == 0 ||
        h.nbuffers > kMaxBuffers || h.buffer_bytes == 0) {
      return ProtocolError("the source's layout is malformed");
    }
    for (const SlotRecord& r : f.layout) {
      if (std::memchr(r.name, 0, sizeof r.name) == nullptr || r.ndim > kMaxDims) {
        return ProtocolError("the source's layout is malformed");
      }
    }
    const std::string& tree = f.config.tree;
    if (auto existing = handler_.TreeSlots(tree); existing.ok()) {
      if (f.allocation_id != 0 && existing->front().allocation_id != f.allocation_id) DropLocal(f);  // made anew here
      if (!Matches(f, *existing)) {
        if (f.allocation_id != 0 || existing->front().owner_uid != ::geteuid()) {
          return AlreadyExists("a tree named '" + tree + "' exists here with another layout or owner; "
                               "remove it (gpubrokerctl rm) for the follower to make its own");
        }
        // Ours, of an older layout (the source replaced its tree): replace it.
        DropLocal(f);
        for (auto it = existing->rbegin(); it != existing->rend(); ++it) {
          wire::DestroyRequest d{};
          d.name.set(it->name);
          GPB_ASSIGN_OR_RETURN(uint64_t c, Client(f));
          (void)internal_.Call<wire::DestroyReply>(c, d);
        }
        GPB_RETURN_IF_ERROR(CreateLocal(f));
      }
    } else {
      GPB_RETURN_IF_ERROR(CreateLocal(f));
    }
    if (f.allocation_id == 0) {
      GPB_ASSIGN_OR_RETURN(uint64_t c, Client(f));
      GPB_ASSIGN_OR_RETURN(auto mapped, internal_.AttachMapped(c, tree, true));
      f.mapping = Mapping(mapped.base, mapped.bytes);
      f.allocation_id = mapped.reply.slot.allocation_id;
      if (mapped.reply.slot.buffer_bytes != h.buffer_bytes || mapped.reply.slot.nbuffers != h.nbuffers) {
        DropLocal(f);
        return Internal("the local tree's buffers differ from the source's");
      }
      f.report.version = mapped.reply.slot.version;
    }
    return Status::Ok();
  }

  // The version the local tree holds, if it is the follower's.
  uint64_t LocalVersion(const Following& f) const {
    auto existing = handler_.TreeSlots(f.config.tree);
    if (!existing.ok() || existing->front().owner_uid != ::geteuid()) return 0;
    return existing->front().version;
  }

  Result<uint64_t> Client(Following& f) {
    if (f.client == 0) {
      GPB_ASSIGN_OR_RETURN(f.client, handler_.ConnectInternal("follower of '" + f.config.tree + "' from " +
                                                              f.config.from));
    }
    return f.client;
  }

  void DropLocal(Following& f) {
    f.mapping = Mapping();
    f.allocation_id = 0;
    if (f.client != 0) handler_.OnDisconnect(f.client);
    f.client = 0;
  }

  bool Matches(const Following& f, const std::vector<SlotDescriptor>& have) const {
    if (have.size() != f.layout.size()) return false;
    const SlotDescriptor& arena = have.front();
    if (arena.nbuffers != f.head.nbuffers || arena.buffer_bytes != f.head.buffer_bytes ||
        arena.backend != static_cast<uint16_t>(BackendKind::kHost) || arena.owner_uid != ::geteuid()) {
      return false;
    }
    // Both sorted the same way: the arena, then the views by name.
    std::vector<const SlotRecord*> views;
    for (size_t i = 1; i < f.layout.size(); ++i) views.push_back(&f.layout[i]);
    std::sort(views.begin(), views.end(), [](auto* x, auto* y) { return std::strcmp(x->name, y->name) < 0; });
    for (size_t i = 1; i < have.size(); ++i) {
      const SlotDescriptor& d = have[i];
      const SlotRecord& r = *views[i - 1];
      if (std::string_view(d.name) != f.config.tree + "/" + r.name || d.byte_offset != r.byte_offset ||
          d.ndim != r.ndim || d.dtype_code != r.dtype_code || d.dtype_bits != r.dtype_bits ||
          d.dtype_lanes != r.dtype_lanes || !std::equal(d.shape, d.shape + d.ndim, r.shape) ||
          !std::equal(d.strides, d.strides + d.ndim, r.strides)) {
        return false;
      }
    }
    return true;
  }

  SlotSpec Spec(const Following& f, const SlotRecord& r) const {
    SlotSpec s;
    const bool arena = r.name[0] == '\0';
    s.name = arena ? f.config.tree : f.config.tree + "/" + r.name;
    s.base = arena ? "" : f.config.tree;
    s.byte_offset = arena ? 0 : r.byte_offset;
    s.nbytes = arena ? r.nbytes : 0;
    s.dtype = DType{r.dtype_code, r.dtype_bits, r.dtype_lanes};
    s.shape.assign(r.shape, r.shape + r.ndim);
    s.strides.assign(r.strides, r.strides + r.ndim);
    s.backend = BackendKind::kHost;
    s.mode = f.config.mode;
    s.buffers = arena ? f.head.nbuffers : 0;
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

  void StartRead(Following& f, uint64_t version, int32_t source_buffer) {
    f.report.source_version = version;
    f.version = version;
    f.source_buffer = source_buffer;
    wire::WriteBeginRequest req{};
    req.allocation_id = f.allocation_id;
    auto begun = internal_.Call<wire::WriteBeginReply>(f.client, req);
    if (!begun.ok() && begun.status().code() == Code::kBusy) {
      f.state = Following::kBuffer;
      return;
    }
    if (!begun.ok()) return Retry(f, begun.status().Annotate("beginning a local write"));
    f.buffer = begun->buffer;
    f.next = 0;
    f.in_flight = 0;
    f.started = Clock::now();
    f.state = Following::kReading;
    IssueReads(f);
  }

  void IssueReads(Following& f) {
    const uint64_t total = f.head.buffer_bytes;
    while (f.in_flight < kInFlight && f.next < total) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, total - f.next));
      uint8_t* local = f.mapping.base() + static_cast<uint64_t>(f.buffer) * total + f.next;
      const uint64_t remote = f.head.address + static_cast<uint64_t>(f.source_buffer) * total + f.next;
      const uint64_t generation = f.generation;
      Following* fp = &f;
      Status s = f.ep->Get(local, n, remote, f.key, [this, fp, generation, n](Status done) {
        if (stopping_ || fp->generation != generation) return;  // of a connection that ended
        fp->progress = Clock::now();
        --fp->in_flight;
        if (!done.ok()) return Retry(*fp, done.Annotate("reading version " + std::to_string(fp->version)));
        fp->report.bytes += n;
        if (fp->in_flight == 0 && fp->next >= fp->head.buffer_bytes) return ReadAll(*fp);
        IssueReads(*fp);
      });
      if (!s.ok()) return Retry(f, s);
      ++f.in_flight;
      f.next += n;
    }
  }

  void ReadAll(Following& f) {
    if (f.head.nbuffers == 1) {
      (void)f.ep->Send(kDone, Bytes(VersionBody{f.version, f.source_buffer, 0}));  // then the verdict
      return;
    }
    CommitRead(f);
    if (f.ep) (void)f.ep->Send(kDone, Bytes(VersionBody{f.version, f.source_buffer, 0}));
  }

  void CommitRead(Following& f) {
    if (f.version == f.report.version) {  // held already (the source offered what a restart kept here)
      AbortWrite(f);
      f.state = Following::kReady;
      return;
    }
    // The source's number, unless it went back (the source's tree was made
    // anew): local readers never see a version number go down.
    const uint64_t at = std::max(f.version, f.report.version + 1);
    auto committed = handler_.CommitAt(f.client, f.allocation_id, f.buffer, at);
    f.buffer = -1;
    if (!committed.ok()) return Retry(f, committed.status().Annotate("committing locally"));
    f.report.version = *committed;
    ++f.report.versions;
    f.report.last_seconds = std::chrono::duration<double>(Clock::now() - f.started).count();
    f.state = Following::kReady;
  }

  // ---- both --------------------------------------------------------------

  void OnMessage(const std::shared_ptr<ucx::Endpoint>& ep, uint16_t type, std::string body) {
    if (auto it = served_.find(ep.get()); it != served_.end()) return OnSourceMessage(it->second, type, body);
    for (auto& f : following_) {
      if (f.ep == ep) return OnFollowerMessage(f, type, std::move(body));
    }
  }

  void OnFailure(const std::shared_ptr<ucx::Endpoint>& ep, const Status& why) {
    if (auto it = served_.find(ep.get()); it != served_.end()) {
      if (it->second.client != 0) {  // an unproven peer's end is not worth a line (anyone can make many)
        spdlog::info("peers: follower {} of '{}' gone: {}", ep->peer(), it->second.report.tree, why.message());
      }
      Drop(it->second);
      served_.erase(it);
      return;
    }
    for (auto& f : following_) {
      if (f.ep == ep) return Retry(f, why);
    }
  }

  // Progresses the worker from the loop: until nothing is pending (a budget
  // at a time, so clients are served between), then sleeps on its
  // descriptor. Kick() wakes it early, after a send from outside it.
  void Watch() {
    if (stopping_) return;
    waiting_ = false;
    const bool more = worker_->Progress(1ms);
    if (more || !worker_->Arm()) {
      boost::asio::post(io_, [this] { Watch(); });
      return;
    }
    waiting_ = true;
    fd_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
      if (!ec || ec == boost::asio::error::operation_aborted) Watch();
    });
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
    std::vector<Served*> late;
    for (auto& [ep, s] : served_) {
      if (s.state != Served::kFollowing && now - s.since > kProveWithin) late.push_back(&s);
      else if (now - s.heard > stall) late.push_back(&s);  // a follower pings every stall_timeout_ms / 3
      else if (s.ready && !Current(s)) late.push_back(&s);
    }
    for (Served* s : late) {
      if (s->ready && now - s->heard <= stall) {  // the follower asks again and gets the new layout
        RefuseServed(*s, "tree '" + s->report.tree + "' was replaced or removed here");
        continue;
      }
      RefuseServed(*s, s->state != Served::kFollowing ? "it did not authenticate in time"
                       : "it was not heard from within peers.stall_timeout_ms" +
                             (s->pin != 0 ? ", holding version " + std::to_string(s->pinned) : std::string()));
    }
    for (auto& f : following_) {
      if (f.state == Following::kRetrying && now >= f.retry_at) {
        Connect(f);
      } else if (f.state == Following::kBuffer) {
        StartRead(f, f.version, f.source_buffer);
      }
      if (f.state == Following::kRetrying) {
      } else if (f.state != Following::kRetrying && now - f.progress > stall) {
        // Nothing came for that long, a ping included: a link that went
        // down is not reported otherwise.
        Retry(f, Unavailable("no word from the source for " + std::to_string(config_.stall_timeout_ms) +
                             " ms (peers.stall_timeout_ms)"));
      } else if (f.state >= Following::kReady && now - f.pinged > stall / 3) {
        // Heard from us, the source keeps us, even while one read takes long.
        f.pinged = now;
        (void)f.ep->Send(kPing, "");
      }
    }
    Kick();
    tick_.expires_after(50ms);
    tick_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) Tick();
    });
  }

  static constexpr size_t kMaxUnproven = 64;
  static constexpr auto kProveWithin = 5s;

  boost::asio::io_context& io_;
  RequestHandler& handler_;
  InternalClient internal_;
  PeersConfig config_;
  ClusterKey key_;
  std::unique_ptr<ucx::Worker> worker_;
  boost::asio::posix::stream_descriptor fd_;
  boost::asio::steady_timer tick_;
  bool waiting_ = false;
  bool stopping_ = false;
  std::map<ucx::Endpoint*, Served> served_;
  std::map<uint64_t, Exported> exported_;  // by allocation id
  std::list<Following> following_;         // stable addresses: reads in flight point at them
  std::vector<std::pair<std::shared_ptr<ucx::Endpoint>, Clock::time_point>> closing_;
  std::map<std::string, Clock::time_point> refusals_logged_;  // by peer address and reason
};

}  // namespace

Result<std::unique_ptr<Peers>> Peers::Start(boost::asio::io_context& io, RequestHandler& handler,
                                            const PeersConfig& config) {
  GPB_ASSIGN_OR_RETURN(ClusterKey key, ClusterKey::Load(config.key_file));
  std::vector<std::pair<std::string, std::string>> settings;  // UCX_TCP_CM_REUSEADDR: main.cc
  if (!config.interface.empty()) settings.emplace_back("NET_DEVICES", config.interface);
  GPB_ASSIGN_OR_RETURN(auto worker, ucx::Worker::Make("gpubrokerd", settings));
  auto peers = std::make_unique<PeersImpl>(io, handler, config, std::move(key), std::move(worker));
  GPB_RETURN_IF_ERROR(peers->Begin());
  return std::unique_ptr<Peers>(std::move(peers));
}

}  // namespace gpubroker

// The broker's logic: one handler per message type, over the registry, the
// lease table and the backends. No sockets here; the session hands in bytes
// and sends back what Handle() returns, so every branch is testable alone.
// Single-threaded: the event loop is its only caller.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "broker/backend.h"
#include "broker/config.h"
#include "broker/lease_table.h"
#include "broker/log_budget.h"
#include "common/posix.h"
#include "broker/registry.h"
#include "common/wire.h"

namespace gpubroker {

struct Reply {
  std::vector<std::byte> bytes;
  UniqueFd fd;  // sent with the reply as SCM_RIGHTS, then closed
  bool close_connection = false;
};

// Told when allocations come and go; the broker keeps their fds in the
// service manager's fd store so they outlive a restart.
class AllocationObserver {
 public:
  virtual ~AllocationObserver() = default;
  virtual void Added(const Allocation& a) = 0;
  virtual void Removed(uint64_t allocation_id) = 0;
};

// A slot to create, decoded once at the edge from a create request or a
// configured pool; the core logic takes only this.
struct SlotSpec {
  std::string name;
  std::string base;          // empty: a new allocation; else a view into base's
  uint64_t byte_offset = 0;  // views only
  uint64_t nbytes = 0;       // new allocations: size; 0 = the shape's extent
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // empty: row-major
  std::optional<BackendKind> backend;  // unset: the broker's default
  DeviceSelector device;
  uint32_t mode = 0600;
  uint32_t pool_tag = 0;  // configured pools only: PoolTag of their settings
  uint32_t buffers = 0;   // new allocations: 0 plain, 1..kMaxBuffers live (docs/live.md)
};

// Told of every request the handler answers and every connection it refuses
// (the metrics).
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  virtual void Answered(uint16_t type, const Status& result, std::chrono::nanoseconds took) = 0;
  virtual void RefusedConnection(const Status& why) = 0;
};

struct HandlerOptions {
  Limits limits;
  std::optional<gid_t> admin_group;
  bool root_is_admin = true;
  uint64_t started_ns = 0;
  AllocationObserver* observer = nullptr;
  RequestObserver* requests = nullptr;
  std::vector<DeviceUuid> devices;  // the CUDA devices the broker sees, by its ordinal
  // Re-reads and applies the configuration (the reload request, SIGHUP).
  std::function<Status()> reload;
  // The connections to brokers on other nodes, for the peers request.
  std::function<std::vector<wire::PeerRecord>()> peers;
  // Follow a tree from another node, or stop (the follow and unfollow
  // requests); unset: this broker has no peers.key_file.
  std::function<Status(const FollowConfig&)> follow;
  std::function<Status(const std::string& tree, bool remove)> unfollow;
  // A version of the allocation was committed (the peers serving it).
  std::function<void(uint64_t allocation_id)> committed;
};

// A nonzero hash of every setting of a pool (SlotDescriptor::pool_tag).
uint32_t PoolTag(const PoolConfig& pool);

class RequestHandler {
 public:
  RequestHandler(Registry& registry, BackendSet& backends, HandlerOptions options);

  // A new connection; kResourceExhausted past limits.max_connections (less
  // the connections reserved for administrators) or the per-uid cap.
  Result<uint64_t> OnConnect(const PeerCredentials& peer);
  // Whether the connection has said hello (the session closes silent ones).
  bool Greeted(uint64_t client_id);
  // One received message; always returns a reply to send.
  Reply Handle(uint64_t client_id, std::span<const std::byte> message);
  // The connection closed (cleanly or not): its leases go back.
  void OnDisconnect(uint64_t client_id);

  // Creates a configured pool as a broker-owned slot.
  Status CreatePool(const PoolConfig& pool);
  // Checks what CreatePool would refuse without creating anything: names,
  // groups, backends and devices, and that the pools fit `limits`.
  Status CheckPools(const std::vector<PoolConfig>& pools, const Limits& limits) const;
  // Makes the broker's pools those of `pools`: creates new ones, destroys
  // removed ones and recreates changed ones (destroy semantics: memory goes
  // with the last lease). Reports the first failure; applies the rest.
  Status SyncPools(const std::vector<PoolConfig>& pools);
  void SetLimits(const Limits& limits);
  const Limits& limits() const { return options_.limits; }

  // Re-creates the slots of a broker that ran before this one, over the
  // allocation fds it left in the service manager's fd store (a warm
  // restart). Slots whose memory cannot be taken over are dropped, each with
  // a log line. Returns how many slots were adopted.
  size_t Adopt(const std::vector<SlotDescriptor>& previous, const std::map<uint64_t, LiveState>& live,
               std::map<uint64_t, UniqueFd> fds);
  // After Adopt: the adopted slots that are the configured pools, unchanged,
  // become those pools (kept, with their contents); pools the configuration
  // changed or dropped since are destroyed, for SyncPools to recreate.
  void AdoptPools(const std::vector<PoolConfig>& pools);

  // New creates and attaches are refused while draining or stopping.
  void SetStopping() { stopping_ = true; }
  void SetDraining(bool on) { draining_ = on; }
  bool draining() const { return draining_; }
  // What of the configuration is not in effect, by part ("pools",
  // "metrics"); status reports "degraded" while any is.
  void SetDegraded(const std::string& part, bool on) {
    if (on) degraded_.insert(part);
    else degraded_.erase(part);
  }
  bool degraded() const { return !degraded_.empty(); }
  bool shutdown_requested() const { return shutdown_requested_; }
  const LeaseTable& leases() const { return table_; }
  // A line about connection `client_id` that its session writes (no hello,
  // a receive or send error) takes from the same per-uid budget as the
  // handler's: the note to append when it may be logged, nullopt when not.
  std::optional<std::string> LogAllowance(uint64_t client_id);
  // What a uid that no share exempts may hold, from the limits (0: no limit):
  // the fair share of each memory cap when limits.max_bytes_per_uid is not
  // set, else that quota over all memory.
  struct UidShare {
    uint64_t host_bytes = 0;
    uint64_t device_bytes = 0;
    uint64_t bytes = 0;
    uint32_t slots = 0;
  };
  UidShare Share() const;
  // Drops the pins carried over a warm restart that no reader took over
  // within kCarriedPinGrace; returns how many. Called on the broker's tick.
  size_t ExpireCarriedPins(std::chrono::steady_clock::time_point now);

  // The broker's own client, for replication between brokers (broker/peers.h;
  // request_handler_peers.cc). A connection without a socket, as the
  // broker's user: its requests go through Handle like anyone's, and
  // OnDisconnect ends it, its leases, pins and write.
  Result<uint64_t> ConnectInternal(const std::string& name);
  // Commits the buffer `client_id` writes as `version`, which must be above
  // the newest, instead of the next number: a follower keeps its source's
  // version numbers.
  Result<uint64_t> CommitAt(uint64_t client_id, uint64_t allocation_id, int32_t buffer, uint64_t version);
  // The tree `prefix` (a state dict, docs/live.md): the slot of that name,
  // then the other slots of its allocation named `prefix/...`, by name.
  Result<std::vector<SlotDescriptor>> TreeSlots(const std::string& prefix) const;
  // The allocation the slot `name` views.
  Result<uint64_t> SlotAllocation(std::string_view name) const;
  // Whether this broker serves `kind` (a backend it could not start, or
  // one of a build without it, is not).
  bool HasBackend(BackendKind kind) const { return backends_.Get(kind).ok(); }
  // Creates a slot the broker owns, of group `gid`, as it does its pools.
  Status CreateOwned(const SlotSpec& spec, gid_t gid);


 private:
  Result<uint64_t> Admit(const PeerCredentials& peer);
  struct Request {
    ClientEntry& client;
    uint32_t id;
  };

  Result<Reply> Dispatch(ClientEntry& client, const wire::Frame& frame);
  Result<Reply> OnHello(Request r, const wire::HelloRequest& m);
  Result<Reply> OnCreate(Request r, const wire::CreateRequest& m);
  Result<Reply> OnAttach(Request r, const wire::AttachRequest& m);
  Result<Reply> OnDetach(Request r, const wire::DetachRequest& m);
  Result<Reply> OnDestroy(Request r, const wire::DestroyRequest& m);
  Result<Reply> OnList(Request r, const wire::ListRequest& m);
  Result<Reply> OnStat(Request r, const wire::StatRequest& m);
  Result<Reply> OnClients(Request r, const wire::ClientsRequest& m);
  Result<Reply> OnLeases(Request r, const wire::LeasesRequest& m);
  Result<Reply> OnDevices(Request r, const wire::DevicesRequest& m);
  Result<Reply> OnUsage(Request r, const wire::UsageRequest& m);
  Result<Reply> OnPeers(Request r, const wire::PeersRequest& m);
  Result<Reply> OnFollow(Request r, const wire::FollowRequest& m);
  Result<Reply> OnUnfollow(Request r, const wire::UnfollowRequest& m);
  Result<Reply> OnStatus(Request r, const wire::StatusRequest& m);
  Result<Reply> OnShutdown(Request r, const wire::ShutdownRequest& m);
  Result<Reply> OnDrain(Request r, const wire::DrainRequest& m);
  Result<Reply> OnReload(Request r, const wire::ReloadRequest& m);
  Result<Reply> OnWriteBegin(Request r, const wire::WriteBeginRequest& m);
  Result<Reply> OnCommit(Request r, const wire::CommitRequest& m);
  Result<Reply> OnAcquire(Request r, const wire::AcquireRequest& m);
  Result<Reply> OnRelease(Request r, const wire::ReleaseRequest& m);
  // The allocation behind a lease this client holds (writable, if `write`).
  Result<Allocation*> LeasedAllocation(ClientEntry& client, uint64_t allocation_id, bool write);
  // Mirrors `a`'s versions into its live record and wakes whom `wake` says.
  void Publish(const Allocation& a, Versions::Wake wake);
  // The client let go of the allocation: its pin and its write go too.
  void ForgetLiveState(ClientEntry& client, uint64_t allocation_id);
  // A slot as replies show it: with its allocation's committed version.
  SlotDescriptor Current(const SlotDescriptor& d) const;
  Status AcceptingNewWork() const;

  // Who: the creator of a slot (a client, or the broker for pools).
  struct Owner {
    uint64_t client_id;
    uid_t uid;
    gid_t gid;
    bool quota_exempt;  // the broker's pools, root and administrators
  };
  Result<uint32_t> CreateSlot(const SlotSpec& spec, const Owner& owner, ClientEntry* client);
  Result<Allocation*> NewAllocation(const SlotSpec& spec, uint64_t bytes, const Owner& owner,
                                    ClientEntry* client);
  Status CheckCaps(BackendKind kind, uint64_t bytes, const Owner& owner) const;
  // Refuses `client` a new lease on `a` while its uid keeps as many
  // destroyed allocations alive as limits.max_slots_per_uid.
  Status CheckOrphans(const ClientEntry& client, const Allocation& a) const;
  Result<SlotSpec> PoolSpec(const PoolConfig& pool, Owner& owner) const;
  // The one way a slot goes: the name at once, the memory with the last lease.
  void DestroySlot(uint32_t index);
  // `flags`: wire::AttachFlags.
  Result<Reply> AttachSlot(Request r, uint32_t index, uint32_t flags);
  bool IsAdmin(const PeerCredentials& peer) const;
  // `bit` on the slot and on the allocation it views (or admin rights).
  bool May(const PeerCredentials& peer, const SlotDescriptor& slot, PermissionBit bit) const;
  Status RequireAdmin(const ClientEntry& client, std::string_view what) const;
  Result<uint32_t> FindSlot(std::string_view name) const;
  // Mirrors an allocation's lease count into every slot that views it.
  void SyncLeaseCount(const Allocation& a);
  void ReleaseIfUnused(uint64_t allocation_id);

  Registry& registry_;
  BackendSet& backends_;
  HandlerOptions options_;
  LeaseTable table_;
  uint64_t last_client_id_ = 0;
  // Pin ids are unique for the broker's life, across connections, and start
  // from its boot generation: a release sent late (after a reconnect, or
  // from before a restart) can name no pin it did not take.
  uint64_t last_pin_ = 0;
  uint64_t requests_ = 0;  // answered, for `status` (gpubrokerctl top's rates)
  uint64_t refusals_ = 0;
  // Lines a client's requests make the broker log, per uid (a connection, a
  // create, a destroy): no user can flood the log.
  LogBudget log_budget_;
  bool stopping_ = false;
  bool draining_ = false;
  std::set<std::string> degraded_;
  bool shutdown_requested_ = false;
  std::map<std::string, PoolConfig> pools_;  // by name, as last applied
};

// The permissions a descriptor records for itself and for its allocation.
Permissions SlotPermissions(const SlotDescriptor& d);
Permissions AllocationPermissions(const SlotDescriptor& d);

uint64_t NowNs();

// `limits` with what the configuration leaves to the machine filled in: a
// max_host_bytes of 0 becomes half of the machine's or the cgroup's memory.
Limits ResolveLimits(Limits limits);

}  // namespace gpubroker

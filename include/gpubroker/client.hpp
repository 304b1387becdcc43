// The gpubroker client: connect to the broker, create named buffers, attach
// them as zero-copy views.
//
// Thread-safety: a Client and the Views made from it may be used from any
// number of threads; requests on one connection are serialised.
// Errors: every call returns Status or Result<T>; nothing throws or exits.
// Ownership: a View holds a lease on its buffer's allocation. Copies of a View
// share that lease; the memory stays mapped (and the lease held) until the
// last copy goes, even if the Client object is gone first: the connection
// lives as long as anything made from it. If the broker dies, mapped views
// stay readable and writable; further calls return kUnavailable.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gpubroker/status.hpp"
#include "gpubroker/types.hpp"

// Everything this header declares is the library's exported interface.
#pragma GCC visibility push(default)

namespace gpubroker {

struct MappedAllocation;  // internal: one mapping of an allocation in this process
struct SlotDescriptor;    // internal: the registry's fixed layout of a slot

// The system broker's socket.
inline constexpr const char* kDefaultSocketPath = "/run/gpubroker/gpubroker.sock";

// Where a client connects when given no path: $GPUBROKER_SOCKET if set; for a
// user other than root, $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock if a broker
// of theirs made it; else kDefaultSocketPath. docs/deploy.md explains.
std::string DefaultSocketPath();

struct ConnectOptions {
  std::string socket_path = DefaultSocketPath();
  std::string client_name;       // shown by `gpubrokerctl clients`; default: the program name
  int reply_timeout_ms = 30000;  // a broker silent this long is kUnavailable
  // After the connection breaks (the broker restarted), the next call keeps
  // trying to reconnect for this long, then re-takes the leases of every
  // allocation this client still maps. 0: fail at once with kUnavailable.
  int reconnect_timeout_ms = 10000;
};

struct CreateOptions {
  std::string name;
  DType dtype;                    // default uint8
  std::vector<int64_t> shape;     // empty: a scalar
  std::vector<int64_t> strides;   // in elements; empty: row-major
  uint64_t bytes = 0;             // allocation size; 0: what the shape needs
  std::string base;               // non-empty: a view into base's allocation...
  uint64_t byte_offset = 0;       // ...at this offset (element-aligned)
  std::optional<BackendKind> backend;  // unset: the broker's default
  int32_t device = -1;  // CUDA ordinal in this process's numbering (sent as its UUID;
                        // the broker's numbering where this process has no driver); -1: default
  std::optional<DeviceUuid> device_uuid;  // overrides `device`
  uint32_t mode = 0600;           // like chmod: r = attach, w = write, destroy, add views
  // New allocations: 0 for a plain slot (version 1 at once); 1..kMaxBuffers
  // for a live slot of that many buffers, at version 0 until its first
  // commit (docs/live.md). Views take their allocation's.
  uint32_t buffers = 0;
  // A slot of this name that is yours and has this dtype and shape (and
  // strides, buffers, backend where given) is returned (attached, by
  // CreateAndAttach) instead of kAlreadyExists: a program run twice finds
  // what its first run made. One that differs, or another user's, is still
  // kAlreadyExists, saying how.
  bool exist_ok = false;
};

// kReadWrite: write access, or kPermissionDenied naming the missing bit
// (never a view quietly made read-only, whose first write would kill the
// process). kReadOnly: read access. kAsAllowed: write access where this user
// may write, else read-only (View::writable() tells).
enum class AttachMode { kReadWrite, kReadOnly, kAsAllowed };

// A zero-copy window onto a slot's memory. Default-constructed: empty.
class View {
 public:
  View() = default;

  bool valid() const { return mapping_ != nullptr; }
  // First element: a host pointer for host slots, a device pointer (usable
  // on device().ordinal, in this process's numbering) for CUDA slots.
  void* data() const;
  // The first element in buffer `buffer` of a live slot (data() is buffer
  // 0's); null past the last buffer.
  void* data(uint32_t buffer) const;
  const SlotInfo& slot() const { return slot_; }
  const std::string& name() const { return slot_.name; }
  DType dtype() const { return slot_.dtype; }
  const std::vector<int64_t>& shape() const { return slot_.shape; }
  const std::vector<int64_t>& strides() const { return slot_.strides; }  // elements
  uint64_t nbytes() const { return slot_.nbytes; }
  uint64_t version() const { return slot_.version; }
  Device device() const { return slot_.device; }
  bool writable() const;
  // Drops this copy's share of the lease.
  void reset() { mapping_.reset(); }

 private:
  friend class Client;
  View(std::shared_ptr<MappedAllocation> mapping, SlotInfo slot)
      : mapping_(std::move(mapping)), slot_(std::move(slot)) {}
  std::shared_ptr<MappedAllocation> mapping_;
  SlotInfo slot_;
};


class Client;

// Writes new versions of a live slot's allocation (docs/live.md): the slot
// it was opened on and every other view of that allocation change version
// together, at commit. One writer per allocation at a time.
// Thread-safety: calls on one Writer may come from any thread; they are
// serialised (a Begin that waits for a buffer holds off the others).
class Writer {
 public:
  Writer() = default;
  Writer(Writer&&) noexcept;
  Writer& operator=(Writer&&) noexcept;
  ~Writer();  // aborts a write not committed

  bool valid() const { return state_ != nullptr; }
  const View& view() const;  // the slot it was opened on, mapped writable
  uint32_t buffers() const;

  // Takes a buffer no reader pins and that does not hold the newest version
  // (a one-buffer slot: its only buffer, in place). Every buffer pinned:
  // waits up to `wait_ms` for a reader to release one (0: fails at once;
  // -1: no limit), then kBusy. The previous commit of this writer, if its
  // stream had not run its writes yet, lands first: within the same
  // `wait_ms` (kBusy past it), or, with 0, however long this writer's own
  // stream takes. Returns the buffer's number: write it at
  // View::data(buffer) of any view of the allocation.
  Result<uint32_t> Begin(int wait_ms = 0);
  // Publishes the begun buffer as the next version, atomically for the whole
  // allocation, and returns that version. CUDA: the version becomes visible
  // once `stream` (a CUstream or cudaStream_t; null: the legacy default
  // stream) has run the writes queued on it before this call, so readers
  // only ever see whole versions. If it has already, the commit is sent at
  // once (one round trip); else this returns at once and a background
  // thread waits for the stream, then tells the broker; the next Begin waits
  // for that, and reports a failed commit. Host memory: the commit is sent at
  // once, after a release fence.
  Result<uint64_t> Commit(void* stream = nullptr);
  // Gives the begun buffer back unpublished.
  Status Abort();
  // The version the begun buffer will be once committed (0: none begun).
  uint64_t next_version() const;

 private:
  friend class Client;
  struct State;
  explicit Writer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// What Reader::Acquire pinned.
struct Acquired {
  uint64_t version = 0;
  uint32_t buffer = 0;  // read it at View::data(buffer)
  uint64_t committed_ns = 0;
  // A one-buffer slot only: a write into the buffer was under way when the
  // pin was taken. Read anyway and ask Unchanged() afterwards.
  bool writing = false;
};

// Follows the versions of a slot's allocation: waits for new ones without
// asking the broker, and pins the one it reads.
// Thread-safety: calls on one Reader may come from any thread. Acquire,
// Release and Unchanged are serialised; a Wait sleeps without holding the
// Reader, so another thread's Acquire or Latest goes on meanwhile.
class Reader {
 public:
  Reader() = default;
  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;
  // Releases its pin once the stream given to the last Acquire has done the
  // work queued on it so far (CUDA; host memory: at once). That stream must
  // outlive the Reader (or be a default stream): release it first otherwise.
  ~Reader();

  bool valid() const { return state_ != nullptr; }
  const View& view() const;  // the slot it was opened on
  // The newest committed version, read from the shared registry (0: none yet).
  Result<uint64_t> Latest() const;
  // Blocks (on a futex in the shared registry; no message, no polling) until
  // a version newer than `after` is committed, at most `timeout_ms` (-1: no
  // limit), and whole (a one-buffer slot whose last write ended without a
  // commit has no whole version until the next commit); returns it, or
  // kTimeout. A wake by anyone else costs a load; the broker's death is
  // learnt from the connection hanging up, never from its pid (so waiting in
  // another pid namespace sends nothing). kNotFound once the slot's name is gone
  // or names another allocation (destroyed, or replaced: open a new reader),
  // unless a newer version of this one is there; kUnavailable once the
  // broker stops.
  Result<uint64_t> Wait(uint64_t after, int timeout_ms = -1);
  // Pins the newest committed version. A committed version is whole in
  // memory: any stream may read it at once, with no wait on the writer. The
  // version this reader held before stays pinned until the work queued on
  // `stream` so far is done, as Release(stream) does. NotFound if nothing
  // whole has been committed yet (Wait first).
  Result<Acquired> Acquire(void* stream = nullptr);
  // Lets the writer reuse the pinned buffer once the work queued on `stream`
  // so far is done (CUDA: a background thread waits for it, then tells the
  // broker; the call returns at once). Host memory: at once. On an error the
  // pin stays held, and a later Release or Acquire sends it again.
  Status Release(void* stream = nullptr);
  // True if what Acquire pinned is still that version, whole: one-buffer
  // slots, no write into the buffer began since; every slot, the pin is
  // still held. A warm restart keeps pins for their readers (30 s, taken
  // over by this reader's next call, this one included); false once the
  // pin is lost with its broker, until the next Acquire.
  Result<bool> Unchanged() const;

 private:
  friend class Client;
  struct State;
  explicit Reader(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

struct BrokerInfo {
  int32_t pid = 0;
  std::string version;
  std::string registry_name;
  bool stopping = false;
  std::string state;  // "running", "draining", "degraded" (part of its configuration is not in effect) or "stopping"
  uint64_t boot_generation = 0;
  uint64_t started_ns = 0;
  uint32_t capacity = 0;
  uint32_t max_slots = 0;
  uint32_t slots = 0;
  uint32_t allocations = 0;
  uint32_t clients = 0;
  uint32_t leases = 0;
  uint64_t bytes_host = 0;
  uint64_t bytes_device = 0;
  uint64_t requests = 0;  // requests answered since the broker started
  uint64_t refusals = 0;  // requests and connections refused: permission, quota, a limit, a drain
};

struct ClientInfo {
  uint64_t id = 0;
  std::string name;
  int32_t pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t lease_count = 0;
  uint64_t bytes_created = 0;
  uint64_t connected_ns = 0;
};

// A CUDA device the broker sees.
struct BrokerDevice {
  DeviceUuid uuid{};
  int32_t broker_ordinal = 0;  // in the broker's numbering
  uint64_t allocated_bytes = 0;
};

// One uid's use of the broker against its share (Client::Usage). A share or
// quota of 0 is no limit; an exempt uid (root, the admin group) has none.
struct UidUsageInfo {
  uint32_t uid = 0;
  bool exempt = false;
  uint32_t slots = 0;       // owned, with destroyed allocations its leases keep alive
  uint32_t slot_share = 0;  // limits.max_slots_per_uid
  uint32_t connections = 0;
  uint64_t bytes = 0;       // all it holds until freed
  uint64_t byte_quota = 0;  // limits.max_bytes_per_uid, where set
  uint64_t host_bytes = 0;  // named by its slots: what the fair share counts
  uint64_t host_share = 0;  // a quarter of limits.max_host_bytes, when no quota is set
  uint64_t device_bytes = 0;
  uint64_t device_share = 0;
};

// A connection of the broker's to a broker on another node (Client::Peers;
// docs/multinode.md).
struct PeerInfo {
  std::string role;   // "follower": a tree kept here from `peer`; "source": `peer` follows a tree of ours
  std::string state;  // retrying, authenticating, layout, ready, waiting for a buffer, reading, passing on
  std::string tree;
  std::string peer;   // IPv4:PORT
  uint64_t version = 0;         // follower: newest committed here; source: newest the follower read
  uint64_t source_version = 0;  // follower: newest the source offered
  uint64_t versions = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
  uint64_t last_ns = 0;  // the last version's transfer
  std::string last_error;
  uint64_t passed_on = 0;  // source: versions sent on while they still arrived here (a tree followed)
  uint64_t abandoned = 0;  // follower: versions read and not committed, as the source said
};

struct LeaseInfo {
  uint64_t client_id = 0;
  uint64_t allocation_id = 0;
  uint64_t allocation_bytes = 0;
  uint32_t count = 0;
  std::string slot;
  uint64_t pinned_version = 0;  // the version this client pins; 0: none
  int32_t pinned_buffer = -1;
  int32_t writing_buffer = -1;  // the buffer this client writes; -1: none
};

class Client {
 public:
  static Result<Client> Connect(const ConnectOptions& options = {});

  // Creates a slot; the broker owns its memory until it is destroyed.
  Result<SlotInfo> Create(const CreateOptions& options);
  // Creates a slot and attaches it in one round trip.
  Result<View> CreateAndAttach(const CreateOptions& options);
  // Attaches a slot by name. If this process already maps the slot's
  // allocation, no message is sent.
  Result<View> Attach(std::string_view name, AttachMode mode = AttachMode::kReadWrite);
  // Attaches every name, all or none: on an error no view is kept and the
  // status names the slot. Slots of one arena cost one mapping in all.
  Result<std::vector<View>> AttachMany(std::span<const std::string_view> names,
                                       AttachMode mode = AttachMode::kReadWrite);
  // Removes the name at once; the memory goes when the last lease goes.
  Status Destroy(std::string_view name);

  // Versions (docs/live.md). Each attaches the slot (writable for a writer).
  Result<Writer> OpenWriter(std::string_view name);
  Result<Reader> OpenReader(std::string_view name);

  // Asks the broker.
  Result<SlotInfo> Stat(std::string_view name);
  Result<std::vector<SlotInfo>> List();
  // Reads the shared registry directly: no round trip while the broker
  // runs. Once it has stopped or its connection hung up, these ask it as
  // Stat and List do: they reconnect within reconnect_timeout_ms or fail
  // with kUnavailable, never answer from the registry of a gone broker.
  Result<SlotInfo> Lookup(std::string_view name);
  Result<std::vector<SlotInfo>> ListRegistry();

  Result<BrokerInfo> Info();
  // The CUDA devices the broker sees (none for a broker without a GPU).
  Result<std::vector<BrokerDevice>> Devices();
  // Each uid's use against its share: an admin gets every uid, anyone else
  // their own.
  Result<std::vector<UidUsageInfo>> Usage();
  // The broker's connections to brokers on other nodes (admin).
  Result<std::vector<PeerInfo>> Peers();
  // Admin only. Follow `tree` from the broker at `from` (IPv4:PORT, its
  // peers.listen) until the broker stops or Unfollow: the local tree is
  // owned by the broker's user, group `group` (empty: the broker's), `mode`.
  // The broker needs peers.key_file; Peers() shows how it goes.
  Status Follow(const std::string& tree, const std::string& from, const std::string& group = "",
                uint32_t mode = 0644);
  // Admin only. The local tree keeps its last version unless `remove`.
  Status Unfollow(const std::string& tree, bool remove = false);
  // Admin only (root or the admin group).
  Result<std::vector<ClientInfo>> Clients();
  Result<std::vector<LeaseInfo>> Leases();
  Status Shutdown();
  // Admin only. While draining, creates and attaches are refused; existing
  // leases keep working.
  Status Drain(bool on = true);
  // Admin only. Re-reads the broker's configuration; an invalid one is
  // rejected with the reason and the running one stays.
  Status Reload();

  uint64_t client_id() const;

 private:
  struct Core;
  explicit Client(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  static View MakeView(std::shared_ptr<MappedAllocation> mapping, const SlotDescriptor& d);
  std::shared_ptr<Core> core_;
};

}  // namespace gpubroker

#pragma GCC visibility pop

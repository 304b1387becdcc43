// The control protocol: one definition of every message. docs/protocol.md is
// the prose spec of the same layouts; keep the two in step.
//
// A message is a Header followed by `length` payload bytes, carried in one
// SOCK_SEQPACKET record. Payloads are fixed-layout little-endian structs; the
// list-style replies append `count` records after their fixed part. Every
// payload is checked by Decode() before use, in every build type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "gpubroker/status.hpp"
#include "common/slot_descriptor.h"

namespace gpubroker::wire {

inline constexpr uint32_t kMagic = 0x4b524247;  // "GBRK"
inline constexpr uint16_t kProtocolVersion = 6;
inline constexpr size_t kMaxMessageBytes = 64 * 1024;
inline constexpr uint16_t kReplyBit = 0x8000;

enum class MsgType : uint16_t {
  kHello = 1,
  kCreate = 2,
  kAttach = 3,
  kDetach = 4,
  kDestroy = 5,
  kList = 6,
  kStat = 7,
  kClients = 8,
  kLeases = 9,
  kStatus = 10,
  kShutdown = 11,
  kDrain = 12,
  kReload = 13,
  kDevices = 14,
  kWriteBegin = 15,
  kCommit = 16,
  kAcquire = 17,
  kRelease = 18,
  kUsage = 19,
  kPeers = 20,
  kFollow = 21,
  kUnfollow = 22,
  kNotice = 0x7ffe,  // broker → client, unsolicited, request_id 0
  kError = 0x7fff,   // reply to any request that failed
};

constexpr uint16_t ReplyType(MsgType t) { return static_cast<uint16_t>(t) | kReplyBit; }

struct Header {
  uint32_t magic;
  uint16_t version;
  uint16_t type;  // MsgType, | kReplyBit on replies
  uint32_t request_id;
  uint32_t length;  // payload bytes after the header
};
static_assert(sizeof(Header) == 16);

// Fixed-size, NUL-terminated text field.
template <size_t N>
struct Text {
  char bytes[N];
  std::string_view view() const { return {bytes, strnlen(bytes, N)}; }
  bool terminated() const { return std::memchr(bytes, '\0', N) != nullptr; }
  // Copies `s` (truncated to N-1 bytes) and zero-fills the rest.
  void set(std::string_view s) {
    std::memset(bytes, 0, N);
    std::memcpy(bytes, s.data(), s.size() < N ? s.size() : N - 1);
  }
};

// ---- requests --------------------------------------------------------------

struct HelloRequest {
  static constexpr MsgType kType = MsgType::kHello;
  uint32_t protocol_version;
  int32_t pid;
  Text<64> client_name;
};
static_assert(sizeof(HelloRequest) == 72);

enum CreateFlags : uint32_t {
  kCreateHasStrides = 1u << 0,  // `strides` is set; otherwise row-major
  kCreateAttach = 1u << 1,      // also attach: the reply carries a lease and fd
  kCreateByUuid = 1u << 2,      // pick the device by `device_uuid`, not ordinal
};
inline constexpr uint32_t kCreateKnownFlags = 0x7;

struct CreateRequest {
  static constexpr MsgType kType = MsgType::kCreate;
  Text<128> name;
  Text<128> base;        // empty: new allocation; else a view into base's allocation
  uint64_t byte_offset;  // view: offset within base's allocation; new: must be 0
  uint64_t nbytes;       // new allocation size; 0 = the view's extent
  int64_t shape[8];
  int64_t strides[8];
  uint8_t device_uuid[16];
  int32_t device_ordinal;  // -1: the backend's default device
  uint32_t flags;          // CreateFlags
  uint32_t mode;           // permission bits, <= 0777
  uint16_t backend;        // BackendKind; 0 = the broker's default
  uint8_t dtype_code;
  uint8_t dtype_bits;
  uint16_t dtype_lanes;
  uint8_t ndim;
  // New allocations: 0 for a plain slot (one buffer, version 1 at once);
  // 1..kMaxBuffers for a live slot of that many buffers, at version 0 until
  // its first commit. Views: 0 (they take their allocation's).
  uint8_t buffers;
  uint8_t reserved[4];
};
static_assert(sizeof(CreateRequest) == 440);

// Neither flag: write access where the caller may write, else read only
// ("whatever I may"). kAttachWriteRequired: write access or PermissionDenied.
enum AttachFlags : uint32_t { kAttachReadOnly = 1u << 0, kAttachWriteRequired = 1u << 1 };

struct AttachRequest {
  static constexpr MsgType kType = MsgType::kAttach;
  Text<128> name;
  uint32_t flags;  // AttachFlags
  uint32_t reserved;
};
static_assert(sizeof(AttachRequest) == 136);

struct DetachRequest {
  static constexpr MsgType kType = MsgType::kDetach;
  uint64_t allocation_id;
};

struct DestroyRequest {
  static constexpr MsgType kType = MsgType::kDestroy;
  Text<128> name;
};

struct StatRequest {
  static constexpr MsgType kType = MsgType::kStat;
  Text<128> name;
};

// Cursor-paged listing: start at cursor 0, continue with next_cursor until it
// is kEndCursor.
inline constexpr uint32_t kEndCursor = 0xffffffffu;

struct ListRequest {
  static constexpr MsgType kType = MsgType::kList;
  uint32_t cursor;
  uint32_t max_entries;
};

struct ClientsRequest {
  static constexpr MsgType kType = MsgType::kClients;
  uint32_t cursor;
  uint32_t max_entries;
};

struct LeasesRequest {
  static constexpr MsgType kType = MsgType::kLeases;
  uint32_t cursor;
  uint32_t max_entries;
};

struct StatusRequest {
  static constexpr MsgType kType = MsgType::kStatus;
  uint64_t reserved;
};

struct ShutdownRequest {
  static constexpr MsgType kType = MsgType::kShutdown;
  uint64_t reserved;
};

struct DrainRequest {
  static constexpr MsgType kType = MsgType::kDrain;
  uint32_t on;  // 1: refuse new creates and attaches; 0: accept them again
  uint32_t reserved;
};

struct ReloadRequest {
  static constexpr MsgType kType = MsgType::kReload;
  uint64_t reserved;
};

// Each uid's use of the broker against its share (an admin sees every uid;
// anyone else their own).
struct UsageRequest {
  static constexpr MsgType kType = MsgType::kUsage;
  uint32_t cursor;
  uint32_t max_entries;
};

// The broker's connections to brokers on other nodes (docs/multinode.md); admin.
struct PeersRequest {
  static constexpr MsgType kType = MsgType::kPeers;
  uint32_t cursor;
  uint32_t max_entries;
};

// Follow a tree of a broker on another node from now on (until the broker
// stops, or unfollow); admin. The broker needs peers.key_file.
struct FollowRequest {
  static constexpr MsgType kType = MsgType::kFollow;
  Text<128> tree;
  Text<64> from;   // IPv4:PORT, the source broker's peers.listen
  Text<64> group;  // owner group of the local tree; empty: the broker's
  uint32_t mode;   // of the local tree, 0..0777
  uint32_t reserved;
};

// Stop following a tree; the local tree keeps its last version unless
// kUnfollowRemove; admin.
struct UnfollowRequest {
  static constexpr MsgType kType = MsgType::kUnfollow;
  Text<128> tree;
  uint32_t flags;
  uint32_t reserved;
};
inline constexpr uint32_t kUnfollowRemove = 1;

struct DevicesRequest {
  static constexpr MsgType kType = MsgType::kDevices;
  uint32_t cursor;
  uint32_t max_entries;
};

// Versions (docs/live.md). Each names an allocation the caller holds a lease
// on; write_begin needs that lease to be writable.
struct WriteBeginRequest {
  static constexpr MsgType kType = MsgType::kWriteBegin;
  uint64_t allocation_id;
  uint64_t reserved;
};

enum CommitFlags : uint32_t {
  kCommitAbort = 1u << 0,  // give the buffer back unpublished
};
inline constexpr uint32_t kCommitKnownFlags = 0x1;

// Sent once the writes into the buffer are complete (for CUDA memory: once
// the writer's stream has run them), so a committed version is whole.
struct CommitRequest {
  static constexpr MsgType kType = MsgType::kCommit;
  uint64_t allocation_id;
  int32_t buffer;  // the one write_begin handed out
  uint32_t flags;  // CommitFlags
};

struct AcquireRequest {
  static constexpr MsgType kType = MsgType::kAcquire;
  uint64_t allocation_id;
  // 0, or a pin of this connection's on the allocation to drop once the new
  // one is taken: a reader's release of the version it read, in the same
  // message, when its stream is done with it already.
  uint64_t release_pin;
  uint32_t flags;  // kAcquireCarried
  // kAcquireCarried: the pin this reader held from the broker before a warm
  // restart, on `buffer` holding `version`, taken over instead of a new one.
  int32_t buffer;
  uint64_t version;
};
inline constexpr uint32_t kAcquireCarried = 1;

struct ReleaseRequest {
  static constexpr MsgType kType = MsgType::kRelease;
  uint64_t allocation_id;
  uint64_t pin;  // the acquire reply's: a later acquire's pin stays
};

// ---- replies ---------------------------------------------------------------

struct HelloReply {
  static constexpr MsgType kType = MsgType::kHello;
  uint32_t protocol_version;
  int32_t broker_pid;
  uint64_t boot_generation;
  uint64_t client_id;
  uint32_t capacity;
  uint32_t reserved;
  Text<64> registry_name;
};
static_assert(sizeof(HelloReply) == 96);

enum Access : uint32_t { kAccessRead = 1, kAccessWrite = 2 };

// Reply to create (with kCreateAttach) and attach. A host or cuda_vmm lease
// carries the allocation's fd as SCM_RIGHTS ancillary data.
struct AttachReply {
  static constexpr MsgType kType = MsgType::kAttach;
  SlotDescriptor slot;
  uint32_t access;  // Access bits granted
  uint32_t has_fd;  // 1 if an fd rides with this message
};
static_assert(sizeof(AttachReply) == 472);

// Reply to create (without kCreateAttach) and stat.
struct SlotReply {
  static constexpr MsgType kType = MsgType::kStat;
  SlotDescriptor slot;
};

struct DetachReply {
  static constexpr MsgType kType = MsgType::kDetach;
  uint32_t leases_left;  // this connection's leases on the allocation
  uint32_t reserved;
};

struct DestroyReply {
  static constexpr MsgType kType = MsgType::kDestroy;
  uint64_t allocation_id;
  uint32_t lease_count;  // leases still keeping the memory
  uint32_t reserved;
};

struct ListReply {
  static constexpr MsgType kType = MsgType::kList;
  using Record = SlotDescriptor;
  uint32_t count;
  uint32_t next_cursor;
};

struct ClientRecord {
  uint64_t client_id;
  uint64_t connected_ns;
  uint64_t bytes_created;  // live allocations this client created
  int32_t pid;
  uint32_t uid;
  uint32_t gid;
  uint32_t lease_count;
  Text<64> name;
};
static_assert(sizeof(ClientRecord) == 104);

struct ClientsReply {
  static constexpr MsgType kType = MsgType::kClients;
  using Record = ClientRecord;
  uint32_t count;
  uint32_t next_cursor;
};

struct LeaseRecord {
  uint64_t client_id;
  uint64_t allocation_id;
  uint64_t allocation_bytes;
  uint32_t count;  // attaches of this client on this allocation
  uint32_t writing;  // 1 while this client writes a buffer of it
  Text<128> slot;  // the slot it was first attached through
  uint64_t pinned_version;  // the version this client pins; 0: none
  int32_t pinned_buffer;    // its buffer; -1: none
  int32_t writing_buffer;   // the buffer it writes; -1: none
};
static_assert(sizeof(LeaseRecord) == 176);

struct LeasesReply {
  static constexpr MsgType kType = MsgType::kLeases;
  using Record = LeaseRecord;
  uint32_t count;
  uint32_t next_cursor;
};

// Degraded: serving, but part of the configuration is not in effect (a pool
// that could not be made, a metrics address that could not be bound).
enum BrokerState : uint32_t { kStateRunning = 1, kStateStopping = 2, kStateDraining = 3, kStateDegraded = 4 };

struct StatusReply {
  static constexpr MsgType kType = MsgType::kStatus;
  uint64_t boot_generation;
  uint64_t started_ns;
  uint64_t bytes_host;
  uint64_t bytes_device;
  int32_t broker_pid;
  uint32_t state;  // BrokerState
  uint32_t capacity;
  uint32_t max_slots;
  uint32_t slots;
  uint32_t allocations;
  uint32_t clients;
  uint32_t leases;
  Text<64> registry_name;
  Text<32> broker_version;
  uint64_t requests;  // answered since the broker started (connections refused at accept not counted)
  uint64_t refusals;  // requests and connections refused for permission, quota, a limit or a drain
};
static_assert(sizeof(StatusReply) == 176);

struct ShutdownReply {
  static constexpr MsgType kType = MsgType::kShutdown;
  uint64_t reserved;
};

struct DrainReply {
  static constexpr MsgType kType = MsgType::kDrain;
  uint64_t reserved;
};

struct ReloadReply {
  static constexpr MsgType kType = MsgType::kReload;
  uint64_t reserved;
};

struct WriteBeginReply {
  static constexpr MsgType kType = MsgType::kWriteBegin;
  uint64_t version;  // the newest committed version; the commit makes version + 1
  uint64_t writes;   // LiveState::writes after this one began
  int32_t buffer;    // the buffer to write
  uint32_t nbuffers;
};

struct CommitReply {
  static constexpr MsgType kType = MsgType::kCommit;
  uint64_t version;  // the version committed; 0 after an abort
};

enum AcquireFlags : uint32_t {
  kAcquireWriting = 1u << 0,  // a one-buffer slot: a write into it is under way
};

struct AcquireReply {
  static constexpr MsgType kType = MsgType::kAcquire;
  uint64_t version;
  uint64_t writes;  // LiveState::writes when the pin was taken
  uint64_t committed_ns;
  int32_t buffer;
  uint32_t flags;  // AcquireFlags
  uint64_t pin;  // names this pin in the release
};
static_assert(sizeof(AcquireReply) == 40);

struct ReleaseReply {
  static constexpr MsgType kType = MsgType::kRelease;
  uint32_t released;  // 1 if that pin was held and is gone
  uint32_t reserved;
};

// A CUDA device the broker sees, in its own numbering.
struct DeviceRecord {
  uint8_t uuid[16];
  int32_t ordinal;
  uint32_t reserved;
  uint64_t allocated_bytes;  // the broker's allocations on it
};
static_assert(sizeof(DeviceRecord) == 32);

// One uid's use against its share; a share of 0 is no limit.
struct UsageRecord {
  uint32_t uid;
  uint32_t flags;           // kUsageExempt: root or the admin group, which no share limits
  uint32_t slots;           // slots it owns, with the destroyed allocations its leases keep alive
  uint32_t slot_share;      // limits.max_slots_per_uid
  uint32_t connections;
  uint32_t reserved;
  uint64_t bytes;           // everything it holds, until the memory is freed
  uint64_t byte_quota;      // limits.max_bytes_per_uid where set
  uint64_t host_bytes;      // named by a slot: what the fair share counts
  uint64_t host_share;      // a quarter of limits.max_host_bytes when no quota is set
  uint64_t device_bytes;
  uint64_t device_share;    // a quarter of limits.max_bytes_per_device when no quota is set
};
static_assert(sizeof(UsageRecord) == 72);
inline constexpr uint32_t kUsageExempt = 1;

// One connection to a broker on another node: a tree this one follows, or
// a follower it serves.
struct PeerRecord {
  Text<16> role;   // "source" (it serves a follower) or "follower"
  Text<32> state;
  Text<128> tree;
  Text<64> peer;   // IPv4:PORT
  uint64_t version;         // the newest committed here (follower) or read by it (source)
  uint64_t source_version;  // follower: the newest the source offered
  uint64_t versions;        // versions moved
  uint64_t bytes;           // bytes moved
  uint64_t errors;          // connections lost or refused
  uint64_t last_ns;         // the last version's transfer time
  Text<192> last_error;
  uint64_t passed_on;       // source: versions sent on while they still arrived (version 6)
  uint64_t abandoned;       // follower: versions the source gave up after sending them in part (version 6)
};
static_assert(sizeof(PeerRecord) == 496);

struct PeersReply {
  static constexpr MsgType kType = MsgType::kPeers;
  using Record = PeerRecord;
  uint32_t count;
  uint32_t next_cursor;
};

struct FollowReply {
  static constexpr MsgType kType = MsgType::kFollow;
  uint64_t reserved;
};

struct UnfollowReply {
  static constexpr MsgType kType = MsgType::kUnfollow;
  uint64_t reserved;
};

struct UsageReply {
  static constexpr MsgType kType = MsgType::kUsage;
  using Record = UsageRecord;
  uint32_t count;
  uint32_t next_cursor;
};

struct DevicesReply {
  static constexpr MsgType kType = MsgType::kDevices;
  using Record = DeviceRecord;
  uint32_t count;
  uint32_t next_cursor;
};

struct ErrorReply {
  static constexpr MsgType kType = MsgType::kError;
  uint16_t code;  // gpubroker::Code
  uint16_t reserved0;
  uint32_t reserved1;
  Text<248> message;
};
static_assert(sizeof(ErrorReply) == 256);

enum NoticeKind : uint32_t { kNoticeStopping = 1 };

struct Notice {
  static constexpr MsgType kType = MsgType::kNotice;
  uint32_t kind;  // NoticeKind
  uint32_t reserved;
  Text<120> message;
};

// ---- framing ---------------------------------------------------------------

// A parsed, size-checked message; `payload` points into the caller's buffer.
struct Frame {
  MsgType type;
  bool reply;
  uint32_t request_id;
  std::span<const std::byte> payload;
};

// Checks magic, version and length against the bytes received.
Result<Frame> ParseFrame(std::span<const std::byte> bytes);

template <typename T>
concept Payload = std::is_trivially_copyable_v<T> && requires { T::kType; };

template <typename T>
concept ListPayload = Payload<T> && requires { typename T::Record; };

std::vector<std::byte> EncodeRaw(uint16_t type, uint32_t request_id,
                                 std::span<const std::byte> head,
                                 std::span<const std::byte> tail = {});

template <Payload T>
std::vector<std::byte> EncodeRequest(uint32_t request_id, const T& p) {
  return EncodeRaw(static_cast<uint16_t>(T::kType), request_id, std::as_bytes(std::span(&p, 1)));
}

template <Payload T>
std::vector<std::byte> EncodeReply(uint32_t request_id, const T& p) {
  uint16_t type = T::kType == MsgType::kError || T::kType == MsgType::kNotice
                      ? static_cast<uint16_t>(T::kType)
                      : ReplyType(T::kType);
  return EncodeRaw(type, request_id, std::as_bytes(std::span(&p, 1)));
}

template <ListPayload T>
std::vector<std::byte> EncodeListReply(uint32_t request_id, const T& head,
                                       std::span<const typename T::Record> records) {
  return EncodeRaw(ReplyType(T::kType), request_id, std::as_bytes(std::span(&head, 1)),
                   std::as_bytes(records));
}

std::vector<std::byte> EncodeError(uint32_t request_id, const Status& status);

// Field checks per payload type; each returns kProtocol or kInvalidArgument.
Status Validate(const HelloRequest& m);
Status Validate(const CreateRequest& m);
Status Validate(const AttachRequest& m);
Status Validate(const DetachRequest& m);
Status Validate(const DestroyRequest& m);
Status Validate(const StatRequest& m);
Status Validate(const ListRequest& m);
Status Validate(const ClientsRequest& m);
Status Validate(const DevicesRequest& m);
Status Validate(const UsageRequest& m);
Status Validate(const PeersRequest& m);
Status Validate(const PeersReply& m);
Status ValidateRecord(const PeerRecord& r);
Status Validate(const FollowRequest& m);
Status Validate(const FollowReply& m);
Status Validate(const UnfollowRequest& m);
Status Validate(const UnfollowReply& m);
Status Validate(const UsageReply& m);
Status ValidateRecord(const UsageRecord& r);
Status Validate(const DevicesReply& m);
Status ValidateRecord(const DeviceRecord& r);
Status Validate(const LeasesRequest& m);
Status Validate(const StatusRequest& m);
Status Validate(const ShutdownRequest& m);
Status Validate(const DrainRequest& m);
Status Validate(const ReloadRequest& m);
Status Validate(const DrainReply& m);
Status Validate(const ReloadReply& m);
Status Validate(const HelloReply& m);
Status Validate(const AttachReply& m);
Status Validate(const SlotReply& m);
Status Validate(const DetachReply& m);
Status Validate(const DestroyReply& m);
Status Validate(const ListReply& m);
Status Validate(const ClientsReply& m);
Status Validate(const LeasesReply& m);
Status Validate(const StatusReply& m);
Status Validate(const WriteBeginRequest& m);
Status Validate(const CommitRequest& m);
Status Validate(const AcquireRequest& m);
Status Validate(const ReleaseRequest& m);
Status Validate(const WriteBeginReply& m);
Status Validate(const CommitReply& m);
Status Validate(const AcquireReply& m);
Status Validate(const ReleaseReply& m);
Status Validate(const ShutdownReply& m);
Status Validate(const ErrorReply& m);
Status Validate(const Notice& m);
Status ValidateRecord(const SlotDescriptor& r);
Status ValidateRecord(const ClientRecord& r);
Status ValidateRecord(const LeaseRecord& r);

std::string TypeName(uint16_t type);

// Copies and validates a fixed-size payload; the size must match exactly.
template <Payload T>
Result<T> Decode(std::span<const std::byte> payload) {
  if (payload.size() != sizeof(T)) {
    return ProtocolError(TypeName(static_cast<uint16_t>(T::kType)) + " payload is " +
                         std::to_string(payload.size()) + " bytes; expected " +
                         std::to_string(sizeof(T)));
  }
  T value;
  std::memcpy(&value, payload.data(), sizeof(T));
  GPB_RETURN_IF_ERROR(Validate(value));
  return value;
}

template <ListPayload T>
struct DecodedList {
  T head;
  std::vector<typename T::Record> records;
};

template <ListPayload T>
Result<DecodedList<T>> DecodeList(std::span<const std::byte> payload) {
  using R = typename T::Record;
  if (payload.size() < sizeof(T)) return ProtocolError("list reply shorter than its head");
  DecodedList<T> out;
  std::memcpy(&out.head, payload.data(), sizeof(T));
  GPB_RETURN_IF_ERROR(Validate(out.head));
  if (payload.size() != sizeof(T) + size_t{out.head.count} * sizeof(R)) {
    return ProtocolError("list reply of " + std::to_string(payload.size()) + " bytes does not hold " +
                         std::to_string(out.head.count) + " records");
  }
  out.records.resize(out.head.count);
  if (out.head.count > 0) {
    std::memcpy(out.records.data(), payload.data() + sizeof(T), out.head.count * sizeof(R));
  }
  for (const R& r : out.records) GPB_RETURN_IF_ERROR(ValidateRecord(r));
  return out;
}

// Most records a list reply can carry within kMaxMessageBytes.
template <ListPayload T>
constexpr uint32_t MaxRecords() {
  return static_cast<uint32_t>((kMaxMessageBytes - sizeof(Header) - sizeof(T)) /
                               sizeof(typename T::Record));
}

}  // namespace gpubroker::wire

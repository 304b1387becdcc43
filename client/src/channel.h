// The client's connection to the broker: the socket, request ids, the hello,
// and reconnecting after a broker restart, with the lease re-taking that
// needs. It knows nothing of mappings: what it must tell the mapping side (a
// new registry, which leases to take again, which could not be) goes through
// Hooks, as plain data, so no mapping is ever destroyed under its lock.
//
// Thread-safe: one exchange at a time on the socket. Lock order: Channel's
// lock, then MappingCache's (the hooks); never the other way.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/posix.h"
#include "common/thread_annotations.h"
#include "common/wire.h"
#include "gpubroker/client.hpp"

namespace gpubroker {

// A lease to take again after a reconnect.
struct LeaseClaim {
  uint64_t allocation_id = 0;
  std::string slot;  // the name it was attached through
  bool writable = false;
};

struct ReplyWithFd {
  std::vector<std::byte> bytes;  // the whole message
  wire::Frame frame;             // points into bytes
  UniqueFd fd;
};

class Channel {
 public:
  struct Hooks {
    // Each hello answered (the first, and after every reconnect), with the
    // registry descriptor that came with it (invalid if none did).
    std::function<void(const wire::HelloReply&, UniqueFd registry)> greeted;
    // After a reconnect: the leases this process held.
    std::function<std::vector<LeaseClaim>()> leases;
    // A lease that could not be taken again (the slot is gone or changed).
    std::function<void(uint64_t allocation_id)> lost;
  };

  static Result<std::shared_ptr<Channel>> Open(const ConnectOptions& options, Hooks hooks = {});

  // Sends one request and waits for its reply, decoded as R.
  template <typename R, typename Q>
  Result<R> Call(const Q& request, UniqueFd* fd = nullptr) GPB_EXCLUDES(mu_) {
    MutexLock lock(mu_);
    GPB_ASSIGN_OR_RETURN(ReplyWithFd reply, ExchangeLocked(wire::EncodeRequest(0, request)));
    GPB_RETURN_IF_ERROR(ExpectType(reply.frame, static_cast<uint16_t>(R::kType)));
    if (fd != nullptr) *fd = std::move(reply.fd);
    return wire::Decode<R>(reply.frame.payload);
  }

  // Pages through a list request until the end cursor.
  template <typename R, typename Q>
  Result<std::vector<typename R::Record>> CallList(Q request) GPB_EXCLUDES(mu_) {
    std::vector<typename R::Record> all;
    request.cursor = 0;
    request.max_entries = wire::MaxRecords<R>();
    while (true) {
      MutexLock lock(mu_);
      GPB_ASSIGN_OR_RETURN(ReplyWithFd reply, ExchangeLocked(wire::EncodeRequest(0, request)));
      GPB_RETURN_IF_ERROR(ExpectType(reply.frame, static_cast<uint16_t>(R::kType)));
      GPB_ASSIGN_OR_RETURN(auto page, wire::DecodeList<R>(reply.frame.payload));
      all.insert(all.end(), page.records.begin(), page.records.end());
      if (page.head.next_cursor == wire::kEndCursor) return all;
      if (page.head.next_cursor <= request.cursor) return ProtocolError("list cursor went backwards");
      request.cursor = page.head.next_cursor;
    }
  }

  // Gives a lease back. Never reconnects: if the broker went away, the lease
  // went with it. Errors are dropped: the caller is a destructor.
  void Detach(uint64_t allocation_id) GPB_EXCLUDES(mu_);
  // A round trip whose reply (and error) is dropped, never reconnecting: for
  // what a destructor or a background thread gives back (a pin, a write).
  // It waits for the reply, so what it gave back is given back when it returns.
  template <typename Q>
  void CallDroppingReply(const Q& request) GPB_EXCLUDES(mu_) {
    MutexLock lock(mu_);
    (void)SendAndReceiveLocked(wire::EncodeRequest(0, request));
  }

  uint64_t client_id() GPB_EXCLUDES(mu_);

  // Whether the broker's end of the connection hung up (it exited, or was
  // killed): a poll of the socket, no message, no lock. What a waiter asks
  // instead of the broker's pid, which means nothing in another pid namespace.
  bool PeerHungUp() const;

  // Makes sure the broker answers: asks it (a status request) and, if it went
  // away, reconnects to a restarted one, trying for at most `limit`
  // (negative: as long as the connect options allow).
  Status Reconnect(std::chrono::milliseconds limit) GPB_EXCLUDES(mu_);

  // Which connection to a broker this is: 0 for the first, one more after
  // each reconnect. What a pin was granted on: a pin of an earlier one is
  // the old broker's, which a warm-restarted broker may carry.
  uint64_t connection() const { return connection_.load(std::memory_order_acquire); }

 private:
  Channel() = default;
  // Sends and waits for the reply; reconnects first if the broker went away.
  Result<ReplyWithFd> ExchangeLocked(std::vector<std::byte> request) GPB_REQUIRES(mu_);
  // `delivered`: whether the request reached the socket before any failure.
  Result<ReplyWithFd> SendAndReceiveLocked(std::vector<std::byte> request, bool* delivered = nullptr)
      GPB_REQUIRES(mu_);
  Status HelloLocked() GPB_REQUIRES(mu_);
  // `limit` (if not negative) shortens the connect options' reconnect time.
  Status ReconnectLocked(std::chrono::milliseconds limit = std::chrono::milliseconds(-1)) GPB_REQUIRES(mu_);
  void RetakeLeasesLocked() GPB_REQUIRES(mu_);
  static Status ExpectType(const wire::Frame& frame, uint16_t type);

  ConnectOptions options_;  // fixed after Open
  Hooks hooks_;             // fixed after Open
  Mutex mu_;
  UniqueFd socket_ GPB_GUARDED_BY(mu_);
  std::atomic<int> socket_fd_{-1};  // socket_'s descriptor, for PeerHungUp
  std::atomic<uint64_t> connection_{0};
  uint32_t next_id_ GPB_GUARDED_BY(mu_) = 0;
  std::optional<Status> broken_ GPB_GUARDED_BY(mu_);  // set once the broker is gone
  wire::HelloReply hello_ GPB_GUARDED_BY(mu_){};
  bool greeted_ GPB_GUARDED_BY(mu_) = false;
  std::vector<std::byte> receive_buffer_ GPB_GUARDED_BY(mu_) = std::vector<std::byte>(wire::kMaxMessageBytes);
};

}  // namespace gpubroker

// One connection to the broker: request/reply exchange, the registry mapping
// and the per-connection cache of mapped allocations.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "gpubroker/client.hpp"
#include "client/src/mapping.h"
#include "common/posix.h"
#include "common/registry_reader.h"
#include "common/wire.h"

namespace gpubroker {

// An allocation mapped into this process; every View into it shares one.
// Unmapping it returns the lease.
struct MappedAllocation {
  std::weak_ptr<class Connection> connection;
  uint64_t allocation_id = 0;
  std::string slot;     // the name it was attached through, to re-take the lease by
  bool leased = true;   // false if a restarted broker no longer knows the slot
  void* base = nullptr;
  size_t size = 0;  // bytes mapped at base
  bool writable = false;
  Device device;  // in this process's numbering
  std::unique_ptr<ClientMapping> mapping;
  ~MappedAllocation();
};

struct ReplyWithFd {
  std::vector<std::byte> bytes;  // the whole message
  wire::Frame frame;             // points into bytes
  UniqueFd fd;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  static Result<std::shared_ptr<Connection>> Open(const ConnectOptions& options);

  // Sends one request and waits for its reply, decoded as R.
  template <typename R, typename Q>
  Result<R> Call(const Q& request, UniqueFd* fd = nullptr) {
    std::lock_guard lock(mu_);
    GPB_ASSIGN_OR_RETURN(ReplyWithFd reply, ExchangeLocked(wire::EncodeRequest(0, request)));
    GPB_RETURN_IF_ERROR(ExpectType(reply.frame, static_cast<uint16_t>(R::kType)));
    if (fd != nullptr) *fd = std::move(reply.fd);
    return wire::Decode<R>(reply.frame.payload);
  }

  // Pages through a list request until the end cursor.
  template <typename R, typename Q>
  Result<std::vector<typename R::Record>> CallList(Q request) {
    std::vector<typename R::Record> all;
    request.cursor = 0;
    request.max_entries = wire::MaxRecords<R>();
    while (true) {
      std::lock_guard lock(mu_);
      GPB_ASSIGN_OR_RETURN(ReplyWithFd reply, ExchangeLocked(wire::EncodeRequest(0, request)));
      GPB_RETURN_IF_ERROR(ExpectType(reply.frame, static_cast<uint16_t>(R::kType)));
      GPB_ASSIGN_OR_RETURN(auto page, wire::DecodeList<R>(reply.frame.payload));
      all.insert(all.end(), page.records.begin(), page.records.end());
      if (page.head.next_cursor == wire::kEndCursor) return all;
      if (page.head.next_cursor <= request.cursor) return ProtocolError("list cursor went backwards");
      request.cursor = page.head.next_cursor;
    }
  }

  // Maps the fd of an attach reply, or joins this process's existing mapping
  // of the same allocation (returning the extra lease).
  Result<std::shared_ptr<MappedAllocation>> Map(const wire::AttachReply& reply, UniqueFd fd);
  // The live mapping of an allocation, if this process has one.
  std::shared_ptr<MappedAllocation> Cached(uint64_t allocation_id);
  // Returns a lease; errors are logged nowhere: the connection may be gone.
  void Detach(uint64_t allocation_id);

  // The registry the broker handed over with its hello.
  Result<const RegistryReader*> Registry();

  const wire::HelloReply& hello() const { return hello_; }

 private:
  Connection() = default;
  // Sends and waits for the reply; reconnects first if the broker went away.
  Result<ReplyWithFd> ExchangeLocked(std::vector<std::byte> request);
  // `delivered`: whether the request reached the socket before any failure.
  Result<ReplyWithFd> SendAndReceiveLocked(std::vector<std::byte> request, bool* delivered = nullptr);
  Status HelloLocked();
  Status ReconnectLocked();
  void RetakeLeasesLocked();
  Status ExpectType(const wire::Frame& frame, uint16_t type) const;

  std::mutex mu_;  // guards the socket, next_id_, broken_, hello_, greeted_
  ConnectOptions options_;
  UniqueFd socket_;
  uint32_t next_id_ = 0;
  std::optional<Status> broken_;  // set once the broker is gone
  wire::HelloReply hello_{};
  bool greeted_ = false;
  std::vector<std::byte> receive_buffer_ = std::vector<std::byte>(wire::kMaxMessageBytes);

  std::mutex cache_mu_;  // guards cache_, registry_ and registry_error_
  std::map<uint64_t, std::weak_ptr<MappedAllocation>> cache_;
  std::optional<RegistryReader> registry_;
  Status registry_error_ = Unavailable("not connected");
};

}  // namespace gpubroker

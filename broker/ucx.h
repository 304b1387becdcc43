// UCX as brokers on different nodes will use it to replicate versioned trees
// (issue 24; docs/multinode.md): one worker per broker thread, woken by a
// file descriptor the broker's event loop watches; connections by worker
// address (the broker's) or socket address (UCX's listener: tests only, see
// peers.h for why); messages as UCX active messages; bulk bytes read with
// ucp_get_nbx from memory the other side registered (tests only).
//
// Everything happens on the thread that calls Progress: UCX's callbacks only
// queue what happened, and Progress hands it to the owner's handlers after
// UCX returns, so a handler may send, read, connect or close freely.
//
// Memory access (Register, Get) only where every host that can reach the
// port is trusted: UCX over TCP emulates remote reads and writes with
// messages of its own and serves them at any address a peer names, with no
// check of the memory key and before any handler of ours sees a byte. A
// worker made without `rma` (the broker's) has no such service: its peers
// can only send it messages.
//
// What a peer sends is hostile until checked: a message longer than the
// endpoint's limit (kMaxMessage until raised), or sent by rendezvous, ends
// its connection before any handler sees it, and the rest is the handler's
// to parse. That does not bound the
// memory a connected peer can make UCX use: UCX reassembles a long eager
// message (allocating the size the peer claims) before this code sees it, and
// it parses a packed memory key without knowing its length. So peers must
// prove who they are before anything else (issue 24's cluster key), and
// only then are their messages and keys read.
//
// Registrations and keys must go before the worker that made them.
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gpubroker/status.hpp"

namespace gpubroker::ucx {

inline constexpr size_t kMaxMessage = 8 * 1024;  // body bytes; eager on every transport
// The most an endpoint's limit may be raised to (SetMaxMessage), and the
// most this side sends.
inline constexpr size_t kMaxRaisedMessage = 1024 * 1024 + 64;

class Worker;

// A key to memory a peer registered, unpacked for one endpoint. Destroy it
// before the endpoint goes (Endpoint::Close does not wait for it).
class RemoteKey {
 public:
  RemoteKey() = default;
  RemoteKey(RemoteKey&& o) noexcept : key_(o.key_) { o.key_ = nullptr; }
  RemoteKey& operator=(RemoteKey&& o) noexcept;
  ~RemoteKey();
  ucp_rkey_h get() const { return key_; }

 private:
  friend class Endpoint;
  explicit RemoteKey(ucp_rkey_h key) : key_(key) {}
  ucp_rkey_h key_ = nullptr;
};

// A connection to a peer. The worker holds it while it is open; Close (or a
// failure the peer causes) ends it, and every read still in flight then
// completes with an error.
class Endpoint {
 public:
  // Sends message `type` with `body` (at most kMaxMessage bytes, or the
  // peer's raised limit), copied; `sent`, if given, runs on a later
  // Progress once UCX is done with it (the peer may not have it yet).
  Status Send(uint16_t type, std::string body, std::function<void(Status)> sent = {});
  // The same with `head` then `bytes` bytes at `data`, which UCX reads in
  // place (not copied here): `keep` holds that memory until `sent` runs.
  Status Send(uint16_t type, std::string head, const void* data, size_t bytes, std::shared_ptr<const void> keep,
              std::function<void(Status)> sent = {});
  // What this side accepts from the peer (a longer message ends the
  // connection): raise it only for a peer that proved who it is.
  void SetMaxMessage(size_t bytes) { max_message_ = bytes < kMaxRaisedMessage ? bytes : kMaxRaisedMessage; }
  // Reads `bytes` from `remote` in the peer's registration `key` into
  // `local`; `done` runs on a later Progress with the outcome.
  Status Get(void* local, size_t bytes, uint64_t remote, const RemoteKey& key, std::function<void(Status)> done);
  // A key the peer packed (Registration::packed_key) for reading it here.
  Result<RemoteKey> Unpack(std::string_view packed) const;
  // Ends the connection at once (what is in flight fails).
  void Close();
  bool open() const { return ep_ != nullptr && error_.ok(); }
  const Status& error() const { return error_; }
  const std::string& peer() const { return peer_; }

  Endpoint(Worker* worker, std::string peer) : worker_(worker), peer_(std::move(peer)) {}
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

 private:
  friend class Worker;
  Worker* worker_;
  std::string peer_;
  ucp_ep_h ep_ = nullptr;
  Status error_ = Status::Ok();
  size_t max_message_ = kMaxMessage;
};

// Memory registered with UCX, readable by peers that hold its packed key.
class Registration {
 public:
  ~Registration();
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  uint64_t address() const { return reinterpret_cast<uint64_t>(base_); }
  size_t bytes() const { return bytes_; }
  const std::string& packed_key() const { return packed_; }

 private:
  friend class Worker;
  Registration(ucp_context_h context, ucp_mem_h memory, void* base, size_t bytes, std::string packed)
      : context_(context), memory_(memory), base_(base), bytes_(bytes), packed_(std::move(packed)) {}
  ucp_context_h context_;
  ucp_mem_h memory_;
  void* base_;
  size_t bytes_;
  std::string packed_;
};

class Worker {
 public:
  using Accepted = std::function<void(const std::shared_ptr<Endpoint>&)>;
  // `body` lives for the call only (often UCX's own buffer, handed back after).
  using Message = std::function<void(const std::shared_ptr<Endpoint>&, uint16_t type, std::string_view body)>;
  using Failed = std::function<void(const std::shared_ptr<Endpoint>&, const Status&)>;

  // kUnavailable where UCX cannot start here, naming why. `settings` are
  // UCX configuration entries without their UCX_ prefix (TCP_CM_REUSEADDR,
  // NET_DEVICES, ...); the environment's UCX_* variables override them.
  // `rma`: remote memory access (Register, Get); see the top of this file.
  static Result<std::unique_ptr<Worker>> Make(
      std::string name, const std::vector<std::pair<std::string, std::string>>& settings = {}, bool rma = false);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Readable when there is something to progress (after Arm).
  int fd() const { return fd_; }
  // Lets UCX work for at most about `budget` (one call of UCX's can take
  // longer with large reads in flight), then runs the handlers for what
  // happened. True if more may be pending: call again before sleeping.
  bool Progress(std::chrono::microseconds budget);
  // Before sleeping on fd(): false if something is pending already.
  bool Arm();

  void OnMessage(Message handler) { on_message_ = std::move(handler); }
  void OnFailure(Failed handler) { on_failure_ = std::move(handler); }

  // Accepts connections at ip:port (port 0: one the system picks; see
  // listen_port).
  Status Listen(const std::string& ip, uint16_t port, Accepted accepted);
  uint16_t listen_port() const { return listen_port_; }
  // Starts a connection; a peer that is not there fails it later (OnFailure).
  Result<std::shared_ptr<Endpoint>> Connect(const std::string& ip, uint16_t port);
  // This worker's address, for a peer to connect to with ConnectTo: no
  // listener of UCX's then takes connections from anyone (the broker hands
  // it only to peers that proved who they are, over a channel of its own).
  const std::string& address() const { return address_; }
  // Connects to a worker by its address (at most 4096 bytes), naming the
  // peer `peer` in errors. UCX parses the address: take it only from a
  // peer that proved who it is. Let only one of two workers connect to the
  // other: where both do, UCX pairs their endpoints by the order they were
  // made, not by who asked for them, and closing one silently loses what
  // the other side sends on its pair (seen with UCX 1.13).
  Result<std::shared_ptr<Endpoint>> ConnectTo(std::string_view address, std::string peer);
  // Messages that come on no endpoint of this side's (from a worker that
  // connected with ConnectTo) reach OnMessage with a null endpoint; a
  // longer one is dropped. kMaxMessage until raised.
  void SetAnonymousMaxMessage(size_t bytes) {
    anonymous_max_ = bytes < kMaxRaisedMessage ? bytes : kMaxRaisedMessage;
  }
  // Registers [base, base + bytes) for peers to read.
  Result<std::unique_ptr<Registration>> Register(void* base, size_t bytes);

 private:
  friend class Endpoint;
  struct Event {  // what a UCX callback saw, handled after ucp_worker_progress returns
    enum Kind { kConnection, kMessage, kFailure, kDone } kind;
    ucp_conn_request_h request = nullptr;
    ucp_ep_h ep = nullptr;
    uint16_t type = 0;
    std::string body;
    Status status = Status::Ok();
    std::function<void(Status)> done;
    // A message whose bytes UCX lets us keep (not copied into `body`):
    // handed back with ucp_am_data_release once handled.
    void* held = nullptr;
    size_t held_length = 0;
  };
  struct Sent {  // a send in flight: its header and body live until it completes
    Worker* worker;
    uint16_t type;
    std::string body;
    std::function<void(Status)> done;
    std::shared_ptr<const void> keep;  // what `iov` points into beyond `body`
    ucp_dt_iov_t iov[2] = {};
  };
  struct Read {
    Worker* worker;
    std::function<void(Status)> done;
  };

  Worker() = default;
  Result<std::shared_ptr<Endpoint>> Adopt(const ucp_ep_params_t& params, std::string peer);
  // Ends `ep` with `why`; `tell`: run OnFailure (a peer's doing, not ours).
  void Fail(std::shared_ptr<Endpoint> ep, Status why, bool tell = true);
  void Reap();
  static void OnConnection(ucp_conn_request_h request, void* arg);
  static ucs_status_t OnActiveMessage(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                      const ucp_am_recv_param_t* param);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void OnSent(void* request, ucs_status_t status, void* user);
  static void OnRead(void* request, ucs_status_t status, void* user);

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  int fd_ = -1;
  uint16_t listen_port_ = 0;
  Accepted on_accept_;
  Message on_message_;
  Failed on_failure_;
  std::deque<Event> events_;
  std::map<ucp_ep_h, std::shared_ptr<Endpoint>> endpoints_;
  std::string address_;
  size_t anonymous_max_ = kMaxMessage;
  std::vector<void*> closing_;  // ucp_ep_close_nbx requests to free once done
};

}  // namespace gpubroker::ucx

#include "broker/ucx.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdlib>
#include <cstring>
#include <iterator>

namespace gpubroker::ucx {
namespace {

constexpr unsigned kActiveMessage = 1;  // every message of ours; its 2-byte UCX header is our type

Status FromUcs(ucs_status_t s, std::string_view what) {
  std::string m = std::string(what) + ": " + ucs_status_string(s);
  switch (s) {
    case UCS_ERR_NO_MEMORY:
      return ResourceExhausted(m);
    case UCS_ERR_INVALID_PARAM:
      return InvalidArgument(m);
    default:
      return Unavailable(m);
  }
}

Result<sockaddr_in> Address(const std::string& ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) {
    return InvalidArgument("'" + ip + "' is not an IPv4 address");
  }
  return a;
}

std::string Describe(const sockaddr_storage& s) {
  if (s.ss_family != AF_INET) return "?";
  const auto& a = reinterpret_cast<const sockaddr_in&>(s);
  char ip[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
}

}  // namespace

RemoteKey& RemoteKey::operator=(RemoteKey&& o) noexcept {
  if (this != &o) {
    if (key_ != nullptr) ucp_rkey_destroy(key_);
    key_ = o.key_;
    o.key_ = nullptr;
  }
  return *this;
}

RemoteKey::~RemoteKey() {
  if (key_ != nullptr) ucp_rkey_destroy(key_);
}

Registration::~Registration() { ucp_mem_unmap(context_, memory_); }

Status Endpoint::Send(uint16_t type, std::string body, std::function<void(Status)> done) {
  return Send(type, std::move(body), nullptr, 0, nullptr, std::move(done));
}

Status Endpoint::Send(uint16_t type, std::string head, const void* data, size_t bytes,
                      std::shared_ptr<const void> keep, std::function<void(Status)> done) {
  if (!open()) return error_.ok() ? Unavailable("the connection to " + peer_ + " is closed") : error_;
  if (head.size() + bytes > kMaxRaisedMessage) {
    return InvalidArgument("a message of " + std::to_string(head.size() + bytes) + " bytes is over the limit of " +
                           std::to_string(kMaxRaisedMessage));
  }
  auto* sent = new Worker::Sent{worker_, type, std::move(head), std::move(done), std::move(keep)};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
  p.cb.send = &Worker::OnSent;
  p.user_data = sent;
  const void* buffer = sent->body.data();
  size_t count = sent->body.size();
  if (data != nullptr && bytes != 0) {  // two pieces, gathered by UCX
    sent->iov[0] = {sent->body.data(), sent->body.size()};
    sent->iov[1] = {const_cast<void*>(data), bytes};
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
    p.datatype = ucp_dt_make_iov();
    buffer = sent->iov;
    count = 2;
  }
  void* r = ucp_am_send_nbx(ep_, kActiveMessage, &sent->type, sizeof sent->type, buffer, count, &p);
  if (r == nullptr) {  // sent already: the outcome still arrives through Progress
    if (sent->done) {
      worker_->events_.push_back(Worker::Event{Worker::Event::kDone, nullptr, nullptr, 0, {}, Status::Ok(),
                                               std::move(sent->done)});
    }
    delete sent;
    return Status::Ok();
  }
  if (UCS_PTR_IS_ERR(r)) {
    delete sent;
    return FromUcs(UCS_PTR_STATUS(r), "sending to " + peer_);
  }
  return Status::Ok();  // OnSent frees it
}

Status Endpoint::Get(void* local, size_t bytes, uint64_t remote, const RemoteKey& key,
                     std::function<void(Status)> done) {
  if (!open()) return error_.ok() ? Unavailable("the connection to " + peer_ + " is closed") : error_;
  if (key.get() == nullptr) return InvalidArgument("no key to read " + peer_ + "'s memory with");
  auto* read = new Worker::Read{worker_, std::move(done)};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &Worker::OnRead;
  p.user_data = read;
  void* r = ucp_get_nbx(ep_, local, bytes, remote, key.get(), &p);
  if (r == nullptr) {  // done already: the outcome still arrives through Progress, as for any read
    worker_->events_.push_back(Worker::Event{Worker::Event::kDone, nullptr, nullptr, 0, {}, Status::Ok(),
                                             std::move(read->done)});
    delete read;
    return Status::Ok();
  }
  if (UCS_PTR_IS_ERR(r)) {
    delete read;
    return FromUcs(UCS_PTR_STATUS(r), "reading from " + peer_);
  }
  return Status::Ok();
}

Result<RemoteKey> Endpoint::Unpack(std::string_view packed) const {
  if (!open()) return error_.ok() ? Unavailable("the connection to " + peer_ + " is closed") : error_;
  if (packed.empty() || packed.size() > 4096) {
    return InvalidArgument("a packed key of " + std::to_string(packed.size()) + " bytes from " + peer_);
  }
  ucp_rkey_h key = nullptr;
  if (ucs_status_t s = ucp_ep_rkey_unpack(ep_, packed.data(), &key); s != UCS_OK) {
    return FromUcs(s, "unpacking " + peer_ + "'s memory key");
  }
  return RemoteKey(key);
}

void Endpoint::Close() {
  if (ep_ == nullptr) return;
  auto it = worker_->endpoints_.find(ep_);
  if (it == worker_->endpoints_.end()) return;
  std::shared_ptr<Endpoint> self = it->second;
  worker_->Fail(self, Unavailable("the connection to " + peer_ + " was closed here"), false);
}

Result<std::unique_ptr<Worker>> Worker::Make(std::string name,
                                             const std::vector<std::pair<std::string, std::string>>& settings,
                                             bool rma) {
  std::unique_ptr<Worker> w(new Worker());
  ucp_params_t p{};
  p.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  // Without RMA, UCX installs no handler that reads or writes memory for a peer.
  p.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP | (rma ? UCP_FEATURE_RMA : 0);
  p.name = name.c_str();
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return FromUcs(s, "reading UCX's configuration");
  }
  for (const auto& [key, value] : settings) {
    if (std::getenv(("UCX_" + key).c_str()) != nullptr) continue;  // the environment's word is the last
    if (ucs_status_t s = ucp_config_modify(config, key.c_str(), value.c_str()); s != UCS_OK) {
      ucp_config_release(config);
      return FromUcs(s, "setting UCX_" + key + "=" + value);
    }
  }
  ucs_status_t init = ucp_init(&p, config, &w->context_);
  ucp_config_release(config);
  if (init != UCS_OK) return FromUcs(init, "starting UCX");
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  if (ucs_status_t s = ucp_worker_create(w->context_, &wp, &w->worker_); s != UCS_OK) {
    return FromUcs(s, "making a UCX worker");
  }
  ucp_worker_attr_t wa{};
  wa.field_mask = UCP_WORKER_ATTR_FIELD_ADDRESS;
  if (ucs_status_t s = ucp_worker_query(w->worker_, &wa); s != UCS_OK) return FromUcs(s, "the UCX worker's address");
  w->address_.assign(reinterpret_cast<const char*>(wa.address), wa.address_length);
  ucp_worker_release_address(w->worker_, wa.address);
  if (ucs_status_t s = ucp_worker_get_efd(w->worker_, &w->fd_); s != UCS_OK) {
    return FromUcs(s, "the UCX worker's wake-up descriptor");
  }
  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                  UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  hp.id = kActiveMessage;
  hp.cb = &Worker::OnActiveMessage;
  hp.arg = w.get();
  // Persistent: a message's bytes stay UCX's buffer until the handler has
  // read them (Progress hands them back), rather than being copied first.
  hp.flags = UCP_AM_FLAG_WHOLE_MSG | UCP_AM_FLAG_PERSISTENT_DATA;
  if (ucs_status_t s = ucp_worker_set_am_recv_handler(w->worker_, &hp); s != UCS_OK) {
    return FromUcs(s, "registering the message handler");
  }
  return w;
}

Worker::~Worker() {
  std::vector<std::shared_ptr<Endpoint>> open;
  for (auto& [h, ep] : endpoints_) open.push_back(ep);
  for (auto& ep : open) Fail(ep, Unavailable("this side is shutting down"), false);
  for (int i = 0; i < 100000 && !closing_.empty(); ++i) {  // forced closes end the reads in flight
    ucp_worker_progress(worker_);
    Reap();
  }
  // Every read still owed an outcome gets one; nothing else is told.
  for (Event& e : events_) {
    if (e.kind == Event::kDone && e.done) e.done(e.status.ok() ? Unavailable("this side is shutting down") : e.status);
    if (e.held != nullptr) ucp_am_data_release(worker_, e.held);
  }
  events_.clear();
  for (int i = 0; i < 100000 && !closing_.empty(); ++i) {
    ucp_worker_progress(worker_);
    Reap();
  }
  if (listener_ != nullptr) ucp_listener_destroy(listener_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

bool Worker::Progress(std::chrono::microseconds budget) {
  const auto end = std::chrono::steady_clock::now() + budget;
  bool more = false;
  do {
    more = ucp_worker_progress(worker_) != 0;
  } while (more && std::chrono::steady_clock::now() < end);
  while (!events_.empty()) {
    Event e = std::move(events_.front());
    events_.pop_front();
    switch (e.kind) {
      case Event::kConnection: {
        ucp_conn_request_attr_t a{};
        a.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
        std::string peer = ucp_conn_request_query(e.request, &a) == UCS_OK ? Describe(a.client_address) : "?";
        if (!on_accept_) {
          ucp_listener_reject(listener_, e.request);
          break;
        }
        ucp_ep_params_t p{};
        p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST;
        p.conn_request = e.request;
        auto ep = Adopt(p, std::move(peer));
        if (ep.ok()) on_accept_(*ep);
        break;
      }
      case Event::kMessage: {  // a copy of the pointer: the handler may close the endpoint
        const std::string_view body =
            e.held != nullptr ? std::string_view(static_cast<const char*>(e.held), e.held_length) : e.body;
        if (!on_message_) {
        } else if (e.ep == nullptr) {
          on_message_(nullptr, e.type, body);
        } else if (auto it = endpoints_.find(e.ep); it != endpoints_.end()) {
          std::shared_ptr<Endpoint> ep = it->second;
          on_message_(ep, e.type, body);
        }
        if (e.held != nullptr) ucp_am_data_release(worker_, e.held);
        break;
      }
      case Event::kFailure: {
        auto it = endpoints_.find(e.ep);
        if (it != endpoints_.end()) Fail(it->second, e.status);  // Fail takes its own copy
        break;
      }
      case Event::kDone:
        if (e.done) e.done(e.status);
        break;
    }
  }
  Reap();
  return more;
}

bool Worker::Arm() {
  if (!events_.empty()) return false;
  return ucp_worker_arm(worker_) != UCS_ERR_BUSY;
}

Status Worker::Listen(const std::string& ip, uint16_t port, Accepted accepted) {
  if (listener_ != nullptr) return InvalidArgument("this worker listens already");
  GPB_ASSIGN_OR_RETURN(sockaddr_in a, Address(ip, port));
  ucp_listener_params_t p{};
  p.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&a);
  p.sockaddr.addrlen = sizeof a;
  p.conn_handler.cb = &Worker::OnConnection;
  p.conn_handler.arg = this;
  if (ucs_status_t s = ucp_listener_create(worker_, &p, &listener_); s != UCS_OK) {
    return FromUcs(s, "listening on " + ip + ":" + std::to_string(port));
  }
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (ucs_status_t s = ucp_listener_query(listener_, &la); s != UCS_OK) return FromUcs(s, "the listener's address");
  listen_port_ = ntohs(reinterpret_cast<const sockaddr_in&>(la.sockaddr).sin_port);
  on_accept_ = std::move(accepted);
  return Status::Ok();
}

Result<std::shared_ptr<Endpoint>> Worker::Connect(const std::string& ip, uint16_t port) {
  GPB_ASSIGN_OR_RETURN(sockaddr_in a, Address(ip, port));
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
  p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&a);
  p.sockaddr.addrlen = sizeof a;
  return Adopt(p, ip + ":" + std::to_string(port));
}

Result<std::shared_ptr<Endpoint>> Worker::ConnectTo(std::string_view address, std::string peer) {
  if (address.empty() || address.size() > 4096) {
    return InvalidArgument("a worker address of " + std::to_string(address.size()) + " bytes from " + peer);
  }
  const std::string copy(address);  // UCX reads it during the call only
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  p.address = reinterpret_cast<const ucp_address_t*>(copy.data());
  return Adopt(p, std::move(peer));
}

Result<std::unique_ptr<Registration>> Worker::Register(void* base, size_t bytes) {
  if (base == nullptr || bytes == 0) return InvalidArgument("nothing to register");
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = base;
  p.length = bytes;
  ucp_mem_h memory = nullptr;
  if (ucs_status_t s = ucp_mem_map(context_, &p, &memory); s != UCS_OK) {
    return FromUcs(s, "registering " + std::to_string(bytes) + " bytes");
  }
  void* packed = nullptr;
  size_t length = 0;
  if (ucs_status_t s = ucp_rkey_pack(context_, memory, &packed, &length); s != UCS_OK) {
    ucp_mem_unmap(context_, memory);
    return FromUcs(s, "packing a memory key");
  }
  std::string key(static_cast<const char*>(packed), length);
  ucp_rkey_buffer_release(packed);
  return std::unique_ptr<Registration>(new Registration(context_, memory, base, bytes, std::move(key)));
}

Result<std::shared_ptr<Endpoint>> Worker::Adopt(const ucp_ep_params_t& params, std::string peer) {
  auto ep = std::make_shared<Endpoint>(this, std::move(peer));
  ucp_ep_params_t p = params;
  p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;  // a peer that dies fails its connection, not the worker
  p.err_handler.cb = &Worker::OnEndpointError;
  p.err_handler.arg = this;
  if (ucs_status_t s = ucp_ep_create(worker_, &p, &ep->ep_); s != UCS_OK) {
    ep->ep_ = nullptr;
    return FromUcs(s, "connecting to " + ep->peer_);
  }
  endpoints_[ep->ep_] = ep;
  return ep;
}

void Worker::Fail(std::shared_ptr<Endpoint> ep, Status why, bool tell) {
  if (ep->ep_ == nullptr) return;
  ep->error_ = why;
  ucp_ep_h h = ep->ep_;
  ep->ep_ = nullptr;
  endpoints_.erase(h);
  // What this connection said and has not been handled yet goes with it: its
  // handle may name a new connection once UCX reuses it.
  for (auto it = events_.begin(); it != events_.end();) {
    if (it->ep != h || it->kind == Event::kDone) {
      ++it;
      continue;
    }
    if (it->held != nullptr) ucp_am_data_release(worker_, it->held);  // UCX's buffer, handed back
    it = events_.erase(it);
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;  // what is in flight completes with an error
  void* r = ucp_ep_close_nbx(h, &p);
  if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
  if (tell && on_failure_) on_failure_(ep, why);
}

void Worker::Reap() {
  for (size_t i = 0; i < closing_.size();) {
    if (ucp_request_check_status(closing_[i]) != UCS_INPROGRESS) {
      ucp_request_free(closing_[i]);
      closing_[i] = closing_.back();
      closing_.pop_back();
    } else {
      ++i;
    }
  }
}

void Worker::OnConnection(ucp_conn_request_h request, void* arg) {
  static_cast<Worker*>(arg)->events_.push_back(Event{Event::kConnection, request, nullptr, 0, {}, Status::Ok(), {}});
}

ucs_status_t Worker::OnActiveMessage(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                     const ucp_am_recv_param_t* param) {
  auto* w = static_cast<Worker*>(arg);
  // From an endpoint of ours (a connection by socket address, either side),
  // or from no endpoint of ours (a worker that connected by our address):
  // that one is dropped if it breaks the rules, as there is nothing to end.
  ucp_ep_h from = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 ? param->reply_ep : nullptr;
  auto known = from != nullptr ? w->endpoints_.find(from) : w->endpoints_.end();
  if (known == w->endpoints_.end()) from = nullptr;
  Event e{Event::kMessage, nullptr, from, 0, {}, Status::Ok(), {}};
  const size_t limit = from != nullptr ? known->second->max_message_ : w->anonymous_max_;
  if (header_length != sizeof e.type || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 || length > limit) {
    if (from == nullptr) return UCS_OK;
    e.kind = Event::kFailure;
    e.status = ProtocolError("a message with a " + std::to_string(header_length) + "-byte header and " +
                             std::to_string(length) + " bytes (the limit is " + std::to_string(limit) + ")");
  } else {
    std::memcpy(&e.type, header, sizeof e.type);  // UCX's headers are not aligned
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA) != 0) {  // ours until released: no copy
      e.held = data;
      e.held_length = length;
      w->events_.push_back(std::move(e));
      return UCS_INPROGRESS;
    }
    e.body.assign(static_cast<const char*>(data), length);
  }
  w->events_.push_back(std::move(e));
  return UCS_OK;
}

void Worker::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  static_cast<Worker*>(arg)->events_.push_back(
      Event{Event::kFailure, nullptr, ep, 0, {}, FromUcs(status, "the connection failed"), {}});
}

void Worker::OnSent(void* request, ucs_status_t status, void* user) {
  auto* sent = static_cast<Sent*>(user);  // a failed send fails its endpoint too: OnEndpointError says so
  if (sent->done) {
    sent->worker->events_.push_back(Event{Event::kDone, nullptr, nullptr, 0, {},
                                          status == UCS_OK ? Status::Ok() : FromUcs(status, "the send"),
                                          std::move(sent->done)});
  }
  delete sent;
  ucp_request_free(request);
}

void Worker::OnRead(void* request, ucs_status_t status, void* user) {
  auto* read = static_cast<Read*>(user);
  read->worker->events_.push_back(Event{Event::kDone, nullptr, nullptr, 0, {},
                                        status == UCS_OK ? Status::Ok() : FromUcs(status, "the read"),
                                        std::move(read->done)});
  delete read;
  ucp_request_free(request);
}

}  // namespace gpubroker::ucx

#include "client/src/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "common/seqpacket.h"

namespace gpubroker {

MappedAllocation::~MappedAllocation() {
  mapping.reset();  // unmap before the lease goes
  if (!leased) return;
  if (auto c = connection.lock()) c->Detach(allocation_id);
}

namespace {

Result<UniqueFd> Dial(const ConnectOptions& options) {
  GPB_ASSIGN_OR_RETURN(UniqueFd fd, ConnectSeqpacket(options.socket_path));
  timeval tv{options.reply_timeout_ms / 1000, (options.reply_timeout_ms % 1000) * 1000};
  if (options.reply_timeout_ms > 0) {
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  return fd;
}

}  // namespace

Result<std::shared_ptr<Connection>> Connection::Open(const ConnectOptions& options) {
  std::shared_ptr<Connection> c(new Connection());
  c->options_ = options;
  if (c->options_.client_name.empty()) {
    c->options_.client_name = std::string(program_invocation_short_name).substr(0, 63);
  } else if (c->options_.client_name.size() > 63 ||
             c->options_.client_name.find('\0') != std::string::npos) {
    return InvalidArgument("client name must be at most 63 bytes with no NUL");
  }
  GPB_ASSIGN_OR_RETURN(c->socket_, Dial(options));
  {
    std::lock_guard lock(c->mu_);
    GPB_RETURN_IF_ERROR(c->HelloLocked());
  }
  return c;
}

Status Connection::HelloLocked() {
  wire::HelloRequest hello{};
  hello.protocol_version = wire::kProtocolVersion;
  hello.pid = ::getpid();
  hello.client_name.set(options_.client_name);
  greeted_ = false;
  GPB_ASSIGN_OR_RETURN(ReplyWithFd reply, SendAndReceiveLocked(wire::EncodeRequest(0, hello)));
  GPB_RETURN_IF_ERROR(ExpectType(reply.frame, static_cast<uint16_t>(wire::MsgType::kHello)));
  GPB_ASSIGN_OR_RETURN(hello_, wire::Decode<wire::HelloReply>(reply.frame.payload));
  greeted_ = true;
  // The registry comes with the hello; mapped here, so the first attach
  // pays nothing for it. Should it fail, lookups say why and attaches go
  // through the broker.
  Result<RegistryReader> reader = reply.fd.valid()
                                      ? RegistryReader::FromFd(std::move(reply.fd))
                                      : Result<RegistryReader>(ProtocolError("the broker sent no registry"));
  if (reader.ok() && reader->boot_generation() != hello_.boot_generation) {
    reader = Unavailable("the registry belongs to another broker start");
  }
  std::lock_guard lock(cache_mu_);
  registry_.reset();
  if (reader.ok()) {
    registry_.emplace(std::move(reader).value());
  } else {
    registry_error_ = reader.status();
  }
  return Status::Ok();
}

// The broker went away (a restart, a crash): dial again until it answers or
// the reconnect timeout passes, then re-take this client's leases.
Status Connection::ReconnectLocked() {
  if (options_.reconnect_timeout_ms <= 0) return *broken_;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.reconnect_timeout_ms);
  while (true) {
    auto fd = Dial(options_);
    if (fd.ok()) {
      socket_ = std::move(fd).value();
      broken_.reset();
      if (HelloLocked().ok()) break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      broken_ = Unavailable("broker unavailable: no broker answered at " + options_.socket_path +
                            " within " + std::to_string(options_.reconnect_timeout_ms) + " ms");
      return *broken_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // waiting for a restart
  }
  RetakeLeasesLocked();
  return Status::Ok();
}

void Connection::RetakeLeasesLocked() {
  std::vector<std::shared_ptr<MappedAllocation>> mapped;
  {
    std::lock_guard lock(cache_mu_);
    for (auto& [id, weak] : cache_) {
      if (auto m = weak.lock()) mapped.push_back(std::move(m));
    }
  }
  for (auto& m : mapped) {
    wire::AttachRequest attach{};
    attach.name.set(m->slot);
    attach.flags = m->writable ? 0u : uint32_t{wire::kAttachReadOnly};
    auto reply = SendAndReceiveLocked(wire::EncodeRequest(0, attach));
    bool ok = reply.ok() && ExpectType(reply->frame, static_cast<uint16_t>(wire::MsgType::kAttach)).ok();
    auto decoded = ok ? wire::Decode<wire::AttachReply>(reply->frame.payload)
                      : Result<wire::AttachReply>(ProtocolError(""));
    if (decoded.ok() && decoded->slot.allocation_id == m->allocation_id) continue;  // leased again
    m->leased = false;  // still mapped and valid, but no longer known by name
    if (decoded.ok()) {  // the name now leads elsewhere: give that lease back
      (void)SendAndReceiveLocked(wire::EncodeRequest(0, wire::DetachRequest{decoded->slot.allocation_id}));
    }
  }
}

Result<ReplyWithFd> Connection::ExchangeLocked(std::vector<std::byte> request) {
  if (broken_) GPB_RETURN_IF_ERROR(ReconnectLocked());
  bool delivered = false;
  auto reply = SendAndReceiveLocked(request, &delivered);
  // The broker went away since the last call (a restart): the request never
  // reached it, so sending it again after reconnecting is safe.
  if (!reply.ok() && broken_ && !delivered && options_.reconnect_timeout_ms > 0) {
    GPB_RETURN_IF_ERROR(ReconnectLocked());
    reply = SendAndReceiveLocked(std::move(request));
  }
  return reply;
}

Result<ReplyWithFd> Connection::SendAndReceiveLocked(std::vector<std::byte> request, bool* delivered) {
  if (broken_) return *broken_;
  uint32_t id = ++next_id_;
  if (id == 0) id = ++next_id_;  // 0 marks unsolicited messages
  std::memcpy(request.data() + offsetof(wire::Header, request_id), &id, sizeof id);
  auto sent = SendRecord(socket_.get(), request, -1, false);
  if (delivered != nullptr) *delivered = sent.ok() && *sent;
  if (!sent.ok() || !*sent) {
    broken_ = Unavailable("broker unavailable: cannot send request (" +
                          (sent.ok() ? std::string("timed out") : sent.status().message()) + ")");
    // The broker may have said why before it closed (e.g. too many connections).
    auto r = ReceiveRecord(socket_.get(), receive_buffer_, true);
    if (r.ok() && r->size > 0) {
      auto frame = wire::ParseFrame(std::span(receive_buffer_).first(r->size));
      if (frame.ok() && frame->type == wire::MsgType::kError) {
        auto e = wire::Decode<wire::ErrorReply>(frame->payload);
        if (e.ok()) broken_ = Status(static_cast<Code>(e->code), std::string(e->message.view()));
      }
    }
    return *broken_;
  }
  ReplyWithFd reply;
  while (true) {
    auto r = ReceiveRecord(socket_.get(), receive_buffer_, false);
    if (!r.ok() || r->closed || r->would_block) {
      std::string why = !r.ok() ? r.status().message()
                        : r->closed ? (greeted_ ? "the broker closed the connection"
                                                : "the broker closed the connection before answering hello "
                                                  "(it is over a connection limit, or stopping: its log says which)")
                                    : "no reply within the timeout";
      broken_ = Unavailable("broker unavailable: " + why);
      return *broken_;
    }
    if (r->truncated) return ProtocolError("reply exceeds the message size limit");
    auto frame = wire::ParseFrame(std::span(receive_buffer_).first(r->size));
    if (!frame.ok()) return frame.status();
    if (frame->type == wire::MsgType::kNotice) {
      auto notice = wire::Decode<wire::Notice>(frame->payload);
      if (notice.ok() && notice->kind == wire::kNoticeStopping) {
        broken_ = Unavailable("broker unavailable: " + std::string(notice->message.view()));
      }
      continue;  // the reply (or the close) follows
    }
    if (frame->type == wire::MsgType::kError && frame->request_id == 0) {
      // About the connection itself (e.g. refused at accept): the broker closes it next.
      auto e = wire::Decode<wire::ErrorReply>(frame->payload);
      broken_ = e.ok() ? Status(static_cast<Code>(e->code), std::string(e->message.view()))
                       : Unavailable("broker unavailable: the broker refused the connection");
      return *broken_;
    }
    if (frame->request_id != id) continue;  // a reply to an earlier request we gave up on
    reply.bytes.assign(receive_buffer_.begin(), receive_buffer_.begin() + static_cast<ptrdiff_t>(r->size));
    reply.frame = *wire::ParseFrame(reply.bytes);
    if (!r->fds.empty()) reply.fd = std::move(r->fds.front());
    return reply;
  }
}

Status Connection::ExpectType(const wire::Frame& frame, uint16_t type) const {
  if (frame.type == wire::MsgType::kError) {
    auto e = wire::Decode<wire::ErrorReply>(frame.payload);
    if (!e.ok()) return e.status();
    return Status(static_cast<Code>(e->code), std::string(e->message.view()));
  }
  if (!frame.reply || static_cast<uint16_t>(frame.type) != type) {
    return ProtocolError("expected a " + wire::TypeName(type) + " reply, got " +
                         wire::TypeName(static_cast<uint16_t>(frame.type)));
  }
  return Status::Ok();
}

std::shared_ptr<MappedAllocation> Connection::Cached(uint64_t allocation_id) {
  std::lock_guard lock(cache_mu_);
  auto it = cache_.find(allocation_id);
  return it == cache_.end() ? nullptr : it->second.lock();
}

Result<std::shared_ptr<MappedAllocation>> Connection::Map(const wire::AttachReply& reply, UniqueFd fd) {
  const SlotDescriptor& slot = reply.slot;
  bool writable = (reply.access & wire::kAccessWrite) != 0;
  // Join an existing mapping unless this attach grants write and it does not:
  // then map again, writable, and let later attaches find the new one (views
  // of the read-only mapping keep it, and its lease, until they go).
  if (auto existing = Cached(slot.allocation_id); existing && (existing->writable || !writable)) {
    Detach(slot.allocation_id);  // one lease per allocation per connection
    return existing;
  }
  auto mapped = slot.backend == static_cast<uint16_t>(BackendKind::kHost)
                    ? MapHost(slot, std::move(fd), writable)
                    : MapCuda(slot, std::move(fd), writable);
  if (!mapped.ok()) {
    Detach(slot.allocation_id);  // give the lease back: nothing maps it
    return mapped.status().Annotate("mapping slot '" + std::string(slot.name) + "'");
  }
  auto m = std::make_shared<MappedAllocation>();
  m->allocation_id = slot.allocation_id;
  m->slot = slot.name;
  m->writable = writable;
  m->base = (*mapped)->base();
  m->size = (*mapped)->size();
  m->device = (*mapped)->device();
  m->mapping = std::move(mapped).value();
  m->connection = weak_from_this();
  std::lock_guard lock(cache_mu_);
  cache_[slot.allocation_id] = m;
  return m;
}

void Connection::Detach(uint64_t allocation_id) {
  {
    std::lock_guard lock(cache_mu_);
    auto it = cache_.find(allocation_id);
    if (it != cache_.end() && it->second.expired()) cache_.erase(it);
  }
  // No reconnect here: if the broker went away, the lease went with it.
  std::lock_guard lock(mu_);
  (void)SendAndReceiveLocked(wire::EncodeRequest(0, wire::DetachRequest{allocation_id}));
}

Result<const RegistryReader*> Connection::Registry() {
  std::lock_guard lock(cache_mu_);
  if (!registry_) return registry_error_;
  return &*registry_;
}

}  // namespace gpubroker

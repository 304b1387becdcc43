#include "connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "seqpacket.h"

namespace gpubroker {

MappedAllocation::~MappedAllocation() {
  mapping.reset();  // unmap before the lease goes
  if (auto c = connection.lock()) c->Detach(allocation_id);
}

Result<std::shared_ptr<Connection>> Connection::Open(const ConnectOptions& options) {
  std::shared_ptr<Connection> c(new Connection());
  GPB_ASSIGN_OR_RETURN(c->socket_, ConnectSeqpacket(options.socket_path));
  timeval tv{options.reply_timeout_ms / 1000, (options.reply_timeout_ms % 1000) * 1000};
  if (options.reply_timeout_ms > 0) {
    ::setsockopt(c->socket_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(c->socket_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  wire::HelloRequest hello{};
  hello.protocol_version = wire::kProtocolVersion;
  hello.pid = ::getpid();
  std::string name = options.client_name;
  if (name.empty()) name = program_invocation_short_name;
  hello.client_name.set(name);
  GPB_ASSIGN_OR_RETURN(c->hello_, c->Call<wire::HelloReply>(hello));
  return c;
}

Result<ReplyWithFd> Connection::ExchangeLocked(std::vector<std::byte> request) {
  if (broken_) return *broken_;
  uint32_t id = ++next_id_;
  if (id == 0) id = ++next_id_;  // 0 marks unsolicited messages
  std::memcpy(request.data() + offsetof(wire::Header, request_id), &id, sizeof id);
  auto sent = SendRecord(socket_.get(), request, -1, false);
  if (!sent.ok() || !*sent) {
    broken_ = Unavailable("broker unavailable: cannot send request (" +
                          (sent.ok() ? std::string("timed out") : sent.status().message()) + ")");
    return *broken_;
  }
  ReplyWithFd reply;
  while (true) {
    auto r = ReceiveRecord(socket_.get(), receive_buffer_, false);
    if (!r.ok() || r->closed || r->would_block) {
      std::string why = !r.ok() ? r.status().message()
                        : r->closed ? "the broker closed the connection"
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
  if (auto existing = Cached(slot.allocation_id)) {
    Detach(slot.allocation_id);  // one lease per allocation per connection
    return existing;
  }
  bool writable = (reply.access & wire::kAccessWrite) != 0;
  auto mapped = slot.backend == static_cast<uint16_t>(BackendKind::kHost)
                    ? MapHost(slot, std::move(fd), writable)
                    : MapCuda(slot, std::move(fd), writable);
  if (!mapped.ok()) {
    Detach(slot.allocation_id);  // give the lease back: nothing maps it
    return mapped.status().Annotate("mapping slot '" + std::string(slot.name) + "'");
  }
  auto m = std::make_shared<MappedAllocation>();
  m->allocation_id = slot.allocation_id;
  m->writable = writable;
  m->base = (*mapped)->base();
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
  (void)Call<wire::DetachReply>(wire::DetachRequest{allocation_id});
}

Result<const RegistryReader*> Connection::Registry() {
  std::lock_guard lock(cache_mu_);
  if (!registry_) {
    GPB_ASSIGN_OR_RETURN(RegistryReader r, RegistryReader::Open(std::string(hello_.registry_name.view())));
    if (r.boot_generation() != hello_.boot_generation) {
      return Unavailable("the registry segment belongs to another broker start");
    }
    registry_.emplace(std::move(r));
  }
  return &*registry_;
}

}  // namespace gpubroker

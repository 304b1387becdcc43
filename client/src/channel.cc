#include "client/src/channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <thread>

#include "common/seqpacket.h"
#include "common/parse.h"
#include "common/socket_path.h"

namespace gpubroker {
namespace {

Result<UniqueFd> Dial(const ConnectOptions& options) {
  GPB_ASSIGN_OR_RETURN(UniqueFd fd, ConnectSeqpacket(options.socket_path));
  GPB_RETURN_IF_ERROR(VerifyBrokerPeer(fd.get(), options.socket_path));
  timeval tv{options.reply_timeout_ms / 1000, (options.reply_timeout_ms % 1000) * 1000};
  if (options.reply_timeout_ms > 0) {
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  return fd;
}

Status FromErrorReply(const wire::Frame& frame) {
  auto e = wire::Decode<wire::ErrorReply>(frame.payload);
  if (!e.ok()) return e.status();
  // Text from the broker is escaped before anyone prints it: a broker that is
  // not what it claims could send terminal escapes.
  return Status(static_cast<Code>(e->code), Printable(e->message.view()));
}

}  // namespace

Result<std::shared_ptr<Channel>> Channel::Open(const ConnectOptions& options, Hooks hooks) {
  std::shared_ptr<Channel> c(new Channel());
  c->options_ = options;
  c->hooks_ = std::move(hooks);
  if (c->options_.client_name.empty()) {
    c->options_.client_name = std::string(program_invocation_short_name).substr(0, 63);
  } else if (c->options_.client_name.size() > 63 ||
             c->options_.client_name.find('\0') != std::string::npos) {
    return InvalidArgument("client name must be at most 63 bytes with no NUL");
  }
  MutexLock lock(c->mu_);
  GPB_ASSIGN_OR_RETURN(c->socket_, Dial(c->options_));
  c->socket_fd_.store(c->socket_.get(), std::memory_order_release);
  GPB_RETURN_IF_ERROR(c->HelloLocked());
  return c;
}

uint64_t Channel::client_id() {
  MutexLock lock(mu_);
  return hello_.client_id;
}

Status Channel::HelloLocked() {
  wire::HelloRequest hello{};
  hello.protocol_version = wire::kProtocolVersion;
  hello.pid = ::getpid();
  hello.client_name.set(options_.client_name);
  greeted_ = false;
  GPB_ASSIGN_OR_RETURN(ReplyWithFd reply, SendAndReceiveLocked(wire::EncodeRequest(0, hello)));
  GPB_RETURN_IF_ERROR(ExpectType(reply.frame, static_cast<uint16_t>(wire::MsgType::kHello)));
  GPB_ASSIGN_OR_RETURN(hello_, wire::Decode<wire::HelloReply>(reply.frame.payload));
  greeted_ = true;
  if (hooks_.greeted) hooks_.greeted(hello_, std::move(reply.fd));
  return Status::Ok();
}

// The broker went away (a restart, a crash): dial again until it answers or
// the reconnect timeout passes, then re-take this client's leases.
Status Channel::Reconnect(std::chrono::milliseconds limit) {
  MutexLock lock(mu_);
  if (!broken_) {
    auto probe = SendAndReceiveLocked(wire::EncodeRequest(0, wire::StatusRequest{}));
    if (probe.ok() || !broken_) return probe.status();
  }
  return ReconnectLocked(limit);
}

bool Channel::PeerHungUp() const {
  pollfd p{socket_fd_.load(std::memory_order_acquire), POLLRDHUP, 0};
  if (p.fd < 0) return true;
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0;
}

Status Channel::ReconnectLocked(std::chrono::milliseconds limit) {
  if (options_.reconnect_timeout_ms <= 0) return *broken_;
  std::chrono::milliseconds allowed(options_.reconnect_timeout_ms);
  if (limit.count() >= 0 && limit < allowed) allowed = limit;
  auto deadline = std::chrono::steady_clock::now() + allowed;
  bool said = false;
  while (true) {
    auto fd = Dial(options_);
    if (fd.ok()) {
      socket_ = std::move(fd).value();
      socket_fd_.store(socket_.get(), std::memory_order_release);
      broken_.reset();
      if (HelloLocked().ok()) break;
    }
    // Not silently: a caller blocked here for seconds learns why, once per
    // outage, and how to wait less. A restart that answers the first dial
    // prints nothing.
    if (!said && allowed.count() >= 1000) {
      std::fprintf(stderr,
                   "gpubroker: the broker at %s is gone (%s); reconnecting for up to %lld s "
                   "(ConnectOptions::reconnect_timeout_ms, Python connect(reconnect_timeout=...); 0: fail at once)\n",
                   options_.socket_path.c_str(), broken_ ? broken_->message().c_str() : "no answer",
                   static_cast<long long>(allowed.count() / 1000));
      said = true;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      broken_ = Unavailable("broker unavailable: no broker answered at " + options_.socket_path +
                            " within " + std::to_string(allowed.count()) + " ms");
      return *broken_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // waiting for a restart
  }
  connection_.fetch_add(1, std::memory_order_acq_rel);
  RetakeLeasesLocked();
  return Status::Ok();
}

// Takes again, by slot name, every lease this process held. Works on plain
// data from the hooks: no mapping is owned here, so none can be destroyed
// (and send a detach, which needs this lock) while the lock is held.
void Channel::RetakeLeasesLocked() {
  if (!hooks_.leases) return;
  for (const LeaseClaim& claim : hooks_.leases()) {
    wire::AttachRequest attach{};
    attach.name.set(claim.slot);
    attach.flags = claim.writable ? 0u : uint32_t{wire::kAttachReadOnly};
    auto reply = SendAndReceiveLocked(wire::EncodeRequest(0, attach));
    bool ok = reply.ok() && ExpectType(reply->frame, static_cast<uint16_t>(wire::MsgType::kAttach)).ok();
    auto decoded = ok ? wire::Decode<wire::AttachReply>(reply->frame.payload)
                      : Result<wire::AttachReply>(ProtocolError("attach refused"));
    if (decoded.ok() && decoded->slot.allocation_id == claim.allocation_id) continue;  // leased again
    if (hooks_.lost) hooks_.lost(claim.allocation_id);  // still mapped and valid, no longer known by name
    if (decoded.ok()) {  // the name now leads elsewhere: give that lease back
      (void)SendAndReceiveLocked(wire::EncodeRequest(0, wire::DetachRequest{decoded->slot.allocation_id}));
    }
  }
}

Result<ReplyWithFd> Channel::ExchangeLocked(std::vector<std::byte> request) {
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

Result<ReplyWithFd> Channel::SendAndReceiveLocked(std::vector<std::byte> request, bool* delivered) {
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
      if (frame.ok() && frame->type == wire::MsgType::kError) broken_ = FromErrorReply(*frame);
    }
    return *broken_;
  }
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
        broken_ = Unavailable("broker unavailable: " + Printable(notice->message.view()));
      }
      continue;  // the reply (or the close) follows
    }
    if (frame->type == wire::MsgType::kError && frame->request_id == 0) {
      // About the connection itself (e.g. refused at accept): the broker closes it next.
      broken_ = FromErrorReply(*frame);
      return *broken_;
    }
    if (frame->request_id != id) continue;  // a reply to an earlier request we gave up on
    ReplyWithFd reply;
    reply.bytes.assign(receive_buffer_.begin(), receive_buffer_.begin() + static_cast<ptrdiff_t>(r->size));
    reply.frame = *wire::ParseFrame(reply.bytes);
    if (!r->fds.empty()) reply.fd = std::move(r->fds.front());
    return reply;
  }
}

Status Channel::ExpectType(const wire::Frame& frame, uint16_t type) {
  if (frame.type == wire::MsgType::kError) return FromErrorReply(frame);
  if (!frame.reply || static_cast<uint16_t>(frame.type) != type) {
    return ProtocolError("expected a " + wire::TypeName(type) + " reply, got " +
                         wire::TypeName(static_cast<uint16_t>(frame.type)));
  }
  return Status::Ok();
}

void Channel::Detach(uint64_t allocation_id) {
  MutexLock lock(mu_);
  (void)SendAndReceiveLocked(wire::EncodeRequest(0, wire::DetachRequest{allocation_id}));
}

}  // namespace gpubroker

// The writer of versions (docs/live.md): the client's half of the rules
// request_handler_live.cc keeps; reader.cc has the reader's. Begin and commit
// are one message each.
//
// CUDA memory: a commit is sent once the writer's stream has run the writes
// queued before it (at once if it has already, else from a background
// thread that waits for it; never the caller), so every version a reader
// can acquire is whole in memory, and a writer that dies before its work
// finished publishes nothing.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "client/src/channel.h"
#include "client/src/client_core.h"
#include "client/src/live_cuda.h"
#include "client/src/live_support.h"
#include "common/futex.h"

namespace gpubroker {

using live::Clock;
using live::DeadlineAfter;
using live::Left;
using live::LiveLocator;
using live::StillNamed;
using live::kLivenessSlice;

// A commit on its way: sent by the stream watcher once the writes are done.
struct PendingCommit {
  std::mutex mu;
  std::condition_variable cv;
  bool in_flight = false;
  Status status;  // of the last one sent

  void Finish(Status s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      in_flight = false;
      status = std::move(s);
    }
    cv.notify_all();
  }
  // Waits for the one in flight, if any; returns (and forgets) its outcome.
  Status Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [this] { return !in_flight; });
    return std::exchange(status, Status::Ok());
  }
  // The same, until `deadline` at most (none: no limit); kBusy if it is
  // still waiting for its stream then.
  Status Wait(std::optional<std::chrono::steady_clock::time_point> deadline) {
    if (!deadline) return Wait();
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_until(lock, *deadline, [this] { return !in_flight; })) {
      return Busy("the previous commit is still waiting for the writer's stream to run its writes");
    }
    return std::exchange(status, Status::Ok());
  }
};

// Calls on one Writer are serialised by its lock (a Begin that waits holds
// off the others): safe from any thread, and meant for one.
struct Writer::State {
  std::shared_ptr<Channel> channel;
  const View view;
  std::shared_ptr<PendingCommit> pending = std::make_shared<PendingCommit>();
  Mutex mu;
  LiveLocator locator GPB_GUARDED_BY(mu);
  int32_t begun GPB_GUARDED_BY(mu) = -1;
  uint64_t next_version GPB_GUARDED_BY(mu) = 0;

  State(std::shared_ptr<Channel> ch, std::shared_ptr<MappingCache> cache, View v)
      : channel(std::move(ch)), view(std::move(v)), locator(std::move(cache), view) {}
  ~State() { (void)pending->Wait(); }  // a commit on its way still lands
  uint64_t allocation_id() const { return view.slot().allocation_id; }
};

Writer::Writer(std::unique_ptr<State> state) : state_(std::move(state)) {}
Writer::Writer(Writer&&) noexcept = default;
Writer& Writer::operator=(Writer&& other) noexcept {
  if (this != &other) {
    if (state_) (void)Abort();
    state_ = std::move(other.state_);
  }
  return *this;
}
Writer::~Writer() {
  if (!state_) return;
  (void)state_->pending->Wait();
  MutexLock lock(state_->mu);
  if (state_->begun >= 0) {
    wire::CommitRequest m{};
    m.allocation_id = state_->allocation_id();
    m.buffer = state_->begun;
    m.flags = wire::kCommitAbort;
    state_->channel->CallDroppingReply(m);
  }
}

const View& Writer::view() const {
  static const View kNone;
  return state_ ? state_->view : kNone;
}
uint32_t Writer::buffers() const { return state_ ? state_->view.slot().buffers : 0; }
uint64_t Writer::next_version() const {
  if (!state_) return 0;
  MutexLock lock(state_->mu);
  return state_->begun >= 0 ? state_->next_version : 0;
}

Result<uint32_t> Writer::Begin(int wait_ms) {
  if (!state_) return InvalidArgument("this writer is empty");
  MutexLock lock(state_->mu);
  if (state_->begun >= 0) {
    return InvalidArgument("buffer " + std::to_string(state_->begun) + " is begun already: commit or abort it");
  }
  std::optional<Clock::time_point> deadline = DeadlineAfter(wait_ms);
  // The previous commit first: it is sent once the writer's own stream has
  // run its writes. Within wait_ms when one is given; 0 (no wait for
  // readers) still lets this writer's own commit land.
  GPB_RETURN_IF_ERROR(state_->pending->Wait(wait_ms == 0 ? std::nullopt : deadline).Annotate("the previous commit"));
  while (true) {
    // The word first: a release between it and the refusal wakes the wait.
    GPB_ASSIGN_OR_RETURN(auto where, state_->locator.Locate());
    const std::atomic<uint32_t>* releases = where.first->ReleasesWord(where.second);
    uint32_t seen = releases != nullptr ? releases->load(std::memory_order_acquire) : 0;
    wire::WriteBeginRequest m{state_->allocation_id(), 0};
    auto reply = state_->channel->Call<wire::WriteBeginReply>(m);
    if (reply.ok()) {
      state_->begun = reply->buffer;
      state_->next_version = reply->version + 1;
      return static_cast<uint32_t>(reply->buffer);
    }
    if (reply.status().code() == Code::kNotFound) {
      // The lease is gone: the slot was destroyed, or the broker restarted
      // without it. The registry now (after a reconnect, the new broker's)
      // says which, by name.
      GPB_ASSIGN_OR_RETURN(auto now, state_->locator.Locate());
      GPB_RETURN_IF_ERROR(StillNamed(*now.first, state_->view));
      return reply.status();
    }
    if (reply.status().code() != Code::kBusy || wait_ms == 0 || releases == nullptr) return reply.status();
    std::chrono::nanoseconds left = Left(deadline);
    if (left.count() == 0) return reply.status().Annotate("after waiting " + std::to_string(wait_ms) + " ms");
    if (left.count() < 0 || left > kLivenessSlice) left = kLivenessSlice;
    FutexWait(releases, seen, left);
  }
}

Result<uint64_t> Writer::Commit(void* stream) {
  if (!state_) return InvalidArgument("this writer is empty");
  MutexLock lock(state_->mu);
  if (state_->begun < 0) return InvalidArgument("no buffer is begun: call Begin first");
  wire::CommitRequest m{};
  m.allocation_id = state_->allocation_id();
  m.buffer = state_->begun;
  const bool cuda = state_->view.device().type == Device::kCuda;
  Result<bool> done = cuda ? StreamIdle(state_->view.device().ordinal, stream) : Result<bool>(true);
  if (!done.ok()) {  // the writes failed: the buffer goes back unpublished
    m.flags = wire::kCommitAbort;
    state_->channel->CallDroppingReply(m);
    state_->begun = -1;
    return done.status().Annotate("the writer's stream");
  }
  if (!*done) {
    std::shared_ptr<PendingCommit> pending = state_->pending;
    std::weak_ptr<Channel> channel = state_->channel;
    {
      std::lock_guard<std::mutex> lock(pending->mu);
      pending->in_flight = true;
    }
    Status queued = WhenStreamDone(state_->view.device().ordinal, stream, [pending, channel, m](Status done) {
      auto c = channel.lock();
      if (!c) return pending->Finish(Unavailable("the client is gone"));
      if (!done.ok()) {  // the writes failed: the buffer goes back unpublished
        wire::CommitRequest abort = m;
        abort.flags = wire::kCommitAbort;
        c->CallDroppingReply(abort);
        return pending->Finish(done.Annotate("the writer's stream"));
      }
      pending->Finish(c->Call<wire::CommitReply>(m).status());
    });
    if (!queued.ok()) {  // as for failed writes: the buffer goes back unpublished, the write ends
      pending->Finish(Status::Ok());
      m.flags = wire::kCommitAbort;
      state_->channel->CallDroppingReply(m);
      state_->begun = -1;
      return queued.Annotate("the writer's stream");
    }
    state_->begun = -1;
    return state_->next_version;
  }
  // Host memory, or a stream that has run the writes already: now.
  std::atomic_thread_fence(std::memory_order_release);
  auto reply = state_->channel->Call<wire::CommitReply>(m);
  state_->begun = -1;  // committed, or given up by the broker with the connection
  if (!reply.ok()) return reply.status();
  return reply->version;
}

Status Writer::Abort() {
  if (!state_) return InvalidArgument("this writer is empty");
  MutexLock lock(state_->mu);
  if (state_->begun < 0) return Status::Ok();
  wire::CommitRequest m{};
  m.allocation_id = state_->allocation_id();
  m.buffer = state_->begun;
  m.flags = wire::kCommitAbort;
  state_->begun = -1;
  return state_->channel->Call<wire::CommitReply>(m).status();
}

Result<Writer> Client::OpenWriter(std::string_view name) {
  GPB_ASSIGN_OR_RETURN(View view, Attach(name, AttachMode::kReadWrite));
  if (!view.writable()) return PermissionDenied("slot '" + std::string(name) + "' is not writable by this user");
  return Writer(std::make_unique<Writer::State>(core_->channel, core_->cache, std::move(view)));
}

}  // namespace gpubroker

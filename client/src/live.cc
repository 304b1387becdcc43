// Writers and readers of versions (docs/live.md): the client's half of the
// rules request_handler_live.cc keeps. Waiting is a futex on the registry's
// live record; begin, commit, acquire and release are one message each.
//
// CUDA memory: a commit is sent once the writer's stream has run the writes
// queued before it (at once if it has already, else from a background
// thread that waits for it; never the caller), so every version a reader
// can acquire is whole in memory, and a writer that dies before its work
// finished publishes nothing. A reader's stream therefore waits on nothing
// of the writer's: a CUDA event of a process that died is never signalled,
// and a reader queued behind one would hang. A reader's release of the
// version it read goes the same way: in its next acquire's message if its
// stream is done with the version already, else from the background thread.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "client/src/channel.h"
#include "client/src/client_core.h"
#include "client/src/live_cuda.h"
#include "common/futex.h"

namespace gpubroker {
namespace {

using Clock = std::chrono::steady_clock;

// Where a slot's live record is in the registry this client has now: after a
// broker restart the record moves, so it is looked up again by name.
class LiveLocator {
 public:
  LiveLocator(std::shared_ptr<MappingCache> cache, const View& view) : cache_(std::move(cache)), view_(view) {}

  Result<std::pair<std::shared_ptr<const RegistryReader>, SlotDescriptor>> Locate() {
    GPB_ASSIGN_OR_RETURN(std::shared_ptr<const RegistryReader> registry, cache_->registry());
    if (registry != registry_) {
      GPB_ASSIGN_OR_RETURN(SlotDescriptor d, registry->Lookup(view_.name()));
      if (d.allocation_id != view_.slot().allocation_id) {
        return NotFound("slot '" + view_.name() + "' now names another allocation (it was replaced): open it again");
      }
      registry_ = registry;
      descriptor_ = d;
    }
    return std::make_pair(registry_, descriptor_);
  }

 private:
  std::shared_ptr<MappingCache> cache_;
  const View& view_;
  std::shared_ptr<const RegistryReader> registry_;
  SlotDescriptor descriptor_{};
};

// Milliseconds left until `deadline` (-1 stays "no limit").
std::chrono::nanoseconds Left(std::optional<Clock::time_point> deadline) {
  if (!deadline) return std::chrono::nanoseconds(-1);
  return std::max(std::chrono::nanoseconds(0), *deadline - Clock::now());
}

std::optional<Clock::time_point> DeadlineAfter(int timeout_ms) {
  if (timeout_ms < 0) return std::nullopt;
  return Clock::now() + std::chrono::milliseconds(timeout_ms);
}

// NotFound once the view's name is gone or names another allocation (the
// slot was destroyed, or replaced by a new one of that name).
Status StillNamed(const RegistryReader& registry, const View& view) {
  Result<SlotDescriptor> d = registry.Lookup(view.name());
  if (d.ok() && d->allocation_id == view.slot().allocation_id) return Status::Ok();
  if (!d.ok() && d.status().code() != Code::kNotFound) return Status::Ok();  // unreadable now: not a verdict
  return NotFound("slot '" + view.name() + "' was " + (d.ok() ? "replaced" : "destroyed") + ": open it again");
}

// A wait is cut into slices this long, after each of which the broker's
// liveness is checked: a broker killed outright wakes nobody. While a
// stopping broker still answers, the slices are shorter (its successor is
// looked for as often as a reconnect tries).
constexpr std::chrono::seconds kLivenessSlice{1};
constexpr std::chrono::milliseconds kStoppingSlice{20};

}  // namespace

void* View::data(uint32_t buffer) const {
  if (!mapping_ || buffer >= slot_.buffers) return nullptr;
  return static_cast<std::byte*>(mapping_->base) + buffer * slot_.buffer_bytes + slot_.byte_offset;
}

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
};

struct Writer::State {
  std::shared_ptr<Channel> channel;
  View view;
  LiveLocator locator;
  std::shared_ptr<PendingCommit> pending = std::make_shared<PendingCommit>();
  int32_t begun = -1;
  uint64_t next_version = 0;

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
  if (state_) (void)state_->pending->Wait();
  if (state_ && state_->begun >= 0) {
    wire::CommitRequest m{};
    m.allocation_id = state_->allocation_id();
    m.buffer = state_->begun;
    m.flags = wire::kCommitAbort;
    state_->channel->Tell(m);
  }
}

const View& Writer::view() const {
  static const View kNone;
  return state_ ? state_->view : kNone;
}
uint32_t Writer::buffers() const { return state_ ? state_->view.slot().buffers : 0; }
uint64_t Writer::next_version() const { return state_ && state_->begun >= 0 ? state_->next_version : 0; }

Result<uint32_t> Writer::Begin(int wait_ms) {
  if (!state_) return InvalidArgument("this writer is empty");
  if (state_->begun >= 0) {
    return InvalidArgument("buffer " + std::to_string(state_->begun) + " is begun already: commit or abort it");
  }
  // The previous commit first: it is sent once its writes are done.
  GPB_RETURN_IF_ERROR(state_->pending->Wait().Annotate("the previous commit"));
  std::optional<Clock::time_point> deadline = DeadlineAfter(wait_ms);
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
  if (state_->begun < 0) return InvalidArgument("no buffer is begun: call Begin first");
  wire::CommitRequest m{};
  m.allocation_id = state_->allocation_id();
  m.buffer = state_->begun;
  const bool cuda = state_->view.device().type == Device::kCuda;
  Result<bool> done = cuda ? StreamIdle(state_->view.device().ordinal, stream) : Result<bool>(true);
  if (!done.ok()) {  // the writes failed: the buffer goes back unpublished
    m.flags = wire::kCommitAbort;
    state_->channel->Tell(m);
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
        c->Tell(abort);
        return pending->Finish(done.Annotate("the writer's stream"));
      }
      pending->Finish(c->Call<wire::CommitReply>(m).status());
    });
    if (!queued.ok()) {
      pending->Finish(Status::Ok());
      return queued;
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
  if (state_->begun < 0) return Status::Ok();
  wire::CommitRequest m{};
  m.allocation_id = state_->allocation_id();
  m.buffer = state_->begun;
  m.flags = wire::kCommitAbort;
  state_->begun = -1;
  return state_->channel->Call<wire::CommitReply>(m).status();
}

struct Reader::State {
  std::shared_ptr<Channel> channel;
  View view;
  LiveLocator locator;
  uint64_t pin = 0;  // 0: none held
  uint64_t pinned_writes = 0;
  bool pinned_while_writing = false;

  State(std::shared_ptr<Channel> ch, std::shared_ptr<MappingCache> cache, View v)
      : channel(std::move(ch)), view(std::move(v)), locator(std::move(cache), view) {}
  uint64_t allocation_id() const { return view.slot().allocation_id; }
};

Reader::Reader(std::unique_ptr<State> state) : state_(std::move(state)) {}
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&& other) noexcept {
  if (this != &other) {
    if (state_ && state_->pin != 0) state_->channel->Tell(wire::ReleaseRequest{state_->allocation_id(), state_->pin});
    state_ = std::move(other.state_);
  }
  return *this;
}
Reader::~Reader() {
  if (state_ && state_->pin != 0) state_->channel->Tell(wire::ReleaseRequest{state_->allocation_id(), state_->pin});
}

const View& Reader::view() const {
  static const View kNone;
  return state_ ? state_->view : kNone;
}

Result<uint64_t> Reader::Latest() const {
  if (!state_) return InvalidArgument("this reader is empty");
  GPB_ASSIGN_OR_RETURN(auto where, state_->locator.Locate());
  GPB_ASSIGN_OR_RETURN(LiveState s, where.first->Live(where.second));
  return s.version;
}

Result<uint64_t> Reader::Wait(uint64_t after, int timeout_ms) {
  if (!state_) return InvalidArgument("this reader is empty");
  std::optional<Clock::time_point> deadline = DeadlineAfter(timeout_ms);
  while (true) {
    GPB_ASSIGN_OR_RETURN(auto where, state_->locator.Locate());
    const RegistryReader& registry = *where.first;
    const std::atomic<uint32_t>* commits = registry.CommitsWord(where.second);
    if (commits == nullptr) return ProtocolError("slot '" + state_->view.name() + "' names no live record");
    // The word before the state: a commit after this load changes the word,
    // so the futex below does not sleep through it.
    uint32_t seen = commits->load(std::memory_order_acquire);
    GPB_ASSIGN_OR_RETURN(LiveState s, registry.Live(where.second));
    if (s.version > after) return s.version;
    std::chrono::nanoseconds slice = kLivenessSlice;
    if (!registry.Running() || !registry.BrokerAlive()) {
      // The broker stopped: reconnect to a restarted one (its hello brings
      // its registry), for no longer than this wait may last.
      std::chrono::nanoseconds left = Left(deadline);
      Status up = state_->channel->Reconnect(left.count() < 0 ? std::chrono::milliseconds(-1)
                                                             : std::chrono::ceil<std::chrono::milliseconds>(left));
      if (!up.ok()) {
        if (deadline && Clock::now() >= *deadline) {
          return Timeout("no version after " + std::to_string(after) + " of '" + state_->view.name() +
                         "' within " + std::to_string(timeout_ms) + " ms: the broker is not answering (" +
                         up.message() + ")");
        }
        return up.Annotate("waiting for a version");
      }
      GPB_ASSIGN_OR_RETURN(auto now, state_->locator.Locate());
      if (now.first != where.first) continue;  // a restarted broker's registry
      slice = kStoppingSlice;  // a stopping broker that still answers: look again soon
    }
    // Destroying the name wakes this wait, but the record stays (this
    // reader's own lease keeps the allocation): the name tells. Read after
    // `seen`, so a destroy after this check changes the word and the futex
    // below returns at once.
    GPB_RETURN_IF_ERROR(StillNamed(registry, state_->view));
    std::chrono::nanoseconds left = Left(deadline);
    if (left.count() == 0) {
      return Timeout("no version after " + std::to_string(after) + " of '" + state_->view.name() + "' within " +
                     std::to_string(timeout_ms) + " ms (newest: " + std::to_string(s.version) + ")");
    }
    if (left.count() < 0 || left > slice) left = slice;
    FutexWait(commits, seen, left);
  }
}

Result<Acquired> Reader::Acquire(void* stream) {
  if (!state_) return InvalidArgument("this reader is empty");
  // The version read so far stays pinned until `stream` is done with it: if
  // it is already, the acquire's own message releases it.
  uint64_t release_pin = 0;
  if (state_->pin != 0) {
    Result<bool> idle = state_->view.device().type == Device::kCuda
                            ? StreamIdle(state_->view.device().ordinal, stream)
                            : Result<bool>(true);
    if (idle.ok() && *idle) {
      std::atomic_thread_fence(std::memory_order_release);
      release_pin = state_->pin;
    }
  }
  GPB_ASSIGN_OR_RETURN(wire::AcquireReply reply, state_->channel->Call<wire::AcquireReply>(
                                                     wire::AcquireRequest{state_->allocation_id(), release_pin}));
  if (release_pin != 0) state_->pin = 0;
  if (static_cast<uint32_t>(reply.buffer) >= state_->view.slot().buffers) {
    return ProtocolError("acquire reply names buffer " + std::to_string(reply.buffer) + " of " +
                         std::to_string(state_->view.slot().buffers));
  }
  if (state_->pin != 0) GPB_RETURN_IF_ERROR(Release(stream));
  state_->pin = reply.pin;
  state_->pinned_writes = reply.writes;
  state_->pinned_while_writing = (reply.flags & wire::kAcquireWriting) != 0;
  std::atomic_thread_fence(std::memory_order_acquire);
  Acquired a;
  a.version = reply.version;
  a.buffer = static_cast<uint32_t>(reply.buffer);
  a.committed_ns = reply.committed_ns;
  a.writing = state_->pinned_while_writing;
  return a;
}

Status Reader::Release(void* stream) {
  if (!state_) return InvalidArgument("this reader is empty");
  if (state_->pin == 0) return Status::Ok();
  wire::ReleaseRequest m{state_->allocation_id(), state_->pin};
  state_->pin = 0;
  if (state_->view.device().type == Device::kCuda) {
    std::weak_ptr<Channel> channel = state_->channel;
    return WhenStreamDone(state_->view.device().ordinal, stream, [channel, m](Status) {
      if (auto c = channel.lock()) c->Tell(m);
    });
  }
  std::atomic_thread_fence(std::memory_order_release);
  return state_->channel->Call<wire::ReleaseReply>(m).status();
}

Result<bool> Reader::Unchanged() const {
  if (!state_) return InvalidArgument("this reader is empty");
  if (state_->view.slot().buffers > 1) return true;
  std::atomic_thread_fence(std::memory_order_acquire);
  GPB_ASSIGN_OR_RETURN(auto where, state_->locator.Locate());
  GPB_ASSIGN_OR_RETURN(LiveState s, where.first->Live(where.second));
  return !state_->pinned_while_writing && s.writes == state_->pinned_writes;
}

Result<Writer> Client::OpenWriter(std::string_view name) {
  GPB_ASSIGN_OR_RETURN(View view, Attach(name, AttachMode::kReadWrite));
  if (!view.writable()) return PermissionDenied("slot '" + std::string(name) + "' is not writable by this user");
  return Writer(std::make_unique<Writer::State>(core_->channel, core_->cache, std::move(view)));
}

Result<Reader> Client::OpenReader(std::string_view name) {
  GPB_ASSIGN_OR_RETURN(View view, Attach(name, AttachMode::kReadOnly));
  return Reader(std::make_unique<Reader::State>(core_->channel, core_->cache, std::move(view)));
}

}  // namespace gpubroker

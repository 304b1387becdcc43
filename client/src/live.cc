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
#include <thread>

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

// Sleeps until `word` moves from `seen` or `until` passes. Anyone who maps
// the registry can wake the word's waiters at will; a wake that changed
// nothing costs a load and goes back to sleep, and a flood of them (more
// than kWakesBeforeBackoff in a row) turns the futex into a check every
// kBackoff until the word moves: a neighbour's wakes cost this process at
// most ~1,000 loads a second, and a commit at most kBackoff of latency
// while the flood lasts.
constexpr int kWakesBeforeBackoff = 64;
constexpr std::chrono::milliseconds kBackoff{1};

void SleepWhileUnchanged(const std::atomic<uint32_t>* word, uint32_t seen, Clock::time_point until) {
  int empty_wakes = 0;
  while (word->load(std::memory_order_acquire) == seen) {
    auto left = until - Clock::now();
    if (left <= Clock::duration::zero()) return;
    if (empty_wakes < kWakesBeforeBackoff) {
      FutexWait(word, seen, left);
      ++empty_wakes;
    } else {
      std::this_thread::sleep_for(std::min<Clock::duration>(left, kBackoff));  // under a flood of wakes
    }
  }
}

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
    state_->channel->Tell(m);
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
    if (!queued.ok()) {  // as for failed writes: the buffer goes back unpublished, the write ends
      pending->Finish(Status::Ok());
      m.flags = wire::kCommitAbort;
      state_->channel->Tell(m);
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

// Every call on a Reader takes its lock (the C ABI promises any thread), but
// a Wait holds it only to read where the record is, never while it sleeps.
struct Reader::State {
  std::shared_ptr<Channel> channel;
  const View view;
  Mutex mu;
  LiveLocator locator GPB_GUARDED_BY(mu);
  uint64_t pin GPB_GUARDED_BY(mu) = 0;  // 0: none held
  // Where the pin is, and on which connection it was granted (a broker
  // restarted since carries it for a while: TakeOverPinLocked).
  int32_t pin_buffer GPB_GUARDED_BY(mu) = -1;
  uint64_t pin_version GPB_GUARDED_BY(mu) = 0;
  uint64_t pin_connection GPB_GUARDED_BY(mu) = 0;
  // The pin was lost with the broker that granted it: what was read may
  // have been overwritten (Unchanged says so until the next acquire).
  bool pin_lost GPB_GUARDED_BY(mu) = false;
  uint64_t pinned_writes GPB_GUARDED_BY(mu) = 0;
  bool pinned_while_writing GPB_GUARDED_BY(mu) = false;
  // The stream of the last acquire: what closing the reader waits for.
  void* last_stream GPB_GUARDED_BY(mu) = nullptr;
  // Pins whose release could not be sent: sent again before the next call.
  std::vector<uint64_t> unreleased GPB_GUARDED_BY(mu);

  State(std::shared_ptr<Channel> ch, std::shared_ptr<MappingCache> cache, View v)
      : channel(std::move(ch)), view(std::move(v)), locator(std::move(cache), view) {}
  uint64_t allocation_id() const { return view.slot().allocation_id; }
  bool cuda() const { return view.device().type == Device::kCuda; }

  Result<std::pair<std::shared_ptr<const RegistryReader>, SlotDescriptor>> Locate() GPB_EXCLUDES(mu) {
    MutexLock lock(mu);
    return locator.Locate();
  }

  // Releases `pin` once the work queued on `stream` so far is done (CUDA:
  // from the stream watcher), else at once; an error leaves it held.
  Status ReleaseLocked(uint64_t pin_id, void* stream) GPB_REQUIRES(mu) {
    wire::ReleaseRequest m{allocation_id(), pin_id};
    if (cuda()) {
      std::weak_ptr<Channel> weak = channel;
      Status queued = WhenStreamDone(view.device().ordinal, stream, [weak, m](Status) {
        if (auto c = weak.lock()) c->Tell(m);
      });
      if (queued.ok()) return queued;
      // The stream cannot be waited on (gone, or broken): nothing more will
      // run on it, so the version can go now.
    }
    std::atomic_thread_fence(std::memory_order_release);
    return channel->Call<wire::ReleaseReply>(m).status();
  }

  // The broker that granted the pin is gone and this client has reconnected:
  // take the pin over from the restarted broker, which carries it for a
  // while, or learn that it is lost.
  void TakeOverPinLocked() GPB_REQUIRES(mu) {
    const uint64_t now = channel->connection();
    if (pin == 0 || pin_connection == now) return;
    unreleased.clear();  // pins of the old broker: nothing to release at the new one
    wire::AcquireRequest m{};
    m.allocation_id = allocation_id();
    m.flags = wire::kAcquireCarried;
    m.buffer = pin_buffer;
    m.version = pin_version;
    auto reply = channel->Call<wire::AcquireReply>(m);
    pin_connection = channel->connection();
    if (reply.ok()) {
      pin = reply->pin;
    } else {
      pin = 0;
      pin_lost = true;
    }
  }

  void RetryReleasesLocked() GPB_REQUIRES(mu) {
    for (auto it = unreleased.begin(); it != unreleased.end();) {
      it = channel->Call<wire::ReleaseReply>(wire::ReleaseRequest{allocation_id(), *it}).ok() ? unreleased.erase(it)
                                                                                              : it + 1;
    }
  }

  // At close: the pin held goes once the last acquire's stream is done with it.
  void Close() GPB_EXCLUDES(mu) {
    MutexLock lock(mu);
    for (uint64_t p : unreleased) channel->Tell(wire::ReleaseRequest{allocation_id(), p});
    unreleased.clear();
    if (pin == 0) return;
    if (!ReleaseLocked(pin, last_stream).ok()) channel->Tell(wire::ReleaseRequest{allocation_id(), pin});
    pin = 0;
  }
};

Reader::Reader(std::unique_ptr<State> state) : state_(std::move(state)) {}
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&& other) noexcept {
  if (this != &other) {
    if (state_) state_->Close();
    state_ = std::move(other.state_);
  }
  return *this;
}
Reader::~Reader() {
  if (state_) state_->Close();
}

const View& Reader::view() const {
  static const View kNone;
  return state_ ? state_->view : kNone;
}

Result<uint64_t> Reader::Latest() const {
  if (!state_) return InvalidArgument("this reader is empty");
  GPB_ASSIGN_OR_RETURN(auto where, state_->Locate());
  GPB_ASSIGN_OR_RETURN(LiveState s, where.first->Live(where.second));
  return s.version;
}

Result<uint64_t> Reader::Wait(uint64_t after, int timeout_ms) {
  if (!state_) return InvalidArgument("this reader is empty");
  std::optional<Clock::time_point> deadline = DeadlineAfter(timeout_ms);
  // When the broker's liveness is looked at next: a broker killed outright
  // wakes nobody. Its connection tells (a hang-up), never its pid, which
  // means nothing in another pid namespace; no message is sent for it.
  Clock::time_point check_liveness = Clock::now();  // at once, then every slice
  while (true) {
    GPB_ASSIGN_OR_RETURN(auto where, state_->Locate());
    const RegistryReader& registry = *where.first;
    const std::atomic<uint32_t>* commits = registry.CommitsWord(where.second);
    if (commits == nullptr) return ProtocolError("slot '" + state_->view.name() + "' names no live record");
    // The word before the state: a commit after this load changes the word,
    // so the futex below does not sleep through it.
    uint32_t seen = commits->load(std::memory_order_acquire);
    GPB_ASSIGN_OR_RETURN(LiveState s, registry.Live(where.second));
    // A version newer than `after` that is whole: a one-buffer tree whose
    // last write ended uncommitted has none until the next commit.
    if (s.version > after && s.buffer >= 0) return s.version;
    std::chrono::nanoseconds slice = kLivenessSlice;
    if (!registry.Running() || (Clock::now() >= check_liveness && state_->channel->PeerHungUp())) {
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
      GPB_ASSIGN_OR_RETURN(auto now, state_->Locate());
      if (now.first != where.first) continue;  // a restarted broker's registry
      slice = kStoppingSlice;  // a stopping broker that still answers: look again soon
    }
    // Destroying the name wakes this wait, but the record stays (this
    // reader's own lease keeps the allocation): the name tells. Read after
    // `seen`, so a destroy after this check changes the word and the futex
    // below returns at once.
    GPB_RETURN_IF_ERROR(StillNamed(registry, state_->view));
    if (Left(deadline).count() == 0) {
      return Timeout("no version after " + std::to_string(after) + " of '" + state_->view.name() + "' within " +
                     std::to_string(timeout_ms) + " ms (newest: " + std::to_string(s.version) + ")");
    }
    check_liveness = Clock::now() + slice;
    SleepWhileUnchanged(commits, seen, std::min(deadline.value_or(check_liveness), check_liveness));
  }
}

Result<Acquired> Reader::Acquire(void* stream) {
  if (!state_) return InvalidArgument("this reader is empty");
  State& st = *state_;
  MutexLock lock(st.mu);
  st.TakeOverPinLocked();
  st.RetryReleasesLocked();
  // The version read so far stays pinned until `stream` is done with it: if
  // it is already, the acquire's own message releases it.
  uint64_t release_pin = 0;
  if (st.pin != 0) {
    bool idle = true;
    if (st.cuda()) {
      GPB_ASSIGN_OR_RETURN(idle, StreamIdle(st.view.device().ordinal, stream));
    }
    if (idle) {
      std::atomic_thread_fence(std::memory_order_release);
      release_pin = st.pin;
    }
  }
  GPB_ASSIGN_OR_RETURN(wire::AcquireReply reply,
                       st.channel->Call<wire::AcquireReply>(wire::AcquireRequest{st.allocation_id(), release_pin}));
  if (release_pin != 0) st.pin = 0;
  if (static_cast<uint32_t>(reply.buffer) >= st.view.slot().buffers) {
    st.channel->Tell(wire::ReleaseRequest{st.allocation_id(), reply.pin});
    return ProtocolError("acquire reply names buffer " + std::to_string(reply.buffer) + " of " +
                         std::to_string(st.view.slot().buffers));
  }
  const uint64_t previous = st.pin;  // still read by `stream`: released once it is done
  st.pin = reply.pin;
  st.pin_buffer = reply.buffer;
  st.pin_version = reply.version;
  st.pin_connection = st.channel->connection();
  st.pin_lost = false;
  st.pinned_writes = reply.writes;
  st.pinned_while_writing = (reply.flags & wire::kAcquireWriting) != 0;
  st.last_stream = stream;
  if (previous != 0 && !st.ReleaseLocked(previous, stream).ok()) st.unreleased.push_back(previous);
  std::atomic_thread_fence(std::memory_order_acquire);
  Acquired a;
  a.version = reply.version;
  a.buffer = static_cast<uint32_t>(reply.buffer);
  a.committed_ns = reply.committed_ns;
  a.writing = st.pinned_while_writing;
  return a;
}

Status Reader::Release(void* stream) {
  if (!state_) return InvalidArgument("this reader is empty");
  State& st = *state_;
  MutexLock lock(st.mu);
  st.TakeOverPinLocked();
  st.RetryReleasesLocked();
  if (st.pin == 0) return Status::Ok();
  GPB_RETURN_IF_ERROR(st.ReleaseLocked(st.pin, stream));  // on an error the pin stays held, and known
  st.pin = 0;
  return Status::Ok();
}

Result<bool> Reader::Unchanged() const {
  if (!state_) return InvalidArgument("this reader is empty");
  State& st = *state_;
  std::atomic_thread_fence(std::memory_order_acquire);
  {
    // The pin holds only while a broker keeps it: if the one that granted
    // it is gone, reconnect and take it over from the restarted one, or
    // say what was read may have changed.
    MutexLock lock(st.mu);
    if (st.pin != 0 && st.pin_connection == st.channel->connection() && st.channel->PeerHungUp() &&
        !st.channel->Reconnect(std::chrono::milliseconds(-1)).ok()) {
      return false;
    }
    st.TakeOverPinLocked();
    if (st.pin_lost) return false;
    if (st.view.slot().buffers > 1) return true;
  }
  GPB_ASSIGN_OR_RETURN(auto where, st.Locate());
  GPB_ASSIGN_OR_RETURN(LiveState s, where.first->Live(where.second));
  MutexLock lock(st.mu);
  return !st.pinned_while_writing && s.writes == st.pinned_writes;
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

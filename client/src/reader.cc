// The reader of versions (docs/live.md): the client's half of the rules
// request_handler_live.cc keeps; writer.cc has the writer's. Waiting is a
// futex on the registry's live record; acquire and release are one message
// each.
//
// A reader's stream waits on nothing of the writer's: a CUDA event of a
// process that died is never signalled, and a reader queued behind one would
// hang (the writer commits only once its writes have run). A reader's
// release of the version it read goes in its next acquire's message if its
// stream is done with the version already, else from a background thread.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "client/src/channel.h"
#include "client/src/client_core.h"
#include "client/src/live_cuda.h"
#include "client/src/live_support.h"

namespace gpubroker {

using live::Clock;
using live::DeadlineAfter;
using live::kLivenessSlice;
using live::kStoppingSlice;
using live::Left;
using live::LiveLocator;
using live::SleepWhileUnchanged;
using live::StillNamed;

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
        if (auto c = weak.lock()) c->CallDroppingReply(m);
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
  // Closing never reconnects (a destructor must not wait for a broker to come
  // back): with the broker gone, what it granted went with it, or a restarted
  // broker carries the pin until its grace ends. Already reconnected to one
  // that carries it, the pin is taken over and released at once.
  void Close() GPB_EXCLUDES(mu) {
    MutexLock lock(mu);
    if (channel->PeerHungUp()) {
      unreleased.clear();
      pin = 0;
      return;
    }
    TakeOverPinLocked();
    for (uint64_t p : unreleased) channel->CallDroppingReply(wire::ReleaseRequest{allocation_id(), p});
    unreleased.clear();
    if (pin == 0) return;
    if (!ReleaseLocked(pin, last_stream).ok()) channel->CallDroppingReply(wire::ReleaseRequest{allocation_id(), pin});
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
    st.channel->CallDroppingReply(wire::ReleaseRequest{st.allocation_id(), reply.pin});
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

Result<Reader> Client::OpenReader(std::string_view name) {
  GPB_ASSIGN_OR_RETURN(View view, Attach(name, AttachMode::kReadOnly));
  return Reader(std::make_unique<Reader::State>(core_->channel, core_->cache, std::move(view)));
}


}  // namespace gpubroker

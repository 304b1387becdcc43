// Closes descriptors off the event loop. Closing the last reference to
// something a client handed in can take as long as that client likes: a TCP
// socket with SO_LINGER and a full send buffer waits out its linger, a file on
// a hung FUSE or NFS mount waits for its server. The same holds for a
// client's socket whose queue still holds messages carrying descriptors. The
// loop hands such descriptors here and goes on; one thread of this class's
// own close them: a socket resets at once (linger 0); a close that stays
// stuck (a file on a hung mount) holds one thread, and the next close gets
// another, up to kMaxThreads.
//
// Where the kernel allows (Linux 6.16 and later), the listening socket refuses
// descriptors outright (SO_PASSRIGHTS = 0, see RefuseDescriptors): a client's
// sendmsg with one fails, and none ever reaches the broker.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "common/posix.h"

namespace gpubroker {

class FdCloser {
 public:
  static constexpr int kMaxThreads = 8;

  FdCloser();
  ~FdCloser() { Stop(); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

  // Closes `fd` soon, on the closer's thread; never blocks the caller.
  // `drain`: first read (without waiting) what the peer sent and nobody read,
  // so a socket closed with a last reply unread by us does not reset the
  // peer before it reads that reply.
  void Close(UniqueFd fd, bool drain = false);
  // Descriptors handed over and not yet closed (one stuck close holds up
  // those behind it: the count shows it).
  uint64_t pending() const;
  uint64_t closed() const;
  // Closes what was handed over and ends the thread, waiting at most
  // `patience` for it: a close that a client keeps stuck for longer is left
  // to the thread, which the process's exit ends.
  void Stop(std::chrono::milliseconds patience = std::chrono::seconds(2));

 private:
  struct Shared;  // the queue, shared with the thread (which may outlive this object at exit)
  std::shared_ptr<Shared> shared_;
  std::vector<std::thread> threads_;  // started as needed; the caller's thread alone touches them
};

// Sets SO_PASSRIGHTS = 0 on a listening socket (inherited by what it
// accepts): clients cannot send descriptors at all. False where the kernel
// does not know the option (before Linux 6.16); FdCloser covers those.
bool RefuseDescriptors(int listening_socket);

}  // namespace gpubroker

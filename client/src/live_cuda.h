// The CUDA side of versions (docs/live.md): a writer's interprocess events,
// one per buffer, recorded at commit; a reader's stream waits on them; and
// the events that say when a reader's stream is done with a buffer.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>

#include "gpubroker/status.hpp"

namespace gpubroker {

using IpcEventHandle = std::array<uint8_t, 64>;

// A writer's events, created on first use, on the device `ordinal` (this
// process's numbering).
class WriterEvents {
 public:
  static Result<std::unique_ptr<WriterEvents>> Create(int ordinal, uint32_t nbuffers);
  virtual ~WriterEvents() = default;
  // Records buffer `buffer`'s event on `stream` and returns its handle.
  virtual Result<IpcEventHandle> Record(uint32_t buffer, void* stream) = 0;
};

// A reader's opened events, by handle, kept while it lives.
class ReaderEvents {
 public:
  static Result<std::unique_ptr<ReaderEvents>> Create(int ordinal);
  virtual ~ReaderEvents() = default;
  // Makes `stream` wait for the event behind `handle`.
  virtual Status StreamWait(const IpcEventHandle& handle, void* stream) = 0;
};

// Runs `done` on a background thread once the work queued on `stream` so
// far has finished (device `ordinal`, this process's numbering). The
// thread never blocks the caller; `done` gets the wait's outcome.
Status WhenStreamDone(int ordinal, void* stream, std::function<void(Status)> done);

}  // namespace gpubroker

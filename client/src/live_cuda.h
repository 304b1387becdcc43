// The CUDA side of versions (docs/live.md): whether a stream has run what was
// queued on it, and running something once it has, without the caller
// waiting. A writer's commit goes to the broker that way (so a version is
// visible only once its writes are done, and a writer that dies first
// publishes nothing); a reader's release too (so the writer never reuses a
// buffer a reader's kernels still read).
#pragma once

#include <functional>

#include "gpubroker/status.hpp"

namespace gpubroker {

// Whether the work queued on `stream` (a CUstream) of device `ordinal` (this
// process's numbering) so far is known to have finished, asked without
// waiting (cuStreamQuery, the default streams included: 1.7 µs on an idle
// legacy stream of an H100, bench/stream_probe); an error if that work failed.
Result<bool> StreamIdle(int ordinal, void* stream);

// Runs `done` on a background thread once the work queued on `stream` of
// device `ordinal` so far has finished; `done` gets the wait's outcome.
// Returns at once. One thread per stream with something pending: `done`s of
// one stream run in the order queued, and none waits for another stream.
Status WhenStreamDone(int ordinal, void* stream, std::function<void(Status)> done);

}  // namespace gpubroker

// The CUDA side of versions (docs/live.md): running something once the work
// queued on a stream so far has finished, without the caller waiting. A
// writer's commit goes to the broker that way (so a version is visible only
// once its writes are done, and a writer that dies first publishes nothing);
// a reader's release too (so the writer never reuses a buffer a reader's
// kernels still read).
#pragma once

#include <functional>

#include "gpubroker/status.hpp"

namespace gpubroker {

// Runs `done` on a background thread (one per process, in order) once the
// work queued on `stream` (a CUstream; null: the legacy default stream) of
// device `ordinal` (this process's numbering) so far has finished; `done`
// gets the wait's outcome. Returns at once.
Status WhenStreamDone(int ordinal, void* stream, std::function<void(Status)> done);

}  // namespace gpubroker

// gpubrokerctl's exit statuses: part of its interface (docs/cli.md lists
// them), so scripts can tell a missing slot from a stopped broker.
#pragma once

#include "gpubroker/status.hpp"

namespace gpubroker::ctl {

enum Exit : int {
  kExitOk = 0,
  kExitFailure = 1,
  kExitUsage = 2,
  kExitUnavailable = 3,
  kExitNotFound = 4,
  kExitPermission = 5,
  kExitExists = 6,
  kExitExhausted = 7,
  kExitInvalid = 8,
  kExitNotServing = 9,  // status: the broker answers but is draining or stopping
  kExitTimeout = 10,    // wait: no new version within --timeout
};

int ExitFor(const Status& s);

// Prints "gpubrokerctl: <code>: <message>" on stderr; returns ExitFor(s).
int Report(const Status& s);

}  // namespace gpubroker::ctl

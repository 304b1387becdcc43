#include "client/cli/exit_status.h"

#include <iostream>

namespace gpubroker::ctl {

int ExitFor(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return kExitOk;
    case Code::kUnavailable: return kExitUnavailable;
    case Code::kNotFound: return kExitNotFound;
    case Code::kPermissionDenied: return kExitPermission;
    case Code::kAlreadyExists: return kExitExists;
    case Code::kResourceExhausted: return kExitExhausted;
    case Code::kInvalidArgument: return kExitInvalid;
    case Code::kTimeout: return kExitTimeout;
    default: return kExitFailure;
  }
}

int Report(const Status& s) {
  std::cerr << "gpubrokerctl: " << s.ToString() << "\n";
  return ExitFor(s);
}

}  // namespace gpubroker::ctl

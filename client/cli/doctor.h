// gpubrokerctl doctor: checks, each OK or what to do, of why attaching fails
// or is slow for this process on this machine.
#pragma once

#include <string>

namespace gpubroker::ctl {

// Prints the findings (a table, or JSON) and returns 0, or 1 if any failed.
int RunDoctor(const std::string& socket, bool socket_from_flag, bool json);

}  // namespace gpubroker::ctl

// `gpubrokerctl top`: a live view of one broker, refreshed in place, as
// `top` and `nvidia-smi -l` give: the broker's totals and rates, its slots
// with versions and commit rates, and (for an admin) its clients, leases and
// pins.
#pragma once

#include <string>

#include "gpubroker/client.hpp"

namespace gpubroker::ctl {

struct TopFlags {
  double delay = 2.0;   // seconds between screens
  int iterations = 0;   // screens to show; 0: until q, Ctrl-C or the broker stops
  std::string prefix;   // only slots NAME and NAME/...
};

// On a terminal: the alternate screen, redrawn every `delay` seconds; q
// quits. Otherwise (a pipe, a file): one screen after another, without
// escapes, as `top -b` does. Exit 0 when asked to stop; 3 when the broker
// goes away.
int TopCmd(Client& c, const TopFlags& flags);

}  // namespace gpubroker::ctl

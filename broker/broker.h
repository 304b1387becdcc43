// Brings a broker up from a Config, runs it until it stops, and tears it down.
#pragma once

#include "config.h"
#include "gpubroker/status.hpp"

namespace gpubroker {

// Returns when the broker stopped (signal or shutdown request); errors at
// start-up name what is wrong (socket in use, registry of another version...).
Status RunBroker(const Config& config);

}  // namespace gpubroker

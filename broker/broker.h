// Brings a broker up from a Config, runs it until it stops, and tears it down.
#pragma once

#include <functional>
#include <string>

#include "broker/config.h"
#include "gpubroker/status.hpp"

namespace gpubroker {

// Where the configuration came from, so a reload can read it again.
struct ConfigSource {
  std::string path;  // empty: the embedded default
  std::function<Status(Config&)> overrides;  // command-line flags, re-applied on reload
};

// Loads the configuration from `source` (file or embedded default, then flags).
Result<Config> LoadConfig(const ConfigSource& source);

// Everything a start would check of `config` short of binding its socket:
// the groups it names resolve, every pool makes a valid slot on a backend
// this machine has, the pools fit the host-memory cap. For --check-config;
// on success returns a line saying what was checked.
Result<std::string> CheckConfig(const Config& config);

// Returns when the broker stopped (signal or shutdown request); errors at
// start-up name what is wrong (socket in use, registry of another version...).
Status RunBroker(const Config& config, const ConfigSource& source);

}  // namespace gpubroker

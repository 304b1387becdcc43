// spdlog set-up for the broker: level and text or JSON lines on stderr.
#pragma once

#include <string>

#include "gpubroker/status.hpp"

namespace gpubroker {

// format: "text", "json", "journal" (a syslog priority prefix per line, no
// timestamp: journald adds both) or "auto" (journal when stderr is the
// journal, else text); level: a spdlog level name.
Status SetupLogging(const std::string& level, const std::string& format);

}  // namespace gpubroker

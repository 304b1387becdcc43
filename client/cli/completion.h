// Shell completion for gpubrokerctl, made from the commands and options the
// program defines (so it cannot fall behind them): bash, zsh and fish.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace gpubroker::ctl {

// The shells Completion() knows.
inline constexpr const char* kCompletionShells[] = {"bash", "zsh", "fish"};

// The script for `shell` (one of kCompletionShells). Values come from the
// program: subcommands, options, --format, --fields, --dtype and --backend
// words; slot names from the broker named on the line, two seconds at most.
std::string Completion(CLI::App& app, const std::string& shell);

}  // namespace gpubroker::ctl

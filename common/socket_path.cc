#include "common/socket_path.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace gpubroker {
namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

bool IsSocket(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

}  // namespace

std::string UserSocketPath() {
  if (::geteuid() == 0) return {};
  const char* dir = Env("XDG_RUNTIME_DIR");
  if (dir == nullptr || dir[0] != '/') return {};
  return std::string(dir) + "/gpubroker/gpubroker.sock";
}

Result<std::string> BrokerDefaultSocketPath() {
  if (const char* env = Env("GPUBROKER_SOCKET")) return std::string(env);
  if (::geteuid() == 0) return std::string(kSystemSocketPath);
  std::string user = UserSocketPath();
  if (user.empty()) {
    return ConfigError("no socket path: a broker not run as root listens under $XDG_RUNTIME_DIR, which is "
                       "not set (or not absolute) here; set socket.path in a config file, pass --socket, "
                       "or set GPUBROKER_SOCKET or XDG_RUNTIME_DIR");
  }
  return user;
}

std::string ClientDefaultSocketPath() {
  if (const char* env = Env("GPUBROKER_SOCKET")) return env;
  std::string user = UserSocketPath();
  if (!user.empty() && IsSocket(user)) return user;
  return kSystemSocketPath;
}

std::string NoBrokerAdvice(const std::string& path) {
  std::string where = path;
  std::string user = UserSocketPath();
  if (Env("GPUBROKER_SOCKET") == nullptr && path == kSystemSocketPath && !user.empty()) {
    where += " (nor at " + user + ", where your own broker would listen)";
  }
  return "no broker at " + where + ": start one (gpubrokerd, or systemctl [--user] start gpubroker), " +
         "or set GPUBROKER_SOCKET to the socket of a running one";
}

}  // namespace gpubroker

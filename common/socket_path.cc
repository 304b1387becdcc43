#include "common/socket_path.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/posix.h"

namespace gpubroker {
namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

bool IsSocket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

std::string ParentOf(const std::string& path) { return std::filesystem::path(path).parent_path().string(); }

// Whether `dir` and every directory above it are owned by `owner` or root
// and writable by nobody else; the reason if not.
Status OnlyWritableBy(const std::string& dir, uid_t owner) {
  // The real directories, links resolved: a link owned by root may lead
  // anywhere, and what is checked is where the socket really is.
  std::error_code ec;
  std::filesystem::path p = std::filesystem::canonical(dir.empty() ? "." : dir, ec);
  if (ec) return PosixError("resolve " + dir, ec.value());
  while (true) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return PosixError("stat " + p.string(), errno);
    if (st.st_uid != owner && st.st_uid != 0) {
      return PermissionDenied(p.string() + " belongs to uid " + std::to_string(st.st_uid));
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
      return PermissionDenied(p.string() + " can be written by others than its owner");
    }
    if (!p.has_relative_path()) return Status::Ok();  // the root
    p = p.parent_path();
  }
}

std::string Octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// The user's socket only where both directories are the user's own and
// private: a runtime directory someone else made first is not.
bool UserSocketUsable(const std::string& user) {
  const uid_t me = ::geteuid();
  return CheckSocketDirectory(ParentOf(ParentOf(user)), me, true).ok() &&
         CheckSocketDirectory(ParentOf(user), me, true).ok() && IsSocket(user);
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
  if (!user.empty() && UserSocketUsable(user)) return user;
  return kSystemSocketPath;
}

std::string NoBrokerAdvice(const std::string& path) {
  const char* env = Env("GPUBROKER_SOCKET");
  if (env != nullptr && path == env) {
    return "no broker at " + path + " (from $GPUBROKER_SOCKET): start one there (gpubrokerd --socket " + path +
           "), or point GPUBROKER_SOCKET at the socket of a running one";
  }
  if (path != ClientDefaultSocketPath()) {  // a path the caller chose
    return "no broker at " + path + ": start one there (gpubrokerd --socket " + path +
           "), or give the socket of a running one";
  }
  std::string where = path;
  std::string user = UserSocketPath();
  if (path == kSystemSocketPath && !user.empty()) {
    where += " (nor at " + user + ", where your own broker would listen)";
  }
  return "no broker at " + where + ": start one (gpubrokerd, or systemctl [--user] start gpubroker), " +
         "or set GPUBROKER_SOCKET to the socket of a running one";
}

std::string SocketAccessAdvice(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return "connect to " + path + ": permission denied: a directory on the way to it keeps you out (not even the "
           "socket's mode can be read); a per-user broker serves only its own user";
  }
  const group* g = ::getgrgid(st.st_gid);
  const std::string group_name = g != nullptr ? g->gr_name : std::to_string(st.st_gid);
  std::string text = "connect to " + path + ": permission denied: the socket is mode " + Octal(st.st_mode & 07777) +
                     ", owner uid " + std::to_string(st.st_uid) + ", group " + group_name;
  if ((st.st_mode & 020) != 0) {
    text += "; members of group " + group_name + " may connect, and you are not one (ask for it: usermod -aG " +
            group_name + " $USER, then log in again)";
  } else {
    text += ", and its mode lets only its owner connect (the broker's socket.mode and socket.group set it)";
  }
  return text + "; a per-user broker serves only its own user";
}

Status CheckSocketDirectory(const std::string& dir, uid_t owner, bool private_to_owner) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return PosixError("inspect socket directory " + dir, errno);
  if (!S_ISDIR(st.st_mode)) return PermissionDenied(dir + " is not a directory");
  if (st.st_uid != owner && st.st_uid != 0) {
    return PermissionDenied("socket directory " + dir + " belongs to uid " + std::to_string(st.st_uid) +
                            ", not to uid " + std::to_string(owner) + " or root");
  }
  const mode_t others = private_to_owner ? 077 : 022;
  if ((st.st_mode & others) != 0 && (private_to_owner || (st.st_mode & S_ISVTX) == 0)) {
    return PermissionDenied("socket directory " + dir + " has mode " + Octal(st.st_mode) + ": " +
                            (private_to_owner ? "others may enter it" : "others may write to it") +
                            ", so another user could put a socket of theirs in its place (chmod " +
                            (private_to_owner ? "0700" : "go-w") + " it, or choose another path)");
  }
  return Status::Ok();
}

Status VerifyBrokerPeer(int fd, const std::string& path) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return PosixError("SO_PEERCRED", errno);
  const uid_t me = ::geteuid();
  if (path == UserSocketPath()) {
    if (cred.uid == me) return Status::Ok();
    return PermissionDenied("the broker at " + path + " runs as uid " + std::to_string(cred.uid) +
                            ", not as you (uid " + std::to_string(me) +
                            "): refusing it; your runtime directory may not be yours alone");
  }
  if (cred.uid == 0 || cred.uid == me) return Status::Ok();
  // Another user's broker (a service account's): trusted only where nobody
  // else could have put it. The socket's directory must be that user's, and
  // it and every directory above it owned by that user or root and writable
  // by no one else (OpenSSH's rule for its key paths). A directory another
  // user made under /tmp fails: /tmp can be written by anyone, so the first
  // to make the directory owns it.
  Status chain = OnlyWritableBy(ParentOf(path), cred.uid);
  struct stat st {};
  if (chain.ok() && ::stat(ParentOf(path).c_str(), &st) == 0 && st.st_uid == cred.uid) return Status::Ok();
  return PermissionDenied("the broker at " + path + " runs as uid " + std::to_string(cred.uid) +
                          ", which is not root and not you, and " +
                          (chain.ok() ? std::string("does not own the socket's directory") : chain.message()) +
                          ": refusing it (anyone who can write there could have started it)");
}

}  // namespace gpubroker

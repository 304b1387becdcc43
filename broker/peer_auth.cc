#include "broker/peer_auth.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/posix.h"

namespace gpubroker {

Nonce FreshNonce() {
  Nonce n{};
  size_t got = 0;
  while (got < n.size()) {
    ssize_t r = ::getrandom(n.data() + got, n.size() - got, 0);
    if (r > 0) got += static_cast<size_t>(r);
    else if (errno != EINTR) std::abort();  // no randomness: no authentication worth the name
  }
  return n;
}

Result<ClusterKey> ClusterKey::Load(const std::string& path) {
  const std::string where = "peers.key_file " + path;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return PermissionDenied(where + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) return Internal(where + ": fstat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return PermissionDenied(where + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
    return PermissionDenied(where + " has mode " + mode +
                            ": other users could read the cluster key (chmod 600 " + path + ")");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return PermissionDenied(where + " belongs to uid " + std::to_string(st.st_uid) +
                            ", neither this broker's user nor root");
  }
  if (st.st_size < 32 || st.st_size > 4096) {
    return InvalidArgument(where + " holds " + std::to_string(st.st_size) +
                           " bytes; a cluster key is 32 to 4096 (openssl rand -out " + path + " 32)");
  }
  std::string key(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < key.size()) {
    ssize_t r = ::read(fd.get(), key.data() + got, key.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return Internal(where + ": read: " + (r < 0 ? std::strerror(errno) : "short file"));
    got += static_cast<size_t>(r);
  }
  return ClusterKey(std::move(key));
}

Mac ClusterKey::Prove(std::string_view role, const Nonce& follower, const Nonce& source) const {
  std::string text = "gpubroker peer v1 ";
  text += role;
  text.append(reinterpret_cast<const char*>(follower.data()), follower.size());
  text.append(reinterpret_cast<const char*>(source.data()), source.size());
  Mac mac{};
  unsigned length = 0;
  ::HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), reinterpret_cast<const uint8_t*>(text.data()),
         text.size(), mac.data(), &length);
  return mac;
}

bool ClusterKey::Verify(std::string_view role, const Nonce& follower, const Nonce& source,
                        std::string_view mac) const {
  if (mac.size() != sizeof(Mac)) return false;
  const Mac want = Prove(role, follower, source);
  return CRYPTO_memcmp(want.data(), mac.data(), want.size()) == 0;
}

}  // namespace gpubroker

// Who may talk to this broker's peer port (docs/SECURITY.md, "Peers"): a
// broker holding the cluster key. Both sides prove it before anything else
// is said, by a challenge each way: HMAC-SHA256 under the key of both
// nonces and the prover's role, so neither a replayed answer nor one
// reflected back to its sender passes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "gpubroker/status.hpp"

namespace gpubroker {

using Nonce = std::array<uint8_t, 32>;
using Mac = std::array<uint8_t, 32>;

// Fresh from the kernel's random source.
Nonce FreshNonce();

class ClusterKey {
 public:
  // The key file: a regular file owned by this process's user or root,
  // readable by nobody else (mode 0600 or 0400), of 32 to 4096 bytes;
  // every byte is key (`openssl rand -out FILE 32` makes one).
  static Result<ClusterKey> Load(const std::string& path);
  static ClusterKey FromBytes(std::string bytes) { return ClusterKey(std::move(bytes)); }

  // What `role` ("source" or "follower") proves with, for this pair of nonces.
  Mac Prove(std::string_view role, const Nonce& follower, const Nonce& source) const;
  // In constant time.
  bool Verify(std::string_view role, const Nonce& follower, const Nonce& source, std::string_view mac) const;

 private:
  explicit ClusterKey(std::string bytes) : key_(std::move(bytes)) {}
  std::string key_;
};

}  // namespace gpubroker

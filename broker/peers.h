// Replication of versioned trees between brokers on different nodes
// (docs/multinode.md). A source serves the trees its configuration exports;
// a follower keeps a local tree of the same name, layout and version
// numbers, each version committed locally only once every byte of it has
// landed, so local subscribers see whole versions as they do on one node.
//
// One session per followed tree. The follower opens a TCP connection to the
// source's peers.listen, and both sides prove they hold the cluster key
// (broker/peer_auth.h) on it before anything else: no layout, UCX address or
// byte goes to a peer that has not, and no byte a peer sends reaches UCX
// (UCX's own listener parses what anyone sends it, and was found to close
// the broker's descriptors on garbage). Then:
//
//   follower                                 source
//   TCP  hello(nonce)                  ->
//                                      <-    challenge(nonce, source's proof)
//        proof, token, worker address  ->    (checks the proof; connects to that worker)
//                                      <-    accept
//        follow(tree, have)            ->    (checks the export list)
//   UCX                                <-    layout records..., tree(head)
//                                      <-    version(v, buffer), chunks...   v pinned for this follower
//   commits v locally once every chunk landed
//   TCP  done(v)                       ->    unpins; the newest next, if newer
//
// What the follower says goes on the TCP connection, what the source says
// on UCX from its endpoint to the follower's worker (one ordered channel
// each way; only the source makes endpoints, so UCX never pairs one
// session's with another's). Each UCX message starts with the follower's
// random session token: one with no session's token is dropped (anyone
// who reaches the worker can send). Either connection's end ends the
// session.

// A one-buffer tree is written in place, so the source answers done(v) with
// a verdict (whole: no write began while it was read) and the follower
// commits only a whole one. A broker that follows a tree and exports it
// too passes each version on while it still arrives (chunks go on as they
// land, so a chain of followers moves a version in about the time of one
// link): its followers get a verdict after their done, once the version is
// whole here, or before it, if this broker gave it up (its source failed
// or said torn); they then answer with done and the next is offered. The source pins one version per follower at a
// time: a follower that falls behind skips to the newest. A follower pings
// every stall_timeout_ms / 3, even while it reads; a source drops a follower
// it has not heard from for stall_timeout_ms (freeing its pin), and a
// follower reconnects when nothing came from its source for as long (a link
// that goes down is not reported otherwise).
//
// Everything runs on the broker's event loop thread, as the request handler
// does: the UCX worker is progressed from it through its wake-up descriptor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "broker/asio.h"
#include "broker/config.h"
#include "broker/request_handler.h"

namespace gpubroker {

// One connection as `gpubrokerctl peers` and the metrics show it.
struct PeerReport {
  std::string role;   // "source" (we serve it) or "follower" (we follow through it)
  std::string tree;
  std::string peer;   // IPv4:PORT
  std::string state;  // connecting, authenticating, ready, reading, retrying
  uint64_t version = 0;         // the newest version committed here (follower) or sent (source)
  uint64_t source_version = 0;  // follower: the newest the source announced
  uint64_t versions = 0;        // versions moved
  uint64_t bytes = 0;           // bytes moved
  uint64_t errors = 0;          // connections lost or refused
  uint64_t passed_on = 0;       // source: versions sent on while they still arrived here
  uint64_t abandoned = 0;       // follower: versions read in part or whole and not committed, as the
                                // source said (a one-buffer tree written meanwhile, a source that lost it)
  double last_seconds = 0;      // the last version's transfer time
  std::string last_error;
};

class Peers {
 public:
  // Unsupported where the broker was built without UCX; otherwise errors
  // name what is wrong (the key file, the listen address).
  static Result<std::unique_ptr<Peers>> Start(boost::asio::io_context& io, RequestHandler& handler,
                                              const PeersConfig& config);
  virtual ~Peers() = default;
  // The handler's `committed` hook.
  virtual void Committed(uint64_t allocation_id) = 0;
  virtual std::vector<PeerReport> Report() const = 0;
  // From now until the broker stops (the configuration's peers.follow lasts
  // beyond that): errors name a tree already followed, a bad address, an
  // unknown group, or a tree of that name of another user's here.
  virtual Status Follow(const FollowConfig& config) = 0;
  // NotFound if not followed. The local tree keeps its last version, for
  // the readers that use it, unless `remove`.
  virtual Status Unfollow(const std::string& tree, bool remove) = 0;
  // The port followers connect to (0: not listening).
  virtual uint16_t port() const = 0;
};

}  // namespace gpubroker

// Boost.Asio, included the one way that builds as C++20 with Boost 1.74
// (its awaitable.hpp uses std::exchange without including <utility>).
#pragma once

#include <utility>

#include <boost/asio.hpp>

namespace gpubroker {
// Boost 1.74 has no local::seq_packet_protocol; the generic protocol with
// AF_UNIX is the same socket.
using SeqPacket = boost::asio::generic::seq_packet_protocol;
using SeqPacketSocket = SeqPacket::socket;
using SeqPacketAcceptor = boost::asio::basic_socket_acceptor<SeqPacket>;
inline SeqPacket UnixSeqPacket() { return SeqPacket(AF_UNIX, 0); }
}  // namespace gpubroker

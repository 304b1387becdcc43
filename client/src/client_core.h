// What a Client is made of (shared by client.cc, reader.cc and writer.cc).
#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <utility>

#include "client/src/channel.h"
#include "client/src/mapping_cache.h"
#include "gpubroker/client.hpp"

namespace gpubroker {

// What a Client is made of: the mapping side and the socket side, each
// knowing nothing of the other; Client's methods are where they meet.
struct Client::Core {
  std::shared_ptr<MappingCache> cache;
  std::shared_ptr<Channel> channel;

  // This process's own mapping of the slot's allocation, if it has one:
  // found through the registry, no message sent. The record is checked
  // against the mapping itself, not against the sizes the record claims.
  std::optional<std::pair<std::shared_ptr<MappedAllocation>, SlotDescriptor>> Mapped(std::string_view name,
                                                                                     AttachMode mode) {
    auto registry = cache->registry();
    if (!registry.ok() || !(*registry)->Running()) return std::nullopt;
    auto slot = (*registry)->Lookup(name);
    if (!slot.ok()) return std::nullopt;
    std::shared_ptr<MappedAllocation> mapped = cache->Find(slot->allocation_id);
    if (!mapped || (mode != AttachMode::kReadOnly && !mapped->writable)) return std::nullopt;
    if (slot->byte_offset > mapped->size || slot->nbytes > mapped->size - slot->byte_offset) return std::nullopt;
    return std::make_pair(std::move(mapped), *slot);
  }

  // Maps what an attach reply hands over, or joins this process's mapping of
  // it; either way the process keeps one lease per mapping.
  Result<std::shared_ptr<MappedAllocation>> Map(const wire::AttachReply& reply, UniqueFd fd) {
    auto mapped = cache->Map(reply, std::move(fd), channel);
    if (!mapped.ok() || mapped->joined) channel->Detach(reply.slot.allocation_id);
    if (!mapped.ok()) return mapped.status();
    return std::move(mapped->mapping);
  }
};

}  // namespace gpubroker

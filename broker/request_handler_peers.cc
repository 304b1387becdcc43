// The broker's own client (broker/peers.h): replication reads a tree as a
// reader does and writes one as a writer does, through the same requests,
// with three things no local client may do: connect without a socket,
// commit under a given version number, and create slots the broker owns.
#include <unistd.h>

#include <algorithm>

#include "broker/request_handler.h"

namespace gpubroker {

Result<uint64_t> RequestHandler::ConnectInternal(const std::string& name) {
  PeerCredentials self;
  self.pid = ::getpid();
  self.uid = ::geteuid();
  self.gid = ::getegid();
  GPB_ASSIGN_OR_RETURN(uint64_t id, Admit(self));
  ClientEntry* c = table_.FindClient(id);
  c->greeted = true;
  c->name = name;
  return id;
}

Result<uint64_t> RequestHandler::CommitAt(uint64_t client_id, uint64_t allocation_id, int32_t buffer,
                                          uint64_t version) {
  ClientEntry* c = table_.FindClient(client_id);
  if (c == nullptr) return NotFound("no client " + std::to_string(client_id));
  GPB_ASSIGN_OR_RETURN(Allocation * a, LeasedAllocation(*c, allocation_id, true));
  Versions::Wake wake;
  GPB_ASSIGN_OR_RETURN(uint64_t committed, a->versions.Commit(c->id, buffer, NowNs(), wake, version));
  Publish(*a, wake);
  if (options_.committed) options_.committed(a->id);
  return committed;
}

Result<std::vector<SlotDescriptor>> RequestHandler::TreeSlots(const std::string& prefix) const {
  GPB_ASSIGN_OR_RETURN(uint32_t index, FindSlot(prefix));
  std::vector<SlotDescriptor> out{Current(registry_.Get(index))};
  auto a = table_.allocations().find(out[0].allocation_id);
  if (a == table_.allocations().end()) return Internal("slot '" + prefix + "' has no allocation");
  const std::string under = prefix + "/";
  for (uint32_t i : a->second.slots) {
    const SlotDescriptor& d = registry_.Get(i);
    std::string_view name(d.name);
    if (name.size() > under.size() && name.substr(0, under.size()) == under) out.push_back(Current(d));
  }
  std::sort(out.begin() + 1, out.end(),
            [](const SlotDescriptor& x, const SlotDescriptor& y) { return std::string_view(x.name) < y.name; });
  return out;
}

Result<uint64_t> RequestHandler::SlotAllocation(std::string_view name) const {
  GPB_ASSIGN_OR_RETURN(uint32_t index, FindSlot(name));
  return registry_.Get(index).allocation_id;
}

Status RequestHandler::CreateOwned(const SlotSpec& spec, gid_t gid) {
  return CreateSlot(spec, Owner{0, ::geteuid(), gid, true}, nullptr).status();
}

}  // namespace gpubroker

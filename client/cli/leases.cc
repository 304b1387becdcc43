#include "client/cli/leases.h"

#include <algorithm>
#include <iostream>

#include "client/cli/exit_status.h"
#include "client/cli/output.h"
#include "common/parse.h"

namespace gpubroker::ctl {
namespace {

using nlohmann::json;

constexpr const char* kNeedsAdmin = "not shown: the broker tells only root or its admin group";

std::string Who(const Holder& h) {
  return "client " + std::to_string(h.lease.client_id) + " (" +
         (h.client_name.empty() ? std::string("gone") : Printable(h.client_name)) + ", pid " +
         std::to_string(h.pid) + ")";
}

bool Pins(const LeaseInfo& l) { return l.pinned_version != 0 && l.pinned_buffer >= 0; }
bool Writes(const LeaseInfo& l) { return l.writing_buffer >= 0; }

// A number, or "none" (JSON: null) for the API's "none" values.
json OrNull(int64_t v, bool present) { return present ? json(v) : json(nullptr); }
std::string OrDash(int64_t v, bool present) { return present ? std::to_string(v) : "-"; }

json ClientJson(const Holder& h) {
  return {{"client_id", h.lease.client_id}, {"client_name", h.client_name}, {"pid", h.pid}};
}

}  // namespace

Result<std::vector<Holder>> ListHolders(Client& c) {
  GPB_ASSIGN_OR_RETURN(std::vector<LeaseInfo> leases, c.Leases());
  GPB_ASSIGN_OR_RETURN(std::vector<ClientInfo> clients, c.Clients());
  std::vector<Holder> out;
  for (LeaseInfo& l : leases) {
    Holder h;
    h.self = l.client_id == c.client_id();
    auto client =
        std::find_if(clients.begin(), clients.end(), [&](const ClientInfo& k) { return k.id == l.client_id; });
    if (client != clients.end()) {
      h.client_name = client->name;
      h.pid = client->pid;
    }
    h.lease = std::move(l);
    out.push_back(std::move(h));
  }
  std::sort(out.begin(), out.end(), [](const Holder& a, const Holder& b) {
    return std::tie(a.lease.client_id, a.lease.allocation_id) < std::tie(b.lease.client_id, b.lease.allocation_id);
  });
  return out;
}

int LeasesCmd(Client& c, bool json_out) {
  auto holders = ListHolders(c);
  if (!holders.ok()) return Report(holders.status());
  if (json_out) {
    json out = json::array();
    for (const Holder& h : *holders) {
      const LeaseInfo& l = h.lease;
      json o = ClientJson(h);
      o.update({{"self", h.self}, {"slot", l.slot}, {"allocation_id", l.allocation_id},
                {"allocation_bytes", l.allocation_bytes}, {"count", l.count},
                {"pinned_version", OrNull(static_cast<int64_t>(l.pinned_version), Pins(l))},
                {"pinned_buffer", OrNull(l.pinned_buffer, Pins(l))},
                {"writing_buffer", OrNull(l.writing_buffer, Writes(l))}});
      out.push_back(std::move(o));
    }
    std::cout << JsonText(out) << "\n";
    return kExitOk;
  }
  Table t({"CLIENT", "NAME", "PID", "SLOT", "ALLOCATION", "BYTES", "COUNT", "PINNED_VERSION", "PINNED_BUFFER",
           "WRITING_BUFFER"});
  for (const Holder& h : *holders) {
    const LeaseInfo& l = h.lease;
    t.Add({std::to_string(l.client_id) + (h.self ? "*" : ""), Printable(h.client_name), std::to_string(h.pid),
           Printable(l.slot), std::to_string(l.allocation_id), HumanBytes(l.allocation_bytes), std::to_string(l.count),
           OrDash(static_cast<int64_t>(l.pinned_version), Pins(l)), OrDash(l.pinned_buffer, Pins(l)),
           OrDash(l.writing_buffer, Writes(l))});
  }
  bool mine = std::any_of(holders->begin(), holders->end(), [](const Holder& h) { return h.self; });
  std::cout << t.Render() << (mine ? "(* this gpubrokerctl)\n" : "");
  return kExitOk;
}

std::string PinsText(const Result<std::vector<Holder>>& holders, uint64_t allocation_id) {
  if (!holders.ok()) return ShowLine("pins", kNeedsAdmin) + ShowLine("writer", kNeedsAdmin);
  std::string pins, writer;
  for (const Holder& h : *holders) {
    const LeaseInfo& l = h.lease;
    if (l.allocation_id != allocation_id) continue;
    if (Pins(l)) {
      pins += ShowLine(pins.empty() ? "pins" : "", "version " + std::to_string(l.pinned_version) + " in buffer " +
                                                       std::to_string(l.pinned_buffer) + ": " + Who(h));
    }
    if (Writes(l)) writer += ShowLine("writer", "buffer " + std::to_string(l.writing_buffer) + ": " + Who(h));
  }
  return (pins.empty() ? ShowLine("pins", "none") : pins) + (writer.empty() ? ShowLine("writer", "none") : writer);
}

void AddPinsJson(json& slot, const Result<std::vector<Holder>>& holders, uint64_t allocation_id) {
  if (!holders.ok()) {
    slot["pins_error"] = holders.status().ToString();
    return;
  }
  json pins = json::array();
  json writer = nullptr;
  for (const Holder& h : *holders) {
    const LeaseInfo& l = h.lease;
    if (l.allocation_id != allocation_id) continue;
    if (Pins(l)) {
      json p = ClientJson(h);
      p.update({{"version", l.pinned_version}, {"buffer", l.pinned_buffer}});
      pins.push_back(std::move(p));
    }
    if (Writes(l)) {
      writer = ClientJson(h);
      writer["buffer"] = l.writing_buffer;
    }
  }
  slot["pins"] = std::move(pins);
  slot["writer"] = std::move(writer);
}

}  // namespace gpubroker::ctl

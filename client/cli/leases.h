// Who leases each allocation, which version each client pins and who writes
// it: `gpubrokerctl leases`, and the pins and writer that `show` prints. The
// broker tells only an admin (root or its admin group).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpubroker/client.hpp"

namespace gpubroker::ctl {

struct Holder {
  LeaseInfo lease;
  std::string client_name;  // empty if the client left between the two questions
  int32_t pid = 0;
  bool self = false;        // this gpubrokerctl
};

// Every lease, with its client's name and pid; kPermissionDenied for a
// caller who is not admin.
Result<std::vector<Holder>> ListHolders(Client& c);

// `leases [--json]`: one row per client and allocation.
int LeasesCmd(Client& c, bool json);

// `show`'s "pins:" and "writer:" lines for one allocation; for a caller the
// broker would not tell (kPermissionDenied), lines that say so.
std::string PinsText(const Result<std::vector<Holder>>& holders, uint64_t allocation_id);
// The same into `show --json`'s object: "pins" (an array) and "writer" (an
// object, or null); for a caller who may not see them, "pins_error" instead.
void AddPinsJson(nlohmann::json& slot, const Result<std::vector<Holder>>& holders, uint64_t allocation_id);

}  // namespace gpubroker::ctl

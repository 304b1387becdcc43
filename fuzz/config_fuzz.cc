// libFuzzer target: the config parser. Any text must give a Config or a
// kConfig error naming the place; never a crash or an escaped exception.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "broker/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto c = gpubroker::ParseConfig(text, "fuzz.yaml");
  if (!c.ok() && c.status().code() != gpubroker::Code::kConfig) std::abort();
  if (c.ok() && (c->registry_capacity == 0 || c->limits.max_slots > c->registry_capacity)) std::abort();
  return 0;
}

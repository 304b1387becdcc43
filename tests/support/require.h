// What a test needs of the machine, and what a run requires of it.
//
// A case that cannot run here (no root, no GPU, one GPU where it needs two)
// skips with GPUBROKER_NEEDS(...). A run that exists to exercise that
// feature sets the matching variable, and the same case then fails instead
// of skipping:
//   GPUBROKER_REQUIRE_ROOT=1   root-only cases (CI runs as root)
//   GPUBROKER_REQUIRE_GPU=1    cases that need a CUDA driver and a device
//   GPUBROKER_REQUIRE_GPUS=N   cases that need up to N devices
// Every skip in the suite goes through these macros (docs/testing.md).
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace gpubroker::testing {

// The number a GPUBROKER_REQUIRE_* variable asks for: 0 when unset or "0".
inline int Required(const char* variable) {
  const char* v = std::getenv(variable);
  return v == nullptr ? 0 : std::atoi(v);
}

}  // namespace gpubroker::testing

// Skips the current test (or fails it, when `required` holds) unless `ok`.
// Like GTEST_SKIP, it returns from the function it is used in.
#define GPUBROKER_NEEDS(ok, required, what)                                                     \
  if (ok) {                                                                                     \
  } else if (required)                                                                          \
    GTEST_FAIL() << "needs " << what << ", and this run requires it (docs/testing.md)";         \
  else                                                                                          \
    GTEST_SKIP() << "needs " << what

#define GPUBROKER_NEEDS_ROOT(why) \
  GPUBROKER_NEEDS(::geteuid() == 0, ::gpubroker::testing::Required("GPUBROKER_REQUIRE_ROOT") > 0, "root " why)

// `have` is whether a driver and a device answered; `detail` says why not.
#define GPUBROKER_NEEDS_GPU(have, detail) \
  GPUBROKER_NEEDS(have, ::gpubroker::testing::Required("GPUBROKER_REQUIRE_GPU") > 0, "a GPU: " << detail)

#define GPUBROKER_NEEDS_GPUS(count, n)                                                      \
  GPUBROKER_NEEDS((count) >= (n), ::gpubroker::testing::Required("GPUBROKER_REQUIRE_GPUS") >= (n), \
                  (n) << " GPUs (this machine has " << (count) << ")")

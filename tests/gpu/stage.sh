#!/usr/bin/env bash
# Builds the GPU configuration here (Release, with CUDA) and stages what the
# device machine needs in .device/: the build tree without object files, and
# the shared libraries its image lacks. Then run, through the device tool:
#   command: bash tests/gpu/run_on_device.sh     carry: [".device"]
set -euo pipefail
cd "$(dirname "$0")/../.."
.ci/deps --tests
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPUBROKER_WITH_CUDA=ON -DGPUBROKER_CHECK_VERSIONS=OFF >/dev/null
cmake --build build-gpu
rm -rf .device
mkdir -p .device/lib
(cd build-gpu && find . -type d -name CMakeFiles -prune -o -type f ! -name '*.o' ! -name '*.a' \
   ! -name '*.ninja' ! -name '.ninja_*' -print) | while read -r f; do
  mkdir -p ".device/build-gpu/$(dirname "$f")"
  cp -a "build-gpu/$f" ".device/build-gpu/$f"
done
cp -a build-gpu/client/libgpubroker.so* .device/build-gpu/client/
# Shared libraries from Debian that the device image (Ubuntu) does not carry.
ldd build-gpu/broker/gpubrokerd build-gpu/client/libgpubroker.so build-gpu/tests/gpu_backend_test \
  build-gpu/bench/micro_bench | awk '/yaml-cpp|spdlog|fmt|benchmark|prometheus|civetweb/ {print $3}' | sort -u | xargs -r -I{} cp -L {} .device/lib/
# UCX (the peers), and the transport modules it loads from ucx/ beside libucs.
ucs=$(ldd build-gpu/broker/gpubrokerd | awk '/libucs\.so/ {print $3}')
if [ -n "$ucs" ]; then
  ldd build-gpu/broker/gpubrokerd "$ucs" | awk '/libuc[mpst]\.so/ {print $3}' | sort -u | xargs -r -I{} cp -L {} .device/lib/
  mkdir -p .device/lib/ucx
  cp -L "$(dirname "$ucs")"/ucx/*.so.0 .device/lib/ucx/
  # The raw-UCX baseline of bench/peers_gpu_bench.py (ucx-utils).
  if command -v ucx_perftest >/dev/null; then
    mkdir -p .device/bin
    cp -L "$(command -v ucx_perftest)" .device/bin/
    ldd .device/bin/ucx_perftest | awk '/libuc[mpst]\.so|libnuma|libgomp/ {print $3}' | sort -u | xargs -r -I{} cp -L {} .device/lib/
  fi
fi
strip --strip-unneeded .device/build-gpu/broker/gpubrokerd $(ls .device/build-gpu/tests/* | grep -v gpu_backend_test) \
  .device/build-gpu/bench/* .device/build-gpu/client/gpubrokerctl 2>/dev/null || true
echo "staged $(du -sh .device | cut -f1) in .device/ (source $(git rev-parse --short HEAD))"

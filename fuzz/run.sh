#!/usr/bin/env bash
# Builds the fuzz targets with clang (libFuzzer + ASan + UBSan) and runs each
# for SECONDS (default 60) from the seed corpus in fuzz/corpus/<target>.
# Fails on any crash, leak or sanitizer report; prints executions per target.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGPUBROKER_FUZZ=ON -DGPUBROKER_SANITIZE=ON -DGPUBROKER_WITH_CUDA=OFF -DGPUBROKER_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" --target protocol_fuzz handler_fuzz config_fuzz c_api_fuzz gpubrokerd
for t in protocol handler config c_api; do
  work=$(mktemp -d)
  [ -d "$root/fuzz/corpus/$t" ] && cp -r "$root/fuzz/corpus/$t/." "$work/"
  echo "== $t: $seconds s"
  log=$(mktemp)
  rc=0
  "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -print_final_stats=1 -detect_leaks=1 \
    -timeout=10 -rss_limit_mb=2048 "$work" >"$log" 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done)|ERROR|SUMMARY" "$log" || true
  [ "$rc" = 0 ] || tail -50 "$log"
  rm -rf "$work" "$log"
  [ "$rc" = 0 ] || { echo "$t: fuzzer failed (exit $rc)"; exit 1; }
done
echo "fuzz: no crashes"

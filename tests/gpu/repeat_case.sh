#!/usr/bin/env bash
# Runs one case of gpu_backend_test over and over on the device machine, to
# catch a hang that comes only sometimes (docs/gpu-testing.md, "Known open").
# A run that outlives its limit gets SIGUSR1 (the test writes its main
# thread's stack), then each of its threads' kernel wait channel is written,
# then it is killed. Run after run_on_device.sh has set the paths up
# (GPUBROKER_TESTS=0 GPUBROKER_BENCH=0 bash tests/gpu/run_on_device.sh).
#
#   bash tests/gpu/repeat_case.sh FILTER RUNS SECONDS
set -uo pipefail
filter=$1 runs=$2 limit=$3
root=$PWD
out=${OUT:-$root/.device/out}
mkdir -p "$out"
export LD_LIBRARY_PATH=$root/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
staged=$(sed -n 's/^# Build directory: //p' .device/build-gpu/CTestTestfile.cmake)
hung=0
for i in $(seq 1 "$runs"); do
  log=$out/repeat-$i.log
  start=$(date +%s.%N)
  (cd "$staged" && exec ./tests/gpu_backend_test --gtest_filter="$filter") >"$log" 2>&1 &
  pid=$!
  waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((limit * 10)) ]; do
    sleep 0.1  # polls the run's end, against its limit
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    hung=$((hung + 1))
    {
      echo "== run $i: still running after ${limit} s"
      kill -USR1 "$pid"
      sleep 1  # lets the handler write the stack
      for t in /proc/"$pid"/task/*; do
        echo "thread ${t##*/} $(cat "$t/comm") wchan=$(cat "$t/wchan" 2>/dev/null) $(cut -d' ' -f3 "$t/stat")"
        cat "$t/stack" 2>/dev/null | head -12
      done
      ps -eo pid,ppid,stat,etime,comm | grep -E "gpubroker|gpu_peer|gpu_backend" || true
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv || true
    } >>"$log" 2>&1
    kill -9 "$pid"
    pkill -9 -x gpubrokerd; pkill -9 -x gpu_peer  # what the killed run left
  fi
  wait "$pid"
  rc=$?
  printf 'run %d: status %d, %.1f s\n' "$i" "$rc" "$(awk "BEGIN {print $(date +%s.%N) - $start}")" | tee -a "$out/repeat.txt"
done
echo "$hung of $runs runs hung" | tee -a "$out/repeat.txt"

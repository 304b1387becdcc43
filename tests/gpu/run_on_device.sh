#!/usr/bin/env bash
# Runs on the device machine, from the repository root, with .device/ carried
# (see stage.sh): the GPU-labelled tests, then every benchmark (bench/run.py).
# Logs go to $OUT when the device tool sets it.
set -uo pipefail
root=$PWD
out=${OUT:-$root/.device/out}
mkdir -p "$out"
# The staged ctest files name the source and build directories by the paths
# they had where they were built: make those paths lead here.
staged=$(sed -n 's/^# Build directory: //p' .device/build-gpu/CTestTestfile.cmake)
src=$(sed -n 's/^# Source directory: //p' .device/build-gpu/CTestTestfile.cmake)
if [ "$src" != "$root" ] && [ ! -e "$src" ]; then
  mkdir -p "$(dirname "$src")"
  ln -s "$root" "$src"
fi
[ -e "$root/build-gpu" ] || ln -s "$root/.device/build-gpu" "$root/build-gpu"
export LD_LIBRARY_PATH=$root/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -x "$root/.device/bin/ucx_perftest" ] && export GPUBROKER_UCX_PERFTEST=$root/.device/bin/ucx_perftest
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv | tee "$out/gpus.txt"
rc=0
if [ "${GPUBROKER_TESTS:-1}" = 1 ]; then
# What this run is for (docs/testing.md): a case that needs a GPU, root or
# as many GPUs as this machine has fails here instead of skipping. The only
# skips allowed are cases for more GPUs than there are, and the one case for
# a machine without a driver; tests/report.py prints every binary's counts.
gpus=$(nvidia-smi --list-gpus | wc -l)
export GPUBROKER_REQUIRE_GPU=1 GPUBROKER_REQUIRE_ROOT=1 GPUBROKER_REQUIRE_GPUS=$gpus
allowed="needs ($(seq -s '|' $((gpus + 1)) 64)) GPUs|needs a machine without a CUDA driver"
report() {  # report NAME: the counts of the ctest run just made, all in $out/reports.txt
  echo "== $1" >>"$out/reports.txt"
  python3 tests/report.py "$staged" --allow-skip "$allowed" | tee -a "$out/reports.txt" || rc=1
}
# GPUBROKER_GPU_ONLY=REGEX runs only the GPU tests it matches (ctest -R),
# as when one changed since a full run; the reliability variants always run.
(cd "$staged" && ctest -L gpu ${GPUBROKER_GPU_ONLY:+-R "$GPUBROKER_GPU_ONLY"} --no-tests=error --output-on-failure) 2>&1 |
  tee "$out/ctest-gpu.log" || rc=1
report gpu
# The reliability suite's GPU variants: chaos soak, permission matrix (and the
# broker-crash and IPC-exposure cases in gpu_backend_test above), and versions
# (live_test: stamped by kernels, checked on the consumers' own streams).
for backend in cuda_vmm cuda_ipc; do
  (cd "$staged" && GPUBROKER_TEST_BACKEND=$backend GPUBROKER_CHAOS_SECONDS=20 \
     ctest -R "chaos_test|permission_test|live_test" --no-tests=error --output-on-failure) 2>&1 |
    tee "$out/reliability-$backend.log" || rc=1
  report "reliability-$backend"
  (cd "$staged" && GPUBROKER_TEST_BACKEND=$backend ./tests/security_test --gtest_filter='*ViewsCannotWiden*') 2>&1 |
    tee -a "$out/reliability-$backend.log" || rc=1  # exit 0 only if the case ran and passed
done
fi
if [ "${GPUBROKER_BENCH:-1}" = 1 ]; then
  # Every benchmark, then the one table of figures, baselines and aims.
  # GPUBROKER_BENCH_ONLY=live_bench,live_sync_bench runs just those.
  python3 bench/run.py --build "$staged" --out "$out/bench" ${GPUBROKER_BENCH_ONLY:+--only "$GPUBROKER_BENCH_ONLY"} \
    2>&1 | tee "$out/bench.txt" || rc=1
fi
exit $rc

#!/usr/bin/env bash
# Runs on the device machine, from the repository root, with .device/ carried
# (see stage.sh): the GPU-labelled tests, then the GPU and control-path
# benchmarks. Logs go to $OUT when the device tool sets it.
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
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv | tee "$out/gpus.txt"
rc=0
if [ "${GPUBROKER_TESTS:-1}" = 1 ]; then
(cd "$staged" && ctest -L gpu --output-on-failure -V) 2>&1 | tee "$out/ctest-gpu.log" || rc=1
grep -q "100% tests passed" "$out/ctest-gpu.log" || rc=1
# The reliability suite's GPU variants: chaos soak, permission matrix (and the
# broker-crash and IPC-exposure cases in gpu_backend_test above).
for backend in cuda_vmm cuda_ipc; do
  (cd "$staged" && GPUBROKER_TEST_BACKEND=$backend GPUBROKER_CHAOS_SECONDS=20 \
     ctest -R "chaos_test|permission_test" --output-on-failure -V) 2>&1 | tee "$out/ctest-reliability-$backend.log" || rc=1
  grep -q "100% tests passed" "$out/ctest-reliability-$backend.log" || rc=1
done
fi
if [ "${GPUBROKER_BENCH:-1}" = 1 ]; then
  timeout 300 "$staged/bench/gpu_bench" 2>&1 | tee "$out/gpu_bench.txt"
  timeout 120 "$staged/bench/control_bench" --iterations 20000 2>&1 | tee "$out/control_bench.txt"
  GPUBROKERD=$staged/broker/gpubrokerd GPUBROKER_LIBRARY=$staged/client/libgpubroker.so \
    timeout 300 python3 bench/python_attach_bench.py 50 2>&1 | tee "$out/python_bench.txt"
  GPUBROKERD=$staged/broker/gpubrokerd GPUBROKER_LIBRARY=$staged/client/libgpubroker.so \
    timeout 300 python3 bench/weight_sync_bench.py 2>&1 | tee "$out/weight_sync.txt"
  timeout 120 "$staged/bench/scale_bench" 2>&1 | tee "$out/scale_bench.txt"
fi
exit $rc

#!/usr/bin/env bash
# Runs the Python tests (host | gpu) with the first interpreter that has NumPy:
# $GPUBROKER_PYTHON, then Debian's /usr/bin/python3, then python3 on PATH.
# Exit 77 when some test skipped (runner.py); GPUBROKER_REQUIRE_GPU=1 makes
# the GPU tests fail where they would skip.
set -euo pipefail
which=${1:-host}
here=$(cd "$(dirname "$0")" && pwd)
for py in ${GPUBROKER_PYTHON:-} /usr/bin/python3 python3; do
  if command -v "$py" >/dev/null && "$py" -c "import numpy" 2>/dev/null; then
    if [ "$which" = gpu ] && ! "$py" -c "import torch" 2>/dev/null; then
      [ "${GPUBROKER_REQUIRE_GPU:-0}" = 0 ] || { echo "$py has no torch, and GPUBROKER_REQUIRE_GPU is set" >&2; exit 1; }
      continue
    fi
    export PYTHONPATH=$here/..:$here${PYTHONPATH:+:$PYTHONPATH}
    exec "$py" "$here/runner.py" "test_$which"
  fi
done
echo "no Python interpreter with numpy found (install python3-numpy)" >&2
exit 1

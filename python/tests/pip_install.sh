#!/usr/bin/env bash
# `pip install ./python` into a fresh virtual environment, offline: the
# installed package carries libgpubroker.so and reports a missing broker as
# gpubroker.Unavailable.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${GPUBROKER_BUILD_DIR:?set GPUBROKER_BUILD_DIR to the build tree}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$tmp/venv"
cp -r "$root/python" "$tmp/src"  # build outside the source tree
GPUBROKER_BUILD_DIR=$build "$tmp/venv/bin/python" -m pip install -q --no-build-isolation "$tmp/src"
cd "$tmp"
env -u GPUBROKER_LIBRARY -u PYTHONPATH GPUBROKER_SOCKET="$tmp/none.sock" "$tmp/venv/bin/python" - <<'PY'
import gpubroker, gpubroker._capi as capi
lib = capi._find_library()
assert lib.startswith(gpubroker.__path__[0]), f"library not bundled: {lib}"
try:
    gpubroker.connect()
    raise SystemExit("connected to a broker that does not exist")
except gpubroker.Unavailable as e:
    assert "no broker at" in str(e), e
print("pip install: ok,", lib)
PY

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
# A wheel for this platform (it carries a compiled library), with py.typed.
GPUBROKER_BUILD_DIR=$build "$tmp/venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps \
  -w "$tmp/wheels" "$tmp/src"
wheel=$(ls "$tmp"/wheels/gpubroker-*.whl)
case $(basename "$wheel") in
  *-py3-none-linux_*.whl) ;;
  *) echo "wheel is not tagged for its platform: $(basename "$wheel")"; exit 1 ;;
esac
/usr/bin/python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
wheel = next(n for n in names if n.endswith(".dist-info/WHEEL"))
assert "Root-Is-Purelib: false" in zipfile.ZipFile(sys.argv[1]).read(wheel).decode(), "wheel claims purelib"
assert "gpubroker/py.typed" in names and "gpubroker/libgpubroker.so" in names, names
PY
"$tmp/venv/bin/python" -m pip install -q --no-deps "$wheel"
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
import importlib.metadata
assert gpubroker.__version__ == importlib.metadata.version("gpubroker"), gpubroker.__version__
print("pip install: ok,", lib, gpubroker.__version__)
PY

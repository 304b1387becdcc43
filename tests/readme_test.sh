#!/usr/bin/env bash
# The README's blocks marked `readme-test: NAME` run as written, as a new user
# would run them: in a fresh checkout layout (build/ and python/ at its top),
# in a clean environment (no PATH to gpubrokerctl, a fresh HOME, no venv yet),
# against a real broker, and twice, since slots outlive the processes that
# make them and a second run must not fail.
set -euo pipefail
build=$(cd "${1:?usage: readme_test.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
broker=
cleanup() {
  [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# The block after the marker line, without its fences.
block() {
  awk -v tag="readme-test: $1" 'index($0, tag) {want = 1; next}
    want && !on && /^```/ {on = 1; next}
    on && /^```$/ {exit}
    on {print}' "$src/README.md"
}
quickstart=$(block quickstart)
python_block=$(block python)
[ -n "$quickstart" ] && [ -n "$python_block" ] || { echo "README: a marked block is missing"; exit 1; }

mkdir -p "$tmp/checkout" "$tmp/home"
ln -s "$build" "$tmp/checkout/build"
cp -r "$src/python" "$tmp/checkout/python"
rm -rf "$tmp/checkout/python/build" "$tmp/checkout/python"/*.egg-info

sock=$tmp/gpubroker.sock
"$build/broker/gpubrokerd" --socket "$sock" --registry "readme-test-$$" >"$tmp/broker.log" 2>&1 &
broker=$!
for _ in $(seq 200); do  # polls a condition (the broker answering), 20 s at most
  "$build/client/gpubrokerctl" --socket "$sock" status >/dev/null 2>&1 && break
  kill -0 "$broker" 2>/dev/null || { echo "broker exited:"; cat "$tmp/broker.log"; exit 1; }
  sleep 0.1
done
# The caller's PATH, as a new user has it (another python3 first on it, say), and nothing else.
clean=(env -i "HOME=$tmp/home" "PATH=$PATH" LANG=C.UTF-8 "GPUBROKER_SOCKET=$sock")

for run in 1 2; do
  (cd "$tmp/checkout" && "${clean[@]}" bash -euo pipefail -c "$quickstart") >"$tmp/quick.$run" 2>&1 ||
    { echo "README quickstart, run $run, failed:"; cat "$tmp/quick.$run"; exit 1; }
done
# What a reader is told to expect: the first run counts 1, the second 2.
grep -qx "demo/counts: \[1 1 1 1 1 1 1 1\]" "$tmp/quick.1" || { echo "run 1:"; cat "$tmp/quick.1"; exit 1; }
grep -qx "demo/counts: \[2 2 2 2 2 2 2 2\]" "$tmp/quick.2" || { echo "run 2:"; cat "$tmp/quick.2"; exit 1; }
grep -q "^created demo/frames: float32 (4, 4)" "$tmp/quick.1" || { cat "$tmp/quick.1"; exit 1; }
grep -qx "exists: demo/frames" "$tmp/quick.2" || { cat "$tmp/quick.2"; exit 1; }

# The headline Python snippet, with the package the quickstart installed: it
# picks the GPU when there is one and host memory otherwise.
for run in 1 2; do
  (cd "$tmp/checkout" && "${clean[@]}" .venv/bin/python3 -c "$python_block") >"$tmp/py.$run" 2>&1 ||
    { echo "README Python snippet, run $run, failed:"; cat "$tmp/py.$run"; exit 1; }
done
shown=$("$build/client/gpubrokerctl" --socket "$sock" ls weights/layer0 --format csv,noheader --fields dtype,shape)
[ "$shown" = 'bfloat16,"(4096, 4096)"' ] || { echo "weights/layer0: $shown"; exit 1; }
echo "README blocks: ok (quickstart and Python snippet, each run twice)"

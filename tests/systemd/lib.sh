# Shared by the tests that run under a real systemd manager (v252, booted in
# namespaces by ../shared/sysd; root only). Source it with the build directory
# as $1: it finds the manager's scripts, installs the build into the
# manager's root as `cmake --install` lays it out, boots it and does what a
# package's postinst does. Exit 77 (skipped) when not root or without the
# sysd scripts, unless GPUBROKER_REQUIRE_SYSTEMD=1 (CI sets it: there a
# missing manager is a failure, not a skip).
#
# Gives: $C (systemctl inside; `$C -x CMD` runs any command inside), $share
# (the host's side of /share inside), $seed, check/ok/bad, until_true, prop,
# and `summary` to end the test with.
set -uo pipefail
build=$(cd "${1:?build directory}" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
skip=77
[ "${GPUBROKER_REQUIRE_SYSTEMD:-0}" = 1 ] && skip=1
sysd=${GPUBROKER_SYSD:-}
for candidate in "$root/../shared/sysd" /work/shared/sysd; do
  [ -z "$sysd" ] && [ -x "$candidate/boot.sh" ] && sysd=$(cd "$candidate" && pwd)
done
[ "$(id -u)" = 0 ] || { echo "skipped: needs root"; exit $skip; }
[ -x "${sysd:-}/boot.sh" ] || { echo "skipped: no sysd scripts (set GPUBROKER_SYSD)"; exit $skip; }

export SYSD_DIR=$(mktemp -d /tmp/gpb-sysd-XXXXXX)
share=$SYSD_DIR/share
seed=$SYSD_DIR/seed
C="$sysd/ctl.sh"
pass=0 fail=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
prop() { $C show -p "$2" --value "$1"; }
# Two outputs compared: never equal when either is empty (a reader that
# printed nothing must not match a digest that was never taken).
same() { [ -n "$1" ] && [ "$1" = "$2" ]; }
differ() { [ -n "$1" ] && [ -n "$2" ] && [ "$1" != "$2" ]; }
summary() { echo "$pass passed, $fail failed"; [ "$fail" = 0 ]; }
# Polls a condition (not a sleep: it returns as soon as the condition holds).
until_true() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}
cleanup() {
  exec 7>&- 8<&- 2>/dev/null
  "$sysd/stop.sh" >/dev/null 2>&1
  rm -rf "$SYSD_DIR"
}
trap cleanup EXIT

mkdir -p "$share/python" "$seed/etc/systemd/system"
DESTDIR=$seed cmake --install "$build" --prefix /usr/local >/dev/null || { echo "install failed"; exit 1; }
cp -r "$root/python/gpubroker" "$share/python/"
cp "$here"/*.py "$share/"
# Units may be added to $seed before booting; the caller boots with boot_and_install.
boot_and_install() {
  "$sysd/boot.sh" >/dev/null || { echo "systemd did not boot"; exit 1; }
  $C -x sh -c 'ldconfig && systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload' ||
    { echo "set-up inside failed"; exit 1; }
}

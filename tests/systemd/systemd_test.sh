#!/usr/bin/env bash
# The unit under a real systemd manager (v252, booted in namespaces by
# ../shared/sysd; root only): the build is installed into the manager's root
# as `cmake --install` lays it out, and every check goes through systemctl,
# journalctl and real clients inside.
#
#   tests/systemd/systemd_test.sh BUILD_DIR
#
# A client holds a view of fresh random bytes through each restart; its bytes
# and a new client's are compared after each. Exit 77 (skipped) when not root
# or without the sysd scripts, unless GPUBROKER_REQUIRE_SYSTEMD=1 (lib.sh).
source "$(dirname "$0")/lib.sh" "${1:-}"
inside() { $C -x env GPUBROKER_LIBRARY=/usr/local/lib/libgpubroker.so.0 PYTHONPATH=/share/python "$@"; }
ctl() { inside /usr/local/bin/gpubrokerctl "$@"; }

mkdir -p "$seed/etc/systemd/system/gpubroker.service.d"
# Test speed only: the watchdog and the abort after it in seconds, not half a minute.
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' >"$seed/etc/systemd/system/gpubroker.service.d/test.conf"
boot_and_install

echo "== install: sysusers, tmpfiles"
check "sysusers created the gpubroker user" $C -x getent passwd gpubroker
check "sysusers created the gpubroker-admin group" $C -x getent group gpubroker-admin
check "the host's /etc/passwd is untouched" bash -c '! getent passwd gpubroker'

echo "== start returns after READY"
$C start gpubroker.service
check "active after start" test "$(prop gpubroker.service ActiveState)" = active
check "the socket answers at once (start waited for READY)" ctl status
check "runs as gpubroker" test "$($C -x ps -o user= -p "$(prop gpubroker.service MainPID)")" = gpubroker
check "the example config's pools exist" ctl show staging/input
check "the example config's metrics are served on localhost" bash -c "$C -x python3 -c \"import urllib.request; \
  t = urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode(); assert 'gpubroker_slots ' in t\""

echo "== a client holds a view of random bytes"
mkfifo "$share/cmd" "$share/out"
inside python3 /share/holder.py held/data 1048576 /share/cmd /share/out &
holder=$!
# Read-write opens of the FIFOs never block, even if the holder died early.
exec 7<>"$share/cmd" 8<>"$share/out"
read -r -t 30 line <&8
check "holder created and filled its slot" test "$line" = ready
ask() { echo "$1" >&7 && read -r -t 30 answer <&8 && echo "$answer"; }
digest=$(ask digest)
check "a new client reads the holder's bytes" same "$(inside python3 /share/reader.py held/data)" "$digest"
# An engine pinning version 1 of a trainer's two-buffer tree: the trainer has
# no buffer free until the engine moves on, and a restart must not change that.
mkfifo "$share/pin-cmd" "$share/pin-out"
inside python3 /share/pinner.py pinned/policy /share/pin-cmd /share/pin-out &
pinner=$!
exec 5<>"$share/pin-cmd" 6<>"$share/pin-out"
read -r -t 30 line <&6
check "an engine pins version 1; the trainer finds no buffer free" test "$line" = "ready busy"
pool_before=$(ctl show --json staging/input | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocation_id"])')

echo "== restart keeps every buffer"
pid0=$(prop gpubroker.service MainPID)
check "systemctl restart succeeds with the example config's pools" $C restart gpubroker.service
check "a new main process" differ "$(prop gpubroker.service MainPID)" "$pid0"
check "no automatic restart was needed" test "$(prop gpubroker.service NRestarts)" = 0
check "the held view kept its bytes" test "$(ask check)" = same
check "a new client reads the same bytes after the restart" same "$(inside python3 /share/reader.py held/data)" "$digest"
pool_after=$(ctl show --json staging/input | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocation_id"])')
check "the pool is the same allocation" same "$pool_before" "$pool_after"
echo check >&5 && read -r -t 60 pinned <&6
check "the engine's pin survived the restart: the trainer still waits, version 1 is whole, moving on frees it" \
  test "$pinned" = "busy whole moved 2 3"
echo quit >&5

echo "== reload"
conf=/usr/local/etc/gpubroker/gpubroker.yaml
$C -x sh -c "cp $conf /share/good.yaml &&
  sed -i 's/^pools:/pools:\n  - name: reloaded\/pool\n    backend: host\n    bytes: 4096/' $conf"
pid1=$(prop gpubroker.service MainPID)
check "systemctl reload of a valid config succeeds" $C reload gpubroker.service
check "the reloaded config's pool exists" ctl show reloaded/pool
$C -x sh -c "echo 'bogus_key: 1' >>$conf"
check "systemctl reload of a bad config fails" bash -c "! $C reload gpubroker.service"
check "still active, same process" test "$(prop gpubroker.service ActiveState)/$(prop gpubroker.service MainPID)" = "active/$pid1"
check "the running config stays (its pool is there)" ctl show reloaded/pool
$C -x cp /share/good.yaml "$conf"

echo "== journald"
$C -x journalctl --sync
check "the rejected reload is in journalctl -p warning" \
  bash -c "$C -x journalctl -u gpubroker -p warning --no-pager -o cat | grep -q 'bogus_key'"
check "journalctl -p warning has no info lines" \
  bash -c "! $C -x journalctl -u gpubroker -p warning --no-pager -o cat | grep -q 'gpubrokerd ready'"
check "info lines are there at priority info" \
  bash -c "$C -x journalctl -u gpubroker -p info --no-pager -o cat | grep -q 'gpubrokerd ready'"
check "no timestamp of the broker's own inside a line" \
  bash -c "! $C -x journalctl -u gpubroker --no-pager -o cat | grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2} '"

echo "== sandboxing"
pid=$(prop gpubroker.service MainPID)
as_broker="$C -x nsenter -t $pid -m setpriv --reuid=gpubroker --regid=gpubroker --clear-groups"
check "the broker's view of /usr is read-only (root's write fails: EROFS)" \
  bash -c "$C -x nsenter -t $pid -m touch /usr/local/gpb-probe 2>&1 | grep -q 'Read-only file system'"
check "the broker's view of /etc is read-only" \
  bash -c "$C -x nsenter -t $pid -m touch /etc/gpb-probe 2>&1 | grep -q 'Read-only file system'"
check "the broker's user can write its runtime directory" $as_broker touch /run/gpubroker/probe
check "no capabilities" test "$($C -x grep CapEff /proc/"$pid"/status | awk '{print $2}')" = 0000000000000000
check "NoNewPrivileges" test "$($C -x grep NoNewPrivs /proc/"$pid"/status | awk '{print $2}')" = 1

echo "== watchdog"
pid2=$(prop gpubroker.service MainPID)
$C -x kill -STOP "$pid2"  # a stuck event loop: no more watchdog pings
check "the watchdog killed it and systemd restarted it" until_true 30 \
  bash -c "[ \"\$($C show -p NRestarts --value gpubroker.service)\" = 1 ] && [ \"\$($C show -p ActiveState --value gpubroker.service)\" = active ]"
check "the journal says why" bash -c "$C -x journalctl -u gpubroker --no-pager | grep -q 'Watchdog timeout'"
check "the held view kept its bytes" test "$(ask check)" = same
check "a new client reads the same bytes after the watchdog restart" \
  same "$(inside python3 /share/reader.py held/data)" "$digest"

echo "== drain, then stop"
check "gpubrokerctl drain" ctl drain
echo quit >&7
wait "$holder" 2>/dev/null
wait "$pinner" 2>/dev/null
check "systemctl stop" $C stop gpubroker.service
check "stopped cleanly" test "$(prop gpubroker.service ActiveState)/$(prop gpubroker.service Result)" = inactive/success

summary

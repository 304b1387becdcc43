#!/usr/bin/env bash
# Brokers of users who are not root, under a real systemd manager with real
# per-user managers (`systemctl --user`, /run/user/UID): each user's broker
# runs with no flags and no config, listens in that user's runtime directory,
# and that user's clients find it by the same rule, with no GPUBROKER_SOCKET;
# two users' brokers hold a slot of the same name without colliding; a user
# with no broker of their own reaches the system one; a user with neither is
# told what to do.
#
#   tests/systemd/rootless_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh" "${1:-}"
boot_and_install

declare -A uid=([alice]=61001 [bob]=61002 [carol]=61003 [dave]=61004 [erin]=61005 [mallory]=61006)
for u in "${!uid[@]}"; do $C -x useradd -m -u "${uid[$u]}" "$u" 2>/dev/null; done
for u in alice bob carol dave; do $C start "user@${uid[$u]}.service"; done
# A command as USER, with what a login session gives (XDG_RUNTIME_DIR) and nothing else.
as() {
  local u=$1; shift
  $C -x setpriv --reuid="$u" --regid="$u" --init-groups env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/bin:/bin HOME="/home/$u" \
    XDG_RUNTIME_DIR="/run/user/${uid[$u]}" GPUBROKER_LIBRARY=/usr/local/lib/libgpubroker.so.0 \
    PYTHONPATH=/share/python "$@"
}
sock() { echo "/run/user/${uid[$1]}/gpubroker/gpubroker.sock"; }

echo "== systemctl --user start, for two users"
for u in alice bob; do
  check "$u: systemctl --user start gpubroker" as "$u" systemctl --user start gpubroker
  check "$u: active" test "$(as "$u" systemctl --user show -p ActiveState --value gpubroker)" = active
  check "$u: its socket is in $u's runtime directory, $u's" \
    test "$($C -x stat -c %U:%F "$(sock "$u")")" = "$u:socket"
  check "$u: gpubrokerctl finds it with no flags" as "$u" gpubrokerctl status
done

echo "== the same slot name in both, each with its own bytes"
a=$(as alice python3 /share/fill.py model/w 1048576)
b=$(as bob python3 /share/fill.py model/w 1048576)
check "two fills made different bytes" test -n "$a" -a -n "$b" -a "$a" != "$b"
check "alice reads alice's bytes in a new process" same "$(as alice python3 /share/reader.py model/w)" "$a"
check "bob reads bob's bytes in a new process" same "$(as bob python3 /share/reader.py model/w)" "$b"
out=$($C -x setpriv --reuid=bob --regid=bob --init-groups env GPUBROKER_SOCKET="$(sock alice)" \
      /usr/local/bin/gpubrokerctl ls 2>&1); rc=$?
check "bob cannot reach alice's broker even by naming it (exit 5)" test "$rc" = 5
check "and is told what keeps him out" grep -q "permission denied: a directory on the way to it keeps you out.*a per-user broker serves only its own user" <<<"$out"
out=$($C -x setpriv --reuid=bob --regid=bob --init-groups env GPUBROKER_SOCKET="$(sock alice)" \
      /usr/local/bin/gpubrokerctl doctor 2>&1); rc=$?
check "gpubrokerctl doctor says so too, and fails (exit 1)" \
  bash -c "[ $rc = 1 ] && grep -q 'FAIL  socket      a directory on the path to' <<<'$out'"
check "doctor for alice: every check passes" as alice gpubrokerctl doctor

echo "== systemctl --user restart keeps the bytes"
pid=$(as alice systemctl --user show -p MainPID --value gpubroker)
check "alice: systemctl --user restart" as alice systemctl --user restart gpubroker
check "alice: a new main process" differ "$(as alice systemctl --user show -p MainPID --value gpubroker)" "$pid"
check "alice reads the same bytes after the restart" same "$(as alice python3 /share/reader.py model/w)" "$a"
check "alice: systemctl --user reload" as alice systemctl --user reload gpubroker

echo "== gpubrokerd with no flags, run by hand"
as carol gpubrokerd >"$share/carol.log" 2>&1 &
check "carol's broker answers at her socket" until_true 20 as carol gpubrokerctl status
c=$(as carol python3 /share/fill.py x 4096)
check "carol reads her bytes in a new process" test -n "$c" -a "$(as carol python3 /share/reader.py x)" = "$c"
$C -x pkill -TERM -u carol -x gpubrokerd
check "carol's broker stops on SIGTERM" until_true 20 bash -c "! $C -x pgrep -u carol -x gpubrokerd"

echo "== no broker: the error says where it looked and what to do"
out=$(as dave gpubrokerctl ls 2>&1); rc=$?
check "exit status 3 (unavailable)" test "$rc" = 3
check "names the system socket" grep -q "no broker at /run/gpubroker/gpubroker.sock" <<<"$out"
check "names the user's own socket" grep -qF "nor at $(sock dave)" <<<"$out"
check "says what to do" grep -q "start one.*GPUBROKER_SOCKET" <<<"$out"
echo "   ($out)"
out=$(as erin env -u XDG_RUNTIME_DIR gpubrokerd 2>&1); rc=$?
check "a broker without XDG_RUNTIME_DIR (not root) exits 2" test "$rc" = 2
check "and says what to set" grep -q "XDG_RUNTIME_DIR.*socket.path.*--socket" <<<"$out"

echo "== with the system broker running"
# The example config's socket is 0660, group gpubroker: its users are members.
$C -x usermod -aG gpubroker dave && $C -x usermod -aG gpubroker erin
$C start gpubroker.service
check "dave, with no broker of his own, reaches the system broker" \
  bash -c "$(declare -f as); $(declare -p uid); C='$C'; as dave gpubrokerctl ls | grep -q staging/input"
check "alice still reaches her own" bash -c "$(declare -f as); $(declare -p uid); C='$C'; \
  out=\$(as alice gpubrokerctl ls) && grep -q model/w <<<\"\$out\" && ! grep -q staging/input <<<\"\$out\""

echo "== a runtime directory someone else made first"
# Without logind, XDG_RUNTIME_DIR is often a /tmp path that anyone may create
# before its user does: mallory makes erin's and listens there.
squat=/tmp/runtime-erin
$C -x setpriv --reuid=mallory --regid=mallory --init-groups mkdir -m 0755 -p $squat/gpubroker
$C -x setpriv --reuid=mallory --regid=mallory --init-groups env -i \
  /usr/local/sbin/gpubrokerd --socket $squat/gpubroker/gpubroker.sock >"$share/mallory.log" 2>&1 &
check "mallory's broker listens in erin's runtime directory" \
  until_true 20 $C -x test -S $squat/gpubroker/gpubroker.sock
as_erin() {
  $C -x setpriv --reuid=erin --regid=erin --init-groups env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/bin:/bin \
    XDG_RUNTIME_DIR=$squat "$@"
}
out=$(as_erin gpubrokerctl ls 2>&1)
check "erin's client does not take mallory's socket for her own (it goes to the system broker)" \
  grep -q staging/input <<<"$out"
out=$(as_erin env GPUBROKER_SOCKET=$squat/gpubroker/gpubroker.sock gpubrokerctl ls 2>&1)
check "named explicitly, mallory's broker is refused: it does not run as erin" grep -q "not as you" <<<"$out"
out=$(as_erin gpubrokerd 2>&1)
check "erin's own broker refuses a runtime directory that is not hers" \
  grep -q "XDG_RUNTIME_DIR.*belongs to uid ${uid[mallory]}" <<<"$out"
$C -x pkill -TERM -u mallory -x gpubrokerd

echo "== stop"
for u in alice bob; do
  as "$u" systemctl --user stop gpubroker
  check "$u: stopped cleanly" test "$(as "$u" systemctl --user show -p ActiveState --value gpubroker)/$(as "$u" \
    systemctl --user show -p Result --value gpubroker)" = inactive/success
done
summary

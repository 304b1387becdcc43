#!/usr/bin/env bash
# `cmake --install` into a scratch prefix: every file an operator and a
# developer need is there, find_package(gpubroker) and pkg-config both build
# and run a program against the installed library.
set -euo pipefail
build=${1:?usage: install_test.sh BUILD_DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
for f in sbin/gpubrokerd bin/gpubrokerctl include/gpubroker/client.hpp include/gpubroker/gpubroker.h \
         include/gpubroker/status.hpp lib/cmake/gpubroker/gpubroker-config.cmake lib/pkgconfig/gpubroker.pc lib/pkgconfig/gpubroker-cxx.pc \
         lib/systemd/system/gpubroker.service lib/systemd/user/gpubroker.service lib/sysusers.d/gpubroker.conf lib/tmpfiles.d/gpubroker.conf \
         etc/gpubroker/gpubroker.yaml share/doc/gpubroker/README.md share/man/man1/gpubrokerctl.1 \
         share/man/man8/gpubrokerd.8 share/bash-completion/completions/gpubrokerctl \
         share/zsh/site-functions/_gpubrokerctl share/fish/vendor_completions.d/gpubrokerctl.fish; do
  [ -e "$prefix/$f" ] || { echo "missing after install: $f"; exit 1; }
done
ls "$prefix"/lib/libgpubroker.so.0 >/dev/null
# The units name this install's programs, config and docs, whatever prefix the
# build was configured with (here: --prefix at install time), and systemd
# accepts them as installed.
for unit in lib/systemd/system/gpubroker.service lib/systemd/user/gpubroker.service; do
  for want in "ExecStart=$prefix/sbin/gpubrokerd" "ExecReload=$prefix/bin/gpubrokerctl reload" \
              "Documentation=file://$prefix/share/doc/gpubroker/README.md"; do
    grep -qxF -e "$want" -e "$want --config $prefix/etc/gpubroker/gpubroker.yaml" "$prefix/$unit" ||
      { echo "$unit: no line '$want': $(grep -E '^(Exec|Documentation)' "$prefix/$unit")"; exit 1; }
  done
done
grep -qxF "d $prefix/etc/gpubroker 0755 root root -" "$prefix/lib/tmpfiles.d/gpubroker.conf" ||
  { echo "tmpfiles: $(grep -v '^#' "$prefix/lib/tmpfiles.d/gpubroker.conf")"; exit 1; }
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$prefix/lib/systemd/system/gpubroker.service"
  XDG_RUNTIME_DIR=$tmp systemd-analyze verify --user "$prefix/lib/systemd/user/gpubroker.service"
elif [ -n "${CI:-}" ]; then
  echo "systemd-analyze is missing"; exit 1
fi
"$prefix/bin/gpubrokerctl" --help >/dev/null  # finds its library through the install RPATH
# The man page has every command, from the program's own help; the completion
# script is the program's own.
commands="status ls show create rm wait clients peers follow unfollow leases shutdown drain reload doctor top completion"
[ "$(grep '^\.SS [^"]' "$prefix/share/man/man1/gpubrokerctl.1" | cut -d' ' -f2 | tr '\n' ' ')" = "$commands " ] ||
  { echo "man page sections differ from the commands: $(grep '^\.SS ' "$prefix/share/man/man1/gpubrokerctl.1")"; exit 1; }
cmp -s "$prefix/share/bash-completion/completions/gpubrokerctl" <("$prefix/bin/gpubrokerctl" completion bash) &&
  cmp -s "$prefix/share/zsh/site-functions/_gpubrokerctl" <("$prefix/bin/gpubrokerctl" completion zsh) &&
  cmp -s "$prefix/share/fish/vendor_completions.d/gpubrokerctl.fish" <("$prefix/bin/gpubrokerctl" completion fish) ||
  { echo "installed completion differs from the program's"; exit 1; }

# The README's C++ snippet, verbatim, in a main(): built by a plain
# find_package project that says nothing of the C++ standard (the target
# brings C++20), and by pkg-config (gpubroker-cxx).
mkdir -p "$tmp/app"
{
  echo '#include <iostream>'
  echo '#include <gpubroker/client.hpp>'
  echo 'int main() {'
  awk '/^From C\+\+/ {want = 1} want && /^```cpp$/ {on = 1; next} on && /^```$/ {exit} on {print}' \
    "$(dirname "$0")/../README.md"
  echo '  return 0;'
  echo '}'
} > "$tmp/app/app.cc"
grep -q "CreateAndAttach" "$tmp/app/app.cc" || { echo "README snippet not found"; exit 1; }
cat > "$tmp/app/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(app CXX)
find_package(gpubroker 0.1 REQUIRED)
add_executable(app app.cc)
target_link_libraries(app gpubroker::gpubroker)
CMAKE
cmake -S "$tmp/app" -B "$tmp/app/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/app/build" >/dev/null || { echo "README snippet: find_package build failed"; exit 1; }
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
c++ "$tmp/app/app.cc" -o "$tmp/app/app-pc" $(pkg-config --cflags --libs gpubroker-cxx) ||
  { echo "README snippet: pkg-config build failed"; exit 1; }
# Run against no broker: the snippet reports the error and returns 1, no crash.
for app in "$tmp/app/build/app" "$tmp/app/app-pc"; do
  rc=0
  GPUBROKER_SOCKET=/nonexistent/gpubroker.sock LD_LIBRARY_PATH=$prefix/lib "$app" 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] && grep -q "no broker at" "$tmp/err" || { echo "README snippet: exit $rc, $(cat "$tmp/err")"; exit 1; }
done

cat > "$tmp/c.c" <<'C'
#include <gpubroker/gpubroker.h>
#include <stdio.h>
#include <string.h>
int main(void) {
  gpb_client* c = NULL;
  gpb_error err;
  int rc = gpb_connect("/nonexistent/gpubroker.sock", "c-test", &c, &err);
  printf("%s: %s\n", gpb_code_name(rc), err.message);
  return rc == GPB_UNAVAILABLE && strstr(err.message, "no broker") ? 0 : 1;
}
C
cc "$tmp/c.c" -o "$tmp/c" $(pkg-config --cflags --libs gpubroker)
LD_LIBRARY_PATH=$prefix/lib "$tmp/c"
echo "install: ok"

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
         include/gpubroker/status.hpp lib/cmake/gpubroker/gpubroker-config.cmake lib/pkgconfig/gpubroker.pc \
         lib/systemd/system/gpubroker.service lib/systemd/user/gpubroker.service lib/sysusers.d/gpubroker.conf lib/tmpfiles.d/gpubroker.conf \
         etc/gpubroker/gpubroker.yaml share/doc/gpubroker/README.md; do
  [ -e "$prefix/$f" ] || { echo "missing after install: $f"; exit 1; }
done
ls "$prefix"/lib/libgpubroker.so.0 >/dev/null
"$prefix/bin/gpubrokerctl" --help >/dev/null  # finds its library through the install RPATH

mkdir -p "$tmp/app"
cat > "$tmp/app/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(app CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(gpubroker 0.1 REQUIRED)
add_executable(app app.cc)
target_link_libraries(app gpubroker::gpubroker)
CMAKE
cat > "$tmp/app/app.cc" <<'CPP'
#include <gpubroker/client.hpp>
#include <iostream>
int main() {
  gpubroker::ConnectOptions o;
  o.socket_path = "/nonexistent/gpubroker.sock";
  auto c = gpubroker::Client::Connect(o);
  std::cout << (c.ok() ? "connected" : c.status().ToString()) << "\n";
  return c.status().code() == gpubroker::Code::kUnavailable ? 0 : 1;
}
CPP
cmake -S "$tmp/app" -B "$tmp/app/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/app/build" >/dev/null
LD_LIBRARY_PATH=$prefix/lib "$tmp/app/build/app"

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
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
cc "$tmp/c.c" -o "$tmp/c" $(pkg-config --cflags --libs gpubroker)
LD_LIBRARY_PATH=$prefix/lib "$tmp/c"
echo "install: ok"

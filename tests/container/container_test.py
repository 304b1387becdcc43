#!/usr/bin/python3
"""Clients in real containers (Podman, root): each its own PID, IPC, mount,
network and UTS namespaces, no shared /dev/shm, and only the broker's socket
directory bind-mounted, which is what a Kubernetes pod without hostIPC sees.
Host slots, fresh random bytes, every byte compared through SHA-256 on both
sides.

    tests/container/container_test.py BUILD_DIR

Cases: a root client (lists, looks up, reads, takes a state dict, writes
back, creates); a client run as another uid (the broker sees that uid and
applies slot modes to it); a client whose container maps its root to host uid
200000 (the broker sees 200000, so container root is not the host's root); a
broker inside a user namespace that does not map a client's uid (refused,
with the reason). Exit 77 (skipped) without root or Podman, unless
GPUBROKER_REQUIRE_CONTAINERS=1 (CI sets it).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1])
SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PYTHON = "/usr/bin/python3"  # Debian's, with the NumPy .ci/deps installs
PEER = os.path.join(SOURCE, "tests", "container", "peer.py")
CTL = os.path.join(BUILD, "client", "gpubrokerctl")
ENV = {"GPUBROKER_LIBRARY": os.path.join(BUILD, "client", "libgpubroker.so"),
       "PYTHONPATH": os.path.join(SOURCE, "python")}
passed = failed = 0


def check(what, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"PASS: {what}")
    else:
        failed += 1
        print(f"FAIL: {what} {detail}")


def skip(why):
    print(f"skipped: {why}")
    sys.exit(1 if os.environ.get("GPUBROKER_REQUIRE_CONTAINERS") == "1" else 77)


def start_broker(run_dir, wrapper=()):
    """A host-memory broker listening at run_dir/gpubroker.sock; returns once it answers."""
    sock = os.path.join(run_dir, "gpubroker.sock")
    broker = subprocess.Popen([*wrapper, os.path.join(BUILD, "broker", "gpubrokerd"), "--socket", sock,
                               "--socket-mode", "0666", "--default-backend", "host", "--log-level", "warn"])
    deadline = time.monotonic() + 20
    while subprocess.run([CTL, "-s", sock, "status"], capture_output=True).returncode != 0:
        if broker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the broker at {sock} did not come up")
        time.sleep(0.05)  # polling a condition, not a delay
    return broker, sock


def on_host(sock, *args):
    r = subprocess.run([PYTHON, PEER, *args], env={**os.environ, **ENV, "GPUBROKER_SOCKET": sock},
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"host peer {args} failed: {r.stderr}")
    return json.loads(r.stdout)


def in_container(run_dir, prefix, *podman_args):
    # The host's root as a copy-on-write overlay (the container sees the host's
    # Python and this build as they were at its start), a /run of its own, and
    # /run/gpubroker the one thing shared with the host. No GPUBROKER_SOCKET: the client finds
    # the socket where a root client looks by default.
    cmd = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", "run", "--rm",
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
           "--network", "none", "--ipc", "private", "--pid", "private", "--uts", "private",
           "--tmpfs", "/run:rw,notmpcopyup", "-v", f"{run_dir}:/run/gpubroker", *podman_args,
           *[f"--env={k}={v}" for k, v in ENV.items()],
           "--rootfs", "/:O", PYTHON, PEER, "visit", prefix]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-2000:]}
    return json.loads(r.stdout)


def main():
    if os.geteuid() != 0:
        skip("needs root (Podman with --user and --uidmap)")
    if shutil.which("podman") is None or shutil.which("runc") is None:
        skip("no podman/runc (apt-get install podman runc)")
    tmp = tempfile.mkdtemp(prefix="gpb-container-")
    os.chmod(tmp, 0o755)
    run_dir = os.path.join(tmp, "run")
    os.mkdir(run_dir, 0o755)
    marker = f"/dev/shm/gpb-container-test-{os.getpid()}"
    open(marker, "w").close()
    broker, sock = start_broker(run_dir)
    host_ns = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in ("pid", "ipc", "net", "mnt", "user")}
    try:
        published = on_host(sock, "publish", "c")

        print("== a root client in a container")
        seen = in_container(run_dir, "c")
        check("the container ran the client", "error" not in seen, seen.get("error", ""))
        if "error" not in seen:
            for n in ("pid", "ipc", "net", "mnt"):
                check(f"its own {n} namespace", seen["ns"][n] != host_ns[n])
            check("the host's /dev/shm is not shared", os.path.basename(marker) not in seen["dev_shm"],
                  seen["dev_shm"])
            check("it found the socket by the default rule", seen["socket"] == "/run/gpubroker/gpubroker.sock")
            check("it lists every slot", {"c/data", "c/model", "c/inbox", "c/secret"} <= set(seen["names"]),
                  seen["names"])
            check("lookup through the registry it got over the socket",
                  seen["lookup"] == {"nbytes": 1 << 20, "dtype": "uint8", "shape": [1 << 20]}, seen["lookup"])
            check("it reads the host's random bytes, every one", seen["data"] == published["data"])
            check("it takes the whole state dict, every tensor intact", seen["model"] == published["model"],
                  f"{seen['model']} vs {published['model']}")
            check("its random write is what the host reads", on_host(sock, "digest", "c/inbox") == seen["inbox"])
            check("root in a container that shares the host's users is root", seen["secret"] == "attached")
            check("a slot it creates is owned by uid 0", on_host(sock, "owner", seen["made"]) == 0)

        print("== a client run as uid 1234")
        seen = in_container(run_dir, "c", "--user", "1234:1234")
        check("the container ran the client", "error" not in seen, seen.get("error", ""))
        if "error" not in seen:
            check("it reads the host's bytes", seen["data"] == published["data"])
            check("its write is what the host reads", on_host(sock, "digest", "c/inbox") == seen["inbox"])
            check("a 0600 slot of root's is refused", seen["secret"] == "permission_denied", seen["secret"])
            check("the broker records it as uid 1234", on_host(sock, "owner", seen["made"]) == 1234)

        print("== a container whose root is host uid 200000 (--uidmap)")
        seen = in_container(run_dir, "c", "--uidmap", "0:200000:65536", "--gidmap", "0:200000:65536")
        check("the container ran the client", "error" not in seen, seen.get("error", ""))
        if "error" not in seen:
            check("its own user namespace", seen["ns"]["user"] != host_ns["user"] and seen["uid"] == 0)
            check("it reads the host's bytes", seen["data"] == published["data"])
            check("container root is not host root: a 0600 slot of root's is refused",
                  seen["secret"] == "permission_denied", seen["secret"])
            check("the broker sees the mapped uid, 200000", on_host(sock, "owner", seen["made"]) == 200000)
    finally:
        broker.terminate()
        broker.wait()
        os.unlink(marker)

    print("== a broker in a user namespace that maps only root")
    ns_dir = os.path.join(tmp, "ns")
    os.mkdir(ns_dir, 0o755)
    broker, sock = start_broker(ns_dir, wrapper=("unshare", "--user", "--map-root-user"))
    try:
        r = subprocess.run(["setpriv", "--reuid=1234", "--regid=1234", "--clear-groups", CTL, "-s", sock, "ls"],
                           capture_output=True, text=True)
        check("a client whose uid it cannot map is refused", r.returncode != 0, r.stdout)
        check("and told why", "not mapped into the broker's user namespace" in r.stderr, r.stderr)
        r = subprocess.run([CTL, "-s", sock, "ls"], capture_output=True, text=True)
        check("root, which it maps, is served", r.returncode == 0, r.stderr)
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Clients in real containers (Podman, root): each its own PID, IPC, mount,
network and UTS namespaces, no shared /dev/shm, and only the broker's socket
directory bind-mounted, which is what a Kubernetes pod without hostIPC sees.
Host slots, fresh random bytes, every byte compared through SHA-256 on both
sides.

    tests/container/container_test.py BUILD_DIR          host slots, Podman
    tests/container/container_test.py BUILD_DIR --gpu    GPU slots, unshare

Cases: a root client (lists, looks up, reads, takes a state dict, writes
back, creates); a client run as another uid (the broker sees that uid and
applies slot modes to it); a client whose container maps its root to host uid
200000 (the broker sees 200000, so container root is not the host's root); a
broker inside a user namespace that does not map a client's uid (refused,
with the reason). Exit 77 (skipped) without root or Podman, unless
GPUBROKER_REQUIRE_CONTAINERS=1 (CI sets it).

With --gpu (the device machine, which has no Podman): the same root and
uid-1234 cases on cuda:0, in containers made with unshare (new pid, ipc, net,
uts and mount namespaces; a /dev/shm and a /run of their own, the socket
directory bound in; the rest of the file system is the host's). cuda_vmm must
pass; for cuda_ipc each namespace is tried alone and all together, and the
test reports which ones its handles cross (docs/deploy.md records the answer).
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1])
GPU = "--gpu" in sys.argv[2:]
SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CTL = os.path.join(BUILD, "client", "gpubrokerctl")
# Clients run as other users: what they read is staged where they can read it
# (the checkout may be in a directory of mode 0700).
sys.path.insert(0, os.path.join(SOURCE, "tests", "support"))
from staging import stage_for_other_users  # noqa: E402
STAGED = stage_for_other_users(SOURCE, os.path.join(BUILD, "client", "libgpubroker.so"),
                               [os.path.join(SOURCE, "tests", "container", "peer.py")])
PEER = STAGED.path("peer.py")
ENV = STAGED.env()
passed = failed = 0


def check(what, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"PASS: {what}")
    else:
        failed += 1
        print(f"FAIL: {what} {detail}")


def skip(why, required=True):
    """Exit 77, or 1 where the run requires what is missing: containers in CI
    (GPUBROKER_REQUIRE_CONTAINERS=1), a GPU on the GPU machine
    (GPUBROKER_REQUIRE_GPU=1, for --gpu)."""
    print(f"skipped: {why}")
    need = "GPUBROKER_REQUIRE_GPU" if GPU else "GPUBROKER_REQUIRE_CONTAINERS"
    sys.exit(1 if (required or GPU) and os.environ.get(need, "0") not in ("", "0") else 77)


def find_python():
    """$GPUBROKER_PYTHON, Debian's python3, or python3 on PATH: the first with NumPy (and torch for --gpu)."""
    need = "import numpy, torch" if GPU else "import numpy"
    for py in (os.environ.get("GPUBROKER_PYTHON"), "/usr/bin/python3", shutil.which("python3")):
        if py and os.path.exists(py) and subprocess.run([py, "-c", need], capture_output=True).returncode == 0:
            return py
    skip(f"no Python with {need[7:]}", required=not GPU)


def enter_user_namespace(uid_map):
    """For Popen's preexec_fn: a new user namespace whose uid and gid maps the
    parent (root) writes, as a container runtime does; returns once written."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    parent = os.getpid()
    if os.fork() == 0:  # a helper outside the namespace writes the maps
        os.read(ready_r, 1)
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{parent}/{kind}", "w") as f:
                f.write(uid_map + "\n")
        os.write(go_w, b"x")
        os._exit(0)
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(90)
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    os.setgroups([])


def start_broker(run_dir, backend="host", userns_map=None):
    """A broker listening at run_dir/gpubroker.sock; returns once it answers."""
    sock = os.path.join(run_dir, "gpubroker.sock")
    broker = subprocess.Popen([os.path.join(BUILD, "broker", "gpubrokerd"), "--socket", sock,
                               "--socket-mode", "0666", "--default-backend", backend, "--log-level", "warn"],
                              preexec_fn=(lambda: enter_user_namespace(userns_map)) if userns_map else None)
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


def visit_result(r):
    if r.returncode != 0:
        return {"error": (r.stderr.strip() or r.stdout.strip())[-2000:]}
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
    return visit_result(subprocess.run(cmd, capture_output=True, text=True, timeout=120))


UNSHARE = {"pid": ["--pid", "--fork"], "ipc": ["--ipc"], "net": ["--net"], "uts": ["--uts"],
           "mnt": ["--mount", "--propagation", "private"]}


def in_unshare(run_dir, prefix, namespaces=tuple(UNSHARE), uid=None):
    """A container made of namespaces. With a mount namespace it gets its own
    /proc, /dev/shm and /run, and only the socket directory is bound in, at
    the default path; without one, it is told the host's socket path."""
    flags = [f for n in namespaces for f in UNSHARE[n]]
    env = dict(ENV)
    steps = []
    if "mnt" in namespaces:
        if "pid" in namespaces:
            flags.append("--mount-proc")
        steps.append(f"mount -t tmpfs tmpfs /dev/shm && mount -t tmpfs tmpfs /run && mkdir /run/gpubroker && "
                     f"mount --bind {run_dir} /run/gpubroker && ")
    else:
        env["GPUBROKER_SOCKET"] = os.path.join(run_dir, "gpubroker.sock")
    who = f"setpriv --reuid={uid} --regid={uid} --clear-groups " if uid is not None else ""
    script = "".join(steps) + f"exec {who}{PYTHON} {PEER} visit {prefix}"
    r = subprocess.run(["unshare", *flags, "sh", "-c", script], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=120)
    return visit_result(r)


def check_visit(seen, published, sock, host_ns, uid):
    """What every container case must show, whatever made the container."""
    check("the container ran the client", "error" not in seen, seen.get("error", ""))
    if "error" in seen:
        return
    for n in ("pid", "ipc", "net", "mnt"):
        check(f"its own {n} namespace", seen["ns"][n] != host_ns[n])
    check("no shared /dev/shm", not any(f.startswith("gpb-container-test") for f in seen["dev_shm"]),
          seen["dev_shm"])
    check("it found the socket by the default rule", seen["socket"] == "/run/gpubroker/gpubroker.sock",
          seen["socket"])
    check("lookup through the registry it got over the socket",
          seen["lookup"] == {"nbytes": 1 << 20, "dtype": "uint8", "shape": [1 << 20]}, seen["lookup"])
    check("it lists every slot", {"c/data", "c/model", "c/inbox", "c/secret"} <= set(seen["names"]), seen["names"])
    check("it reads the host's random bytes, every one", seen["data"] == published["data"])
    check("it takes the whole state dict, every tensor intact", seen["model"] == published["model"])
    check("its random write is what the host reads", on_host(sock, "digest", "c/inbox") == seen["inbox"])
    if uid == 0:
        check("root that shares the host's users may read root's 0600 slot", seen["secret"] == "attached")
    else:
        check("a 0600 slot of root's is refused", seen["secret"] == "permission_denied", seen["secret"])
    check(f"the broker records it as uid {uid}", on_host(sock, "owner", seen["made"]) == uid)


def gpu_main():
    tmp = tempfile.mkdtemp(prefix="gpb-container-")
    os.chmod(tmp, 0o755)
    marker = f"/dev/shm/gpb-container-test-{os.getpid()}"
    open(marker, "w").close()
    host_ns = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in ("pid", "ipc", "net", "mnt", "user")}
    crossing = {}
    try:
        for backend in ("cuda_vmm", "cuda_ipc"):
            run_dir = os.path.join(tmp, backend)
            os.mkdir(run_dir, 0o755)
            broker, sock = start_broker(run_dir, backend=backend)
            try:
                published = on_host(sock, "publish", "c", "cuda:0")
                if backend == "cuda_vmm":
                    for uid in (0, 1234):
                        print(f"== {backend}: a client as uid {uid} in new pid, ipc, net, uts and mount namespaces")
                        check_visit(in_unshare(run_dir, "c", uid=uid), published, sock, host_ns, uid)
                    continue
                # A pid namespace goes with a mount namespace for its own /proc:
                # with the host's /proc, cuInit itself fails (304) for any program.
                for namespaces in [("ipc",), ("net",), ("uts",), ("mnt",), ("pid", "mnt"), tuple(UNSHARE)]:
                    seen = in_unshare(run_dir, "c", namespaces)
                    works = "error" not in seen and seen["data"] == published["data"]
                    crossing["+".join(namespaces)] = works if works else seen.get("error", "differs")[-300:]
            finally:
                broker.terminate()
                broker.wait()
    finally:
        os.unlink(marker)
        shutil.rmtree(tmp, ignore_errors=True)
    print("== cuda_ipc handles, by the namespace the client has of its own:")
    for namespaces, result in crossing.items():
        print(f"   {namespaces:24} {'attaches and reads' if result is True else 'fails: ' + str(result)}")
    # Measured on the H100 (driver 580.159.04): legacy IPC handles open in every case.
    check("cuda_ipc: handles open across pid, ipc, net, uts and mount namespaces, alone and together",
          all(result is True for result in crossing.values()), crossing)


def main():
    if GPU and (shutil.which("unshare") is None or shutil.which("nvidia-smi") is None):
        skip("no GPU (nvidia-smi) or no unshare", required=False)
    if os.geteuid() != 0:
        skip("needs root (Podman with --user and --uidmap)")
    global PYTHON
    PYTHON = find_python()
    if GPU:
        gpu_main()
        print(f"{passed} passed, {failed} failed")
        sys.exit(0 if failed == 0 else 1)
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
        check_visit(in_container(run_dir, "c"), published, sock, host_ns, 0)
        print("== a client run as uid 1234")
        check_visit(in_container(run_dir, "c", "--user", "1234:1234"), published, sock, host_ns, 1234)

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

    for uid_map in ("0 0 1", "0 0 65536"):
        print(f"== a broker in a user namespace whose uid map is '{uid_map}'")
        ns_dir = os.path.join(tmp, "ns-" + uid_map.replace(" ", "-"))
        os.mkdir(ns_dir, 0o755)
        broker, sock = start_broker(ns_dir, userns_map=uid_map)
        try:
            # 100000 is outside both maps; 1234 is inside the second. In a user
            # namespace the overflow uid cannot be told from a real one, so a
            # client reading as it is refused even where the map covers 65534.
            r = subprocess.run(["setpriv", "--reuid=100000", "--regid=100000", "--clear-groups", CTL, "-s", sock,
                                "ls"], capture_output=True, text=True)
            check("a client whose uid it cannot map is refused", r.returncode != 0, r.stdout)
            check("and told why", "cannot tell who you are" in r.stderr, r.stderr)
            if uid_map == "0 0 65536":
                r = subprocess.run(["setpriv", "--reuid=1234", "--regid=1234", "--clear-groups", CTL, "-s", sock,
                                    "ls"], capture_output=True, text=True)
                check("a client whose uid it maps is served", r.returncode == 0, r.stderr)
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

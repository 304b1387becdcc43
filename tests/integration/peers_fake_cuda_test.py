"""Trees in GPU memory replicated between brokers, on the test's fake CUDA
driver (tests/support/fake_cuda.cc, "GPU" memory that is host memory): the
GPU path of replication in CI, where no GPU is. The source's broker stages
a cuda_vmm tree through pinned host blocks on its copy thread; one follower
copies each block into its own cuda_vmm tree, one keeps the tree in host
memory (peers.follow device: cpu), and a third follows the first (versions
passed on as they arrive). live_peer stamps every word of every version on
the source and checks every word of every version it takes on each
follower, with the version number in the stamp.

The GPU machine runs the same on real GPUs (tests/gpu/peers_gpu_test.py).

Usage: python3 tests/integration/peers_fake_cuda_test.py BUILD_DIR
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "python"), os.path.join(HERE, "..", "support")]
from loopback_nodes import Node, exists, free_port, stop_all, until  # noqa: E402

VERSIONS = 12
TENSORS = 5
passes, failures = [], []


def check(ok, what, detail=""):
    print(("PASS: " if ok else "FAIL: ") + what + ("" if ok or not detail else f"\n  {detail}"), flush=True)
    (passes if ok else failures).append(what)


def main():
    build = os.path.abspath(sys.argv[1])
    fake = os.path.join(build, "tests", "fake_cuda")
    paths = os.environ.get("LD_LIBRARY_PATH", "")
    if paths.split(":")[0] != fake:  # the loader reads it at start: this process too
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, LD_LIBRARY_PATH=fake + (":" + paths if paths else "")))
    if not os.path.exists(os.path.join(fake, "libcuda.so.1")):
        sys.exit(f"no fake driver at {fake}: build the gpubroker_fake_cuda target")
    os.environ.setdefault("GPUBROKER_LIBRARY", os.path.join(build, "client", "libgpubroker.so"))
    import gpubroker
    live_peer = os.path.join(build, "tests", "live_peer")
    root = tempfile.mkdtemp(prefix="gpbpeersfake-")
    key = os.path.join(root, "cluster.key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    seed = str(int.from_bytes(os.urandom(6), "little"))
    source_port, hop_port = free_port(), free_port()
    nodes, consumers = [], {}
    try:
        source = Node(build, root, "source", key, listen=source_port, exports=["weights"])
        nodes.append(source)
        # The tree first, as live_test makes it: an arena of 2 buffers and
        # views of odd sizes (one over several 1 MiB staging blocks).
        c = gpubroker.connect(source.socket)
        sizes = [(3 << 20) + 8 * t if t == 0 else (t * 40_000 + 8) for t in range(TENSORS)]
        offsets, total = [], 0
        for s in sizes:
            offsets.append(total)
            total += (s + 255) // 256 * 256
        c.create("weights", (total,), "uint8", "cuda", backend="cuda_vmm", buffers=2, mode=0o644, attach=False)
        for t, (s, o) in enumerate(zip(sizes, offsets)):
            c.create(f"weights/{t}", (s // 8,), "uint64", base="weights", offset=o, mode=0o644, attach=False)
        check(c.stat("weights").device.startswith("cuda"), "the source's tree is in (fake) GPU memory")

        def produce(versions, done):
            p = subprocess.run([live_peer, source.socket, "produce", "weights", str(TENSORS), str(versions), seed],
                               capture_output=True, text=True, timeout=120)
            check(p.returncode == 0 and p.stdout.strip() == f"done {done}",
                  f"the source's producer commits up to version {done}", p.stdout + p.stderr)
        produce(1, 1)  # a tree is served from its first version on
        follow = {"tree": "weights", "from": f"127.0.0.1:{source_port}", "mode": "0644"}
        gpu = Node(build, root, "gpu", key, listen=hop_port, exports=["weights"], follow=[follow])
        host = Node(build, root, "host", key, follow=[dict(follow, device="cpu")])
        hop = Node(build, root, "hop", key, follow=[dict(follow, **{"from": f"127.0.0.1:{hop_port}"})])
        nodes += [gpu, host, hop]
        followers = {"gpu": gpu, "host": host, "hop": hop}
        for name, n in followers.items():
            fc = gpubroker.connect(n.socket)
            until(lambda: exists(fc, "weights/0"), f"the tree on {name}")
            want = "cpu" if n is host else "cuda"
            got = fc.stat("weights").device
            check(got.startswith(want), f"{name} keeps its copy in {'host' if n is host else 'GPU'} memory ({got})")
        consumers = {name: subprocess.Popen([live_peer, n.socket, "consume", "weights", str(TENSORS),
                                             str(VERSIONS), seed], stdout=subprocess.PIPE, text=True)
                     for name, n in followers.items()}
        produce(VERSIONS - 1, VERSIONS)
        for name, p in consumers.items():
            out, _ = p.communicate(timeout=120)
            words = out.split()
            ok = (p.returncode == 0 and len(words) == 7 and words[0] == "ready" and words[1] == "seen" and
                  words[6] == str(VERSIONS))
            check(ok, f"{name}: every version it took was whole, under its number, up to {VERSIONS}",
                  f"{out.strip()} (exit {p.returncode}); {followers[name].tail()}")
    finally:
        for p in consumers.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        stop_all(nodes, failures)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

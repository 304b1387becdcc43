"""Trees in GPU memory replicated between brokers (docs/multinode.md): two
real brokers on this machine, peers over UCX on loopback TCP, a publisher
of a cuda_vmm tree on the source, and two followers, one keeping its copy
in GPU memory (like the source's) and one in host memory (peers.follow
device: cpu). Every version is fresh random data; every element of every
tensor is compared on each follower with what the publisher wrote. A
version passed on while it arrives (a third broker following the GPU
follower) is checked the same way.

Needs a GPU and PyTorch (the device machine), and a build with UCX (ctest
has it only then); exits 77 (skipped) elsewhere, or fails where
GPUBROKER_REQUIRE_GPU is set.

Usage: python3 tests/gpu/peers_gpu_test.py BUILD_DIR
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "python"), os.path.join(HERE, "..", "..", "python", "tests"),
                os.path.join(HERE, "..", "support")]
from loopback_nodes import Node, free_port, until  # noqa: E402

REQUIRE = os.environ.get("GPUBROKER_REQUIRE_GPU", "0") not in ("", "0")
TIMEOUT_S = 60
failures = []
passes = []


def skip(why):
    if REQUIRE:
        sys.exit(f"GPUBROKER_REQUIRE_GPU is set, but {why}")
    print(f"skipped: {why}")
    sys.exit(77)


def check(ok, what):
    print(("PASS: " if ok else "FAIL: ") + what, flush=True)
    (passes if ok else failures).append(what)


def fresh(torch, layout):
    """New random values for every tensor, on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    out = {}
    for key, shape, dtype in layout:
        if dtype.is_floating_point:
            out[key] = torch.randn(shape, generator=g, device="cuda").to(dtype)
        else:
            out[key] = torch.randint(-1000, 1000, shape, generator=g, device="cuda", dtype=dtype)
    return out


def main():
    build = sys.argv[1]
    try:
        import torch
    except ImportError:
        skip("torch is not installed")
    if not torch.cuda.is_available():
        skip("torch sees no CUDA device")
    os.environ.setdefault("GPUBROKER_LIBRARY", os.path.join(build, "client", "libgpubroker.so"))
    import gpubroker
    root = tempfile.mkdtemp(prefix="gpbpeersgpu-")
    key = os.path.join(root, "cluster.key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    # Odd sizes, several dtypes, and one tensor of 20 MiB: versions span
    # many staging blocks and end inside one.
    layout = [("embed", (2560, 2048), torch.float32), ("w1", (1000, 1001), torch.bfloat16),
              ("b1", (1001,), torch.int64), ("w2", (333, 77), torch.float16), ("step", (1,), torch.int32)]
    source_port, hop_port = free_port(), free_port()
    nodes = []
    try:
        source = Node(build, root, "source", key, listen=source_port, exports=["policy"])
        nodes.append(source)
        gpu = Node(build, root, "gpu", key, listen=hop_port, exports=["policy"],
                   follow=[{"tree": "policy", "from": f"127.0.0.1:{source_port}", "mode": "0644"}])
        host = Node(build, root, "host", key, follow=[{"tree": "policy", "from": f"127.0.0.1:{source_port}",
                                                      "mode": "0644", "device": "cpu"}])
        hop = Node(build, root, "hop", key, follow=[{"tree": "policy", "from": f"127.0.0.1:{hop_port}",
                                                     "mode": "0644"}])
        nodes += [gpu, host, hop]
        pub_client = gpubroker.connect(source.socket)
        values = fresh(torch, layout)
        pub = pub_client.publisher("policy", values, buffers=2, mode=0o644)
        check(pub_client.stat("policy").device.startswith("cuda"), "the source's tree is in GPU memory")
        subs = {}
        for n in (gpu, host, hop):
            c = gpubroker.connect(n.socket)
            until(lambda: _exists(c, "policy"), f"the tree on {n.dir}")
            subs[n] = c.subscriber("policy", timeout=TIMEOUT_S)
        for version in range(1, 7):
            if version > 1:
                values = fresh(torch, layout)
                torch.cuda.synchronize()
                got = pub.update(values)
                check(got == version, f"the publisher committed version {version}")
            for n, sub in subs.items():
                name = os.path.basename(n.dir)
                sub.wait(after=version - 1, timeout=TIMEOUT_S)
                tensors = sub.latest(timeout=0)
                check(sub.version == version, f"{name} holds version {version} (got {sub.version})")
                where = {t.device.type for t in tensors.values()}
                check(where == ({"cpu"} if n is host else {"cuda"}),
                      f"{name}'s copy of version {version} is in {'host' if n is host else 'GPU'} memory ({where})")
                wrong = [k for k, want in values.items()
                         if not torch.equal(tensors[k].to("cuda"), want)]
                check(not wrong, f"{name}: every element of version {version} is the publisher's"
                                 + (f" (differ: {wrong})" if wrong else ""))
                del tensors
        peers = subprocess.run([os.path.join(build, "client", "gpubrokerctl"), "-s", gpu.socket, "peers"],
                               capture_output=True, text=True)
        check("passing on" in peers.stdout or "source" in peers.stdout,
              "the GPU follower serves the hop (gpubrokerctl peers)")
    finally:
        for n in nodes:
            code = n.stop()
            if code != 0:
                failures.append(f"{n.dir}: broker exited {code}")
                print(n.tail())
    print(f"{len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


def _exists(client, name):
    import gpubroker
    try:
        client.stat(name)
        return True
    except gpubroker.NotFound:
        return False


if __name__ == "__main__":
    main()

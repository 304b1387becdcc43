"""Replication of a tree in GPU memory between two brokers on this machine
(docs/multinode.md): the weight-sync benchmark's tree (1,000 bf16 tensors
of (640, 1024), 1.22 GiB; --quick: 100) published on one broker, followed
into GPU memory by another over UCX (loopback), the follower's broker
staging every byte through pinned host blocks on both sides.

Timed: from right before the publisher's commit() (its copy into the back
buffer done and synchronized) to a subscriber of the follower's broker
seeing the version there (its wait returning): the bytes read from the
source's GPU, carried by UCX, written to the follower's GPU, committed.
The last version is then checked element by element (untimed). Printed
beside it, measured in the same run on the same machine:
  - one device-to-device copy of the same bytes (the device's own copy
    bandwidth),
  - the staging floor: one copy of the bytes to pinned host memory and one
    back, each on its own,
  - raw UCX over the same path: ucx_perftest ucp_am_bw between two
    processes with the brokers' UCX settings (UCX_TLS=tcp,
    UCX_NET_DEVICES=lo), at the replication's chunk (64 KiB less 512 B) and
    at 1 MiB; the better of the two is the baseline. UCX_TLS=tcp is set
    for the brokers too: without it, two processes of one machine may be
    given UCX's shared-memory transports, which no two nodes have (the raw
    figure was 3-4x the TCP one so).

--memory host runs the same with the tree in host memory on both brokers
(no staging; its bytes go from the source's mapping and land in the
follower's by the loop's copy): beside the GPU run, on the same machine, it
says how much of the GPU figure the staging costs.

Usage: python3 bench/peers_gpu_bench.py BUILD_DIR [--quick] [--rounds N] [--memory cuda|host]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHUNK_BYTES = 64 * 1024 - 512  # the replication's chunk (broker/peers.cc, kChunkBytes)
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "tests", "support")]
from loopback_nodes import Node, free_port, until  # noqa: E402

UCX_ENV = {"UCX_NET_DEVICES": "lo", "UCX_TLS": "tcp"}


def summary(scenario, ours, base, unit, aim="-"):
    print(f"summary\t{scenario}\t{ours:.3f}\t{base:.3f}\t{unit}\t{aim}")


def perftest(size, iterations):
    """ucx_perftest ucp_am_bw between two processes here; GB/s, or None
    where there is no ucx_perftest."""
    exe = os.environ.get("GPUBROKER_UCX_PERFTEST") or shutil.which("ucx_perftest")
    if not exe:
        return None
    env = {**os.environ, **UCX_ENV}
    port = str(free_port())
    server = subprocess.Popen([exe, "-p", port], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # the server binds in its own time: the client retries its connect
            out = subprocess.run([exe, "127.0.0.1", "-p", port, "-t", "ucp_am_bw", "-s", str(size), "-n",
                                  str(iterations)], env=env, capture_output=True, text=True, timeout=120)
            m = re.search(r"^Final:\s+(.*)$", out.stdout, re.M)
            if m:
                return float(m.group(1).split()[4]) * 2**20 / 1e9  # ucx_perftest's MB/s are MiB/s
            time.sleep(0.1)
        raise RuntimeError(f"ucx_perftest failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    finally:
        server.kill()
        server.wait()


def timed_copy(torch, dst, src, rounds=5):
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("build")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--memory", choices=("cuda", "host"), default="cuda")
    a = p.parse_args()
    import torch
    cuda = a.memory == "cuda"
    if cuda and not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device")
        return 0
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    os.environ.setdefault("GPUBROKER_LIBRARY", os.path.join(a.build, "client", "libgpubroker.so"))
    import gpubroker
    n, rounds = (100, a.rounds or 3) if a.quick else (1000, a.rounds or 7)
    shape, dtype = (640, 1024), torch.bfloat16
    nbytes = n * shape[0] * shape[1] * 2
    root = tempfile.mkdtemp(prefix="gpbpeersgpubench-")
    key = os.path.join(root, "cluster.key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    os.environ.update(UCX_ENV)
    port = free_port()
    nodes = []
    times = []
    try:
        source = Node(a.build, root, "source", key, listen=port, exports=["policy"])
        nodes.append(source)
        follower = Node(a.build, root, "follower", key,
                        follow=[{"tree": "policy", "from": f"127.0.0.1:{port}", "mode": "0644"}])
        nodes.append(follower)
        pub_client = gpubroker.connect(source.socket)
        device = "cuda" if cuda else "cpu"
        gen = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        values = {f"l{i}": torch.randn(shape, generator=gen, device=device).to(dtype) for i in range(n)}
        pub = pub_client.publisher("policy", values, buffers=2, mode=0o644)
        sub_client = gpubroker.connect(follower.socket)

        def present():
            try:
                sub_client.stat("policy")
                return True
            except gpubroker.NotFound:
                return False
        until(present, "the tree on the follower")
        sub = sub_client.subscriber("policy", timeout=60)
        sub.wait(after=0, timeout=120)
        for r in range(rounds + 1):  # the first is a warm-up
            for t in values.values():
                t.add_(1)
            back = pub.begin()
            for k, t in values.items():
                back[k].copy_(t)
            sync()
            t0 = time.perf_counter()
            v = pub.commit()
            sub.wait(after=v - 1, timeout=120)
            if r:
                times.append(time.perf_counter() - t0)
        got = sub.latest(timeout=0)
        wrong = [k for k, want in values.items() if not torch.equal(got[k], want)]
        if sub.version != v or wrong:
            raise SystemExit(f"the follower's version {sub.version} (expected {v}) differs in {wrong[:8]}")
        del got
        sub.close()  # before its broker stops: its pin is given back now, not by a reconnecting release
        for node in (follower, source):
            peers = subprocess.run([os.path.join(a.build, "client", "gpubrokerctl"), "-s", node.socket, "peers"],
                                   capture_output=True, text=True)
            print(peers.stdout.strip())
    finally:
        for node in nodes:
            node.stop()
    ours = nbytes / statistics.median(times) / 1e9
    raw_chunk = perftest(CHUNK_BYTES, 20000 if not a.quick else 2000)
    raw1m = perftest(1 << 20, 2000 if not a.quick else 200)
    raw = (f"ucx_perftest ucp_am_bw, UCX_TLS=tcp UCX_NET_DEVICES=lo: {CHUNK_BYTES} B "
           f"{raw_chunk if raw_chunk is None else round(raw_chunk, 3)} GB/s, "
           f"1 MiB {raw1m if raw1m is None else round(raw1m, 3)} GB/s")
    if not cuda:
        label = f"{n} x {shape} bf16, {nbytes / 2**30:.2f} GiB, host memory"
        print(f"replication, host tree between two brokers on this machine: {label}")
        print(f"  commit -> seen on the follower: {[round(t * 1e3, 1) for t in times]} ms -> {ours:.3f} GB/s (median)")
        print(f"  {raw}")
        if raw_chunk is not None:
            summary(f"replication of a host tree, two brokers on one machine (baseline: ucx_perftest ucp_am_bw over "
                    f"TCP, the best of the chunk's size and 1 MiB); {label}", ours, max(raw_chunk, raw1m), "GB/s")
        return 0
    flat = torch.empty(nbytes // 2, dtype=dtype, device="cuda")
    other = torch.empty_like(flat)
    pinned = torch.empty(nbytes // 2, dtype=dtype, pin_memory=True)
    d2d = nbytes / timed_copy(torch, other, flat) / 1e9
    d2h = nbytes / timed_copy(torch, pinned, flat) / 1e9
    h2d = nbytes / timed_copy(torch, flat, pinned) / 1e9
    label = f"{n} x {shape} bf16, {nbytes / 2**30:.2f} GiB ({torch.cuda.get_device_name(0)})"
    print(f"replication, GPU tree between two brokers on this machine: {label}")
    print(f"  commit -> seen on the follower: {[round(t * 1e3, 1) for t in times]} ms -> {ours:.3f} GB/s (median)")
    print(f"  device-to-device copy {d2d:.1f} GB/s; to pinned host {d2h:.1f} GB/s; from pinned host {h2d:.1f} GB/s")
    print(f"  {raw}")
    summary(f"replication of a GPU tree between two brokers on one machine (baseline: one device-to-device copy); "
            f"{label}", ours, d2d, "GB/s")
    floor = 1 / (1 / d2h + 1 / h2d)
    summary(f"replication of a GPU tree, two brokers (baseline: to pinned host and back, one after the other); "
            f"{label}", ours, floor, "GB/s")
    if raw_chunk is not None:
        summary(f"replication of a GPU tree, two brokers (baseline: ucx_perftest ucp_am_bw over TCP, the best of the "
                f"chunk's size and 1 MiB); {label}", ours, max(raw_chunk, raw1m), "GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

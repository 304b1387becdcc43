#!/usr/bin/env python3
"""Replication between brokers on namespaced "nodes" (docs/multinode.md,
tests/support/peer_nodes.py: veth pairs on a bridge, UCX over TCP), each
figure beside a baseline measured over the same link in the same run:

  throughput  a host tree of 1 GiB (--quick: 64 MiB), commit on node 0 ->
              a subscriber on node 1 holds it, as GB/s; baseline
              raw UCX's best over the same link: ucx_perftest -t
              ucp_am_bw with the replication's chunk, 512 KiB and 1 MiB
  latency     a 4 KiB tree, commit -> the follower's subscriber holds it;
              baseline two UCX round trips (ucx_perftest -t ucp_am_lat)
  fan-out     a 64 MiB tree to 3 followers: the last to hold it, against one
              follower alone; all three from node 0 (a star), and down a
              chain that node 0 plans (each node serves a tree to one
              follower itself, peers.fanout: 1, and sends others on to
              those that serve it on: 0 -> 1 -> 2 -> 3), each version
              passed on as it arrives. On this machine every
              node shares the same CPUs, so the links are also limited to
              1 Gbit/s each way (tc), as NICs limit real nodes: then the
              network, not the shared CPUs, is what fan-out divides

    bench/peers_bench.py BUILD_DIR [--quick]

Root only (namespaces); prints a line and exits 0 where it cannot run.
Every version each follower holds is checked whole (one stamp in every
element).
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1])
QUICK = "--quick" in sys.argv
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("GPUBROKER_LIBRARY", os.path.join(BUILD, "client", "libgpubroker.so"))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

import numpy  # noqa: E402
import gpubroker  # noqa: E402
import peer_nodes  # noqa: E402
from peer_nodes import Net, Node  # noqa: E402

peer_nodes.BROKER = os.path.join(BUILD, "broker", "gpubrokerd")
peer_nodes.CTL = os.path.join(BUILD, "client", "gpubrokerctl")
peer_nodes.STALL_MS = 10000
CHUNK_BYTES = 64 * 1024 - 512  # the replication's chunk (broker/peers.cc, kChunkBytes)


def summary(scenario, ours, baseline, unit, aim):
    print(f"summary\t{scenario}\t{ours:.4g}\t{baseline if baseline == '-' else f'{baseline:.4g}'}\t{unit}\t{aim}",
          flush=True)


def perftest(net, test, size, iterations):
    """ucx_perftest between node 1 (server) and node 0 (client) over eth0;
    the Final line's fields."""
    env = {**os.environ, "UCX_NET_DEVICES": "eth0", "UCX_TLS": "tcp"}
    server = subprocess.Popen(["ip", "netns", "exec", net.ns(1), "ucx_perftest", "-p", "13400"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # the server binds in its own time: the client retries its connect
            out = subprocess.run(["ip", "netns", "exec", net.ns(0), "ucx_perftest", Net.ip(1), "-p", "13400", "-t",
                                  test, "-s", str(size), "-n", str(iterations)], env=env, capture_output=True,
                                 text=True, timeout=120)
            m = re.search(r"^Final:\s+(.*)$", out.stdout, re.M)
            if m:
                return [float(x) for x in m.group(1).split()]
            time.sleep(0.1)
        raise RuntimeError(f"ucx_perftest {test} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    finally:
        server.kill()
        server.wait()


def stamped(nbytes, seed):
    rng = numpy.random.default_rng(seed)
    return {"w": rng.integers(0, 1 << 20, size=(nbytes // 4,)).astype(numpy.int32)}


def held(sub, base, version):
    """Blocks until `sub` holds `version` (or a newer one); returns when it
    did (perf_counter), having checked every version it took whole."""
    while True:
        sub.wait(after=sub.version, timeout=60)
        arrays = sub.latest(timeout=0)
        when = time.perf_counter()
        d = numpy.asarray(arrays["w"]) - base["w"]
        if d.min() != d.max():
            raise RuntimeError(f"version {sub.version} is torn")
        if sub.version >= version:
            return when


def main():
    if os.geteuid() != 0:
        print("peers_bench: needs root (network namespaces); not run")
        return 0
    import shutil
    for tool in ("ip", "unshare", "ucx_perftest"):
        if shutil.which(tool) is None:
            print(f"peers_bench: needs {tool} (iproute2, util-linux, ucx-utils); not run")
            return 0
    if "libucp" not in subprocess.run(["ldd", peer_nodes.BROKER], capture_output=True, text=True).stdout:
        print("peers_bench: gpubrokerd was built without UCX; not run")
        return 0
    root = tempfile.mkdtemp(prefix="gpb-peers-bench-")
    os.chmod(root, 0o755)
    key = os.path.join(root, "cluster.key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    net = Net(4)
    nodes = [Node(net, 0, root, key, exports=["big", "small", "fan", "chain"], fanout=1),
             Node(net, 1, root, key, exports=["chain"], follow=[("big", 0), ("small", 0), ("fan", 0), ("chain", 0)],
                  fanout=1),
             Node(net, 2, root, key, exports=["chain"], follow=[("fan", 0), ("chain", 0)], fanout=1),
             Node(net, 3, root, key, exports=["chain"], follow=[("fan", 0), ("chain", 0)], fanout=1)]
    try:
        for n in nodes:
            if not n.start():
                raise RuntimeError(f"node {n.i}'s broker did not start: {n.tail()}")
        src = nodes[0].client()
        clients = [n.client() for n in nodes]

        # ---- throughput
        big_bytes = (64 if QUICK else 1024) << 20
        rounds = 2 if QUICK else 5
        base = stamped(big_bytes, 1)
        pub = src.publisher("big", {"w": base["w"] + 1}, buffers=2)
        sub = clients[1].subscriber("big", to="numpy", timeout=60)
        held(sub, base, 1)
        times = []
        for v in range(2, 2 + rounds):
            arrays = pub.begin()  # the version written before the clock starts
            numpy.copyto(numpy.asarray(arrays["w"]), base["w"] + v)
            t0 = time.perf_counter()
            pub.commit()
            times.append(held(sub, base, v) - t0)
        ours = big_bytes / statistics.median(times) / 1e9
        for p in nodes[1].peers():
            if p["tree"] == "big":
                print(f"  the follower's own count: the last version took {p['last_seconds'] * 1e3:.1f} ms from its "
                      f"offer to its commit")
        # The baseline is raw UCX's best over the link: the replication's
        # message size and two larger ones (rendezvous from 512 KiB).
        raws = {}
        for size in (CHUNK_BYTES, 512 * 1024, 1024 * 1024):
            raw = perftest(net, "ucp_am_bw", size, 200 if QUICK else 2000)
            raws[size] = raw[4] * 2**20 / 1e9  # average; ucx_perftest's MB/s are MiB/s (2**20 bytes)
        best = max(raws, key=raws.get)
        print(f"throughput: {big_bytes >> 20} MiB tree, commit -> held on the follower: "
              f"{[round(t * 1e3, 1) for t in times]} ms -> {ours:.3f} GB/s; ucx_perftest ucp_am_bw: "
              + ", ".join(f"{size} B {gbs:.3f} GB/s" for size, gbs in raws.items()))
        summary(f"replication of a {big_bytes >> 20} MiB host tree to one follower (baseline: ucx_perftest "
                f"ucp_am_bw, same link, the best of three sizes: {best} B)", ours, raws[best], "GB/s", "pct>=90")
        sub.close()
        pub.close(destroy=True)

        # ---- latency, 4 KiB: the follower's subscriber and the baseline's,
        # one on the source's node, each timed on alternate versions, so the
        # VM's wake-ups drift over both alike (they measured 78-156 us apart
        # from run to run when timed one after the other)
        small = stamped(4096, 2)
        # 4 buffers: the near subscriber's pin, the follower's read and the
        # newest leave one free, so no update waits for a buffer
        pub = src.publisher("small", {"w": small["w"] + 1}, buffers=4)
        far = clients[1].subscriber("small", to="numpy", timeout=60)
        near = clients[0].subscriber("small", to="numpy", timeout=60)
        held(far, small, 1)
        held(near, small, 1)
        lat, local = [], []
        for v in range(2, 2 * (50 if QUICK else 500) + 2):
            sub, out = (far, lat) if v % 2 == 0 else (near, local)
            if sub is far and far.version < v - 1:
                held(far, small, v - 1)  # the last version's transfer is over before the clock starts
            state = {"w": small["w"] + v}
            t0 = time.perf_counter()
            pub.update(state)
            out.append((held(sub, small, v) - t0) * 1e6)
        if far.version < v:
            held(far, small, v)  # the follower has every version before the round trips are measured
        near.close()
        sub = far
        one_way = perftest(net, "ucp_am_lat", 8, 1000 if QUICK else 10000)[1]  # 50th percentile, usec
        rtt = 2 * one_way
        p50, local50 = statistics.median(lat), statistics.median(local)
        print(f"latency: 4 KiB tree, commit -> held on the follower: p50 {p50:.1f} us, p99 "
              f"{sorted(lat)[int(len(lat) * 0.99) - 1]:.1f} us; on the source's own node {local50:.1f} us; UCX "
              f"round trip (ucp_am_lat p50 x 2) {rtt:.1f} us")
        summary("commit -> follower's subscriber holds a 4 KiB version, p50 (baseline: the same on the source's node "
                "+ 2 UCX round trips)", p50, local50 + 2 * rtt, "us", "ratio<=1.0")
        sub.close()
        pub.close(destroy=True)

        # ---- fan-out: the same tree to 3 followers at once (a star, and a
        # chain), then to one
        fan_bytes = 64 << 20
        rounds = 2 if QUICK else 5
        fan = stamped(fan_bytes, 3)
        pubs = {t: src.publisher(t, {"w": fan["w"] + 1}, buffers=3) for t in ("fan", "chain")}
        subs = {t: [clients[i].subscriber(t, to="numpy", timeout=60) for i in (1, 2, 3)] for t in ("fan", "chain")}
        for t in subs:
            for s in subs[t]:
                held(s, fan, 1)
        chain_of = {n.i: p["peer"] for n in nodes[1:] for p in n.peers() if p["role"] == "follower" and
                    p["tree"] == "chain"}
        print(f"  the chain node 0 planned (follower: where it takes it from): {chain_of}")
        v = {"fan": 2, "chain": 2}

        def last_holds(tree, followers):
            """Median over the rounds: commit -> the last of `followers` holds it."""
            took = []
            for _ in range(rounds):
                state = {"w": fan["w"] + v[tree]}
                t0 = time.perf_counter()
                pubs[tree].update(state)
                took.append(max(held(s, fan, v[tree]) for s in followers) - t0)
                v[tree] += 1
            return statistics.median(took) * 1e3

        def limited(rate):
            for i in range(4):
                net.limit(i, rate)

        star = {"free": last_holds("fan", subs["fan"])}
        chain = {"free": last_holds("chain", subs["chain"])}
        limited("1gbit")
        star["1gbit"] = last_holds("fan", subs["fan"])
        chain["1gbit"] = last_holds("chain", subs["chain"])
        passed = [p.get("passed_on", 0) for n in nodes[1:4] for p in n.peers()
                  if p["role"] == "source" and p["tree"] == "chain"]
        # One follower: the other two stop following (their brokers stop).
        for t in subs:
            for s in subs[t][1:]:
                s.close()
        for n in nodes[2:]:
            n.kill()
        one = {"1gbit": last_holds("fan", subs["fan"][:1])}
        limited(None)
        one["free"] = last_holds("fan", subs["fan"][:1])
        for link, what in (("free", "links as fast as the shared CPUs move bytes"), ("1gbit", "links of 1 Gbit/s")):
            print(f"fan-out, {what}: 64 MiB to 3 followers, the last holds it: from node 0 to all three "
                  f"{star[link]:.1f} ms, down a chain {chain[link]:.1f} ms; to one follower {one[link]:.1f} ms")
        print(f"  versions passed on down the chain while they arrived, by each hop that serves one: {passed}")
        for link, what in (("1gbit", "links of 1 Gbit/s each way"), ("free", "unlimited links, shared vCPUs")):
            summary(f"fan-out of a 64 MiB host tree down a chain of 3 followers, {what}: the last holds it "
                    "(baseline: one follower)", chain[link], one[link], "ms", "ratio<=1.3")
            summary(f"fan-out of a 64 MiB host tree from one source to 3 followers, {what}: the last holds it "
                    "(baseline: one follower)", star[link], one[link], "ms", "ratio<=1.3")
        subs["fan"][0].close()
        subs["chain"][0].close()
        for p in pubs.values():
            p.close(destroy=True)
        for c in clients:
            c.close()
        return 0
    finally:
        for n in nodes:
            if n.proc is not None:
                try:
                    n.kill()
                except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
                    n.proc.kill()
        net.close()
        subprocess.run(["rm", "-rf", root])


if __name__ == "__main__":
    sys.exit(main())

"""Live weight sync: a producer process publishes new versions of a state dict
(1,000 bf16 tensors of (640, 1024), 1.22 GiB, on a GPU; Client.publisher,
two buffers) and a consumer process (Client.subscriber) takes each one. All
figures are per weight update, on the consumer's side, from one run; the two
processes are spawned apart and have their CUDA context up before anything
is timed. The clock is time.monotonic_ns() (CLOCK_MONOTONIC, shared by both
processes); timestamps cross between them only after the fact.

 (a) live, zero copy: from right before the producer's pub.commit() to the
     consumer's sub.latest() returning the new version's {key: tensor}.
     Untimed before it: the producer's pub.begin(), its batched copy into
     the back buffer and a synchronize (a CUDA commit is sent once the
     writer's stream has run its writes: none of that copy is timed). The
     consumer is asleep in latest() by then: it said "ready" and the
     producer lets at least 2 ms pass. Included: the commit's trip to the
     broker (on CUDA through the client library's stream-watching thread),
     the consumer's wake-up, its acquire (pin) and the tensors handed out.
     "... synchronize" stops a second clock after a torch.cuda.synchronize()
     in the consumer.
 (g) live, the producer's whole step: from right before pub.update(sd)
     (the new weights written into the producer's own tensors, its stream
     idle) to the consumer's sub.latest() returning them: the copy into the
     back buffer, the commit once the stream has run it, the wake-up, the
     acquire. Aim: the in-process foreach copy (e) + 100 us.
 (b) live, copied into the consumer's own parameters: sub.copy_into(params)
     + torch.cuda.synchronize(), the version committed and visible before
     the clock starts: acquire, one batched copy, release. "... the call
     returned" stops a second clock before the synchronize: the CPU's part.
 (c) baseline, per-tensor re-share: the producer sends reduce_tensor() of
     each of N fresh tensors (one pickled list through a pipe); the consumer
     rebuilds every tensor, copies them into its parameters
     (torch._foreach_copy_) and synchronises. From the producer's first
     reduce_tensor() to the consumer's synchronize returning.
 (d) baseline, packed re-share: the same with one fresh flat buffer per sync
     (one reduce_tensor() plus sizes and shapes; views made in the
     consumer). The consumer lets go of every rebuilt tensor after each
     sync, so it opens the IPC handle every time, as vLLM's packed IPC
     transfer and slime's flattened buckets do.
 (e) floor: torch._foreach_copy_(params, local) + synchronize in the
     consumer, `local` being tensors it owns: no IPC at all.
 (f) floor: one copy of as many bytes between two contiguous tensors +
     synchronize: what the copy engine's bandwidth allows.

The producer's preparation (filling its tensors, the copy into the back
buffer or into the fresh ones) is never timed in (a), (c), (d), and nothing
runs in the producer while the consumer's clock runs. Tensor i of version v
holds pattern + stamp(v, i): small integers, exact in bf16, different in
every tensor from one version to the next. After each timed step, untimed,
on its current stream, the consumer compares every element, every tensor's
sum and four random elements of each with what the producer wrote; any
difference ends the run with a non-zero status.

Usage: python3 bench/live_sync_bench.py [--device cuda|cpu] [--tensors N] [--iterations N] [--quick]
       (needs $GPUBROKERD and $GPUBROKER_LIBRARY; --device cpu runs the same
        flow on host memory with small float32 tensors: a smoke run)
"""
import argparse
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "python", "tests")]

PREFIX = "live-sync"
PATTERN_PERIOD = 61  # pattern values 0..60; with a stamp in -95..95 every value is an integer below 256
STAMP_PERIOD = 191
TIMEOUT_S = 120
SETTLE_NS = 2_000_000  # the producer lets 2 ms pass after "ready": the consumer is asleep in its wait
FLOOR_BASE = 500_000  # stamps of the floor's own tensors (a version's stamp is its number)
RESHARE_BASE = 700_000  # stamps of the re-shared tensors
RESHARES = ("c", "d")  # per-tensor, packed


def stamp(v, i):
    """What tensor i of version v adds to the pattern; consecutive versions differ in every tensor."""
    return (v * 31 + i * 7) % STAMP_PERIOD - 95


def mono():
    return time.monotonic_ns()


def sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def copy_all(dst, src):
    """One batched copy (torch._foreach_copy_, torch >= 2.1), else one copy_ per tensor."""
    import torch
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


class Values:
    """The values every tensor of a version holds, and the check of them."""

    def __init__(self, cfg):
        import torch
        self.cfg, self.n, self.shape = cfg, cfg["tensors"], tuple(cfg["shape"])
        self.dtype = getattr(torch, cfg["dtype"])
        self.numel = self.shape[0] * self.shape[1]
        ramp = torch.arange(self.numel, dtype=torch.int64) % PATTERN_PERIOD
        self.pattern_sum = int(ramp.sum())
        self.pattern = ramp.to(self.dtype).reshape(self.shape).to(cfg["device"])
        gen = torch.Generator().manual_seed(os.getpid())
        self.picks = torch.randint(self.numel, (self.n, 4), generator=gen)
        self.picks_dev = self.picks.to(cfg["device"])

    def empty(self):
        import torch
        return [torch.empty(self.shape, dtype=self.dtype, device=self.cfg["device"]) for _ in range(self.n)]

    def fill(self, tensors, v):
        import torch
        for i, t in enumerate(tensors):
            torch.add(self.pattern, stamp(v, i), out=t)

    def check(self, tensors, v, what):
        """Raises if `tensors` (in key order) do not hold version v. Syncs (tolist)."""
        import torch
        if len(tensors) != self.n:
            raise SystemExit(f"{what}: {len(tensors)} tensors, expected {self.n}")
        wrong = torch.zeros((), dtype=torch.int64, device=self.cfg["device"])
        sums, picked = [], []
        for i, t in enumerate(tensors):
            if tuple(t.shape) != self.shape or t.dtype != self.dtype:
                raise SystemExit(f"{what}: tensor {i} is {tuple(t.shape)} {t.dtype}")
            wrong += (t != self.pattern + stamp(v, i)).sum()
            sums.append(t.sum(dtype=torch.float64))
            picked.append(t.reshape(-1)[self.picks_dev[i]])
        sums = torch.stack(sums).tolist()
        picked = torch.stack(picked).double().tolist()
        wrong = int(wrong)
        bad_sums = [i for i, s in enumerate(sums) if s != self.pattern_sum + stamp(v, i) * self.numel]
        bad_picks = [i for i in range(self.n)
                     if picked[i] != [float(int(j) % PATTERN_PERIOD + stamp(v, i)) for j in self.picks[i]]]
        if wrong or bad_sums or bad_picks:
            raise SystemExit(f"{what}, stamp {v}: {wrong} elements differ from what the producer wrote; "
                             f"sums differ in tensors {bad_sums[:8]}, sampled elements in {bad_picks[:8]}")


class Link:
    """One end of the duplex pipe between producer and consumer; every wait has a deadline."""

    def __init__(self, conn, peer=None):
        self.conn, self.peer = conn, peer

    def send(self, *msg):
        self.conn.send(msg)

    def expect(self, tag):
        deadline = time.monotonic() + TIMEOUT_S
        while not self.conn.poll(0.5):
            if self.peer is not None and not self.peer.is_alive():
                raise SystemExit(f"the consumer exited (status {self.peer.exitcode}) while the producer "
                                 f"waited for '{tag}'")
            if time.monotonic() > deadline:
                raise SystemExit(f"no '{tag}' from the other process within {TIMEOUT_S} s")
        msg = self.conn.recv()
        if msg[0] == "error":
            raise SystemExit(f"the consumer failed:\n{msg[1]}")
        if msg[0] != tag:
            raise SystemExit(f"expected '{tag}' from the other process, got '{msg[0]}'")
        return msg


def commit_version(pub, sd, device, not_before_ns):
    """Writes `sd` into the back buffer (pub.begin(), one batched copy, a
    synchronize: untimed) and commits it once `not_before_ns` has passed.
    Returns (t0, version, how long commit() took), t0 right before commit().
    The copy has finished by then, so on CUDA, where a commit is sent once
    the writer's stream has run its writes, none of the copy is timed."""
    back = pub.begin()
    copy_all([back[k] for k in sd], list(sd.values()))
    sync(device)
    settle(not_before_ns)
    t0 = mono()
    version = pub.commit()
    return t0, version, mono() - t0


def settle(not_before_ns):
    """Waits until `not_before_ns`, the last 300 us spinning: the producer
    commits from a core that is awake, as a trainer's is after its step."""
    while not_before_ns - mono() > 300_000:
        time.sleep((not_before_ns - mono() - 300_000) / 1e9)
    while mono() < not_before_ns:
        pass


# ---- the consumer process ---------------------------------------------------------------------

def consumer(conn, cfg):
    link = Link(conn)
    try:
        link.send("results", run_consumer(link, cfg))
    except BaseException:
        link.send("error", traceback.format_exc())
        raise


def run_consumer(link, cfg):
    import torch
    import gpubroker
    if cfg["device"] == "cuda":
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
    values = Values(cfg)
    params, local = values.empty(), values.empty()  # the engine's own tensors; the floor's source
    client = gpubroker.connect(cfg["socket"])
    sub = client.subscriber(PREFIX)
    have = link.expect("start")[1]  # the version the producer committed last: pinned before (a) starts
    sub.wait(after=have - 1, timeout=TIMEOUT_S)
    values.check([sub.latest(timeout=0)[key] for key in cfg["keys"]], have, "the first version")
    if sub.version != have:
        raise SystemExit(f"the subscriber holds version {sub.version}, the producer committed {have}")
    link.send("hello")
    out = consume_live(link, sub, values, have, cfg)
    out["g"] = consume_updates(link, sub, values, cfg)
    out.update(consume_copies(link, sub, values, params, local, cfg))
    for how in RESHARES:
        out[how] = consume_reshare(link, how, values, params, cfg)
    return out


def consume_live(link, sub, values, have, cfg):
    """(a): the consumer's clock readings, when latest() returned and after a synchronize."""
    out = {"a_woke": [], "a_has": [], "a_readable": []}
    for k in range(cfg["warmup"] + cfg["iterations"]):
        link.send("ready_a", have)
        sub.wait(after=have, timeout=TIMEOUT_S)  # what latest() does first, timed apart
        tw = mono()
        tensors = sub.latest(timeout=0)  # the version newer than the one it pins
        t1 = mono()
        sync(cfg["device"])
        t2 = mono()
        if sub.version != have + 1:
            raise SystemExit(f"live, zero copy: got version {sub.version} after {have}, expected {have + 1}")
        have = sub.version
        values.check([tensors[key] for key in cfg["keys"]], have, "live, zero copy (sub.latest)")
        del tensors
        if k >= cfg["warmup"]:
            out["a_woke"].append(tw)
            out["a_has"].append(t1)
            out["a_readable"].append(t2)
    return out


def consume_updates(link, sub, values, cfg):
    """(g): the consumer's clock readings, when latest() returned a version made by update()."""
    out = []
    for k in range(cfg["warmup"] + cfg["iterations"]):
        have = sub.version
        link.send("ready_g", have)
        tensors = sub.latest(timeout=TIMEOUT_S)  # asleep in it: the producer lets 2 ms pass
        t1 = mono()
        if sub.version != have + 1:
            raise SystemExit(f"live, update: got version {sub.version} after {have}, expected {have + 1}")
        values.check([tensors[key] for key in cfg["keys"]], have + 1, "live, update (sub.latest)")
        del tensors
        if k >= cfg["warmup"]:
            out.append(t1)
    return out


def consume_copies(link, sub, values, params, local, cfg):
    """(b) and (e), alternating: durations."""
    import torch
    device, named, out = cfg["device"], dict(zip(cfg["keys"], params)), {"b": [], "b_call": [], "e": [], "f": []}
    # (f): the same bytes in one contiguous copy, the bandwidth floor.
    flat_src = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    flat_dst = torch.empty_like(flat_src)
    for k in range(cfg["warmup"] + cfg["iterations"]):
        link.send("ready_b")
        v = link.expect("committed")[1]
        sub.wait(after=v - 1, timeout=TIMEOUT_S)  # visible before the clock starts
        sync(device)
        t0 = mono()
        got = sub.copy_into(named, timeout=TIMEOUT_S)
        tc = mono()
        sync(device)
        t1 = mono()
        if got != v:
            raise SystemExit(f"live, copy_into: copied version {got}, expected {v}")
        values.check(params, v, "live, copied into own params (sub.copy_into)")
        w = FLOOR_BASE + k
        values.fill(local, w)
        sync(device)
        t2 = mono()
        copy_all(params, local)
        sync(device)
        t3 = mono()
        values.check(params, w, "floor, in-process copy")
        sync(device)
        t4 = mono()
        flat_dst.copy_(flat_src)
        sync(device)
        t5 = mono()
        if k >= cfg["warmup"]:
            out["b"].append(t1 - t0)
            out["b_call"].append(tc - t0)
            out["e"].append(t3 - t2)
            out["f"].append(t5 - t4)
    return out


def consume_reshare(link, how, values, params, cfg):
    """(c) or (d): the consumer's clock readings once its params hold the sync."""
    out = []
    for k in range(cfg["warmup"] + cfg["iterations"]):
        link.send("ready_" + how)
        msg = link.expect(how)
        parts = rebuilt(msg)
        copy_all(params, parts)
        sync(cfg["device"])
        t1 = mono()
        w = msg[1]
        del parts, msg  # the last references to the shared memory (untimed): its IPC handles close
        values.check(params, w, f"{'per-tensor' if how == 'c' else 'packed'} re-share")
        link.send("done")
        if k >= cfg["warmup"]:
            out.append(t1)
    return out


def rebuilt(msg):
    """The tensors a re-share message carries, rebuilt in this process (the
    IPC handles opened): one per tensor, or views of the one buffer."""
    if msg[0] == "c":
        return [rebuild(*args) for rebuild, args in msg[2]]
    rebuild, args = msg[2]
    return [p.view(s) for p, s in zip(rebuild(*args).split(msg[3]), msg[4])]


# ---- the producer (this process) -------------------------------------------------------------

def next_round(link, tag, version, values, sd):
    """Waits for the consumer's `tag` (it holds `version`), writes the next
    version's values into `sd` (untimed) and returns when the round may
    start: 2 ms on, the consumer asleep in its wait by then."""
    have = link.expect(tag)[1]
    if have != version:
        raise SystemExit(f"the consumer holds version {have}, the producer committed {version}")
    not_before = mono() + SETTLE_NS
    values.fill(list(sd.values()), version + 1)
    return not_before


def expect_version(got, want):
    if got != want:
        raise SystemExit(f"the producer committed version {got}, expected {want}")
    return got


def produce_live(link, pub, sd, values, version, cfg):
    """(a), then (g), then (b): a new version per round, when the consumer is ready."""
    device, rounds = cfg["device"], cfg["warmup"] + cfg["iterations"]
    t0s, commit_ns, t0_g = [], [], []
    for k in range(rounds):
        not_before = next_round(link, "ready_a", version, values, sd)
        t0, got, call_ns = commit_version(pub, sd, device, not_before)
        version = expect_version(got, version + 1)
        if k >= cfg["warmup"]:
            t0s.append(t0)
            commit_ns.append(call_ns)
    for k in range(rounds):
        not_before = next_round(link, "ready_g", version, values, sd)
        sync(device)  # the new weights are in the producer's tensors: update() copies them
        settle(not_before)
        t0 = mono()
        version = expect_version(pub.update(sd), version + 1)
        if k >= cfg["warmup"]:
            t0_g.append(t0)
    for _ in range(rounds):
        link.expect("ready_b")
        values.fill(list(sd.values()), version + 1)
        version = expect_version(pub.update(sd), version + 1)
        sync(device)  # the copy is done: (b) times the consumer's side alone
        link.send("committed", version)
    return t0s, commit_ns, t0_g


def produce_reshare(link, how, values, cfg):
    """(c) or (d): fresh shared memory every sync; returns the producer's t0 per sync."""
    import torch
    from torch.multiprocessing.reductions import reduce_tensor
    device, t0s = cfg["device"], []
    numels, shapes = [values.numel] * values.n, [values.shape] * values.n
    for k in range(cfg["warmup"] + cfg["iterations"]):
        w = RESHARE_BASE + k
        if how == "c":
            fresh = values.empty()
            if device == "cpu":
                fresh = [t.share_memory_() for t in fresh]
            values.fill(fresh, w)
        else:
            flat = torch.empty(sum(numels), dtype=values.dtype, device=device)
            if device == "cpu":
                flat.share_memory_()
            values.fill([p.view(s) for p, s in zip(flat.split(numels), shapes)], w)
        sync(device)
        link.expect("ready_" + how)
        settle(mono() + SETTLE_NS)
        t0 = mono()
        if how == "c":
            link.send("c", w, [reduce_tensor(t) for t in fresh])
        else:
            link.send("d", w, reduce_tensor(flat), numels, shapes)
        link.expect("done")  # the consumer let go of them: now they may go
        fresh = flat = None
        if k >= cfg["warmup"]:
            t0s.append(t0)
    return t0s


# ---- the run and the report -------------------------------------------------------------------

def pct(samples):
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, len(s) * 99 // 100)]


def run(cfg):
    import torch
    import torch.multiprocessing as mp
    import gpubroker
    from broker import Broker
    device = cfg["device"]
    if device == "cuda":
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
    values = Values(cfg)
    broker = Broker("--max-host-bytes", "16GiB") if device == "cpu" else Broker()
    proc = None
    try:
        client = gpubroker.connect(broker.socket)
        sd = dict(zip(cfg["keys"], values.empty()))
        values.fill(list(sd.values()), 1)
        pub = client.publisher(PREFIX, sd, buffers=2, mode=0o666)  # commits sd as version 1
        version = pub.version
        sync(device)
        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=consumer, args=(theirs, {**cfg, "socket": broker.socket}))
        proc.start()
        link = Link(mine, proc)
        link.send("start", version)
        link.expect("hello")
        t0_a, commit_ns, t0_g = produce_live(link, pub, sd, values, version, cfg)
        t0_re = {how: produce_reshare(link, how, values, cfg) for how in RESHARES}
        res = link.expect("results")[1]
        proc.join(TIMEOUT_S)
        if proc.exitcode != 0:
            raise SystemExit(f"the consumer exited with status {proc.exitcode}")
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(10)
        broker.stop()
    us = lambda ns: [x / 1e3 for x in ns]  # noqa: E731
    fig = {
        "a": us([t1 - t0 for t0, t1 in zip(t0_a, res["a_has"])]),
        "a_woke": us([t1 - t0 for t0, t1 in zip(t0_a, res["a_woke"])]),
        "a_readable": us([t2 - t0 for t0, t2 in zip(t0_a, res["a_readable"])]),
        "commit": us(commit_ns),
        "g": us([t1 - t0 for t0, t1 in zip(t0_g, res["g"])]),
        "b": us(res["b"]),
        "b_call": us(res["b_call"]),
        "e": us(res["e"]),
        "f": us(res["f"]),
    }
    for how in RESHARES:
        fig[how] = us([t1 - t0 for t0, t1 in zip(t0_re[how], res[how])])
    return fig


def report(cfg, fig):
    import torch
    n, shape, dtype = cfg["tensors"], tuple(cfg["shape"]), cfg["dtype"]
    nbytes = n * shape[0] * shape[1] * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    size = f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.2f} MiB"
    name = torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else "host memory"
    label = f"{n} x {shape} {dtype}, {size}"
    p = {k: pct(v) for k, v in fig.items()}
    print(f"live weight sync: {label} ({name}); {cfg['iterations']} updates after {cfg['warmup']} untimed; "
          "us, consumer side; every element of every version checked")
    rows = [("a", "(a) live, zero copy: commit -> sub.latest() returned"),
            ("a_woke", "    of which: commit -> sub.wait() returned"),
            ("a_readable", "    ... then torch.cuda.synchronize() in the consumer (CPU: none)"),
            ("g", "(g) live, pub.update(state dict) -> sub.latest() returned"),
            ("b", "(b) live, sub.copy_into(own params) + synchronize"),
            ("b_call", "    of which: the copy_into() call returned (the copy queued)"),
            ("c", "(c) per-tensor re-share: reduce_tensor x N -> rebuilt, copied, synced"),
            ("d", "(d) packed re-share: one fresh buffer -> rebuilt, views, copied, synced"),
            ("e", "(e) floor: in-process foreach copy + synchronize"),
            ("f", "(f) floor: one contiguous copy of the same bytes + synchronize"),
            ("commit", "    (the producer's commit() call itself, for the record)")]
    print(f"  {'':72} {'p50':>10} {'p99':>10}")
    for key, text in rows:
        print(f"  {text:72} {p[key][0]:10.1f} {p[key][1]:10.1f}")
    print(f"  p99 of {cfg['iterations']} samples is their {'maximum' if cfg['iterations'] < 100 else '99th'}")
    print(f"summary\tweight sync, new version as tensors (zero copy, incl. wake-up), p50, vs packed re-share; "
          f"{label}\t{p['a'][0]:.2f}\t{p['d'][0]:.2f}\tus\tspeedup>=100")
    print(f"summary\tweight sync, new version as tensors (zero copy, incl. wake-up), p50; {label}\t"
          f"{p['a'][0]:.2f}\t-\tus\tmax<100")
    print(f"summary\tweight sync, new version as tensors, p99 (baseline: packed re-share p99); {label}\t"
          f"{p['a'][1]:.2f}\t{p['d'][1]:.2f}\tus\t-")
    print(f"summary\tweight sync, update() -> subscriber holds the new tensors, p50 (baseline: in-process foreach "
          f"copy); {label}\t{p['g'][0]:.2f}\t{p['e'][0]:.2f}\tus\tplus<=100")
    print(f"summary\tweight sync, copied into own params, p50 (baseline: in-process foreach copy); {label}\t"
          f"{p['b'][0]:.2f}\t{p['e'][0]:.2f}\tus\tratio<=1.0")
    print(f"summary\tweight sync, copied into own params, p50 (baseline: one contiguous copy of the bytes); "
          f"{label}\t{p['b'][0]:.2f}\t{p['f'][0]:.2f}\tus\tratio<=1.3")
    for how, what in (("c", "per-tensor re-share (reduce_tensor x N)"), ("d", "packed re-share (one buffer)")):
        print(f"summary\tweight sync, {what} + copy, p50 (baseline: in-process foreach copy); {label}\t"
              f"{p[how][0] / 1e3:.3f}\t{p['e'][0] / 1e3:.3f}\tms\t-")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tensors", type=int, help="default 1000 on cuda (100 with --quick), 20 on cpu")
    p.add_argument("--shape", type=int, nargs=2, help="default 640 1024 on cuda, 64 64 on cpu")
    p.add_argument("--dtype", help="default bfloat16 on cuda, float32 on cpu")
    p.add_argument("--iterations", type=int, help="timed updates per figure (default 50, 5 with --quick)")
    p.add_argument("--quick", action="store_true", help="small and fast: a smoke run")
    a = p.parse_args()
    cuda = a.device == "cuda"
    n = a.tensors or (20 if not cuda else 100 if a.quick else 1000)
    cfg = {
        "device": a.device,
        "tensors": n,
        "shape": a.shape or ([640, 1024] if cuda else [64, 64]),
        "dtype": a.dtype or ("bfloat16" if cuda else "float32"),
        "iterations": a.iterations or (5 if a.quick else 50),
        "warmup": 2 if a.quick else 3,
        "keys": [f"l{i}" for i in range(n)],
    }
    report(cfg, run(cfg))


if __name__ == "__main__":
    main()

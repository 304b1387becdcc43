"""Where the time of a Python weight hand-over goes: a producer process
commits versions of a tree and a consumer process, asleep in its wait, takes
each one; both read CLOCK_MONOTONIC at every step, and the broker's own
commit stamp (CLOCK_REALTIME, converted) places the broker on the same line.
Each case is run on PyTorch's default stream and on streams of the
processes' own, for a tree of 1,000 tensors and of one, on the GPU and on
host memory, so that what grows with the tree, with the stream or with
Python stands out.

A diagnostic for the commit and acquire paths (python/gpubroker/_live.py,
client/src/writer.cc, reader.cc), run by hand like bench/stream_probe; not
a test and not a benchmark of bench/run.py: it checks only that each
version taken is the one committed.

Usage: python3 bench/live_probe.py [--rounds N] [--cases NAME,...]
       (needs $GPUBROKERD and $GPUBROKER_LIBRARY)
"""
import argparse
import ctypes
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "python", "tests")]

SETTLE_NS = 2_000_000
# name: (device, tensors, shape, own streams, busy: as bench/live_sync_bench
# runs, the producer writes each version into the back buffer and the
# consumer reads every tensor of the one it took, both untimed)
CASES = {
    "cuda-1000-default": ("cuda", 1000, (640, 1024), False, False),
    "cuda-1000-busy": ("cuda", 1000, (640, 1024), False, True),
    "cuda-1000-own": ("cuda", 1000, (640, 1024), True, False),
    "cuda-1-default": ("cuda", 1, (64,), False, False),
    "cuda-1-own": ("cuda", 1, (64,), True, False),
    "host-1000": ("cpu", 1000, (64,), False, False),
    # The producer publishes by update() from its own tensors, as
    # bench/live_sync_bench's (g): each of update()'s steps stamped.
    "cuda-1000-update": ("cuda", 1000, (640, 1024), False, True),
    "host-1000-update": ("cpu", 1000, (64,), False, False),
}
PRODUCER_STEPS = ["stream", "commit call"]
UPDATE_STEPS = ["sources listed", "sources checked", "stream", "begin", "copy launched", "commit call"]
CONSUMER_STEPS = ["wait returned", "stream", "acquire call", "arrays", "dict"]


def mono():
    return time.monotonic_ns()


def consumer(conn, sock, case, rounds):
    import torch
    import gpubroker
    from gpubroker import _buffers, _capi
    device, _, _, own, busy = CASES[case]
    if device == "cuda":
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
    stream = torch.cuda.Stream() if own and device == "cuda" else None
    client = gpubroker.connect(sock)
    sub = client.subscriber("probe", timeout=30)
    have = conn.recv()
    sub.wait(after=have - 1, timeout=30)
    sub.latest(timeout=0, stream=stream)
    rows = []
    for _ in range(rounds):
        conn.send(("ready", have))
        sub.wait(after=have, timeout=30)
        t = [mono()]
        tree = sub._live()
        s = _buffers.raw_stream(stream, tree.device_index) if tree.cuda else None
        t.append(mono())
        acquired = _capi.gpb_acquired()
        _capi.check(_capi.lib.gpb_reader_acquire, tree.reader, s, ctypes.byref(acquired))
        t.append(mono())
        sub._version, sub._buffer = acquired.version, acquired.buffer
        arrays = tree.arrays_in(acquired.buffer, sub._to)
        t.append(mono())
        tensors = dict(arrays)
        t.append(mono())
        if acquired.version != have + 1:
            raise SystemExit(f"{case}: took version {acquired.version} after {have}")
        have = acquired.version
        if busy:  # every tensor read, then synchronized
            torch.stack([x.sum(dtype=torch.float64) for x in tensors.values()]).tolist()
        del tensors
        rows.append((t, acquired.committed_ns))
    conn.send(("rows", rows))


def settle(not_before):
    while not_before - mono() > 300_000:
        time.sleep((not_before - mono() - 300_000) / 1e9)
    while mono() < not_before:
        pass


def run_case(case, rounds):
    import torch
    import torch.multiprocessing as mp
    import gpubroker
    from gpubroker import _buffers, _capi
    from broker import Broker
    device, n, shape, own, busy = CASES[case]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    broker = Broker() if device == "cuda" else Broker("--max-host-bytes", "4GiB")
    proc = None
    try:
        client = gpubroker.connect(broker.socket)
        sd = {f"l{i}": torch.zeros(shape, dtype=dtype, device=device) for i in range(n)}
        pub = client.publisher("probe", sd, buffers=2, mode=0o666)
        stream = torch.cuda.Stream() if own and device == "cuda" else None
        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=consumer, args=(theirs, broker.socket, case, rounds))
        proc.start()
        mine.send(pub.version)
        produced = []
        update = case.endswith("-update")
        for _ in range(rounds):
            if not mine.poll(60):
                raise SystemExit(f"{case}: the consumer did not say ready")
            mine.recv()
            if update:
                for x in sd.values():
                    x.add_(1)
                if device == "cuda":
                    torch.cuda.synchronize()
                settle(mono() + SETTLE_NS)
                produced.append(stamped_update(pub, sd))
                continue
            back = pub.begin()
            if busy:  # the version written, as a trainer's step does
                for x in sd.values():
                    x.add_(1)
                torch._foreach_copy_([back[k] for k in sd], list(sd.values()))
            if device == "cuda":
                torch.cuda.synchronize()
            settle(mono() + SETTLE_NS)
            real0, t0 = time.time_ns(), mono()
            s = _buffers.raw_stream(stream, pub._device_index) if device == "cuda" else None
            t1 = mono()
            v = ctypes.c_uint64()
            try:
                _capi.check(_capi.lib.gpb_writer_commit, pub._w(), s, ctypes.byref(v))
            finally:
                pub._begun = None
            t2 = mono()
            produced.append((t0, real0, [t1, t2]))
        if not mine.poll(60):
            raise SystemExit(f"{case}: no figures from the consumer")
        rows = mine.recv()[1]
        proc.join(30)
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
        broker.stop()
    # Every step as microseconds after t0 (right before commit()), medians.
    cols = {"broker's commit stamp": []}
    for name in (UPDATE_STEPS if case.endswith("-update") else PRODUCER_STEPS):
        cols["producer: " + name] = []
    for name in CONSUMER_STEPS:
        cols["consumer: " + name] = []
    for (t0, real0, pt), (ct, committed_real) in zip(produced, rows):
        cols["broker's commit stamp"].append((committed_real - real0) / 1e3)
        for name, x in zip(UPDATE_STEPS if case.endswith("-update") else PRODUCER_STEPS, pt):
            cols["producer: " + name].append((x - t0) / 1e3)
        for name, x in zip(CONSUMER_STEPS, ct):
            cols["consumer: " + name].append((x - t0) / 1e3)
    return {k: sorted(v)[len(v) // 2] for k, v in cols.items()}


def stamped_update(pub, sd):
    """Publisher.update(sd) step by step (python/gpubroker/_live.py), on
    the current stream: (t0, the wall clock at t0, each step's end)."""
    from gpubroker import _buffers
    real0, t0 = time.time_ns(), mono()
    srcs = pub._ordered(sd)
    t = [mono()]
    same = pub._seen is not None and pub._seen.holds(srcs)
    if not same:
        _buffers.check_shapes(pub._keys, srcs, pub._shapes)
    t.append(mono())
    _, raw = pub._stream(None, srcs)
    t.append(mono())
    buffer = pub._begin(None)
    t.append(mono())
    dsts = pub._buffer_arrays(buffer)
    batched = pub._copy_in(buffer, dsts, srcs, same)
    if batched is None:
        _buffers.copy_all(dsts, srcs)
    else:
        batched.run(raw)
    t.append(mono())
    pub.commit(raw)
    t.append(mono())
    return t0, real0, t


def copy_split(rounds):
    """Where sub.copy_into's time goes (one process: publisher and
    subscriber on one broker; 1,000 bf16 tensors on the GPU, the default
    stream): the whole call plus a synchronize, and, timed apart in the same
    rounds, the check that the destinations are still the plan's, one
    acquire and release, and the copy of the same bytes by one plan launch;
    medians, us."""
    import torch
    import gpubroker
    from gpubroker import _buffers
    from broker import Broker
    n, shape = 1000, (640, 1024)
    broker = Broker()
    try:
        client = gpubroker.connect(broker.socket)
        sd = {f"l{i}": torch.zeros(shape, dtype=torch.bfloat16, device="cuda") for i in range(n)}
        pub = client.publisher("copy", sd, buffers=2)
        sub = client.subscriber("copy")
        params = {k: torch.empty_like(v) for k, v in sd.items()}
        dsts = list(params.values())
        cols = {"copy_into + synchronize": [], "destinations checked (SameTensors.holds)": [], "acquire (re-pin)": [],
                "release": [], "plan launch + synchronize": [], "one contiguous copy + synchronize": []}
        flat = torch.empty(n * shape[0] * shape[1], dtype=torch.bfloat16, device="cuda")
        other = torch.empty_like(flat)
        for _ in range(rounds):
            pub.update(sd)
            torch.cuda.synchronize()
            sub.wait(after=sub.version, timeout=30)
            t0 = mono()
            sub.copy_into(params, timeout=30)
            torch.cuda.synchronize()
            cols["copy_into + synchronize"].append(mono() - t0)
            t0 = mono()
            if not next(iter(sub._copy_plans.values()))[3][0].holds(dsts):
                raise SystemExit("copy_into's plan does not hold for the destinations it was made for")
            cols["destinations checked (SameTensors.holds)"].append(mono() - t0)
            t0 = mono()
            sub._take(None, None)
            cols["acquire (re-pin)"].append(mono() - t0)
            plan = next(iter(sub._copy_plans.values()))[3][1]
            torch.cuda.synchronize()
            t0 = mono()
            plan.run(torch.cuda.current_stream().cuda_stream)
            torch.cuda.synchronize()
            cols["plan launch + synchronize"].append(mono() - t0)
            t0 = mono()
            sub.release()
            cols["release"].append(mono() - t0)
            t0 = mono()
            other.copy_(flat)
            torch.cuda.synchronize()
            cols["one contiguous copy + synchronize"].append(mono() - t0)
        how = "torch's C++ checks" if _buffers._native_checks() else "Python, attribute by attribute"
        print(f"copy_into split: {rounds} rounds, {n} x {shape} bf16; median us; destinations checked by {how}")
        for k, v in cols.items():
            print(f"  {k:40} {sorted(v)[len(v) // 2] / 1e3:10.1f}")
    finally:
        broker.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--cases", default=",".join(CASES))
    a = p.parse_args()
    import torch
    cases = [c for c in a.cases.split(",") if c in CASES and (CASES[c][0] == "cpu" or torch.cuda.is_available())]
    if torch.cuda.is_available():
        torch.empty(1, device="cuda")
    results = {c: run_case(c, a.rounds) for c in cases}
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"live_probe: {a.rounds} rounds per case ({name}); median us after the producer's commit() starts (-update: its update())")
    rows = (["broker's commit stamp"] + ["producer: " + n for n in dict.fromkeys(UPDATE_STEPS + PRODUCER_STEPS)]
            + ["consumer: " + n for n in CONSUMER_STEPS])
    print(f"  {'step':34}" + "".join(f"{c:>19}" for c in cases))
    for r in rows:
        print(f"  {r:34}" + "".join(f"{results[c][r]:19.1f}" if r in results[c] else f"{'-':>19}" for c in cases))
    if torch.cuda.is_available():
        copy_split(min(a.rounds, 50))


if __name__ == "__main__":
    main()

"""The weight-sync case: 1,000 tensors of assorted sizes (~3 GiB, like a
model's layers). gpubroker: published once as one arena
(publish_state_dict); a consumer process obtains all 1,000 torch.Tensors,
either with attach_state_dict(prefix, to="torch") (one library call, a
DLPack capsule per tensor) or one attach + torch.from_dlpack per tensor.
Baseline, same run: the same 1,000 tensors sent one by one through a
torch.multiprocessing queue; its clock starts once the producer's tensors
exist, and the producer starts sending then.

Two floors, same run: making the 1,000 tensors over memory the consumer
already has, with no IPC at all (a DLPack export + import in torch, and a
bare detach()): no hand-over can beat them.

Each path runs in its own fresh consumer process whose CUDA context is up.
"obtain" ends when all 1,000 tensors are in hand; "+ read" also reads one
element of each back to the host. Afterwards, untimed, every consumer sums
every tensor and the sums are compared with the producer's.

Usage: python3 bench/weight_sync_bench.py [--device cpu]
       (needs $GPUBROKERD and $GPUBROKER_LIBRARY; --device cpu runs the same
        scenario on host memory, a smoke run for machines without a GPU)
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "python", "tests")]
N = 1000


def sizes(n):
    import random
    rng = random.Random(1234)
    # Assorted layer sizes, ~3 MiB on average.
    return [(rng.choice([256, 512, 1024, 2048]), rng.choice([128, 256, 512, 1024, 2048])) for _ in range(n)]


def touch(tensors):
    import torch
    return float(torch.stack([t.reshape(-1)[0] for t in tensors]).sum().item())


def sums(tensors):
    import torch
    return [float(x) for x in torch.stack([t.double().sum() for t in tensors]).tolist()]


def context_up(device):
    import torch
    if device == "cuda":
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()


def consumer_gpubroker(sock, n, how, device):
    import torch
    import gpubroker
    context_up(device)
    if how.startswith("floor"):
        # Making n torch.Tensors over memory this process already has, no
        # IPC at all: DLPack export + import in torch's C++ ("floor-dlpack",
        # what any DLPack hand-over pays), or detach() ("floor-object", the
        # bare cost of n tensor objects).
        from torch.utils.dlpack import from_dlpack, to_dlpack
        local = make_tensors(n, device)
        t0 = time.perf_counter()
        if how == "floor-dlpack":
            tensors = [from_dlpack(to_dlpack(t)) for t in local]
        else:
            tensors = [t.detach() for t in local]
        t1 = time.perf_counter()
        print(t1 - t0, t1 - t0, *sums(tensors))
        return
    c = gpubroker.connect(sock)
    t0 = time.perf_counter()
    if how == "state_dict":
        tensors = list(c.attach_state_dict("model", to="torch").values())
    else:
        tensors = [torch.from_dlpack(c.attach(f"model/l{i}")) for i in range(n)]
    t1 = time.perf_counter()
    touch(tensors)
    t2 = time.perf_counter()
    print(t1 - t0, t2 - t0, *sums(tensors))


def make_tensors(n, device):
    import torch
    gen = torch.Generator(device).manual_seed(7)
    return [torch.randn(s, generator=gen, device=device) for s in sizes(n)]


def producer_queue(q, ready, go, done, n, device):
    import torch
    tensors = make_tensors(n, device)
    if device == "cuda":
        torch.cuda.synchronize()
    ready.put(1)
    go.get()  # the consumer's clock is running: send
    for t in tensors:
        q.put(t)
    done.get()  # the consumer is done: keep the tensors alive until then


def consumer_queue(q, ready, go, done, out, n, device):
    context_up(device)
    ready.get()  # the producer's tensors exist: only the sharing is timed
    t0 = time.perf_counter()
    go.put(1)
    tensors = [q.get() for _ in range(n)]
    t1 = time.perf_counter()
    touch(tensors)
    t2 = time.perf_counter()
    out.put((t1 - t0, t2 - t0, sums(tensors)))
    del tensors
    done.put(1)


def close(a, b):
    return all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b)) and len(a) == len(b)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tensors", type=int, default=N)
    p.add_argument("--consumer", nargs=2, metavar=("SOCKET", "HOW"))
    a = p.parse_args()
    if a.consumer:
        consumer_gpubroker(a.consumer[0], a.tensors, a.consumer[1], a.device)
        return
    import torch
    import torch.multiprocessing as mp
    from broker import Broker
    import gpubroker

    broker = Broker("--max-host-bytes", "16GiB") if a.device == "cpu" else Broker()
    try:
        c = gpubroker.connect(broker.socket)
        sd = {f"l{i}": t for i, t in enumerate(make_tensors(a.tensors, a.device))}
        want = sums(list(sd.values()))
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        t0 = time.perf_counter()
        c.publish_state_dict("model", sd, mode=0o666)
        publish_s = time.perf_counter() - t0
        del sd
        ours = {}
        for how in ("state_dict", "per_tensor", "floor-dlpack", "floor-object"):
            out = subprocess.run([sys.executable, __file__, "--device", a.device, "--tensors", str(a.tensors),
                                  "--consumer", broker.socket, how],
                                 stdout=subprocess.PIPE, text=True, check=True).stdout.split()
            ours[how] = (float(out[0]), float(out[1]))
            if not close([float(x) for x in out[2:]], want):
                raise SystemExit(f"weight sync ({how}): the consumer's tensors differ from the producer's")

        ctx = mp.get_context("spawn")
        q, ready, go, done, res = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
        prod = ctx.Process(target=producer_queue, args=(q, ready, go, done, a.tensors, a.device))
        cons = ctx.Process(target=consumer_queue, args=(q, ready, go, done, res, a.tensors, a.device))
        prod.start()
        cons.start()
        q_obtain, q_read, q_sums = res.get(timeout=600)
        cons.join()
        prod.join()
        if not close(q_sums, want):
            raise SystemExit("weight sync (queue): the consumer's tensors differ from the producer's")
    finally:
        broker.stop()
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "host memory"
    print(f"weight sync: {a.tensors} {a.device} tensors, {nbytes / 2**30:.2f} GiB ({name}), ms; "
          "sums of every tensor checked")
    print(f"  {'':44} {'obtain':>9} {'+ read':>9}   speed-up (obtain)")
    print(f"  {'torch.multiprocessing queue, one by one':44} {q_obtain * 1e3:9.1f} {q_read * 1e3:9.1f}   baseline")
    for how, label in (("state_dict", "gpubroker attach_state_dict(to='torch')"),
                       ("per_tensor", "gpubroker attach + from_dlpack, per tensor")):
        o, r = ours[how]
        print(f"  {label:44} {o * 1e3:9.1f} {r * 1e3:9.1f}   {q_obtain / o:6.1f}x")
    for how, label in (("floor-dlpack", "floor: DLPack round trip of a local tensor"),
                       ("floor-object", "floor: detach() of a local tensor")):
        o = ours[how][0]
        print(f"  {label:44} {o * 1e3:9.1f} {'':9}   {q_obtain / o:6.1f}x")
    print(f"  (publishing the arena, one copy of every tensor: {publish_s * 1e3:.1f} ms)")
    for how, what in (("floor-dlpack", "torch DLPack export + import"), ("floor-object", "torch detach()")):
        print(f"summary\tweight sync floor: {a.tensors} x {what} of a local tensor, no IPC\t"
              f"{ours[how][0] * 1e3:.2f}\t{q_obtain * 1e3:.2f}\tms\t-")
    print(f"summary\tweight sync {a.tensors} tensors (obtain)\t{ours['state_dict'][0] * 1e3:.2f}\t"
          f"{q_obtain * 1e3:.2f}\tms\tspeedup>=50")


if __name__ == "__main__":
    main()

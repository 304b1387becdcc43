"""The weight-sync case: 1,000 CUDA tensors of assorted sizes (~2 GiB, like a
model's layers). gpubroker: published once as one arena
(publish_state_dict); a consumer process obtains all 1,000 torch.Tensors.
Baseline, same run: the same 1,000 tensors shared one by one through a
torch.multiprocessing queue. Both timings start in a consumer whose CUDA
context is up and end when all 1,000 tensors are in hand and one element of
each has been read back.

Usage: python3 bench/weight_sync_bench.py   (needs $GPUBROKERD, $GPUBROKER_LIBRARY, a GPU)
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "python", "tests")]
N = 1000


def sizes():
    import random
    rng = random.Random(1234)
    # Assorted layer sizes, ~2 MiB on average: 2 GiB in all.
    return [(rng.choice([256, 512, 1024, 2048]), rng.choice([128, 256, 512, 1024, 2048])) for _ in range(N)]


def touch(tensors):
    import torch
    firsts = torch.stack([t.reshape(-1)[0].float() for t in tensors])
    return float(firsts.sum().item())


def consumer_gpubroker(sock):
    import torch
    import gpubroker
    torch.empty(1, device="cuda")
    c = gpubroker.connect(sock)
    t0 = time.perf_counter()
    tensors = [torch.from_dlpack(c.attach(f"model/l{i}")) for i in range(N)]
    total = touch(tensors)
    t1 = time.perf_counter()
    print(f"{t1 - t0:.6f} {total:.6f}")


def producer_queue(q, done):
    import torch
    sd = [torch.randn(s, device="cuda", generator=None) for s in sizes()]
    torch.cuda.synchronize()
    for t in sd:
        q.put(t)
    done.get()


def consumer_queue(q, done, out):
    import torch
    torch.empty(1, device="cuda")
    t0 = time.perf_counter()
    tensors = [q.get() for _ in range(N)]
    total = touch(tensors)
    t1 = time.perf_counter()
    out.put((t1 - t0, total))
    done.put(1)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--consumer":
        consumer_gpubroker(sys.argv[2])
        return
    import torch
    import torch.multiprocessing as mp
    from broker import Broker
    import gpubroker

    broker = Broker()
    try:
        c = gpubroker.connect(broker.socket)
        sd = {f"l{i}": torch.randn(s, device="cuda") for i, s in enumerate(sizes())}
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        t0 = time.perf_counter()
        c.publish_state_dict("model", sd, mode=0o666)
        publish_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--consumer", broker.socket],
                             stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        ours = float(out[0])

        ctx = mp.get_context("spawn")
        q, done, res = ctx.Queue(), ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=producer_queue, args=(q, done))
        k = ctx.Process(target=consumer_queue, args=(q, done, res))
        p.start()
        k.start()
        theirs, _ = res.get(timeout=600)
        k.join()
        p.join()
    finally:
        broker.stop()
    print(f"weight sync: {N} CUDA tensors, {nbytes / 2**30:.2f} GiB ({torch.cuda.get_device_name(0)})")
    print(f"  {'torch.multiprocessing queue, one by one':44} {theirs * 1e3:9.1f} ms")
    print(f"  {'gpubroker arena, attach all':44} {ours * 1e3:9.1f} ms   {theirs / ours:5.1f}x faster")
    print(f"  (publishing the arena, one copy of every tensor: {publish_s * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()

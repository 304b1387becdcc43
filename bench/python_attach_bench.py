"""A Python consumer obtaining a CUDA torch.Tensor: gpubroker attach vs a
torch.multiprocessing queue, measured in one run. Each figure is "get the
tensor + first access" (x[0].item()) in a consumer process whose CUDA context
is already up; first = first tensor in that process, median over N fresh
tensors after it.

Usage: python3 bench/python_attach_bench.py [N]   (needs $GPUBROKERD, $GPUBROKER_LIBRARY, a GPU)
"""
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "python", "tests")]

SHAPE = (4096, 4096)  # 64 MiB of float32


def consumer_gpubroker(sock, names):
    import torch
    import gpubroker
    torch.cuda.init()
    torch.empty(1, device="cuda")  # context up before timing
    c = gpubroker.connect(sock)
    times = []
    for name in names:
        t0 = time.perf_counter()
        x = torch.as_tensor(c.attach(name), device="cuda")
        x[0, 0].item()
        times.append(time.perf_counter() - t0)
    held = torch.as_tensor(c.attach(names[0]), device="cuda")
    cached = []
    for _ in range(200):
        t0 = time.perf_counter()
        x = torch.as_tensor(c.attach(names[0]), device="cuda")
        x[0, 0].item()
        cached.append(time.perf_counter() - t0)
    del held
    return times, cached


def producer_queue(q, ready, n):
    import torch
    tensors = [torch.randn(SHAPE, device="cuda") for _ in range(n)]  # fresh storage each
    torch.cuda.synchronize()
    for t in tensors:
        ready.get()
        q.put(t)
    ready.get()  # the consumer is done: keep tensors alive until then


def consumer_queue(q, ready, n, out):
    import torch
    torch.empty(1, device="cuda")
    times = []
    for _ in range(n):
        ready.put(1)
        t0 = time.perf_counter()
        x = q.get()
        x[0, 0].item()
        times.append(time.perf_counter() - t0)
        del x
    ready.put(1)
    out.put(times)


def us(v):
    return v * 1e6


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--consumer":
        times, cached = consumer_gpubroker(sys.argv[2], sys.argv[3:])
        print(" ".join(f"{t:.9f}" for t in times))
        print(" ".join(f"{t:.9f}" for t in cached))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    import torch
    import torch.multiprocessing as mp
    from broker import Broker
    import gpubroker

    broker = Broker()
    try:
        c = gpubroker.connect(broker.socket)
        names = []
        for i in range(n + 1):
            name = f"bench/t{i}"
            v = c.create(name, SHAPE, "float32", "cuda:0", mode=0o666)
            torch.as_tensor(v, device="cuda").normal_()
            names.append(name)
        torch.cuda.synchronize()
        out = subprocess.run([sys.executable, __file__, "--consumer", broker.socket, *names],
                             stdout=subprocess.PIPE, text=True, check=True).stdout.split("\n")
        ours = [float(x) for x in out[0].split()]
        cached = [float(x) for x in out[1].split()]

        ctx = mp.get_context("spawn")
        q, ready, res = ctx.Queue(), ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=producer_queue, args=(q, ready, n + 1))
        k = ctx.Process(target=consumer_queue, args=(q, ready, n + 1, res))
        p.start()
        k.start()
        theirs = res.get(timeout=300)
        k.join()
        p.join()
    finally:
        broker.stop()

    print(f"Python consumer gets a 64 MiB CUDA torch.Tensor, microseconds ({torch.cuda.get_device_name(0)})")
    print(f"{'':38} {'first':>9} {'median':>9} {'p90':>9}")
    for label, t in (("torch.multiprocessing queue", theirs), ("gpubroker attach + as_tensor", ours)):
        rest = sorted(t[1:])
        print(f"{label:38} {us(t[0]):9.0f} {us(statistics.median(rest)):9.0f} {us(rest[int(len(rest) * 0.9)]):9.0f}")
    print(f"{'gpubroker, allocation already mapped':38} {'':9} {us(statistics.median(cached)):9.1f}")
    print(f"summary\tPython: a consumer gets a 64 MiB torch.Tensor (median)\t{us(statistics.median(ours[1:])):.1f}\t"
          f"{us(statistics.median(theirs[1:])):.1f}\tus\tspeedup>1")


if __name__ == "__main__":
    main()

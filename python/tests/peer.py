"""A second process for the Python tests. Usage: peer.py SOCKET COMMAND ...

  echo NAME             attach, write the slot's bytes to stdout, read as many
                        bytes from stdin into the slot, print "written"
  check-torch NAME SEED1 SEED2 HOW
                        attach a CUDA slot through HOW (as_tensor, from_dlpack,
                        cupy), compare with torch.randn(seed1) made here, write
                        torch.randn(seed2), print "ok N" or "bad N"
  snippet NAME          the README snippet's consumer: attach and print the sum
  hold NAME             attach, print "holding", wait for EOF
  state-dict PREFIX TO  attach_state_dict(PREFIX, to=TO): print the keys, write
                        every tensor's bytes in that order, wait for EOF
  live-publish PREFIX BUFFERS SEED K KIND [LAYOUT]
                        a Publisher of stamped_base(SEED, LAYOUT or "a") as KIND
                        (numpy, cpu: torch on the host, cuda: torch on GPU 0):
                        versions 1..K, each stamped with its number; print
                        "published K". Then per line of stdin "more K2":
                        K2 more versions, print "published V" (the newest);
                        "replace SEED2 K2": replace() with layout "b" of
                        SEED2, versions 1..K2, print "replaced K2". Close at
                        EOF.
"""
import sys

import gpubroker

LAYOUTS = {
    "a": [("layers.0.weight", (33, 17), "float32"), ("layers.0.bias", (17,), "float64"),
          ("embed", (129, 8), "int64"), ("layers.1.weight", (5, 3, 7), "float32"), ("scale", (1,), "int32")],
    "b": [("encoder.weight", (64, 9), "float32"), ("encoder.bias", (9,), "int64"), ("head", (300,), "float64")],
    "big": [("first", (256, 1024), "float32"), ("second", (512, 1024), "float32"), ("last", (1024,), "int64")],
}


def stamped_base(seed, layout):
    """{key: NumPy array} random from `seed`; version v of the state dict is
    base + v in every element (integers below 2**20: exact in float32)."""
    import numpy
    rng = numpy.random.default_rng(seed)
    return {key: rng.integers(0, 1 << 20, size=shape).astype(dtype) for key, shape, dtype in LAYOUTS[layout]}


def as_kind(base, kind):
    if kind == "numpy":
        return base
    import torch
    return {k: torch.from_numpy(v).to("cuda:0" if kind == "cuda" else "cpu") for k, v in base.items()}


def stamp(base, version):
    return {k: v + version for k, v in base.items()}


def live_publish(c, prefix, buffers, seed, count, kind, layout):
    base = as_kind(stamped_base(seed, layout), kind)
    pub = c.publisher(prefix, stamp(base, 1), buffers=buffers)
    for v in range(2, count + 1):
        assert pub.update(stamp(base, v)) == v
    out(f"published {pub.version}")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "more":
            for _ in range(int(args[0])):
                pub.update(stamp(base, pub.version + 1))
            out(f"published {pub.version}")
            continue
        assert cmd == "replace", line
        seed2, count2 = args
        base = as_kind(stamped_base(int(seed2), "b"), kind)
        assert pub.replace(stamp(base, 1)) == 1
        for v in range(2, int(count2) + 1):
            assert pub.update(stamp(base, v)) == v
        out(f"replaced {pub.version}")
    pub.close()


def out(line):
    sys.stdout.buffer.write((line + "\n").encode())
    sys.stdout.buffer.flush()


def cupy_bytes(view):
    import cupy
    return cupy.asnumpy(cupy.asarray(view)).tobytes()


def main():
    sock, cmd, name = sys.argv[1], sys.argv[2], sys.argv[3]
    c = gpubroker.connect(sock, name="peer")
    if cmd == "live-publish":
        live_publish(c, name, int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7],
                     sys.argv[8] if len(sys.argv) > 8 else "a")
        return
    if cmd == "state-dict":
        import numpy
        tensors = c.attach_state_dict(name, to=sys.argv[4])
        out(" ".join(tensors))
        for t in tensors.values():
            if sys.argv[4] == "view":
                data = numpy.asarray(t).tobytes() if t.device == "cpu" else bytes(cupy_bytes(t))
            else:
                assert t.data_ptr() != 0
                data = t.cpu().numpy().tobytes()
            sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        sys.stdin.buffer.read()
        return
    if cmd == "exist-ok":  # create(exist_ok=True) of a name someone else holds
        try:
            c.create(name, (4,), "float32", exist_ok=True)
            out("created or returned")
        except gpubroker.AlreadyExists as e:
            out(f"AlreadyExists {e}")
        return
    if cmd == "attach-modes":  # what each readonly= gives this user
        for readonly in (False, True, None):
            try:
                v = c.attach(name, readonly=readonly)
                out(f"readonly={readonly}: {'writable' if v.writable else 'read-only'}")
            except gpubroker.PermissionDenied as e:
                out(f"readonly={readonly}: PermissionDenied {e}")
        return
    view = c.attach(name)
    if cmd == "echo":
        import numpy
        a = numpy.asarray(view)
        sys.stdout.buffer.write(a.tobytes())
        sys.stdout.buffer.flush()
        incoming = sys.stdin.buffer.read(a.nbytes)
        a[...] = numpy.frombuffer(incoming, dtype=a.dtype).reshape(a.shape)
        out("written")
    elif cmd == "check-torch":
        import torch
        seed1, seed2, how = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        shape, dtype = view.shape, getattr(torch, view.dtype)
        expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed1)).to(dtype)
        if how == "as_tensor":
            t = torch.as_tensor(view, device=f"cuda:{view.device_id}")
        elif how == "from_dlpack":
            t = torch.from_dlpack(view)
        else:
            import cupy
            t = torch.as_tensor(cupy.asarray(view), device=f"cuda:{view.device_id}")
        assert t.data_ptr() == view.data_ptr, "not zero-copy"
        bad = int((t.cpu() != expected).sum())
        t.copy_(torch.randn(shape, generator=torch.Generator().manual_seed(seed2)).to(dtype).to(t.device))
        torch.cuda.synchronize()
        out(("ok " if bad == 0 else "bad ") + str(bad))
    elif cmd == "snippet":
        import torch
        t = torch.as_tensor(c.attach(name), device="cuda")
        out(f"{t.dtype} {tuple(t.shape)} {t.device}")
    elif cmd == "hold":
        out("holding")
        sys.stdin.buffer.read()


if __name__ == "__main__":
    main()

"""Both sides of the container test: `publish` runs on the host, `visit` in
the container; each prints one JSON object for container_test.py to compare.

    peer.py publish PREFIX [DEVICE]
                             fresh random bytes in PREFIX/data, a state dict
                             PREFIX/model, a writable PREFIX/inbox, a 0600
                             PREFIX/secret, on DEVICE ("cpu", or "cuda:N"
                             through torch); prints their SHA-256s
    peer.py visit PREFIX     what a client in a container sees and does:
                             its namespaces, /dev/shm, list, lookup, reads,
                             a state dict, a write, a create, a refusal
    peer.py digest NAME      SHA-256 of a slot's bytes
    peer.py owner NAME       the uid the broker recorded as NAME's owner
"""
import hashlib
import json
import os
import sys

import numpy

import gpubroker


def as_array(view):
    """NumPy for a host view; a torch tensor on its GPU (no copy) for a device view."""
    if view.device == "cpu":
        return numpy.asarray(view)
    import torch
    return torch.from_dlpack(view)


def fill_random(view):
    data = numpy.frombuffer(os.urandom(view.nbytes), dtype=numpy.uint8)
    target = as_array(view)
    if isinstance(target, numpy.ndarray):
        target.view(numpy.uint8).reshape(-1)[...] = data
    else:
        import torch
        target.view(torch.uint8).reshape(-1).copy_(torch.from_numpy(data.copy()))
        torch.cuda.synchronize()


def sha(view):
    array = as_array(view)
    if not isinstance(array, numpy.ndarray):
        array = array.cpu().numpy()  # a copy made after the producer's synchronise
    return hashlib.sha256(array.tobytes()).hexdigest()


def publish(client, prefix, device="cpu"):
    rng = numpy.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    data = client.create(f"{prefix}/data", shape=(1 << 20,), dtype="uint8", device=device, mode=0o644)
    fill_random(data)
    model = {f"layer{i}.weight": rng.standard_normal((64 + i, 32), dtype=numpy.float32) for i in range(5)}
    model["step"] = numpy.array([int(rng.integers(1 << 30))], dtype=numpy.int64)
    if device != "cpu":
        import torch
        model = {k: torch.from_numpy(v).to(device) for k, v in model.items()}
    views = client.publish_state_dict(f"{prefix}/model", model, mode=0o644)
    client.create(f"{prefix}/inbox", shape=(1 << 16,), dtype="uint8", device=device, mode=0o666)
    client.create(f"{prefix}/secret", shape=(16,), dtype="uint8", device=device, mode=0o600)
    return {"data": sha(data), "model": {k: sha(v) for k, v in views.items()}}


def visit(client, prefix):
    out = {"ns": {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in ("pid", "ipc", "net", "mnt", "user")},
           "dev_shm": sorted(os.listdir("/dev/shm")), "uid": os.getuid(),
           "socket": gpubroker.default_socket_path()}
    out["names"] = sorted(s.name for s in client.list())
    info = client.lookup(f"{prefix}/data")
    out["lookup"] = {"nbytes": info.nbytes, "dtype": info.dtype, "shape": list(info.shape)}
    out["data"] = sha(client.attach(f"{prefix}/data", readonly=True))
    out["model"] = {k: sha(v) for k, v in client.attach_state_dict(f"{prefix}/model", readonly=True).items()}
    inbox = client.attach(f"{prefix}/inbox")
    fill_random(inbox)
    out["inbox"] = sha(inbox)
    try:
        client.attach(f"{prefix}/secret", readonly=True)
        out["secret"] = "attached"
    except gpubroker.Error as e:
        out["secret"] = e.code_name
    made = f"{prefix}/made-{os.urandom(4).hex()}"
    client.create(made, shape=(8,), dtype="uint8", device=info.device, mode=0o644)
    out["made"] = made
    return out


def main():
    command, arg, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    with gpubroker.connect(name=f"container-test-{command}") as client:
        if command == "publish":
            result = publish(client, arg, *extra)
        elif command == "visit":
            result = visit(client, arg)
        elif command == "digest":
            result = sha(client.attach(arg, readonly=True))
        elif command == "owner":
            result = client.stat(arg).owner_uid
        else:
            raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

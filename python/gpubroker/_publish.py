"""Publishing: tensors from torch, CuPy or NumPy copied into slots, and the
synchronisation that makes them safe to read once the call returns."""
import math

from ._capi import InvalidArgument
from ._dtypes import DTYPES, dtype_name


def publish(client, name, tensor, *, mode, backend):
    src = _Source(tensor)
    view = client.create(name, src.shape, src.dtype, src.device, mode=mode, backend=backend)
    src.copy_into(view)
    return view


def publish_state_dict(client, prefix, tensors, *, mode, backend, alignment, buffers=0):
    """The arena `prefix` and its views `prefix/<key>`. A plain arena
    (buffers=0) is filled and synchronised here; a live one is left at
    version 0 for a writer (a Publisher) to fill."""
    sources = {key: _Source(t) for key, t in tensors.items()}
    devices = {s.device for s in sources.values()}
    if len(devices) > 1:
        raise InvalidArgument(f"tensors are on several devices: {sorted(devices)}")
    device = devices.pop() if devices else "cpu"
    offsets, total = {}, 0
    for key, s in sources.items():
        total = (total + alignment - 1) // alignment * alignment
        offsets[key] = total
        total += s.nbytes
    client.create(prefix, (max(total, 1),), "uint8", device, mode=mode, backend=backend, attach=False,
                  buffers=buffers)
    views = {}
    for key, s in sources.items():
        views[key] = client.create(f"{prefix}/{key}", s.shape, s.dtype, base=prefix, offset=offsets[key], mode=mode)
        if buffers == 0:
            s.copy_into(views[key], sync=False)
    if buffers == 0:
        _Source.synchronize(device)
    return views


class _Source:
    """A tensor to publish: torch, CuPy or anything NumPy accepts."""

    def __init__(self, obj):
        module = type(obj).__module__.split(".")[0]
        self.kind = module if module in ("torch", "cupy") else "numpy"
        if self.kind == "numpy":
            import numpy
            obj = numpy.ascontiguousarray(obj)
        elif self.kind == "torch":
            obj = obj.detach().contiguous()
        else:
            import cupy
            obj = cupy.ascontiguousarray(obj)
        self.obj = obj
        self.shape = tuple(obj.shape)
        self.dtype = dtype_name(obj.dtype)
        code, bits = DTYPES[self.dtype]
        self.nbytes = math.prod(self.shape) * bits // 8
        if self.kind == "torch":
            self.device = "cpu" if obj.device.type == "cpu" else f"cuda:{obj.device.index or 0}"
        elif self.kind == "cupy":
            self.device = f"cuda:{obj.device.id}"
        else:
            self.device = "cpu"

    def copy_into(self, view, sync=True):
        if self.kind == "torch":
            import torch
            torch.from_dlpack(view).copy_(self.obj)
        elif self.kind == "cupy":
            import cupy
            cupy.asarray(view)[...] = self.obj
        else:
            import numpy
            numpy.asarray(view)[...] = self.obj
        if sync:
            _Source.synchronize(self.device)

    @staticmethod
    def synchronize(device):
        """Waits for the copies, so a consumer never reads a half-written buffer."""
        if device == "cpu":
            return
        import sys
        if "torch" in sys.modules:
            sys.modules["torch"].cuda.synchronize(device)
        if "cupy" in sys.modules:
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(int(device.split(":")[1])):
                cupy.cuda.Device().synchronize()

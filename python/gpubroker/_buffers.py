"""What Publisher and Subscriber do with one buffer of a live arena: arrays
over it, the batched copy in or out, the CUDA stream that copy runs on, and
how long a wait may last."""
import contextlib
import math
import time

from . import _dlpack
from ._capi import InvalidArgument, lib

INT32_MAX = (1 << 31) - 1


def arrays_in(views, buffer, to, readonly):
    """One array per View over buffer `buffer` of their allocation, each
    holding its own reference to the mapping: torch.Tensors (to="torch") or
    NumPy arrays (to="numpy", host memory only; read-only if `readonly`)."""
    if to == "torch":
        from torch.utils.dlpack import from_dlpack
        return [from_dlpack(_dlpack.capsule_in(v._handle, buffer)) for v in views]
    # Through the array interface, not DLPack: NumPy before 2 makes every
    # array from DLPack read-only, and a writer needs to write.
    import numpy
    return [numpy.asarray(_ArrayAt(v._host_interface(lib.gpb_view_data_in(v._handle, buffer), not readonly)))
            for v in views]


class _ArrayAt:
    """An array interface, for numpy.asarray."""

    def __init__(self, interface):
        self.__array_interface__ = interface


def is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def copy_all(dsts, srcs):
    """dsts[i] <- srcs[i] (converting the element type where they differ).
    torch: one torch._foreach_copy_ on the current stream where this torch
    has it (2.1 and later), else one copy_ each; NumPy: one copyto each."""
    if not dsts:
        return
    if is_torch(dsts[0]):
        import torch
        if not is_torch(srcs[0]) or not is_torch(srcs[-1]):
            srcs = [s if is_torch(s) else torch.from_numpy(s) for s in srcs]
        with torch.no_grad():  # a source that requires grad must not tie our buffers into its graph
            if hasattr(torch, "_foreach_copy_"):
                torch._foreach_copy_(dsts, srcs)
            else:
                for d, s in zip(dsts, srcs):
                    d.copy_(s)
        return
    import numpy
    for d, s in zip(dsts, srcs):
        numpy.copyto(d, s.numpy() if is_torch(s) else s, casting="same_kind")


def check_shapes(keys, tensors, published):
    """Copies never broadcast: a tensor whose shape is not the published one
    (a tuple per key) is an error, named. Against tuples made once, not the
    published arrays' shapes: reading a tensor's shape is most of the cost
    (a few hundred microseconds for 1,000 tensors on the H200)."""
    for key, t, shape in zip(keys, tensors, published):
        if t.shape != shape:  # a torch.Size or a NumPy shape against a tuple
            raise InvalidArgument(f"'{key}': shape {tuple(t.shape)} where {shape} is published")


def cuda_stream(stream, device_index):
    """The torch stream work runs on: `stream` (a torch.cuda.Stream, or a
    CUstream handle as an int), or the device's current stream."""
    import torch
    if stream is None:
        return torch.cuda.current_stream(device_index)
    if isinstance(stream, int):
        return torch.cuda.ExternalStream(stream, device=device_index)
    return stream


def on_stream(stream):
    """A context that makes `stream` current (no-op for None: host memory)."""
    if stream is None:
        return contextlib.nullcontext()
    import torch
    return torch.cuda.stream(stream)


def deadline(timeout, what="timeout"):
    """time.monotonic() when a wait of `timeout` seconds ends; None: never."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{what} must be None or a number of seconds >= 0, not {timeout!r}")
    if math.isinf(timeout):
        return None
    return time.monotonic() + timeout


def ms_left(end):
    """Milliseconds until `end` as the C ABI takes them: -1 for no limit,
    rounded up (a wait of 0.1 ms is 1 ms, not 0: 0 means not at all)."""
    if end is None:
        return -1
    left = end - time.monotonic()
    if left <= 0:
        return 0
    return min(INT32_MAX, math.ceil(left * 1000))


def seconds_left(end):
    return None if end is None else max(0.0, end - time.monotonic())

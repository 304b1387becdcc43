"""What Publisher and Subscriber do with one buffer of a live arena: arrays
over it, the batched copy in or out, the CUDA stream that copy runs on, and
how long a wait may last."""
import contextlib
import ctypes
import math
import time

from . import _dlpack
from ._capi import Error, InvalidArgument, check, gpb_copy, lib

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


class BatchedCopy:
    """dsts[i] <- srcs[i], byte for byte, in one kernel launch
    (gpb_copy_plan): what copy_into runs for torch tensors on one GPU of
    matching dtype, contiguous. A copy each (torch._foreach_copy_) is
    launch-bound, 1,000 tensors taking about twice the time their bytes
    need. Made once for a set of sources and destinations, and used again
    while the destinations' signature is the same: address, shape, strides
    and dtype of each (a freed tensor's memory is handed to the next of its
    size, so an address alone could name a transposed or retyped one)."""

    @staticmethod
    def signature(dsts):
        if not dsts or not is_torch(dsts[0]):
            return None
        return [(d.data_ptr(), d.size(), d.stride(), d.dtype) for d in dsts]  # size(): see shapes_of

    @staticmethod
    def make(dsts, srcs, device_index):
        """A plan for these tensors, or None where one launch cannot do it
        (another dtype, a strided tensor, host memory, no kernel for this
        GPU): the caller copies tensor by tensor."""
        if not dsts or not is_torch(dsts[0]):
            return None
        for d, s in zip(dsts, srcs):
            if (not is_torch(d) or not is_torch(s) or not d.is_cuda or d.device != s.device or d.dtype != s.dtype
                    or d.shape != s.shape or not d.is_contiguous() or not s.is_contiguous()
                    or d.is_conj() or d.is_neg() or s.is_conj() or s.is_neg()):
                return None
        if len({d.data_ptr() for d in dsts}) != len(dsts):
            return None  # tied destinations: copied one after another, the last one wins, as copy_ does
        copies = (gpb_copy * len(dsts))()
        for c, d, s in zip(copies, dsts, srcs):
            c.src, c.dst, c.bytes = s.data_ptr(), d.data_ptr(), s.numel() * s.element_size()
        handle = ctypes.c_void_p()
        try:
            check(lib.gpb_copy_plan_create, device_index, copies, len(dsts), ctypes.byref(handle))
        except Error:  # no kernel for this GPU, no memory left for the plan's table: copy tensor by tensor
            return None
        return BatchedCopy(handle)

    def __init__(self, handle):
        self._handle = handle

    def run(self, stream):
        """On `stream`, a CUstream handle (an int; 0: the legacy default)."""
        check(lib.gpb_copy_plan_run, self._handle, stream)

    def __del__(self):
        handle, self._handle = self._handle, None
        if handle and lib is not None:  # at interpreter exit the module may be torn down first
            lib.gpb_copy_plan_destroy(handle)


def shapes_of(tensors):
    """Each tensor's shape. For torch tensors through size(): their .shape
    costs about ten times as much (1,000 tensors: 780 against 70 us on the
    development VM), and a step checks every parameter's."""
    if tensors and is_torch(tensors[0]):
        try:
            return [t.size() for t in tensors]
        except TypeError:  # another kind of array among them: size is a count there
            pass
    return [t.shape for t in tensors]


def check_shapes(keys, tensors, published):
    """Copies never broadcast: a tensor whose shape is not the published one
    (a tuple per key) is an error, named. Against tuples made once, not the
    published arrays' shapes."""
    for key, shape, want in zip(keys, shapes_of(tensors), published):
        if shape != want:  # a torch.Size or a NumPy shape against a tuple
            raise InvalidArgument(f"'{key}': shape {tuple(shape)} where {want} is published")


def cuda_stream(stream, device_index):
    """The torch stream work runs on: `stream` (a torch.cuda.Stream, or a
    CUstream handle as an int), or the device's current stream."""
    import torch
    if stream is None:
        return torch.cuda.current_stream(device_index)
    if isinstance(stream, int):
        return torch.cuda.ExternalStream(stream, device=device_index)
    return stream


def raw_stream(stream, device_index):
    """The CUstream handle (an int) of `stream` (a torch.cuda.Stream, or a
    handle as an int), or of the device's current stream, made without a
    torch Stream object: on PyTorch's default stream that object costs
    ~13 us a call on an H100, the raw handle ~1 us."""
    if isinstance(stream, int):
        return stream
    if stream is not None:
        return stream.cuda_stream
    import torch
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is None:  # an older torch
        return torch.cuda.current_stream(device_index).cuda_stream
    return raw(torch.cuda.current_device() if device_index is None else device_index)


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

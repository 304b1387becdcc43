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
    while SameTensors says they are the same."""

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


class SameTensors:
    """What must stay the same for a BatchedCopy to be used again: the
    address, shape, strides and dtype of each tensor it copies from or into
    that is not ours (a freed tensor's memory is handed to the next of its
    size, so an address alone could name a transposed or retyped one). An
    engine's copy_into and a trainer's update() check it every step, for
    every parameter, so it is read as cheaply as the torch at hand allows:
    through torch's own C++ checks where it has them (torch 2.2 and later:
    those torch.compile and CUDA graphs check their inputs with; 1,000
    tensors on an H100 host: 91 + 65 us), else attribute by attribute in
    Python (there ~450 us)."""

    @staticmethod
    def of(tensors):
        """None where there is nothing to check (no torch tensors)."""
        if not tensors or not is_torch(tensors[0]):
            return None
        if _native_checks() is not None:
            try:
                return _NativeSameTensors(tensors)
            except Exception:  # noqa: BLE001 - torch's private API: any failure means the Python way
                pass
        try:
            return _PythonSameTensors(tensors)
        except (TypeError, RuntimeError):  # another kind of array, or a tensor with no storage: no plan
            return None


class _PythonSameTensors:
    def __init__(self, dsts):
        self._seen = self._read(dsts)

    @staticmethod
    def _read(dsts):
        import torch
        t = torch.Tensor
        # The conjugate and negative bits too: such a view has the address,
        # shape, strides and dtype of the tensor under it.
        return (list(map(t.data_ptr, dsts)), list(map(t.size, dsts)), list(map(t.stride, dsts)),
                [(d.dtype, d.is_conj(), d.is_neg()) for d in dsts])

    def holds(self, dsts):
        try:
            return self._read(dsts) == self._seen
        except (TypeError, RuntimeError):
            return False


class _NativeSameTensors:
    def __init__(self, dsts):
        guards, same_addresses = _native_checks()
        self._guards = guards(*dsts, dynamic_dims_sizes=[list(d.size()) for d in dsts],
                              dynamic_dims_strides=[list(d.stride()) for d in dsts])
        self._same_addresses = same_addresses
        self._addresses = [d.data_ptr() for d in dsts]
        self._all = list(range(len(dsts)))
        if not self.holds(dsts):
            raise RuntimeError("torch's checks refuse the tensors they were made from")

    def holds(self, dsts):
        return (len(dsts) == len(self._all) and self._guards.check(*dsts)
                and self._same_addresses(dsts, self._addresses, self._all))


_native = []  # [(TensorGuards, _tensors_data_ptrs_at_indices_equal) or None], once known


def _native_checks():
    """torch's C++ checks of many tensors' metadata and addresses, or None
    where this torch lacks them or they do not tell apart what the plan
    needs told apart (private API: tried once, on small tensors, before
    any plan trusts them)."""
    if not _native:
        _native.append(None)
        try:
            import torch
            from torch._C._dynamo.guards import TensorGuards
            same_addresses = torch._C._tensors_data_ptrs_at_indices_equal
            a, sq, c = torch.zeros((2, 3)), torch.zeros((3, 3)), torch.zeros((2,), dtype=torch.complex64)
            guards = TensorGuards(a, dynamic_dims_sizes=[[2, 3]], dynamic_dims_strides=[[3, 1]])
            on_sq = TensorGuards(sq, dynamic_dims_sizes=[[3, 3]], dynamic_dims_strides=[[3, 1]])
            on_c = TensorGuards(c, dynamic_dims_sizes=[[2]], dynamic_dims_strides=[[1]])
            told = [guards.check(a), not guards.check(a.view(3, 2)), not guards.check(a.t()),
                    not guards.check(a.view(torch.int32)), not guards.check(a.view(1, 2, 3)),
                    not guards.check(a[:1].expand(2, 3)), on_sq.check(sq), not on_sq.check(sq.t()),
                    on_c.check(c), not on_c.check(c.conj()),
                    same_addresses([a], [a.data_ptr()], [0]), not same_addresses([a[1:]], [a.data_ptr()], [0])]
            if all(told):
                _native[0] = (TensorGuards, same_addresses)
        except Exception:  # noqa: BLE001 - an older torch, or one whose private API changed
            pass
    return _native[0]


def addresses_of(tensors):
    """Each torch tensor's data pointer, or None if any is not a torch tensor."""
    if not tensors or not is_torch(tensors[0]):
        return None
    import torch
    try:
        return list(map(torch.Tensor.data_ptr, tensors))
    except (TypeError, RuntimeError):
        return None


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

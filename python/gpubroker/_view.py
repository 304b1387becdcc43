"""View: a zero-copy window onto a slot, and the array protocols it speaks
(__cuda_array_interface__, __array_interface__, DLPack)."""
import ctypes

from . import _dlpack
from ._capi import check, lib
from ._dtypes import from_dl, typestr
from ._slot import SlotInfo, new_info


class _Mapping:
    """One reference of the library's to a view's mapping: the memory stays
    mapped while this object lives, whatever happens to the View."""
    __slots__ = ("_handle",)

    def __init__(self, handle):
        self._handle = lib.gpb_view_retain(handle)
        if not self._handle:
            raise MemoryError("cannot retain the view")

    def __del__(self):
        try:
            lib.gpb_view_release(self._handle)
        except Exception:  # interpreter shutdown
            pass


class View:
    """A zero-copy window onto a slot. Holds a lease until released or collected."""

    def __init__(self, handle: int) -> None:
        self._handle = handle
        info = new_info()
        check(lib.gpb_view_info, handle, ctypes.byref(info))
        self._info = info
        self._slot = None  # the full SlotInfo, built on first use: attach stays cheap
        self._dl = (info.dtype.code, info.dtype.bits, info.dtype.lanes)
        self.shape = tuple(info.shape[: info.ndim])
        self.strides = tuple(info.strides[: info.ndim])  # in elements
        self.data_ptr = lib.gpb_view_data(handle) or 0
        self.writable = bool(lib.gpb_view_writable(handle))
        self.is_cuda = info.device_type == 2
        self.device_id = info.device_ordinal if self.is_cuda else 0

    @property
    def slot(self) -> SlotInfo:
        if self._slot is None:
            self._slot = SlotInfo._from(self._info)
        return self._slot

    name = property(lambda self: self._info.name.decode())
    dtype = property(lambda self: from_dl(*self._dl))
    nbytes = property(lambda self: self._info.nbytes)
    version = property(lambda self: self._info.version)
    device = property(lambda self: self.slot.device)

    def __enter__(self) -> "View":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __array__(self, dtype=None, copy=None):
        # NumPy asks here only when __array_interface__ had no answer: say why,
        # rather than let it make an array of one Python object.
        if not self._handle:
            raise TypeError("view was released")
        if self.is_cuda:
            raise TypeError(f"{self.name!r} is on {self.device}: NumPy reads host memory only; use "
                            "torch.from_dlpack(view) or cupy.asarray(view)")
        raise TypeError(f"{self.name!r} holds {self.dtype}, which NumPy has no dtype for; use "
                        "torch.from_dlpack(view)")

    def release(self) -> None:
        """Drops this view's share of the lease now. Arrays made from it keep their own."""
        if self._handle:
            lib.gpb_view_release(self._handle)
            self._handle = None

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self):
        return (f"<gpubroker.View {self.name!r} {self.dtype}{list(self.shape)} on {self.device}"
                f"{'' if self.writable else ' read-only'}>")

    def _interface(self):
        if not self._handle:
            raise AttributeError("view was released")
        ts = typestr(self._dl[0], self._dl[1])
        if ts is None or self._dl[2] != 1:
            raise AttributeError(f"{self.dtype} has no array-interface type string; "
                                 "use DLPack (torch.from_dlpack(view))")
        itemsize = self._dl[1] // 8
        contiguous = _contiguous_strides(self.shape)
        strides = None if tuple(self.strides) == contiguous else tuple(s * itemsize for s in self.strides)
        return {"shape": tuple(self.shape), "typestr": ts, "descr": [("", ts)],
                "data": (self.data_ptr, not self.writable), "strides": strides, "version": 3}

    @property
    def __cuda_array_interface__(self):
        if not self.is_cuda:
            raise AttributeError("a host slot has no __cuda_array_interface__; use __array_interface__")
        d = self._interface()
        del d["descr"]
        d["stream"] = None  # published data: nothing in flight to wait for
        return d

    @property
    def __array_interface__(self):
        if self.is_cuda:
            raise AttributeError("a CUDA slot has no __array_interface__; use __cuda_array_interface__")
        return self._host_interface(self.data_ptr, self.writable)

    def _host_interface(self, data_ptr, writable):
        """The array interface of this view's data at `data_ptr` (the view's
        own, or where another buffer of a live slot holds it)."""
        d = self._interface()
        # The data as a buffer object rather than a bare address: NumPy makes
        # it the array's base, and it holds a reference to the mapping of its
        # own, so the array stays valid after release() and after the View goes.
        buf = (ctypes.c_char * self.nbytes).from_address(data_ptr) if self.nbytes else bytearray()
        buf._gpubroker_mapping = _Mapping(self._handle) if self.nbytes else None
        d["data"] = memoryview(buf) if writable else memoryview(buf).toreadonly()
        return d

    def __dlpack_device__(self):
        return (_dlpack.kDLCUDA, self.device_id) if self.is_cuda else (_dlpack.kDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """DLPack export. The slot's contents were synchronised before they were
        published, so there is no work in flight on any stream to order against:
        every valid `stream` is accepted and nothing needs to wait."""
        if not self._handle:
            raise BufferError("view was released")
        if copy:
            raise BufferError("gpubroker views are zero-copy; copy=True is not supported")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"view lives on {self.__dlpack_device__()}, not {tuple(dl_device)}")
        if self.is_cuda:
            if stream == 0:
                raise ValueError("stream 0 is ambiguous in DLPack; pass 1 (legacy default), "
                                 "2 (per-thread default), a stream handle, or -1")
            if stream is not None and (not isinstance(stream, int) or stream < -1):
                raise ValueError(f"invalid CUDA stream {stream!r}")
        elif stream not in (None, -1):
            raise ValueError("stream must be None for a CPU tensor")
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        return _dlpack.capsule(self._handle, versioned)


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))

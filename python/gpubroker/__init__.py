"""gpubroker: named, zero-copy GPU and host buffers shared between processes.

    import gpubroker, torch
    with gpubroker.connect() as c:
        c.create("weights/layer0", shape=(4096, 4096), dtype="bfloat16", device="cuda:0")
        t = torch.as_tensor(c.attach("weights/layer0"), device="cuda")   # zero copy

A View exposes __cuda_array_interface__ (CUDA slots), __array_interface__
(host slots) and __dlpack__ / __dlpack_device__ (both), so torch.as_tensor,
torch.from_dlpack, cupy.asarray and numpy.asarray wrap it without a copy. The
view's lease on the buffer lasts as long as the view or any array made from
it; errors are gpubroker.Error subclasses carrying the broker's code.
"""
import ctypes
import dataclasses
import math

from . import _dlpack
from ._capi import (AlreadyExists, Error, InvalidArgument, NotFound, PermissionDenied, ProtocolError,
                    ResourceExhausted, Unavailable, Unsupported, check, gpb_create_args, gpb_dtype,
                    gpb_slot_info, lib)
from ._args import INT64_MAX as _INT64_MAX, UINT64_MAX as _UINT64_MAX, integer as _int, name as _name
from ._dtypes import DTYPES, dtype_name, from_dl, typestr

__all__ = ["connect", "Client", "View", "SlotInfo", "Error", "InvalidArgument", "NotFound",
           "AlreadyExists", "PermissionDenied", "ResourceExhausted", "Unavailable", "ProtocolError",
           "Unsupported", "default_socket_path"]

_BACKENDS = {"host": 1, "cuda_vmm": 2, "cuda_ipc": 3}
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
_BACKEND_NAMES = {v: k for k, v in _BACKENDS.items()}


def default_socket_path():
    """$GPUBROKER_SOCKET, or /run/gpubroker/gpubroker.sock."""
    return lib.gpb_default_socket_path().decode()


def _uuid_text(raw):
    h = bytes(raw).hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclasses.dataclass(frozen=True)
class SlotInfo:
    name: str
    backend: str
    device: str          # "cpu" or "cuda:N" in this process's numbering ("cuda:?" if not visible)
    device_uuid: str     # "" for host memory
    dtype: str
    shape: tuple
    strides: tuple       # in elements
    nbytes: int
    byte_offset: int
    allocation_id: int
    allocation_bytes: int
    owner_uid: int
    owner_gid: int
    mode: int
    lease_count: int
    version: int
    generation: int

    @staticmethod
    def _from(info):
        cuda = info.device_type == 2
        return SlotInfo(
            name=info.name.decode(), backend=_BACKEND_NAMES.get(info.backend, str(info.backend)),
            device=(f"cuda:{info.device_ordinal}" if info.device_ordinal >= 0 else "cuda:?") if cuda else "cpu",
            device_uuid=_uuid_text(info.device_uuid) if cuda else "",
            dtype=from_dl(info.dtype.code, info.dtype.bits, info.dtype.lanes),
            shape=tuple(info.shape[: info.ndim]), strides=tuple(info.strides[: info.ndim]),
            nbytes=info.nbytes, byte_offset=info.byte_offset, allocation_id=info.allocation_id,
            allocation_bytes=info.allocation_bytes, owner_uid=info.owner_uid, owner_gid=info.owner_gid,
            mode=info.mode, lease_count=info.lease_count, version=info.version, generation=info.generation)


class View:
    """A zero-copy window onto a slot. Holds a lease until released or collected."""

    def __init__(self, handle):
        self._handle = handle
        info = gpb_slot_info()
        lib.gpb_view_info(handle, ctypes.byref(info))
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
    def slot(self):
        if self._slot is None:
            self._slot = SlotInfo._from(self._info)
        return self._slot

    name = property(lambda self: self._info.name.decode())
    dtype = property(lambda self: from_dl(*self._dl))
    nbytes = property(lambda self: self._info.nbytes)
    version = property(lambda self: self._info.version)
    device = property(lambda self: self.slot.device)

    def release(self):
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
        d = self._interface()
        # The data as a buffer object rather than a bare address: NumPy makes
        # it the array's base, and it holds a reference to the mapping of its
        # own, so the array stays valid after release() and after the View goes.
        buf = (ctypes.c_char * self.nbytes).from_address(self.data_ptr) if self.nbytes else bytearray()
        buf._gpubroker_mapping = _Mapping(self._handle) if self.nbytes else None
        d["data"] = memoryview(buf) if self.writable else memoryview(buf).toreadonly()
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


def _device_args(device, backend):
    """("cpu" | "cuda" | "cuda:N" | "GPU-<uuid>" | torch.device, backend) -> (backend code, ordinal, uuid)."""
    text = str(device) if device is not None else "cpu"
    if text == "cpu":
        return _BACKENDS[backend or "host"], -1, None
    if text.startswith("GPU-"):
        raw = bytes.fromhex(text[4:].replace("-", ""))
        if len(raw) != 16:
            raise InvalidArgument(f"'{text}' is not a GPU UUID")
        return _BACKENDS[backend or "cuda_vmm"], -1, raw
    if text == "cuda" or text.startswith("cuda:"):
        ordinal = int(text[5:]) if text.startswith("cuda:") else 0
        return _BACKENDS[backend or "cuda_vmm"], ordinal, None
    raise InvalidArgument(f"unknown device {device!r} (cpu, cuda, cuda:N or GPU-<uuid>)")


class Client:
    """A connection to gpubrokerd. Thread-safe; a context manager."""

    def __init__(self, socket=None, name=None):
        handle = ctypes.c_void_p()
        check(lib.gpb_connect, socket.encode() if socket else None, name.encode() if name else None,
              ctypes.byref(handle))
        self._handle = handle

    def close(self):
        """Closes this handle; views made from it stay valid."""
        if self._handle:
            lib.gpb_client_release(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if not self._handle:
            raise Unavailable("client is closed")
        return self._handle

    def create(self, name, shape=(), dtype="float32", device="cpu", *, strides=None, nbytes=0,
               base=None, offset=0, backend=None, mode=0o600, attach=True):
        """Creates slot `name` and (by default) attaches it.

        device: "cpu", "cuda", "cuda:N" (this process's numbering) or "GPU-<uuid>".
        base/offset: make the slot a view into slot `base`'s allocation.
        backend: "host", "cuda_vmm" or "cuda_ipc"; default by device.
        Returns a View, or a SlotInfo with attach=False."""
        shape = tuple(_int(s, 0, _INT64_MAX, "shape entry") for s in shape)
        if len(shape) > 8:
            raise ValueError(f"{len(shape)} dimensions; the limit is 8")
        if strides is not None:
            strides = tuple(_int(s, 0, _INT64_MAX, "stride") for s in strides)
            if len(strides) != len(shape):
                raise ValueError("strides must have one entry per dimension")
        nbytes = _int(nbytes, 0, _UINT64_MAX, "nbytes")
        offset = _int(offset, 0, _UINT64_MAX, "offset")
        mode = _int(mode, 0, 0o777, "mode")
        name_b = _name(name)
        base_b = _name(base, "base") if base else None
        name_d = dtype_name(dtype)
        code, bits = DTYPES[name_d]
        n = len(shape)
        shape_arr = (ctypes.c_int64 * max(n, 1))(*shape)
        strides_arr = (ctypes.c_int64 * max(n, 1))(*strides) if strides is not None else None
        backend_code, ordinal, uuid = (0, -1, None) if base else _device_args(device, backend)
        uuid_arr = (ctypes.c_uint8 * 16)(*uuid) if uuid else None
        args = gpb_create_args(
            name=name_b, dtype=gpb_dtype(code, bits, 1), ndim=n,
            shape=shape_arr, strides=strides_arr, bytes=nbytes,
            base=base_b, byte_offset=offset, backend=backend_code,
            device=ordinal, device_uuid=uuid_arr, mode=mode)
        info = gpb_slot_info()
        if not attach:
            check(lib.gpb_create, self._h(), ctypes.byref(args), None, ctypes.byref(info))
            return SlotInfo._from(info)
        view = ctypes.c_void_p()
        check(lib.gpb_create, self._h(), ctypes.byref(args), ctypes.byref(view), ctypes.byref(info))
        return View(view.value)

    def attach(self, name, readonly=False):
        """A View of slot `name`. Free of round trips if this process maps its allocation."""
        view = ctypes.c_void_p()
        check(lib.gpb_attach, self._h(), _name(name), 1 if readonly else 0, ctypes.byref(view))
        return View(view.value)

    def attach_many(self, names, readonly=False):
        """Views of every slot in `names`, all or none: on an error no view is
        kept and the error names the slot. One call into the library."""
        return [View(h) for h in self._attach_handles(names, readonly)]

    def attach_state_dict(self, prefix, keys=None, *, readonly=False, to="view"):
        """The tensors `publish_state_dict(prefix, ...)` published, as {key: ...}.

        keys: which to take (default: every slot named `prefix/...`, in the
        order they were published). to: "view" for Views, "torch" for
        torch.Tensors, made without a View each (the fast path for many
        tensors). The arena is mapped once; all tensors share its lease,
        which lasts while any of them does."""
        if keys is None:
            keys = self._keys_under(prefix)
        keys = list(keys)
        names = [f"{prefix}/{k}" for k in keys]
        if to == "view":
            return {k: View(h) for k, h in zip(keys, self._attach_handles(names, readonly))}
        if to != "torch":
            raise InvalidArgument(f"to={to!r}: expected 'view' or 'torch'")
        from . import _torch
        return dict(zip(keys, _torch.attach(self._h(), names, readonly)))

    def _attach_handles(self, names, readonly):
        encoded = [_name(n) for n in names]
        out = (ctypes.c_void_p * max(len(encoded), 1))()
        check(lib.gpb_attach_many, self._h(), (ctypes.c_char_p * max(len(encoded), 1))(*encoded),
              len(encoded), 1 if readonly else 0, out)
        return [out[i] for i in range(len(encoded))]

    def _keys_under(self, prefix):
        arr = ctypes.POINTER(gpb_slot_info)()
        count = ctypes.c_size_t()
        check(lib.gpb_list_registry, self._h(), ctypes.byref(arr), ctypes.byref(count))
        try:
            start = prefix.encode() + b"/"
            found = [(arr[i].created_ns, arr[i].name) for i in range(count.value)]
        finally:
            lib.gpb_free(arr)
        return [name[len(start):].decode() for _, name in sorted(found) if name.startswith(start)]

    def destroy(self, name):
        """Removes the name now; the memory goes with the last lease."""
        check(lib.gpb_destroy, self._h(), _name(name))

    def stat(self, name):
        info = gpb_slot_info()
        check(lib.gpb_stat, self._h(), _name(name), ctypes.byref(info))
        return SlotInfo._from(info)

    def lookup(self, name):
        """Like stat, read from the shared registry without asking the broker."""
        info = gpb_slot_info()
        check(lib.gpb_lookup, self._h(), _name(name), ctypes.byref(info))
        return SlotInfo._from(info)

    def list(self):
        arr = ctypes.POINTER(gpb_slot_info)()
        count = ctypes.c_size_t()
        check(lib.gpb_list, self._h(), ctypes.byref(arr), ctypes.byref(count))
        try:
            return [SlotInfo._from(arr[i]) for i in range(count.value)]
        finally:
            lib.gpb_free(arr)

    def publish(self, name, tensor, *, mode=0o600, backend=None):
        """Creates slot `name` like `tensor` (torch, CuPy or NumPy, on its
        device), copies it in once, synchronises, and returns the View."""
        src = _Source(tensor)
        view = self.create(name, src.shape, src.dtype, src.device, mode=mode, backend=backend)
        src.copy_into(view)
        return view

    def publish_state_dict(self, prefix, tensors, *, mode=0o600, backend=None, alignment=256):
        """Publishes a mapping of tensors, all on one device, as one arena:
        slot `prefix` holds the bytes, slot `prefix/<key>` each tensor. One
        allocation, so a consumer maps it once however many tensors it takes.
        Returns {key: View}."""
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
        self.create(prefix, (max(total, 1),), "uint8", device, mode=mode, backend=backend, attach=False)
        views = {}
        for key, s in sources.items():
            views[key] = self.create(f"{prefix}/{key}", s.shape, s.dtype, base=prefix,
                                     offset=offsets[key], mode=mode)
            s.copy_into(views[key], sync=False)
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


def connect(socket=None, name=None):
    """Connects to the broker at `socket` (default: $GPUBROKER_SOCKET or
    /run/gpubroker/gpubroker.sock). Raises Unavailable if none answers."""
    return Client(socket, name)

"""Client: a connection to gpubrokerd, and the calls made through it."""
import ctypes
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Union, overload

from . import _live, _publish
from ._args import (INT64_MAX as _INT64_MAX, UINT64_MAX as _UINT64_MAX, attach_mode, integer as _int,
                    mode as _mode, name as _name)
from ._capi import (CREATE_EXIST_OK, MAX_BUFFERS, InvalidArgument, NotFound, Unavailable, check,
                    gpb_create_args, gpb_dtype, gpb_slot_info, lib)
from ._devices import device_args
from ._dtypes import DTYPES, dtype_name
from ._slot import SlotInfo, new_info
from ._view import View


def default_socket_path() -> str:
    """Where connect() goes with no socket: $GPUBROKER_SOCKET; else, for a user
    other than root, $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock if that user's
    broker made it; else /run/gpubroker/gpubroker.sock."""
    return lib.gpb_default_socket_path().decode()


class Client:
    """A connection to gpubrokerd. Thread-safe; a context manager."""

    def __init__(self, socket: Optional[str] = None, name: Optional[str] = None, *,
                 reconnect_timeout: Optional[float] = None, reply_timeout: Optional[float] = None) -> None:
        handle = ctypes.c_void_p()
        check(lib.gpb_connect_with, socket.encode() if socket else None, name.encode() if name else None,
              _millis(reply_timeout, "reply_timeout"), _millis(reconnect_timeout, "reconnect_timeout"),
              ctypes.byref(handle))
        self._handle = handle

    def close(self) -> None:
        """Closes this handle; views made from it stay valid."""
        if self._handle:
            lib.gpb_client_release(self._handle)
            self._handle = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
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

    @overload
    def create(self, name: str, shape: Iterable[int] = (), dtype: str = "float32", device: str = "cpu", *,
               strides: Optional[Iterable[int]] = None, nbytes: int = 0, base: Optional[str] = None,
               offset: int = 0, backend: Optional[str] = None, mode: Union[int, str] = 0o600,
               attach: Literal[True] = True, buffers: int = 0, exist_ok: bool = False) -> View: ...

    @overload
    def create(self, name: str, shape: Iterable[int] = (), dtype: str = "float32", device: str = "cpu", *,
               strides: Optional[Iterable[int]] = None, nbytes: int = 0, base: Optional[str] = None,
               offset: int = 0, backend: Optional[str] = None, mode: Union[int, str] = 0o600,
               attach: Literal[False], buffers: int = 0, exist_ok: bool = False) -> SlotInfo: ...

    def create(self, name: str, shape: Iterable[int] = (), dtype: str = "float32", device: str = "cpu", *,
               strides: Optional[Iterable[int]] = None, nbytes: int = 0, base: Optional[str] = None,
               offset: int = 0, backend: Optional[str] = None, mode: Union[int, str] = 0o600,
               attach: bool = True, buffers: int = 0, exist_ok: bool = False) -> Union[View, SlotInfo]:
        """Creates slot `name` and (by default) attaches it.

        device: "cpu", "cuda", "cuda:N" (this process's numbering) or "GPU-<uuid>".
        base/offset: make the slot a view into slot `base`'s allocation.
        backend: "host", "cuda_vmm" or "cuda_ipc"; default by device.
        mode: permission bits like chmod's: 0o640, or "0640".
        buffers: 0 for a plain slot; 1..8 for a live slot of that many
        buffers, at version 0 until a Publisher (or a writer) commits one.
        Views (base=...) take their allocation's.
        exist_ok: if `name` exists already, is yours, and has this dtype and
        shape (and strides, buffers, backend where given), return it instead
        of raising AlreadyExists; a slot that differs, or is another
        user's, still raises AlreadyExists saying how. Slots outlive the
        process that made them, so a script run twice needs this.
        Returns a View; a SlotInfo with attach=False."""
        shape = tuple(_int(s, 0, _INT64_MAX, "shape entry") for s in shape)
        if len(shape) > 8:
            raise ValueError(f"{len(shape)} dimensions; the limit is 8")
        if strides is not None:
            strides = tuple(_int(s, 0, _INT64_MAX, "stride") for s in strides)
            if len(strides) != len(shape):
                raise ValueError("strides must have one entry per dimension")
        nbytes = _int(nbytes, 0, _UINT64_MAX, "nbytes")
        offset = _int(offset, 0, _UINT64_MAX, "offset")
        mode = _mode(mode)
        buffers = _int(buffers, 0, MAX_BUFFERS, "buffers")
        name_b = _name(name)
        base_b = _name(base, "base") if base else None
        name_d = dtype_name(dtype)
        code, bits = DTYPES[name_d]
        n = len(shape)
        shape_arr = (ctypes.c_int64 * max(n, 1))(*shape)
        strides_arr = (ctypes.c_int64 * max(n, 1))(*strides) if strides is not None else None
        backend_code, ordinal, uuid = (0, -1, None) if base else device_args(device, backend)
        uuid_arr = (ctypes.c_uint8 * 16)(*uuid) if uuid else None
        args = gpb_create_args(
            struct_size=ctypes.sizeof(gpb_create_args), name=name_b, dtype=gpb_dtype(code, bits, 1), ndim=n,
            shape=shape_arr, strides=strides_arr, bytes=nbytes,
            base=base_b, byte_offset=offset, backend=backend_code,
            device=ordinal, device_uuid=uuid_arr, mode=mode, buffers=buffers,
            flags=CREATE_EXIST_OK if exist_ok else 0)
        info = new_info()
        view = ctypes.c_void_p()
        check(lib.gpb_create, self._h(), ctypes.byref(args), ctypes.byref(view) if attach else None,
              ctypes.byref(info))
        return View(view.value) if attach else SlotInfo._from(info)

    def attach(self, name: str, readonly: Optional[bool] = False) -> View:
        """A View of slot `name`. Free of round trips if this process maps its allocation.

        readonly=False: writable, or PermissionDenied if this user may only
        read it (never a view quietly made read-only, whose first write would
        crash the process); True: read-only; None: writable where this user
        may write, else read-only (View.writable tells)."""
        view = ctypes.c_void_p()
        check(lib.gpb_attach, self._h(), _name(name), attach_mode(readonly), ctypes.byref(view))
        return View(view.value)

    def attach_many(self, names: Iterable[str], readonly: Optional[bool] = False) -> List[View]:
        """Views of every slot in `names`, all or none: on an error no view is
        kept and the error names the slot. One call into the library."""
        return [View(h) for h in self._attach_handles(names, readonly)]

    def attach_state_dict(self, prefix: str, keys: Optional[Iterable[str]] = None, *, readonly: Optional[bool] = False,
                          to: str = "view") -> Dict[str, Any]:
        """The tensors `publish_state_dict(prefix, ...)` published, as {key: ...}.

        keys: which to take (default: every slot named `prefix/...`, in the
        order they were published). to: "view" for Views, "torch" for
        torch.Tensors, made without a View each (the fast path for many
        tensors). The arena is mapped once; all tensors share its lease,
        which lasts while any of them does."""
        if keys is None:
            keys = self._keys_under(prefix)
            if not keys:
                raise NotFound(f"no slots under '{prefix}/' (publish_state_dict({prefix!r}, ...) makes them)")
        keys = list(keys)
        names = [f"{prefix}/{k}" for k in keys]
        if to == "view":
            return {k: View(h) for k, h in zip(keys, self._attach_handles(names, readonly))}
        if to == "numpy":
            import numpy
            views = {k: View(h) for k, h in zip(keys, self._attach_handles(names, readonly))}
            on_gpu = [k for k, v in views.items() if v.is_cuda]
            if on_gpu:
                for v in views.values():
                    v.release()
                raise InvalidArgument(f"'{prefix}/{on_gpu[0]}' is in GPU memory: NumPy reads host memory only; "
                                      "use to='torch' (or to='view' and CuPy)")
            return {k: numpy.asarray(v) for k, v in views.items()}
        if to != "torch":
            raise InvalidArgument(f"to={to!r}: expected 'view', 'torch' or 'numpy'")
        from . import _torch
        return dict(zip(keys, _torch.attach(self._h(), names, readonly)))

    def _attach_handles(self, names, readonly):
        encoded = [_name(n) for n in names]
        out = (ctypes.c_void_p * max(len(encoded), 1))()
        check(lib.gpb_attach_many, self._h(), (ctypes.c_char_p * max(len(encoded), 1))(*encoded),
              len(encoded), attach_mode(readonly), out)
        return [out[i] for i in range(len(encoded))]

    def _keys_under(self, prefix, allocation_id=None):
        """The keys of the slots `prefix/<key>` in publishing order, only those
        of allocation `allocation_id` if it is given."""
        arr = ctypes.POINTER(gpb_slot_info)()
        count = ctypes.c_size_t()
        check(lib.gpb_list_registry, self._h(), ctypes.byref(arr), ctypes.byref(count))
        try:
            start = prefix.encode() + b"/"
            found = [(arr[i].created_ns, arr[i].name) for i in range(count.value)
                     if allocation_id is None or arr[i].allocation_id == allocation_id]
        finally:
            lib.gpb_free(arr)
        return [name[len(start):].decode() for _, name in sorted(found) if name.startswith(start)]

    def destroy(self, name: str) -> None:
        """Removes the name now; the memory goes with the last lease."""
        check(lib.gpb_destroy, self._h(), _name(name))

    def stat(self, name: str) -> SlotInfo:
        info = new_info()
        check(lib.gpb_stat, self._h(), _name(name), ctypes.byref(info))
        return SlotInfo._from(info)

    def lookup(self, name: str) -> SlotInfo:
        """Like stat, read from the shared registry without asking the broker."""
        info = new_info()
        check(lib.gpb_lookup, self._h(), _name(name), ctypes.byref(info))
        return SlotInfo._from(info)

    def list(self) -> List[SlotInfo]:
        arr = ctypes.POINTER(gpb_slot_info)()
        count = ctypes.c_size_t()
        check(lib.gpb_list, self._h(), ctypes.byref(arr), ctypes.byref(count))
        try:
            return [SlotInfo._from(arr[i]) for i in range(count.value)]
        finally:
            lib.gpb_free(arr)

    def publish(self, name: str, tensor: Any, *, mode: int = 0o600, backend: Optional[str] = None) -> View:
        """Creates slot `name` like `tensor` (torch, CuPy or NumPy, on its
        device), copies it in once, synchronises, and returns the View."""
        return _publish.publish(self, name, tensor, mode=mode, backend=backend)

    def publish_state_dict(self, prefix: str, tensors: Mapping[str, Any], *, mode: int = 0o600,
                           backend: Optional[str] = None, alignment: int = 256,
                           buffers: int = 0) -> Dict[str, View]:
        """Publishes a mapping of tensors, all on one device, as one arena:
        slot `prefix` holds the bytes, slot `prefix/<key>` each tensor. One
        allocation, so a consumer maps it once however many tensors it takes.
        Returns {key: View}.

        buffers: 0 copies the tensors in (version 1, final). 1..8 makes a live
        arena of that many buffers at version 0 and copies nothing: write its
        versions with a Writer on `prefix`, or use publisher() instead."""
        return _publish.publish_state_dict(self, prefix, tensors, mode=mode, backend=backend, alignment=alignment,
                                           buffers=buffers)

    def publisher(self, prefix: str, state_dict: Mapping[str, Any], *, buffers: int = 2, mode: int = 0o600,
                  backend: Optional[str] = None, alignment: int = 256,
                  replace: bool = False) -> "_live.Publisher":
        """A Publisher of new versions of `state_dict` (torch or NumPy, one
        device) under `prefix`: the live arena and its views as
        publish_state_dict lays them out, with `state_dict`'s values
        committed as version 1. replace: an existing tree under `prefix` is
        replaced (its subscribers follow) rather than refused with
        AlreadyExists."""
        return _live.Publisher(self, prefix, state_dict, buffers=buffers, mode=mode, backend=backend,
                               alignment=alignment, replace=replace)

    def subscriber(self, prefix: str, *, to: str = "torch", timeout: Optional[float] = 0,
                   owner: Union[int, str, None] = None) -> "_live.Subscriber":
        """A Subscriber to the versions published under `prefix`. to: "torch"
        for torch.Tensors, "numpy" for NumPy arrays (host slots only).
        timeout: how long to wait for `prefix` to appear (None: no limit;
        0: NotFound at once if it is not there). owner: the uid or user
        name whose trees to follow (default: the owner of the first one
        opened); a tree of anyone else raises PermissionDenied."""
        return _live.Subscriber(self, prefix, to=to, timeout=timeout, owner=owner)


def connect(socket: Optional[str] = None, name: Optional[str] = None, *, reconnect_timeout: Optional[float] = None,
            reply_timeout: Optional[float] = None) -> Client:
    """Connects to the broker at `socket` (default: default_socket_path()).
    Raises Unavailable if none answers.

    reconnect_timeout: seconds a call keeps dialling after the broker went
    away (a restart: default 10; 0 raises Unavailable at once). The library
    says on stderr, once, when it starts such a wait. reply_timeout: seconds
    a silent broker is given before Unavailable (default 30)."""
    return Client(socket, name, reconnect_timeout=reconnect_timeout, reply_timeout=reply_timeout)


def _millis(seconds, what):
    """Seconds (None: the library's default) as the C ABI's milliseconds (-1: default)."""
    if seconds is None:
        return -1
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be seconds (an int or float), not {type(seconds).__name__}")
    if not 0 <= seconds <= 86400:
        raise ValueError(f"{what} {seconds} is outside 0..86400 seconds")
    return int(round(seconds * 1000))


"""ctypes bindings to libgpubroker's C ABI (include/gpubroker/gpubroker.h).

One build of the shared library serves every Python version; nothing here is
compiled. The library is found, in order, at $GPUBROKER_LIBRARY, beside this
package (a pip install from a build tree copies it there), or on the system's
library path (libgpubroker.so.0).
"""
import ctypes
import os
import pathlib

MAX_DIMS = 8
MAX_BUFFERS = 8  # a live slot's buffers, at most
ABI_VERSION = 4  # GPB_ABI_VERSION of the header these bindings restate


class Error(Exception):
    """An error from the broker or the client library: `.code` (an int),
    `.code_name` ("not_found", ...) and the message."""

    code = 0
    code_name = "unknown"

    def __init__(self, message, code=None, code_name=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if code_name is not None:
            self.code_name = code_name

    def __str__(self):
        return f"{self.code_name}: {self.args[0]}"


class InvalidArgument(Error, ValueError):
    code, code_name = 1, "invalid_argument"


class NotFound(Error, LookupError):
    code, code_name = 2, "not_found"


class AlreadyExists(Error):
    code, code_name = 3, "already_exists"


class PermissionDenied(Error, PermissionError):
    code, code_name = 4, "permission_denied"


class ResourceExhausted(Error, MemoryError):
    code, code_name = 5, "resource_exhausted"


class Unavailable(Error, ConnectionError):
    code, code_name = 6, "unavailable"


class ProtocolError(Error):
    code, code_name = 7, "protocol"


class Unsupported(Error):
    code, code_name = 10, "unsupported"


class Timeout(Error, TimeoutError):
    """A wait ran out of time: no new version came, or no buffer came free."""
    code, code_name = 12, "timeout"


class Busy(Error):
    """Every buffer of a live slot is pinned by readers or holds the newest
    version, or another client is writing it."""
    code, code_name = 13, "busy"


_ERRORS = {cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, PermissionDenied,
                                     ResourceExhausted, Unavailable, ProtocolError, Unsupported, Timeout, Busy)}


class gpb_error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int32), ("message", ctypes.c_char * 256)]


class gpb_dtype(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class gpb_slot_info(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("name", ctypes.c_char * 128),
        ("generation", ctypes.c_uint64),
        ("allocation_id", ctypes.c_uint64),
        ("allocation_bytes", ctypes.c_uint64),
        ("byte_offset", ctypes.c_uint64),
        ("nbytes", ctypes.c_uint64),
        ("version", ctypes.c_uint64),
        ("created_ns", ctypes.c_uint64),
        ("updated_ns", ctypes.c_uint64),
        ("backend", ctypes.c_int32),
        ("device_type", ctypes.c_int32),
        ("device_ordinal", ctypes.c_int32),
        ("device_uuid", ctypes.c_uint8 * 16),
        ("dtype", gpb_dtype),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("strides", ctypes.c_int64 * MAX_DIMS),
        ("owner_uid", ctypes.c_uint32),
        ("owner_gid", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("lease_count", ctypes.c_uint32),
        # ABI 3: versions
        ("buffers", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("buffer_bytes", ctypes.c_uint64),
    ]


class gpb_create_args(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("name", ctypes.c_char_p),
        ("dtype", gpb_dtype),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("bytes", ctypes.c_uint64),
        ("base", ctypes.c_char_p),
        ("byte_offset", ctypes.c_uint64),
        ("backend", ctypes.c_int32),
        ("device", ctypes.c_int32),
        ("device_uuid", ctypes.POINTER(ctypes.c_uint8)),
        ("mode", ctypes.c_uint32),
        # ABI 3: 0 a plain slot, 1..8 a live slot of that many buffers
        ("buffers", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),  # CREATE_EXIST_OK
    ]


CREATE_EXIST_OK = 1


class gpb_copy(ctypes.Structure):
    _fields_ = [
        ("src", ctypes.c_void_p),
        ("dst", ctypes.c_void_p),
        ("bytes", ctypes.c_uint64),
    ]


class gpb_acquired(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint64),
        ("committed_ns", ctypes.c_uint64),
        ("buffer", ctypes.c_uint32),
        ("writing", ctypes.c_int32),
    ]


def _find_library():
    env = os.environ.get("GPUBROKER_LIBRARY")
    if env:
        return env
    here = pathlib.Path(__file__).resolve().parent
    bundled = sorted(here.glob("libgpubroker.so*"))
    if bundled:
        return str(bundled[0])
    return "libgpubroker.so.0"


def _load():
    path = _find_library()
    try:
        # CDLL, not PyDLL: every call releases the GIL, so a thread blocked in
        # gpb_reader_wait or gpb_writer_begin leaves the others running.
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"gpubroker: cannot load the client library ({path}): {e}. Build it "
            "(cmake --build build) and set GPUBROKER_LIBRARY=build/client/libgpubroker.so, "
            "or install it (cmake --install build).") from e
    err = ctypes.POINTER(gpb_error)
    p = ctypes.c_void_p
    sigs = {
        "gpb_abi_version": (ctypes.c_uint32, []),
        "gpb_abi_layout": (ctypes.c_char_p, []),
        "gpb_code_name": (ctypes.c_char_p, [ctypes.c_int32]),
        "gpb_default_socket_path": (ctypes.c_char_p, []),
        "gpb_parse_dtype": (ctypes.c_int32, [ctypes.c_char_p, ctypes.POINTER(gpb_dtype), err]),
        "gpb_connect": (ctypes.c_int32, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(p), err]),
        "gpb_connect_with": (ctypes.c_int32, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32,
                                              ctypes.POINTER(p), err]),
        "gpb_client_release": (None, [p]),
        "gpb_create": (ctypes.c_int32, [p, ctypes.POINTER(gpb_create_args), ctypes.POINTER(p),
                                        ctypes.POINTER(gpb_slot_info), err]),
        "gpb_attach": (ctypes.c_int32, [p, ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(p), err]),
        "gpb_destroy": (ctypes.c_int32, [p, ctypes.c_char_p, err]),
        "gpb_stat": (ctypes.c_int32, [p, ctypes.c_char_p, ctypes.POINTER(gpb_slot_info), err]),
        "gpb_lookup": (ctypes.c_int32, [p, ctypes.c_char_p, ctypes.POINTER(gpb_slot_info), err]),
        "gpb_list": (ctypes.c_int32, [p, ctypes.POINTER(ctypes.POINTER(gpb_slot_info)),
                                      ctypes.POINTER(ctypes.c_size_t), err]),
        "gpb_list_registry": (ctypes.c_int32, [p, ctypes.POINTER(ctypes.POINTER(gpb_slot_info)),
                                               ctypes.POINTER(ctypes.c_size_t), err]),
        "gpb_free": (None, [p]),
        "gpb_device_uuid": (ctypes.c_int32, [ctypes.c_int32, ctypes.POINTER(ctypes.c_uint8), err]),
        "gpb_view_data": (p, [p]),
        "gpb_view_writable": (ctypes.c_int32, [p]),
        "gpb_view_info": (ctypes.c_int32, [p, ctypes.POINTER(gpb_slot_info), err]),
        "gpb_view_retain": (p, [p]),
        "gpb_view_release": (None, [p]),
        "gpb_attach_many": (ctypes.c_int32, [p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, ctypes.c_int32,
                                             ctypes.POINTER(p), err]),
        "gpb_view_dlpack": (ctypes.c_int32, [p, ctypes.c_int32, ctypes.POINTER(p), err]),
        "gpb_dlpack_delete": (None, [p, ctypes.c_int32]),
        "gpb_attach_many_dlpack": (ctypes.c_int32, [p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t,
                                                    ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(p), err]),
        # Versions. Streams are CUstream values (None: the legacy default stream).
        "gpb_view_data_in": (p, [p, ctypes.c_uint32]),
        "gpb_view_dlpack_in": (ctypes.c_int32, [p, ctypes.c_uint32, ctypes.c_int32, ctypes.POINTER(p), err]),
        "gpb_writer_open": (ctypes.c_int32, [p, ctypes.c_char_p, ctypes.POINTER(p), err]),
        "gpb_writer_close": (None, [p]),
        "gpb_writer_begin": (ctypes.c_int32, [p, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint32), err]),
        "gpb_writer_commit": (ctypes.c_int32, [p, p, ctypes.POINTER(ctypes.c_uint64), err]),
        "gpb_writer_abort": (ctypes.c_int32, [p, err]),
        "gpb_reader_open": (ctypes.c_int32, [p, ctypes.c_char_p, ctypes.POINTER(p), err]),
        "gpb_reader_close": (None, [p]),
        "gpb_reader_latest": (ctypes.c_int32, [p, ctypes.POINTER(ctypes.c_uint64), err]),
        "gpb_reader_wait": (ctypes.c_int32, [p, ctypes.c_uint64, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64),
                                             err]),
        "gpb_reader_acquire": (ctypes.c_int32, [p, ctypes.c_void_p, ctypes.POINTER(gpb_acquired), err]),
        "gpb_reader_release": (ctypes.c_int32, [p, p, err]),
        "gpb_reader_unchanged": (ctypes.c_int32, [p, ctypes.POINTER(ctypes.c_int32), err]),
        "gpb_copy_plan_create": (ctypes.c_int32, [ctypes.c_int32, ctypes.POINTER(gpb_copy), ctypes.c_size_t,
                                                  ctypes.POINTER(p), err]),
        "gpb_copy_plan_run": (ctypes.c_int32, [p, p, err]),
        "gpb_copy_plan_destroy": (None, [p]),
    }
    try:
        version = lib.gpb_abi_version
    except AttributeError:
        version = None
    if version is None or version() != ABI_VERSION:
        found = "none" if version is None else version()
        raise ImportError(f"gpubroker: {path} speaks C ABI version {found}, this package version {ABI_VERSION}: "
                          "install the library and the package from the same build")
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


def check(call, *args):
    """Calls a gpb_* function that takes a trailing gpb_error*; raises on failure."""
    e = gpb_error()
    rc = call(*args, ctypes.byref(e))
    if rc != 0:
        cls = _ERRORS.get(rc, Error)
        name = lib.gpb_code_name(rc).decode()
        raise cls(e.message.decode(errors="replace"), code=rc, code_name=name)

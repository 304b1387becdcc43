"""DLPack capsules built with ctypes.

A capsule owns a reference to the View it was made from; the consumer calls
the deleter when its array goes, which drops that reference (and with the
last one, the lease). A capsule that is never consumed runs the deleter from
its own destructor.
"""
import ctypes

kDLCPU, kDLCUDA = 1, 2
FLAG_READ_ONLY = 1


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _Deleter),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


# Everything a live capsule needs, by the address of its managed tensor.
_live = {}


@_Deleter
def _delete(address):
    _live.pop(address, None)


_NAME = b"dltensor"
_NAME_VERSIONED = b"dltensor_versioned"
_api = ctypes.pythonapi
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _make_destructor(name):
    @_Destructor
    def destroy(capsule):
        # Still named as made: nobody consumed it, so the deleter is ours to call.
        if _api.PyCapsule_IsValid(capsule, name):
            _live.pop(_api.PyCapsule_GetPointer(capsule, name), None)
    return destroy


_destroy_legacy = _make_destructor(_NAME)
_destroy_versioned = _make_destructor(_NAME_VERSIONED)


def make_capsule(owner, data, device_type, device_id, dtype, shape, strides, versioned, read_only):
    """A DLPack capsule over `data` that keeps `owner` alive until deleted."""
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    strides_arr = (ctypes.c_int64 * max(ndim, 1))(*strides)
    managed = DLManagedTensorVersioned() if versioned else DLManagedTensor()
    t = managed.dl_tensor
    t.data = data
    t.device = DLDevice(device_type, device_id)
    t.ndim = ndim
    t.dtype = DLDataType(*dtype)
    t.shape = shape_arr
    t.strides = strides_arr
    t.byte_offset = 0
    managed.deleter = _delete
    if versioned:
        managed.version = DLPackVersion(1, 0)
        managed.flags = FLAG_READ_ONLY if read_only else 0
    address = ctypes.addressof(managed)
    _live[address] = (owner, managed, shape_arr, strides_arr)
    if versioned:
        return _api.PyCapsule_New(address, _NAME_VERSIONED, ctypes.cast(_destroy_versioned, ctypes.c_void_p))
    return _api.PyCapsule_New(address, _NAME, ctypes.cast(_destroy_legacy, ctypes.c_void_p))


def live_capsules():
    """How many capsules still hold a view (for tests and diagnostics)."""
    return len(_live)

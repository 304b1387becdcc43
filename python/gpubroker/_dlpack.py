"""DLPack capsules over tensors the client library exports.

libgpubroker builds the DLManagedTensor (gpb_view_dlpack): it holds its own
reference to the view, and its deleter, called by the consumer when its array
goes, drops that reference (and with the last one, the lease). A capsule that
is never consumed calls the deleter from its own destructor.
"""
import ctypes

from ._capi import check, lib

kDLCPU, kDLCUDA = 1, 2

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


def _make_destructor(name, versioned):
    @_Destructor
    def destroy(capsule):
        # Still named as made: nobody consumed it, so the deleter is ours to call.
        if _api.PyCapsule_IsValid(capsule, name):
            lib.gpb_dlpack_delete(_api.PyCapsule_GetPointer(capsule, name), versioned)
    return ctypes.cast(destroy, ctypes.c_void_p), destroy


(_destroy_legacy, _keep_legacy) = _make_destructor(_NAME, 0)
(_destroy_versioned, _keep_versioned) = _make_destructor(_NAME_VERSIONED, 1)


def capsule(view_handle, versioned=False):
    """A DLPack capsule over the gpb_view `view_handle`, with its own reference."""
    managed = ctypes.c_void_p()
    check(lib.gpb_view_dlpack, view_handle, 1 if versioned else 0, ctypes.byref(managed))
    if versioned:
        return _api.PyCapsule_New(managed, _NAME_VERSIONED, _destroy_versioned)
    return _api.PyCapsule_New(managed, _NAME, _destroy_legacy)

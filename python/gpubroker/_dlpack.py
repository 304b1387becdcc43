"""DLPack capsules over tensors the client library exports.

libgpubroker builds the DLManagedTensor (gpb_view_dlpack): it holds its own
reference to the view, and its deleter, called by the consumer when its array
goes, drops that reference (and with the last one, the lease). A capsule that
is never consumed calls the deleter from its own destructor.
"""
import ctypes

from ._capi import check, lib

kDLCPU, kDLCUDA = 1, 2

NAME = b"dltensor"
NAME_VERSIONED = b"dltensor_versioned"
api = ctypes.pythonapi
api.PyCapsule_New.restype = ctypes.py_object
api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
api.PyCapsule_IsValid.restype = ctypes.c_int
api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
api.PyCapsule_GetPointer.restype = ctypes.c_void_p
api.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_IsValid", api))


def unconsumed(capsule):
    """Whether no consumer has taken this legacy capsule (it keeps its name)."""
    return bool(_is_valid(capsule, NAME))


def _make_destructor(name, versioned):
    @_Destructor
    def destroy(capsule):
        # Still named as made: nobody consumed it, so the deleter is ours to call.
        if api.PyCapsule_IsValid(capsule, name):
            lib.gpb_dlpack_delete(api.PyCapsule_GetPointer(capsule, name), versioned)
    return ctypes.cast(destroy, ctypes.c_void_p), destroy


(_destroy_legacy, _keep_legacy) = _make_destructor(NAME, 0)
(_destroy_versioned, _keep_versioned) = _make_destructor(NAME_VERSIONED, 1)


def capsule(view_handle, versioned=False):
    """A DLPack capsule over the gpb_view `view_handle`, with its own reference."""
    managed = ctypes.c_void_p()
    check(lib.gpb_view_dlpack, view_handle, 1 if versioned else 0, ctypes.byref(managed))
    if versioned:
        return api.PyCapsule_New(managed, NAME_VERSIONED, _destroy_versioned)
    return api.PyCapsule_New(managed, NAME, _destroy_legacy)


def capsule_in(view_handle, buffer, versioned=False):
    """Like capsule(), over buffer `buffer` of a live slot's allocation."""
    managed = ctypes.c_void_p()
    check(lib.gpb_view_dlpack_in, view_handle, buffer, 1 if versioned else 0, ctypes.byref(managed))
    if versioned:
        return api.PyCapsule_New(managed, NAME_VERSIONED, _destroy_versioned)
    return api.PyCapsule_New(managed, NAME, _destroy_legacy)

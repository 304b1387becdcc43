"""torch.Tensors for many views at once (attach_state_dict(..., to="torch")).

One library call attaches every slot and exports it as a DLPack tensor
holding its view; each becomes a torch.Tensor through a capsule that torch consumes
at once. Per tensor that is one PyCapsule_New and one from_dlpack: of the
ways tried to make a torch.Tensor from Python (a View and __dlpack__ each,
as_strided windows onto one tensor over the arena), the cheapest.
"""
import ctypes

from ._args import attach_mode, name as _name
from ._capi import check, lib
from ._dlpack import NAME, api, unconsumed


def attach(client_handle, names, readonly):
    """torch.Tensors for the slots `names`, all or none; each holds its lease share."""
    from torch.utils.dlpack import from_dlpack
    n = len(names)
    managed = (ctypes.c_void_p * max(n, 1))()
    check(lib.gpb_attach_many_dlpack, client_handle, (ctypes.c_char_p * max(n, 1))(*[_name(x) for x in names]),
          n, attach_mode(readonly), 0, managed)
    out, new = [], api.PyCapsule_New
    i, capsule = 0, None
    try:
        # No capsule destructor: each capsule is consumed on the spot; after
        # an error, what nobody took is deleted below.
        for i in range(n):
            capsule = new(managed[i], NAME, None)
            out.append(from_dlpack(capsule))
    except BaseException:
        if capsule is not None and len(out) == i and unconsumed(capsule):
            lib.gpb_dlpack_delete(managed[i], 0)
        for j in range(i + 1, n):
            lib.gpb_dlpack_delete(managed[j], 0)
        raise
    return out

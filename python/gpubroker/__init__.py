"""gpubroker: named, zero-copy GPU and host buffers shared between processes.

    import gpubroker, torch
    with gpubroker.connect() as c:
        c.create("weights/layer0", shape=(4096, 4096), dtype="bfloat16", device="cuda:0")
        t = torch.from_dlpack(c.attach("weights/layer0"))   # zero copy, on every torch version

A View exposes __cuda_array_interface__ (CUDA slots), __array_interface__
(host slots) and __dlpack__ / __dlpack_device__ (both), so torch.as_tensor,
torch.from_dlpack, cupy.asarray and numpy.asarray wrap it without a copy. The
view's lease on the buffer lasts as long as the view or any array made from
it; errors are gpubroker.Error subclasses carrying the broker's code.

Weight sync between processes: Client.publisher(prefix, state_dict) commits
new versions with update(); Client.subscriber(prefix) waits for them and
reads the newest in place (latest()) or copies it (copy_into()).
"""
__version__ = "0.1.0"  # the project's version (CMakeLists.txt, pyproject.toml; a test keeps them equal)

from ._capi import (AlreadyExists, Busy, Error, InvalidArgument, NotFound, PermissionDenied, ProtocolError,
                    ResourceExhausted, Timeout, Unavailable, Unsupported)
from ._client import Client, connect, default_socket_path
from ._live import Publisher, Subscriber
from ._slot import SlotInfo
from ._view import View

# Errors and classes read as gpubroker.X in tracebacks and reprs, not as the
# private module that defines them.
for _cls in (Client, View, SlotInfo, Publisher, Subscriber, Error, InvalidArgument, NotFound, AlreadyExists,
             PermissionDenied, ResourceExhausted, Unavailable, ProtocolError, Unsupported, Timeout, Busy):
    _cls.__module__ = __name__
del _cls

__all__ = ["connect", "Client", "View", "SlotInfo", "Publisher", "Subscriber", "Error", "InvalidArgument",
           "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted", "Unavailable", "ProtocolError",
           "Unsupported", "Timeout", "Busy", "default_socket_path", "__version__"]

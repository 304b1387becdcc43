"""What a slot is, as Python sees it: SlotInfo, built from the C ABI's gpb_slot_info."""
import ctypes
import dataclasses

from ._capi import gpb_slot_info
from ._dtypes import from_dl

BACKENDS = {"host": 1, "cuda_vmm": 2, "cuda_ipc": 3}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}


def new_info():
    """An empty gpb_slot_info with its struct_size set, for the library to fill."""
    return gpb_slot_info(struct_size=ctypes.sizeof(gpb_slot_info))


def uuid_text(raw):
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
    buffers: int         # a live slot's buffers (1 for a plain slot)
    buffer_bytes: int    # each buffer's length; a view's data in buffer b is at b * buffer_bytes + byte_offset

    @staticmethod
    def _from(info):
        cuda = info.device_type == 2
        return SlotInfo(
            name=info.name.decode(), backend=BACKEND_NAMES.get(info.backend, str(info.backend)),
            device=(f"cuda:{info.device_ordinal}" if info.device_ordinal >= 0 else "cuda:?") if cuda else "cpu",
            device_uuid=uuid_text(info.device_uuid) if cuda else "",
            dtype=from_dl(info.dtype.code, info.dtype.bits, info.dtype.lanes),
            shape=tuple(info.shape[: info.ndim]), strides=tuple(info.strides[: info.ndim]),
            nbytes=info.nbytes, byte_offset=info.byte_offset, allocation_id=info.allocation_id,
            allocation_bytes=info.allocation_bytes, owner_uid=info.owner_uid, owner_gid=info.owner_gid,
            mode=info.mode, lease_count=info.lease_count, version=info.version, generation=info.generation,
            buffers=info.buffers, buffer_bytes=info.buffer_bytes)

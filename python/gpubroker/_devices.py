"""Device names as users write them ("cpu", "cuda:N", "GPU-<uuid>", a
torch.device) turned into the C ABI's backend, ordinal and UUID."""
from ._capi import InvalidArgument
from ._slot import BACKENDS


def device_args(device, backend):
    """("cpu" | "cuda" | "cuda:N" | "GPU-<uuid>" | torch.device, backend) -> (backend code, ordinal, uuid)."""
    text = str(device) if device is not None else "cpu"
    if text == "cpu":
        return BACKENDS[backend or "host"], -1, None
    if text.startswith("GPU-"):
        raw = bytes.fromhex(text[4:].replace("-", ""))
        if len(raw) != 16:
            raise InvalidArgument(f"'{text}' is not a GPU UUID")
        return BACKENDS[backend or "cuda_vmm"], -1, raw
    if text == "cuda" or text.startswith("cuda:"):
        ordinal = int(text[5:]) if text.startswith("cuda:") else 0
        return BACKENDS[backend or "cuda_vmm"], ordinal, None
    raise InvalidArgument(f"unknown device {device!r} (cpu, cuda, cuda:N or GPU-<uuid>)")

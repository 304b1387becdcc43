"""Arguments on their way into the C library, checked where ctypes would not:
ctypes cuts a bytes string at its first NUL and wraps integers that do not
fit, so a name or a number is refused here rather than silently changed."""
import operator

NAME_LIMIT = 127
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1


def name(value, what="name"):
    """A slot name as bytes; ValueError if it holds a NUL or is too long."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    raw = value.encode()
    if b"\0" in raw:
        raise ValueError(f"{what} {value!r} contains a NUL character")
    if len(raw) > NAME_LIMIT:
        raise ValueError(f"{what} is {len(raw)} bytes long; the limit is {NAME_LIMIT}")
    return raw


def integer(value, low, high, what):
    """`value` as an int in [low, high]; TypeError for a non-integer."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}") from None
    if not low <= v <= high:
        raise ValueError(f"{what} {v} is outside {low}..{high}")
    return v


def mode(value, what="mode"):
    """Permission bits as chmod takes them: an int (0o640) or an octal
    string ("0640", "640"), as gpubrokerctl --mode takes it."""
    if isinstance(value, str):
        text = value[2:] if value[:2] in ("0o", "0O") else value
        if not text or any(c not in "01234567" for c in text):
            raise ValueError(f"{what} {value!r} is not octal permission bits (e.g. 0o640 or \"0640\")")
        value = int(text, 8)
    return integer(value, 0, 0o777, what)


def attach_mode(readonly):
    """The C ABI's attach mode for readonly=False (write access or
    PermissionDenied), True (read-only) or None (whatever this user may)."""
    if readonly is None:
        return 2  # GPB_ATTACH_AS_ALLOWED
    if not isinstance(readonly, bool):
        raise TypeError(f"readonly must be True, False or None, not {readonly!r}")
    return 1 if readonly else 0

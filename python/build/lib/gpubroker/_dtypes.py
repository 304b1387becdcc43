"""Element types: names, DLPack codes and array-interface type strings."""

# name -> (DLPack code, bits); DLPack codes: 0 int, 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool
DTYPES = {
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64),
    "float16": (2, 16), "float32": (2, 32), "float64": (2, 64),
    "bfloat16": (4, 16), "complex64": (5, 64), "complex128": (5, 128), "bool": (6, 8),
}
_BY_CODE = {v: k for k, v in DTYPES.items()}
_KIND = {0: "i", 1: "u", 2: "f", 5: "c", 6: "b"}  # no array-interface kind for bfloat16


def dtype_name(dtype):
    """"float32", numpy.float32, numpy.dtype('float32') or torch.float32 -> "float32"."""
    if isinstance(dtype, str):
        name = dtype
    elif hasattr(dtype, "is_floating_point") or str(dtype).startswith("torch."):
        name = str(dtype).replace("torch.", "")
    else:
        try:
            import numpy
            name = numpy.dtype(dtype).name
        except (ImportError, TypeError) as e:
            raise ValueError(f"unsupported dtype {dtype!r}") from e
    aliases = {"half": "float16", "float": "float32", "double": "float64", "long": "int64",
               "int": "int32", "short": "int16", "bool_": "bool", "cfloat": "complex64",
               "cdouble": "complex128"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    return name


def from_dl(code, bits, lanes):
    name = _BY_CODE.get((code, bits))
    if name is None or lanes != 1:
        return f"dl({code},{bits},{lanes})"
    return name


def typestr(code, bits):
    """Array-interface type string, or None where there is none (bfloat16)."""
    kind = _KIND.get(code)
    if kind is None:
        return None
    size = bits // 8
    return ("|" if size == 1 else "<") + kind + str(size)

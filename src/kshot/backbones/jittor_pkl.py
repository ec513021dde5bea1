"""Read and write Jittor/JCLIP `.pkl` weight files without executing pickled code.

`jt.save(obj, path)` writes `pickle.dumps(obj, protocol=4)`, then the 20-byte SHA-1 digest of those bytes, then the
8-byte magic `b"HCAJSLHD"`; `jt.load` verifies the digest when the magic is present and unpickles files without it as
they are (Jittor `python/jittor/__init__.py`, `safepickle`/`safeunpickle`). Three payloads occur in the wild:

1. a dict of **torch tensors** (JCLIP's README conversion: `jt.save(torch_model.state_dict(), ...)`). A pickled
   tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, and its storage is
   `torch.storage._load_from_bytes(blob)` where `blob` is a legacy (non-zip) `torch.save` of the storage: pickled magic
   number, protocol 1001, system info, the storage as a persistent id `('storage', <torch.XStorage>, key, location,
   numel, view)`, the list of keys, then per key an int64 element count and the raw little-endian bytes;
2. a dict of **Jittor Vars**: Jittor sets `Var.__module__ = "jittor"` and `Var.__reduce__ = (Var, (numpy_array,))`;
3. a dict of plain **numpy arrays** (e.g. fp16, as ATPrompt-Jittor's converter writes with `pickle.dump`).

`read_jittor_pkl` unpickles with an allowlist of exactly these constructors, each mapped to a small numpy-only
re-implementation (torch is never imported); any other global (an sklearn model, `os.system`, ...) raises
`CheckpointError` naming it before anything is called. `save_jittor_pkl` writes plain numpy arrays plus the trailer,
with numpy's array constructor named `numpy.core.multiarray._reconstruct` so both numpy 1.x and 2.x readers load it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kshot.errors import CheckpointError

MAGIC = b"HCAJSLHD"
"""Jittor's trailer magic (the last 8 bytes of a `jt.save` file)."""
_DIGEST_LEN = 20  # SHA-1
_TRAILER_LEN = _DIGEST_LEN + len(MAGIC)
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_TORCH_LEGACY_PROTOCOL = 1001

# torch legacy storage class name -> numpy dtype of one element ("bf16" is decoded separately).
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, strings or structured data


class _Refused(Exception):
    """Raised inside the unpickler; turned into a CheckpointError with the file name outside."""


def _check_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.hasobject:
        raise _Refused(f"array dtype {dt!r} is not a plain numeric type")
    return dt


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """numpy.dtype as pickled (`dtype('f4', False, True)` + setstate), limited to numeric types."""
    if not isinstance(spec, str):
        raise _Refused(f"numpy dtype from {type(spec).__name__} is not allowed")
    try:
        return _check_dtype(np.dtype(spec))
    except TypeError as e:
        raise _Refused(f"bad numpy dtype {spec!r}: {e}") from None


def _safe_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array that the following BUILD fills."""
    if cls is not np.ndarray:
        raise _Refused(f"numpy _reconstruct of {cls!r} (only numpy.ndarray is allowed)")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's protocol-5 array constructor `_frombuffer(buffer, dtype, shape, order)`."""
    if not isinstance(dtype, np.dtype):
        raise _Refused("numpy _frombuffer without a numpy dtype")
    _check_dtype(dtype)
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode(str, 'latin1')`: how protocol-2 pickles spell `bytes` (numpy's raw data, dtype codes)."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _jittor_var(data: Any, *unused: Any) -> np.ndarray:
    """A pickled Jittor `Var` is `Var(numpy_array)`: keep the array."""
    if not isinstance(data, np.ndarray):
        raise _Refused(f"jittor Var built from {type(data).__name__}, expected a numpy array")
    return data


class _Storage:
    """A torch storage decoded to a flat numpy array."""

    def __init__(self, data: np.ndarray):
        self.data = data


class _StorageType:
    """Stand-in for a `torch.XStorage` class named in a persistent id."""

    def __init__(self, name: str):
        self.name = name


def _decode_elements(raw: bytes, kind: str) -> np.ndarray:
    if kind == "bf16":  # numpy has no bfloat16: widen the 16 bits to float32 exactly
        half = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        return (half << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(kind)).copy()


class _LegacyStorageUnpickler(pickle.Unpickler):
    """The inner pickles of a legacy `torch.save` storage blob: plain data plus one storage persistent id."""

    def __init__(self, f: io.BytesIO, storages: dict[str, tuple[str, int]]):
        super().__init__(f)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _Refused(f"torch persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise _Refused(f"torch storage record {pid!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise _Refused("torch storage views (pre-1.0 torch.save) are not supported")
        self._storages[str(key)] = (_STORAGE_DTYPES[storage_type.name], numel)
        return str(key)


def _load_torch_storage(blob: Any) -> _Storage:
    """`torch.storage._load_from_bytes(blob)`, re-implemented for the legacy format without torch."""
    if not isinstance(blob, (bytes, bytearray)):
        raise _Refused("torch storage from non-bytes")
    f = io.BytesIO(bytes(blob))
    storages: dict[str, tuple[str, int]] = {}

    def inner() -> Any:
        return _LegacyStorageUnpickler(f, storages).load()

    try:
        if inner() != _TORCH_LEGACY_MAGIC or inner() != _TORCH_LEGACY_PROTOCOL:
            raise _Refused("torch storage blob is not in torch's legacy serialization format")
        sys_info = inner()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise _Refused("big-endian torch storage")
        root = inner()
        keys = inner()
        arrays: dict[str, np.ndarray] = {}
        for key in keys:
            kind, _ = storages[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            nbytes = count * (2 if kind == "bf16" else np.dtype(kind).itemsize)
            raw = f.read(nbytes)
            if count < 0 or len(raw) != nbytes:
                raise _Refused("torch storage data is truncated")
            arrays[str(key)] = _decode_elements(raw, kind)
    except (EOFError, struct.error, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise _Refused(f"corrupt torch storage blob ({e})") from None
    if not isinstance(root, str) or root not in arrays:
        raise _Refused("torch storage blob holds no storage")
    return _Storage(arrays[root])


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *unused: Any) -> np.ndarray:
    """`torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)` -> a numpy array (copied)."""
    if not isinstance(storage, _Storage):
        raise _Refused("torch tensor without a torch storage")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
        raise _Refused(f"bad torch tensor geometry size={size} stride={stride} offset={offset}")
    flat = storage.data
    if any(s == 0 for s in size):
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= flat.size:
        raise _Refused(f"torch tensor reaches element {last} of a storage with {flat.size}")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view, copy=True)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *unused: Any) -> Any:
    """`torch._utils._rebuild_parameter(data, ...)`: the parameter's data."""
    return data


_NUMPY_CORE = ("numpy.core", "numpy._core")
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    **{(f"{core}.multiarray", "_reconstruct"): _safe_reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _safe_frombuffer for core in _NUMPY_CORE},
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_torch_storage,
    **{(mod, "Var"): _jittor_var for mod in ("jittor", "jittor_core", "jittor.jittor_core", "jittor_core.jittor_core")},
}
"""The only globals a weights pickle may name: (module, name) -> the numpy-only callable used instead."""


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {pid!r}")


def strip_trailer(blob: bytes, path: str | os.PathLike[str] = "<bytes>") -> bytes:
    """Verify and remove Jittor's `sha1 + HCAJSLHD` trailer; a blob without one is returned unchanged.

    Raises:
        CheckpointError: the trailer is present but the digest does not match (corrupt or truncated file).
    """
    if not blob.endswith(MAGIC):
        return blob
    if len(blob) < _TRAILER_LEN:
        raise CheckpointError(f"{path}: Jittor checkpoint is truncated (shorter than its trailer)")
    payload, digest = blob[:-_TRAILER_LEN], blob[-_TRAILER_LEN:-len(MAGIC)]
    if hashlib.sha1(payload).digest() != digest:
        raise CheckpointError(f"{path}: Jittor checkpoint SHA-1 does not match its trailer (corrupt or partial file)")
    return payload


def loads_weights(payload: bytes, path: str | os.PathLike[str] = "<bytes>", scalars: bool = False
                  ) -> dict[str, Any]:
    """Unpickle a weights payload (no trailer) with the allowlist; return {name: numeric numpy array} (with
    `scalars`, plain str/int/float/bool values are kept too, as in kshot's method and PackNet exports)."""
    try:
        obj = _WeightsUnpickler(io.BytesIO(payload)).load()
    except _Refused as e:
        raise CheckpointError(
            f"{path}: refused to unpickle {e} - only numpy arrays, torch tensors and Jittor Vars are allowed in a "
            "weights .pkl (this file may be a pickled Python object such as an sklearn/joblib model, not weights)"
        ) from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, struct.error, UnicodeDecodeError) as e:
        reason = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: not a readable pickle (truncated or corrupt?): {reason}") from None
    return _as_state(obj, path, scalars)


def _as_state(obj: Any, path: str | os.PathLike[str], scalars: bool = False) -> dict[str, Any]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weight arrays, found a pickled {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: weight names must be strings, found {key!r}")
        if scalars and isinstance(value, (str, int, float, bool)):
            out[key] = value
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        try:
            _check_dtype(value.dtype)
        except _Refused as e:
            raise CheckpointError(f"{path}: entry {key!r}: {e}") from None
        out[key] = value
    return out


def read_jittor_pkl(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a Jittor/JCLIP `.pkl` state dict as numpy arrays, safely (see the module docstring).

    Args:
        path: file written by `jt.save`, or a plain pickle of a dict of arrays/tensors.

    Returns:
        {parameter name: array} with each array's saved dtype (fp32 for JCLIP, fp16 for ATPrompt's converter).

    Raises:
        CheckpointError: missing file, bad/truncated trailer, a refused global, or a payload that is not a dict of
            arrays.
    """
    p = Path(path)
    return loads_weights(_payload(p), p)


def read_jittor_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Like `read_jittor_pkl`, but also keeps plain str/int/float/bool values (kshot's method/PackNet exports)."""
    p = Path(path)
    return loads_weights(_payload(p), p, scalars=True)


def _payload(p: Path) -> bytes:
    """The file's pickle bytes, its Jittor trailer verified and removed."""
    try:
        blob = p.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{p}: cannot read checkpoint: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read checkpoint: {e}") from None
    if not blob:
        raise CheckpointError(f"{p}: checkpoint file is empty")
    return strip_trailer(blob, p)


# ---------------------------------------------------------------------------------------------- writer (opcodes)
def _op_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _op_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)  # BININT


def _op_bytes(raw: bytes) -> bytes:
    if len(raw) < 2**32:
        return b"B" + struct.pack("<I", len(raw)) + raw  # BINBYTES
    return b"\x8e" + struct.pack("<Q", len(raw)) + raw  # BINBYTES8


def _op_array(a: np.ndarray) -> bytes:
    """Opcodes reproducing numpy's own pickling of an array: _reconstruct(ndarray, (0,), b'b') + BUILD(state)."""
    dt = a.dtype
    byteorder = "|" if dt.itemsize == 1 or dt.byteorder == "|" else "<"
    dtype_ops = (
        b"cnumpy\ndtype\n" + _op_str(dt.str[1:]) + b"\x89\x88\x87R"  # dtype('f4', False, True)
        + b"(" + _op_int(3) + _op_str(byteorder) + b"NNN" + _op_int(-1) + _op_int(-1) + _op_int(0) + b"tb"
    )
    shape = b"(" + b"".join(_op_int(n) for n in a.shape) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"(" + _op_int(0) + b"t"
        + _op_bytes(b"b") + b"\x87R"
        + b"(" + _op_int(1) + shape + dtype_ops + b"\x89" + _op_bytes(a.tobytes(order="C")) + b"tb"
    )


def _op_value(key: str, value: Any) -> bytes:
    """Opcodes of one dict value: a numeric numpy array, or (for artifact metadata) a str, int, float or bool."""
    if isinstance(value, np.ndarray):
        try:
            _check_dtype(value.dtype)
        except _Refused as e:
            raise CheckpointError(f"save_jittor_pkl: entry {key!r}: {e}") from None
        return _op_array(np.array(value, dtype=value.dtype.newbyteorder("<"), order="C"))
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE
    if isinstance(value, str):
        return _op_str(value)
    if isinstance(value, int) and -(2**31) <= value < 2**31:
        return _op_int(value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)  # BINFLOAT
    raise CheckpointError(f"save_jittor_pkl: entry {key!r} is a {type(value).__name__}; only numeric numpy arrays, "
                          "str, bool, 32-bit int and float values are written")


def save_jittor_pkl(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write {name: array} the way `jt.save` does: pickle (protocol 4) + SHA-1 + `HCAJSLHD`; `jt.load` reads it.

    Arrays keep their dtype (cast to float32 first for JCLIP, which converts with `.float()`). Method and PackNet
    exports also carry a few str/int/float/bool values (format tag, JSON config); weight files hold arrays only. The
    file is written to a temporary name and renamed, so a crash never leaves a partial checkpoint.

    Raises:
        CheckpointError: a key is not a string, or a value is neither a numeric numpy array nor a plain scalar.
    """
    p = Path(path)
    parts: list[bytes] = [b"\x80\x04}"]  # PROTO 4, EMPTY_DICT
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"save_jittor_pkl: key {key!r} is not a str")
        parts.append(_op_str(key) + _op_value(key, value) + b"s")
    parts.append(b".")
    payload = b"".join(parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name, suffix=".tmp", dir=p.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the .pkl is an ordinary file (umask respected)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.write(hashlib.sha1(payload).digest())
            f.write(MAGIC)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p

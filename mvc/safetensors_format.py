"""Strict safetensors header parsing and canonical single-tensor blobs (bytes only, no torch).

mvc reads every safetensors file through `parse_header` before anything else touches it: the
reference reader tolerates duplicate names (keeping the last) and trusts offsets, so we check
every structural rule ourselves and refuse the file with a precise message.
"""
from __future__ import annotations

import functools
import json
import math
import os
import struct
from typing import NamedTuple

from .errors import BadInput

# Bytes per element for every dtype mvc accepts (those of safetensors 0.8 that torch loads).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E5M2FNUZ": 1, "F8_E4M3FNUZ": 1,
    "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
SUB_BYTE_DTYPES = {"F4", "F6_E2M3", "F6_E3M2"}  # valid safetensors, packed below a byte: refused
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's own limit (safetensors 0.8: N > 1e8 is refused)
MAX_DIM = (1 << 64) - 1  # a dimension is a u64 for the reference reader
MAX_TORCH_ELEMENTS = (1 << 63) - 1  # sizes and strides are int64 in torch
MAX_JSON_DEPTH = 127  # the reference reader's JSON parser (serde_json) refuses deeper nesting
MAX_NDIM = 64  # the most dimensions mvc stores (read and written alike: a header may not claim thousands)
BLOB_TENSOR_NAME = "tensor"           # fixed name inside canonical tensor blobs


class TensorEntry(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data buffer
    end: int


class Header(NamedTuple):
    header_len: int                  # N, the JSON length after the 8-byte prefix
    tensors: tuple[TensorEntry, ...]  # in data-offset order
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


class _Object(dict):
    """A JSON object of a header, the last value of a repeated key kept (as the reference reader
    keeps it) and the repeated keys with the values they replaced in `replaced`: refused where the
    reference reader refuses them (the dtype, shape or data_offsets of a tensor entry) or would
    silently pick one (tensor names), taken anywhere else (its other checks see every value)."""

    def __init__(self, pairs):
        super().__init__()
        self.replaced: list[tuple[str, object]] = []
        for key, value in pairs:
            if key in self:
                self.replaced.append((key, self[key]))
            self[key] = value


def _refuse_repeated(obj, keys=None) -> None:
    """A repeated key of `obj` (of `keys` only, when given) is refused."""
    for key, _value in getattr(obj, "replaced", ()):
        if keys is None or key in keys:
            raise BadInput(f"duplicate key {key!r} in safetensors header")


def _no_constant(name: str):
    """NaN and Infinity are not JSON (Python's parser takes them; the reference reader does not)."""
    raise BadInput(f"{name} in safetensors header (not JSON)")


def _json_int(text: str) -> int | float:
    if text == "-0":  # the reference reader's parser reads -0 as a float: refused where an integer goes
        return -0.0
    value = int(text)
    try:  # (past 64 bits the reference reader's parser reads a number as a float: it must fit one)
        float(value)
    except OverflowError:
        raise BadInput("a number out of range in safetensors header (the reference reader refuses it)") from None
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: Python takes it as infinity, the reference reader refuses it
        raise BadInput("a number out of range in safetensors header (the reference reader refuses it)")
    return value


def _check_values(doc) -> None:
    """Refuse JSON nested deeper than the reference reader accepts (extra keys may nest) and text
    holding a lone surrogate (JSON escapes can spell one; it is not text, and the reference reader
    refuses it), in every key and value, those a repeated key replaced included."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _refuse_surrogates(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise BadInput(f"safetensors header nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                pairs = [*value.items(), *getattr(value, "replaced", ())]
                for key, _v in pairs:
                    _refuse_surrogates(key)
                stack.extend((v, depth + 1) for _k, v in pairs)
            else:
                stack.extend((v, depth + 1) for v in value)


def _refuse_surrogates(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("safetensors header holds an invalid Unicode escape (a lone surrogate)") from None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _refuse_pytorch_checkpoint(prefix: bytes | memoryview, where: str) -> None:
    """A torch.save file (a zip archive, or a bare pickle of the legacy format) named like a
    safetensors file: say what it is, not only that its first 8 bytes are no header length."""
    zipped, pickled = bytes(prefix[:4]) == b"PK\x03\x04", bytes(prefix[:1]) == b"\x80" and prefix[1] in range(2, 6)
    if zipped or pickled:
        raise BadInput(f"{where}: a PyTorch checkpoint (torch.save's zip or pickle format), not a safetensors file",
                       "name it .pt or .bin and commit it again: mvc reads it with torch.load(weights_only=True)")


def parse_header(prefix: bytes | memoryview, file_size: int, where: str = "file") -> Header:
    """Validate a safetensors header. `prefix` holds at least the first 8 + N bytes."""
    if file_size < 8 or len(prefix) < 8:
        raise BadInput(f"{where}: not a safetensors file (shorter than the 8-byte header length)")
    (n,) = struct.unpack("<Q", bytes(prefix[:8]))
    lfs = b"version https://git-lfs"
    if bytes(prefix[:len(lfs)]) == lfs[:len(prefix)]:
        raise BadInput(f"{where}: a Git LFS pointer file, not the safetensors data it stands for",
                       "fetch the real file first, e.g. git lfs pull")
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        _refuse_pytorch_checkpoint(prefix, where)
    if n > MAX_HEADER_BYTES:
        raise BadInput(f"{where}: absurd safetensors header size {n} bytes (limit {MAX_HEADER_BYTES})")
    if 8 + n > file_size:
        raise BadInput(f"{where}: safetensors header length {n} runs past the end of the file ({file_size} bytes)")
    if len(prefix) < 8 + n:
        raise ValueError("prefix too short for header")
    raw = bytes(prefix[8:8 + n])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{where}: safetensors header is not UTF-8 ({e})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_Object, parse_constant=_no_constant, parse_int=_json_int,
                         parse_float=_json_float)
        _check_values(doc)
    except BadInput as e:
        raise BadInput(f"{where}: {e.message}") from None
    except ValueError as e:
        raise BadInput(f"{where}: safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise BadInput(f"{where}: safetensors header nests too deeply") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: safetensors header is not a JSON object")
    try:
        _refuse_repeated(doc)  # (a tensor name twice; __metadata__ twice)
        for name, value in doc.items():  # a field twice in a tensor entry (another key twice, in it, in
            if name != "__metadata__":   # __metadata__ or in an extra key's object, is taken: the last one)
                _refuse_repeated(value, ("dtype", "shape", "data_offsets"))
    except BadInput as e:
        raise BadInput(f"{where}: {e.message}") from None
    metadata = doc.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(  # (a value a repeated key replaced is checked too)
            isinstance(k, str) and isinstance(v, str) for k, v in [*metadata.items(), *metadata.replaced]
        ):
            raise BadInput(f"{where}: __metadata__ must map strings to strings")
    entries = []
    for name, info in doc.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            # other keys are ignored, as the reference reader ignores them (the original header
            # bytes are kept, so a checkout still rebuilds the file exactly)
            raise BadInput(f"{where}: tensor {name!r} must have dtype, shape and data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str):
            raise BadInput(f"{where}: tensor {name!r} has unknown dtype {str(dtype)[:40]}")
        if dtype in SUB_BYTE_DTYPES:
            raise BadInput(f"{where}: tensor {name!r} has dtype {dtype}, packed below a byte, which mvc "
                           "does not store yet", "store it unpacked for now, e.g. as U8")
        if dtype not in DTYPE_SIZES:
            raise BadInput(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
            raise BadInput(f"{where}: tensor {name!r} has an invalid shape {str(shape)[:80]}")
        if len(shape) > MAX_NDIM:
            raise BadInput(f"{where}: tensor {name!r} has {len(shape)} dimensions (mvc stores at most {MAX_NDIM})")
        if _numel(max(d, 1) for d in shape) > MAX_TORCH_ELEMENTS:  # even with no element: its strides overflow
            raise BadInput(f"{where}: tensor {name!r} has a shape torch cannot hold {str(shape)[:80]}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(type(o) is int and o >= 0 for o in offs) or offs[0] > offs[1]):
            raise BadInput(f"{where}: tensor {name!r} has invalid data_offsets {offs!r}")
        size = _numel(shape) * DTYPE_SIZES[dtype]
        if offs[1] - offs[0] != size:
            raise BadInput(
                f"{where}: tensor {name!r} occupies {offs[1] - offs[0]} bytes but dtype {dtype} "
                f"x shape {shape} needs {size}")
        entries.append(TensorEntry(name, dtype, tuple(shape), offs[0], offs[1]))
    entries.sort(key=lambda e: (e.begin, e.end))
    buffer_len = file_size - 8 - n
    pos = 0
    for e in entries:
        if e.begin < pos:
            raise BadInput(f"{where}: tensor {e.name!r} overlaps the previous tensor's bytes")
        if e.begin > pos:
            raise BadInput(f"{where}: gap before tensor {e.name!r} (offsets are not contiguous)")
        pos = e.end
    if pos > buffer_len:
        raise BadInput(f"{where}: tensor data runs past the end of the file (truncated file?)")
    if pos != buffer_len:
        raise BadInput(f"{where}: {buffer_len - pos} trailing bytes after the last tensor")
    return Header(n, tuple(entries), metadata)


def build_header(entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    """Deterministic safetensors prefix (8-byte length + padded JSON) for tensors in the given order.

    Returns the prefix bytes and each tensor's (begin, end) offsets in the data buffer.
    """
    parts, offsets, pos = [], [], 0
    if any(name == "__metadata__" for name, _d, _s in entries):  # the key of the file's metadata
        raise BadInput("a tensor cannot be named __metadata__: safetensors keeps that key for the "
                       "file's metadata", "rename it")
    if metadata:
        parts.append('"__metadata__":' + json.dumps(dict(sorted(metadata.items())),
                                                      separators=(",", ":"), ensure_ascii=False))
    for name, dtype, shape in entries:
        if len(shape) > MAX_NDIM:  # no reader would take it back
            raise BadInput(f"tensor {name!r} has {len(shape)} dimensions, and mvc stores at most {MAX_NDIM}",
                           "reshape it to fewer dimensions before committing")
        size = _numel(shape) * DTYPE_SIZES[dtype]
        offsets.append((pos, pos + size))
        parts.append(json.dumps(name, ensure_ascii=False) + ":" + json.dumps(
            {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + size]},
            separators=(",", ":")))
        pos += size
    text = ("{" + ",".join(parts) + "}").encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


def blob_prefix(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The canonical header of a single-tensor blob; the blob is this prefix + the raw data."""
    return _blob_prefix(dtype, tuple(shape))


@functools.lru_cache(maxsize=4096)  # a model's tensors share a few (dtype, shape) pairs
def _blob_prefix(dtype: str, shape: tuple[int, ...]) -> bytes:
    prefix, _ = build_header([(BLOB_TENSOR_NAME, dtype, shape)])
    return prefix


_BLOB_ENTRIES: dict[tuple[bytes, int], TensorEntry] = {}  # (header bytes, blob size) -> parsed entry
_BLOB_ENTRIES_MAX = 4096


def parse_blob(data: bytes | memoryview, where: str = "tensor blob", size: int | None = None) -> TensorEntry:
    """Parse a canonical tensor blob; returns its entry with offsets relative to the blob start.
    `data` is the whole blob, or its first bytes (its header at least) with `size` its length.

    A blob's entry depends only on its header bytes and its size, and blobs of one dtype and
    shape share a header: parses are remembered by (header, size), which takes the JSON parse
    out of every load of a known shape (it was the largest cost of a load with stamps)."""
    size = len(data) if size is None else size
    key = None
    if len(data) >= 8:
        n = int.from_bytes(data[:8], "little")
        if n <= MAX_HEADER_BYTES and 8 + n <= min(len(data), size):
            key = (bytes(data[:8 + n]), size)
            hit = _BLOB_ENTRIES.get(key)
            if hit is not None:
                return hit
    header = parse_header(data, size, where)
    if len(header.tensors) != 1 or header.metadata is not None:
        raise BadInput(f"{where}: not a canonical single-tensor blob")
    e = header.tensors[0]
    entry = TensorEntry(e.name, e.dtype, e.shape, header.data_start + e.begin, header.data_start + e.end)
    if key is not None:
        if len(_BLOB_ENTRIES) >= _BLOB_ENTRIES_MAX:
            _BLOB_ENTRIES.clear()
        _BLOB_ENTRIES[key] = entry
    return entry


def looks_like_safetensors(path: str) -> bool:
    """Whether a file opens as a safetensors file does: a little-endian header length that fits
    the file, then a JSON object (a sniff of 9 bytes, not a parse)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:] == b"{"

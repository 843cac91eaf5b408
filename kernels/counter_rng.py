"""Counter-based random numbers (splitmix64) that are bit-identical on every machine.

Value ``i`` of stream ``s`` is ``mix64(s + (i + 1) * GOLDEN mod 2**64)``: no hidden state, no
dependence on torch's or numpy's global generators, pure integer arithmetic. The vectorised numpy
functions have plain-Python twins (``*_py``) used by the reference implementations and tests.
"""
from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64_py(z: int) -> int:
    """splitmix64 finaliser on one Python int (taken modulo 2**64)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def mix64(z: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser; ``z`` is a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def stream_uint64(stream: int, count: int, start: int = 0) -> np.ndarray:
    """``count`` uint64 values of counter stream ``stream`` starting at index ``start``."""
    idx = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(stream & MASK64) + idx * np.uint64(GOLDEN)
        return mix64(z)


def stream_uint64_py(stream: int, i: int) -> int:
    """Reference twin of ``stream_uint64`` for a single index ``i``."""
    return mix64_py(stream + (i + 1) * GOLDEN)


def signed_ints(stream: int, count: int, bits: int) -> np.ndarray:
    """``count`` integers uniform in ``[-2**(bits-1), 2**(bits-1))`` as int64 (top bits of each value)."""
    u = stream_uint64(stream, count) >> np.uint64(64 - bits)
    return u.astype(np.int64) - (1 << (bits - 1))


def signed_int_py(stream: int, i: int, bits: int) -> int:
    """Reference twin of ``signed_ints`` for a single index ``i``."""
    return (stream_uint64_py(stream, i) >> (64 - bits)) - (1 << (bits - 1))


def stream_id(name: str) -> int:
    """A 64-bit stream id derived from a short ASCII name (stable, no hashing library involved)."""
    z = 0
    for ch in name.encode("ascii"):
        z = mix64_py(z ^ ch)
    return z

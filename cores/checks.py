"""Argument checks shared by the public model API (cores, bricks): one clear error per bad argument.

Convention (the layer below ``mvc`` cannot raise mvc's errors): a value of the wrong *type* is a
``TypeError``, a value of the right type outside its allowed range is a ``ValueError``; each
message names the argument and says what is allowed. ``bool`` is refused where an integer is
expected (``True`` is an int to Python, never a size or a seed to a user).
"""
from __future__ import annotations

import math
import numbers

import torch

SEED_MAX = 2 ** 63 - 1
MAX_LR = 1e30  # far above any rate that trains (a divergence test uses 1e30); 1e39 overflowed float32 in the step


def integer(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (ints and numpy integers; not bool, float or str) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def seed(value, name: str = "seed") -> int:
    """A seed: an integer in 0 .. 2**63 - 1."""
    return integer(value, name, 0, SEED_MAX)


def real(value, name: str, minimum: float | None = None, maximum: float | None = None,
         above: float | None = None) -> float:
    """``value`` as a finite float (ints and floats; not bool or str), ``minimum <= value <= maximum``
    and ``value > above`` where given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    return value


def head_width(d_model: int, n_head: int, what: str) -> None:
    """Attention shapes: d_model splits into n_head heads of an even width (rotary positions rotate
    pairs of dimensions)."""
    if d_model % n_head or (d_model // n_head) % 2:
        raise ValueError(f"{what}: d_model ({d_model}) must be a multiple of n_head ({n_head}) with an even "
                         f"head width (rotary positions rotate pairs of dimensions)")


def boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {type(value).__name__} {value!r}")
    return value


def as_bytes(data, name: str = "data") -> bytes:
    """Training / evaluation data as ``bytes`` (bytes, bytearray, memoryview or another buffer).

    A ``str`` or a tensor is refused with a hint: the models read raw bytes, and guessing an
    encoding or a tensor layout would silently train on something else than the user meant.
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        raise TypeError(f"{name} must be bytes, got str (encode it first, e.g. {name}.encode('utf-8'))")
    if isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be bytes, got a tensor (for a 1-D tensor of byte values 0..255: "
                        f"bytes(t.to(torch.uint8).tolist()))")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{name} must be bytes (or bytearray / memoryview), got {type(data).__name__}") from None
    if view.itemsize != 1:  # e.g. an int64 array: its raw memory is not the byte values it holds
        raise TypeError(f"{name} must be a buffer of single bytes, got items of {view.itemsize} bytes "
                        f"({type(data).__name__}, format {view.format!r})")
    return view.tobytes()


def byte_ids(x, name: str = "byte_ids", vocab: int = 256) -> torch.Tensor:
    """Check a model input: an integer tensor (B, T) of ids 0..vocab-1 (bytes: 0..255), B and T >= 1.

    Returns it as int64 (a no-op for a LongTensor; uint8 / int32 inputs are widened).
    """
    if not isinstance(x, torch.Tensor):
        hint = " (bytes: cores.base.bytes_to_tensor(data)[None])" if isinstance(x, (bytes, bytearray)) else ""
        raise TypeError(f"{name} must be a LongTensor of shape (B, T), got {type(x).__name__}{hint}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must hold integer values 0..{vocab - 1} (a LongTensor), got dtype {x.dtype}")
    if x.dim() != 2:
        hint = " (one sequence: add the batch dimension, x[None])" if x.dim() == 1 else ""
        raise ValueError(f"{name} must have shape (B, T), got {tuple(x.shape)}{hint}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one sequence of one byte")
    if x.device.type == "cpu":  # elsewhere the values stay on the device (reading them would stall
        lo, hi = int(x.min()), int(x.max())  # every forward); torch's embedding checks them there
        if lo < 0 or hi > vocab - 1:
            raise ValueError(f"{name} must hold values 0..{vocab - 1}, got values in {lo}..{hi}")
    return x.long()

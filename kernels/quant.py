"""Per-output-channel symmetric int8 quantisation with float32 scales (compact brick artifacts).

For a weight W with output channels along ``axis`` (default 0): scale_c = max|W_c| / 127
(1.0 for an all-zero or empty channel; at least the smallest normal float32, ``MIN_SCALE``, which
a channel of subnormal weights would otherwise undercut, down to a scale of 0),
q = clamp(round_half_even(W / scale_c), -127, 127) as int8, and dequantisation is q * scale_c in
float32. Round-trip error per element is at most scale_c / 2.
``quantize_int8`` is the vectorised path; ``quantize_int8_reference`` is its plain-loop twin.
"""
from __future__ import annotations

import math
import numbers

import torch

QMAX = 127
# The smallest scale: max|W_c| / 127 underflows to 0 for a subnormal max (1e-45 / 127), and W / 0 is
# inf or NaN; with a scale of 2**-126, W / scale and q * scale are exact, so the error bound holds.
MIN_SCALE = torch.finfo(torch.float32).tiny


def _axis(axis, ndim: int, fn: str) -> int:
    """``axis`` as 0 .. ndim-1 (a negative axis counts from the end, as in torch): the reshapes
    below index the shape with it, where -1 would pick the wrong dimensions."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{fn}: axis must be an integer, got {type(axis).__name__} {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for a {ndim}-dimensional tensor "
                         f"(allowed: {-ndim} .. {ndim - 1})")
    return int(axis) % ndim


def _channel_view(w: torch.Tensor, axis: int, fn: str) -> tuple[torch.Tensor, int]:
    """(C, rest) float32 view of ``w`` with the channel axis first, and that axis as 0 .. ndim-1."""
    if w.dim() == 0:
        raise ValueError("quantize_int8: expected a tensor with at least one dimension")
    axis = _axis(axis, w.dim(), fn)
    # (the rest's size spelled out: reshape cannot infer a -1 beside a 0-size dimension)
    rest = math.prod(n for i, n in enumerate(w.shape) if i != axis)
    return w.detach().to(torch.float32).movedim(axis, 0).reshape(w.shape[axis], rest), axis


def _check_finite(flat: torch.Tensor, name: str) -> None:
    """NaN or infinity has no int8 code (a NaN scale or an inf * 0 would corrupt the whole channel)."""
    bad = ~torch.isfinite(flat)
    if bool(bad.any()):
        channel = int(bad.any(dim=1).nonzero()[0, 0])
        raise ValueError(f"quantize_int8: {name} holds {int(bad.sum())} non-finite value(s) (first in output "
                         f"channel {channel}); NaN / infinity cannot be quantised (a diverged model?)")


def quantize_int8(w: torch.Tensor, axis: int = 0, name: str = "the tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``w`` -> (q int8 with w's shape, scale float32 of shape (w.shape[axis],)).

    ValueError when ``w`` holds NaN or infinity (``name`` says which tensor). A negative ``axis``
    counts from the end."""
    flat, axis = _channel_view(w, axis, "quantize_int8")  # (C, N)
    _check_finite(flat, name)
    # (C,) max is exact, order-free; amax cannot reduce a channel of no elements (shape (C, 0))
    amax = flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    scale = torch.where(amax > 0, (amax / QMAX).clamp(min=MIN_SCALE), torch.ones_like(amax))
    q = torch.round(flat / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    shape = list(w.shape)
    moved = [shape[axis]] + shape[:axis] + shape[axis + 1:]
    return q.reshape(moved).movedim(0, axis).contiguous(), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Inverse of ``quantize_int8``: float32 tensor of q's shape."""
    axis = _axis(axis, q.dim(), "dequantize_int8")
    shape = [1] * q.dim()
    shape[axis] = -1
    return q.to(torch.float32) * scale.to(torch.float32).reshape(shape)


def quantize_int8_reference(w: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-loop twin of ``quantize_int8`` (one channel, one element at a time)."""
    flat, axis = _channel_view(w, axis, "quantize_int8_reference")
    _check_finite(flat, "the tensor")
    q = torch.zeros(flat.shape, dtype=torch.int8)
    scales = torch.zeros(flat.shape[0], dtype=torch.float32)
    for c in range(flat.shape[0]):
        row = flat[c]
        amax = torch.tensor(0.0)
        for v in row:
            amax = torch.maximum(amax, v.abs())
        s = (amax / QMAX).clamp(min=MIN_SCALE) if amax > 0 else torch.tensor(1.0)
        scales[c] = s
        for i, v in enumerate(row):
            q[c, i] = int(torch.round(v / s).clamp(-QMAX, QMAX))
    shape = list(w.shape)
    moved = [shape[axis]] + shape[:axis] + shape[axis + 1:]
    return q.reshape(moved).movedim(0, axis).contiguous(), scales


def quantize_state_dict(sd: dict[str, torch.Tensor], min_numel: int = 1024) -> dict[str, torch.Tensor]:
    """Quantise every floating tensor with >= 2 dims and >= ``min_numel`` elements of a state dict.

    ``name`` becomes ``name.q8`` (int8) and ``name.scale`` (float32); other tensors are kept as they are.
    A tensor to quantise that holds NaN or infinity is a ValueError naming it.
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if t.is_floating_point() and t.dim() >= 2 and t.numel() >= min_numel:
            out[name + ".q8"], out[name + ".scale"] = quantize_int8(t, name=repr(name))
        else:
            out[name] = t
    return out


def dequantize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``quantize_state_dict`` (float32 for quantised entries)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name.endswith(".q8"):
            base = name[: -len(".q8")]
            out[base] = dequantize_int8(t, sd[base + ".scale"])
        elif name.endswith(".scale") and name[: -len(".scale")] + ".q8" in sd:
            continue
        else:
            out[name] = t
    return out

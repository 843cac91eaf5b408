"""Pieces every brick shares: seeded init, byte taps, ABI-delta decoding, the arch table, sizes.

A brick is an ``nn.Module`` with ``mvc_kind = "brick"``, ``brick_kind`` ("sparse" or "portable"),
``mvc_arch``, a complete JSON-serialisable ``mvc_config`` (``BUILDERS[mvc_arch](mvc_config)``
rebuilds the architecture without the host) and ``abi_spec`` (a ``cores.abi.AbiSpec``).
"""
from __future__ import annotations

import importlib
import json
import numbers
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# arch name -> "module:function" building the brick from its mvc_config (also the mvc.archs entry points)
BUILDERS: dict[str, str] = {
    "sparse-brick": "bricks.sparse:build_from_config",
    "portable-brick": "bricks.portable:build_from_config",
    "sparse-brick-int8": "bricks.int8:build_from_config",
    "portable-brick-int8": "bricks.int8:build_from_config",
}


def builder(arch: str) -> Callable[[dict], nn.Module]:
    """The builder of a brick arch; ValueError naming the known brick archs otherwise."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown brick arch {arch!r} (known: {', '.join(sorted(BUILDERS))})")
    module, _, attr = BUILDERS[arch].partition(":")
    return getattr(importlib.import_module(module), attr)


def json_config(cfg: dict) -> dict:
    """A deep copy of ``cfg`` through JSON: numpy numbers become ints and floats; what JSON cannot
    hold is a TypeError naming it."""
    return json.loads(json.dumps(cfg, sort_keys=True, allow_nan=False, default=_plain_number))


def _plain_number(value):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"a brick config holds {type(value).__name__} {str(value)[:60]!r}, which is no JSON value "
                    "(numbers, strings, booleans, lists and dicts of them)")


def seeded_normal(shape, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g) * std


def tap_ids(x: torch.Tensor, taps: int) -> torch.Tensor:
    """x (B, T) -> (B, T, taps) ids of bytes t, t-1, .. (id 256 before the start), offset 257 per tap."""
    T = x.shape[1]
    cols = [F.pad(x, (i, 0), value=256)[:, :T] + i * 257 for i in range(taps)]
    return torch.stack(cols, dim=-1)


def decode_delta(head_weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-byte ABI-space deltas (B, T, d_abi) -> byte-logit deltas (B, T, 256) through a host head.

    ``head_weight`` is the host head (patch_bytes, d_abi, 256); byte position t (which predicts byte
    t+1, at position j = (t+1) % patch_bytes of its patch) is decoded by ``head_weight[j]``: the same
    convention as ``LayerCakeCore.head_logits``. A zero delta decodes to exact zeros.
    """
    pb, A, V = head_weight.shape
    B, T, _ = delta.shape
    n = -(-(T + 1) // pb) * pb
    d = F.pad(delta, (0, 0, 1, n - T - 1))  # row s holds delta[s-1]; s % pb is the head position
    out = torch.einsum("bmjd,jdv->bmjv", d.view(B, n // pb, pb, A), head_weight)
    return out.reshape(B, n, V)[:, 1:T + 1]


def artifact_bytes(module: nn.Module) -> int:
    """Bytes of the tensors in ``module``'s state dict (what a commit of it stores, headers aside)."""
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))


def num_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))

"""The fixed canonical ABI-to-byte-logit head, and the ABI specs built on it.

The head is a deterministic float32 tensor W of shape (patch_bytes, d_abi, 256), never trained:
entry i of stream ``HEAD_SPEC["stream"]`` (splitmix64, kernels/counter_rng.py) gives a 24-bit
signed integer n and W.flat[i] = n * 2**(scale_log2 - 23), a dyadic rational that float32 holds
exactly, so the tensor is bit-identical on every machine. W[j] maps an ABI state to logits for the
byte at position j of the *next* patch (one fixed head per position inside the patch). Its hash
(BLAKE3 of the canonical head spec JSON followed by W's little-endian bytes) is part of the ABI spec.

A *legacy* core (``canonical=False``) uses a learned head instead; its spec records that.
"""
from __future__ import annotations

from functools import lru_cache

import blake3
import numpy as np
import torch
from torch import nn

from cores.abi import ABI_VERSION, AbiSpec, canonical_json
from kernels.anchors import ANCHOR_SPEC
from kernels.counter_rng import signed_ints, stream_id

HEAD_SPEC: dict = {
    "name": "canonical-abi-head",
    "version": 1,
    "vocab": 256,
    "value_bits": 24,
    "scale_log2": -2,
    "stream": "canonical-head-v1",
}

LEGACY_HEAD = "learned"
LEGACY_ANCHOR_SPEC: dict = {"name": "none", "version": 0}


@lru_cache(maxsize=4)
def _head_array(d_abi: int, patch_bytes: int) -> np.ndarray:
    n = patch_bytes * d_abi * HEAD_SPEC["vocab"]
    ints = signed_ints(stream_id(HEAD_SPEC["stream"]), n, HEAD_SPEC["value_bits"])
    vals = np.ldexp(ints.astype(np.float64), HEAD_SPEC["scale_log2"] - (HEAD_SPEC["value_bits"] - 1))
    return vals.astype(np.float32).reshape(patch_bytes, d_abi, HEAD_SPEC["vocab"])


def canonical_head_weight(d_abi: int = 64, patch_bytes: int = 4) -> torch.Tensor:
    """The fixed head, float32 (patch_bytes, d_abi, 256); a fresh copy each call."""
    return torch.from_numpy(_head_array(d_abi, patch_bytes).copy())


@lru_cache(maxsize=4)
def canonical_head_hash(d_abi: int = 64, patch_bytes: int = 4) -> str:
    """BLAKE3 hex of canonical JSON(head spec + shape) || head bytes (little-endian float32)."""
    spec = dict(HEAD_SPEC, d_abi=d_abi, patch_bytes=patch_bytes)
    h = blake3.blake3(canonical_json(spec))
    h.update(_head_array(d_abi, patch_bytes).astype("<f4").tobytes())
    return h.hexdigest()


def canonical_abi_spec(d_abi: int = 64, patch_bytes: int = 4) -> AbiSpec:
    """The ABI spec of canonical LayerCake cores."""
    if d_abi != ANCHOR_SPEC["d_abi"] or patch_bytes != ANCHOR_SPEC["patch_bytes"]:
        raise ValueError("canonical ABI: d_abi and patch_bytes must match kernels.anchors.ANCHOR_SPEC")
    return AbiSpec(version=ABI_VERSION, d_abi=d_abi, patch_bytes=patch_bytes,
                   anchor_spec=dict(ANCHOR_SPEC), head_hash=canonical_head_hash(d_abi, patch_bytes))


def legacy_abi_spec(d_abi: int = 64, patch_bytes: int = 4) -> AbiSpec:
    """The ABI spec of legacy cores: no anchors, a learned head (equal for all legacy cores)."""
    return AbiSpec(version=ABI_VERSION, d_abi=d_abi, patch_bytes=patch_bytes,
                   anchor_spec=dict(LEGACY_ANCHOR_SPEC), head_hash=LEGACY_HEAD)


class AbiHead(nn.Module):
    """ABI state -> byte logits for each position of the next patch.

    canonical=True: the fixed head as a non-persistent buffer (regenerated, never stored or trained).
    canonical=False: a learned parameter of the same shape (legacy cores), initialised by the caller.
    """

    def __init__(self, d_abi: int = 64, patch_bytes: int = 4, canonical: bool = True):
        super().__init__()
        self.canonical = canonical
        self.d_abi, self.patch_bytes = d_abi, patch_bytes
        w = canonical_head_weight(d_abi, patch_bytes)
        if canonical:
            self.register_buffer("weight", w, persistent=False)
            self.register_buffer("_flat", w.permute(1, 0, 2).reshape(d_abi, -1).contiguous(), persistent=False)
        else:
            self.weight = nn.Parameter(torch.zeros_like(w))

    def flat_weight(self) -> torch.Tensor:
        """The head as one (d_abi, patch_bytes * 256) matrix; column block j is position j."""
        if self.canonical:
            return self._flat
        return self.weight.permute(1, 0, 2).reshape(self.d_abi, -1)

    def patch_logits(self, abi: torch.Tensor) -> torch.Tensor:
        """abi (B, P, d_abi) -> (B, P, patch_bytes, 256): logits for the 4 bytes of patch p+1."""
        B, P, _ = abi.shape
        return (abi @ self.flat_weight()).view(B, P, self.patch_bytes, -1)

    def position_logits(self, abi: torch.Tensor, j: int) -> torch.Tensor:
        """abi (..., d_abi) -> (..., 256): logits for position j inside the next patch."""
        return abi @ self.weight[j]

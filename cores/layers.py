"""Transformer building blocks shared by the cores: RMSNorm, rotary positions, attention, MLP.

Attention carries an optional key/value cache (a dict per layer) so the same block serves
full-sequence evaluation and incremental generation. Rotary tables are computed in fixed blocks of
positions in float64 and cached, so the table row of position p never depends on the sequence length.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from kernels import batch_invariant as bi

_ROPE_BLOCK = 1024


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bi.rms_norm(x, self.weight, self.eps)


@lru_cache(maxsize=64)
def _rope_block(head_dim: int, base: float, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():  # cached tables must be usable under autograd
        return _rope_block_compute(head_dim, base, block)


def _rope_block_compute(head_dim: int, base: float, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    pos = torch.arange(block * _ROPE_BLOCK, (block + 1) * _ROPE_BLOCK, dtype=torch.float64)
    ang = pos[:, None] * inv_freq[None, :]  # (BLOCK, hd/2)
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)  # (BLOCK, hd) each


def rope_tables(head_dim: int, base: float, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, signed-sin tables (length, head_dim) for positions start .. start+length-1."""
    first, last = start // _ROPE_BLOCK, (start + length - 1) // _ROPE_BLOCK
    blocks = [_rope_block(head_dim, base, b) for b in range(first, last + 1)]
    cos = torch.cat([c for c, _ in blocks]) if len(blocks) > 1 else blocks[0][0]
    sin = torch.cat([s for _, s in blocks]) if len(blocks) > 1 else blocks[0][1]
    off = start - first * _ROPE_BLOCK
    return cos[off:off + length], sin[off:off + length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of x (B, H, T, hd): x*cos + swap_halves(x)*[-sin, sin]."""
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), sin)


def _cache_append(cache: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append k/v (B, H, T, hd) to a growing preallocated cache; return the full keys/values."""
    n, T = cache.get("n", 0), k.shape[2]
    if "k" not in cache or n + T > cache["k"].shape[2]:
        cap = max(64, 2 * (n + T))
        kb, vb = k.new_empty(*k.shape[:2], cap, k.shape[3]), v.new_empty(*v.shape[:2], cap, v.shape[3])
        if n:
            kb[:, :, :n], vb[:, :, :n] = cache["k"][:, :, :n], cache["v"][:, :, :n]
        cache["k"], cache["v"] = kb, vb
    cache["k"][:, :, n:n + T], cache["v"][:, :, n:n + T] = k, v
    cache["n"] = n + T
    return cache["k"][:, :, :n + T], cache["v"][:, :, :n + T]


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int, rope_base: float = 10000.0):
        super().__init__()
        if n_head < 1 or d % n_head:
            raise ValueError(f"d_model ({d}) must be divisible by n_head ({n_head})")
        self.n_head, self.head_dim, self.rope_base = n_head, d // n_head, rope_base
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        start = 0 if cache is None else cache.get("n", 0)
        cos, sin = rope_tables(self.head_dim, self.rope_base, start, T)
        # the cached tables are float32 on the CPU: follow the activations (a no-op for float32 CPU
        # models, so their bits are unchanged; a bf16 or CUDA model would otherwise fail in attention)
        cos, sin = cos.to(q.device, q.dtype), sin.to(q.device, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = _cache_append(cache, k, v)
        y = bi.causal_attention(q, k, v)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """fc -> GELU -> proj. ``approximate``: "none" (exact erf GELU, the default; an earlier
    measurement on training batches found it ~2x cheaper than tanh here) or "tanh" (on one 256-wide
    row, as in byte-by-byte decoding: 1.3 us vs 7.6 us for erf)."""

    def __init__(self, d: int, hidden: int, approximate: str = "none"):
        super().__init__()
        self.fc = nn.Linear(d, hidden, bias=False)
        self.proj = nn.Linear(hidden, d, bias=False)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d: int, n_head: int, mlp_ratio: int = 4, rope_base: float = 10000.0):
        super().__init__()
        self.norm1 = RMSNorm(d)
        self.attn = CausalSelfAttention(d, n_head, rope_base)
        self.norm2 = RMSNorm(d)
        self.mlp = MLP(d, mlp_ratio * d)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


def init_weights(model: nn.Module, seed: int, n_residual: int, std: float = 0.02) -> None:
    """Seeded GPT-2 style init from a private generator (torch's global RNG is untouched).

    Linear/embedding weights ~ N(0, std); output projections of residual branches (``*.proj``)
    scaled by 1/sqrt(2 * n_residual); biases zero; norm weights one. Parameters are visited in
    ``named_parameters`` order, so the result depends only on the architecture and the seed.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                p.fill_(1.0 if "norm" in name else 0.0)
                continue
            s = std / (2 * n_residual) ** 0.5 if name.endswith("proj.weight") else std
            p.copy_(torch.randn(p.shape, generator=g) * s)

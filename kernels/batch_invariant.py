"""Batch-invariant evaluation: a sequence's outputs are bit-identical alone or inside any batch.

Why this is needed: CPU BLAS (MKL here) chooses its GEMM kernel and blocking from the matrix shape,
so row i of ``x @ W.T`` can change in the last bits when other rows are added (measured: an M=3
product differs from the same rows inside an M=21 product for K >= 128). Row-local ops (norms,
softmax, attention per head) do not mix rows, but every matmul does.

The choice (DESIGN.md section 10): evaluate **one sequence at a time with fixed shapes on the
BLAS path** rather than hand-writing fixed-order reductions. A sequence of length T then always
meets the same GEMM shapes (T x K) @ (K x N), whatever else is in the batch, and MKL's result for a
fixed shape does not depend on the thread count (tested for 1, 2, 3 and 4 threads).

Contract used by the cores: in evaluation mode (``module.training`` is False) and while the switch
``enabled()`` is on (the default), a core's forward runs ``per_sequence``. ``enabled(False)`` turns
it off for throughput-only work where bit-exactness does not matter.

The ops below (``linear``, ``rms_norm``, ``layer_norm``, ``softmax``, ``causal_attention``) are the
fast paths for evaluation code outside the cores (e.g. bricks): ``linear`` splits the leading batch
dimension itself; the others are row-local. Each has a plain float64 reference twin (``*_reference``)
used by the parity tests.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

_state = threading.local()


def is_enabled() -> bool:
    """Whether exact (per-sequence) evaluation is on for this thread (default True)."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Context manager switching exact per-sequence evaluation on (default) or off."""
    old = is_enabled()
    _state.enabled = flag
    try:
        yield
    finally:
        _state.enabled = old


def exact_eval(module: torch.nn.Module) -> bool:
    """True when ``module`` should evaluate per sequence: eval mode and the switch is on."""
    return (not module.training) and is_enabled()


def per_sequence(fn: Callable, *tensors: torch.Tensor):
    """Apply ``fn`` to each leading-dimension slice (batch of 1) and concatenate the outputs.

    ``fn`` may return a tensor or a tuple/list of tensors (each with a leading batch dim of 1),
    or ``None`` entries, which are passed through.
    """
    n = tensors[0].shape[0]
    if n == 0:  # an empty batch: nothing to split (fn sees the batch of 0 itself)
        return fn(*tensors)
    outs = [fn(*(t[i:i + 1] for t in tensors)) for i in range(n)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs, dim=0)
    return type(outs[0])(
        None if outs[0][k] is None else torch.cat([o[k] for o in outs], dim=0)
        for k in range(len(outs[0]))
    )


# ---- fast paths ---------------------------------------------------------------------------------

def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` evaluated per leading index when x has >= 3 dims (batch-invariant)."""
    if x.dim() >= 3 and x.shape[0] > 1:
        return per_sequence(lambda xi: F.linear(xi, weight, bias), x)
    return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """RMS normalisation over the last dim (row-local; torch's fused kernel)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer normalisation over the last dim (row-local)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along ``dim`` (row-local)."""
    return torch.softmax(x, dim=dim)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention, q (B, H, Tq, D), k/v (B, H, Tk, D) with Tq <= Tk -> (B, H, Tq, D).

    The queries are the last Tq positions (bottom-right aligned causal mask), so the same function
    serves full-sequence evaluation and incremental decoding with a key/value cache.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    if tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if tq == 1:
        return F.scaled_dot_product_attention(q, k, v)
    mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---- plain reference twins (float64, explicit loops; slow: tiny shapes only) --------------------

def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference twin of ``linear``: one float64 dot product per output element."""
    xs = x.reshape(-1, x.shape[-1]).double()
    w = weight.double()
    out = torch.empty(xs.shape[0], w.shape[0], dtype=torch.float64)
    for r in range(xs.shape[0]):
        for c in range(w.shape[0]):
            acc = 0.0
            for i in range(w.shape[1]):
                acc += float(xs[r, i]) * float(w[c, i])
            out[r, c] = acc + (float(bias[c]) if bias is not None else 0.0)
    return out.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Reference twin of ``rms_norm``."""
    rows = x.reshape(-1, x.shape[-1]).double()
    out = torch.empty_like(rows)
    for r in range(rows.shape[0]):
        ms = sum(float(v) ** 2 for v in rows[r]) / rows.shape[1]
        inv = 1.0 / math.sqrt(ms + eps)
        for c in range(rows.shape[1]):
            out[r, c] = float(rows[r, c]) * inv * (float(weight[c]) if weight is not None else 1.0)
    return out.to(x.dtype).reshape(x.shape)


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float = 1e-5) -> torch.Tensor:
    """Reference twin of ``layer_norm``."""
    rows = x.reshape(-1, x.shape[-1]).double()
    out = torch.empty_like(rows)
    n = rows.shape[1]
    for r in range(rows.shape[0]):
        mean = sum(float(v) for v in rows[r]) / n
        var = sum((float(v) - mean) ** 2 for v in rows[r]) / n
        inv = 1.0 / math.sqrt(var + eps)
        for c in range(n):
            y = (float(rows[r, c]) - mean) * inv
            y = y * (float(weight[c]) if weight is not None else 1.0) + (float(bias[c]) if bias is not None else 0.0)
            out[r, c] = y
    return out.to(x.dtype).reshape(x.shape)


def softmax_reference(x: torch.Tensor) -> torch.Tensor:
    """Reference twin of ``softmax`` over the last dim."""
    rows = x.reshape(-1, x.shape[-1]).double()
    out = torch.empty_like(rows)
    for r in range(rows.shape[0]):
        m = max(float(v) for v in rows[r])
        e = [math.exp(float(v) - m) for v in rows[r]]
        s = sum(e)
        for c, ev in enumerate(e):
            out[r, c] = ev / s
    return out.to(x.dtype).reshape(x.shape)


def causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference twin of ``causal_attention`` (bottom-right aligned mask, scale 1/sqrt(D))."""
    B, H, tq, D = q.shape
    tk = k.shape[-2]
    out = torch.zeros(B, H, tq, D, dtype=torch.float64)
    scale = 1.0 / math.sqrt(D)
    for b in range(B):
        for h in range(H):
            for i in range(tq):
                last = tk - tq + i  # newest key this query may see
                scores = [scale * sum(float(q[b, h, i, d]) * float(k[b, h, j, d]) for d in range(D))
                          for j in range(last + 1)]
                m = max(scores)
                w = [math.exp(s - m) for s in scores]
                z = sum(w)
                for j, wj in enumerate(w):
                    for d in range(D):
                        out[b, h, i, d] += wj / z * float(v[b, h, j, d])
    return out.to(q.dtype)

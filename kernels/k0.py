"""K0 spectral byte embeddings: derived from corpus statistics without training, and blending them
into a trained (or freshly initialised) embedding matrix.

K0 of a byte stream: count byte bigrams (a, b) (b follows a), form the positive pointwise mutual
information matrix PPMI[a, b] = max(0, log p(a, b) / (p(a) p(b))) over the 256 x 256 byte grid, take
its truncated SVD PPMI ~ U_d S_d V_d^T and use the rows of U_d S_d^(1/2) (the byte in its role as the
left context, which is how an input embedding is used: it predicts what follows) as the embedding of
each byte; ``role="right"`` uses V_d S_d^(1/2), ``role="both"`` concatenates half of each. Bytes that
never occur get zero rows. Computed in float64; signs fixed (largest-magnitude entry of each singular
vector positive) so the result is deterministic.

Blending (``blend``): the SVD basis is arbitrary, so the K0 rows are first mapped into the trained
embedding's coordinates by orthogonal Procrustes with a global scale (fitted on the bytes both know),
unless ``align=False``. Then each row whose cosine similarity to its trained row is below
``threshold`` (default 0.5) becomes (1 - ratio) * trained + ratio * K0 (ratio default 0.3); other rows
and bytes absent from the corpus are left as they are.
"""
from __future__ import annotations

import numpy as np
import torch


def bigram_counts(data: bytes) -> np.ndarray:
    """(256, 256) float64 counts of byte pairs (data[t], data[t+1])."""
    if len(data) < 2:
        raise ValueError("K0 needs at least 2 bytes of corpus")
    x = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    flat = np.bincount(x[:-1] * 256 + x[1:], minlength=256 * 256)
    return flat.reshape(256, 256).astype(np.float64)


def ppmi(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Positive PMI of a co-occurrence count matrix; ``smoothing`` (e.g. 0.75) raises the context
    marginal to that power (the usual context-distribution smoothing); 0 means none."""
    total = counts.sum()
    if total <= 0:
        raise ValueError("empty co-occurrence counts")
    p_ab = counts / total
    p_a = p_ab.sum(axis=1, keepdims=True)
    col = counts.sum(axis=0)
    if smoothing:
        col = col ** smoothing
    p_b = (col / col.sum())[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(p_ab / (p_a * p_b))
    pmi[~np.isfinite(pmi)] = 0.0
    return np.maximum(pmi, 0.0)


def _fix_signs(U: np.ndarray, Vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argmax(np.abs(U), axis=0)
    sign = np.sign(U[idx, np.arange(U.shape[1])])
    sign[sign == 0] = 1.0
    return U * sign, Vt * sign[:, None]


def k0_embeddings(data: bytes, dim: int, *, role: str = "left", smoothing: float = 0.0,
                  power: float = 0.5) -> torch.Tensor:
    """(256, dim) float64 K0 embeddings of ``data`` (module docstring). ``power`` is the exponent of
    the singular values in the scaling (0.5: U S^1/2)."""
    if not 1 <= dim <= 256:
        raise ValueError("K0 dimension must lie in 1..256")
    M = ppmi(bigram_counts(data), smoothing)
    U, S, Vt = np.linalg.svd(M)
    U, Vt = _fix_signs(U, Vt)
    if role == "left":
        E = U[:, :dim] * S[:dim] ** power
    elif role == "right":
        E = Vt[:dim].T * S[:dim] ** power
    elif role == "both":
        h = dim - dim // 2
        E = np.concatenate([U[:, :h] * S[:h] ** power, Vt[: dim // 2].T * S[: dim // 2] ** power], axis=1)
    else:
        raise ValueError("role must be 'left', 'right' or 'both'")
    seen = (M.sum(axis=1) > 0) | (M.sum(axis=0) > 0)
    E[~seen] = 0.0
    return torch.from_numpy(np.ascontiguousarray(E))


def align(k0: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Orthogonal Procrustes with a global scale: k0 (V, d) -> k0 @ Q * s closest to target (V, d)
    in Frobenius norm over the rows in ``mask`` (default: rows where k0 is non-zero)."""
    A, B = k0.to(torch.float64), target.detach().to(torch.float64)
    if mask is None:
        mask = A.abs().sum(dim=1) > 0
    Am, Bm = A[mask], B[mask]
    if Am.shape[0] == 0:
        return torch.zeros_like(A)
    U, S, Vh = torch.linalg.svd(Am.t() @ Bm)
    Q = U @ Vh
    denom = float((Am ** 2).sum())
    s = float(S.sum()) / denom if denom > 0 else 0.0
    return (A @ Q) * s


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity (V,), 0 where either row is zero."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(1e-300)
    return torch.where((na > 0) & (nb > 0), cos, torch.zeros_like(cos))


def blend(embedding: torch.Tensor, k0: torch.Tensor, ratio: float = 0.3, threshold: float = 0.5,
          *, do_align: bool = True) -> tuple[torch.Tensor, dict]:
    """Blend K0 rows into ``embedding`` (V, d) -> (new embedding in the input dtype, report).

    report: rows_blended, rows_known (bytes seen in the corpus), mean_cosine_before / _after (over
    known rows, against the aligned K0), ratio, threshold, aligned.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError("blend ratio must lie in [0, 1]")
    if k0.shape != embedding.shape:
        raise ValueError(f"K0 shape {tuple(k0.shape)} differs from the embedding's {tuple(embedding.shape)} "
                         f"(compute K0 with dim={embedding.shape[1]})")
    E = embedding.detach().to(torch.float64)
    known = k0.abs().sum(dim=1) > 0
    K = align(k0, E, known) if do_align else k0.to(torch.float64)
    cos = cosine_rows(E, K)
    pick = known & (cos < threshold)
    out = torch.where(pick[:, None], (1.0 - ratio) * E + ratio * K, E)
    cos_after = cosine_rows(out, K)
    n_known = int(known.sum())
    report = {"rows_blended": int(pick.sum()), "rows_known": n_known, "ratio": float(ratio),
              "threshold": float(threshold), "aligned": bool(do_align),
              "mean_cosine_before": float(cos[known].mean()) if n_known else 0.0,
              "mean_cosine_after": float(cos_after[known].mean()) if n_known else 0.0}
    return out.to(embedding.dtype), report


def k0_init(shape_like: torch.Tensor, data: bytes, std: float | None = None, **kw) -> torch.Tensor:
    """A fresh embedding (V, d) from K0 alone, rescaled so its entries have standard deviation ``std``
    (default: that of ``shape_like``); rows of unseen bytes keep ``shape_like``'s values."""
    V, d = shape_like.shape
    if V != 256:
        raise ValueError("K0 embeddings cover the 256 byte values")
    E = k0_embeddings(data, d, **kw)
    known = E.abs().sum(dim=1) > 0
    target = float(shape_like.detach().to(torch.float64).std()) if std is None else float(std)
    cur = float(E[known].std()) if int(known.sum()) > 1 else 0.0
    E = E * (target / cur) if cur > 0 else E
    out = torch.where(known[:, None], E, shape_like.detach().to(torch.float64))
    return out.to(shape_like.dtype)

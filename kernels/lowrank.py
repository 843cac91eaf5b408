"""Truncated-SVD low-rank linear layer: the honest reference for structured compression.

``LowRankLinear`` stores W ~ U V with U (out, r), V (r, in) and computes
``y = (x @ V^T) @ U^T + b`` in O(r (in + out)) per row; ``forward_reference`` materialises U V.
``lowrank_factors`` gives the best rank-r factors of a dense weight in Frobenius norm (Eckart-Young),
or, with an input second-moment matrix ``sigma = E[x x^T]``, the best factors for the layer's outputs
on that input distribution (minimising E ||x (W - U V)^T||^2 by an SVD of W sigma^(1/2)).
"""
from __future__ import annotations

import torch
from torch import nn


def rank_for_params(in_features: int, out_features: int, params: int) -> int:
    """The largest rank whose factors hold at most ``params`` numbers (at least 1)."""
    return max(1, int(params) // (in_features + out_features))


def lowrank_factors(weight: torch.Tensor, rank: int, sigma: torch.Tensor | None = None,
                    eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors (U (out, r), V (r, in)) of ``weight`` (out, in), computed in float64.

    Without ``sigma``: truncated SVD, singular values split evenly (U = U_r S^1/2, V = S^1/2 V_r^T).
    With ``sigma`` (in, in), symmetric PSD: SVD of W L where sigma = L L^T (eigen square root,
    eigenvalues floored at ``eps`` times the largest), then V = S^1/2 V_r^T L^-1.
    """
    W = weight.detach().to(torch.float64)
    r = max(1, min(int(rank), min(W.shape)))
    if sigma is None:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        s = S[:r].sqrt()
        return U[:, :r] * s, s[:, None] * Vh[:r]
    sig = sigma.detach().to(torch.float64)
    sig = 0.5 * (sig + sig.t())
    evals, evecs = torch.linalg.eigh(sig)
    evals = evals.clamp_min(float(evals.max().clamp_min(0)) * eps + 1e-300)
    L = evecs * evals.sqrt()               # sigma = L L^T
    L_inv = (evecs / evals.sqrt()).t()     # L^-1
    U, S, Vh = torch.linalg.svd(W @ L, full_matrices=False)
    s = S[:r].sqrt()
    return U[:, :r] * s, (s[:, None] * Vh[:r]) @ L_inv


class LowRankLinear(nn.Module):
    """y = x (U V)^T + b with U (out, r), V (r, in): never forms U V in ``forward``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 *, seed: int = 0, dtype: torch.dtype | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError("rank must be >= 1")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        dtype = dtype or torch.get_default_dtype()
        g = torch.Generator().manual_seed(int(seed))
        self.U = nn.Parameter((torch.randn(out_features, rank, generator=g, dtype=torch.float64)
                               / rank ** 0.5).to(dtype))
        self.V = nn.Parameter((torch.randn(rank, in_features, generator=g, dtype=torch.float64)
                               / in_features ** 0.5).to(dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, rank: int, bias: torch.Tensor | None = None,
                   sigma: torch.Tensor | None = None) -> "LowRankLinear":
        """Truncated-SVD layer fitted to a dense weight (see ``lowrank_factors``)."""
        out_f, in_f = weight.shape
        U, V = lowrank_factors(weight, rank, sigma)
        layer = cls(in_f, out_f, U.shape[1], bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            layer.U.copy_(U)
            layer.V.copy_(V)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x @ self.V.t()) @ self.U.t()  # (..., r) -> (..., out)
        return y if self.bias is None else y + self.bias

    @property
    def weight(self) -> torch.Tensor:
        """The materialised weight U V (out, in), built on each access."""
        return self.U @ self.V

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Reference twin: materialise W = U V, then one matmul."""
        y = x @ (self.U @ self.V).t()
        return y if self.bias is None else y + self.bias

    def actual_params(self) -> int:
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias is not None else 0)

    def dense_equivalent_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")

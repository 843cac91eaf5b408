"""Harmonic (structured) linear layers: L1 ``HarmonicLinear`` and L2 ``MetaHarmonicLinear``.

L1 synthesises a weight matrix W (out, in) from K separable Gaussian bumps over the index grid::

    W[i, j] = sum_k a_k * exp(-(i - r_k)^2 / (2 s_k^2)) * exp(-(j - c_k)^2 / (2 t_k^2))

with row / column centres r_k, c_k (index units, 0-based) and widths s_k = exp(log_s_k),
t_k = exp(log_t_k) (positive by construction). Writing R (K, out) and C (K, in) for the row and
column profiles, W = R^T diag(a) C, so the forward pass never builds W::

    y = ((x @ C^T) * a) @ R + b          # O(K (in + out)) per input row

L2 generates the five per-component parameter vectors of an L1 layer (amplitude, row centre,
column centre, row log-width, column log-width; each a function of the component index k) from N
meta-components. The generator (our choice) is a linear combination of a fixed smooth basis over
the normalised component index u_k = k / (K - 1): a constant plus N Gaussian bumps with centres
uniform on [0, 1] and widths of one grid spacing, each field with its own N + 1 coefficients::

    p_f(k) = coef[f, 0] + sum_n coef[f, n + 1] * exp(-(u_k - mu_n)^2 / (2 sigma^2))

so an L2 layer holds 5 (N + 1) numbers (plus the bias) whatever K is. Being linear in its
coefficients, the generator is fitted to an L1 layer by exact least squares (``from_harmonic``), and
any layer it generated is recovered exactly. (Learnable bump centres and widths were tried: the fit
becomes non-convex and Levenberg-Marquardt stalled in local minima without gaining accuracy.) An
L1 layer's function does not depend on the order of its components, so ``from_harmonic`` may sort
them first (smooth parameter vectors are easier to generate).

Each fast path has a plain reference twin that materialises W (``*_reference``, ``.weight``), and
``dense_equivalent_params`` / ``actual_params`` report the honest sizes (DESIGN.md section 2).
"""
from __future__ import annotations

import math

import torch
from torch import nn

FIELDS = ("amp", "row_centre", "col_centre", "row_log_width", "col_log_width")


# ---- functional core ----------------------------------------------------------------------------

def gaussian_profiles(centre: torch.Tensor, log_width: torch.Tensor, size: int) -> torch.Tensor:
    """(K,) centres and log-widths -> (K, size) profiles exp(-(idx - centre)^2 / (2 width^2))."""
    idx = torch.arange(size, dtype=centre.dtype, device=centre.device)
    inv2 = 0.5 * torch.exp(-2.0 * log_width)  # 1 / (2 w^2)
    return torch.exp(-((idx[None, :] - centre[:, None]) ** 2) * inv2[:, None])


def harmonic_weight(amp, row_centre, col_centre, row_log_width, col_log_width,
                    out_features: int, in_features: int) -> torch.Tensor:
    """Materialise W (out, in) = R^T diag(a) C (the reference twin's weight)."""
    R = gaussian_profiles(row_centre, row_log_width, out_features)  # (K, out)
    C = gaussian_profiles(col_centre, col_log_width, in_features)   # (K, in)
    return (R.t() * amp[None, :]) @ C  # (out, in)


def harmonic_linear(x: torch.Tensor, amp, row_centre, col_centre, row_log_width, col_log_width,
                    out_features: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b without materialising W: ((x @ C^T) * a) @ R + b. x (..., in) -> (..., out)."""
    R = gaussian_profiles(row_centre, row_log_width, out_features)  # (K, out)
    C = gaussian_profiles(col_centre, col_log_width, x.shape[-1])   # (K, in)
    y = ((x @ C.t()) * amp) @ R  # (..., K) -> (..., out)
    return y if bias is None else y + bias


def harmonic_linear_reference(x: torch.Tensor, amp, row_centre, col_centre, row_log_width, col_log_width,
                              out_features: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain twin of ``harmonic_linear``: builds W element by element (broadcast) and applies it."""
    i = torch.arange(out_features, dtype=amp.dtype, device=amp.device)[None, :, None]  # (1, out, 1)
    j = torch.arange(x.shape[-1], dtype=amp.dtype, device=amp.device)[None, None, :]   # (1, 1, in)
    rs = torch.exp(row_log_width)[:, None, None]
    cs = torch.exp(col_log_width)[:, None, None]
    terms = (amp[:, None, None] * torch.exp(-(i - row_centre[:, None, None]) ** 2 / (2 * rs ** 2))
             * torch.exp(-(j - col_centre[:, None, None]) ** 2 / (2 * cs ** 2)))  # (K, out, in)
    W = terms.sum(dim=0)
    y = x @ W.t()
    return y if bias is None else y + bias


# ---- L1 ---------------------------------------------------------------------------------------------

class HarmonicLinear(nn.Module):
    """L1: a linear layer whose weight is a sum of K separable Gaussian bumps (module docstring)."""

    def __init__(self, in_features: int, out_features: int, n_components: int, bias: bool = True,
                 *, seed: int = 0, dtype: torch.dtype | None = None):
        super().__init__()
        if n_components < 1:
            raise ValueError("n_components must be >= 1")
        self.in_features, self.out_features, self.n_components = int(in_features), int(out_features), int(n_components)
        dtype = dtype or torch.get_default_dtype()
        g = torch.Generator().manual_seed(int(seed))
        K = self.n_components
        self.amp = nn.Parameter((torch.randn(K, generator=g, dtype=torch.float64) / math.sqrt(K)).to(dtype))
        self.row_centre = nn.Parameter((torch.rand(K, generator=g, dtype=torch.float64) * (out_features - 1)).to(dtype))
        self.col_centre = nn.Parameter((torch.rand(K, generator=g, dtype=torch.float64) * (in_features - 1)).to(dtype))
        self.row_log_width = nn.Parameter(torch.full((K,), math.log(max(1.0, out_features / 8)), dtype=dtype))
        self.col_log_width = nn.Parameter(torch.full((K,), math.log(max(1.0, in_features / 8)), dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    def params(self) -> tuple[torch.Tensor, ...]:
        """(amp, row_centre, col_centre, row_log_width, col_log_width), each (K,)."""
        return self.amp, self.row_centre, self.col_centre, self.row_log_width, self.col_log_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return harmonic_linear(x, *self.params(), self.out_features, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The materialised weight (out, in), built on each access: for the reference twin, checks,
        export, and code that reads ``layer.weight.device`` / ``.dtype`` as it would on nn.Linear."""
        return harmonic_weight(*self.params(), self.out_features, self.in_features)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Reference twin of ``forward`` (materialises W)."""
        return harmonic_linear_reference(x, *self.params(), self.out_features, self.bias)

    def actual_params(self) -> int:
        """Numbers this layer stores: 5 per component plus the bias."""
        return 5 * self.n_components + (self.out_features if self.bias is not None else 0)

    def dense_equivalent_params(self) -> int:
        """Numbers a dense nn.Linear of the same shape stores: n*m weights plus the same bias."""
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"n_components={self.n_components}, bias={self.bias is not None}")


# ---- L2 ---------------------------------------------------------------------------------------------

def meta_basis(n_components: int, n_meta: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(K, 1 + N) fixed design: a constant column, then N Gaussian bumps over u_k = k / (K - 1)
    (u = 0 when K = 1) with centres uniform on [0, 1] and widths of one grid spacing."""
    K, N = int(n_components), int(n_meta)
    u = torch.arange(K, dtype=torch.float64) / max(K - 1, 1)
    mu = torch.linspace(0.0, 1.0, N, dtype=torch.float64) if N > 1 else torch.full((1,), 0.5, dtype=torch.float64)
    sigma = 1.0 / max(N - 1, 1)
    bumps = torch.exp(-((u[:, None] - mu[None, :]) ** 2) / (2 * sigma ** 2))
    return torch.cat([torch.ones(K, 1, dtype=torch.float64), bumps], dim=1).to(dtype=dtype, device=device)


class MetaHarmonicLinear(nn.Module):
    """L2: an L1 layer whose K x 5 component parameters come from N meta-components (module docstring).

    Parameters: one coefficient vector (1 + N,) per generated field, named ``<field>_coef`` (``amp_coef``,
    ``row_centre_coef``, ``col_centre_coef``, ``row_log_width_coef``, ``col_log_width_coef``; first
    entry the offset, then one weight per bump); the bump design is a fixed buffer. Separate 1-D
    vectors let a fine-tune freeze the generated centres and widths while the amplitudes train, and
    keep trainers that decay only matrices from pulling the centres towards zero.
    """

    META_CHOICES = (8, 16, 32)

    def __init__(self, in_features: int, out_features: int, n_components: int, n_meta: int = 8,
                 bias: bool = True, *, seed: int = 0, dtype: torch.dtype | None = None):
        super().__init__()
        if n_components < 1 or n_meta < 1:
            raise ValueError("n_components and n_meta must be >= 1")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.n_components, self.n_meta = int(n_components), int(n_meta)
        dtype = dtype or torch.get_default_dtype()
        g = torch.Generator().manual_seed(int(seed))
        coef = torch.randn(5, 1 + self.n_meta, generator=g, dtype=torch.float64) * 0.1
        coef[:, 0] = torch.tensor([0.0, (out_features - 1) / 2, (in_features - 1) / 2,
                                   math.log(max(1.0, out_features / 8)), math.log(max(1.0, in_features / 8))],
                                  dtype=torch.float64)
        for f, row in zip(FIELDS, coef):
            setattr(self, f + "_coef", nn.Parameter(row.to(dtype)))  # (1 + N,) each
        self.register_buffer("basis", meta_basis(self.n_components, self.n_meta, dtype), persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    def coef(self) -> torch.Tensor:
        """The (5, 1 + N) generator coefficients, rows in ``FIELDS`` order."""
        return torch.stack([getattr(self, f + "_coef") for f in FIELDS])

    def component_params(self) -> tuple[torch.Tensor, ...]:
        """The generated L1 parameters (amp, row_centre, col_centre, row_log_width, col_log_width)."""
        P = self.coef() @ self.basis.t()  # (5, K)
        return tuple(P.unbind(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return harmonic_linear(x, *self.component_params(), self.out_features, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The materialised weight (out, in), built on each access (see ``HarmonicLinear.weight``)."""
        return harmonic_weight(*self.component_params(), self.out_features, self.in_features)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Reference twin: generates the component parameters, then materialises W."""
        return harmonic_linear_reference(x, *self.component_params(), self.out_features, self.bias)

    def to_harmonic(self) -> HarmonicLinear:
        """An L1 layer holding the generated component parameters (same function)."""
        layer = HarmonicLinear(self.in_features, self.out_features, self.n_components, self.bias is not None,
                               dtype=self.amp_coef.dtype)
        with torch.no_grad():
            for name, val in zip(FIELDS, self.component_params()):
                getattr(layer, name).copy_(val)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def actual_params(self) -> int:
        """5 (1 + N) generator coefficients plus the bias."""
        return 5 * (1 + self.n_meta) + (self.out_features if self.bias is not None else 0)

    def dense_equivalent_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"n_components={self.n_components}, n_meta={self.n_meta}, bias={self.bias is not None}")

    @classmethod
    def from_harmonic(cls, layer: HarmonicLinear, n_meta: int = 8, *, order: str = "auto") -> "MetaHarmonicLinear":
        """Fit N meta-components to an existing L1 layer (float64 linear least squares, per field).

        ``order``: "none" keeps the component order; "row" / "col" first sort the components by row /
        column centre (the layer's function does not depend on their order); "auto" tries each and
        keeps the best. The bias is copied. ``fit_error`` on the result is the relative squared error
        of the generated parameter rows, each field standardised by its spread over the components.
        A layer generated by ``n_meta`` meta-components is recovered exactly (to rounding).
        """
        P = torch.stack([p.detach().to(torch.float64) for p in layer.params()])  # (5, K)
        orders = {"none": ["none"], "row": ["row"], "col": ["col"], "auto": ["none", "row", "col"]}
        if order not in orders:
            raise ValueError(f"order must be one of {sorted(orders)}")
        A = meta_basis(layer.n_components, n_meta)  # (K, 1 + N)
        scale = P.std(dim=1, unbiased=False).clamp_min(1e-12)[:, None]
        best = None
        for o in orders[order]:
            Pp = P[:, _component_order(P, o)]
            coef = torch.linalg.lstsq(A, Pp.t(), driver="gelsd").solution.t()  # (5, 1 + N)
            err = float((((coef @ A.t() - Pp) / scale) ** 2).sum() / ((Pp / scale) ** 2).sum().clamp_min(1e-300))
            if best is None or err < best[1]:
                best = (coef, err)
        out = cls(layer.in_features, layer.out_features, layer.n_components, n_meta, layer.bias is not None,
                  dtype=layer.amp.dtype)
        with torch.no_grad():
            for f, row in zip(FIELDS, best[0]):
                getattr(out, f + "_coef").copy_(row)
            if layer.bias is not None:
                out.bias.copy_(layer.bias)
        out.fit_error = best[1]
        return out


def _component_order(P: torch.Tensor, order: str) -> torch.Tensor:
    K = P.shape[1]
    if order == "none":
        return torch.arange(K)
    key = P[1] if order == "row" else P[2]
    other = P[2] if order == "row" else P[1]
    perm = torch.argsort(other, stable=True)  # stable lexicographic sort: secondary key first
    return perm[torch.argsort(key[perm], stable=True)]

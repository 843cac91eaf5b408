"""Harmonic layers (L1, L2) and the low-rank layer: fast paths against their materialising twins."""
import math

import pytest
import torch

from kernels.harmonic import (FIELDS, HarmonicLinear, MetaHarmonicLinear, harmonic_linear,
                              harmonic_linear_reference, harmonic_weight)
from kernels.lowrank import LowRankLinear, lowrank_factors, rank_for_params

F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def l1_layer(in_f=29, out_f=17, K=7, bias=True, seed=0) -> HarmonicLinear:
    layer = HarmonicLinear(in_f, out_f, K, bias, seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # spread the widths so some bumps are narrow and some wide
        layer.row_log_width.copy_(torch.rand(K, generator=g, dtype=F64) * 2.5 - 0.5)
        layer.col_log_width.copy_(torch.rand(K, generator=g, dtype=F64) * 2.5 - 0.5)
        if bias:
            layer.bias.copy_(torch.randn(out_f, generator=g, dtype=F64))
    return layer


@pytest.mark.parametrize("shape", [(5,), (2, 3), (1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_l1_forward_matches_materialised_reference(shape, bias):
    layer = l1_layer(bias=bias)
    x = torch.randn(*shape, layer.in_features, generator=torch.Generator().manual_seed(1), dtype=F64)
    y, y_ref = layer(x), layer.forward_reference(x)
    assert y.shape == (*shape, layer.out_features)
    assert rel(y, y_ref) < 1e-10
    # and the reference twin agrees with an explicit weight built from the formula, entry by entry
    a, r, c, rs, cs = (p.detach() for p in layer.params())
    W = torch.zeros(layer.out_features, layer.in_features, dtype=F64)
    for i in range(layer.out_features):
        for j in range(layer.in_features):
            W[i, j] = sum(float(a[k]) * math.exp(-(i - float(r[k])) ** 2 / (2 * math.exp(float(rs[k])) ** 2))
                          * math.exp(-(j - float(c[k])) ** 2 / (2 * math.exp(float(cs[k])) ** 2))
                          for k in range(layer.n_components))
    assert rel(layer.weight.detach(), W) < 1e-12


def test_l1_gradients_match_reference():
    layer = l1_layer(K=9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, layer.in_features, generator=g, dtype=F64)
    w_out = torch.randn(4, 3, layer.out_features, generator=g, dtype=F64)

    def grads(fn):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        (fn(xi) * w_out).sum().backward()
        return [xi.grad] + [p.grad.clone() for p in (*layer.params(), layer.bias)]

    fast, ref = grads(layer), grads(layer.forward_reference)
    for gf, gr in zip(fast, ref):
        assert rel(gf, gr) < 1e-10


def test_l1_functional_forms_agree():
    layer = l1_layer(in_f=8, out_f=5, K=3)
    x = torch.randn(6, 8, dtype=F64)
    p = [t.detach() for t in layer.params()]
    W = harmonic_weight(*p, 5, 8)
    assert rel(harmonic_linear(x, *p, 5), x @ W.t()) < 1e-12
    assert rel(harmonic_linear_reference(x, *p, 5), x @ W.t()) < 1e-12


def test_l1_reports_params_honestly():
    layer = HarmonicLinear(176, 704, 50, bias=True)
    assert layer.actual_params() == 5 * 50 + 704 == sum(p.numel() for p in layer.parameters())
    assert layer.dense_equivalent_params() == 176 * 704 + 704
    nb = HarmonicLinear(176, 704, 50, bias=False)
    assert nb.actual_params() == 250 == sum(p.numel() for p in nb.parameters())
    assert nb.dense_equivalent_params() == 176 * 704
    assert layer.weight.shape == (704, 176) and layer.weight.dtype == torch.float32


def test_l1_widths_are_positive_for_any_raw_value():
    layer = l1_layer()
    with torch.no_grad():
        layer.row_log_width.fill_(-30.0)
        layer.col_log_width.fill_(30.0)
    W = layer.weight
    assert torch.isfinite(W).all()


def l2_layer(in_f=23, out_f=31, K=40, N=8, seed=0) -> MetaHarmonicLinear:
    layer = MetaHarmonicLinear(in_f, out_f, K, N, bias=True, seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        layer.amp_coef.copy_(torch.randn(N + 1, generator=g, dtype=F64))
        for f, spread in zip(FIELDS[1:], (8.0, 6.0, 0.4, 0.4)):
            getattr(layer, f + "_coef")[1:].copy_(torch.randn(N, generator=g, dtype=F64) * spread)
        layer.bias.copy_(torch.randn(out_f, generator=g, dtype=F64))
    return layer


def test_l2_forward_and_gradients_match_reference():
    layer = l2_layer()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, layer.in_features, generator=g, dtype=F64)
    assert rel(layer(x), layer.forward_reference(x)) < 1e-10
    w_out = torch.randn(2, 5, layer.out_features, generator=g, dtype=F64)

    def grads(fn):
        layer.zero_grad()
        (fn(x) * w_out).sum().backward()
        return [p.grad.clone() for p in layer.parameters()]

    for gf, gr in zip(grads(layer), grads(layer.forward_reference)):
        assert rel(gf, gr) < 1e-10


def test_l2_param_count_does_not_grow_with_components():
    small, big = MetaHarmonicLinear(64, 64, 10, 8, bias=False), MetaHarmonicLinear(64, 64, 5000, 8, bias=False)
    assert small.actual_params() == big.actual_params() == 5 * 9 == sum(p.numel() for p in big.parameters())
    assert MetaHarmonicLinear(64, 64, 10, 32).actual_params() == 5 * 33 + 64


def test_l2_to_harmonic_is_the_same_function():
    layer = l2_layer()
    l1 = layer.to_harmonic()
    x = torch.randn(3, layer.in_features, dtype=F64)
    assert rel(l1(x), layer(x)) < 1e-12


@pytest.mark.parametrize("N", [8, 16, 32])
def test_from_harmonic_fits_a_generated_layer_exactly(N):
    source = l2_layer(K=64, N=N, seed=N)
    target = source.to_harmonic()  # an L1 layer generated from N meta-components
    fitted = MetaHarmonicLinear.from_harmonic(target, n_meta=N)
    assert fitted.n_meta == N and fitted.n_components == target.n_components
    for got, want in zip(fitted.component_params(), target.params()):
        assert rel(got.detach(), want.detach()) < 1e-10
    assert rel(fitted.weight.detach(), target.weight.detach()) < 1e-10
    x = torch.randn(4, target.in_features, dtype=F64)
    assert rel(fitted(x).detach(), target(x).detach()) < 1e-10
    assert fitted.fit_error < 1e-20
    with torch.no_grad():  # and whatever order the generated components were in
        perm = torch.randperm(target.n_components, generator=torch.Generator().manual_seed(0))
        for f in FIELDS:
            getattr(target, f).copy_(getattr(target, f)[perm])
    assert MetaHarmonicLinear.from_harmonic(target, n_meta=N).fit_error > 1e-6  # a shuffle is not smooth


def test_from_harmonic_on_an_arbitrary_layer_is_approximate_and_reports_its_error():
    target = l1_layer(in_f=40, out_f=40, K=50, seed=5)
    fitted = MetaHarmonicLinear.from_harmonic(target, n_meta=8)
    assert 0.0 < fitted.fit_error < 1.0
    assert fitted.actual_params() < target.actual_params()


def test_fields_order_is_the_params_order():
    layer = l1_layer()
    assert [getattr(layer, f) for f in FIELDS] == list(layer.params())


# ---- low-rank ------------------------------------------------------------------------------------

def test_lowrank_forward_and_gradients_match_reference():
    layer = LowRankLinear(30, 20, 4, bias=True, seed=1, dtype=F64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 7, 30, dtype=F64)
    assert rel(layer(x), layer.forward_reference(x)) < 1e-10
    w_out = torch.randn(3, 7, 20, dtype=F64)

    def grads(fn):
        layer.zero_grad()
        (fn(x) * w_out).sum().backward()
        return [p.grad.clone() for p in layer.parameters()]

    for gf, gr in zip(grads(layer), grads(layer.forward_reference)):
        assert rel(gf, gr) < 1e-10
    assert layer.actual_params() == 4 * 50 + 20 and layer.dense_equivalent_params() == 600 + 20


def test_lowrank_from_dense_is_the_truncated_svd():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(24, 16, generator=g, dtype=F64)
    b = torch.randn(24, generator=g, dtype=F64)
    full = LowRankLinear.from_dense(W, 16, b)
    assert rel(full.weight.detach(), W) < 1e-12
    S = torch.linalg.svdvals(W)
    for r in (1, 3, 8):
        lr = LowRankLinear.from_dense(W, r)
        err = float(((W - lr.weight.detach()) ** 2).sum())
        assert math.isclose(err, float((S[r:] ** 2).sum()), rel_tol=1e-9)  # Eckart-Young


def test_lowrank_with_activation_statistics_fits_outputs_better():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(20, 12, generator=g, dtype=F64)
    X = torch.randn(500, 12, generator=g, dtype=F64) * torch.linspace(0.05, 3.0, 12, dtype=F64)
    sigma = X.t() @ X / X.shape[0]
    U0, V0 = lowrank_factors(W, 3)
    U1, V1 = lowrank_factors(W, 3, sigma)
    out_err = lambda U, V: float(((X @ (W - U @ V).t()) ** 2).sum())  # noqa: E731
    assert out_err(U1, V1) < out_err(U0, V0)
    # optimal: equals the tail singular values of W sigma^(1/2)
    L = torch.linalg.cholesky(sigma)
    S = torch.linalg.svdvals(W @ L)
    assert math.isclose(out_err(U1, V1) / X.shape[0], float((S[3:] ** 2).sum()), rel_tol=1e-8)


def test_rank_for_params():
    assert rank_for_params(100, 50, 1500) == 10
    assert rank_for_params(100, 50, 10) == 1

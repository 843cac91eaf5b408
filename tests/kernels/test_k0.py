"""K0 spectral byte embeddings: PPMI of byte bigrams, truncated SVD, and blending into embeddings."""
import math

import numpy as np
import pytest
import torch

from kernels.k0 import align, bigram_counts, blend, cosine_rows, k0_embeddings, k0_init, ppmi


def two_symbol_corpus(n: int = 4000, seed: int = 0) -> bytes:
    """Runs of 'a' and of 'b' (each run 2..9 long): a follows a and b follows b far more than chance."""
    rng = np.random.default_rng(seed)
    out, sym = [], 0
    while len(out) < n:
        out.extend(["ab"[sym]] * int(rng.integers(2, 10)))
        sym ^= 1
    return "".join(out[:n]).encode()


def test_bigram_counts_and_ppmi_by_hand():
    data = b"abab"
    c = bigram_counts(data)
    assert c[ord("a"), ord("b")] == 2 and c[ord("b"), ord("a")] == 1 and c.sum() == 3
    m = ppmi(c)
    # p(a,b) = 2/3, p(a as left) = 2/3, p(b as right) = 2/3 -> log(1.5); p(b,a) = 1/3 / (1/3 * 1/3) -> log 3
    assert math.isclose(m[ord("a"), ord("b")], math.log(1.5), rel_tol=1e-12)
    assert math.isclose(m[ord("b"), ord("a")], math.log(3.0), rel_tol=1e-12)
    assert m[ord("a"), ord("a")] == 0.0 and (m >= 0).all()


def test_k0_of_a_two_symbol_corpus_separates_the_symbols():
    E = k0_embeddings(two_symbol_corpus(), 8)
    assert E.shape == (256, 8) and E.dtype == torch.float64
    a, b = E[ord("a")], E[ord("b")]
    assert float(a.norm()) > 0.1 and float(b.norm()) > 0.1
    cos = float(a @ b / (a.norm() * b.norm()))
    assert cos < 0.1  # clearly different directions (orthogonal here)
    unseen = [i for i in range(256) if i not in (ord("a"), ord("b"))]
    assert float(E[unseen].abs().max()) == 0.0


def test_k0_is_deterministic_and_its_roles():
    data = b"the cat sat on the mat; the dog sat on the log. " * 40
    E1, E2 = k0_embeddings(data, 16), k0_embeddings(data, 16)
    assert torch.equal(E1, E2)
    assert k0_embeddings(data, 16, role="right").shape == (256, 16)
    assert k0_embeddings(data, 15, role="both").shape == (256, 15)
    with pytest.raises(ValueError):
        k0_embeddings(data, 16, role="middle")
    # the singular-value scaling: column norms of U S^1/2 are sqrt of the singular values
    S = np.linalg.svd(ppmi(bigram_counts(data)), compute_uv=False)
    assert np.allclose(E1.norm(dim=0).numpy() ** 2, S[:16], rtol=1e-9)


def test_align_recovers_a_rotated_scaled_copy():
    g = torch.Generator().manual_seed(0)
    K = torch.randn(256, 6, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    target = 3.0 * K @ Q
    assert torch.allclose(align(K, target), target, atol=1e-10)


def test_blend_only_touches_dissimilar_known_rows():
    g = torch.Generator().manual_seed(1)
    K = torch.randn(256, 4, generator=g, dtype=torch.float64)
    K[200:] = 0.0  # bytes absent from the corpus
    E = K.clone()
    E[:50] = torch.randn(50, 4, generator=g, dtype=torch.float64)  # rows the K0 disagrees with
    E32 = E.to(torch.float32)
    out, rep = blend(E32, K, ratio=0.3, threshold=0.5, do_align=False)
    assert out.dtype == torch.float32
    cos = cosine_rows(E, K)
    pick = (cos < 0.5) & (K.abs().sum(1) > 0)
    assert rep["rows_blended"] == int(pick.sum()) > 0 and rep["rows_known"] == 200
    expect = torch.where(pick[:, None], 0.7 * E + 0.3 * K, E).to(torch.float32)
    assert torch.allclose(out, expect, atol=1e-6)
    assert torch.equal(out[200:], E32[200:]) and torch.equal(out[~pick], E32[~pick])
    assert rep["mean_cosine_after"] > rep["mean_cosine_before"]
    same, rep0 = blend(E32, K, ratio=0.0, do_align=False)
    assert torch.equal(same, E32)
    with pytest.raises(ValueError):
        blend(E32, K[:, :3])


def test_blend_aligns_k0_before_comparing():
    data = two_symbol_corpus() + b"abcabcabc" * 50
    K = k0_embeddings(data, 4)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    trained = (0.05 * K @ Q).to(torch.float32)  # the same geometry in other coordinates
    out, rep = blend(trained, K, threshold=0.5)
    assert rep["rows_blended"] == 0 and rep["mean_cosine_before"] > 0.99
    assert torch.equal(out, trained)


def test_k0_init_matches_the_scale_of_the_embedding_it_replaces():
    emb = torch.randn(256, 8, generator=torch.Generator().manual_seed(4)) * 0.02
    data = b"hello world, hello there. " * 100
    new = k0_init(emb, data)
    seen = sorted(set(data))
    assert math.isclose(float(new[seen].double().std()), 0.02, rel_tol=0.05)
    unseen = [i for i in range(256) if i not in seen]
    assert torch.equal(new[unseen], emb[unseen])

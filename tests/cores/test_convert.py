"""Conversion of a trained dense model's linear layers to L1 / L2 / low-rank, and its report."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cores
from cores import convert as cv
from cores import registry
from kernels.harmonic import HarmonicLinear, MetaHarmonicLinear, gaussian_profiles
from kernels.lowrank import LowRankLinear

GATE = 1.05


def word_chain(n_bytes: int, seed: int = 1) -> bytes:
    """A quickly learnable stream: a first-order chain over 16 short words."""
    g = torch.Generator().manual_seed(seed)
    letters = "etaoinshrdlu"
    words = ["".join(letters[int(i)] for i in torch.randint(0, 12, (int(torch.randint(2, 6, (1,), generator=g)),),
                                                              generator=g)) for _ in range(16)]
    nxt = torch.randint(0, 16, (16, 2), generator=g)
    out, w, size = [], 0, 0
    while size < n_bytes:
        w = int(nxt[w, int(torch.randint(0, 2, (1,), generator=g))])
        out.append(words[w] + " ")
        size += len(out[-1])
    return "".join(out).encode()[:n_bytes]


class TinyByteLM(nn.Module):
    """Next-byte MLP over the embeddings of the last ``ctx`` bytes: two nn.Linear layers to convert."""

    mvc_arch = "test-tiny-byte-lm"

    def __init__(self, d: int = 12, hidden: int = 24, ctx: int = 2):
        super().__init__()
        self.ctx = ctx
        self.mvc_config = {"d": d, "hidden": hidden, "ctx": ctx}
        self.emb = nn.Embedding(257, d)
        self.fc = nn.Linear(ctx * d, hidden)
        self.out = nn.Linear(hidden, 256)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, 256)
        B, T = ids.shape
        cols = [F.pad(ids, (i, 0), value=256)[:, :T] for i in range(self.ctx)]
        z = self.emb(torch.stack(cols, dim=-1)).reshape(B, T, -1)
        return self.out(F.gelu(self.fc(z)))


registry.register(TinyByteLM.mvc_arch, lambda cfg: TinyByteLM(**cfg))


def ppl(model: nn.Module, data: bytes) -> float:
    ids = torch.tensor(list(data))
    with torch.no_grad():
        logits = model(ids[None, :-1])[0]
    return math.exp(float(F.cross_entropy(logits.double(), ids[1:])))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = word_chain(30_000)
    train, held = data[:-3000], data[-3000:]
    ids = torch.tensor(list(train))
    model = TinyByteLM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        off = torch.randint(0, len(ids) - 65, (16,), generator=g)
        w = ids[off[:, None] + torch.arange(65)]
        loss = F.cross_entropy(model(w[:, :-1]).reshape(-1, 256), w[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    base = ppl(model, held)
    assert base < 4.0  # it learned the stream
    return model, held, base


def test_large_k_keeps_the_model_and_tiny_k_fails_the_gate(trained):
    model, held, base = trained
    big = cv.convert(model, "harmonic", n_components={"fc": 24 * 24, "out": 24 * 256})
    ratio_big = ppl(big, held) / base
    assert abs(ratio_big - 1.0) < 1e-3
    tiny = cv.convert(model, "harmonic", n_components=2, steps=20)
    ratio_tiny = ppl(tiny, held) / base
    assert ratio_tiny > GATE
    assert isinstance(tiny.fc, HarmonicLinear) and isinstance(model.fc, nn.Linear)  # the source is untouched
    rows = {r["layer"]: r for r in cv.compression_report(tiny)}
    assert rows["fc"]["params"] == 5 * 2 + 24 and rows["fc"]["dense_params"] == 24 * 24 + 24
    assert rows["out"]["ratio"] == pytest.approx((24 * 256 + 256) / (10 + 256))
    assert rows["fc"]["kind"] == "L1" and 0.0 < rows["fc"]["fit_error"] <= 1.0
    big_rows = cv.compression_report(big)
    assert all(r["ratio"] < 1.0 for r in big_rows)  # honest: exactness at this K costs more than dense


def test_lowrank_full_rank_is_exact_and_rank_one_fails(trained):
    model, held, base = trained
    full = cv.convert(model, "lowrank", rank=24)
    assert abs(ppl(full, held) / base - 1.0) < 1e-4
    one = cv.convert(model, "lowrank", rank=1)
    assert ppl(one, held) / base > GATE
    tot = cv.report_totals(one)
    assert tot["params"] == (24 + 24 + 24) + (24 + 256 + 256)
    assert tot["dense_params"] == 24 * 24 + 24 + 24 * 256 + 256
    assert tot["model_dense_params"] == sum(p.numel() for p in model.parameters())


def test_dense_to_l1_to_l2_and_equal_parameter_lowrank(trained):
    model, held, _ = trained
    l1 = cv.convert(model, "harmonic", n_components=40, steps=0)
    l2 = cv.convert(l1, "meta", n_meta=16)
    assert isinstance(l2.fc, MetaHarmonicLinear) and l2.fc.n_components == 40
    kinds = {r["layer"]: r["kind"] for r in cv.compression_report(l2)}
    assert kinds == {"fc": "L2", "out": "L2"}
    assert l2.mvc_config["base_arch"] == TinyByteLM.mvc_arch
    assert l2.mvc_config["layers"]["fc"] == {"kind": "meta", "n_components": 40, "n_meta": 16,
                                             "in": 24, "out": 24, "bias": True}
    direct = cv.convert(model, "meta", n_components=40, n_meta=16, steps=0)
    x = torch.randint(0, 256, (1, 50))
    assert torch.allclose(direct(x), l2(x), atol=1e-5)
    assert cv.rank_matching(24, 256, 200) == 1 and cv.rank_matching(24, 24, 240) == 5


def test_converted_model_rebuilds_from_its_config(trained):
    model, _, _ = trained
    conv = cv.convert(model, "harmonic", ["f*"], n_components=7, steps=0)
    conv = cv.convert(conv, "lowrank", "out", rank=3)
    assert conv.mvc_arch == cv.ARCH
    rebuilt = registry.build(conv.mvc_arch, conv.mvc_config)
    rebuilt.load_state_dict(conv.state_dict())
    x = torch.randint(0, 256, (2, 30))
    assert torch.equal(rebuilt(x), conv(x))
    assert isinstance(rebuilt.out, LowRankLinear) and isinstance(rebuilt.fc, HarmonicLinear)
    dense = cv.materialise(conv)
    assert isinstance(dense.fc, nn.Linear) and isinstance(dense.out, nn.Linear)
    assert dense.mvc_arch == TinyByteLM.mvc_arch and torch.allclose(dense(x), conv(x), atol=1e-5)


def test_layercake_core_converts_and_rebuilds():
    core = cores.build("layercake", config="tiny", seed=0)
    names = cv.linear_names(core, include="blocks.*.mlp.*")
    assert names == ["blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"]
    conv = cv.convert(core, "lowrank", names, ratio=4.0)
    conv.eval()
    x = torch.randint(0, 256, (1, 24))
    assert conv(x).shape == (1, 24, 256)
    rebuilt = registry.build("compressed", conv.mvc_config)
    rebuilt.load_state_dict(conv.state_dict())
    rebuilt.eval()
    assert torch.equal(rebuilt(x), conv(x))
    assert rebuilt.abi_spec.hash == core.abi_spec.hash
    tot = cv.report_totals(conv)
    assert tot["layers"] == 4 and 3.5 < tot["ratio"] < 4.5


def test_solve_amplitudes_recovers_known_amplitudes_direct_and_cg(monkeypatch):
    g = torch.Generator().manual_seed(0)
    out_f, in_f, K = 30, 20, 12
    rc, cc = torch.rand(K, generator=g, dtype=torch.float64) * 29, torch.rand(K, generator=g, dtype=torch.float64) * 19
    rw, cw = torch.full((K,), 0.2, dtype=torch.float64), torch.full((K,), 0.5, dtype=torch.float64)
    R, C = gaussian_profiles(rc, rw, out_f), gaussian_profiles(cc, cw, in_f)
    a = torch.randn(K, generator=g, dtype=torch.float64)
    W = (R.t() * a) @ C
    assert torch.allclose(cv.solve_amplitudes(W, R, C), a, atol=1e-8)
    X = torch.randn(200, in_f, generator=g, dtype=torch.float64)
    sigma = X.t() @ X / 200
    monkeypatch.setattr(cv, "DIRECT_SOLVE_MAX", 4)  # force the conjugate-gradient path
    assert torch.allclose(cv.solve_amplitudes(W, R, C), a, atol=1e-6)
    assert torch.allclose(cv.solve_amplitudes(W, R, C, sigma), a, atol=1e-6)
    assert torch.equal(cv.solve_amplitudes(W * 0, R, C), torch.zeros(K, dtype=torch.float64))  # (h40: it divided
    assert torch.equal(cv.solve_amplitudes(W, R, C, sigma * 0), torch.zeros(K, dtype=torch.float64))  # by zero)


def test_an_inplace_conversion_a_budget_misses_changes_nothing_and_materialise_keeps_the_rng():
    """A {layer: rank} dict missing a selected layer was found in the loop, after earlier layers had
    been replaced: the model was left half converted under its old architecture, and the message
    did not name the layer; materialise drew from torch's global generator (probe h40)."""
    core = cores.build("layercake", config="tiny", seed=0)
    names = cv.linear_names(core, include="blocks.*.mlp.*")
    before = {k: v.clone() for k, v in core.state_dict().items()}
    with pytest.raises(ValueError, match=f"layer '{names[-1]}': low-rank conversion needs rank= "):
        cv.convert(core, "lowrank", names, rank={n: 2 for n in names[:-1]}, inplace=True)
    with pytest.raises(ValueError, match="rank names 'blocks.9.mlp.fc', which is not a layer being converted"):
        cv.convert(core, "lowrank", names, rank={**{n: 2 for n in names}, "blocks.9.mlp.fc": 2}, inplace=True)
    assert core.mvc_arch == "layercake" and set(core.state_dict()) == set(before)
    assert all(torch.equal(core.state_dict()[k], v) for k, v in before.items())
    conv = cv.convert(core, "lowrank", names, rank=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cv.materialise(conv)
    assert torch.equal(torch.rand(3), expected)


def test_calibration_stats_and_activation_least_squares(trained):
    model, held, _ = trained
    stats = cv.calibration_stats(model, held, ["fc"], window=100, max_bytes=1000)
    ids = torch.tensor(list(held[:1000]))
    xs = []
    model.fc.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1]).double()))
    with torch.no_grad():
        for s in range(0, 999, 100):
            model(ids[s:s + 100][None])
    model.fc._forward_pre_hooks.clear()
    X = torch.cat(xs)
    assert stats["fc"]["rows"] == X.shape[0]
    assert torch.allclose(stats["fc"]["sigma"], X.t() @ X / X.shape[0], atol=1e-12)
    sigma = stats["fc"]["sigma"]
    W = model.fc.weight.detach().double()
    out_err = lambda layer: float(((X @ (W - layer.weight.detach().double()).t()) ** 2).sum())  # noqa: E731
    assert out_err(cv.fit_lowrank(model.fc.weight, 3, sigma=sigma)) < out_err(cv.fit_lowrank(model.fc.weight, 3))
    h_w = cv.fit_harmonic(model.fc.weight, 30, steps=0)
    h_a = cv.fit_harmonic(model.fc.weight, 30, sigma=sigma, steps=0)
    assert out_err(h_a) <= out_err(h_w) * (1 + 1e-9)
    calib = cv.convert(model, "lowrank", rank=3, calib=held)
    assert isinstance(calib.fc, LowRankLinear)


def test_freeze_centres_and_trainable_sets(trained):
    model, _, _ = trained
    W = model.fc.weight
    init = cv.init_centres(W, 10)
    frozen = cv.fit_harmonic(W, 10, freeze_centres=True, steps=50)
    assert torch.allclose(frozen.row_centre.double(), init["row_centre"].float().double())
    refined = cv.fit_harmonic(W, 10, steps=50)
    assert refined.fit_error <= frozen.fit_error
    conv = cv.convert(model, "harmonic", n_components=10, steps=0)
    n_amp = cv.set_trainable(conv, "amplitudes")
    assert n_amp == sum(p.numel() for p in conv.parameters()) - 4 * 10 * 2
    assert not conv.fc.row_centre.requires_grad and conv.fc.amp.requires_grad and conv.fc.bias.requires_grad
    assert cv.set_trainable(conv, "amplitudes", train_rest=False) == (10 + 24) + (10 + 256)
    assert cv.set_trainable(conv, "all") == sum(p.numel() for p in conv.parameters())


def test_init_centres_follow_the_weight_energy():
    W = torch.zeros(40, 30, dtype=torch.float64)
    W[5:8, 3:6] = 1.0     # two blocks of mass
    W[30:34, 20:25] = -2.0
    c = cv.init_centres(W, 2)
    got = sorted(zip(c["row_centre"].tolist(), c["col_centre"].tolist()))
    assert got[0] == pytest.approx((6.0, 4.0), abs=0.01) and got[1] == pytest.approx((31.5, 22.0), abs=0.01)
    layer = cv.fit_harmonic(W, 2, steps=100)
    assert layer.fit_error < 0.2


def test_bad_requests_are_refused(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match="kind"):
        cv.convert(model, "sparse", n_components=3)
    with pytest.raises(ValueError, match="n_components= or ratio="):
        cv.convert(model, "harmonic")
    with pytest.raises(ValueError, match="no linear layers"):
        cv.convert(model, "lowrank", "nothing.*", rank=1)


@pytest.mark.parametrize("kind", ["lowrank", "harmonic"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_weight_is_refused_naming_the_layer_before_any_is_replaced(kind, value):
    """A NaN weight made the fit fail with a raw torch linear-algebra error; an infinity was fitted
    into a converted model of non-finite weights without a word (probe h85)."""
    core = cores.build("layercake", config="tiny", seed=0)
    names = cv.linear_names(core, include="blocks.*.mlp.*")
    with torch.no_grad():
        core.get_submodule(names[-1]).weight[0, 0] = value
    before = {k: v.clone() for k, v in core.state_dict().items()}
    with pytest.raises(ValueError, match=f"layer '{names[-1]}': its weight holds 1 non-finite value"):
        cv.convert(core, kind, names, ratio=4.0, steps=2, inplace=True)
    assert core.mvc_arch == "layercake" and set(core.state_dict()) == set(before)
    assert all(torch.equal(core.state_dict()[k].nan_to_num(), v.nan_to_num()) for k, v in before.items())

"""Conversion of a trained dense core's nn.Linear layers to structured layers, and its honest report.

Kinds (kernels/): ``harmonic`` (L1, ``HarmonicLinear``), ``meta`` (L2, ``MetaHarmonicLinear``,
fitted through an L1 layer) and ``lowrank`` (truncated SVD, ``LowRankLinear``: the reference at
equal parameter count).

Fitting an L1 layer to a dense weight W (out, in):

1. centres: weighted k-means (k-means++ seeding up to 512 components, weighted sampling without
   replacement above) over the index grid (i, j) of W. The weight of entry (i, j) is its
   energy in the best rank-K approximation of W (|U_K S_K V_K^T|^2 at (i, j), truncated SVD): each
   component is a rank-one outer product, so K of them can at best reach that approximation, and
   the bumps go where its singular directions put their mass. Only the 4K + 4096 highest-energy entries take part; when there are no more of them than
   components, each becomes its own centre. Widths start at each cluster's weighted spread along
   each axis (at least ``min_width``).
2. amplitudes: exact least squares. The objective ||W - R^T diag(a) C||^2 (or, with calibration
   activations, E||x (W - W_hat)^T||^2 = tr(D Sigma D^T) with Sigma = E[x x^T]) is quadratic in a,
   with Gram matrix (R R^T) * (C Sigma C^T) and right-hand side diag(R W Sigma C^T); solved directly
   for K <= 2048, by Jacobi-preconditioned conjugate gradients above (no K x K matrix; stops at a
   residual of 1e-9 relative or 300 iterations). float64.
3. unless ``freeze_centres``: ``steps`` Adam steps on centres, widths and amplitudes together,
   then the amplitudes are solved again; the better of (2) and (3) is kept.

A converted model records ``mvc_arch = "compressed"`` and a config naming the base arch/config and
each replaced layer, so ``build_from_config`` (entry point ``mvc.archs: compressed``) rebuilds it and
a commit of it loads back through ``repo.load_model``. ``compression_report`` lists per layer its
actual params, dense-equivalent params (n*m, plus the bias when there is one) and compression ratio.
"""
from __future__ import annotations

import copy
import fnmatch
import math

import torch
from torch import nn

from cores import checks
from cores.base import keeps_global_rng
from kernels.harmonic import HarmonicLinear, MetaHarmonicLinear, gaussian_profiles
from kernels.lowrank import LowRankLinear

ARCH = "compressed"
KINDS = ("harmonic", "meta", "lowrank")
KIND_LABEL = {HarmonicLinear: "L1", MetaHarmonicLinear: "L2", LowRankLinear: "lowrank"}
STRUCTURED = (HarmonicLinear, MetaHarmonicLinear, LowRankLinear)
DIRECT_SOLVE_MAX = 2048
KMEANS_PP_MAX = 512


# ---- selecting layers and parameter budgets --------------------------------------------------------

def linear_names(model: nn.Module, include: list[str] | str | None = None,
                 exclude: list[str] | str | None = None, structured: bool = True) -> list[str]:
    """Names of the model's nn.Linear modules (and, with ``structured``, already converted layers),
    filtered by glob patterns (``"blocks.*.mlp.*"``)."""
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else (exclude or [])
    kinds = (nn.Linear,) + (STRUCTURED if structured else ())
    out = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, kinds):
            continue
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        out.append(name)
    return out


def components_for_ratio(in_features: int, out_features: int, ratio: float) -> int:
    """L1 components K so that 5K ~ n*m / ratio (at least 1)."""
    return max(1, int(round(in_features * out_features / (5.0 * ratio))))


def rank_for_ratio(in_features: int, out_features: int, ratio: float) -> int:
    """Low-rank rank r so that r (n + m) ~ n*m / ratio (at least 1)."""
    return max(1, int(round(in_features * out_features / (ratio * (in_features + out_features)))))


def rank_matching(in_features: int, out_features: int, params: int) -> int:
    """The rank whose factors hold the number of parameters closest to ``params`` (at least 1)."""
    return max(1, int(round(params / (in_features + out_features))))


# ---- calibration ---------------------------------------------------------------------------------

@torch.no_grad()
def calibration_stats(model: nn.Module, data: bytes, names: list[str], *, window: int | None = None,
                      max_bytes: int = 65536) -> dict[str, dict]:
    """Input statistics of the named layers on a calibration byte stream (the model in eval mode).

    -> {name: {"sigma": E[x x^T] (in, in) float64, "mean": E[x] (in,), "rows": int}}.
    """
    window = int(window or getattr(model, "block_bytes", 256))
    data = data[:max_bytes]
    if len(data) < 2:
        raise ValueError("calibration stream too short (need at least 2 bytes)")
    mods = dict(model.named_modules())
    acc: dict[str, dict] = {}
    hooks = []

    def make_hook(name):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            a = acc.setdefault(name, {"sigma": torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64),
                                      "sum": torch.zeros(x.shape[1], dtype=torch.float64), "rows": 0})
            a["sigma"] += x.t() @ x
            a["sum"] += x.sum(0)
            a["rows"] += x.shape[0]
        return hook

    for name in names:
        hooks.append(mods[name].register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        for start in range(0, max(len(data) - 1, 1), window):
            chunk = ids[start:start + window]
            if chunk.numel() >= 1:
                model(chunk[None])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name, a in acc.items():
        n = max(a["rows"], 1)
        out[name] = {"sigma": a["sigma"] / n, "mean": a["sum"] / n, "rows": a["rows"]}
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"layers never called on the calibration stream: {missing}")
    return out


# ---- L1 fitting ----------------------------------------------------------------------------------

def _energy_map(W: torch.Tensor, rank: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    r = max(1, min(rank, S.numel()))
    return ((U[:, :r] * S[:r]) @ Vh[:r]) ** 2


def init_centres(weight: torch.Tensor, n_components: int, *, seed: int = 0, iters: int = 10,
                 min_width: float = 0.35) -> dict[str, torch.Tensor]:
    """Centres and log-widths (float64, (K,) each) by weighted k-means on the SVD energy map
    (module docstring, step 1)."""
    W = weight.detach().to(torch.float64)
    out_f, in_f = W.shape
    K = int(n_components)
    energy = _energy_map(W, K).flatten()
    n_pts = min(energy.numel(), 4 * K + 4096)
    top = torch.topk(energy, n_pts).indices
    pts = torch.stack([torch.div(top, in_f, rounding_mode="floor"), top % in_f], dim=1).to(torch.float64)
    w = energy[top]
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    g = torch.Generator().manual_seed(int(seed))
    if K >= n_pts:
        centres = pts.clone()
        if K > n_pts:  # more components than grid points: the rest start at random grid points
            extra = torch.randint(0, n_pts, (K - n_pts,), generator=g)
            centres = torch.cat([centres, pts[extra]])
        widths = torch.full((K, 2), float(min_width), dtype=torch.float64)
    else:
        if K <= KMEANS_PP_MAX:
            centres = _kmeans_pp(pts, w, K, g)
        else:  # k-means++ is sequential in K: seed large K by weighted sampling without replacement
            centres = pts[torch.multinomial(w / w.sum(), K, replacement=False, generator=g)]
        for _ in range(iters):
            assign = _nearest(pts, centres)
            centres = _weighted_means(pts, w, assign, K, centres)
        assign = _nearest(pts, centres)
        widths = _weighted_spread(pts, w, assign, K, centres).clamp_min(min_width)
    return {"row_centre": centres[:, 0].contiguous(), "col_centre": centres[:, 1].contiguous(),
            "row_log_width": widths[:, 0].log().contiguous(), "col_log_width": widths[:, 1].log().contiguous()}


def _nearest(pts: torch.Tensor, centres: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    c32 = centres.to(torch.float32)
    out = []
    for s in range(0, pts.shape[0], chunk):
        d = torch.cdist(pts[s:s + chunk].to(torch.float32), c32)
        out.append(d.argmin(dim=1))
    return torch.cat(out)


def _kmeans_pp(pts: torch.Tensor, w: torch.Tensor, K: int, g: torch.Generator) -> torch.Tensor:
    """Weighted k-means++ seeding (deterministic for the generator)."""
    first = int(torch.multinomial(w / w.sum(), 1, generator=g))
    centres = [pts[first]]
    d2 = ((pts - pts[first]) ** 2).sum(1)
    for _ in range(1, K):
        p = w * d2
        tot = float(p.sum())
        idx = int(torch.multinomial(p / tot, 1, generator=g)) if tot > 0 else int(torch.randint(0, pts.shape[0], (1,), generator=g))
        centres.append(pts[idx])
        d2 = torch.minimum(d2, ((pts - pts[idx]) ** 2).sum(1))
    return torch.stack(centres)


def _weighted_means(pts, w, assign, K, old):
    num = torch.zeros(K, 2, dtype=torch.float64).index_add_(0, assign, pts * w[:, None])
    den = torch.zeros(K, dtype=torch.float64).index_add_(0, assign, w)
    return torch.where(den[:, None] > 0, num / den.clamp_min(1e-300)[:, None], old)


def _weighted_spread(pts, w, assign, K, centres):
    d2 = (pts - centres[assign]) ** 2
    num = torch.zeros(K, 2, dtype=torch.float64).index_add_(0, assign, d2 * w[:, None])
    den = torch.zeros(K, dtype=torch.float64).index_add_(0, assign, w)
    return (num / den.clamp_min(1e-300)[:, None]).sqrt()


def _objective(W: torch.Tensor, W_hat: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """Relative error: ||W - W_hat||^2 / ||W||^2, or tr(D S D^T) / tr(W S W^T) with calibration."""
    D = W - W_hat
    if sigma is None:
        return (D ** 2).sum() / (W ** 2).sum().clamp_min(1e-300)
    return ((D @ sigma) * D).sum() / ((W @ sigma) * W).sum().clamp_min(1e-300)


def solve_amplitudes(W: torch.Tensor, R: torch.Tensor, C: torch.Tensor, sigma: torch.Tensor | None = None,
                     *, ridge: float = 1e-12, cg_iters: int = 300, cg_tol: float = 1e-9) -> torch.Tensor:
    """Least-squares amplitudes (K,) for fixed profiles R (K, out), C (K, in); float64 (docstring, step 2)."""
    CS = C if sigma is None else C @ sigma  # (K, in)
    rhs = ((R @ W) * CS).sum(1)  # diag(R W S C^T)
    RR_diag = (R * R).sum(1)
    CSC_diag = (CS * C).sum(1)
    diag = RR_diag * CSC_diag
    lam = ridge * float(diag.mean().clamp_min(1e-300))
    K = R.shape[0]
    if not bool(rhs.any()):  # (a zero weight, or zero calibration inputs: the iteration below divided by 0)
        return torch.zeros_like(rhs)
    if K <= DIRECT_SOLVE_MAX:
        G = (R @ R.t()) * (CS @ C.t()) + lam * torch.eye(K, dtype=W.dtype)
        try:
            return torch.linalg.solve(G, rhs)
        except RuntimeError:
            return torch.linalg.lstsq(G, rhs[:, None]).solution[:, 0]

    def matvec(a):  # (Phi^T S Phi + lam) a, never forming the K x K Gram matrix
        W_hat = (R.t() * a) @ C  # (out, in)
        WS = W_hat if sigma is None else W_hat @ sigma
        return ((R @ WS) * C).sum(1) + lam * a

    M = 1.0 / (diag + lam)
    a = rhs * M
    r = rhs - matvec(a)
    z = r * M
    p = z.clone()
    rz = float(r @ z)
    r0 = float(rhs.norm()) or 1.0
    for _ in range(cg_iters):
        if float(r.norm()) <= cg_tol * r0:  # (a zero right-hand side: solved before the first step,
            break                           # whose step length would divide by zero)
        Ap = matvec(p)
        alpha = rz / float(p @ Ap)
        a = a + alpha * p
        r = r - alpha * Ap
        z = r * M
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return a


def _profiles(c: dict, out_f: int, in_f: int):
    R = gaussian_profiles(c["row_centre"], c["row_log_width"], out_f)
    C = gaussian_profiles(c["col_centre"], c["col_log_width"], in_f)
    return R, C


def fit_harmonic(weight: torch.Tensor, n_components: int, bias: torch.Tensor | None = None, *,
                 sigma: torch.Tensor | None = None, steps: int = 100, lr: float = 0.05,
                 freeze_centres: bool = False, seed: int = 0, min_width: float = 0.35) -> HarmonicLinear:
    """An L1 layer fitted to ``weight`` (out, in) (module docstring). ``sigma`` (in, in): input second
    moments from a calibration stream (activation least squares); None: least squares on the weight.
    ``freeze_centres``: keep the k-means centres and widths, fit only the amplitudes (the bias is
    always copied). ``steps`` / ``lr``: the Adam refinement otherwise. The result carries
    ``fit_error`` (relative squared error of the objective)."""
    W = weight.detach().to(torch.float64)
    sig = None if sigma is None else sigma.detach().to(torch.float64)
    out_f, in_f = W.shape
    c = init_centres(W, n_components, seed=seed, min_width=min_width)
    R, C = _profiles(c, out_f, in_f)
    amp = solve_amplitudes(W, R, C, sig)
    best = dict(c, amp=amp)
    with torch.no_grad():
        best_err = float(_objective(W, (R.t() * amp) @ C, sig))
    if steps > 0 and not freeze_centres and best_err > 1e-12:
        ps = {k: v.clone().requires_grad_(True) for k, v in best.items()}
        amp_scale = float(amp.abs().mean().clamp_min(1e-12))
        opt = torch.optim.Adam([
            {"params": [ps["row_centre"], ps["col_centre"]], "lr": lr * 2},
            {"params": [ps["row_log_width"], ps["col_log_width"]], "lr": lr},
            {"params": [ps["amp"]], "lr": lr * amp_scale},
        ])
        for _ in range(steps):
            Rp, Cp = _profiles(ps, out_f, in_f)
            loss = _objective(W, (Rp.t() * ps["amp"]) @ Cp, sig)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for k in ("row_log_width", "col_log_width"):
                    ps[k].clamp_(min=math.log(0.1))
        with torch.no_grad():
            cand = {k: v.detach() for k, v in ps.items()}
            R2, C2 = _profiles(cand, out_f, in_f)
            cand["amp"] = solve_amplitudes(W, R2, C2, sig)
            err = float(_objective(W, (R2.t() * cand["amp"]) @ C2, sig))
        if err < best_err:
            best, best_err = cand, err
    layer = HarmonicLinear(in_f, out_f, n_components, bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        for k in ("amp", "row_centre", "col_centre", "row_log_width", "col_log_width"):
            getattr(layer, k).copy_(best[k])
        if bias is not None:
            layer.bias.copy_(bias)
    layer.fit_error = best_err
    return layer


def fit_lowrank(weight: torch.Tensor, rank: int, bias: torch.Tensor | None = None, *,
                sigma: torch.Tensor | None = None) -> LowRankLinear:
    """Truncated-SVD layer (activation-weighted with ``sigma``); carries ``fit_error`` like ``fit_harmonic``."""
    layer = LowRankLinear.from_dense(weight.detach(), rank, None if bias is None else bias.detach(), sigma)
    W = weight.detach().to(torch.float64)
    sig = None if sigma is None else sigma.detach().to(torch.float64)
    with torch.no_grad():
        layer.fit_error = float(_objective(W, layer.U.to(torch.float64) @ layer.V.to(torch.float64), sig))
    return layer


# ---- whole-model conversion --------------------------------------------------------------------------

def _per_layer(value, name):
    return value.get(name) if isinstance(value, dict) else value


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def layer_spec(mod: nn.Module) -> dict:
    """JSON-able description of a structured layer (enough to rebuild an empty twin)."""
    spec = {"in": mod.in_features, "out": mod.out_features, "bias": mod.bias is not None}
    if isinstance(mod, MetaHarmonicLinear):
        return {"kind": "meta", "n_components": mod.n_components, "n_meta": mod.n_meta, **spec}
    if isinstance(mod, HarmonicLinear):
        return {"kind": "harmonic", "n_components": mod.n_components, **spec}
    if isinstance(mod, LowRankLinear):
        return {"kind": "lowrank", "rank": mod.rank, **spec}
    raise TypeError(f"not a structured layer: {type(mod).__name__}")


def skeleton(spec: dict) -> nn.Module:
    """An (unfitted) structured layer from ``layer_spec`` output."""
    kind = spec["kind"]
    if kind == "harmonic":
        return HarmonicLinear(spec["in"], spec["out"], spec["n_components"], spec["bias"])
    if kind == "meta":
        return MetaHarmonicLinear(spec["in"], spec["out"], spec["n_components"], spec["n_meta"], spec["bias"])
    if kind == "lowrank":
        return LowRankLinear(spec["in"], spec["out"], spec["rank"], spec["bias"])
    raise ValueError(f"unknown structured layer kind {kind!r} (choose from {', '.join(KINDS)})")


def convert(model: nn.Module, kind: str, layers: list[str] | str | None = None, *,
            ratio: float | None = None, n_components: int | dict | None = None, rank: int | dict | None = None,
            n_meta: int = 8, calib: bytes | None = None, calib_bytes: int = 65536, steps: int = 100,
            lr: float = 0.05, freeze_centres: bool = False, seed: int = 0, inplace: bool = False) -> nn.Module:
    """Replace the chosen linear layers of ``model`` by ``kind`` layers fitted to them.

    ``layers``: a name or glob pattern or a list of them, each of which must match a layer (default
    None: every nn.Linear; for ``kind="meta"`` every L1 layer if the model has any, else every
    nn.Linear). Budget: ``n_components`` (L1, and the intermediate L1 of an L2 fit from a dense
    layer) or ``rank`` (low-rank), each an int or a {layer: int} dict, or ``ratio`` (target
    compression of the layer's weights). ``n_meta``: L2 meta-components (8, 16, 32). Layers that
    are already L1 may be converted to L2 (``kind="meta"``) with no budget. ``calib``: a byte stream;
    when given, layers are fitted on activation least squares with input statistics recorded from
    the unconverted model. Returns the converted model (a deep copy unless ``inplace``), with
    ``mvc_arch = "compressed"`` (module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown conversion kind {kind!r} (choose from {', '.join(KINDS)})")
    _check_budget(ratio, n_components, rank, n_meta, steps, lr, seed, calib_bytes)
    if calib is not None:
        calib = checks.as_bytes(calib, "calib")
    names = _select_layers(model, kind, layers)  # the copy has the same names
    _check_layer_budgets(model, kind, names, ratio, n_components, rank)  # (before any layer is replaced)
    _check_finite_layers(model, names)
    if not inplace:
        model = copy.deepcopy(model)
    stats = calibration_stats(model, calib, names, max_bytes=calib_bytes) if calib is not None else {}
    base_arch, base_config, specs = _base_of(model)
    for name in names:
        mod = model.get_submodule(name)
        sigma = stats[name]["sigma"] if name in stats else None
        new = _convert_one(mod, kind, name, ratio=ratio, n_components=n_components, rank=rank, n_meta=n_meta,
                           sigma=sigma, steps=steps, lr=lr, freeze_centres=freeze_centres, seed=seed)
        ref = mod.weight if isinstance(mod, nn.Linear) else next(mod.parameters())
        new = new.to(device=ref.device, dtype=ref.dtype)
        _set_module(model, name, new)
        specs[name] = layer_spec(new)
    model.mvc_arch = ARCH
    model.mvc_config = {"base_arch": base_arch, "base_config": base_config, "layers": specs}
    return model


def _select_layers(model: nn.Module, kind: str, layers) -> list[str]:
    """The names ``convert`` replaces. Every pattern of ``layers`` must match a layer: a typo would
    otherwise leave its layer dense without a word, and an empty list would mean all of them."""
    if layers is None:  # every nn.Linear; for L2, every L1 layer when there are any
        names = [n for n, m in model.named_modules() if isinstance(m, HarmonicLinear)] if kind == "meta" else []
        names = names or linear_names(model, structured=False)
        if not names:
            raise ValueError(f"the model has no linear layers to convert ({type(model).__name__})")
        return names
    patterns = [layers] if isinstance(layers, str) else layers
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"layers must be a layer name or glob pattern or a list of them (or None for every "
                        f"linear layer), got {type(layers).__name__} {layers!r}")
    if not patterns:
        raise ValueError("layers is empty: pass layers=None to convert every linear layer")
    candidates = linear_names(model)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in candidates)]
    if unmatched:
        raise ValueError(f"no linear layers match {', '.join(map(repr, unmatched))} in layers "
                         f"(the model's linear layers: {', '.join(candidates[:8])}"
                         f"{', ...' if len(candidates) > 8 else ''})")
    return linear_names(model, include=patterns)


def _check_budget(ratio, n_components, rank, n_meta, steps, lr, seed, calib_bytes) -> None:
    """Budgets and settings of ``convert``: each of the right type and in range (cores/checks.py), so
    a rank of -3 or 1.5 is an error rather than a silent rank 1."""
    if ratio is not None:
        checks.real(ratio, "ratio", above=0.0)
    for name, value in (("n_components", n_components), ("rank", rank)):
        if isinstance(value, dict):
            for layer, v in value.items():
                checks.integer(v, f"{name}[{layer!r}]", 1)
        elif value is not None:
            checks.integer(value, name, 1)
    checks.integer(n_meta, "n_meta", 1)
    checks.integer(steps, "steps", 0)
    checks.real(lr, "lr", above=0.0, maximum=checks.MAX_LR)
    checks.seed(seed)
    checks.integer(calib_bytes, "calib_bytes", 2)


def _check_layer_budgets(model: nn.Module, kind: str, names: list[str], ratio, n_components, rank) -> None:
    """Every selected layer can be converted with the budget given, checked before any is replaced:
    an `inplace` conversion stopped at a layer a {layer: budget} dict missed left the model half
    converted under its old architecture. A dict key naming no selected layer is refused too."""
    budget = rank if kind == "lowrank" else n_components
    word = "rank" if kind == "lowrank" else "n_components"
    if isinstance(budget, dict):
        stray = sorted(set(budget) - set(names))
        if stray:
            raise ValueError(f"{word} names {', '.join(map(repr, stray))}, which is not a layer being converted "
                             f"(converted: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    for name in names:
        mod = model.get_submodule(name)
        if kind == "meta" and isinstance(mod, HarmonicLinear):
            continue
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"layer {name!r} is a {type(mod).__name__}; only nn.Linear layers (and L1 layers, "
                             f"to L2) can be converted")
        if _per_layer(budget, name) is None and not ratio:
            raise ValueError(f"layer {name!r}: {'low-rank' if kind == 'lowrank' else 'harmonic'} conversion needs "
                             f"{word}= or ratio=" + (" (a per-layer dict must name this layer)"
                                                     if isinstance(budget, dict) else ""))


def _check_finite_layers(model: nn.Module, names: list[str]) -> None:
    """Every selected layer's weights are finite, checked before any is replaced (as the budgets
    are): a NaN made the fits fail with a raw linear-algebra error, and an infinity was fitted
    into a "converted" layer of non-finite weights without a word."""
    for name in names:
        for pname, p in model.get_submodule(name).named_parameters():
            bad = ~torch.isfinite(p.detach())
            if bool(bad.any()):
                raise ValueError(f"layer {name!r}: its {pname} holds {int(bad.sum())} non-finite value(s); "
                                 f"NaN / infinity cannot be converted (a diverged model?)")


def _base_of(model: nn.Module) -> tuple[str | None, dict | None, dict]:
    arch = getattr(model, "mvc_arch", None)
    config = getattr(model, "mvc_config", None)
    if arch == ARCH and isinstance(config, dict):
        return config["base_arch"], config["base_config"], dict(config["layers"])
    return arch, (copy.deepcopy(config) if config is not None else None), {}


def _convert_one(mod, kind, name, *, ratio, n_components, rank, n_meta, sigma, steps, lr, freeze_centres, seed):
    if kind == "meta" and isinstance(mod, HarmonicLinear):
        return MetaHarmonicLinear.from_harmonic(mod, n_meta)
    if not isinstance(mod, nn.Linear):
        raise ValueError(f"layer {name!r} is a {type(mod).__name__}; only nn.Linear layers (and L1 layers, "
                         f"to L2) can be converted")
    out_f, in_f = mod.weight.shape
    if kind == "lowrank":
        r = _per_layer(rank, name) or (rank_for_ratio(in_f, out_f, ratio) if ratio else None)
        if r is None:
            raise ValueError("low-rank conversion needs rank= or ratio=")
        return fit_lowrank(mod.weight, r, mod.bias, sigma=sigma)
    K = _per_layer(n_components, name) or (components_for_ratio(in_f, out_f, ratio) if ratio else None)
    if K is None:
        raise ValueError("harmonic conversion needs n_components= or ratio=")
    l1 = fit_harmonic(mod.weight, K, mod.bias, sigma=sigma, steps=steps, lr=lr,
                      freeze_centres=freeze_centres, seed=seed)
    if kind == "harmonic":
        return l1
    return MetaHarmonicLinear.from_harmonic(l1, n_meta)


@keeps_global_rng  # (nn.Linear draws its initial weights from torch's global generator)
@torch.no_grad()
def materialise(model: nn.Module) -> nn.Module:
    """A deep copy with every structured layer replaced by an nn.Linear holding its materialised
    weight (the same function up to rounding; for export, and for fast evaluation of layers whose
    structured forward is slower than dense, e.g. L1 with K > n*m / (n + m)). The copy keeps the
    base model's ``mvc_arch`` / ``mvc_config``."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, STRUCTURED):
            W = m.weight
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=W.device, dtype=W.dtype)
            lin.weight.copy_(W)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
            _set_module(out, name, lin)
    if getattr(out, "mvc_arch", None) == ARCH:
        out.mvc_arch = out.mvc_config["base_arch"]
        out.mvc_config = copy.deepcopy(out.mvc_config["base_config"])
    return out


def build_from_config(config: dict) -> nn.Module:
    """Entry point ``mvc.archs: compressed``: the base core with empty structured layers in place."""
    from cores import registry
    model = registry.build(config["base_arch"], config["base_config"])
    for name, spec in config["layers"].items():
        _set_module(model, name, skeleton(spec))
    model.mvc_arch = ARCH
    model.mvc_config = copy.deepcopy(dict(config))
    return model


build_from_config.made_by = "cores.convert.convert(core, kind, ...)"  # from a trained core: no presets (registry)


def set_trainable(model: nn.Module, mode: str = "all", *, train_rest: bool = True) -> int:
    """Choose what a recovery fine-tune trains -> number of trainable parameters.

    ``all``: everything. ``amplitudes``: in L1 layers only amplitudes and biases (centres and widths
    frozen); in L2 layers the amplitude generator and biases (the generated centres and widths frozen); low-rank
    layers train fully. ``train_rest``: whether the model's other parameters train.
    """
    if mode not in ("all", "amplitudes"):
        raise ValueError("mode must be 'all' or 'amplitudes'")
    structured = {id(p) for m in model.modules() if isinstance(m, STRUCTURED) for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in structured:
            p.requires_grad_(train_rest)
    for m in model.modules():
        if isinstance(m, HarmonicLinear):
            for k in ("row_centre", "col_centre", "row_log_width", "col_log_width"):
                getattr(m, k).requires_grad_(mode == "all")
            m.amp.requires_grad_(True)
        elif isinstance(m, MetaHarmonicLinear):
            for k in ("row_centre", "col_centre", "row_log_width", "col_log_width"):
                getattr(m, k + "_coef").requires_grad_(mode == "all")
            m.amp_coef.requires_grad_(True)
        elif isinstance(m, LowRankLinear):
            m.U.requires_grad_(True)
            m.V.requires_grad_(True)
        if isinstance(m, STRUCTURED) and m.bias is not None:
            m.bias.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- reporting -------------------------------------------------------------------------------------

def compression_report(model: nn.Module) -> list[dict]:
    """One row per structured layer: layer, kind (L1 / L2 / lowrank), shape [out, in], size (K, rank,
    or N meta x K), params (actual), dense_params (n*m, plus bias if any), ratio, fit_error."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, STRUCTURED):
            continue
        size = {HarmonicLinear: lambda: f"K={m.n_components}", LowRankLinear: lambda: f"r={m.rank}",
                MetaHarmonicLinear: lambda: f"N={m.n_meta},K={m.n_components}"}[type(m)]()
        params, dense = m.actual_params(), m.dense_equivalent_params()
        rows.append({"layer": name, "kind": KIND_LABEL[type(m)], "shape": [m.out_features, m.in_features],
                     "size": size, "params": params, "dense_params": dense, "ratio": dense / params,
                     "fit_error": getattr(m, "fit_error", None)})
    return rows


def report_totals(model: nn.Module, rows: list[dict] | None = None) -> dict:
    """Totals over the structured layers and the whole model (converted layers counted both ways)."""
    rows = compression_report(model) if rows is None else rows
    params = sum(r["params"] for r in rows)
    dense = sum(r["dense_params"] for r in rows)
    model_params = sum(p.numel() for p in model.parameters())
    return {"layers": len(rows), "params": params, "dense_params": dense,
            "ratio": dense / params if params else float("nan"),
            "model_params": model_params, "model_dense_params": model_params - params + dense,
            "model_ratio": (model_params - params + dense) / model_params if model_params else float("nan")}


def _register() -> None:
    """Make ``registry.build("compressed", ...)`` work in this process even without the entry point."""
    from cores import registry
    registry.register(ARCH, build_from_config)


_register()

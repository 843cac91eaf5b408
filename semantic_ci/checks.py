"""The check kinds: exact-logits, ppl-ratio and migration. Each returns figures, thresholds and a
verdict, plus the resolved inputs a certificate needs to re-run it."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import blake3
import numpy as np
import torch

from mvc.errors import BadInput, ConfigError, MvcError, UnknownRevision
from mvc.repo import split_walk

from . import evaluate as ev
from .certificate import finite_figures
from .config import Check, CiConfig
from .models import AdapterFailed, BrickDoesNotAttach, ModelCache, import_adapter
from .probe import read_data


@dataclass
class Context:
    repo: object
    commit: str               # the candidate commit (full id)
    config: CiConfig
    models: ModelCache
    base: str | None = None   # --base: overrides every check's baseline
    # on-commit CI: (branch, its commit before the candidate landed; None when the candidate started it)
    moved: tuple[str, str | None] | None = None


def resolve_relative(repo, rev: str, candidate: str) -> str:
    """Resolve a baseline revision with HEAD meaning the candidate (HEAD~1 is its parent). Only
    HEAD and HEAD~N / HEAD^N are the candidate's: HEAD@{1} (the branch's reflog) and a branch
    named HEADS resolve as names (they read "<candidate id>@{1}" and "<candidate id>S"). A branch
    name this repository lacks is the fetched REMOTE/name when one remote's is here (origin's,
    of several): mvc.toml names `host-b`, a CI system's fresh repository holds origin/host-b."""
    m = re.fullmatch(r"HEAD((?:[~^][0-9]*)*)", rev)
    if not m:
        try:
            return repo.resolve(rev)
        except UnknownRevision as e:
            name, walk = split_relative(rev)
            fetched = _fetched_branches(repo, name) if not _resolves(repo, name) else None
            if not fetched:  # (host-b~2 past a local host-b's root is no reason to read origin's)
                raise
            if len(fetched) > 1 and "origin" not in fetched:
                raise UnknownRevision(f"no branch {name!r} here, and several remotes' were fetched: "
                                      f"{', '.join(sorted(fetched.values()))}", "name one of them") from e
            return repo.resolve((fetched.get("origin") or next(iter(fetched.values()))) + walk)
    try:
        return repo.resolve(candidate + m.group(1))
    except UnknownRevision as e:  # said of what was written, not of "<candidate id>~5"
        raise type(e)(e.message.replace(candidate + m.group(1), rev), e.hint) from None


class BadRevision(ConfigError):
    """A revision of mvc.toml that names nothing, or not a commit: an error (exit 3), never a skip."""


class PastRoot(Exception):
    """A relative revision (REV~N, REV^) that walks past a root commit: its check is `skipped`.
    `record` is what a certificate keeps so that `mvc verify` can re-check the reason from ids."""

    def __init__(self, record: dict):
        if record.get("unborn"):  # (on-commit CI of a branch's first commit: the branch had none before it)
            super().__init__(f"{record['key']} = {record['revision']!r} is the branch {record['unborn']} as it was "
                             f"before its first commit {record['root'][:12]}: it had no commit to compare with")
        else:
            super().__init__(f"{record['key']} = {record['revision']!r} goes past the root commit "
                             f"{record['root'][:12]}")
        self.record = record


DATA_KEYS = ("probe", "data", "domain_data", "general_data")  # check settings naming the data they read

def split_relative(rev: str) -> tuple[str, str]:
    """("main", "~2") for "main~2"; (rev, "") for a revision without a relative suffix (as
    Repo.resolve splits it: ASCII digits, in linear time)."""
    return split_walk(rev)


def walk_relative(repo, oid: str, path: str) -> str:
    """Apply a relative suffix (~N, ^N) to a commit id; PastRoot-free: raises LookupError(root id)
    when a step leaves a root commit, UnknownRevision when a merge parent does not exist."""
    for op, num in re.findall(r"([~^])([0-9]*)", path):
        n = int(num) if num else 1
        steps, which = (n, 1) if op == "~" else ((1, n) if n else (0, 0))
        for _ in range(steps):
            parents = repo.read_commit(oid)["parents"]
            if not parents:
                raise LookupError(oid)
            if len(parents) < which:
                raise UnknownRevision(f"commit {oid[:12]} has no parent {which}")
            oid = parents[which - 1]
    return oid


def where(ctx: Context, check: Check, key: str) -> str:
    """`mvc.toml: ci.checks[NAME].KEY`: how an error names the setting to fix."""
    return f"{ctx.config.source}: ci.checks[{check.name}].{key}"


def resolve_check_rev(ctx: Context, check: Check, key: str, rev: str) -> str:
    """The commit id a check's revision names, HEAD meaning the candidate. An unknown name, a tree
    or blob id, or any other unresolvable revision is a BadRevision naming the mvc.toml key; only
    a relative revision walking past a root commit (a first commit's HEAD~1) raises PastRoot, as
    does on-commit CI's baseline naming the branch a first commit started (it had no commit before)."""
    def bad(e: UnknownRevision) -> BadRevision:
        return BadRevision(f"{where(ctx, check, key)}: revision {rev!r} does not resolve: {e.message}",
                           "fix the revision in mvc.toml; see mvc log, mvc branch and mvc tag")
    base_rev, path = split_relative(rev)
    try:
        base = resolve_relative(ctx.repo, base_rev, ctx.commit)
    except UnknownRevision as e:
        raise bad(e) from None
    if key == "baseline" and not path and ctx.moved and base == ctx.commit and base_rev in branch_spellings(ctx.moved[0]):
        if ctx.moved[1] is None:  # a first commit: the branch was unborn (the candidate itself would pass, unmeasured)
            raise PastRoot({"key": key, "revision": rev, "unborn": ctx.moved[0], "root": ctx.commit})
        base = ctx.moved[1]  # the branch the candidate was committed to: as it was before (not the candidate)
    try:
        return walk_relative(ctx.repo, base, path)
    except LookupError as e:
        raise PastRoot({"key": key, "revision": rev, "from": base, "path": path, "root": e.args[0]}) from None
    except UnknownRevision as e:
        raise bad(e) from None


def _resolves(repo, rev: str) -> bool:
    try:
        repo.resolve(rev)
        return True
    except UnknownRevision:
        return False


def _fetched_branches(repo, name: str) -> dict[str, str]:
    """{remote: "REMOTE/name"} for the remote-tracking branches named `name`."""
    return {r.split("/", 3)[2]: r[len("refs/remotes/"):] for r in repo.refs.list("refs/remotes/")
            if r.split("/", 3)[3:] == [name]}


def branch_spellings(branch: str) -> tuple[str, ...]:
    return branch, f"heads/{branch}", f"refs/heads/{branch}"


def _self_comparison(ctx: Context, check: Check, out: dict) -> dict:
    """A note on a result whose baseline, named otherwise than by HEAD, is the candidate itself (a
    check of main's tip against main): it compared the model with itself, which always passes."""
    base = (out.get("inputs") or {}).get("baseline")
    rev = check.get("baseline")
    if ctx.base or not isinstance(base, dict) or base.get("commit") != ctx.commit or not isinstance(rev, str) \
            or split_relative(rev)[0] == "HEAD":
        return out
    note = (f"baseline {rev!r} is the checked commit {ctx.commit[:12]} itself: the check compared it with itself "
            "(name the commit to compare with, e.g. HEAD~1, or a tag)")
    return {**out, "note": f"{out['note']}; {note}" if out.get("note") else note}


def result(check: Check, status: str, figures=None, thresholds=None, inputs=None, env=None, note=None) -> dict:
    out = {"name": check.name, "kind": check.kind, "preset": check.preset, "status": status,
           "passed": {"passed": True, "failed": False}.get(status), "figures": figures or {},
           "thresholds": thresholds or {}, "inputs": inputs or {}, "params": check.params}
    if env:
        out["envelope"] = env
    if note:
        out["note"] = note
    return out


def _baseline(ctx: Context, check: Check) -> str:
    if ctx.base:
        return ctx.base  # --base: already resolved by the runner
    rev = check.get("baseline")
    if rev is None and check.get("roundtrip"):  # (compared with itself rebuilt: the candidate, as L2's HEAD)
        return ctx.commit
    if rev is None:
        raise BadRevision(f"{ctx.config.source}: ci.checks[{check.name}].baseline: this check needs a baseline revision",
                          "set baseline in mvc.toml or pass --base")
    return resolve_check_rev(ctx, check, "baseline", rev)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8).view(t.numel(), t.element_size())


def compare_logits(model_a, model_b, data: bytes, window: int) -> dict:
    """Bitwise comparison of two models' logits on `data` (raw bytes: -0 != +0, NaN == same NaN)."""
    max_delta, differing, first = 0.0, 0, None
    dig_a, dig_b = blake3.blake3(), blake3.blake3()
    dtype = None
    for off, chunk in ev.windows(data, window):
        la, lb = ev.window_logits(model_a, chunk), ev.window_logits(model_b, chunk)
        dtype = str(la.dtype).replace("torch.", "")
        dig_a.update(_bits(la).numpy().tobytes())  # (the raw bytes: numpy has no bfloat16)
        dig_b.update(_bits(lb).numpy().tobytes())
        if la.shape != lb.shape or la.dtype != lb.dtype:
            return {"max_abs_delta": None, "differing_positions": None, "first_differing_offset": off,
                    "note": f"logit shapes/dtypes differ: {tuple(la.shape)} {la.dtype} vs {tuple(lb.shape)} {lb.dtype}",
                    "logits_digest": None, "baseline_digest": None, "dtype": dtype}
        diff = (_bits(la) != _bits(lb)).any(dim=1).view(la.shape)  # per element: any byte differs
        rows = diff.view(la.shape[0], -1).any(dim=1)
        n = int(rows.sum())
        if n:
            differing += n
            if first is None:
                first = off + int(rows.nonzero()[0, 0])
            d = (la.to(torch.float64) - lb.to(torch.float64)).abs()
            # NaN vs a number, or inf vs another value: an infinite difference (never the largest
            # finite double, which nan_to_num gives +inf by default); equal bits differ by 0
            d = torch.nan_to_num(d, nan=math.inf, posinf=math.inf)
            d = torch.where(diff, d, torch.zeros_like(d))
            max_delta = max(max_delta, float(d.max()))
    return {"max_abs_delta": max_delta, "differing_positions": differing, "first_differing_offset": first,
            "logits_digest": dig_a.hexdigest(), "baseline_digest": dig_b.hexdigest(), "dtype": dtype}


@dataclass
class Prepared:
    """What both model-vs-baseline checks start from: the two models, the data and their ids."""

    component: str
    bricks: tuple
    adapter: str | None
    window: int
    base: str
    data: bytes
    data_id: str
    data_desc: str
    candidate: object

    def inputs(self, ctx: Context) -> dict:
        return {"candidate": ctx.models.inputs(ctx.commit, self.component),
                "baseline": ctx.models.inputs(self.base, self.component), "data": self.data_id,
                "data_desc": self.data_desc, "window": self.window, "bricks": list(self.bricks),
                "adapter": self.adapter}

    def baseline_model(self, ctx: Context):
        return ctx.models.get(self.base, self.component, self.bricks, self.adapter)


def read_check_data(ctx: Context, check: Check, key: str, default_bytes: int | None = None):
    """read_data for the setting `key` of a check: a file that cannot be read (or holds too little)
    is a ConfigError naming that key. A `blob:` reference (verify) fails as the object store says."""
    spec = check.get(key)
    if default_bytes is None:
        default_bytes = check.get("probe_bytes", ctx.config.probe_bytes)
    try:
        return read_data(ctx.repo, spec, default_bytes, ctx.config.files)
    except BadInput as e:
        if isinstance(spec, str) and spec.startswith("blob:"):
            raise
        raise ConfigError(f"{where(ctx, check, key)}: {e.message}",
                          e.hint or "relative paths start at the repository root") from None


def _require_component(ctx: Context, check: Check, commit: str, what: str, key: str, component: str) -> None:
    comps = ctx.repo.read_commit(commit)["components"]
    if component not in comps:
        raise ConfigError(f"{where(ctx, check, key)}: {what} {commit[:12]} has no component {component!r}",
                          f"it has: {', '.join(sorted(comps)) or 'none'}")


def adapter_key(ctx: Context, check: Check) -> str:
    """The mvc.toml key that set a check's adapter."""
    return where(ctx, check, "adapter") if check.get("adapter") else f"{ctx.config.source}: ci.adapter"


def prepare(ctx: Context, check: Check, data_key: str) -> Prepared | dict:
    """The prepared inputs of a check (PastRoot when its baseline is a first commit's HEAD~1).
    Settings that name nothing (a component, a brick, an adapter, a data file) are ConfigErrors
    naming their mvc.toml key, found before any model is built."""
    component = check.get("component", "core")
    bricks = tuple(check.get("bricks", ()))
    comps = [name if name.startswith("brick/") else f"brick/{name}" for name in bricks]
    adapter = check.get("adapter", ctx.config.adapter)
    # the candidate's own components first: one it lacks is an error even where the baseline is
    # past the root (a first commit's HEAD~1 would otherwise skip a misspelt component)
    _require_component(ctx, check, ctx.commit, "commit", "component", component)
    for i, comp in enumerate(comps):
        _require_component(ctx, check, ctx.commit, "commit", f"bricks[{i}]", comp)
    base = _baseline(ctx, check)
    _require_component(ctx, check, base, "baseline", "baseline", component)
    for i, comp in enumerate(comps):
        _require_component(ctx, check, base, "baseline", f"bricks[{i}]", comp)
    if adapter:
        import_adapter(adapter)  # AdapterFailed, named after its key by run_check
    data, data_id, desc = read_check_data(ctx, check, data_key)
    return Prepared(component, bricks, adapter, check.get("window", ctx.config.window), base, data, data_id, desc,
                    ctx.models.get(ctx.commit, component, bricks, adapter))


def run_exact_logits(ctx: Context, check: Check) -> dict:
    p = prepare(ctx, check, "probe")
    if isinstance(p, dict):
        return p
    if check.get("roundtrip"):  # L2: a commit/load round trip must reproduce the same model
        ref = _roundtrip(ctx, p.candidate, p.component, p.bricks, p.adapter)
    else:
        ref = p.baseline_model(ctx)
    figs = compare_logits(p.candidate, ref, p.data, p.window)
    tol = float(check.get("tolerance", 0.0))
    if figs["max_abs_delta"] is None:
        passed = False
    elif tol == 0:
        passed = figs["differing_positions"] == 0
    else:
        passed = figs["max_abs_delta"] <= tol
    return result(check, "passed" if passed else "failed", figs, {"tolerance": tol}, p.inputs(ctx),
                  ev.envelope(figs.get("dtype") or "?", p.window))


def _roundtrip(ctx: Context, model, component, bricks, adapter):
    """Rebuild the candidate from its own state dict (a save/load round trip)."""
    from .models import attach_stored_bricks, build_from_tree
    tree = ctx.repo.tree(ctx.commit, component)
    for _ in bricks or ():  # (the candidate has its bricks attached: the core is the innermost host)
        model = getattr(model, "host", model)
    state = {k: v.clone() for k, v in model.state_dict().items()} if hasattr(model, "state_dict") else \
        ctx.repo.load(ctx.commit, component)
    return attach_stored_bricks(ctx.repo, ctx.commit, bricks or (), build_from_tree(tree, state, adapter))


def ppl_data_key(params: dict) -> str:
    """The setting a ppl-ratio check reads its data from: `data`, else the probe (`probe`, a file
    in place of the built-in probe, or the built-in one)."""
    return "data" if params.get("data") is not None else "probe"


MIN_INTERVAL_WINDOWS = 10  # fewer windows than this: a ppl-ratio's bootstrap interval is noted as weak


def ppl_figures(cand, base, data: bytes, window: int, samples: int) -> dict:
    nll_c, count = ev.model_nll(cand, data, window)
    nll_b, _ = ev.model_nll(base, data, window)
    ppl_c, bpb_c = ev.ppl_bpb(nll_c, count)
    ppl_b, bpb_b = ev.ppl_bpb(nll_b, count)
    with np.errstate(all="ignore"):  # NaN / inf NLLs (a diverged model) give NaN / inf figures
        if np.isfinite(nll_c).all() and np.isfinite(nll_b).all():
            try:
                lo, hi = ev.bootstrap_ratio(nll_c, nll_b, count, samples)
            except OverflowError:
                lo = hi = math.inf
        else:
            lo = hi = math.nan
    return {"ppl": ppl_c, "baseline_ppl": ppl_b, "ratio": ev.ppl_ratio(nll_c, nll_b, count), "bpb": bpb_c, "baseline_bpb": bpb_b,
            "ratio_ci95": [lo, hi], "bytes": int(count.sum()), "windows": int(len(count))}


def run_ppl_ratio(ctx: Context, check: Check) -> dict:
    p = prepare(ctx, check, ppl_data_key(check.params))
    if isinstance(p, dict):
        return p
    figs = ppl_figures(p.candidate, p.baseline_model(ctx), p.data, p.window, check.get("bootstrap", 1000))
    max_ratio = float(check.get("max_ratio", 1.05))
    passed = figs["ratio"] <= max_ratio
    notes = []
    if figs["windows"] < MIN_INTERVAL_WINDOWS:  # (one window: an interval of zero width, which looked certain)
        notes.append(f"only {figs['windows']} window{'s' if figs['windows'] != 1 else ''} of {p.window} bytes: the "
                     "95% interval resamples too few to mean much; use more held-out data or a smaller window")
    if figs["ratio_ci95"][0] <= max_ratio < figs["ratio_ci95"][1]:
        notes.append("the 95% interval straddles the bound: use more held-out data for a stable verdict")
    note = "; ".join(notes) or None
    return result(check, "passed" if passed else "failed", figs, {"max_ratio": max_ratio}, p.inputs(ctx),
                  ev.envelope("float32", p.window), note)


def run_migration(ctx: Context, check: Check) -> dict:
    # resolve the source and hosts here first: a misspelt host is an error, not a skipped check;
    # so is a brick the source does not hold, a host without a core or an unreadable data file
    source = resolve_check_rev(ctx, check, "source", check.get("source", "HEAD"))
    hosts = [resolve_check_rev(ctx, check, f"hosts[{i}]", host) for i, host in enumerate(check.get("hosts") or ())]
    brick = check.get("brick") or ""
    _require_component(ctx, check, source, "source", "brick", brick if brick.startswith("brick/") else f"brick/{brick}")
    for i, host in enumerate(hosts):
        _require_component(ctx, check, host, "host", f"hosts[{i}]", "core")
    for key in ("domain_data", "general_data", "probe"):  # (its DATA_KEYS)
        spec = check.get(key)
        if spec and spec != "builtin" and not spec.startswith("blob:"):
            read_check_data(ctx, check, key, 0)
    try:
        from .migration import run_migration as impl
    except ImportError as e:
        return result(check, "skipped", inputs={"skipped": {"reason": "environment", "module": "semantic_ci.migration"}},
                      note=f"migration checks need the bricks package ({e})")
    return impl(ctx, check)


RUNNERS = {"exact-logits": run_exact_logits, "ppl-ratio": run_ppl_ratio, "migration": run_migration}


def _named(check: Check, e: MvcError) -> MvcError:
    """The error (its type, so its exit code, kept), its message naming the check."""
    if f"ci.checks[{check.name}]" not in e.message:
        e.message = f"check {check.name!r}: {e.message}"
        e.args = (e.message,)
    return e


def run_check(ctx: Context, check: Check) -> dict:
    """One check's result: `passed` or `failed` only when the models were measured. A relative
    baseline past the root commit gives `skipped`; a non-finite figure fails the check.

    Anything that keeps the check from measuring raises instead (exit 3, no certificate): a bad
    revision or another setting of mvc.toml naming nothing (a ConfigError naming the key), a
    missing or corrupt object (a lazy clone's unreachable remote included), unreadable data, or a
    user adapter that fails (AdapterFailed naming the adapter and its key), or a brick that does not
    attach (BrickDoesNotAttach, named after its key)."""
    try:
        out = RUNNERS[check.kind](ctx, check)
    except PastRoot as e:
        return result(check, "skipped", inputs={"skipped": e.record}, note=str(e))
    except AdapterFailed as e:
        if not e.message.startswith(ctx.config.source + ": "):
            e.message = f"{adapter_key(ctx, check)}: {e.message}"
            e.args = (e.message,)
        raise
    except BrickDoesNotAttach as e:
        e.message = f"{where(ctx, check, f'bricks[{e.index}]')}: {e.message}"
        e.args = (e.message,)
        raise
    except MvcError as e:
        raise _named(check, e)
    except OverflowError as e:  # a diverged model's figure left the float range
        return result(check, "failed", note=f"a figure is not finite (overflow: {e})")
    return finite_figures(_self_comparison(ctx, check, out))

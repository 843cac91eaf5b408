"""Running the configured checks on a commit and verifying stored certificates."""
from __future__ import annotations

import math

from mvc.errors import ConfigError, MvcError

from . import certificate
from . import config as cfgmod
from .checks import BadRevision, Context, PastRoot, resolve_check_rev, run_check, split_relative
from .config import Check, CiConfig
from .models import ModelCache


def run_ci(repo, rev: str | None = None, base: str | None = None, names=None, config: CiConfig | None = None,
           progress=None) -> dict:
    """Run the checks of mvc.toml (or `config`) on `rev`; store and return the certificate summary."""
    config = config or cfgmod.load(repo.root)
    if config is None:
        raise ConfigError(f"no {cfgmod.CONFIG_FILE} in {repo.root}", "add a [ci] table with [[ci.checks]]")
    if not config.checks:
        raise ConfigError(f"{config.source} defines no checks", "add [[ci.checks]] tables to its [ci] section")
    selected = config.select(names)
    commit = repo.resolve(rev)
    base_id = repo.resolve(base) if base else None
    ctx = Context(repo, commit, config, ModelCache(repo), base_id)
    results = []
    for check in selected:
        if progress:
            progress(check.name)
        results.append(run_check(ctx, check))
    cert = certificate.make(commit, results, base_id, config.source)
    cert_id = certificate.store(repo, cert)
    return summary(commit, cert_id, cert)


def summary(commit: str, cert_id: str, cert: dict) -> dict:
    return {"commit": commit, "passed": cert["passed"], "certificate": cert_id,
            "checks": [{"name": c["name"], "kind": c["kind"], "preset": c.get("preset"), "status": c["status"],
                        "passed": c["passed"], "figures": c["figures"], "thresholds": c["thresholds"],
                        "note": c.get("note")} for c in cert["checks"]]}


# -- verification -----------------------------------------------------------------------------
EXACT_KEYS = {"max_abs_delta", "differing_positions", "first_differing_offset", "logits_digest",
              "baseline_digest", "tensor_ids_equal", "identical"}
REL_TOL = 1e-6


def _close(a, b) -> bool:
    # strings include the "nan" / "inf" / "-inf" of non-finite figures: those must match exactly
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) \
            or isinstance(b, str):
        return a == b
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-12)


def _compare(stored: dict, fresh: dict, prefix="") -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(fresh)):
        a, b = stored.get(key), fresh.get(key)
        exact = key in EXACT_KEYS or key.endswith("digest")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _compare(a, b, f"{prefix}{key}.")
        elif (a != b) if exact else not _close(a, b):
            diffs.append(f"{prefix}{key}: certificate says {a!r}, re-run gives {b!r}")
    return diffs


def verify(repo, rev_or_cert: str) -> dict:
    """Re-run every check of a certificate from its recorded ids and compare the figures."""
    cert_id, cert, problems = certificate.locate(repo, rev_or_cert)
    config = CiConfig(source=cert.get("config") or "certificate")
    ctx = Context(repo, cert["commit"], config, ModelCache(repo), None)
    out = []
    if problems:  # a foreign, missing or unreadable certificate in the commit's index
        out.append({"name": "(certificate index)", "reproduced": False, "diffs": problems})
    for stored in cert["checks"]:
        if stored["status"] == "skipped":
            diffs = _recheck_skip(ctx, cert, stored)
            out.append({"name": stored["name"], "reproduced": not diffs, "diffs": diffs, "skipped": True})
            continue
        if stored["kind"] == "gate":
            from .pipeline import recheck_gate
            diffs = recheck_gate(repo, cert["commit"], stored)
            out.append({"name": stored["name"], "reproduced": not diffs, "diffs": diffs,
                        "note": "recorded training gate: checked against the commit's metrics"})
            continue
        params = dict(stored["params"])
        inputs = stored.get("inputs", {})
        # pin every name to the ids the certificate recorded: verify never re-resolves names
        if "baseline" in inputs:
            params["baseline"] = inputs["baseline"]["commit"]
        data_keys = {"exact-logits": {"data": "probe"}, "ppl-ratio": {"data": "data"},
                     "migration": {"domain_data": "domain_data", "general_data": "general_data",
                                   "data": "probe"}}[stored["kind"]]
        for input_key, param_key in data_keys.items():
            if inputs.get(input_key):
                params[param_key] = "blob:" + inputs[input_key]
        for key in ("hosts", "source", "window", "adapter"):
            if key in inputs:
                params[key] = inputs[key]
        check = Check(stored["name"], stored["kind"], params, stored.get("preset"))
        try:
            fresh = run_check(ctx, check)
        except MvcError as e:
            out.append({"name": stored["name"], "reproduced": False, "diffs": [f"re-run failed: {e}"]})
            continue
        diffs = _compare(stored["figures"], fresh["figures"])
        if stored["status"] != fresh["status"]:
            diffs.append(f"verdict: certificate says {stored['status']}, re-run gives {fresh['status']}"
                         + (f" ({fresh['note']})" if fresh.get("note") else ""))
        env_a, env_b = stored.get("envelope"), fresh.get("envelope")
        note = None
        if env_a and env_b and env_a != env_b:
            note = "execution envelope differs from the certificate's: exact figures may legitimately differ"
        out.append({"name": stored["name"], "reproduced": not diffs, "diffs": diffs, "note": note})
    consistent = cert["passed"] == all(c["status"] == "passed" for c in cert["checks"] if c["status"] != "skipped")
    if not consistent:
        out.append({"name": "(verdict)", "reproduced": False,
                    "diffs": ["the certificate's overall verdict does not follow from its checks"]})
    return {"certificate": cert_id, "commit": cert["commit"], "verified": all(c["reproduced"] for c in out),
            "checks": out, "index_problems": problems}


def _skip_revisions(stored: dict) -> list[tuple[str, str]]:
    """(key, revision) of what a check resolves, from its recorded parameters."""
    params = stored.get("params") or {}
    if stored["kind"] == "migration":
        return [("source", params.get("source", "HEAD"))] + \
            [(f"hosts[{i}]", h) for i, h in enumerate(params.get("hosts") or ())]
    return [("baseline", params["baseline"])] if params.get("baseline") else []


def _recheck_skip(ctx: Context, cert: dict, stored: dict) -> list[str]:
    """Why a `skipped` check does not hold up (empty when it does). A check is only skipped when a
    relative revision walks past a root commit (or its code is unavailable here): re-walk it from
    the ids the certificate recorded and confirm it still leaves the root."""
    rec = (stored.get("inputs") or {}).get("skipped") or {}
    name = stored["name"]
    if rec.get("reason") == "environment":
        try:
            __import__(rec.get("module") or "semantic_ci.migration")
        except ImportError:
            return []
        return [f"skipped because {rec.get('module')} could not be imported, but it imports here: re-run mvc ci"]
    if rec.get("from"):
        start, path, rev = rec["from"], rec.get("path") or "", rec.get("revision", "?")
        diffs = []
        base_rev, _ = split_relative(rev)
        if base_rev == "HEAD" and start != cert["commit"]:
            diffs.append(f"skip record: {rec.get('key')} = {rev!r} starts at {start[:12]}, not at the certified "
                         f"commit {cert['commit'][:12]}")
        try:
            oid = ctx.repo.resolve(start + path)
        except MvcError:
            return diffs  # still past the root (or gone): the recorded reason holds
        return diffs + [f"skipped because {rec.get('key')} = {rev!r} went past the root commit, but "
                        f"{start[:12]}{path} resolves to {oid[:12]}: the check should have run"]
    # no record (a certificate from an older mvc): re-derive the reason from the check's parameters
    check = Check(name, stored["kind"], stored.get("params") or {}, stored.get("preset"))
    revisions = _skip_revisions(stored)
    for key, rev in revisions:
        try:
            resolve_check_rev(ctx, check, key, rev)
        except PastRoot:
            return []
        except BadRevision as e:
            return [f"skipped, but {e.message}"]
    what = ", ".join(f"{k} = {r!r}" for k, r in revisions) or "nothing"
    return [f"skipped, but its revisions resolve ({what}): the check should have run"]

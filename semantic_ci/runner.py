"""Running the configured checks on a commit and verifying stored certificates."""
from __future__ import annotations

import json
import math
import os

from mvc.errors import ConfigError, MvcError, UnknownRevision
from mvc.objects import is_oid

from . import certificate
from . import config as cfgmod
from .checks import (BadRevision, Context, PastRoot, branch_spellings, ppl_data_key, resolve_check_rev,
                     resolve_relative, run_check, split_relative, walk_relative)
from .config import Check, CiConfig
from .models import ModelCache


def run_ci(repo, rev: str | None = None, base: str | None = None, names=None, config: CiConfig | None = None,
           progress=None, partial: bool = False, moved: tuple[str, str | None] | None = None) -> dict:
    """Run the checks of mvc.toml (or `config`) on `rev`; store and return the certificate summary.
    The certificate is partial (not mvc.toml's suite as it defines it) when asked, with a `base`,
    or when `names` leave checks out. `moved` (on-commit CI: the branch `rev` was just committed
    to, and its commit before) makes a baseline naming that branch (by its bare name: `main~1` is
    walked from the candidate's branch as it is) mean it as it was before: none, when the candidate
    started the branch (such a check is skipped, as a first commit's HEAD~1 is)."""
    config = config or cfgmod.load(repo.root)
    if config is None:
        raise ConfigError(f"no {cfgmod.CONFIG_FILE} in {repo.root}", "add a [ci] table with [[ci.checks]]")
    if not config.checks:
        raise ConfigError(f"{config.source} defines no checks", "add [[ci.checks]] tables to its [ci] section")
    selected = config.select(names)
    commit = repo.resolve(rev)
    try:
        base_id = resolve_relative(repo, base, commit) if base else None  # HEAD~1: the candidate's parent, as in mvc.toml
    except UnknownRevision as e:
        raise type(e)(f"--base {e.message}" if e.message.startswith(f"{base}:") else f"--base {base}: {e.message}",
                      e.hint) from None
    if base_id is not None and base_id == commit:
        raise ConfigError(f"--base {base} is {commit[:12]}, the commit checked: every check would compare it "
                          "with itself", "HEAD means REV here, as in mvc.toml: --base HEAD~1 is its parent")
    ctx = Context(repo, commit, config, ModelCache(repo), base_id, moved)
    results = []
    with repo.writing():  # from storing check data to the certificate naming it: a gc --grace 0 waits
        for check in selected:
            if progress:
                progress(check.name)
            results.append(run_check(ctx, check))
        partial = partial or base_id is not None or {c.name for c in selected} != {c.name for c in config.checks}
        cert = certificate.make(commit, results, base_id, _recorded_source(repo, config.source), partial)
        cert_id = certificate.store(repo, cert)
    return summary(commit, cert_id, cert)


def _recorded_source(repo, source: str | None) -> str | None:
    """The config's name as a certificate records it: relative to the repository, so that it
    travels to clones without this machine's paths."""
    if source and os.path.isabs(source):
        rel = os.path.relpath(source, repo.root)
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return source


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
        if key == "hosts" and isinstance(a, dict) and isinstance(b, dict) and a and all(len(h) == 12 for h in a):
            b = {h[:12]: v for h, v in b.items()}  # a certificate of mvc before 2026-11-23 keyed hosts by 12 hex
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _compare(a, b, f"{prefix}{key}.")
        elif (a != b) if exact else not _close(a, b):
            diffs.append(f"{prefix}{key}: certificate says {a!r}, re-run gives {b!r}")
    return diffs


def _digest_only(diffs: list[str]) -> bool:
    """Whether only logit digests differ: the absolute bits of the logits, which another CPU code
    path changes (AVX2 against AVX-512, another BLAS kernel) while every figure comparing two
    models, and so the verdict, reproduces. Editing a digest changes no verdict."""
    return bool(diffs) and all(d.split(":", 1)[0].rsplit(".", 1)[-1].endswith("digest") for d in diffs)


ENVELOPE_OF_THE_CHECK = ("batch",)  # envelope fields the check's settings give (its window), not the machine


def envelope_changes(stored: dict | None, fresh: dict | None) -> list[str]:
    """'threads 2 here, 1 in the certificate' for each field of the execution envelope that differs.
    The batch is the check's window, not this machine's: a window that differs is a difference of
    the check's definition (or an edited certificate), said as such, never blamed on the machine."""
    if not isinstance(stored, dict) or not isinstance(fresh, dict):
        return []
    return [f"{k} {fresh.get(k)!r} here, {stored.get(k)!r} in the certificate"
            for k in sorted(set(stored) | set(fresh))
            if stored.get(k) != fresh.get(k) and k not in ENVELOPE_OF_THE_CHECK]


BOUND_KEYS = ("tolerance", "max_ratio", "max_domain_ratio", "max_general_ratio")  # what a verdict is judged by
PASTE_GATE_KEYS = ("source", "hosts", "int8", "paste_gate")  # what mvc paste's gate sets on a migration check


class _Defined:
    """The checks mvc.toml defines at verify time (read once, when first needed): what a recorded
    check's parameters are compared with, since a certificate's own parameters can be edited."""

    def __init__(self, repo, cert: dict):
        self.repo, self.cert = repo, cert
        self._config: CiConfig | None | bool = False
        self._stage: tuple | None = None

    @property
    def stage(self):
        """A pipeline stage's certificate: the stage as its pipeline file (read from the repository
        root) defines it now, or None when it cannot be read here (`stage_problem` says why)."""
        if self._stage is None:
            from .pipeline_config import defined_stages
            stages, where = defined_stages(str(self.cert.get("config")), self.repo.root)
            fits = [s for s in stages if self._defines_as_recorded(s)]  # (an older label: the profile that made it)
            made = [s for s in fits if not _stage_binding(self, self.cert, s, where)]
            self._stage = ((made or fits or stages or [None])[0], where)
        return self._stage[0]

    def _defines_as_recorded(self, stage) -> bool:
        """Whether `stage` defines the checks and gates the certificate recorded as it recorded them
        (which of the stages an older mvc's label may stand for, one per profile of the file, it was
        made by): their kinds, settings (those naming `stage:`/`stream:` aside) and gates."""
        gates = [_normal(g) for g in stage.gates]
        for c in self.cert.get("checks") or []:
            params = c.get("params") if isinstance(c, dict) else None
            if not isinstance(params, dict):
                return False
            if c.get("kind") == "gate":
                gate = params.get("gate")
                if not (isinstance(gate, dict) and ("divergence" in gate or _normal(gate) in gates)):
                    return False
                continue
            now = next((x for x in stage.checks if x.name == c.get("name")), None)
            if now is None or (now.kind, now.preset) != (c.get("kind"), c.get("preset")):
                return False
            mine, theirs = _normal(now.params), _normal(params)
            if any(mine.get(k) != theirs.get(k) for k in set(mine) | set(theirs)
                   if not _names_stage_or_stream(mine.get(k))):
                return False
        return True

    @property
    def stage_problem(self) -> str:
        return "" if self.stage is not None else self._stage[1]

    @property
    def source(self) -> str:
        """Where the checks that judge this certificate are defined: mvc.toml, or the pipeline file."""
        if self.from_pipeline():
            return self._stage[1] if self.stage is not None else "the pipeline file"
        return self.config.source

    @property
    def config(self) -> CiConfig | None:
        """mvc.toml now (None when absent). One that cannot be read is an error, as for mvc ci: a
        certificate is never judged by its own bounds because mvc.toml has a typo. A pipeline
        stage's certificate (its checks live in the pipeline file) reads past it."""
        if self._config is False:
            try:
                self._config = cfgmod.load(self.repo.root)
            except MvcError:
                if not self.from_pipeline():
                    raise
                self._config = None
        return self._config

    def check(self, name: str) -> Check | None:
        """The check of that name mvc.toml (a pipeline stage's certificate: its stage) defines now."""
        if self.from_pipeline():
            return next((c for c in self.stage.checks if c.name == name), None) if self.stage else None
        return next((c for c in self.config.checks if c.name == name), None) if self.config else None

    def changed_thresholds(self, stored: dict) -> str | None:
        """A note when mvc.toml (or the stage's pipeline file) now sets other bounds for a check that
        ran (None when the same, or when it does not define the check)."""
        now = self.check(stored["name"])
        if now is None:
            return None
        params = stored.get("params") or {}
        changed = [k for k in BOUND_KEYS if _normal(now.params.get(k)) != _normal(params.get(k))]
        if not changed:
            return None
        return (f"{self.source} now sets " + ", ".join(
            f"{k} = {now.params[k]!r}" if k in now.params else f"{k} to its default" for k in changed)
            + " (certificate: " + ", ".join(f"{params.get(k)!r}" for k in changed) + ")"
            + f": the verdict was re-derived with {'the pipeline file' if self.from_pipeline() else 'mvc.toml'}'s "
              "bounds")

    def commit_stage_info(self) -> dict:
        """The pipeline record (extra.pipeline) of the certified commit; {} when it has none."""
        try:
            info = self.repo.read_commit(self.cert["commit"]).get("extra", {}).get("pipeline", {})
        except MvcError:
            return {}
        return info if isinstance(info, dict) else {}

    def commit_diverged(self) -> bool:
        """Whether the certified checkpoint diverged (its metrics say so)."""
        try:
            return bool(self.repo.read_commit(self.cert["commit"])["metrics"].get("diverged"))
        except MvcError:
            return False

    def commit_ended(self) -> bool:
        """Whether the certified checkpoint is its stage's last: the trainer's state it records has
        reached its total steps (a wall-clock stop sets the total to the step reached; a retry's or
        a compress stage's total is its own). True when that cannot be read: all is then required."""
        try:
            ts = self.repo.load(self.cert["commit"], "train_state")
            return int(ts["step"]) >= int(ts["total_steps"])
        except (MvcError, KeyError, TypeError, ValueError, RuntimeError):
            return True

    def from_pipeline(self) -> bool:
        from .pipeline_config import STAGE_MARK
        return STAGE_MARK in str(self.cert.get("config") or "")

    def stage_gate_diffs(self, stored: dict) -> tuple[dict | None, list[str]]:
        """A recorded training gate against the stage's gates now: (the gate to judge it by, diffs).
        A gate of the same metric (or the plateau gate) with other bounds judges it, with a note; one
        the stage no longer has cannot be confirmed (a certificate's gate can be edited)."""
        gate = (stored.get("params") or {}).get("gate")
        if not isinstance(gate, dict) or "divergence" in gate or self.stage is None:
            return gate, []
        now = [g for g in self.stage.gates if _normal(g) == _normal(gate)]
        if now:
            return gate, []
        same = [g for g in self.stage.gates if ("metric" in g and g.get("metric") == gate.get("metric"))
                or ("plateau" in g and "plateau" in gate)]
        if len(same) == 1:
            return same[0], [f"{self.source} now sets this gate as {_normal(same[0])!r} (certificate: "
                             f"{_normal(gate)!r}): the verdict was re-derived with the pipeline file's bounds"]
        return None, [f"{self.source} defines no such gate for stage {self.stage.name} now: the recorded gate "
                      "cannot be confirmed"]


def _normal(value):
    return json.loads(json.dumps(value, sort_keys=True))


def _definition_diffs(defined: _Defined, stored: dict, ignore=()) -> list[str]:
    """How a recorded check differs from the check of that name in mvc.toml (a stage's certificate:
    its stage in the pipeline file) now, empty when equal, leaving out the parameters in `ignore`
    (and a stage check's settings naming `stage:`/`stream:`, recorded resolved). A check that is not
    defined there is a difference too, unless there is no mvc.toml (or pipeline file) to read."""
    name = stored["name"]
    if (defined.stage if defined.from_pipeline() else defined.config) is None:
        return []
    now = defined.check(name)
    source = defined.source
    if now is None:
        return [f"{source} does not define a check named {name!r}" + (f" for stage {defined.stage.name}" if
                defined.from_pipeline() else "") + ": the recorded parameters cannot be confirmed"]
    diffs = []
    if (now.kind, now.preset) != (stored["kind"], stored.get("preset")):
        diffs.append(f"kind {now.preset or now.kind!r} there, {stored.get('preset') or stored['kind']!r} in the "
                     f"certificate")
    a, b = _normal(now.params), _normal(stored.get("params") or {})
    if defined.from_pipeline():  # a stage's check records the ids its `stage:` and `stream:` gave: those
        ignore = set(ignore) | {k for k, v in a.items() if _names_stage_or_stream(v)}  # settings alone
    for key in sorted((set(a) | set(b)) - set(ignore)):
        if a.get(key) != b.get(key):
            diffs.append(f"{key} {a.get(key)!r} there, {b.get(key)!r} in the certificate")
    diffs += _default_diffs(CiConfig() if defined.from_pipeline() else defined.config, now, stored)
    if diffs:
        return [f"{source} now defines check {name!r} differently (" + "; ".join(diffs) + ")"]
    return []


def _names_stage_or_stream(value) -> bool:
    """Whether a stage check's setting names a `stage:` result or a `stream:` (recorded resolved)."""
    if isinstance(value, list):
        return any(_names_stage_or_stream(v) for v in value)
    return isinstance(value, str) and value.startswith(("stage:", "stream:"))


def _default_diffs(config: CiConfig, now: Check, stored: dict) -> list[str]:
    """What a check takes from mvc.toml's [ci] table rather than its own (the window, the size of
    the built-in probe) against what the certificate recorded measuring: a [ci] change alters what
    the check measures as much as one to the check's own table does."""
    inputs = stored.get("inputs") if isinstance(stored.get("inputs"), dict) else {}
    out = []
    window = now.params.get("window", config.window)
    if "window" in inputs and inputs["window"] != window:
        out.append(f"window {window!r} there, {inputs['window']!r} in the certificate")
    from mvc.objects import hash_bytes
    from .probe import builtin_probe
    size = now.params.get("probe_bytes", config.probe_bytes)
    for input_key, param_key in DATA_KEYS.get(stored.get("kind"), {}).items():
        param_key = _data_setting(stored.get("kind"), now.params, param_key)
        if now.params.get(param_key, "builtin") == "builtin" and is_oid(str(inputs.get(input_key))) \
                and inputs[input_key] != hash_bytes(builtin_probe(size)):
            out.append(f"{param_key}: the built-in probe of {size} bytes there, other data in the certificate")
    return out


def verify(repo, rev_or_cert: str, progress=None) -> dict:
    """Re-run every check of a certificate from its recorded ids and compare the figures.

    A skipped check must still have its reason: its relative revision, re-walked from the recorded
    commit ids, goes past the root commit, and its recorded parameters are those mvc.toml defines
    for it now. A certificate with no checks, or a check that recorded an error instead of figures,
    does not verify. Errors while re-running (a missing or corrupt object) are reported per check."""
    cert_id, cert, problems = certificate.locate(repo, rev_or_cert)
    config = CiConfig(source=cert.get("config") or "certificate")
    ctx = Context(repo, cert["commit"], config, ModelCache(repo), None)
    defined = _Defined(repo, cert)
    defined.config  # an unreadable mvc.toml stops here, before anything runs
    out = []
    if problems:  # a foreign, missing or unreadable certificate in the commit's index
        out.append({"name": "(certificate index)", "reproduced": False, "diffs": problems})
    checks = cert.get("checks")
    if not isinstance(checks, list) or not checks:
        out.append({"name": "(certificate)", "reproduced": False,
                    "diffs": ["the certificate records no checks: it certifies nothing"]})
        checks = []
    for stored in checks:
        if progress and isinstance(stored, dict):
            progress(str(stored.get("name")))
        try:
            out.append(_verify_check(repo, ctx, cert, defined, stored))
        except (TypeError, ValueError, LookupError, AttributeError) as e:  # fields forged or edited
            out.append({"name": stored["name"], "reproduced": False,
                        "diffs": [f"the certificate's recorded parameters or inputs cannot be used "
                                  f"({type(e).__name__}: {str(e)[:120]}): it does not verify"]})
    out += _unconfirmed(defined, cert, checks)
    consistent = cert.get("passed") == all(c["status"] == "passed" for c in checks if c["status"] != "skipped")
    if not consistent:
        out.append({"name": "(verdict)", "reproduced": False,
                    "diffs": ["the certificate's overall verdict does not follow from its checks"]})
    return {"certificate": cert_id, "commit": cert["commit"], "verified": all(c["reproduced"] for c in out),
            "stage": str(cert.get("config")) if defined.from_pipeline() else None,  # (what judged it, if a stage)
            "passed": cert.get("passed") is True, "partial": bool(cert.get("partial")),
            "full_run_recorded": any(not c.get("partial") for _cid, c in certificate.index(repo, cert["commit"])[0]),
            "checks_run": [c.get("name") for c in checks],
            "failed": [c.get("name") for c in checks if c.get("status") == "failed"],
            "checks": out, "index_problems": problems}


def _unconfirmed(defined: "_Defined", cert: dict, checks: list) -> list[dict]:
    """What a certificate claims that verify cannot confirm from mvc.toml: with no mvc.toml here,
    the bounds its checks were judged by are its own (a looser bound could have been written in);
    a full run must record every check mvc.toml defines (one left out, or a partial run passed off
    as full, would certify a commit whose failing check is missing). A pipeline stage's
    certificate is judged by its pipeline file's stage: it must be readable here."""
    if defined.from_pipeline():
        if defined.stage is not None:
            missing = _stage_binding(defined, cert) + _stage_coverage(defined, cert, checks)
            return [{"name": "(coverage)", "reproduced": False, "config_changed": True, "diffs": missing}] \
                if missing else []
        return [{"name": "(bounds)", "reproduced": False,
                 "diffs": [f"the stage's pipeline file cannot be read here ({defined.stage_problem}): the bounds "
                           "this certificate judged its checks and gates by are its own claim, which verify does "
                           "not take on trust"],
                 "hint": "verify from the repository root of the work tree that holds the pipeline file"}]
    if defined.config is None:
        return [{"name": "(bounds)", "reproduced": False,
                 "diffs": ["there is no mvc.toml here: the bounds this certificate judged its checks by are "
                           "its own claim, which verify does not take on trust"],
                 "hint": "verify where the repository's mvc.toml is (its git work tree), which sets the bounds"}]
    if cert.get("partial"):
        return []
    recorded = {c.get("name") for c in checks if isinstance(c, dict)}
    missing = [c.name for c in defined.config.checks if c.name not in recorded]
    if not missing:
        return []
    return [{"name": "(coverage)", "reproduced": False, "config_changed": True,  # (or the certificate was edited)
             "diffs": [f"{defined.config.source} defines {', '.join(map(repr, missing))}, which this full run "
                       "does not record: a full run records every check mvc.toml defines"]}]


def _stage_binding(defined: "_Defined", cert: dict, stage=None, source: str | None = None) -> list[str]:
    """A training stage's certificate must be of one of that stage's own checkpoints, made with the
    settings and gates the labelled profile sets (those a fallback changes aside): one relabelled to
    another stage or a looser profile, or put on a commit no pipeline made, judged itself. (An
    evaluate stage's target is any commit its `source` named: it is not bound; a failed run writes no
    record of it, and a later run moves the stage's branch on.)"""
    stage, commit = stage or defined.stage, cert.get("commit")
    if stage.kind == "evaluate":
        return []
    info = defined.commit_stage_info()
    if (info.get("stage"), info.get("name"), info.get("status")) != (stage.name, stage.pipeline_name, "checkpoint"):
        return [f"commit {str(commit)[:12]} is no checkpoint of stage {stage.name} of pipeline "
                f"{stage.pipeline_name}: a certificate of it cannot be that stage's"]
    settings = info.get("settings") if isinstance(info.get("settings"), dict) else {}
    free = {"lr", "steps", *((stage.fallback or {}).get("set") or {})}  # (what a retry may change)
    other = sorted(k for k in set(settings) | set(stage.settings) if k not in free
                   and _normal(settings.get(k)) != _normal(stage.settings.get(k)))
    if "gates" in info and _normal(info["gates"]) != _normal(stage.gates):  # (recorded since this check)
        other.append("gates")
        settings, stage_settings = {**settings, "gates": info["gates"]}, {**stage.settings, "gates": stage.gates}
    else:
        stage_settings = stage.settings
    return [f"commit {str(commit)[:12]} was trained with other settings than {source or defined.source} sets for "
            f"stage {stage.name} (" + ", ".join(f"{k} {stage_settings.get(k)!r} there, {settings.get(k)!r} in the "
                                                "commit" for k in other[:3]) + ")"] if other else []


def _gate_name(gate) -> str | None:
    """The name a recorded gate result has (pipeline._evaluate_gates); None for no gate."""
    if not isinstance(gate, dict):
        return None
    return ("divergence gate" if "divergence" in gate else gate["check"] if "check" in gate else
            f"{gate['metric']} gate" if "metric" in gate else "plateau gate" if "plateau" in gate else None)


def _stage_coverage(defined: "_Defined", cert: dict, checks: list) -> list[str]:
    """What the stage defines that its certificate must record and does not: an evaluate stage's
    every check; a training stage's gates due at every checkpoint (`at = "checkpoint"`, plateau,
    every_checkpoint_checks), and once the stage ended (a certificate recording anything due only
    at the end, or of the checkpoint whose trainer state reached its total) every gate and check,
    the checks left out where the commit's metrics say it diverged. Each entry must carry its own
    name and kind, and a gate may not be recorded more often than the stage sets it (a failing one
    edited into a copy of a passing one)."""
    from collections import Counter
    stage = defined.stage
    recorded = [c for c in checks if isinstance(c, dict)]
    names = Counter(c.get("name") for c in recorded)
    gates = [(c.get("params") or {}).get("gate") for c in recorded if c.get("kind") == "gate"]
    check_names = {c.name for c in stage.checks}
    out = [f"the certificate records {c.get('name')!r} as a {c.get('kind')}, which stage {stage.name} does not"
           for c in recorded if (c.get("kind") == "gate") != (c.get("name") not in check_names)
           or (c.get("kind") == "gate" and (stage.kind == "evaluate"  # (an evaluate stage runs no gates)
                                            or c.get("name") != _gate_name((c.get("params") or {}).get("gate"))))]
    if stage.kind == "evaluate":
        required = [c.name for c in stage.checks]
    else:
        diverged = defined.commit_diverged()  # (the commit's metrics say so, not the certificate's entries)
        run = [g for g in stage.gates if not (diverged and "check" in g)]  # (a diverged model runs no checks)
        always = [_gate_name(g) for g in run if g.get("at") == "checkpoint" or "plateau" in g]
        always += [] if diverged else list(stage.get("every_checkpoint_checks") or [])
        at_end = [_gate_name(g) for g in run] + ([] if diverged else [
            c.name for c in stage.checks if c.name not in {g.get("check") for g in stage.gates}])
        ended = bool(set(names) - set(always) - {"divergence gate"}) or defined.commit_ended()
        required = (at_end if ended else always) + (["divergence gate"] if diverged else [])
    missing = sorted((Counter(required) - names).elements())
    out += [f"{defined.source} defines {', '.join(map(repr, missing))} for stage {stage.name}, which this "
            "certificate does not record"] if missing else []
    defined_gates = Counter(json.dumps(g, sort_keys=True) for g in stage.gates)
    copies = [g for g, n in Counter(json.dumps(g, sort_keys=True) for g in gates if isinstance(g, dict)).items()
              if g in defined_gates and n > defined_gates[g]]
    if copies:
        out.append(f"the certificate records the gate {copies[0]} more often than stage {stage.name} sets it")
    return out


DATA_KEYS = {"exact-logits": {"data": "probe"}, "ppl-ratio": {"data": "data"},
             "migration": {"domain_data": "domain_data", "general_data": "general_data", "data": "probe"}}


def _data_setting(kind: str, params: dict, param_key: str) -> str:
    """The setting of a check defined as `params` that its recorded data came from: a ppl-ratio
    check without `data` reads the probe (its `probe` file, or the built-in one)."""
    return ppl_data_key(params) if kind == "ppl-ratio" and param_key == "data" else param_key


def _verify_check(repo, ctx: Context, cert: dict, defined: "_Defined", stored: dict) -> dict:
    """One check of a certificate re-run (or re-checked) from its recorded ids."""
    if stored["status"] == "skipped":
        diffs = _definition_diffs(defined, stored)
        if diffs:
            diffs[0] += ": the reason for skipping cannot be confirmed (re-run mvc ci)"
        redone = _recheck_skip(ctx, cert, stored)
        return {"name": stored["name"], "reproduced": not (diffs or redone), "diffs": diffs + redone,
                "skipped": True, "config_changed": bool(diffs) and not redone}
    if stored["kind"] != "gate" and str(stored.get("note") or "").startswith("error:"):
        return {"name": stored["name"], "reproduced": False,
                "diffs": [f"the certificate records an error, not a measurement ({stored['note']}): "
                          f"re-run mvc ci"]}
    if stored["kind"] == "gate":
        if not defined.from_pipeline():
            return {"name": stored["name"], "reproduced": False,
                    "diffs": ["a training gate, which only mvc run's pipeline stages record, in a certificate that "
                              "is not a stage's: it certifies nothing"]}
        from .pipeline import recheck_gate
        gate, changed = defined.stage_gate_diffs(stored)
        if gate is None:
            return {"name": stored["name"], "reproduced": False, "diffs": changed, "config_changed": True}
        diffs = recheck_gate(repo, cert["commit"], {**stored, "params": {**(stored.get("params") or {}),
                                                                          "gate": gate}})
        return {"name": stored["name"], "reproduced": not diffs, "diffs": diffs,
                "note": "; ".join(["recorded training gate: checked against the commit's metrics", *changed]),
                **({"config_changed": True} if changed and diffs else {})}
    if stored["kind"] not in DATA_KEYS:
        return {"name": stored["name"], "reproduced": False,
                "diffs": [f"unknown check kind {stored['kind'][:40]!r}: it cannot be re-run"]}
    # what it measured must be what mvc.toml defines now (bounds aside: those are re-applied below),
    # and the ids it pinned must be what its revisions give from the certified commit
    # (a pipeline stage's checks live in its pipeline file: a same-named check in mvc.toml is another)
    paste_gate = stored["kind"] == "migration" and (stored.get("params") or {}).get("paste_gate") is True \
        and not defined.from_pipeline()  # (no stage makes one: mvc paste's gate is exempt, not a stage's check)
    drift = _definition_diffs(defined, stored, ignore=BOUND_KEYS + (PASTE_GATE_KEYS if paste_gate else ()))
    if paste_gate and not cert.get("partial"):
        drift.append("a paste gate's run (measured on the paste's own brick and host) is partial: it does not "
                     "stand for mvc.toml's checks")
    pinned = _pinned_revision_diffs(repo, cert, stored)
    params = dict(stored.get("params") or {})
    inputs = stored.get("inputs") or {}
    # pin every name to the ids the certificate recorded: verify never re-resolves names
    if "baseline" in inputs:
        params["baseline"] = inputs["baseline"]["commit"]
    for input_key, param_key in DATA_KEYS[stored["kind"]].items():
        if inputs.get(input_key):
            params[param_key] = "blob:" + inputs[input_key]
    for key in ("hosts", "source", "window"):
        if key in inputs:
            params[key] = inputs[key]
    refused = _adapter_refusal(defined, stored, params)
    if refused:
        return {"name": stored["name"], "reproduced": False, "diffs": [refused]}
    changed = defined.changed_thresholds(stored)
    if changed:  # judge by the bounds mvc.toml sets now: a certificate's own can be edited
        now = defined.check(stored["name"])
        for key in BOUND_KEYS:
            params.pop(key, None)
            if key in now.params:
                params[key] = now.params[key]
    check = Check(stored["name"], stored["kind"], params, stored.get("preset"))
    try:
        fresh = run_check(ctx, check)
    except MvcError as e:
        return {"name": stored["name"], "reproduced": False, "diffs": [f"re-run failed: {e}"]}
    diffs = _compare(stored["figures"], fresh["figures"])
    notes = []
    env_changes = envelope_changes(stored.get("envelope"), fresh.get("envelope"))
    if _digest_only(diffs):  # the logits' bits, not the comparison: this machine computes them otherwise
        notes.append("the logits differ bit for bit from the certificate's (" + ", ".join(
            d.split(":", 1)[0] for d in diffs) + "), but every figure comparing the models and the verdict "
            "reproduce: another CPU code path or library computes the same models' logits here"
            + (f" ({'; '.join(env_changes)})" if env_changes else " (the recorded envelope does not show how)"))
        diffs = []
    figures_reproduce = not diffs
    if stored["status"] != fresh["status"]:
        if changed and stored["status"] != "passed":  # looser bounds now: its recorded failure stands
            notes.append(f"it would pass under the bounds {defined.source} sets now")
        else:
            diffs.append(f"verdict: certificate says {stored['status']}, re-run gives {fresh['status']}"
                         + (f" under the bounds {defined.source} sets now" if changed else "")
                         + (f" ({fresh['note']})" if fresh.get("note") else ""))
    if env_changes and not notes:
        notes.append("execution envelope differs from the certificate's (" + "; ".join(env_changes)
                     + "): exact figures may legitimately differ")
    if changed:
        notes.append(changed)
    notes += _data_changed_since(repo, defined.check(stored["name"]), stored)
    diffs = pinned + drift + diffs
    return {"name": stored["name"], "reproduced": not diffs, "diffs": diffs, "note": "; ".join(notes) or None,
            "envelope_changes": env_changes,
            # what it measured is not what mvc.toml (or its stage) defines now: figures that then do
            # not reproduce are no sign of another machine
            "definition_changed": bool(drift),
            # only mvc.toml moved (its bounds or its definition of the check): the figures reproduce
            "config_changed": bool(diffs) and figures_reproduce and not pinned and bool(changed or drift)}


def _data_changed_since(repo, now: Check | None, stored: dict) -> list[str]:
    """Notes naming the data files the check's definition names that no longer hold the bytes the
    certificate measured (verify re-runs on the recorded bytes, so a certificate still reproduces
    after its data file changed; what it says then is about other data than the file holds now)."""
    from mvc.objects import hash_bytes
    from .probe import read_repository_file
    inputs, out = stored.get("inputs") or {}, []
    for input_key, param_key in DATA_KEYS[stored["kind"]].items():
        spec = now.params.get(_data_setting(stored["kind"], now.params, param_key)) if now is not None else None
        if not (isinstance(spec, str) and isinstance(inputs.get(input_key), str)) or spec.startswith("blob:") \
                or spec == "builtin":
            continue
        try:
            held = hash_bytes(read_repository_file(repo, spec))
        except MvcError:
            continue  # (gone or unreadable: the re-run used the recorded blob; mvc ci would say why)
        if held != inputs[input_key]:
            out.append(f"{spec} now holds other bytes ({held[:12]}) than this check measured "
                       f"({inputs[input_key][:12]}): the certificate speaks for those; mvc ci certifies the file as it is")
    return out


def _pinned_revision_diffs(repo, cert: dict, stored: dict) -> list[str]:
    """Where a check's recorded baseline (or migration source) is not the commit its revision gives
    from the certified commit: a certificate that compared the candidate with another model than
    its check names. Only revisions that name a fixed commit can be re-walked (HEAD-relative ones,
    full ids); a branch or tag may have moved since, so those are taken as recorded."""
    params, inputs = stored.get("params") or {}, stored.get("inputs") or {}
    wanted = []
    if isinstance(inputs.get("baseline"), dict) and "commit" in inputs["baseline"]:
        if cert.get("base"):  # --base replaced every baseline
            wanted.append(("baseline", "--base", cert["base"], inputs["baseline"]["commit"]))
        elif isinstance(params.get("baseline"), str):
            wanted.append(("baseline", params["baseline"], None, inputs["baseline"]["commit"]))
    if stored.get("kind") == "migration" and "source" in inputs:
        wanted.append(("source", str(params.get("source", "HEAD")), None, inputs["source"]))
    out = []
    for key, rev, expected, recorded in wanted:
        if expected is None:
            base_rev, path = split_relative(rev)
            if base_rev == "HEAD":
                start = cert["commit"]
            elif is_oid(base_rev):
                start = base_rev
            else:
                continue
            try:
                expected = walk_relative(repo, start, path)
            except (LookupError, MvcError) as e:
                out.append(f"{key} = {rev!r} cannot be walked from the certified commit {cert['commit'][:12]} "
                           f"({e.message if isinstance(e, MvcError) else 'past the root commit'})")
                continue
        if expected != recorded:
            out.append(f"{key} = {rev!r} is {str(expected)[:12]} from the certified commit, but the certificate "
                       f"ran against {str(recorded)[:12]}: it does not certify what its check names")
    return out


def _adapter_refusal(defined: "_Defined", stored: dict, params: dict) -> str | None:
    """Verify imports and calls only an adapter mvc.toml names for the check now: a certificate
    travels with pushes, and the module it names would otherwise run here. Sets params["adapter"]."""
    recorded = (stored.get("inputs") or {}).get("adapter") or (stored.get("params") or {}).get("adapter")
    params.pop("adapter", None)
    if not recorded:
        return None
    now = defined.check(stored["name"])
    staged = defined.from_pipeline()  # (a stage's check takes no adapter from mvc.toml's [ci])
    configured = (now.params.get("adapter") if now else None) or (
        defined.config.adapter if defined.config and not staged else None)
    if configured != recorded:
        where = (f"{defined.source} does not set for this check" if staged else
                 "mvc.toml here does not set for this check" if defined.config else "no mvc.toml here names")
        return (f"the certificate names adapter {str(recorded)[:80]!r}, which {where}: verify runs only "
                f"adapters mvc.toml names")
    params["adapter"] = configured
    return None


def _skip_revisions(stored: dict) -> list[tuple[str, str]]:
    """(key, revision) of what a check resolves, from its recorded parameters."""
    params = stored.get("params") or {}
    if stored["kind"] == "migration":
        return [("source", params.get("source", "HEAD"))] + \
            [(f"hosts[{i}]", h) for i, h in enumerate(params.get("hosts") or ())]
    return [("baseline", params["baseline"])] if params.get("baseline") else []


def _recheck_skip(ctx: Context, cert: dict, stored: dict) -> list[str]:
    """Why a `skipped` check does not hold up (empty when it does). A check is only skipped when a
    relative revision walks past a root commit (or its code is unavailable here, or on-commit CI's
    baseline named the branch a first commit started): re-walk it from the ids the certificate
    recorded and confirm it still leaves the root."""
    rec = (stored.get("inputs") or {}).get("skipped") or {}
    name = stored["name"]
    if rec.get("reason") == "environment":
        try:
            __import__(rec.get("module") or "semantic_ci.migration")
        except ImportError:
            return []
        return [f"skipped because {rec.get('module')} could not be imported, but it imports here: re-run mvc ci"]
    if rec.get("unborn"):
        return _recheck_unborn_skip(ctx, cert, stored, rec)
    if rec.get("from"):
        start, path, rev, key = rec["from"], rec.get("path") or "", rec.get("revision", "?"), rec.get("key")
        diffs = []
        recorded = dict(_skip_revisions(stored))
        if key not in recorded or recorded[key] != rev:
            diffs.append(f"skip record: {key} = {rev!r}, but the check's parameters give "
                         f"{key} = {recorded.get(key)!r}")
        base_rev, rel = split_relative(rev)
        if rel != path:
            diffs.append(f"skip record: {key} = {rev!r} is walked as {path!r}, not {rel!r}")
        if key == "baseline" and cert.get("base"):
            diffs.append(f"skip record: the baseline was given with --base ({str(cert['base'])[:12]}), so "
                         "it cannot have gone past the root commit")
        if base_rev == "HEAD" and start != cert["commit"]:
            diffs.append(f"skip record: {key} = {rev!r} starts at {str(start)[:12]}, not at the certified "
                         f"commit {cert['commit'][:12]}")
        try:
            oid = walk_relative(ctx.repo, start, path)
        except LookupError:
            return diffs  # still past the root: the recorded reason holds
        except MvcError as e:
            return diffs + [f"skip record: cannot walk {key} = {rev!r} from {str(start)[:12]}: {e.message}"]
        return diffs + [f"skipped because {key} = {rev!r} went past the root commit, but "
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


def _recheck_unborn_skip(ctx: Context, cert: dict, stored: dict, rec: dict) -> list[str]:
    """Why a check skipped as on-commit CI of a branch's first commit (its baseline naming that
    branch, which had no commit before) does not hold up: the certified commit must be a root
    commit, and the check's baseline that branch by name, not given with --base."""
    rev, branch, diffs = rec.get("revision"), str(rec.get("unborn")), []
    if rec.get("key") != "baseline" or (stored.get("params") or {}).get("baseline") != rev:
        diffs.append(f"skip record: {rec.get('key')} = {rev!r}, but the check's parameters give "
                     f"baseline = {(stored.get('params') or {}).get('baseline')!r}")
    if not isinstance(rev, str) or rev not in branch_spellings(branch):
        diffs.append(f"skip record: {rev!r} does not name the branch {branch!r}")
    if cert.get("base"):
        diffs.append(f"skip record: the baseline was given with --base ({str(cert['base'])[:12]}), so it "
                     "cannot have been an unborn branch")
    parents = ctx.repo.read_commit(cert["commit"])["parents"]
    if parents:
        diffs.append(f"skipped because {branch} had no commit before {cert['commit'][:12]}, but it has the parent "
                     f"{parents[0][:12]}: the check should have run")
    return diffs

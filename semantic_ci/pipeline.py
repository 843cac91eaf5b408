"""The pipeline driver behind `mvc run`: stages in order, a commit at every checkpoint, gates and
semantic CI on every commit, rollback + fallback on a failing gate, bit-exact resume after a kill,
and no work for a stage whose inputs (content ids + settings) already produced a result.

Every stage owns the branch `<pipeline>/<stage>` (a paste stage one per host,
`<pipeline>/<stage>/<host>`: `stage_branches`). Commits carry `extra.pipeline` = {stage, key,
attempt, settings, status: "checkpoint" | "done", step}. The key hashes the stage's settings, the
ids of its input streams, the result commits of the stages it reads and what its checks read (data
content ids, the commits their revisions name), so a finished stage is recognised on a re-run and a
changed input re-runs it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import warnings

from mvc.errors import CheckFailed, ConfigError, MvcError, RefConflict
from mvc.objects import canonical_json, hash_bytes

from . import certificate
from .checks import DATA_KEYS, Context, resolve_relative, result as check_result, run_check, split_relative
from .config import CiConfig
from .models import ModelCache, raised
from .pipeline_config import (DEFAULT_HOLDOUT, STREAM_SETTINGS, Pipeline, Stage, resolve_builder, stage_branches,
                              stage_source, step_budget, stream_path)
from .probe import read_repository_file

REVISION_KEYS = ("baseline", "source", "hosts")  # check settings naming commits


class PipelineFailed(MvcError):
    """A stage's gates kept failing after its retries (exit 1)."""

    exit_code = 1


class UpstreamMissing(MvcError):
    """A stage names the result of a stage that did not produce one (an optional stage failed)."""


class StageError(MvcError):
    """A stage could not run (its stream builder failed, its model could not be built): exit 3."""


def finite_metrics(metrics: dict) -> tuple[dict, list[str]]:
    """Metrics a commit can store (canonical JSON has no NaN or infinity): non-finite numbers become
    null, and the names of those metrics are returned; a training run that produced any diverged."""
    out, bad = {}, []
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            bad.append(k)
        else:
            out[k] = v
    return out, sorted(bad)


class Run:
    """State shared by the stages of one `mvc run`."""

    def __init__(self, repo, pipeline: Pipeline, emit=None):
        self.repo = repo
        self.pipeline = pipeline
        self.emit = emit or (lambda event: None)
        self.results: dict[str, str] = {}      # stage -> its result commit
        self.last_certificate: dict[str, str] = {}  # stage -> its latest gate certificate
        self.last_failure: dict[str, str] = {}  # stage -> the gates that failed last, for messages
        self._streams: dict[str, tuple] = {}

    # -- data ------------------------------------------------------------------------------------
    def stream(self, name: str) -> tuple[bytes, bytes, str]:
        """(train bytes, held-out bytes, blob id of the whole stream)."""
        if name not in self._streams:
            spec = self.pipeline.streams.get(name)
            if spec is None:
                raise ConfigError(f"{self.pipeline.path}: no stream {name!r}")
            t0 = time.perf_counter()
            where = f"{self.pipeline.path}: streams.{name}"
            if "file" in spec:
                try:
                    with open(stream_path(self.pipeline, spec), "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise StageError(f"{where}.file: cannot read {spec['file']!r} ({e.strerror or e})") from None
            else:
                builder = resolve_builder(self.pipeline, spec["builder"])
                try:
                    data = builder(**spec.get("args", {}))
                except MvcError:
                    raise
                except (Exception, SystemExit) as e:  # the user's builder failed: their error, not a bug in mvc
                    raise StageError(f"{where}: builder {spec['builder']} failed: {raised(e)}",
                                     "fix the builder or its args; MVC_DEBUG=1 shows the traceback") from e
                if isinstance(data, (bytearray, memoryview)):
                    data = bytes(data)
                if not isinstance(data, bytes):
                    raise StageError(f"{where}: builder {spec['builder']} returned {type(data).__name__}, not bytes")
            if len(data) < 2:
                raise StageError(f"{where}: the stream is empty" if not data else f"{where}: the stream is one byte")
            cut = len(data) - max(1, int(len(data) * spec["holdout"]))
            oid = self.repo.store.put(data)
            self._streams[name] = (data[:cut], data[cut:], oid)
            self.emit({"event": "stream", "name": name, "bytes": len(data), "id": oid,
                       "seconds": round(time.perf_counter() - t0, 3)})
        return self._streams[name]

    # -- references between stages ----------------------------------------------------------------
    def ref(self, value: str) -> str:
        """`stage:NAME` -> that stage's result commit; anything else is a revision."""
        if value.startswith("stage:"):
            name = value[6:]
            if name not in self.results:
                raise UpstreamMissing(f"stage {name} has no result", "it failed or has not run yet")
            return self.results[name]
        return self.repo.resolve(value)

    def branches(self, stage: Stage) -> dict[str, str]:
        """Result name -> branch for each branch the stage commits to (see `stage_branches`)."""
        return stage_branches(self.pipeline.name, stage)

    def branch(self, stage: Stage) -> str:
        """The branch of the stage's result: its own, or for a paste stage the last host's."""
        return list(self.branches(stage).values())[-1]

    def key(self, stage: Stage, inputs: dict) -> str:
        # a check's preset is keyed where one is set: presets that expand alike (L3, L4) certify other
        # claims, and a certificate keeps the one it ran under (the stage kept an L3 certificate for the
        # L4 check the file now sets, which verify refuses; h91). Stages naming no preset keep their keys.
        read = self._checks_read(stage)
        holdout = self._holdouts(stage)
        if holdout:  # (only where one is not the default: the keys of stages finished before stay)
            inputs = {**inputs, "holdout": holdout}
        return hash_bytes(canonical_json({"kind": stage.kind, "settings": stage.settings, "gates": stage.gates,
                                          "fallback": stage.fallback, "inputs": inputs,
                                          "checks": [[c.name, c.kind, c.params, *([c.preset] if c.preset else [])]
                                                     for c in stage.checks],
                                          **({"checks_read": read} if read else {})}))

    def _holdouts(self, stage: Stage) -> dict:
        """Stream -> holdout, for each stream the stage (or its fallback) trains or measures on whose
        holdout is not the default: the inputs name a stream by the id of all its bytes, which a new
        holdout leaves as it was, and the stage was skipped ("inputs unchanged") having trained and
        measured on another split (h91)."""
        named = {stage.get(k) for k in STREAM_SETTINGS} | {(stage.fallback.get("set") or {}).get(k)
                                                           for k in STREAM_SETTINGS}
        specs = {n: self.pipeline.streams.get(n) for n in named if isinstance(n, str)}
        return {n: spec["holdout"] for n, spec in sorted(specs.items())
                if spec is not None and spec.get("holdout", DEFAULT_HOLDOUT) != DEFAULT_HOLDOUT}

    def _checks_read(self, stage: Stage) -> dict:
        """What the stage's checks read beyond their settings as written: the content id of each data
        file and stream held-out tail, the commit of each revision not relative to the commit checked
        (`main`, not `HEAD~2`). A changed file or a moved branch runs the stage again; the key held
        only their names, and kept a certificate of other data. (Unreadable: left to the check.)"""
        out = {}
        for c in stage.checks:
            for k, v in c.params.items():
                ids = [self._read_id(k, x) for x in (v if isinstance(v, list) else [v])]
                if any(ids):
                    out[f"{c.name}.{k}"] = ids if isinstance(v, list) else ids[0]
        return out

    def _read_id(self, key: str, value) -> str | None:
        if not isinstance(value, str) or value.startswith("stage:"):  # (stage results: in the inputs)
            return None
        try:
            if key in DATA_KEYS:
                if value.startswith("stream:"):
                    return hash_bytes(self.stream(value[7:])[1])
                if value.startswith("blob:") or value == "builtin":
                    return None
                return hash_bytes(read_repository_file(self.repo, value))
            if key in REVISION_KEYS and split_relative(value)[0] != "HEAD":  # (a check's: as the check reads it)
                return resolve_relative(self.repo, value, "")
        except (MvcError, OSError):
            return None
        return None


def stage_info(repo, commit: str | None) -> dict:
    if not commit:
        return {}
    return repo.read_commit(commit).get("extra", {}).get("pipeline", {})


FINISHED_SEARCH = 1000  # commits of others (a user's paste onto a stage branch) looked past for a stage's own


def _first_parents(repo, tip: str | None):
    """`tip` and the commits of its first-parent line, FINISHED_SEARCH at most."""
    for _ in range(FINISHED_SEARCH):
        if not tip:
            return
        yield tip
        parents = repo.read_commit(tip)["parents"]
        tip = parents[0] if parents else None


def stage_commit(repo, head: str | None, stage_name: str) -> str | None:
    """The newest commit of stage `stage_name` on a branch whose tip is `head`: the tip, or the first
    one below commits the stage did not make (a user's commit on its branch, a paste into a host
    branch), which are kept; None when the branch holds none of its commits there."""
    return next((c for c in _first_parents(repo, head) if stage_info(repo, c).get("stage") == stage_name), None)


def start_over(run, stage, branch: str, key: str, to: str | None) -> None:
    """Before a stage moves `branch` to `to` (None: deletes it) to do its work anew: stop when the
    branch ends in commits the pipeline did not make above the stage's own (a user's, which would
    leave the branch), naming them; else say that it starts over from the tip it had."""
    repo = run.repo
    head = repo.branches().get(branch)
    if head is None or head == to:
        return
    own = stage_commit(repo, head, stage.name)
    # none of the stage's own commits: a user's branch under the stage's name, unless its tip is a start
    # the pipeline put there that has moved on since (a brick branch at a host commit below the new one)
    if own is None and not stage_info(repo, head) and head not in _first_parents(repo, to):
        raise StageError(f"{run.pipeline.path}: stage {stage.name}: branch {branch} holds commits the pipeline "
                         f"did not make (its tip is {head[:12]})", f"keep them on a branch of their own (mvc "
                         f"branch NAME {head[:12]}), then mvc branch -d {branch}, and run again")
    if own is not None and own != head:
        info = stage_info(repo, own)
        why = (f"a killed run's checkpoint {own[:12]} lies below them" if info.get("key") == key
               and info.get("status") == "checkpoint" else "the stage starts over: its inputs or settings changed")
        raise StageError(f"{run.pipeline.path}: stage {stage.name}: branch {branch} ends in commits the pipeline "
                         f"did not make (its tip is {head[:12]}) above the stage's own {own[:12]}; {why}",
                         f"keep them on a branch of their own (mvc branch NAME {head[:12]}), move {branch} back to "
                         f"{own[:12]} (mvc switch {branch}; mvc rollback {own[:12]}; then mvc switch back), and run "
                         "again")
    same = own is not None and stage_info(repo, own).get("key") == key  # (the same work, left unfinished)
    run.emit({"event": "restart", "stage": stage.name, "branch": branch, "old": head,
              "reason": "a killed run left it unfinished" if same else "its inputs or settings changed"})


def finished(run, stage, branch: str, key: str) -> str | None:
    """The commit that finished `stage` on `branch` with these inputs (`key`), if one did: a re-run
    skips the stage (a commit made on its branch since stays, and the stage's result is its own)."""
    repo = run.repo
    head = repo.branches().get(branch)
    own = stage_commit(repo, head, stage.name)
    info = stage_info(repo, own)
    if info.get("key") != key or info.get("status") != "done":
        return None
    run.emit({"event": "skip", "stage": stage.name, "branch": branch, "commit": own, "reason": "inputs unchanged",
              **({"kept": head} if own != head else {})})
    return own


# -- gates ------------------------------------------------------------------------------------------
def evaluate_gates(run: Run, stage: Stage, commit: str, history: list[dict], at_end: bool) -> tuple[bool, str]:
    """Evaluate the gates due at this commit, store them as a certificate; (passed, certificate id)."""
    with run.repo.writing():  # from storing check data to the certificate naming it: a gc --grace 0 waits
        return _evaluate_gates(run, stage, commit, history, at_end)


def _evaluate_gates(run: Run, stage: Stage, commit: str, history: list[dict], at_end: bool) -> tuple[bool, str]:
    repo = run.repo
    results = []
    ctx = Context(repo, commit, CiConfig(source=certificate_source(run, stage)), ModelCache(repo))
    from .config import Check
    from .stages import resolve_stage_refs
    checks = {c.name: Check(c.name, c.kind, {k: resolve_stage_refs(run, v) for k, v in c.params.items()}, c.preset)
              for c in stage.checks}
    metrics = repo.read_commit(commit)["metrics"]
    unknown = [g["metric"] for g in stage.gates if "metric" in g and g["metric"] not in metrics]
    if unknown:  # a misspelt metric: said at the first checkpoint, not after every retry
        recorded = sorted(k for k in metrics if k not in ("attempt", "diverged", "nonfinite"))
        raise ConfigError(f"gate metric {unknown[0]!r} is not one this stage records",
                          "it records: " + ", ".join(recorded))
    diverged = bool(metrics.get("diverged"))
    if diverged:  # a failed gate whatever the stage declares: rollback and fallback follow
        bad = metrics.get("nonfinite") or []
        results.append(_gate_result({"divergence": True}, "divergence gate", {"value": "diverged", "nonfinite": bad},
                                    {"metrics": "finite"},
                                    False, f"training diverged: {', '.join(bad) or 'a metric'} not finite"))
    for g in stage.gates:
        due = at_end or g.get("at") == "checkpoint" or "plateau" in g
        if not due:
            continue
        if "metric" in g:
            value = metrics.get(g["metric"])
            ok = value is not None and ("max" not in g or value <= g["max"]) and ("min" not in g or value >= g["min"])
            note = None
            if value is None:
                note = (f"metric {g['metric']} is not finite (diverged)" if g["metric"] in (metrics.get("nonfinite") or [])
                        else f"metric {g['metric']} was not recorded")
            results.append(_gate_result(g, f"{g['metric']} gate", {"value": value},
                                        {k: g[k] for k in ("max", "min") if k in g}, ok, note))
        elif "plateau" in g:
            k = g.get("patience", 3)
            losses = [h.get("loss_last10", h.get("loss")) for h in history[-k:]]
            earlier = [h.get("loss_last10", h.get("loss")) for h in history[:-k]]
            best_before = min((v for v in earlier if v is not None), default=None)
            stuck = plateau_stuck(losses, best_before, g)
            results.append(_gate_result(g, "plateau gate", {"recent_losses": losses, "best_before": best_before},
                                        {"plateau_above": g["plateau"], "patience": k}, not stuck,
                                        f"loss stayed above {g['plateau']} for {k} checkpoints" if stuck else None))
        elif "check" in g and not diverged:  # checks on non-finite weights measure nothing
            results.append(run_check(ctx, checks[g["check"]]))
    if at_end and not diverged:  # stage checks not referenced by a gate still run (and gate) at the end
        named = {g.get("check") for g in stage.gates}
        results += [run_check(ctx, c) for c in checks.values() if c.name not in named]
    elif stage.get("every_checkpoint_checks") and not diverged:
        results += [run_check(ctx, checks[n]) for n in stage.get("every_checkpoint_checks") if n in checks]
    if not results:
        return True, ""
    cert = certificate.make(commit, results, None, certificate_source(run, stage))
    return cert["passed"], certificate.store(repo, cert)


def plateau_stuck(losses: list, best_before: float | None, gate: dict) -> bool:
    """True when the last `patience` checkpoint losses all stay above `plateau` without improving
    on the best earlier loss by at least 1%."""
    k = gate.get("patience", 3)
    return (len(losses) >= k and all(v is not None and v > gate["plateau"] for v in losses)
            and (best_before is None or min(losses) > best_before * 0.99))


def _gate_result(gate, name, figures, thresholds, ok, note=None) -> dict:
    from .config import Check
    return check_result(Check(name, "gate", {"gate": gate}), "passed" if ok else "failed", figures, thresholds,
                        note=note)


def recheck_gate(repo, commit: str, stored: dict) -> list[str]:
    """Verify a recorded training gate: a metric gate must match the commit's recorded metric and
    its verdict must follow from figures and thresholds (training history is not re-run)."""
    gate = (stored.get("params") or {}).get("gate")
    if not isinstance(gate, dict) or not ({"divergence", "metric", "plateau"} & set(gate)):
        return ["the certificate records no gate it could be re-checked against: it certifies nothing"]
    diffs = []
    if "divergence" in gate:
        ok = not repo.read_commit(commit)["metrics"].get("diverged")
    elif "metric" in gate:
        value = repo.read_commit(commit)["metrics"].get(gate["metric"])
        if value != stored["figures"].get("value"):
            diffs.append(f"value: certificate says {stored['figures'].get('value')!r}, the commit records {value!r}")
        ok = value is not None and ("max" not in gate or value <= gate["max"]) and ("min" not in gate or value >= gate["min"])
    else:  # the losses it judged are the checkpoints' recorded metrics (the certificate's own are a claim)
        f = stored["figures"]
        key = (repo.read_commit(commit).get("extra", {}).get("pipeline") or {}).get("key")
        history = _history(repo, commit, key) if key else []
        k = gate.get("patience", 3)
        losses = [h.get("loss_last10", h.get("loss")) for h in history[-k:]]
        best_before = min((v for v in (h.get("loss_last10", h.get("loss")) for h in history[:-k]) if v is not None),
                          default=None)
        if history and (losses != f.get("recent_losses") or best_before != f.get("best_before")):
            diffs.append(f"recent losses: certificate says {f.get('recent_losses')!r} (best before "
                         f"{f.get('best_before')!r}), the checkpoints record {losses!r} (best before {best_before!r})")
        elif not history:
            diffs.append("the certified commit is no checkpoint of a pipeline stage: its plateau gate's losses "
                         "cannot be re-checked")
        ok = not plateau_stuck(losses, best_before, gate)
    if ok != (stored["status"] == "passed"):
        diffs.append(f"verdict: certificate says {stored['status']}, its figures say {'passed' if ok else 'failed'}")
    return diffs


# -- the driver ---------------------------------------------------------------------------------------
def run_pipeline(repo, pipeline: Pipeline, from_stage: str | None = None, emit=None) -> dict:
    """Run the stages in order; returns the summary. A stage that fails its gates ends the run
    with `passed` false; any other error is raised with the summary so far attached as
    `error.pipeline_summary` (its failing stage recorded with status "error")."""
    from .stages import IMPLS
    if from_stage is not None:
        pipeline.stage(from_stage)  # ConfigError naming the stages there are
    run = Run(repo, pipeline, emit)
    started = from_stage is None
    summary = {"event": "summary", "pipeline": pipeline.name, "profile": pipeline.profile, "stages": [],
               "passed": True}
    try:
        _check_branches_free(run, pipeline)
        with contextlib.ExitStack() as held:
            for lock in _branch_locks(run, pipeline):
                held.enter_context(lock)
            _check_revisions(run, pipeline, from_stage)
            _check_data_paths(run, pipeline, from_stage)
            _run_stages(run, pipeline, from_stage, started, summary, IMPLS)
    except Exception as e:
        summary["passed"] = False
        summary.setdefault("error", str(e) if isinstance(e, MvcError) else f"unexpected {type(e).__name__}: {e}")
        summary["results"] = dict(run.results)
        e.pipeline_summary = summary
        raise
    summary["results"] = dict(run.results)
    return summary


def _branch_locks(run: Run, pipeline: Pipeline) -> list:
    """A lock per branch the stages commit to (`.mvc/locks/run/BRANCH.lock`), held for the whole
    run: a second run of the pipeline (the same command in another terminal, or one with changed
    settings, which starts a stage over) committed onto the same branches at once, each taking the
    other's checkpoints for its parents. Not waited for: the second run is refused, naming the
    first; one a killed run left on this host is broken."""
    from mvc.files import LockFile
    branches = sorted({b for stage in pipeline.stages for b in run.branches(stage).values()})
    return [LockFile(os.path.join(run.repo.dir, "locks", "run", *b.split("/")) + ".lock", timeout=0,
                     what=f"branch {b} (a run of pipeline {pipeline.name} or another pipeline committing to it)")
            for b in branches]


def _check_branches_free(run: Run, pipeline: Pipeline) -> None:
    """Every branch the stages commit to exists or can be made: one that clashes with an existing
    branch (`host-b` against `host-b/main`) or with another stage's is refused before the first
    stage trains, not after the stages before it have."""
    names = [b for stage in pipeline.stages for b in run.branches(stage).values()]
    twice = next((b for i, b in enumerate(names) if b in names[:i]), None)
    if twice:
        raise ConfigError(f"{pipeline.path}: two stages commit to branch {twice!r}: each would take the other's "
                          "head for its own and start again", "set another branch for one of the stages")
    for b in names:
        clash = next((o for o in names if o.startswith(b + "/")), None)
        if clash:
            raise ConfigError(f"{pipeline.path}: stage branches {b!r} and {clash!r} clash: a name cannot also be "
                              "a folder of names", "set another branch for one of the stages")
        run.repo.refs.check_free(f"refs/heads/{b}")


def _check_revisions(run: Run, pipeline: Pipeline, from_stage: str | None) -> None:
    """Every revision the stages that will run name (not `stage:NAME`, not relative to the commit a
    check measures, not a branch a stage makes) resolves: a misspelt host was found only after the
    stages before it had trained. A branch an earlier stage makes is taken on trust; one the stage
    itself or a later stage makes is refused: it did not exist yet when the stages before had trained
    (or, on a re-run, held a result of another run, its own moving its key every run, h91)."""
    made = {b: (i, result) for i, stage in enumerate(pipeline.stages) for result, b in run.branches(stage).items()}
    names = [s.name for s in pipeline.stages]
    for at, stage in enumerate(pipeline.stages):
        if from_stage and at < names.index(from_stage):
            continue
        named = [(key, stage.get(key)) for key in ("host", "source", "init")]
        named += [(f"into[{i}]", v) for i, v in enumerate(stage.get("into") or [])]
        named += [(f"checks.{c.name}.{key}", v) for c in stage.checks for key in REVISION_KEYS
                  for v in (c.params.get(key) if isinstance(c.params.get(key), list) else [c.params.get(key)])]
        for key, value in named:
            if not isinstance(value, str) or value.startswith("stage:"):
                continue
            base = split_relative(value)[0]
            if key.startswith("checks.") and base == "HEAD":
                continue
            base = re.sub(r"@\{[^{}]*\}$", "", base)  # (x@{1}: the branch x as it was)
            base = base.removeprefix("refs/heads/") if base.startswith("refs/heads/") else base.removeprefix("heads/")
            if base in made:  # (the branch as any spelling names it: refs/heads/x, heads/x, x)
                maker, result = made[base]
                if maker < at:
                    continue
                if maker == at:
                    raise ConfigError(f"{pipeline.path}: stage {stage.name}.{key}: {value!r} is the stage's own "
                                      "branch", "name the result of an earlier stage: stage:NAME")
                raise ConfigError(f"{pipeline.path}: stage {stage.name}.{key}: {value!r} is the branch of stage "
                                  f"{pipeline.stages[maker].name}, which runs after it",
                                  f"move stage {stage.name} after it and name its result (stage:{result})")
            try:  # (a check's revision as the check reads it: a branch here, else origin's fetched one)
                resolve_relative(run.repo, value, "") if key.startswith("checks.") else run.repo.resolve(value)
            except MvcError as e:
                raise ConfigError(f"{pipeline.path}: stage {stage.name}.{key}: revision {value!r} does not resolve "
                                  f"({e.message})", "fix the revision; see mvc log, mvc branch and mvc tag") from None


def _out_of_memory(stage: Stage, e: Exception) -> StageError | None:
    """A stage's MemoryError (or torch's allocator error) as an error naming the stage and the
    settings that size its memory (the generic hint named push and fetch jobs)."""
    text = str(e)
    if not (isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "DefaultCPUAllocator" in text and (
            "can't allocate memory" in text or "not enough memory" in text))):
        return None
    sizes = ", ".join(f"{k} = {stage.get(k)}" for k in ("batch_size", "seq_len", "config") if stage.get(k) is not None)
    return StageError(f"stage {stage.name}: out of memory" + (f" with {sizes}" if sizes else ""),
                      "lower its batch_size or seq_len, or pick a smaller config")


def _check_data_paths(run: Run, pipeline: Pipeline, from_stage: str | None) -> None:
    """Every data file the checks of the stages that will run name lies under the repository root:
    one outside it was refused only when its stage ran, after the stages before it had trained."""
    from .probe import repository_path
    names = [s.name for s in pipeline.stages]
    for stage in pipeline.stages[names.index(from_stage) if from_stage else 0:]:
        for c in stage.checks:
            for key in DATA_KEYS:
                spec = c.params.get(key)
                if not isinstance(spec, str) or spec == "builtin" or spec.startswith(("blob:", "stream:")):
                    continue
                try:
                    repository_path(run.repo, spec)
                except MvcError as e:
                    raise ConfigError(f"{pipeline.path}: stage {stage.name}.checks.{c.name}.{key}: {e.message}",
                                      e.hint) from None


def result_certificate(repo, commit: str | None) -> str | None:
    """The certificate a stage's result stands on: an evaluate stage's own, or the last gate
    certificate of the checkpoint a training stage finished on."""
    if not commit:
        return None
    c = repo.read_commit(commit)
    info = c.get("extra", {}).get("pipeline", {})
    if info.get("certificate"):
        return info["certificate"]
    if info.get("status") == "done" and c["parents"]:
        certs = certificate.of_commit(repo, c["parents"][0])
        return certs[-1] if certs else None
    return None


def _warn_if_changed(run: Run, stage: Stage, heads: dict[str, str], from_stage: str) -> None:
    """--from-stage reuses the earlier stages' results: say so when the file now sets other settings
    for one that finished at its first attempt (a retry's settings differ by design), or when the
    stage's key is not the one it finished with (`heads`: result -> its commit), computed as the
    stage computes it: its data, the results it reads or what its checks read changed (it was
    reused saying nothing, h91)."""
    from .stages import stage_keys
    repo = run.repo
    info = stage_info(repo, list(heads.values())[-1])
    recorded = info.get("settings")
    if info.get("attempt", 0) == 0 and isinstance(recorded, dict) and \
            json.loads(canonical_json(recorded)) != json.loads(canonical_json(stage.settings)):
        changed = sorted(k for k in set(recorded) | set(stage.settings) if recorded.get(k) != stage.settings.get(k))
        warnings.warn(f"--from-stage {from_stage}: stage {stage.name} finished with other settings than the file "
                      f"sets now ({', '.join(changed[:5])}); its earlier result is used (run without --from-stage "
                      "to redo it)")
        return
    try:
        keys = stage_keys(run, stage)
    except MvcError as e:  # (a stream that cannot be built now: the stages that read it will say so)
        warnings.warn(f"--from-stage {from_stage}: cannot tell whether the inputs of stage {stage.name} changed "
                      f"since it finished ({e.message}); its earlier result is used")
        return
    if any(stage_info(repo, heads.get(result)).get("key") != key for result, key in keys.items()):
        warnings.warn(f"--from-stage {from_stage}: stage {stage.name} finished with other inputs than it has now "
                      "(its data, a stream's holdout, the results it reads or what its checks read, or its "
                      "settings); its earlier result is used (run without --from-stage to redo it)")


def _run_stages(run: Run, pipeline: Pipeline, from_stage, started: bool, summary: dict, IMPLS) -> None:
    repo = run.repo
    for stage in pipeline.stages:
        branch = run.branch(stage)
        if not started:
            if stage.name != from_stage:
                # the results a full run records, in its order (a paste stage's hosts, then its own)
                heads = {}
                for result, result_branch in run.branches(stage).items():
                    head = stage_commit(repo, repo.branches().get(result_branch), stage.name)  # (its own result)
                    if stage_info(repo, head).get("status") != "done":
                        raise ConfigError(f"--from-stage {from_stage}: earlier stage {stage.name} has not finished",
                                          "run without --from-stage first")
                    heads[result] = head
                _warn_if_changed(run, stage, heads, from_stage)  # (before its results: an evaluate stage's
                run.results.update(heads)                        # key hashes those of the stages before it)
                run.results[stage.name] = head
                continue
            started = True
        impl = IMPLS[stage.kind]
        t0 = time.perf_counter()
        run.emit({"event": "stage", "stage": stage.name, "kind": stage.kind, "branch": branch})
        try:
            commit, status = impl(run, stage)
        except (PipelineFailed, UpstreamMissing) as e:
            optional = bool(stage.get("optional"))
            status = "skipped" if isinstance(e, UpstreamMissing) else "failed"
            summary["stages"].append({"stage": stage.name, "status": status, "reason": e.message,
                                      "branch": branch, **_tip(repo, stage, branch),
                                      "certificate": run.last_certificate.get(stage.name), "optional": optional})
            run.emit({"event": "stage_failed", "stage": stage.name, "reason": e.message, "optional": optional})
            if optional:
                continue
            summary["passed"] = False
            summary["error"] = e.message
            break
        except Exception as caught:  # recorded in the summary, then raised (exit 3 for mvc errors, 4 for bugs)
            e = _out_of_memory(stage, caught) or caught
            if isinstance(e, MvcError) and f"stage {stage.name}:" not in e.message:  # (or "FILE: stage NAME:")
                e.message = f"stage {stage.name}: {e.message}"  # the error line names the stage
            what = str(e) if isinstance(e, MvcError) else f"unexpected {type(e).__name__}: {e}"
            summary["stages"].append({"stage": stage.name, "status": "error", "reason": what, "branch": branch,
                                      **_tip(repo, stage, branch),
                                      "certificate": run.last_certificate.get(stage.name),
                                      "optional": bool(stage.get("optional"))})
            run.emit({"event": "stage_failed", "stage": stage.name, "reason": what,
                      "optional": bool(stage.get("optional"))})
            summary["error"] = what if isinstance(e, MvcError) else f"stage {stage.name}: {what}"
            if e is not caught:
                raise e from None
            raise
        run.results[stage.name] = commit
        summary["stages"].append({"stage": stage.name, "status": status, "commit": commit, "branch": branch,
                                  "certificate": run.last_certificate.get(stage.name)
                                  or result_certificate(repo, commit),
                                  "seconds": round(time.perf_counter() - t0, 2),
                                  "metrics": repo.read_commit(commit)["metrics"]})
        run.emit({"event": "stage_done", "stage": stage.name, "status": status, "commit": commit})


def _tip(repo, stage: Stage, branch: str) -> dict:
    """A stage that made no result: its branch's tip as the summary's commit, with previous: true
    where that is the result an earlier run finished with (the report showed it, and that run's
    passing certificate, as this run's, h91)."""
    tip = repo.branches().get(branch)
    info = stage_info(repo, tip)
    return {"commit": tip, **({"previous": True} if info.get("stage") == stage.name
                              and info.get("status") == "done" else {})}


def train_stage(run: Run, stage: Stage, job_factory, inputs: dict, start_commit: str | None) -> tuple[str, str]:
    """The checkpoint / gate / rollback / fallback loop shared by every training stage kind.

    `job_factory(settings)` builds a job: `.trainer` (run/step/total_steps/metrics/state_dict/
    load_state_dict), `.components()` for a commit, `.restore(commit)` to load a checkpoint.
    `start_commit`: where a new stage branch starts (None: a root commit).
    """
    repo = run.repo
    branch = run.branch(stage)
    key = run.key(stage, inputs)
    done = finished(run, stage, branch, key)
    if done is not None:
        return done, "unchanged"
    head = repo.branches().get(branch)
    info = stage_info(repo, head)
    build_job = job_factory
    from cores.train import HeldOutTooShort

    def job_factory(settings):  # builders refuse bad options/overrides with ValueError: the file's fault
        try:
            job = build_job(settings)
            job.trainer.check_evaluable()  # (every checkpoint is measured: refused before it trains)
            return job
        except HeldOutTooShort as e:
            which = "general-text " if e.name == "general_eval" else ""
            raise StageError(f"{run.pipeline.path}: stage {stage.name}: its {which}held-out data has {e.size} "
                             "byte(s) to measure, need at least 2", "give the stream more data, hold out more of "
                             "it with streams.NAME.holdout, or raise the stage's eval_bytes") from e
        except ValueError as e:
            raise StageError(f"{run.pipeline.path}: stage {stage.name}: cannot build its model or trainer ({e})",
                             "check the stage's options, overrides and sizes") from e
    fb = stage.fallback
    retries = int(fb.get("retries", 0))
    if info.get("key") == key and info.get("status") == "checkpoint":
        attempt, settings = info["attempt"], info["settings"]
        job = job_factory(settings)
        job.restore(head)
        run.emit({"event": "resume", "stage": stage.name, "step": job.trainer.step, "commit": head})
        history = _history(repo, head, key)
        ours = f": stage {stage.name}"  # (how certificate_source ends: the file may be named another way this run)
        gated = [(cid, c) for cid, c in certificate.index(repo, head)[0]
                 if isinstance(c.get("config"), str) and c["config"].endswith(ours)]
        if not gated:  # killed between the commit and its gates
            if not _gates_ok(run, stage, head, history, job):
                attempt, settings, job = _fallback(run, stage, attempt, retries, settings, job_factory, branch, key,
                                                   expected=head)
                head = repo.branches().get(branch)
                history = _history(repo, head, key)
        else:  # killed after its gates ran (before the rollback of a failing one, or before the done commit)
            cid, cert = gated[-1]
            run.last_certificate[stage.name] = cid
            if not certificate.passed(cert):
                run.last_failure[stage.name] = "; ".join(c["name"] for c in cert["checks"] if c["status"] == "failed")
                attempt, settings, job = _fallback(run, stage, attempt, retries, settings, job_factory, branch, key,
                                                   expected=head)
                head = repo.branches().get(branch)
                history = _history(repo, head, key)
    else:
        attempt, settings = 0, dict(stage.settings)
        job = job_factory(settings)
        start_over(run, stage, branch, key, start_commit)
        if head is not None and start_commit is not None and head != start_commit:
            repo.refs.update(f"refs/heads/{branch}", start_commit, message=f"pipeline: restart {stage.name}")
        elif head is None and start_commit is not None:
            repo.create_branch(branch, start_commit)
        elif head is not None and start_commit is None:
            repo.refs.update(f"refs/heads/{branch}", None, message=f"pipeline: restart {stage.name}")
        history = []
        head = start_commit
    expected = head  # (where the run left the branch: its commits go on it, see commit_on_stage_branch)
    while True:
        t = job.trainer  # (each attempt's interval: a fallback may set another, as a resumed retry reads it)
        every = int(settings.get("checkpoint_every") or t.total_steps)
        while t.step < t.total_steps:
            t0 = time.perf_counter()
            t.run(min(every, t.total_steps - t.step))
            if job.stopped_early():
                t.total_steps = t.step  # a wall-clock budget ran out
            metrics, nonfinite = finite_metrics(job.metrics())
            if nonfinite:  # diverged: stored as null and failed by the divergence gate below
                metrics.update(diverged=True, nonfinite=nonfinite)
            metrics["attempt"] = attempt
            extra = {"pipeline": {"name": run.pipeline.name, "stage": stage.name, "key": key, "attempt": attempt,
                                  "settings": settings, "status": "checkpoint", "step": t.step,
                                  "gates": stage.gates}}  # (verify binds a certificate's label to them)
            try:
                cid = commit_on_stage_branch(run, stage, branch, expected, job.components(),
                                             message=f"{stage.name}: step {t.step}", metrics=metrics, extra=extra,
                                             root=start_commit is None)
                expected = cid
            except CheckFailed as e:  # mvc.toml's on-commit CI failed and rolled the branch back
                run.emit({"event": "gate", "stage": stage.name, "passed": False, "commit": e.commit,
                          "reason": e.message})
                attempt, settings, job = _fallback(run, stage, attempt, retries, settings, job_factory, branch, key,
                                                   failed_at=e.commit)
                expected = repo.branches().get(branch)
                history = _history(repo, expected, key)
                break
            history.append(metrics)
            run.emit({"event": "checkpoint", "stage": stage.name, "step": t.step, "total": t.total_steps,
                      "loss": metrics.get("loss"), "heldout_bpb": metrics.get("heldout_bpb"),
                      "bytes_per_second": round(t.batch_size * t.seq_len * min(every, t.step) /
                                                max(time.perf_counter() - t0, 1e-9)),
                      "commit": cid, "attempt": attempt, **({"diverged": True} if nonfinite else {})})
            if not _gates_ok(run, stage, cid, history, job):
                attempt, settings, job = _fallback(run, stage, attempt, retries, settings, job_factory, branch, key,
                                                   expected=expected)
                expected = repo.branches().get(branch)
                history = _history(repo, expected, key)
                break
        else:
            head = expected
            done = commit_on_stage_branch(
                run, stage, branch, head, {}, message=f"{stage.name}: done (gates passed)",
                metrics=repo.read_commit(head)["metrics"], run_hooks=False,
                extra={"pipeline": {"name": run.pipeline.name, "stage": stage.name, "key": key, "attempt": attempt,
                                    "settings": settings, "status": "done", "step": job.trainer.step,
                                    # what its gates certified: `mvc verify <stage branch>`
                                    **({"certificate": run.last_certificate[stage.name]}
                                       if run.last_certificate.get(stage.name) else {})}})
            return done, "passed"


def commit_on_stage_branch(run, stage, branch: str, expected: str | None, components: dict, **kw) -> str:
    """A commit of `stage` on `branch`, which must be where the run left it: at `expected` (None or
    "": no branch yet). Another process's commit or rollback of a stage branch mid-run stops the
    run (built upon, it put the other's weights under the stage's certificate, or a history that
    skips what the user rolled back)."""
    try:
        return run.repo.commit(components, branch=branch, expect_head=expected or "", **kw)
    except RefConflict as e:
        raise _moved(run, stage, branch, e.message) from None


def move_stage_branch(run, stage, branch: str, to: str | None, expected: str | None, message: str) -> None:
    """Move `branch` to `to` (None: delete it) if it is still at `expected` (None: does not exist),
    where the stage found it before its work (checks may run for minutes): else the run stops."""
    try:
        run.repo.refs.update(f"refs/heads/{branch}", to, expected=expected, message=message)
    except RefConflict:
        _branch_moved(run, stage, branch, run.repo.branches().get(branch), expected)


def _branch_moved(run, stage, branch: str, head: str | None, expected: str | None):
    raise _moved(run, stage, branch, f"branch {branch} is at {head[:12] if head else 'nothing'}, not at "
                                     f"{expected[:12] if expected else 'nothing'} as expected: another process "
                                     "committed to it or moved it")


def _moved(run, stage, branch: str, what: str) -> StageError:
    return StageError(f"{run.pipeline.path}: stage {stage.name}: {what}; the run stopped",
                      f"mvc reflog {branch} shows its moves; run again to go on from where the branch is")


def certificate_source(run, stage) -> str:
    """What a stage's certificates record as their configuration: "PIPELINE FILE: stage NAME"."""
    return stage_source(run.pipeline, stage.name, run.repo.root)


def _gates_ok(run, stage, commit, history, job) -> bool:
    import torch
    at_end = job.trainer.step >= job.trainer.total_steps
    with torch.random.fork_rng(devices=[]):  # building models for checks must not move training's RNG
        ok, cert = evaluate_gates(run, stage, commit, history, at_end)
    failed = []
    if cert:
        run.last_certificate[stage.name] = cert
        if not ok:
            failed = [c["name"] + (f" ({c['note']})" if c.get("note") else "")
                      for c in certificate.read(run.repo, cert)["checks"] if c["status"] == "failed"]
            run.last_failure[stage.name] = "; ".join(failed)
    run.emit({"event": "gate", "stage": stage.name, "commit": commit,
              "passed": ok if cert else None,  # None: no gate was due at this checkpoint (not "passed")
              "certificate": cert or None, "at_end": at_end, **({"failed": failed} if failed else {})})
    return ok


def _history(repo, head, key) -> list[dict]:
    out = []
    cid = head
    while cid:
        c = repo.read_commit(cid)
        info = c.get("extra", {}).get("pipeline", {})
        if info.get("key") != key:
            break
        if info.get("status") == "checkpoint":
            out.append(c["metrics"])
        cid = c["parents"][0] if c["parents"] else None
    return out[::-1]


def _fallback(run: Run, stage: Stage, attempt: int, retries: int, settings: dict, job_factory, branch, key,
              failed_at: str | None = None, expected: str | None = None):
    """Roll the branch back to the last passing commit and retry with the fallback settings.
    `failed_at`: mvc.toml's on-commit CI failed that commit and rolled the branch back already
    (rolling back again dropped the passing checkpoint it had gone back to); else `expected` is
    where the run left the branch: one that moved meanwhile stops the run (the rollback dropped
    another process's commit from it, h115 07)."""
    repo = run.repo
    head = repo.branches().get(branch)
    if failed_at is not None:
        target, head = head, failed_at
    else:
        if expected is not None and head != expected:
            _branch_moved(run, stage, branch, head, expected)
        target = certificate.last_passing_ancestor(repo, head) if head else None
    info = stage_info(repo, target)
    if failed_at is None and head and head != target:
        try:
            repo.refs.update(f"refs/heads/{branch}", target, expected=head,
                             message=f"pipeline rollback: {stage.name} gate failed at {head[:12]}; back to "
                                     f"{target[:12] if target else '(start)'}")
        except RefConflict:
            _branch_moved(run, stage, branch, repo.branches().get(branch), head)
    run.emit({"event": "rollback", "stage": stage.name, "from": head, "to": target, "attempt": attempt})
    if attempt >= retries:
        last = run.last_failure.get(stage.name)
        raise PipelineFailed(f"stage {stage.name}: gates still failing after {attempt + 1} attempt(s)"
                             + (f" (last: {last})" if last else "")
                             + (f"; branch {branch} left at {target[:12]}" if target else
                                f"; branch {branch} removed (no commit of it passed; mvc reflog {branch} lists them)"))
    fb = stage.fallback
    new = dict(settings)
    if "lr_scale" in fb:
        base_lr = new.get("lr") or job_factory(settings).trainer.lr
        new["lr"] = base_lr * fb["lr_scale"]
    fb_set = dict(fb.get("set", {}))  # (first: extra_steps adds to what the retry trains, set there too, h94)
    # the count the job trains (a compress stage's recovery_steps when set: raising steps left its retry
    # at the same count, saying nothing, h91)
    budget = step_budget(stage.kind, {**new, **fb_set}) if "extra_steps" in fb else None
    if attempt > 0 and budget in fb_set:  # a later retry: set's count, raised by the retries before, keeps
        del fb_set[budget]                # growing (h96)
    new.update(fb_set)
    if budget is not None:
        new[budget] = int(new.get(budget) or 1) + int(fb["extra_steps"])
    job = job_factory(new)
    if target is not None and info.get("key") == key and info.get("status") == "checkpoint":
        job.restore(target, keep_schedule=False)
    run.emit({"event": "fallback", "stage": stage.name, "attempt": attempt + 1,
              "changes": {k: new[k] for k in new if new.get(k) != settings.get(k)}})
    if job.trainer.step >= job.trainer.total_steps:  # a retry whose total the rollback already reached: that
        # checkpoint ends the stage, gated as its end (it became "done" with its end gates never run)
        if not _gates_ok(run, stage, target, _history(repo, target, key), job):
            return _fallback(run, stage, attempt + 1, retries, new, job_factory, branch, key, expected=target)
    return attempt + 1, new, job

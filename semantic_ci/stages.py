"""Stage kinds of the pipeline driver: what each trains or produces and how it is committed."""
from __future__ import annotations

import math

import torch

from . import certificate
from .checks import Context, run_check
from .config import Check, CiConfig
from .models import ModelCache
from .pipeline import (Run, StageError, certificate_source, commit_on_stage_branch, finished,
                       move_stage_branch, stage_info, start_over, train_stage)
from .pipeline_config import COMPRESS_BUDGET, Stage, core_seed

UNBOUNDED_STEPS = 10 ** 9  # a wall-clock-only budget


class TrainerJob:
    """A training job: a trainer plus how its state maps to commit components."""

    model_component = "core"

    def __init__(self, run: Run, settings: dict):
        self.run, self.settings = run, settings
        self.trainer = None
        # torch's global generator starts from a random seed in every process; seed it from the stage
        # so that a fresh run is reproducible too (a resume restores the state saved in train_state)
        torch.manual_seed(int(settings.get("seed", 0)))

    def components(self) -> dict:
        return {self.model_component: self.model(),  # the optimizer as it is: mvc records its param groups
                "optimizer": self.trainer.opt.state_dict(), "train_state": self.trainer.train_state()}

    def model(self):
        return self.trainer.checkpoint_model()

    def restore(self, commit: str, keep_schedule: bool = True) -> None:
        repo = self.run.repo
        sd = {self.trainer.model_key: repo.load(commit, self.model_component),
              "optimizer": repo.load(commit, "optimizer"), "train_state": dict(repo.load(commit, "train_state"))}
        if not keep_schedule:  # a fallback continues from this state with new settings (the seed stays)
            for name, value in self.trainer.resume_settings().items():
                if name != "seed":
                    sd["train_state"][name] = torch.tensor(value, dtype=torch.int64)
        elif self.settings.get("wall_seconds") and "total_steps" in sd["train_state"]:
            saved = int(sd["train_state"]["total_steps"])  # (its wall-clock budget ran out there: the run
            if int(sd["train_state"]["step"]) == saved < self.trainer.total_steps:  # set the total to the step
                self.trainer.total_steps = saved                                  # reached; resuming crashed)
        self.trainer.load_state_dict({k: {n: t.clone() for n, t in v.items()} for k, v in sd.items()})

    def metrics(self) -> dict:
        return self.trainer.metrics(evaluate=True)

    def stopped_early(self) -> bool:
        w = self.settings.get("wall_seconds")
        return bool(w) and self.trainer.wall >= w and self.trainer.step < self.trainer.total_steps

    def trainer_kwargs(self, train: bytes, heldout: bytes) -> dict:
        s = self.settings
        kw = {"steps": int(s.get("steps") or UNBOUNDED_STEPS), "seed": int(s.get("seed", 0)), "eval_data": heldout,
              "wall_seconds": s.get("wall_seconds"), "progress": False}
        for key in ("batch_size", "seq_len", "lr", "eval_bytes"):
            if s.get(key) is not None:
                kw[key] = s[key]
        return kw


class CoreJob(TrainerJob):
    def __init__(self, run: Run, settings: dict):
        super().__init__(run, settings)
        import cores
        from cores.train import Trainer
        train, heldout, _ = run.stream(settings["stream"])
        core = cores.build(settings["arch"], config=settings.get("config", "tiny"), **core_seed(settings),
                           **settings.get("overrides", {}))
        if settings.get("init"):  # fine-tune: start from another stage's weights
            core.load_state_dict(run.repo.load(run.ref(settings["init"]), "core"))
        self.trainer = Trainer(core, train, **self.trainer_kwargs(train, heldout))


class CompressJob(TrainerJob):
    """Convert a dense core's linear layers (L1 harmonic, L2 meta-harmonic or low-rank), then a
    short recovery fine-tune on the stage's stream."""

    def __init__(self, run: Run, settings: dict, source: str):
        super().__init__(run, settings)
        from cores.convert import convert
        from cores.train import Trainer
        from .models import build_from_tree
        repo = run.repo
        dense = build_from_tree(repo.tree(source, "core"), repo.load(source, "core"))
        train, heldout, _ = run.stream(settings["stream"])
        method = settings.get("method", "harmonic")
        own = COMPRESS_BUDGET[method]  # the method's own budget wins over ratio
        if own in settings:
            budget = {"rank" if own == "rank" else "n_components": settings[own]}
        else:
            budget = {"ratio": settings["ratio"]} if "ratio" in settings else {}
        with torch.random.fork_rng(devices=[]):
            model = convert(dense, method, settings.get("layers"),
                            n_meta=int(settings.get("meta_components", 8)),
                            freeze_centres=bool(settings.get("freeze_centres", False)),
                            seed=int(settings.get("seed", 0)), **budget)
        if settings.get("freeze_centres"):
            from cores.convert import set_trainable
            set_trainable(model, "amplitudes")
        kw = self.trainer_kwargs(train, heldout)
        kw["steps"] = int(settings.get("recovery_steps") or settings.get("steps") or 1)
        self.trainer = Trainer(model, train, **kw)

    def metrics(self) -> dict:
        from cores.convert import report_totals
        m = super().metrics()
        totals = report_totals(self.trainer.core)
        m.update({f"compression_{k}": v for k, v in totals.items()
                  if isinstance(v, (int, float)) and math.isfinite(v)})
        return m


class K0Job(TrainerJob):
    """Blend K0 spectral embeddings (from a stream's byte bigrams) into a core's byte embedding,
    then fine-tune briefly."""

    def __init__(self, run: Run, settings: dict, source: str):
        super().__init__(run, settings)
        from cores.train import Trainer
        from kernels.k0 import blend, k0_embeddings
        from .models import build_from_tree
        repo = run.repo
        core = build_from_tree(repo.tree(source, "core"), repo.load(source, "core"))
        train, heldout, _ = run.stream(settings["stream"])
        k0_data = run.stream(settings["k0_stream"])[0] if settings.get("k0_stream") else train
        if not hasattr(core, "byte_emb"):  # (a stage source is checked when the file is read)
            raise StageError(f"{source[:12]} holds a {type(core).__name__}, which has no byte embedding for K0 "
                             "to blend into", "K0 works on LayerCake cores")
        emb = core.byte_emb.weight
        new, report = blend(emb.detach(), k0_embeddings(k0_data, emb.shape[1]),
                            ratio=float(settings.get("blend", 0.3)), threshold=float(settings.get("threshold", 0.5)))
        with torch.no_grad():
            emb.copy_(new)
        self.report = report
        kw = self.trainer_kwargs(train, heldout)
        self.trainer = Trainer(core, train, **kw)

    def metrics(self) -> dict:
        m = super().metrics()
        m.update({f"k0_{k}": v for k, v in self.report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        return m


# What each stage kind's key hashes beside its settings (`Run.key`): the ids of its streams and the
# commits it starts from. One function per kind, used by the stage and by --from-stage, which
# compares the key of an earlier stage it reuses with the one that stage finished with.
def _source_inputs(run: Run, stage: Stage) -> dict:  # compress, k0
    source = run.ref(stage.get("source"))
    inputs = {"stream": run.stream(stage.get("stream"))[2], "source": source}
    if stage.get("k0_stream"):
        inputs["k0_stream"] = run.stream(stage.get("k0_stream"))[2]
    return inputs


def _core_inputs(run: Run, stage: Stage) -> dict:
    _, _, stream_id = run.stream(stage.get("stream"))
    inputs = {"stream": stream_id}
    if stage.get("init"):
        inputs["init"] = run.ref(stage.get("init"))
    return inputs


def _brick_inputs(run: Run, stage: Stage) -> dict:
    host = run.ref(stage.get("host"))
    inputs = {"stream": run.stream(stage.get("stream"))[2], "host": host}
    if stage.get("general_stream"):
        inputs["general"] = run.stream(stage.get("general_stream"))[2]
    return inputs


def _paste_inputs(run: Run, stage: Stage) -> dict[str, dict]:
    """Result (`<stage>/<host>`) -> the inputs of the paste into that host."""
    source = run.ref(stage.get("source"))
    return {result: {"source": source, "host": run.ref(h)} for h, result in zip(stage.get("into"), run.branches(stage))}


def _int8_inputs(run: Run, stage: Stage) -> dict:
    return {"source": run.ref(stage.get("source"))}


def _evaluate_inputs(run: Run, stage: Stage) -> dict:
    source = stage.get("source") or (f"stage:{list(run.results)[-1]}" if run.results else "HEAD")
    return {"target": run.ref(source), "refs": {k: v for k, v in run.results.items()}}


def stage_keys(run: Run, stage: Stage) -> dict[str, str]:
    """Result name -> the key the stage's work for it has now (one per host for a paste stage)."""
    if stage.kind == "paste":
        return {result: run.key(stage, inputs) for result, inputs in _paste_inputs(run, stage).items()}
    inputs = {"compress": _source_inputs, "k0": _source_inputs, "train-core": _core_inputs,
              "train-brick": _brick_inputs, "int8": _int8_inputs, "evaluate": _evaluate_inputs}[stage.kind](run, stage)
    return {stage.name: run.key(stage, inputs)}


def compress(run: Run, stage: Stage):
    inputs = _source_inputs(run, stage)
    source = inputs["source"]
    return train_stage(run, stage, lambda settings: CompressJob(run, settings, source), inputs, source)


def k0(run: Run, stage: Stage):
    inputs = _source_inputs(run, stage)
    source = inputs["source"]
    return train_stage(run, stage, lambda settings: K0Job(run, settings, source), inputs, source)


def train_core(run: Run, stage: Stage):
    inputs = _core_inputs(run, stage)
    return train_stage(run, stage, lambda settings: CoreJob(run, settings), inputs, inputs.get("init"))


class BrickJob(TrainerJob):
    def __init__(self, run: Run, settings: dict, host_commit: str):
        super().__init__(run, settings)
        import bricks
        from .models import build_from_tree
        repo = run.repo
        self.model_component = f"brick/{settings['brick_name']}"
        host = build_from_tree(repo.tree(host_commit, "core"), repo.load(host_commit, "core"))
        train, heldout, _ = run.stream(settings["stream"])
        general = run.stream(settings["general_stream"])[0] if settings.get("general_stream") else None
        brick = bricks.build(settings.get("brick", "sparse"), host=host, seed=int(settings.get("seed", 0)),
                             **settings.get("options", {}))
        kw = self.trainer_kwargs(train, heldout)
        self.trainer = bricks.BrickTrainer(brick, host, train, general=general, **kw)


def train_brick(run: Run, stage: Stage):
    inputs = _brick_inputs(run, stage)
    host = inputs["host"]
    return train_stage(run, stage, lambda settings: BrickJob(run, settings, host), inputs, host)


def _done(run: Run, stage: Stage, branch: str, key: str, message: str, after: str, extra: dict | None = None) -> str:
    """The stage's "done" commit, on `after`, the commit the stage made last (see commit_on_stage_branch)."""
    return commit_on_stage_branch(run, stage, branch, after, {}, message=message, run_hooks=False,
                        extra=_bookkeeping(run, stage, key, "done", extra))


def _bookkeeping(run: Run, stage: Stage, key: str, status: str, extra: dict | None = None) -> dict:
    """A stage commit's `extra`: which pipeline and stage made it ("work": a paste or int8 commit
    below its "done" one, which a run killed between them finds as its own, not a user's)."""
    return {"pipeline": {"name": run.pipeline.name, "stage": stage.name, "key": key, "status": status,
                         **(extra or {})}}


def paste(run: Run, stage: Stage):
    """Paste a brick into each host on a branch <pipeline>/<stage>/<host>; results stage/<host>."""
    repo = run.repo
    all_inputs = _paste_inputs(run, stage)
    source = run.ref(stage.get("source"))
    name = stage.get("brick_name")
    last, status = None, "unchanged"
    for result, branch in run.branches(stage).items():
        label = result[len(stage.name) + 1:]
        host = all_inputs[result]["host"]
        key = run.key(stage, all_inputs[result])
        done = finished(run, stage, branch, key)
        if done is None:
            start_over(run, stage, branch, key, host)
            repo.refs.update(f"refs/heads/{branch}", host, message=f"pipeline: {stage.name} into {label}")
            transform = None
            if stage.get("int8"):
                transform = _int8_transform(repo, f"brick/{stage.get('as_name') or name}")
            # (run_hooks=False: the stage's own checks and gates judge the paste, as for its other
            # bookkeeping commits; mvc.toml's on-commit CI would roll the host branch back under it)
            r = repo.paste_brick(name, source, branch, as_name=stage.get("as_name"), transform=transform,
                                 mode="int8" if stage.get("int8") else "copy", force=True, run_hooks=False,
                                 extra=_bookkeeping(run, stage, key, "work"))
            run.emit({"event": "paste", "stage": stage.name, "host": label, "commit": r["commit"]})
            done = _done(run, stage, branch, key, f"{stage.name}: pasted {name} into {label}", r["commit"],
                         {"host": host})
            status = "passed"
        run.results[result] = done
        last = done
    return last, status


def _int8_transform(repo, component: str):
    def transform(tree):
        import bricks
        from mvc.components import build_tree
        from .models import rebuild_stored_brick
        brick = rebuild_stored_brick(tree, repo.load_tree(tree), component)
        return repo.write_object(build_tree(repo.store, component, bricks.quantize(brick)))
    return transform


def int8(run: Run, stage: Stage):
    """Convert brick/<name> of a commit to its int8 artifact, committed on the stage's branch."""
    repo = run.repo
    inputs = _int8_inputs(run, stage)
    source = inputs["source"]
    name = stage.get("brick_name")
    as_name = stage.get("as_name") or f"{name}-int8"
    branch = run.branch(stage)
    key = run.key(stage, inputs)
    done = finished(run, stage, branch, key)
    if done:
        return done, "unchanged"
    start_over(run, stage, branch, key, source)
    repo.refs.update(f"refs/heads/{branch}", source, message=f"pipeline: {stage.name}")
    tree = repo.tree(source, f"brick/{name}")
    tid = _int8_transform(repo, f"brick/{as_name}")(tree)
    q_bytes = sum(f["size"] for f in repo.read_tree(tid)["files"].values())
    f_bytes = sum(f["size"] for f in tree["files"].values())
    work = commit_on_stage_branch(run, stage, branch, source, {}, trees={f"brick/{as_name}": tid},
                        message=f"{stage.name}: int8 artifact of {name}", run_hooks=False,
                        metrics={"artifact_bytes": q_bytes, "float_bytes": f_bytes},
                        extra=_bookkeeping(run, stage, key, "work"))
    return _done(run, stage, branch, key, f"{stage.name}: done", work), "passed"


def resolve_stage_refs(run: Run, value):
    """Replace `stage:NAME` strings (also inside lists) by the stages' result commit ids and
    `stream:NAME` by a blob reference to that stream's held-out tail."""
    if isinstance(value, str) and value.startswith("stage:"):
        return run.ref(value)
    if isinstance(value, str) and value.startswith("stream:"):
        held_out = run.stream(value[7:])[1]
        if len(held_out) < 2:  # (a check of one byte measures nothing)
            raise StageError(f"{run.pipeline.path}: {value}: the stream's held-out part, which checks read, is "
                             f"{len(held_out)} byte", f"give the stream more data, or hold out more of it "
                             f"with streams.{value[7:]}.holdout")
        return "blob:" + run.repo.store.put(held_out)
    if isinstance(value, list):
        return [resolve_stage_refs(run, v) for v in value]
    return value


def evaluate(run: Run, stage: Stage):
    """Run the stage's checks on a commit (default: the previous stage's result) and certify it."""
    repo = run.repo
    inputs = _evaluate_inputs(run, stage)
    target = inputs["target"]
    branch = run.branch(stage)
    key = run.key(stage, inputs)
    done = finished(run, stage, branch, key)
    if done is not None:
        run.last_certificate[stage.name] = stage_info(repo, done).get("certificate")
        return done, "unchanged"
    start_over(run, stage, branch, key, target)  # (before its checks run: nothing of someone's is dropped)
    head = repo.branches().get(branch)
    ctx = Context(repo, target, CiConfig(source=certificate_source(run, stage)), ModelCache(repo))
    with repo.writing():  # from storing check data to the certificate naming it: a gc --grace 0 waits
        checks = [Check(c.name, c.kind, {k: resolve_stage_refs(run, v) for k, v in c.params.items()}, c.preset)
                  for c in stage.checks]
        with torch.random.fork_rng(devices=[]):
            results = [run_check(ctx, c) for c in checks]
        cert = certificate.make(target, results, None, certificate_source(run, stage))
        cert_id = certificate.store(repo, cert)
    run.last_certificate[stage.name] = cert_id
    run.emit({"event": "gate", "stage": stage.name, "commit": target, "passed": cert["passed"], "certificate": cert_id})
    if not cert["passed"]:
        from .pipeline import PipelineFailed
        failed = ", ".join(c["name"] for c in results if c["status"] == "failed")
        raise PipelineFailed(f"stage {stage.name}: checks failed ({failed}); certificate {cert_id[:12]}")
    # (the branch must be where it was before the checks ran: minutes, on a real model)
    move_stage_branch(run, stage, branch, target, head, f"pipeline: evaluate {stage.name}")
    done = commit_on_stage_branch(
        run, stage, branch, target, {}, message=f"{stage.name}: certified {target[:12]}", run_hooks=False,
        metrics={"certificate_passed": True},
        extra={"pipeline": {"name": run.pipeline.name, "stage": stage.name, "key": key, "status": "done",
                            "certificate": cert_id, "target": target}})
    # the certificate certifies `target`, this commit's parent (`mvc verify` of the stage's result finds it)
    return done, "passed"


IMPLS = {"train-core": train_core, "train-brick": train_brick, "paste": paste, "int8": int8, "evaluate": evaluate,
         "compress": compress, "k0": k0}

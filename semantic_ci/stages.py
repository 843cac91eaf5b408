"""Stage kinds of the pipeline driver: what each trains or produces and how it is committed."""
from __future__ import annotations

import torch

from . import certificate
from .checks import Context, run_check
from .config import CiConfig
from .models import ModelCache
from .pipeline import Run, stage_info, train_stage
from .pipeline_config import Stage

UNBOUNDED_STEPS = 10 ** 9  # a wall-clock-only budget


class TrainerJob:
    """A training job: a trainer plus how its state maps to commit components."""

    model_component = "core"

    def __init__(self, run: Run, settings: dict):
        self.run, self.settings = run, settings
        self.trainer = None

    def components(self) -> dict:
        sd = self.trainer.state_dict()
        return {self.model_component: self.model(), "optimizer": sd["optimizer"], "train_state": sd["train_state"]}

    def model(self):
        return self.trainer.core

    def restore(self, commit: str, keep_schedule: bool = True) -> None:
        repo = self.run.repo
        sd = {"core": repo.load(commit, self.model_component), "optimizer": repo.load(commit, "optimizer"),
              "train_state": dict(repo.load(commit, "train_state"))}
        if not keep_schedule:  # a fallback continues from this state with new settings
            sd["train_state"]["total_steps"] = torch.tensor(self.trainer.total_steps, dtype=torch.int64)
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
        core = cores.build(settings["arch"], config=settings.get("config", "tiny"), seed=int(settings.get("seed", 0)),
                           **settings.get("overrides", {}))
        self.trainer = Trainer(core, train, **self.trainer_kwargs(train, heldout))


def train_core(run: Run, stage: Stage):
    _, _, stream_id = run.stream(stage.get("stream"))
    return train_stage(run, stage, lambda settings: CoreJob(run, settings), {"stream": stream_id}, None)


def evaluate(run: Run, stage: Stage):
    """Run the stage's checks on a commit (default: the previous stage's result) and certify it."""
    repo = run.repo
    source = stage.get("source") or (f"stage:{list(run.results)[-1]}" if run.results else "HEAD")
    target = run.ref(source)
    branch = run.branch(stage)
    key = run.key(stage, {"target": target})
    head = repo.branches().get(branch)
    if stage_info(repo, head).get("key") == key and stage_info(repo, head).get("status") == "done":
        run.emit({"event": "skip", "stage": stage.name, "commit": head, "reason": "inputs unchanged"})
        return head, "unchanged"
    ctx = Context(repo, target, CiConfig(source=f"{run.pipeline.path}: stage {stage.name}"), ModelCache(repo))
    with torch.random.fork_rng(devices=[]):
        results = [run_check(ctx, c) for c in stage.checks]
    cert = certificate.make(target, results, None, f"{run.pipeline.path}: stage {stage.name}")
    cert_id = certificate.store(repo, cert)
    run.emit({"event": "gate", "stage": stage.name, "commit": target, "passed": cert["passed"], "certificate": cert_id})
    if not cert["passed"]:
        from .pipeline import PipelineFailed
        failed = ", ".join(c["name"] for c in results if c["status"] == "failed")
        raise PipelineFailed(f"stage {stage.name}: checks failed ({failed}); certificate {cert_id[:12]}")
    if head is None:
        repo.create_branch(branch, target)
    else:
        repo.refs.update(f"refs/heads/{branch}", target, message=f"pipeline: evaluate {stage.name}")
    done = repo.commit({}, message=f"{stage.name}: certified {target[:12]}", branch=branch, run_hooks=False,
                       metrics={"certificate_passed": True},
                       extra={"pipeline": {"name": run.pipeline.name, "stage": stage.name, "key": key,
                                           "status": "done", "certificate": cert_id, "target": target}})
    return done, "passed"


IMPLS = {"train-core": train_core, "evaluate": evaluate}

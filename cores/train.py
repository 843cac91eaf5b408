"""Training any core on a byte stream: seeded, deterministic for a step budget, resumable bit-exactly.

``Trainer`` owns the optimizer (AdamW), the schedule (linear warm-up, cosine decay to
``min_lr_frac``) and the data order. Batches are windows of ``seq_len`` bytes' worth of units (bytes,
or BPE tokens for the BPE baseline) at offsets drawn from a counter-based generator keyed by
(seed, step), so step s always sees the same batch. ``state_dict()`` returns three flat dicts of
plain tensors, the components of a training checkpoint (DESIGN.md section 10):

- ``core``: the model's state dict;
- ``optimizer``: AdamW state flattened to ``state.<i>.<key>`` (param groups are rebuilt from the
  trainer's own settings; ``optimizer_meta()`` gives them for metadata);
- ``train_state``: ``step``, ``data_pos`` and the settings a resume must share (``resume_settings``:
  ``seed``, ``total_steps``, ``batch_size``, ``seq_len``, ``data_bytes`` and ``data_crc``, the
  training data's length and CRC-32),
  all int64, and the RNG states ``rng.trainer``, ``rng.torch`` (uint8).

``Trainer(...).load_state_dict(sd)`` followed by ``run()`` continues exactly where the saved run was:
same losses, same weights, bit for bit (same settings and data required; the settings and the data's
length and CRC-32 are checked, a differing one is a ValueError naming it).
``train(core, data, steps=...)`` is the one-call form; it trains in place and returns metrics.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import zlib

import numpy as np
import torch

from cores import checks
from kernels.counter_rng import MASK64, stream_id, stream_uint64


class TrainingDiverged(ValueError):
    """``cores.train`` / ``bricks.train`` met a non-finite loss or non-finite weights. The model was
    trained in place, so its weights are no longer usable; ``step`` is the first step (1-based) whose
    loss was not finite (None when only the weights are) and ``metrics`` what the run measured."""

    def __init__(self, what: str, step: int | None, loss: float, lr: float, metrics: dict):
        self.step, self.loss, self.metrics = step, loss, metrics
        at = f" at step {step} (loss {loss})" if step is not None else ""
        super().__init__(f"{what} diverged{at}: the model was trained in place and its weights are not to be "
                         f"trusted (lr was {lr:g}; lower it, or check the data, the dtype and the settings)")


def check_finite_run(what: str, trainer, metrics_fn) -> None:
    """Raise ``TrainingDiverged`` when a loss or a weight of ``trainer``'s model is not finite."""
    bad = next((i for i, v in enumerate(trainer.losses) if not math.isfinite(v)), None)
    weights_ok = all(bool(torch.isfinite(p).all()) for p in trainer.checkpoint_model().parameters()
                     if p.is_floating_point())
    if bad is None and weights_ok:
        return
    step = None if bad is None else trainer.step - len(trainer.losses) + bad + 1  # 1-based
    raise TrainingDiverged(what, step, trainer.losses[bad] if bad is not None else float("nan"), trainer.lr,
                           metrics_fn())


class HeldOutTooShort(ValueError):
    """Held-out data too short to measure (fewer than 2 bytes): ``name`` is the argument it came
    from (eval_data, general_eval), ``size`` the bytes it had."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size
        super().__init__(f"{name}: the held-out data has {size} byte(s) to evaluate on, need at least 2 "
                         f"(give more data or {name}, or pass evaluate=False)")


def check_eval_data(heldout: bytes, eval_bytes: int | None, name: str) -> None:
    """Refuse (HeldOutTooShort), before any training, held-out data too short to measure."""
    n = len(heldout[:eval_bytes] if eval_bytes else heldout)
    if n < 2:
        raise HeldOutTooShort(name, n)


def check_schedule(steps, seed, batch_size, lr, warmup, min_lr_frac, weight_decay, grad_clip,
                   seq_len=None, wall_seconds=None, eval_bytes=None) -> None:
    """The settings both trainers share: each of the right type and in range (cores/checks.py)."""
    checks.integer(steps, "steps", 1)
    checks.seed(seed)
    checks.integer(batch_size, "batch_size", 1)
    if lr is not None:
        checks.real(lr, "lr", minimum=0.0, maximum=checks.MAX_LR)
    if warmup is not None:
        checks.integer(warmup, "warmup", 0)
    checks.real(min_lr_frac, "min_lr_frac", 0.0, 1.0)
    checks.real(weight_decay, "weight_decay", minimum=0.0)
    if grad_clip is not None:
        checks.real(grad_clip, "grad_clip", minimum=0.0)
    if seq_len is not None:
        checks.integer(seq_len, "seq_len", 2)
    if wall_seconds is not None:
        checks.real(wall_seconds, "wall_seconds", above=0.0)
    if eval_bytes is not None:
        checks.integer(eval_bytes, "eval_bytes", 0)


def split_holdout(data: bytes, frac: float = 0.05) -> tuple[bytes, bytes]:
    """(train, held-out tail): the last ``frac`` of the bytes is held out."""
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
        raise ValueError(f"holdout fraction must lie strictly between 0 and 1, got {frac!r}")
    cut = len(data) - max(1, int(len(data) * frac))
    return data[:cut], data[cut:]


def flatten_optimizer_state(state: dict) -> dict[str, torch.Tensor]:
    """optimizer.state_dict()["state"] -> {"state.<i>.<key>": tensor}."""
    out = {}
    for i, per in state.items():
        for key, val in per.items():
            out[f"state.{i}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return out


def unflatten_optimizer_state(flat: dict[str, torch.Tensor]) -> dict[int, dict]:
    """Inverse of ``flatten_optimizer_state``."""
    state: dict[int, dict] = {}
    for name, val in flat.items():
        _, i, key = name.split(".", 2)
        state.setdefault(int(i), {})[key] = val
    return state


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The AdamW both trainers use: weight decay on matrices only (not on norms and biases)."""
    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


RECENT_LOSSES = 10  # the losses a checkpoint keeps (metrics' loss_last10)


class CheckpointState:
    """What every trainer shares: the schedule, the optimizer step loop with its progress bar and
    wall-clock budget, and the checkpoint (model + optimizer + RNG + step + data position as flat
    tensor dicts, restored bit-exactly). Subclasses provide `step_loss(step) -> (loss, stats)`,
    name their model's component (`model_key`) and hold `opt`, `gen`, `step`, `data_pos`, `seed`,
    `total_steps`, `lr`, `warmup`, `min_lr_frac`, `grad_clip`, `batch_size`, `seq_len`, `train_bytes`,
    `wall`, `wall_seconds`, `progress`, `losses`, `last_stats`."""

    model_key = "core"
    progress_label = "train"

    def checkpoint_model(self) -> torch.nn.Module:
        return self.core

    def step_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def run_context(self):
        """Entered around a run of steps (e.g. to keep a frozen host in eval mode)."""
        return contextlib.nullcontext()

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
        return self.lr * (self.min_lr_frac + (1.0 - self.min_lr_frac) * cos)

    def train_step(self) -> float:
        model = self.checkpoint_model()
        model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        loss, stats = self.step_loss(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.opt.step()
        self.step += 1
        self.data_pos += self.batch_size
        value = float(loss.detach())
        self.losses.append(value)
        self.last_stats = stats
        return value

    def run(self, steps: int | None = None, stop_on_nonfinite: bool = False) -> list[float]:
        """Run ``steps`` more steps (default: the rest of the budget); returns their losses.

        ``stop_on_nonfinite``: stop after the first step whose loss is not finite (the one-call
        ``train`` forms then raise ``TrainingDiverged``; checkpointing loops keep the default and
        see the diverged metrics)."""
        todo = self.total_steps - self.step if steps is None else min(steps, self.total_steps - self.step)
        out: list[float] = []
        bar = _progress_bar(self.progress)
        task = bar.add_task(self.progress_label, total=todo, loss=float("nan"), bps=0.0) if bar else None
        t0 = time.perf_counter()
        with self.run_context():
            try:
                if bar:
                    bar.start()
                for i in range(todo):
                    out.append(self.train_step())
                    elapsed = time.perf_counter() - t0
                    if bar:
                        bps = (i + 1) * self.batch_size * self.seq_len / max(elapsed, 1e-9)
                        bar.update(task, advance=1, loss=out[-1], bps=bps)
                    if self.wall_seconds is not None and self.wall + elapsed >= self.wall_seconds:
                        break
                    if stop_on_nonfinite and not math.isfinite(out[-1]):
                        break
            finally:
                if bar:
                    bar.stop()
                self.wall += time.perf_counter() - t0
        return out

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            self.model_key: {k: v.detach().clone() for k, v in self.checkpoint_model().state_dict().items()},
            "optimizer": {k: v.detach().clone() for k, v in
                          flatten_optimizer_state(self.opt.state_dict()["state"]).items()},
            "train_state": self.train_state(),
        }

    def resume_settings(self) -> dict[str, int]:
        """The settings that decide the batches and the schedule: a resume must have the same ones.
        ``data_bytes`` and ``data_crc`` (the training data's length and CRC-32, taken once) stand in
        for the data, which is not recorded: other data of the same length (a fixed-size shard) is
        told apart too."""
        if getattr(self, "_data_crc", None) is None:
            self._data_crc = zlib.crc32(self.train_bytes)
        return {"seed": self.seed, "total_steps": self.total_steps, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "data_bytes": len(self.train_bytes), "data_crc": self._data_crc}

    def train_state(self) -> dict[str, torch.Tensor]:
        """Step, data position, the resume settings (int64), the RNG states (uint8) and the last
        RECENT_LOSSES losses (float64: loss_last10, which a plateau gate reads, is the same after a
        resume as in an unbroken run) and the wall time spent (a wall_seconds budget and bytes per
        second count it after a resume; the one entry that differs between runs)."""
        i64 = lambda v: torch.tensor(int(v), dtype=torch.int64)  # noqa: E731
        return {"step": i64(self.step), "data_pos": i64(self.data_pos),
                **{name: i64(v) for name, v in self.resume_settings().items()},
                "rng.trainer": self.gen.get_state(), "rng.torch": torch.get_rng_state(),
                "recent_losses": torch.tensor(self.losses[-RECENT_LOSSES:], dtype=torch.float64),
                "wall_seconds": torch.tensor(float(self.wall), dtype=torch.float64)}

    def load_state_dict(self, sd: dict[str, dict[str, torch.Tensor]]) -> None:
        ts = sd["train_state"]
        for name, mine in self.resume_settings().items():
            if name in ts and int(ts[name]) != mine:  # absent from states saved before it was recorded
                raise ValueError(f"training state mismatch: saved {name}={int(ts[name])}, this trainer has {mine} "
                                 f"(resume with the same settings and data)")
        self.checkpoint_model().load_state_dict(sd[self.model_key])
        opt_sd = self.opt.state_dict()
        opt_sd["state"] = unflatten_optimizer_state(sd["optimizer"])
        self.opt.load_state_dict(opt_sd)
        self.step, self.data_pos = int(ts["step"]), int(ts["data_pos"])
        self.gen.set_state(ts["rng.trainer"])
        torch.set_rng_state(ts["rng.torch"])
        if "recent_losses" in ts:  # (absent from states saved before they were recorded)
            self.losses = [float(v) for v in ts["recent_losses"].to(torch.float64).reshape(-1)]
        if "wall_seconds" in ts:
            self.wall = max(0.0, float(ts["wall_seconds"]))

    def optimizer_meta(self) -> list[dict]:
        """JSON-able param groups (without the parameter tensors) for checkpoint metadata."""
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                | {"params": len(g["params"])} for g in self.opt.param_groups]


class Trainer(CheckpointState):
    """Deterministic trainer for any core (see module docstring)."""

    def __init__(self, core, data: bytes, *, steps: int, seed: int = 0, batch_size: int = 16,
                 seq_len: int | None = None, lr: float | None = None, warmup: int | None = None,
                 min_lr_frac: float = 0.1, weight_decay: float = 0.1, grad_clip: float = 1.0,
                 holdout_frac: float = 0.05, eval_data: bytes | None = None, eval_bytes: int | None = None,
                 wall_seconds: float | None = None, progress: bool = False):
        check_schedule(steps, seed, batch_size, lr, warmup, min_lr_frac, weight_decay, grad_clip, seq_len,
                       wall_seconds, eval_bytes)
        missing = [m for m in ("prepare", "stream_units", "training_loss", "bpb") if not hasattr(core, m)]
        if missing:
            raise TypeError(f"cores.train: expected a core built by cores.build, got {type(core).__name__} "
                            f"(it has no {', '.join(missing)})")
        data = checks.as_bytes(data, "data")
        if not data:
            raise ValueError("training data is empty")
        if eval_data is not None:
            eval_data = checks.as_bytes(eval_data, "eval_data")
        self.core, self.total_steps, self.seed = core, int(steps), int(seed)
        self.batch_size, self.grad_clip, self.min_lr_frac = batch_size, grad_clip, min_lr_frac
        self.lr = float(lr if lr is not None else getattr(core, "default_lr", 1e-3))
        self.warmup = int(warmup if warmup is not None else max(1, min(200, self.total_steps // 20)))
        self.wall_seconds, self.progress, self.eval_bytes = wall_seconds, progress, eval_bytes
        if eval_data is None:
            self.train_bytes, self.heldout = split_holdout(data, holdout_frac)
        else:
            self.train_bytes, self.heldout = data, eval_data
        core.prepare(self.train_bytes)
        self.stream = core.stream_units(self.train_bytes)  # (N,) long
        n_units = self.stream.numel()
        # no units (1 byte, all held out): nothing to measure, count in bytes so the check below refuses it
        self.bytes_per_unit = len(self.train_bytes) / n_units if n_units else 1.0
        self.seq_len = int(seq_len or getattr(core, "block_bytes", 256))
        self.seq_units = max(2, round(self.seq_len / self.bytes_per_unit))
        if n_units < self.seq_units + 1:  # one whole window is enough: batch() then draws offset 0
            raise ValueError(f"training data too short: {n_units} units for windows of "
                             f"{self.seq_units + 1}; give more data or a smaller seq_len")
        self.opt = adamw(core.parameters(), self.lr, weight_decay)
        self.gen = torch.Generator().manual_seed(self.seed)  # for stochastic layers; saved and restored
        self.step = 0
        self.data_pos = 0
        self.losses: list[float] = []
        self.last_stats: dict = {}
        self.wall = 0.0

    # ---- schedule and data -----------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """The windows of ``step``: (batch_size, seq_units + 1) units."""
        n = self.stream.numel() - self.seq_units - 1
        key = (stream_id("train-batch") ^ (self.seed * 0x9E3779B97F4A7C15)) & MASK64
        offs = stream_uint64(key, self.batch_size, start=step * self.batch_size) % np.uint64(n + 1)
        idx = torch.from_numpy(offs.astype(np.int64))[:, None] + torch.arange(self.seq_units + 1)
        return self.stream[idx]

    # ---- training ------------------------------------------------------------------------------
    def step_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        return self.core.training_loss(self.batch(step))

    def check_evaluable(self) -> None:
        """Refuse (ValueError), before any training, a held-out tail too short for ``evaluate``."""
        check_eval_data(self.heldout, self.eval_bytes, "eval_data")

    def evaluate(self, data: bytes | None = None) -> float:
        """Held-out bits per byte (default: the held-out tail, capped at ``eval_bytes``), in windows
        of the training ``seq_len`` bytes."""
        data = self.heldout if data is None else data
        if self.eval_bytes:
            data = data[: self.eval_bytes]
        return float(self.core.bpb(data, window_bytes=self.seq_len))

    def metrics(self, evaluate: bool = True) -> dict:
        last = self.losses[-10:]
        m = {"steps": self.step, "loss": self.losses[-1] if self.losses else float("nan"),
             "loss_last10": sum(last) / len(last) if last else float("nan"),
             "bytes_seen": int(round(self.step * self.batch_size * self.seq_units * self.bytes_per_unit)),
             "wall_seconds": self.wall, "batch_size": self.batch_size, "seq_len": self.seq_len,
             "lr": self.lr, "params": int(self.core.num_params()), "seed": self.seed,
             **{f"last_{k}": v for k, v in self.last_stats.items()}}
        m["bytes_per_second"] = m["bytes_seen"] / self.wall if self.wall else 0.0
        if evaluate:
            t0 = time.perf_counter()
            m["heldout_bpb"] = self.evaluate()
            m["heldout_bytes"] = len(self.heldout[: self.eval_bytes] if self.eval_bytes else self.heldout)
            m["eval_seconds"] = time.perf_counter() - t0
        return m

def _progress_bar(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[bps]:,.0f} B/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))


def train(core, data: bytes, steps: int, seed: int = 0, *, batch_size: int = 16, seq_len: int | None = None,
          lr: float | None = None, wall_seconds: float | None = None, progress: bool = True,
          eval_data: bytes | None = None, evaluate: bool = True, **kwargs) -> dict:
    """Train ``core`` in place for ``steps`` steps (or until ``wall_seconds``) -> metrics dict.

    Metrics: steps, loss (last step), loss_last10, heldout_bpb (on ``eval_data`` or the held-out
    tail of ``data``), bytes_seen, wall_seconds, bytes_per_second, params, ... Deterministic for a
    step budget: same core init, data, seed and steps give bit-identical weights. A run whose loss
    or weights stop being finite stops there and raises ``TrainingDiverged`` (a ValueError).
    """
    trainer = Trainer(core, data, steps=steps, seed=seed, batch_size=batch_size, seq_len=seq_len, lr=lr,
                      wall_seconds=wall_seconds, progress=progress, eval_data=eval_data, **kwargs)
    if evaluate:
        trainer.check_evaluable()
    trainer.run(stop_on_nonfinite=True)
    check_finite_run("training", trainer, lambda: trainer.metrics(evaluate=False))
    return trainer.metrics(evaluate=evaluate)

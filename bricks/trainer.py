"""Training a brick with its host frozen: seeded, deterministic for a step budget, resumable bit-exactly.

``BrickTrainer`` mirrors ``cores.train.Trainer``: AdamW over the brick's parameters only, linear
warm-up then cosine decay, batches of domain windows at offsets drawn from a counter-based generator
keyed by (seed, step). The host runs under ``torch.no_grad`` (no host tensor is ever written, no
gradient reaches it) in eval mode, batched (exactness is only needed for evaluation).

Sparse bricks: loss = CE of (host logits + decoded brick delta) on domain windows
+ ``general_weight`` x KL(host || host+brick) on ``general_batch`` windows of general text per step
(``general_mode="kl"``; ``"ce"`` mixes general text into the CE instead), so the brick learns to
leave general text alone and its router's activity gate learns to stay quiet off-domain
+ ``balance_weight`` x the usual load-balancing term over the experts. Without ``general`` there is
no such term: a UserWarning says so (unless ``general_weight=0`` asks for none).
Portable decoders: CE of the decoder's own logits on domain windows (the host is not used).

``state_dict()`` -> {"brick", "optimizer", "train_state"} of plain tensors (DESIGN.md section 10);
``load_state_dict`` then ``run()`` continues bit for bit. ``train(...)`` is the one-call form.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from bricks.api import BrickModel, attach, decoded, fits
from bricks.common import num_params
from cores import checks
from cores.base import bytes_to_tensor
from cores.train import CheckpointState, adamw, check_eval_data, check_finite_run, check_schedule, split_holdout
from kernels import batch_invariant as bi
from kernels.counter_rng import MASK64, stream_id, stream_uint64

DEFAULT_LR = {"sparse": 6e-3, "portable": 4e-3}


def _windows(stream: torch.Tensor, key_name: str, seed: int, n: int, start: int, length: int) -> torch.Tensor:
    """n windows of ``length`` units at counter-based offsets (stream position ``start``)."""
    span = stream.numel() - length
    key = (stream_id(key_name) ^ (seed * 0x9E3779B97F4A7C15)) & MASK64
    offs = stream_uint64(key, n, start=start) % np.uint64(span + 1)
    idx = torch.from_numpy(offs.astype(np.int64))[:, None] + torch.arange(length)
    return stream[idx]


def pow2(bits: float) -> float:
    """2 ** bits as a float: infinity past the float range (``2.0 ** 1100`` raises OverflowError)."""
    try:
        return float(2.0 ** bits)
    except OverflowError:
        return math.inf


def ppl_ratio(bpb_a: float, bpb_b: float) -> float:
    """PPL(a) / PPL(b) from bits per byte (infinity when a is more than ~1024 bits per byte worse)."""
    return pow2(bpb_a - bpb_b)


def measure(host, brick, domain: bytes, general: bytes | None = None, window_bytes: int | None = None) -> dict:
    """Exact held-out figures of ``brick`` on ``host``: BPB and PPL with and without, and the ratios.

    Keys: domain_bpb_host, domain_bpb, domain_ppl_host, domain_ppl, domain_ratio (PPL with / without);
    the same with ``general_`` when ``general`` is given. Portable decoders are measured the same way
    (their "with" figures do not depend on the host).
    """
    model = attach(host, brick)
    w = window_bytes or getattr(host, "block_bytes", 256)
    out: dict = {}
    for name, data in (("domain", domain), ("general", general)):
        if data is None:
            continue
        b0, b1 = float(host.bpb(data, window_bytes=w)), float(model.bpb(data, window_bytes=w))
        out.update({f"{name}_bpb_host": b0, f"{name}_bpb": b1, f"{name}_ppl_host": pow2(b0),
                    f"{name}_ppl": pow2(b1), f"{name}_ratio": ppl_ratio(b1, b0)})
    return out


def max_logit_diff(models, data: bytes, window_bytes: int = 256, max_windows: int = 8) -> float:
    """Largest |logit difference| between ``models`` (e.g. one brick attached to several hosts) on the
    first ``max_windows`` windows of ``data``, each evaluated exactly (eval mode, per sequence)."""
    checks.integer(window_bytes, "window_bytes", 1)  # 0 was a ZeroDivisionError below
    checks.integer(max_windows, "max_windows", 1)
    n = min(max_windows, len(data) // window_bytes)
    if n < 1 or len(models) < 2:
        raise ValueError("max_logit_diff: need two models and at least one full window of data")
    x = bytes_to_tensor(data[: n * window_bytes]).view(n, window_bytes)
    outs = []
    for m in models:
        modes = [(mod, mod.training) for mod in m.modules()]
        try:
            with torch.no_grad():
                outs.append(m.eval()(x))
        finally:
            for mod, mode in modes:
                mod.training = mode
    return max(float((o - outs[0]).abs().max()) for o in outs[1:])


class BrickTrainer(CheckpointState):
    """Deterministic trainer for a brick on a frozen host (see module docstring)."""

    model_key = "brick"
    progress_label = "brick"

    def checkpoint_model(self):
        return self.brick

    def resume_settings(self) -> dict[str, int]:
        """The shared settings, and the general-text batches' size, data length (0: none) and CRC-32
        (other general text of the same length changed the batches unsaid)."""
        general = 0 if self.general_train is None else len(self.general_train)
        if getattr(self, "_general_crc", None) is None:
            self._general_crc = 0 if self.general_train is None else zlib.crc32(self.general_train)
        return {**super().resume_settings(), "general_batch": self.general_batch, "general_bytes": general,
                "general_crc": self._general_crc}

    def __init__(self, brick, host, data: bytes, *, steps: int, seed: int = 0, general: bytes | None = None,
                 batch_size: int = 16, general_batch: int | None = None, seq_len: int | None = None,
                 lr: float | None = None, warmup: int | None = None, min_lr_frac: float = 0.1,
                 weight_decay: float = 0.0, grad_clip: float = 1.0, general_weight: float = 1.0,
                 general_mode: str = "kl", balance_weight: float = 0.01, holdout_frac: float = 0.05,
                 eval_data: bytes | None = None, general_eval: bytes | None = None,
                 eval_bytes: int | None = None, wall_seconds: float | None = None, progress: bool = False):
        check_schedule(steps, seed, batch_size, lr, warmup, min_lr_frac, weight_decay, grad_clip, seq_len,
                       wall_seconds, eval_bytes)
        if general_batch is not None:
            checks.integer(general_batch, "general_batch", 0)
        checks.real(general_weight, "general_weight", minimum=0.0)
        checks.real(balance_weight, "balance_weight", minimum=0.0)
        if getattr(brick, "mvc_kind", None) != "brick" or not hasattr(brick, "brick_kind"):
            raise ValueError("BrickTrainer: expected a brick built by bricks.build")
        if brick.mvc_arch.endswith("-int8"):
            raise ValueError("BrickTrainer: int8 artifacts are not trained; train the float brick, then quantize")
        if general_mode not in ("kl", "ce"):
            raise ValueError("general_mode must be 'kl' or 'ce'")
        self.kind = brick.brick_kind
        if self.kind == "sparse":
            if host is None:
                raise ValueError("a sparse brick trains on a host: pass host=")
            why = fits(host, brick)
            if why:
                raise ValueError(f"brick does not fit the host: {why}")
        data = checks.as_bytes(data, "data")
        general = None if general is None else checks.as_bytes(general, "general")
        eval_data = None if eval_data is None else checks.as_bytes(eval_data, "eval_data")
        general_eval = None if general_eval is None else checks.as_bytes(general_eval, "general_eval")
        if not data:
            raise ValueError("domain training data is empty")
        self.brick, self.host = brick, host
        self.total_steps, self.seed, self.batch_size = int(steps), int(seed), int(batch_size)
        self.general_batch = int(general_batch if general_batch is not None else max(1, batch_size // 4))
        self.lr = float(lr if lr is not None else DEFAULT_LR[self.kind])
        self.warmup = int(warmup if warmup is not None else max(1, min(100, self.total_steps // 20)))
        self.min_lr_frac, self.grad_clip = min_lr_frac, grad_clip
        self.general_weight, self.general_mode, self.balance_weight = general_weight, general_mode, balance_weight
        self.wall_seconds, self.progress, self.eval_bytes = wall_seconds, progress, eval_bytes
        if eval_data is None:
            self.train_bytes, self.heldout = split_holdout(data, holdout_frac)
        else:
            self.train_bytes, self.heldout = data, eval_data
        self.general_train = self.general_heldout = None
        if general is not None:
            if general_eval is None:
                self.general_train, self.general_heldout = split_holdout(general, holdout_frac)
            else:
                self.general_train, self.general_heldout = general, general_eval
        self.seq_len = int(seq_len or getattr(host, "block_bytes", None) or 256)
        if self.kind == "sparse" and self.seq_len < brick.patch_bytes:  # no whole patch: nothing to route
            raise ValueError(f"seq_len must be >= {brick.patch_bytes} for a sparse brick (its router reads whole "
                             f"{brick.patch_bytes}-byte patches), got {self.seq_len}")
        self.stream = bytes_to_tensor(self.train_bytes)
        self.general_stream = bytes_to_tensor(self.general_train) if self.general_train is not None else None
        for name, s in (("domain", self.stream), ("general", self.general_stream)):
            if s is not None and s.numel() < self.seq_len + 1:  # one whole window is enough (_windows: offset 0)
                raise ValueError(f"{name} training data too short: {s.numel()} bytes for windows of "
                                 f"{self.seq_len + 1}; give more data or a smaller seq_len")
        self.opt = adamw(brick.parameters(), self.lr, weight_decay)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.step = 0
        self.data_pos = 0
        self.losses: list[float] = []
        self.last_stats: dict = {}
        self.wall = 0.0
        if self.kind == "sparse" and self.general_stream is None and self.general_weight and self.general_batch:
            warnings.warn("training a sparse brick without a general-text regulariser: nothing keeps it from "
                          "changing the host's predictions on general text; pass general=<general-text bytes> "
                          "(e.g. bricks.train(brick, host=core, data=domain, general=general_text, ...)), "
                          "or general_weight=0 to train without one on purpose", UserWarning, stacklevel=2)

    def check_evaluable(self) -> None:
        """Refuse (ValueError), before any training, held-out data too short for ``metrics``."""
        check_eval_data(self.heldout, self.eval_bytes, "eval_data")
        if self.general_heldout is not None and self.host is not None:  # (measured on the host only)
            check_eval_data(self.general_heldout, self.eval_bytes, "general_eval")

    # ---- schedule and data -----------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """Domain windows of ``step``: (batch_size, seq_len + 1) bytes."""
        return _windows(self.stream, "brick-batch", self.seed, self.batch_size, step * self.batch_size,
                        self.seq_len + 1)

    def general_windows(self, step: int) -> torch.Tensor | None:
        """General-text windows of ``step``: (general_batch, seq_len + 1) bytes, or None."""
        if self.general_stream is None or self.general_batch <= 0:
            return None
        return _windows(self.general_stream, "brick-general", self.seed, self.general_batch,
                        step * self.general_batch, self.seq_len + 1)

    # ---- losses ------------------------------------------------------------------------------------
    def _sparse_logits(self, x: torch.Tensor):
        with torch.no_grad():
            host_logits, abi, _ = self.host.forward_with_abi(x)
        delta, info = self.brick.compute(x, abi)
        return host_logits, host_logits + decoded(self.host.head.weight.detach(), delta, host_logits.dtype), info

    def loss(self, step: int) -> tuple[torch.Tensor, dict]:
        w = self.batch(step)
        x, y = w[:, :-1], w[:, 1:]
        if self.kind == "portable":
            ce = F.cross_entropy(self.brick(x).reshape(-1, 256), y.reshape(-1))
            return ce, {"ce": float(ce.detach())}
        _, logits, info = self._sparse_logits(x)
        ce = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        loss, stats = ce, {"ce": float(ce.detach()), "activity_domain": float(info["activity"].detach().mean())}
        if self.balance_weight:
            frac = info["mask"].detach().mean(dim=(0, 1)) / self.brick.top_k  # share of routed slots
            bal = self.brick.experts * (frac * info["probs"].mean(dim=(0, 1))).sum()
            loss = loss + self.balance_weight * bal
            stats["balance"] = float(bal.detach())
        g = self.general_windows(step)
        if g is not None and self.general_weight:
            xg, yg = g[:, :-1], g[:, 1:]
            host_g, logits_g, info_g = self._sparse_logits(xg)
            if self.general_mode == "kl":
                p_log = F.log_softmax(host_g, dim=-1)
                term = (p_log.exp() * (p_log - F.log_softmax(logits_g, dim=-1))).sum(-1).mean()
            else:
                term = F.cross_entropy(logits_g.reshape(-1, 256), yg.reshape(-1))
            loss = loss + self.general_weight * term
            stats[f"general_{self.general_mode}"] = float(term.detach())
            stats["activity_general"] = float(info_g["activity"].detach().mean())
        return loss, stats

    # ---- training ------------------------------------------------------------------------------
    def step_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        with bi.enabled(False):
            return self.loss(step)

    @contextlib.contextmanager
    def run_context(self):
        """The frozen host stays in eval mode while the brick trains; modes restored afterwards."""
        host_modes = [(m, m.training) for m in self.host.modules()] if self.host is not None else []
        if self.host is not None:
            self.host.eval()
        try:
            yield
        finally:
            for m, mode in host_modes:
                m.training = mode

    # ---- evaluation ----------------------------------------------------------------------------
    def model(self) -> BrickModel:
        return attach(self.host, self.brick) if self.host is not None else BrickModel(None, self.brick)

    def evaluate(self) -> dict:
        """Exact held-out figures (``measure``) on the domain and, if given, general held-out tails."""
        cap = (lambda d: d[: self.eval_bytes]) if self.eval_bytes else (lambda d: d)
        modes = [(m, m.training) for m in self.brick.modules()]
        try:
            if self.host is None:
                model = BrickModel(None, self.brick)
                b = float(model.bpb(cap(self.heldout), window_bytes=self.seq_len))
                return {"domain_bpb": b, "domain_ppl": pow2(b)}
            return measure(self.host, self.brick, cap(self.heldout),
                           cap(self.general_heldout) if self.general_heldout is not None else None,
                           window_bytes=self.seq_len)
        finally:
            for m, mode in modes:
                m.training = mode

    def metrics(self, evaluate: bool = True) -> dict:
        last = self.losses[-10:]
        m = {"steps": self.step, "loss": self.losses[-1] if self.losses else float("nan"),
             "loss_last10": sum(last) / len(last) if last else float("nan"),
             "bytes_seen": self.step * self.batch_size * self.seq_len, "wall_seconds": self.wall,
             "batch_size": self.batch_size, "general_batch": self.general_batch if self.general_stream is not None
             else 0, "seq_len": self.seq_len, "lr": self.lr, "params": num_params(self.brick), "seed": self.seed,
             "kind": self.kind, **{f"last_{k}": v for k, v in self.last_stats.items()}}
        m["bytes_per_second"] = m["bytes_seen"] / self.wall if self.wall else 0.0
        if evaluate:
            t0 = time.perf_counter()
            m.update(self.evaluate())
            m["eval_seconds"] = time.perf_counter() - t0
        return m

def train(brick, host=None, data: bytes = b"", steps: int = 100, seed: int = 0, general: bytes | None = None, *,
          evaluate: bool = True, progress: bool = True, **kwargs) -> dict:
    """Train ``brick`` in place on ``data`` with ``host`` frozen for ``steps`` steps -> metrics dict.

    Deterministic for a step budget: the same brick init, host, data, seed and steps give a
    bit-identical brick. Metrics: steps, loss, loss_last10, wall_seconds, params, ... and (with
    ``evaluate``) the held-out domain_ratio / general_ratio of ``measure``. A run whose loss or brick
    weights stop being finite stops there and raises ``cores.TrainingDiverged`` (a ValueError).
    """
    trainer = BrickTrainer(brick, host, data, steps=steps, seed=seed, general=general, progress=progress, **kwargs)
    if evaluate:
        trainer.check_evaluable()
    trainer.run(stop_on_nonfinite=True)
    check_finite_run("brick training", trainer, lambda: trainer.metrics(evaluate=False))
    return trainer.metrics(evaluate=evaluate)

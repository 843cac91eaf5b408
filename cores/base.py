"""What every core shares: the training/evaluation interface the trainer and benchmarks rely on.

A core is an ``nn.Module`` with ``mvc_arch`` / ``mvc_config`` (so mvc can rebuild it) and:
- ``prepare(data)``: one-time set-up from the training bytes (the BPE core fits its tokenizer);
- ``stream_units(data) -> LongTensor (N,)``: the units it trains on (bytes, or BPE tokens);
- ``training_loss(window (B, L+1)) -> (loss, stats)``: next-unit loss on a window of units;
- ``bpb(data) -> float``: bits per byte on ``data`` (total NLL in bits / bytes scored);
- ``generate(prompt, n_bytes) -> bytes``: greedy generation with a cache.

Byte-level cores get ``stream_units``/``bpb`` from ``ByteCore``: the data is cut into
non-overlapping windows of ``block_bytes`` bytes and bytes 1..L-1 of each window are scored from the
logits at positions 0..L-2 (logits[:, t] predicts byte t+1). The evaluation runs in eval mode, so it is
exact (per-sequence, kernels/batch_invariant.py) and reproducible bit for bit.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from cores import checks

LN2 = math.log(2.0)


def keeps_global_rng(fn):
    """Decorator: ``fn`` (a model builder) leaves torch's global CPU RNG as it found it. Every weight
    comes from a private seeded generator, but torch's module constructors draw their default init
    from the global RNG first, so building a model used to shift the user's own random stream."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)
    return wrapper


def bytes_to_tensor(data: bytes, name: str = "data") -> torch.Tensor:
    """bytes (or bytearray / memoryview) -> LongTensor (N,) of 0..255; TypeError for str or tensors."""
    data = checks.as_bytes(data, name)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else torch.zeros(0, dtype=torch.long)


class CoreBase(nn.Module):
    """Common parts of every core (see module docstring)."""

    mvc_arch: str = ""
    mvc_kind: str = "core"  # what mvc records as the component's kind, whatever it is named
    block_bytes: int = 256
    default_lr: float = 1e-3

    def num_params(self) -> int:
        """Trainable parameter count (fixed buffers such as the canonical head are not counted)."""
        return sum(p.numel() for p in self.parameters())

    def prepare(self, data: bytes) -> None:
        """One-time set-up from training bytes; nothing to do for byte-level cores."""

    def stream_units(self, data: bytes) -> torch.Tensor:
        return bytes_to_tensor(data)

    def bytes_of_units(self, units: torch.Tensor) -> int:
        """Number of bytes a window of units covers."""
        return int(units.numel())


class ByteCore(CoreBase):
    """Byte-level cores: forward(byte_ids (B, T)) -> logits (B, T, 256), logits[:, t] predicts byte t+1."""

    def training_loss(self, window: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x, y = window[:, :-1], window[:, 1:]
        logits = self(x)  # (B, T, 256)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        return loss, {"ce": float(loss.detach())}

    @torch.inference_mode()
    def window_nll_bits(self, windows: torch.Tensor) -> torch.Tensor:
        """Summed NLL in bits of bytes 1..L-1 for each window (N, L) -> float64 (N,)."""
        logits = self(windows)  # (N, L, 256)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, 256).float(), windows[:, 1:].reshape(-1),
                              reduction="none").view(windows.shape[0], -1)
        return nll.double().sum(dim=1) / LN2

    def bpb(self, data: bytes, window_bytes: int | None = None, batch_size: int = 8) -> float:
        """Bits per byte on ``data`` (exact evaluation; see module docstring)."""
        L = self.block_bytes if window_bytes is None else checks.integer(window_bytes, "window_bytes", 2)
        checks.integer(batch_size, "batch_size", 1)
        x = bytes_to_tensor(data)
        if x.numel() < 2:
            raise ValueError("bpb: need at least 2 bytes")
        was_training = self.training
        self.eval()
        try:
            n_full = x.numel() // L
            parts: list[float] = []
            scored = 0
            if n_full:
                w = x[: n_full * L].view(n_full, L)
                for chunk in w.split(batch_size):
                    parts.extend(self.window_nll_bits(chunk).tolist())
                scored += n_full * (L - 1)
            tail = x[n_full * L:]
            if tail.numel() >= 2:
                parts.extend(self.window_nll_bits(tail[None]).tolist())
                scored += tail.numel() - 1
        finally:
            self.train(was_training)
        return math.fsum(parts) / scored

"""Small trained fixtures for tests (bricks and semantic CI): synthetic streams, host pairs, bricks.

- ``synthetic_general(n, seed)``: English-like sentences over a small seeded vocabulary with a
  first-order word chain (quickly learnable general text);
- ``synthetic_python(n, seed)``: seeded Python-like functions (the domain): punctuation, indentation
  and keywords the general text never shows, so hosts trained on general text do badly on it;
- ``canonical_pair()``: two tiny canonical LayerCake hosts (seeds 0 and 1) trained on the general
  stream and a sparse brick trained on host A (host frozen, KL to it on general text);
- ``legacy_pair()``: the negative control: the same with *legacy* cores (``canonical=False``: no
  anchors, learned seed-dependent heads); the legacy brick copies exactly into host B's commit yet
  regresses its domain PPL there;
- ``trained_hosts()``: both pairs plus the streams, as one ``Fixture``.

Every builder is deterministic and cached per process (``functools.lru_cache``), so tests in
different directories share one training run per session; treat the returned modules as read-only
(copy before training them further). Total training: about 30 s on one thread of a shared 2-core box.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

import cores
from bricks.api import build
from bricks.trainer import BrickTrainer

HOST_STEPS = 200
BRICK_STEPS = 150
SEQ_LEN = 64
BATCH = 8
STREAM_BYTES = 60_000
EVAL_BYTES = 4_000


def synthetic_general(n_bytes: int, seed: int = 0) -> bytes:
    """English-like text: sentences over a 40-word seeded vocabulary, each word followed by one of 3."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypgb"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 8))) for _ in range(40)]
    nxt = rng.integers(0, len(words), size=(len(words), 3))
    out, size, w = [], 0, 0
    while size < n_bytes:
        sent = []
        for _ in range(rng.integers(4, 11)):
            w = int(nxt[w, rng.integers(0, 3)])
            sent.append(words[w])
        s = " ".join(sent).capitalize() + (". " if rng.random() < 0.9 else ".\n\n")
        out.append(s)
        size += len(s)
    return "".join(out).encode()[:n_bytes]


def synthetic_python(n_bytes: int, seed: int = 0) -> bytes:
    """Python-like source: seeded functions built from a few statement templates and identifiers."""
    rng = np.random.default_rng(seed + 1000)
    letters = np.array(list("abcdefghiklmnoprstuvwxyz"))
    names = ["".join(rng.choice(letters, size=rng.integers(3, 8))) for _ in range(14)]
    mods = ["os", "sys", "json", "math", "re"]

    def pick():
        return names[int(rng.integers(0, len(names)))]

    stmts = [
        lambda a, b, n: f"    {a} = {b} + {n}\n",
        lambda a, b, n: f"    if {a} > {n}:\n        return {b}\n",
        lambda a, b, n: f"    for {a} in range({n}):\n        {b}.append({a})\n",
        lambda a, b, n: f"    {a} = [{b} for {b} in {a} if {b}]\n",
        lambda a, b, n: f"    self.{a} = {b}\n",
        lambda a, b, n: f"    {a} = {b}.get('{a}', {n})\n",
    ]
    out, size = [], 0
    while size < n_bytes:
        parts = []
        if rng.random() < 0.15:
            parts.append(f"import {mods[int(rng.integers(0, len(mods)))]}\n\n")
        a, b = pick(), pick()
        parts.append(f"def {pick()}({a}, {b}):\n")
        for _ in range(rng.integers(2, 5)):
            parts.append(stmts[int(rng.integers(0, len(stmts)))](pick(), pick(), int(rng.integers(0, 10))))
        parts.append(f"    return {a}\n\n")
        s = "".join(parts)
        out.append(s)
        size += len(s)
    return "".join(out).encode()[:n_bytes]


@dataclass
class Pair:
    """Two hosts trained alike (seeds 0 and 1) and a sparse brick trained on host A."""

    host_a: torch.nn.Module
    host_b: torch.nn.Module
    brick: torch.nn.Module
    metrics: dict = field(default_factory=dict)


@dataclass
class Fixture:
    """Streams (train + held-out), the canonical pair and the legacy pair (see module docstring)."""

    general: bytes
    domain: bytes
    general_eval: bytes
    domain_eval: bytes
    canonical: Pair
    legacy: Pair
    seq_len: int = SEQ_LEN
    seconds: float = 0.0

    # shortcuts
    @property
    def host_a(self):
        return self.canonical.host_a

    @property
    def host_b(self):
        return self.canonical.host_b

    @property
    def brick(self):
        return self.canonical.brick

    @property
    def legacy_a(self):
        return self.legacy.host_a

    @property
    def legacy_b(self):
        return self.legacy.host_b

    @property
    def legacy_brick(self):
        return self.legacy.brick


@lru_cache(maxsize=4)
def streams(seed: int = 0, n_bytes: int = STREAM_BYTES) -> tuple[bytes, bytes, bytes, bytes]:
    """(general, domain, general_eval, domain_eval): seeded streams and their held-out tails (same vocabulary)."""
    g = synthetic_general(n_bytes + EVAL_BYTES, seed)
    d = synthetic_python(n_bytes + EVAL_BYTES, seed)
    return g[:n_bytes], d[:n_bytes], g[n_bytes:], d[n_bytes:]


def train_host(seed: int, canonical: bool = True, steps: int = HOST_STEPS, data_seed: int = 0, **overrides):
    """A tiny LayerCake host trained on the synthetic general stream (eval mode on return)."""
    general = streams(data_seed)[0]
    host = cores.build("layercake", "tiny", seed=seed, canonical=canonical, **overrides)
    cores.train(host, general, steps=steps, seed=seed, batch_size=BATCH, seq_len=SEQ_LEN, lr=5e-3,
                progress=False, evaluate=False)
    return host.eval()


def train_brick(host, steps: int = BRICK_STEPS, seed: int = 0, data_seed: int = 0, **options):
    """A sparse brick trained on the synthetic domain stream with ``host`` frozen (eval mode on return)."""
    general, domain, general_eval, domain_eval = streams(data_seed)
    brick = build("sparse", host=host, seed=seed)
    t = BrickTrainer(brick, host, domain, steps=steps, seed=seed, general=general, batch_size=BATCH,
                     seq_len=SEQ_LEN, eval_data=domain_eval, general_eval=general_eval, **options)
    t.run()
    return brick.eval(), t.metrics(evaluate=False)


@contextlib.contextmanager
def one_thread():
    """Run tiny models on one thread: on a shared 2-core machine, thread hand-offs cost more than they
    save at this size (measured 20-90 ms vs 500+ ms per tiny training step under load)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _pair(canonical: bool, host_steps: int, brick_steps: int, data_seed: int) -> Pair:
    t0 = time.perf_counter()
    with one_thread():
        a = train_host(0, canonical, host_steps, data_seed)
        b = train_host(1, canonical, host_steps, data_seed)
        brick, m = train_brick(a, brick_steps, 0, data_seed)
    return Pair(a, b, brick, {"brick": m, "seconds": time.perf_counter() - t0})


@lru_cache(maxsize=4)
def canonical_pair(host_steps: int = HOST_STEPS, brick_steps: int = BRICK_STEPS, data_seed: int = 0) -> Pair:
    """Canonical hosts A (seed 0) and B (seed 1) and a sparse brick trained on A (cached)."""
    return _pair(True, host_steps, brick_steps, data_seed)


@lru_cache(maxsize=4)
def legacy_pair(host_steps: int = HOST_STEPS, brick_steps: int = BRICK_STEPS, data_seed: int = 0) -> Pair:
    """Negative control (cached): legacy hosts A, B (``canonical=False``) and a brick trained on A."""
    return _pair(False, host_steps, brick_steps, data_seed)


@lru_cache(maxsize=4)
def trained_hosts(host_steps: int = HOST_STEPS, brick_steps: int = BRICK_STEPS, data_seed: int = 0) -> Fixture:
    """Streams + canonical pair + legacy pair: the one session-wide fixture (cached)."""
    t0 = time.perf_counter()
    can = canonical_pair(host_steps, brick_steps, data_seed)
    leg = legacy_pair(host_steps, brick_steps, data_seed)
    g, d, ge, de = streams(data_seed)
    return Fixture(g, d, ge, de, can, leg, SEQ_LEN, time.perf_counter() - t0)


def copied(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy (for tests that train or modify a fixture module)."""
    return copy.deepcopy(module)

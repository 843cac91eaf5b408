"""Shared fixtures for the cores tests: synthetic seeded byte streams and thread restoration."""
import numpy as np
import pytest
import torch


def synthetic_text(n_bytes: int, seed: int = 0) -> bytes:
    """A quickly learnable stream: sentences from a 24-word vocabulary with a first-order word chain."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwyp"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 7))) for _ in range(24)]
    nxt = rng.integers(0, 24, size=(24, 3))  # each word is followed by one of 3 words
    out, w = [], 0
    while sum(len(s) for s in out) < n_bytes:
        sent = []
        for _ in range(rng.integers(4, 10)):
            w = int(nxt[w, rng.integers(0, 3)])
            sent.append(words[w])
        out.append(" ".join(sent).capitalize() + ". ")
    return "".join(out).encode()[:n_bytes]


@pytest.fixture
def text():
    return synthetic_text(60_000, seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread: on a shared 2-core machine, OpenMP threads that spin
    on an oversubscribed CPU make training steps several times slower (measured 6x)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)

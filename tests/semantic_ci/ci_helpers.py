"""Shared helpers of the semantic CI tests: the bigram adapter's name, a trained bigram table, the
held-out text, and writing a repository's mvc.toml (the `ci_repo` fixture is in conftest.py)."""
import os

import numpy as np
import torch

from semantic_ci.probe import builtin_probe

ADAPTER = "semantic_ci.adapters:bigram"
HELD_OUT = builtin_probe(6000)[3000:]


def trained_table(data: bytes, smoothing=0.5) -> torch.Tensor:
    """Log bigram probabilities of `data` (rows: previous byte), a core the bigram adapter runs."""
    counts = np.full((256, 256), smoothing)
    arr = np.frombuffer(data, dtype=np.uint8)
    np.add.at(counts, (arr[:-1], arr[1:]), 1)
    return torch.tensor(np.log(counts / counts.sum(1, keepdims=True)), dtype=torch.float32)


def write_config(repo, text: str) -> None:
    with open(os.path.join(repo.root, "mvc.toml"), "w") as f:
        f.write(text)


def write_held_out(repo, data: bytes = HELD_OUT) -> None:
    with open(os.path.join(repo.root, "heldout.txt"), "wb") as f:
        f.write(data)


BASIC = f"""
[ci]
adapter = "{ADAPTER}"
probe_bytes = 2048
window = 128

[[ci.checks]]
name = "frozen"
kind = "exact-logits"
component = "core"
baseline = "HEAD~1"

[[ci.checks]]
name = "ppl"
kind = "ppl-ratio"
component = "core"
data = "heldout.txt"
baseline = "HEAD~1"
max_ratio = 1.05
"""


# the git hooks' tests: one gate against main, measured on heldout.txt
HOOK_CONFIG = """
[ci]
adapter = "semantic_ci.adapters:bigram"
window = 128

[[ci.checks]]
name = "general-ppl"
kind = "ppl-ratio"
component = "core"
data = "heldout.txt"
baseline = "main"
max_ratio = 1.05
"""

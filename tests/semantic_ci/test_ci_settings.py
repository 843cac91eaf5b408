"""Semantic CI settings taken as the README states them (probe h84): the probe a ppl-ratio or PX
check reads, bricks that do not attach, a general bound without general data, roundtrip without a
baseline, a bounded bootstrap, a first commit's missing component and its unborn branch."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvc.cli import cli
from mvc.errors import ConfigError
from semantic_ci import certificate, evaluate
from semantic_ci import config as cfgmod
from semantic_ci.probe import builtin_probe
from semantic_ci.runner import run_ci, verify

from ci_helpers import ADAPTER, trained_table, write_config


def table(seed=0) -> torch.Tensor:
    return trained_table(builtin_probe(1500 + seed))


@pytest.fixture
def ci_repo(repo, monkeypatch):
    monkeypatch.chdir(repo.root)
    return repo


def two_commits(repo):
    t = table()
    repo.commit({"core": {"table": t}}, message="a")
    t = t.clone()
    t[101, 32] += 1.0
    return repo.commit({"core": {"table": t}}, message="b")


# -- the bootstrap resamples in batches: bounded memory, the same interval for a seed ----------------
def test_bootstrap_draws_in_batches_and_gives_the_one_matrix_interval(monkeypatch):
    rng = np.random.default_rng(3)
    nll_c, nll_b = rng.random(101) * 90, rng.random(101) * 90
    count = rng.integers(60, 65, 101)
    idx = np.random.default_rng(0).integers(0, 101, size=(500, 101))  # the interval as one matrix gave it
    ratios = np.exp((nll_c[idx].sum(1) - nll_b[idx].sum(1)) / count[idx].sum(1))
    want = (float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)))
    sizes, real = [], np.random.default_rng

    class Recording:
        def __init__(self, seed):
            self.rng = real(seed)

        def integers(self, low, high, size):
            sizes.append(int(np.prod(size)))
            return self.rng.integers(low, high, size=size)
    monkeypatch.setattr(evaluate, "BOOTSTRAP_BATCH_DRAWS", 1000)
    monkeypatch.setattr(evaluate.np.random, "default_rng", Recording)
    assert evaluate.bootstrap_ratio(nll_c, nll_b, count, 500) == want
    assert sum(sizes) == 500 * 101 and max(sizes) <= 1000

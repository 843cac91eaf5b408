"""Each named config's parameter count is within 5% of its name, for every arch."""
import pytest

import cores

TARGETS = {"tiny": 0.35e6, "small": 2.0e6, "5m": 5.0e6, "15m": 14.8e6}


@pytest.mark.parametrize("arch", ["layercake", "byte-transformer", "bpe-transformer"])
@pytest.mark.parametrize("tier", list(TARGETS))
def test_param_count_within_5_percent(arch, tier):
    n = cores.build(arch, tier).num_params()
    assert abs(n - TARGETS[tier]) / TARGETS[tier] <= 0.05, f"{arch}/{tier}: {n:,} parameters"

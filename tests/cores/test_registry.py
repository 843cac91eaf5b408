"""Arch registry: built-ins without an install, process registration, complete mvc_config."""
import json
import re

import pytest
from torch import nn

import cores
from cores import registry


@pytest.mark.parametrize("arch", ["layercake", "byte-transformer", "bpe-transformer"])
def test_builtin_archs_build_and_rebuild(arch):
    core = cores.build(arch, "tiny", seed=3)
    assert core.mvc_arch == arch
    cfg = json.loads(json.dumps(core.mvc_config))  # JSON-serialisable
    assert cfg["seed"] == 3 and cfg["preset"] == "tiny"
    again = registry.build(arch, cfg)
    assert again.mvc_config == core.mvc_config
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in core.named_parameters()]
    assert arch in registry.available()


def test_overrides_are_recorded_and_rebuilt():
    core = cores.build("layercake", "tiny", seed=0, d_local=32)
    assert core.mvc_config["overrides"] == {"d_local": 32} and core.mvc_config["d_local"] == 32
    assert registry.build("layercake", core.mvc_config).cfg.d_local == 32
    with pytest.raises(ValueError, match="unknown layercake config fields"):
        cores.build("layercake", "tiny", nonsense=1)
    with pytest.raises(ValueError, match="unknown layercake config"):
        cores.build("layercake", "huge")


def test_unknown_arch_names_the_entry_point_group():
    with pytest.raises(KeyError, match="mvc.archs"):
        registry.build("no-such-arch", {})


def test_unknown_arch_is_a_value_error_listing_what_build_makes():
    import bricks  # noqa: F401 - registers the brick archs (and cores.convert the compressed one)
    import cores.convert  # noqa: F401
    with pytest.raises(ValueError) as info:  # was a bare KeyError; still one for older callers
        cores.build("nope")
    assert isinstance(info.value, KeyError) and str(info.value).startswith("unknown arch 'nope'")
    known, rebuilt = str(info.value).split("known: ")[1].split("; ")[:2]
    made = {"compressed", "sparse-brick", "portable-brick", "sparse-brick-int8", "portable-brick-int8"}
    assert {"bpe-transformer", "byte-transformer", "layercake"} <= set(known.split(", "))  # (and any test archs)
    assert not made & set(known.split(", ")) and rebuilt.startswith("rebuilt only from a recorded mvc_config")
    assert made <= set(rebuilt.split(": ")[1].split(", "))


@pytest.mark.parametrize("arch, how", [
    ("compressed", "cores.convert.convert"),  # was KeyError: 'base_arch'
    ("sparse-brick", "bricks.build('sparse', host=core)"),
    ("portable-brick", "bricks.build('portable')"),
    ("sparse-brick-int8", "bricks.quantize"),  # was KeyError: 'base_arch'
    ("portable-brick-int8", "bricks.quantize"),
])
def test_archs_made_by_other_code_say_how_to_make_them(arch, how):
    import bricks  # noqa: F401
    import cores.convert  # noqa: F401
    with pytest.raises(ValueError, match=f"no presets: such a model is made by {re.escape(how)}"):
        cores.build(arch)


def test_register_third_party_arch():
    class Tiny(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.lin = nn.Linear(cfg["n"], 2)

    registry.register("test-tiny", lambda cfg: Tiny(cfg))
    try:
        m = registry.build("test-tiny", {"n": 3})
        assert m.mvc_arch == "test-tiny" and m.mvc_config == {"n": 3}
        assert "test-tiny" in registry.available()
    finally:
        registry._registered.pop("test-tiny")

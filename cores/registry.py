"""Arch registry: build a core from (arch name, config dict), for ``cores.build`` and for mvc.

Lookup order for ``build(arch, config)``: archs registered in this process (``register``), the
built-in table (so tests work without an installed distribution), then the ``mvc.archs``
entry-point group, whose values are callables ``build(config: dict) -> nn.Module``. mvc's storage
layer rebuilds committed models through that same group without importing this package.

Some archs are made by other code (a converted core by ``cores.convert.convert``, bricks by
``bricks.build``) and only rebuilt here from the ``mvc_config`` they record: their builders carry a
``made_by`` attribute saying how to make one, and ``cores.build`` refuses them a preset name.

Every module built here carries ``mvc_arch`` (str) and ``mvc_config`` (a complete, JSON-serialisable
dict: preset, seed, overrides and every resolved field), so ``build(m.mvc_arch, m.mvc_config)``
rebuilds the same architecture.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable

from torch import nn

ENTRY_POINT_GROUP = "mvc.archs"

BUILTIN: dict[str, str] = {
    "layercake": "cores.layercake:build_from_config",
    "byte-transformer": "cores.baselines:build_byte_transformer",
    "bpe-transformer": "cores.baselines:build_bpe_transformer",
}

_registered: dict[str, Callable[[dict], nn.Module]] = {}


class UnknownArch(ValueError, KeyError):
    """No builder for an arch name: a ValueError (a bad argument, as everywhere in cores) that
    stays a KeyError for callers that caught the lookup failure as one."""

    __str__ = ValueError.__str__  # KeyError's would quote the whole message


def register(arch: str, builder: Callable[[dict], nn.Module]) -> None:
    """Register a builder for ``arch`` in this process (overrides built-ins and entry points)."""
    _registered[arch] = builder


def _load(target: str) -> Callable[[dict], nn.Module]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def builder(arch: str) -> Callable[[dict], nn.Module]:
    """The builder callable for ``arch``; ``UnknownArch`` naming the known archs when there is none."""
    if arch in _registered:
        return _registered[arch]
    if arch in BUILTIN:
        return _load(BUILTIN[arch])
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == arch:
            return ep.load()
    named, made = [], []
    for name in available():
        try:
            how = made_by(name)
        except Exception:  # a third-party entry point that fails to load: listed as it is
            how = None
        (made if how else named).append(name)
    rebuilt = f"; rebuilt only from a recorded mvc_config: {', '.join(made)}" if made else ""
    raise UnknownArch(f"unknown arch {arch!r} (known: {', '.join(named)}{rebuilt}; third-party archs register "
                      f"through the {ENTRY_POINT_GROUP!r} entry-point group)")


def made_by(arch: str) -> str | None:
    """How a model of ``arch`` is made when it is not built from a preset (its builder's ``made_by``),
    else None."""
    return getattr(builder(arch), "made_by", None)


def available() -> list[str]:
    """Names of every arch that ``build`` can construct."""
    names = set(_registered) | set(BUILTIN)
    names |= {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def build(arch: str, config: dict) -> nn.Module:
    """Build ``arch`` from a config dict (typically a module's ``mvc_config``)."""
    make = builder(arch)
    _check_fits_in_memory(arch, make, config)
    model = make(dict(config))
    if not getattr(model, "mvc_arch", None):
        model.mvc_arch = arch
    if getattr(model, "mvc_config", None) is None:
        model.mvc_config = dict(config)
    return model


def _check_fits_in_memory(arch: str, make, config: dict) -> None:
    """ValueError when the parameters ``config`` asks for exceed this machine's memory, found by a
    build on torch's meta device (which allocates nothing): `vocab_size=10**9` or
    `ngram_buckets=10**12` failed inside torch's allocator, naming no setting (or, with the memory,
    allocated hundreds of GB). A builder that cannot build on the meta device is left to the
    build, unless what failed there is a tensor whose byte count overflows (too large for any
    machine)."""
    import os

    import torch
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # (not POSIX)
        return
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            sizes = {k: (v.numel() * v.element_size(), tuple(v.shape)) for k, v in make(dict(config)).state_dict().items()}
    except RuntimeError as e:
        # A tensor whose byte count overflows int64 (d_model=10**9) fails even on the meta device;
        # skipping the check then left the real build to fail in the allocator, naming no setting.
        if "overflow" not in str(e):
            return  # (a bad setting: the real build names it)
        raise ValueError(f"{arch}: this config asks for a parameter too large to count in bytes "
                         f"({str(e).strip()}), far more than this machine's {memory / 1e9:,.1f} GB of memory: "
                         "check the sizes it sets") from None
    except Exception:  # noqa: BLE001 (a bad setting: the real build names it)
        return
    total = sum(n for n, _ in sizes.values())
    if total > memory:
        name, (_, shape) = max(sizes.items(), key=lambda kv: kv[1][0])
        raise ValueError(f"{arch}: this config's parameters take {total / 1e9:,.1f} GB, more than this machine's "
                         f"{memory / 1e9:,.1f} GB of memory (the largest, {name}, has shape {list(shape)}): "
                         "check the sizes it sets")


def build_named(name: str, config: str | dict = "tiny", seed: int | None = None, **overrides) -> nn.Module:
    """``cores.build``: arch name + preset name (or a full config dict) + seed + field overrides.

    With a config dict (e.g. another model's ``mvc_config``) an explicit ``seed`` replaces the
    dict's seed, and ``overrides`` replace its fields; the seed defaults to 0 with a preset name.
    """
    if not isinstance(name, str):
        raise TypeError(f"arch name must be a string, got {type(name).__name__} {name!r}")
    how = made_by(name)
    if how and not isinstance(config, dict):  # its builder needs fields no preset has (base model, host ABI)
        raise ValueError(f"arch {name!r} has no presets: such a model is made by {how}, and "
                         f"cores.build({name!r}, model.mvc_config) rebuilds one from the config it records")
    if isinstance(config, dict):
        return build(name, {**config, **({} if seed is None else {"seed": seed}), **overrides})
    return build(name, {"preset": config, "seed": 0 if seed is None else seed, "overrides": overrides})

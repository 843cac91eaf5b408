"""Arch registry: build a core from (arch name, config dict), for ``cores.build`` and for mvc.

Lookup order for ``build(arch, config)``: archs registered in this process (``register``), the
built-in table (so tests work without an installed distribution), then the ``mvc.archs``
entry-point group, whose values are callables ``build(config: dict) -> nn.Module``. mvc's storage
layer rebuilds committed models through that same group without importing this package.

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


def register(arch: str, builder: Callable[[dict], nn.Module]) -> None:
    """Register a builder for ``arch`` in this process (overrides built-ins and entry points)."""
    _registered[arch] = builder


def _load(target: str) -> Callable[[dict], nn.Module]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def builder(arch: str) -> Callable[[dict], nn.Module]:
    """The builder callable for ``arch``; KeyError naming the known archs when there is none."""
    if arch in _registered:
        return _registered[arch]
    if arch in BUILTIN:
        return _load(BUILTIN[arch])
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == arch:
            return ep.load()
    raise KeyError(f"unknown arch {arch!r} (known: {', '.join(available())}; third-party archs register "
                   f"through the {ENTRY_POINT_GROUP!r} entry-point group)")


def available() -> list[str]:
    """Names of every arch that ``build`` can construct."""
    names = set(_registered) | set(BUILTIN)
    names |= {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def build(arch: str, config: dict) -> nn.Module:
    """Build ``arch`` from a config dict (typically a module's ``mvc_config``)."""
    model = builder(arch)(dict(config))
    if not getattr(model, "mvc_arch", None):
        model.mvc_arch = arch
    if getattr(model, "mvc_config", None) is None:
        model.mvc_config = dict(config)
    return model


def build_named(name: str, config: str | dict = "tiny", seed: int | None = None, **overrides) -> nn.Module:
    """``cores.build``: arch name + preset name (or a full config dict) + seed + field overrides.

    With a config dict (e.g. another model's ``mvc_config``) an explicit ``seed`` replaces the
    dict's seed, and ``overrides`` replace its fields; the seed defaults to 0 with a preset name.
    """
    if not isinstance(name, str):
        raise TypeError(f"arch name must be a string, got {type(name).__name__} {name!r}")
    if isinstance(config, dict):
        return build(name, {**config, **({} if seed is None else {"seed": seed}), **overrides})
    return build(name, {"preset": config, "seed": 0 if seed is None else seed, "overrides": overrides})

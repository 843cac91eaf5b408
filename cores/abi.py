"""The ABI contract of LayerCake cores: ``AbiSpec``, its stable hash and mismatch reporting.

An ``AbiSpec`` names everything a brick relies on when it is moved between cores: the ABI width,
the patch size, the anchor spec (kernels/anchors.py) and the hash of the fixed output head
(cores/head.py). Its ``hash`` is the BLAKE3-256 hex digest of the canonical JSON of ``to_dict()``
(sorted keys, separators ``(",", ":")``, UTF-8), so it is the same on every machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import blake3

ABI_VERSION = 1

# The fields compared by ``first_mismatch``, in order, with the name used in messages.
_FIELDS = ("version", "d_abi", "patch_bytes", "anchor_spec", "head_hash")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8, NaN/Infinity refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


class AbiMismatch(ValueError):
    """Two ABI specs differ; ``field`` names the first differing field."""

    def __init__(self, field: str, ours: Any, theirs: Any):
        self.field, self.ours, self.theirs = field, ours, theirs
        super().__init__(f"ABI mismatch in {field}: {ours!r} != {theirs!r} "
                         f"(the brick and the host were trained under different ABI contracts)")


@dataclass(frozen=True)
class AbiSpec:
    """ABI spec: version, d_abi, patch_bytes, anchor spec (dict) and canonical head hash."""

    version: int = ABI_VERSION
    d_abi: int = 64
    patch_bytes: int = 4
    anchor_spec: dict = field(default_factory=dict)
    head_hash: str = ""

    def to_dict(self) -> dict:
        return {"version": self.version, "d_abi": self.d_abi, "patch_bytes": self.patch_bytes,
                "anchor_spec": json.loads(canonical_json(self.anchor_spec)), "head_hash": self.head_hash}

    @classmethod
    def from_dict(cls, d: dict) -> "AbiSpec":
        if not isinstance(d, dict):
            raise TypeError(f"AbiSpec.from_dict: expected a dict of {', '.join(_FIELDS)}, got {type(d).__name__}")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise ValueError(f"AbiSpec.from_dict: unknown fields {sorted(unknown)}")
        missing = [f for f in _FIELDS if f not in d]
        if missing:
            raise ValueError(f"AbiSpec.from_dict: missing fields {missing}")
        if not isinstance(d["anchor_spec"], dict):
            raise ValueError(f"AbiSpec.from_dict: anchor_spec must be a dict, got {type(d['anchor_spec']).__name__}")
        return cls(version=int(d["version"]), d_abi=int(d["d_abi"]), patch_bytes=int(d["patch_bytes"]),
                   anchor_spec=dict(d["anchor_spec"]), head_hash=str(d["head_hash"]))

    @property
    def hash(self) -> str:
        """BLAKE3-256 hex of the canonical JSON of ``to_dict()``."""
        return blake3.blake3(canonical_json(self.to_dict())).hexdigest()

    def __hash__(self) -> int:  # frozen dataclass with a dict field: hash by content
        return hash(self.hash)


class _Absent:
    """Stands for an anchor-spec key that one side lacks (``<absent>`` in messages)."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


def first_mismatch(a: AbiSpec, b: AbiSpec) -> str | None:
    """Name of the first differing field of two specs, or None when they are equal.

    Fields are checked in the order version, d_abi, patch_bytes, anchor spec, head hash; inside the
    anchor spec the name is ``anchor_spec.version`` when the versions differ, else
    ``anchor_spec.<key>`` for the first differing key in sorted order (a key only one side has counts).
    """
    da, db = a.to_dict(), b.to_dict()
    for name in _FIELDS:
        x, y = da[name], db[name]
        if x == y:
            continue
        if name == "anchor_spec":
            for key in sorted(set(x) | set(y), key=lambda k: (k != "version", k)):
                if x.get(key, ABSENT) != y.get(key, ABSENT):
                    return f"anchor_spec.{key}"
        return name
    return None


def mismatch_values(a: AbiSpec, b: AbiSpec, name: str) -> tuple[Any, Any]:
    """The values of field ``name`` (as ``first_mismatch`` names it) in ``a`` and ``b``;
    ``ABSENT`` for an anchor-spec key that one side lacks."""
    top, _, key = name.partition(".")
    x, y = a.to_dict()[top], b.to_dict()[top]
    return (x.get(key, ABSENT), y.get(key, ABSENT)) if key else (x, y)


def check_compatible(ours: AbiSpec, theirs: AbiSpec) -> None:
    """Raise ``AbiMismatch`` naming the first differing field; return None when compatible."""
    name = first_mismatch(ours, theirs)
    if name is None:
        return
    raise AbiMismatch(name, *mismatch_values(ours, theirs, name))

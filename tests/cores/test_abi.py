"""The ABI contract: stable hashes, round trips, and mismatches named by field."""
import dataclasses
import json

import pytest
import torch

import cores
from cores.abi import AbiMismatch, AbiSpec, canonical_json, check_compatible, first_mismatch
from cores.head import AbiHead, canonical_abi_spec, canonical_head_hash, canonical_head_weight, legacy_abi_spec

# Recorded once; stability across machines and runs is the contract, so these must never change
# unless the ABI version changes.
HEAD_HASH = "216a815565511a28ff5510cef87de6ca07e3ac0345074b55c347303713ccb7ba"
SPEC_HASH = "7bf906d3aa35702eb8398b4da696a082f6c18a382e355547f2f4ee650bd561a5"


def test_canonical_head_hash_is_stable():
    assert canonical_head_hash() == HEAD_HASH
    canonical_head_hash.cache_clear()
    assert canonical_head_hash() == HEAD_HASH


def test_canonical_spec_hash_is_stable():
    spec = canonical_abi_spec()
    assert spec.head_hash == HEAD_HASH
    assert spec.hash == SPEC_HASH
    assert cores.build("layercake", "tiny", seed=3).abi_spec.hash == SPEC_HASH


def test_head_is_fixed_exact_and_not_trained():
    w = canonical_head_weight()
    assert w.shape == (4, 64, 256) and w.dtype == torch.float32
    assert torch.equal(w, canonical_head_weight())
    # dyadic values on a 2**-25 grid: exactly representable everywhere
    assert torch.equal(w * 2.0 ** 25, torch.round(w * 2.0 ** 25))
    head = AbiHead(canonical=True)
    assert list(head.parameters()) == [] and "weight" not in head.state_dict()
    core = cores.build("layercake", "tiny")
    assert not any("head" in n for n, _ in core.named_parameters())


def test_round_trip_and_canonical_json():
    spec = canonical_abi_spec()
    d = spec.to_dict()
    assert AbiSpec.from_dict(json.loads(canonical_json(d))) == spec
    assert AbiSpec.from_dict(d).hash == spec.hash
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(ValueError):
        AbiSpec.from_dict({**d, "extra": 1})


def test_first_mismatch_names_the_field():
    a = canonical_abi_spec()
    assert first_mismatch(a, canonical_abi_spec()) is None
    assert first_mismatch(a, dataclasses.replace(a, d_abi=32)) == "d_abi"
    assert first_mismatch(a, dataclasses.replace(a, patch_bytes=8)) == "patch_bytes"
    assert first_mismatch(a, dataclasses.replace(a, version=2)) == "version"
    assert first_mismatch(a, dataclasses.replace(a, head_hash="0" * 64)) == "head_hash"
    assert first_mismatch(a, dataclasses.replace(a, anchor_spec={**a.anchor_spec, "version": 2})) == "anchor_spec.version"
    assert first_mismatch(a, dataclasses.replace(a, anchor_spec={**a.anchor_spec, "buckets": 8})) == "anchor_spec.buckets"
    assert first_mismatch(a, legacy_abi_spec()) == "anchor_spec.version"
    with pytest.raises(AbiMismatch) as e:
        check_compatible(a, dataclasses.replace(a, head_hash="x"))
    assert e.value.field == "head_hash" and "head_hash" in str(e.value)
    check_compatible(a, canonical_abi_spec())


def test_first_mismatch_names_the_anchor_spec_key():
    """Inside the anchor spec the first differing key is named (was just ``anchor_spec``)."""
    a = canonical_abi_spec()
    anchor = dict(a.anchor_spec)
    two = dataclasses.replace(a, anchor_spec={**anchor, "patch_bytes": 8, "buckets": 8})
    assert first_mismatch(a, two) == "anchor_spec.buckets"  # sorted keys: buckets before patch_bytes
    assert first_mismatch(a, dataclasses.replace(a, anchor_spec={**anchor, "patch_bytes": 8})) == "anchor_spec.patch_bytes"
    # the version still comes first, whatever else differs
    assert first_mismatch(a, dataclasses.replace(a, anchor_spec={**anchor, "buckets": 8, "version": 2})) == \
        "anchor_spec.version"
    # a key present on one side only
    extra = dataclasses.replace(a, anchor_spec={**anchor, "zeta": 1})
    assert first_mismatch(a, extra) == first_mismatch(extra, a) == "anchor_spec.zeta"
    missing = dataclasses.replace(a, anchor_spec={k: v for k, v in anchor.items() if k != "orders"})
    assert first_mismatch(a, missing) == "anchor_spec.orders"
    with pytest.raises(AbiMismatch) as e:
        check_compatible(a, dataclasses.replace(a, anchor_spec={**anchor, "buckets": 8}))
    assert (e.value.field, e.value.ours, e.value.theirs) == ("anchor_spec.buckets", 2048, 8)
    assert "ABI mismatch in anchor_spec.buckets: 2048 != 8" in str(e.value)
    with pytest.raises(AbiMismatch, match=r"anchor_spec\.zeta: <absent> != 1"):
        check_compatible(a, extra)
    with pytest.raises(AbiMismatch, match=r"anchor_spec\.version: 1 != 0"):
        check_compatible(a, legacy_abi_spec())


def test_legacy_cores_share_a_legacy_spec():
    l0 = cores.build("layercake", "tiny", seed=0, canonical=False)
    l1 = cores.build("layercake", "tiny", seed=1, canonical=False)
    assert l0.abi_spec == l1.abi_spec and l0.abi_spec.hash != SPEC_HASH
    assert l0.abi_spec.head_hash == "learned"
    # the legacy head is a trained, seed-dependent parameter
    assert not torch.equal(l0.head.weight, l1.head.weight)
    assert any(n == "head.weight" for n, _ in l0.named_parameters())

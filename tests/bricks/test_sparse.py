"""Sparse ABI bricks: identity when zero or disabled, attach/detach, frozen host, determinism, resume."""
import dataclasses
import json

import pytest
import torch

import bricks
import cores
from bricks.common import decode_delta
from cores import registry


def _ids(n=2, T=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, T), generator=g)


def test_build_defaults_and_config_is_complete(host):
    brick = bricks.build("sparse", host=host, seed=3)
    cfg = json.loads(json.dumps(brick.mvc_config))
    assert brick.mvc_arch == "sparse-brick" and brick.mvc_kind == "brick" and brick.brick_kind == "sparse"
    assert (cfg["experts"], cfg["top_k"], cfg["d_abi"], cfg["patch_bytes"], cfg["seed"]) == (8, 2, 64, 4, 3)
    assert brick.abi_spec.hash == host.abi_spec.hash and cfg["abi_spec"] == host.abi_spec.to_dict()
    again = registry.build("sparse-brick", cfg)  # rebuilt without the host
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in brick.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), brick.state_dict().values()))
    with pytest.raises(ValueError, match="top_k"):
        bricks.build("sparse", host=host, top_k=9)
    with pytest.raises(ValueError, match="unknown sparse brick options"):
        bricks.build("sparse", host=host, nonsense=1)
    with pytest.raises(ValueError, match="host"):
        bricks.build("sparse")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_zero_initialised_brick_changes_nothing(host, mode):
    brick = bricks.build("sparse", host=host)
    assert torch.count_nonzero(brick.up.weight) == 0
    model = bricks.attach(host, brick)
    getattr(model, mode)()
    x = _ids()
    with torch.no_grad():
        ref = host(x)
        out = model(x)
    assert torch.equal(out, ref)


def test_attach_detach_restores_host_and_disabled_router_is_exact(host):
    x = _ids(3, 41)
    with torch.no_grad():
        before = host(x)
        state = {k: v.clone() for k, v in host.state_dict().items()}
        brick = bricks.build("sparse", host=host, zero_init=False, seed=5)
        model = bricks.attach(host, brick).eval()
        with_brick = model(x)
        assert not torch.equal(with_brick, before)  # a non-zero brick acts
        model.enabled = False  # router disabled: the host's logits, bit for bit
        assert torch.equal(model(x), before)
        back = bricks.detach(model)
        assert back is host
        assert torch.equal(back(x), before)
    assert all(torch.equal(state[k], v) for k, v in host.state_dict().items())


def test_brick_is_causal_and_batch_invariant_in_eval(host):
    brick = bricks.build("sparse", host=host, zero_init=False, seed=1)
    model = bricks.attach(host, brick).eval()
    x = _ids(4, 33, seed=2)
    with torch.no_grad():
        full = model(x)
        alone = model(x[1:2])
        assert torch.equal(full[1:2], alone)
        y = x.clone()
        y[:, 20:] = (y[:, 20:] + 1) % 256
        changed = model(y)
    assert torch.equal(full[:, :20], changed[:, :20])  # logits at t < 20 never see byte 20


def test_delta_is_decoded_through_the_host_head(host):
    delta = torch.randn(1, 9, 64)
    got = decode_delta(host.head.weight, delta)
    for t in range(9):
        j = (t + 1) % 4
        assert torch.allclose(got[0, t], delta[0, t] @ host.head.weight[j], atol=1e-5)
    # head_logits of per-patch deltas = decode of the same delta repeated over the patch's positions
    per_patch = torch.randn(1, 3, 64)
    from cores.layercake import patches_to_bytes
    expected = decode_delta(host.head.weight, patches_to_bytes(per_patch, 12))
    assert torch.allclose(host.head_logits(per_patch, 12), expected, atol=1e-5)


def test_fits_names_the_reason(host):
    brick = bricks.build("sparse", host=host)
    assert bricks.fits(host, brick) is None
    other_seed = cores.build("layercake", "tiny", seed=9, d_model=64)
    assert bricks.fits(other_seed, brick) is None  # same ABI contract, other size and seed
    legacy32 = cores.build("layercake", "tiny", canonical=False, d_abi=32)
    assert "d_abi" in bricks.fits(legacy32, brick)
    legacy = cores.build("layercake", "tiny", canonical=False)
    why = bricks.fits(legacy, brick)
    assert why.startswith("ABI mismatch in anchor_spec"), why
    assert "ABI interface" in bricks.fits(cores.build("byte-transformer", "tiny"), brick)
    assert "not a brick" in bricks.fits(host, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="d_abi"):
        bricks.attach(legacy32, brick)


def test_fits_names_the_anchor_spec_key(host):
    """An anchor-spec mismatch named only ``anchor_spec``; now the key and both values."""
    brick = bricks.build("sparse", host=host)
    spec = host.abi_spec
    host.abi_spec = dataclasses.replace(spec, anchor_spec={**spec.anchor_spec, "buckets": 8})
    assert bricks.fits(host, brick) == "ABI mismatch in anchor_spec.buckets: brick 2048, host 8"
    host.abi_spec = dataclasses.replace(spec, anchor_spec={**spec.anchor_spec, "extra": True})
    assert bricks.fits(host, brick) == "ABI mismatch in anchor_spec.extra: brick <absent>, host True"
    host.abi_spec = cores.build("layercake", "tiny", canonical=False).abi_spec
    assert bricks.fits(host, brick) == "ABI mismatch in anchor_spec.version: brick 1, host 0"
    with pytest.raises(ValueError, match=r"anchor_spec\.version"):
        bricks.attach(host, brick)


def test_training_freezes_the_host_and_is_deterministic(host, domain, general):
    state = {k: v.clone() for k, v in host.state_dict().items()}
    runs = []
    for _ in range(2):
        brick = bricks.build("sparse", host=host, seed=0)
        m = bricks.train(brick, host=host, data=domain, steps=4, seed=0, general=general, batch_size=4,
                         seq_len=32, evaluate=False, progress=False)
        runs.append(brick.state_dict())
    assert m["steps"] == 4 and m["params"] == bricks.num_params(brick)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert torch.count_nonzero(runs[0]["up.weight"]) > 0  # it did learn something
    assert all(torch.equal(state[k], v) for k, v in host.state_dict().items())
    assert all(p.grad is None for p in host.parameters())
    assert not host.training  # the host's mode is restored


def test_trainer_resume_is_bit_exact(host, domain, general):
    def trainer(seed_init=0):
        brick = bricks.build("sparse", host=host, seed=seed_init)
        return brick, bricks.BrickTrainer(brick, host, domain, steps=6, seed=0, general=general, batch_size=4,
                                          seq_len=32)

    ba, ta = trainer()
    losses = ta.run()
    bb, tb = trainer()
    first = tb.run(3)
    saved = {part: {k: v.clone() for k, v in d.items()} for part, d in tb.state_dict().items()}
    assert set(saved) == {"brick", "optimizer", "train_state"}
    assert int(saved["train_state"]["step"]) == 3 and saved["train_state"]["rng.trainer"].dtype == torch.uint8
    bc, tc = trainer(seed_init=7)  # another init: everything must come from the saved state
    tc.load_state_dict(saved)
    assert first + tc.run() == losses
    assert all(torch.equal(a, b) for a, b in zip(ba.state_dict().values(), bc.state_dict().values()))
    _, other = trainer()
    other.total_steps = 9
    with pytest.raises(ValueError, match="total_steps"):
        other.load_state_dict(saved)
    for name, value in (("batch_size", 8), ("seq_len", 64), ("general_batch", 3)):  # were not checked
        _, other = trainer()
        setattr(other, name, value)
        with pytest.raises(ValueError, match=f"saved {name}="):
            other.load_state_dict(saved)
    _, other = trainer()
    other.general_train = None  # no general text: the brick would train on other batches
    with pytest.raises(ValueError, match="saved general_bytes="):
        other.load_state_dict(saved)
    _, other = trainer()  # other general text of the same length: only its length was checked (h40)
    other.general_train = other.general_train[::-1]
    with pytest.raises(ValueError, match="saved general_crc="):
        other.load_state_dict(saved)


def test_trainer_metrics_evaluate_both_streams(host, domain, general):
    brick = bricks.build("sparse", host=host)
    t = bricks.BrickTrainer(brick, host, domain, steps=2, general=general, batch_size=2, seq_len=32,
                            eval_bytes=600)
    t.run()
    m = t.metrics()
    for key in ("domain_ratio", "general_ratio", "domain_bpb", "domain_bpb_host", "general_bpb",
                "last_ce", "last_general_kl", "wall_seconds"):
        assert key in m, key
    assert m["domain_ratio"] == pytest.approx(2 ** (m["domain_bpb"] - m["domain_bpb_host"]))

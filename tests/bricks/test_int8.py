"""int8 brick artifacts: bounded round trip, small artifacts, same call interface, rebuildable."""
import json

import pytest
import torch

import bricks
from cores import registry
from kernels.quant import dequantize_int8


def _bricks(host):
    return {"sparse": bricks.build("sparse", host=host, zero_init=False, seed=2),
            "portable": bricks.build("portable", seed=2)}


@pytest.mark.parametrize("kind", ["sparse", "portable"])
def test_round_trip_error_is_bounded(host, kind):
    brick = _bricks(host)[kind].eval()
    q = bricks.quantize(brick)
    assert q.mvc_arch == brick.mvc_arch + "-int8" and q.mvc_kind == "brick" and q.brick_kind == kind
    assert q.abi_spec.hash == brick.abi_spec.hash
    sd, qsd = brick.state_dict(), q.state_dict()
    quantised = [k[:-3] for k in qsd if k.endswith(".q8")]
    assert quantised, "no tensor was quantised"
    for name in quantised:
        w, q8, scale = sd[name], qsd[name + ".q8"], qsd[name + ".scale"]
        assert q8.dtype == torch.int8 and q8.shape == w.shape and scale.shape == (w.shape[0],)
        err = (dequantize_int8(q8, scale) - w).abs()
        bound = scale.view(-1, *([1] * (w.dim() - 1))) / 2 + 1e-7
        assert bool((err <= bound).all()), name
    for name, t in qsd.items():  # what stays float is small
        if not name.endswith((".q8", ".scale")):
            assert torch.equal(t, sd[name])
    assert bricks.artifact_bytes(q) < 0.35 * bricks.artifact_bytes(brick)


@pytest.mark.parametrize("kind", ["sparse", "portable"])
def test_same_interface_and_close_logits(host, kind):
    brick = _bricks(host)[kind]
    q = bricks.quantize(brick)
    mf, mq = bricks.attach(host, brick).eval(), bricks.attach(host, q).eval()
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lf, lq, lh = mf(x), mq(x), host(x)
    # mean error: a router near a tie may pick another expert for a patch after quantisation
    diff = (lf - lq).abs().mean().item()
    change = (lf - lh).abs().mean().item() if kind == "sparse" else lf.abs().mean().item()
    assert 0 < diff < 0.1 * change, (diff, change)
    assert bricks.fits(host, q) is None


def test_rebuild_from_tree_and_registry(host):
    q = bricks.quantize(_bricks(host)["sparse"])
    cfg = json.loads(json.dumps(q.mvc_config))
    tree = {"kind": "brick", "arch": q.mvc_arch, "config": cfg, "abi": {"hash": q.abi_spec.hash}}
    again = bricks.rebuild(tree, q.state_dict())
    assert isinstance(again, bricks.Int8Brick)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), q.state_dict().values()))
    assert type(registry.build("sparse-brick-int8", cfg)) is bricks.Int8Brick
    x = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert torch.equal(bricks.attach(host, again).eval()(x), bricks.attach(host, q).eval()(x))
    with pytest.raises(ValueError, match="int8"):
        bricks.BrickTrainer(q, host, b"x" * 1000, steps=1, seq_len=16)
    with pytest.raises(ValueError, match="ABI hash"):
        bricks.rebuild({**tree, "abi": {"hash": "0" * 64}}, q.state_dict())


def test_int8_commit_round_trip(host, repo):
    q = bricks.quantize(bricks.build("portable", seed=4))
    cid = repo.commit({"brick/python-int8": q}, message="int8 artifact")
    tree = repo.tree(cid, "brick/python-int8")
    assert tree["arch"] == "portable-brick-int8" and tree["kind"] == "brick"
    assert {t["dtype"] for k, t in tree["tensors"].items() if k.endswith(".q8")} == {"I8"}
    model = bricks.attach_from_commit(repo, cid, "python-int8", host).eval()
    x = torch.randint(0, 256, (1, 24))
    with torch.no_grad():
        assert torch.equal(model(x), bricks.attach(host, q).eval()(x))

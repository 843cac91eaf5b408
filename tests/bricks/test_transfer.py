"""Transfer on trained hosts (one session fixture): canonical bricks help another seed's host; the
legacy negative control copies exactly through a commit yet regresses on the other host."""
import pytest
import torch

import bricks


def _ratio(host, brick, data):
    return bricks.measure(host, brick, data, window_bytes=64)["domain_ratio"]


def test_canonical_brick_helps_its_host_and_another_seed(trained):
    own = bricks.measure(trained.host_a, trained.brick, trained.domain_eval, trained.general_eval, 64)
    other = bricks.measure(trained.host_b, trained.brick, trained.domain_eval, trained.general_eval, 64)
    assert own["domain_ratio"] < 0.5 and other["domain_ratio"] < 0.5, (own, other)
    assert own["general_ratio"] < 1.15 and other["general_ratio"] < 1.15, (own, other)


def test_legacy_brick_copies_exactly_yet_fails_on_another_core(trained, repo):
    cid = repo.commit({"core": trained.legacy_b, "brick/python": trained.legacy_brick}, message="paste legacy")
    loaded = repo.load(cid, "brick/python")
    sd = trained.legacy_brick.state_dict()
    assert set(loaded) == set(sd)
    assert max((loaded[k].float() - sd[k].float()).abs().max().item() for k in sd) == 0.0  # L0: exact copy
    model = bricks.attach_from_commit(repo, cid, "python", trained.legacy_b)
    assert bricks.fits(trained.legacy_b, model.brick) is None  # the legacy ABI spec matches: paste would pass
    legacy_own = _ratio(trained.legacy_a, trained.legacy_brick, trained.domain_eval)
    legacy_cross = _ratio(trained.legacy_b, model.brick, trained.domain_eval)
    canonical_cross = _ratio(trained.host_b, trained.brick, trained.domain_eval)
    assert legacy_own < 0.5  # it did learn its domain on its own host
    assert legacy_cross > 1.0  # ... and regresses on another legacy core
    assert legacy_cross > 4 * canonical_cross, (legacy_cross, canonical_cross)


def test_attach_from_commit_rebuilds_the_same_function(trained, repo):
    cid = repo.commit({"core": trained.host_a, "brick/python": trained.brick}, message="host + brick")
    tree = repo.tree(cid, "brick/python")
    assert tree["kind"] == "brick" and tree["arch"] == "sparse-brick"
    assert tree["abi"]["hash"] == trained.host_a.abi_spec.hash
    model = bricks.attach_from_commit(repo, cid, "brick/python", trained.host_b).eval()
    ref = bricks.attach(trained.host_b, trained.brick).eval()
    x = torch.tensor(list(trained.domain_eval[:128])).view(2, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.slow
def test_int8_brick_transfers_like_the_float_brick(trained):
    q = bricks.quantize(trained.brick)
    for host in (trained.host_a, trained.host_b):
        rf = _ratio(host, trained.brick, trained.domain_eval)
        rq = _ratio(host, q, trained.domain_eval)
        assert rq < 0.5 and abs(rq - rf) < 0.1 * rf + 0.01, (rf, rq)


@pytest.mark.parametrize("kind", ["sparse", "portable"])
def test_a_brick_comes_back_from_a_commit_in_the_dtype_it_was_committed_in(host, repo, kind):
    """A bfloat16 brick is rebuilt in bfloat16 (load_state_dict alone would upcast it into the
    float32 module its builder makes): attached from the commit, its logits are the committed ones."""
    host = host.to(torch.bfloat16)
    brick = (bricks.build("sparse", host=host, zero_init=False) if kind == "sparse"
             else bricks.build("portable")).to(torch.bfloat16).eval()
    cid = repo.commit({"core": host, "brick/x": brick}, message=kind)
    rebuilt = bricks.rebuild(repo.tree(cid, "brick/x"), repo.load(cid, "brick/x"))
    assert {p.dtype for p in rebuilt.parameters()} == {torch.bfloat16}
    x = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = bricks.attach(host, brick).eval()(x)
        got = bricks.attach_from_commit(repo, cid, "x", repo.load_model(cid, "core")).eval()(x)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)

"""Portable exact decoder: host-independent, bit-identical logits on different hosts, PPL ratio 1.0."""
import json

import pytest
import torch

import bricks
import cores
from cores import registry


@pytest.fixture(scope="module")
def decoder():
    from bricks import fixtures
    _, domain, _, _ = fixtures.streams()
    dec = bricks.build("portable", seed=0)
    with fixtures.one_thread():
        bricks.train(dec, data=domain[:20_000], steps=8, seed=0, batch_size=4, seq_len=64, evaluate=False,
                     progress=False)
    return dec.eval()


def test_size_config_and_rebuild(decoder):
    n = bricks.num_params(decoder)
    assert 120_000 <= n <= 180_000, n
    cfg = json.loads(json.dumps(decoder.mvc_config))
    assert decoder.mvc_arch == "portable-brick" and decoder.mvc_kind == "brick"
    assert cfg["anchor_spec"]["name"] == "hashed-ngram-decay" and cfg["host_independent"] is True
    again = registry.build("portable-brick", cfg)
    again.load_state_dict(decoder.state_dict())
    x = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        assert torch.equal(again.eval()(x), decoder(x))


def test_bit_identical_on_hosts_of_other_size_and_seed(decoder, streams):
    host_a = cores.build("layercake", "tiny", seed=0).eval()
    host_b = cores.build("layercake", "tiny", seed=11, d_model=64, n_layer=1, d_local=48).eval()
    assert host_a.num_params() != host_b.num_params()
    ma, mb = bricks.attach(host_a, decoder), bricks.attach(host_b, decoder)
    ma.eval(), mb.eval()
    x = torch.tensor(list(streams[3][:3 * 64])).view(3, 64)
    with torch.no_grad():
        la, lb = ma(x), mb(x)
    assert (la - lb).abs().max().item() == 0.0
    assert torch.equal(la, lb)
    held = streams[3][:2_000]
    ba, bb = ma.bpb(held, window_bytes=64), mb.bpb(held, window_bytes=64)
    assert ba == bb and bricks.ppl_ratio(bb, ba) == 1.0
    assert bricks.fits(cores.build("byte-transformer", "tiny"), decoder) is None  # any host


def test_batch_invariant_and_causal(decoder):
    x = torch.randint(0, 256, (5, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = decoder(x)
        for i in range(5):
            assert torch.equal(decoder(x[i:i + 1]), full[i:i + 1])
        y = x.clone()
        y[:, 30:] = 7
        assert torch.equal(decoder(y)[:, :30], full[:, :30])


def test_training_is_deterministic_and_learns(streams):
    domain = streams[1][:20_000]
    states, metrics = [], []
    for _ in range(2):
        dec = bricks.build("portable", seed=0)
        metrics.append(bricks.train(dec, data=domain, steps=3, seed=0, batch_size=4, seq_len=32,
                                    eval_bytes=500, progress=False))
        states.append(dec.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert metrics[0]["domain_bpb"] == metrics[1]["domain_bpb"]
    assert metrics[0]["domain_bpb"] < 8.0


def test_paste_takes_a_portable_decoder_into_any_host_as_attach_does(decoder, repo):
    """bricks.fits and attach take a portable decoder on a legacy (non-canonical) core, with
    bit-identical logits, but paste refused it on the ABI contract ('retrain it on a compatible
    core'), which a decoder trained on no core has none of (h58)."""
    legacy = cores.build("layercake", config="tiny", seed=1, canonical=False)
    assert bricks.fits(legacy, decoder) is None
    repo.commit({"brick/python": decoder}, message="decoder", branch="dec")
    repo.commit({"core": legacy}, message="legacy host", branch="legacy")
    r = repo.paste_brick("python", "dec", "legacy")
    assert r["moved"] and "brick/python" in repo.read_commit(r["commit"])["components"]
    repo.commit({"brick/small": bricks.quantize(decoder)}, message="int8 decoder", branch="dec")  # (h60)
    assert repo.paste_brick("small", "dec", "legacy")["moved"]
    # its arch decides, not a config flag: a sparse brick whose tree claims host_independent is checked
    from mvc.errors import AbiMismatch
    from mvc.objects import canonical_json, hash_bytes
    canonical = cores.build("layercake", config="tiny", seed=2)
    repo.commit({"brick/sparse": bricks.build("sparse", host=canonical)}, message="sparse", branch="sp")
    tree = repo.tree("sp", "brick/sparse")
    data = canonical_json({**tree, "config": {**tree["config"], "host_independent": True}})
    repo.commit({}, trees={"brick/sparse": repo.store.put(data, oid=hash_bytes(data))}, message="edited", branch="sp")
    with pytest.raises(AbiMismatch, match="ABI mismatch in"):
        repo.paste_brick("sparse", "sp", "legacy")

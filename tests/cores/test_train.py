"""Training: deterministic, resumable bit-exactly from plain-tensor state, and it learns."""
import math

import pytest
import torch

import cores
from cores.train import Trainer


def _trainer(text, steps, seed=0, arch="layercake"):
    core = cores.build(arch, "tiny", seed=seed)
    return core, Trainer(core, text, steps=steps, seed=seed, batch_size=4, seq_len=64, progress=False)


def test_resume_is_bit_identical(text):
    core_a, ta = _trainer(text, 6)
    losses_a = ta.run()
    core_b, tb = _trainer(text, 6)
    first = tb.run(3)
    state = tb.state_dict()
    # plain tensors only: RNG states uint8, counters int64
    for part in state.values():
        assert all(isinstance(v, torch.Tensor) for v in part.values())
    assert state["train_state"]["rng.trainer"].dtype == torch.uint8
    assert state["train_state"]["step"].dtype == torch.int64 and int(state["train_state"]["step"]) == 3
    assert int(state["train_state"]["data_pos"]) == 12
    assert any(k.startswith("state.0.exp_avg") for k in state["optimizer"])
    saved = {p: {k: v.clone() for k, v in d.items()} for p, d in state.items()}
    older = {p: {k: v.clone() for k, v in d.items()} for p, d in state.items()}  # (a load shares its tensors)
    core_c, tc = _trainer(text, 6, seed=0)
    core_c2 = cores.build("layercake", "tiny", seed=99)  # a different init: everything must come from the state
    tc = Trainer(core_c2, text, steps=6, seed=0, batch_size=4, seq_len=64, progress=False)
    tc.load_state_dict(saved)
    second = tc.run()
    assert first + second == losses_a
    sa, sc = core_a.state_dict(), core_c2.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    # what metrics report goes on across the resume: loss_last10 averaged only the steps since it
    # (a plateau gate reads it), and the wall time restarted at 0 (a wall_seconds budget with it) (h40)
    ma, mc = ta.metrics(evaluate=False), tc.metrics(evaluate=False)
    assert mc["loss_last10"] == ma["loss_last10"] and tc.wall >= float(saved["train_state"]["wall_seconds"]) > 0
    # a state saved before the batch settings and the data's length and CRC were recorded still loads
    for name in ("batch_size", "seq_len", "data_bytes", "data_crc", "recent_losses", "wall_seconds"):
        del older["train_state"][name]
    _, td = _trainer(text, 6)
    td.load_state_dict(older)
    assert first + td.run() == losses_a


@pytest.mark.parametrize("change, field", [
    ({"steps": 5}, "total_steps"),
    ({"batch_size": 8}, "batch_size"),
    ({"seq_len": 32}, "seq_len"),
    ({"data": b"x" * 500}, "data_bytes"),  # other data: its length and CRC-32 are recorded
    ("reversed", "data_crc"),  # the same length (a fixed-size shard of other text)
])
def test_resume_refuses_other_settings_batches_or_data(text, change, field):
    """Each setting that decides the schedule or the batches is recorded and checked (only seed and
    total_steps were)."""
    _, t = _trainer(text, 4)
    t.run(1)
    change = {"data": text[::-1]} if change == "reversed" else change
    kw = {"steps": 4, "seed": 0, "batch_size": 4, "seq_len": 64, "progress": False, **change}
    other = Trainer(cores.build("layercake", "tiny", seed=0), kw.pop("data", text), **kw)
    with pytest.raises(ValueError, match=f"saved {field}="):
        other.load_state_dict(t.state_dict())


def test_data_of_exactly_one_window_trains():
    """A window is seq_units + 1 units: data that long has one offset (0) and trains; one unit less is
    refused (the check asked for one unit more than a window: "3 units for windows of 3")."""
    core = cores.build("layercake", "tiny", seed=0)
    t = Trainer(core, b"abc", steps=1, seq_len=2, batch_size=2, eval_data=b"xyz")
    assert t.seq_units == 2 and torch.equal(t.batch(0), torch.tensor([list(b"abc")] * 2))
    assert math.isfinite(t.run()[0])
    with pytest.raises(ValueError, match="2 units for windows of 3"):
        Trainer(core, b"ab", steps=1, seq_len=2, eval_data=b"xyz")


def test_same_seed_same_weights_and_batches_differ_by_seed(text):
    ca, ta = _trainer(text, 3)
    cb, tb = _trainer(text, 3)
    ta.run(), tb.run()
    assert all(torch.equal(a, b) for a, b in zip(ca.state_dict().values(), cb.state_dict().values()))
    _, tc = _trainer(text, 3, seed=1)
    assert not torch.equal(ta.batch(0), tc.batch(0))
    assert torch.equal(ta.batch(2), tb.batch(2))


def test_tiny_core_learns_a_synthetic_stream(text):
    core = cores.build("layercake", "tiny", seed=0)
    m = cores.train(core, text, steps=150, seed=0, batch_size=8, seq_len=128, progress=False, lr=5e-3)
    assert m["steps"] == 150 and m["params"] == core.num_params()
    assert m["last_ce"] < 0.45 * math.log(256), m  # well below a uniform byte guess (5.545 nats)
    assert m["heldout_bpb"] < 0.45 * 8, m
    assert m["bytes_seen"] == 150 * 8 * 128


def test_bpe_core_trains_through_the_same_trainer(text):
    pytest.importorskip("tokenizers")
    core = cores.build("bpe-transformer", "tiny", seed=0, vocab_size=300)
    m = cores.train(core, text, steps=3, batch_size=4, seq_len=128, progress=False)
    assert core.tokenizer_blob.numel() > 0
    assert math.isfinite(m["heldout_bpb"]) and m["steps"] == 3

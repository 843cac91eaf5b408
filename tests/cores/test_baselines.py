"""Baselines: byte transformer (exact, causal, cached generation) and BPE transformer (tokenizer, BPB)."""
import math

import pytest
import torch

import cores
from cores.bpe import BpeCodec, train_bpe


def _ids(B, T, seed=0):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_byte_transformer_exact_and_causal():
    core = cores.build("byte-transformer", "tiny", seed=0).eval()
    x = _ids(7, 40)
    out = core(x)
    assert out.shape == (7, 40, 256)
    for i in range(7):
        assert torch.equal(core(x[i:i + 1]), out[i:i + 1])
    y = x.clone()
    y[:, 20] ^= 3
    assert torch.equal(core(y)[:, :20], out[:, :20])


def test_byte_transformer_cached_generation():
    core = cores.build("byte-transformer", "tiny", seed=1).eval()
    prompt = bytes(_ids(1, 9)[0].tolist())
    caches, logits = core.gpt.start(torch.tensor([list(prompt)]))
    seq = list(prompt)
    for b in (5, 77, 200):
        seq.append(b)
        logits = core.gpt.step(caches, b)
        assert torch.allclose(logits, core(torch.tensor([seq]))[0, -1], atol=1e-4)
    assert len(core.generate(b"abc", 7)) == 7


def test_bpe_codec_round_trip_any_bytes(text):
    pytest.importorskip("tokenizers")
    codec = BpeCodec(train_bpe(text, 300))
    assert codec.vocab_size <= 300
    for data in (text[:500], bytes(range(256)), "é ünïcode\n".encode()):
        assert codec.decode(codec.encode(data)) == data
    assert len(codec.encode(text[:2000])) < 2000 / 1.5  # merges compress the text
    assert train_bpe(text, 300) == codec.json  # deterministic


def test_bpe_transformer_prepare_bpb_and_state_round_trip(text):
    pytest.importorskip("tokenizers")
    core = cores.build("bpe-transformer", "tiny", seed=0, vocab_size=300)
    core.prepare(text[:40_000])
    ids = core.stream_units(text[:1000])
    assert core.codec.decode(ids.tolist()) == text[:1000]
    logits = core.eval()(ids[None, :50])
    assert logits.shape == (1, 50, 300)
    bpb = core.bpb(text[40_000:42_000])
    assert math.isfinite(bpb) and 0 < bpb < 12
    # the tokenizer travels in the state dict; a rebuilt model adopts it
    fresh = cores.registry.build("bpe-transformer", core.mvc_config)
    fresh.load_state_dict(core.state_dict())
    assert fresh.codec.json == core.codec.json
    assert fresh.bpb(text[40_000:42_000]) == bpb
    assert len(core.generate(b"The ", 10)) == 10

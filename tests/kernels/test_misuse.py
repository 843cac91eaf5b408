"""kernels under misuse: non-finite weights to quantise, float byte ids, other devices, empty batches."""
import pytest
import torch

from kernels import anchors, batch_invariant as bi, quant


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fn", [quant.quantize_int8, quant.quantize_int8_reference])
def test_quantize_refuses_non_finite(fn, value):
    """NaN gave a NaN scale and codes 0/-1; inf zeroed its channel with an inf scale: silently."""
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    w[2, 3] = value
    with pytest.raises(ValueError, match="non-finite.*channel 2"):
        fn(w)


def test_quantize_state_dict_names_the_bad_tensor():
    sd = {"ok": torch.ones(4, 4), "bad": torch.full((4, 4), float("nan"))}
    with pytest.raises(ValueError, match="'bad'"):
        quant.quantize_state_dict(sd, min_numel=1)


@pytest.mark.parametrize("ids", [torch.tensor([[1.7, 2.2, 3.0, 4.0]]), torch.ones(1, 4, dtype=torch.bool), "abcd"])
def test_anchors_refuse_non_integer_byte_ids(ids):
    """A float 1.7 was truncated to byte 1 silently; a str was reported as a shape () error."""
    with pytest.raises(TypeError, match="anchors"):
        anchors.causal_anchors(ids)


def test_anchors_accept_integer_ids_of_any_width():
    x = torch.tensor([[104, 101, 108, 108, 111]])
    ref = anchors.causal_anchors(b"hello")
    for ids in (x, x.to(torch.uint8), x.int(), x.numpy()):
        assert torch.equal(anchors.causal_anchors(ids), ref)


def test_causal_attention_mask_follows_the_device():
    """The chunked-prefill mask was built on the CPU whatever the queries' device (meta stands in for CUDA)."""
    q = torch.zeros(1, 2, 3, 8, device="meta")
    kv = torch.zeros(1, 2, 5, 8, device="meta")
    assert bi.causal_attention(q, kv, kv).device.type == "meta"


def test_causal_attention_chunk_matches_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g) for n in (3, 5, 5))
    torch.testing.assert_close(bi.causal_attention(q, k, v), bi.causal_attention_reference(q, k, v))


def test_per_sequence_empty_batch():
    out = bi.per_sequence(lambda x: x * 2, torch.zeros(0, 3))
    assert tuple(out.shape) == (0, 3)

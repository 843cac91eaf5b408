"""int8 per-output-channel quantisation: bounded round trip, reference parity, state dicts."""
import pytest
import torch

from kernels.quant import (dequantize_int8, dequantize_state_dict, quantize_int8, quantize_int8_reference,
                           quantize_state_dict)


def _w(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_round_trip_error_bounded_by_half_a_step():
    w = _w((16, 40)) * torch.linspace(0.01, 3.0, 16)[:, None]  # very different channel ranges
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.shape == (16,)
    assert int(q.abs().max()) <= 127
    err = (dequantize_int8(q, s) - w).abs()
    assert torch.all(err <= s[:, None] / 2 + 1e-7)
    # per channel: the largest magnitude maps to +-127 exactly
    assert torch.equal(q.abs().amax(dim=1), torch.full((16,), 127, dtype=torch.int8))


def test_matches_reference_twin():
    w = _w((5, 7), 1)
    q, s = quantize_int8(w)
    qr, sr = quantize_int8_reference(w)
    assert torch.equal(q, qr) and torch.equal(s, sr)


def test_zero_channel_and_other_axis():
    w = _w((4, 6), 2)
    w[1] = 0
    q, s = quantize_int8(w)
    assert float(s[1]) == 1.0 and torch.equal(q[1], torch.zeros(6, dtype=torch.int8))
    q1, s1 = quantize_int8(w, axis=1)
    assert s1.shape == (6,)
    assert torch.all((dequantize_int8(q1, s1, axis=1) - w).abs() <= s1[None, :] / 2 + 1e-7)


def test_negative_axis_counts_from_the_end():
    """axis=-1 was a reshape RuntimeError (the shape was sliced with the negative index)."""
    w = _w((3, 4, 5), 6)
    for axis in (-1, -2, -3):
        q, s = quantize_int8(w, axis=axis)
        qp, sp = quantize_int8(w, axis=axis + 3)
        assert torch.equal(q, qp) and torch.equal(s, sp)
        qr, sr = quantize_int8_reference(w, axis=axis)
        assert torch.equal(qr, qp) and torch.equal(sr, sp)
        assert torch.equal(dequantize_int8(q, s, axis=axis), dequantize_int8(qp, sp, axis=axis + 3))


@pytest.mark.parametrize("axis, error", [(2, ValueError), (-3, ValueError), (1.0, TypeError), (True, TypeError)])
def test_axis_out_of_range_is_refused(axis, error):
    w = _w((4, 6), 7)
    for fn in (quantize_int8, quantize_int8_reference):
        with pytest.raises(error, match="axis"):
            fn(w, axis=axis)
    q, s = quantize_int8(w)
    with pytest.raises(error, match="axis"):
        dequantize_int8(q, s, axis=axis)


def test_state_dict_round_trip():
    sd = {"a.weight": _w((64, 32), 3), "a.bias": _w((64,), 4), "small": _w((2, 2), 5)}
    q = quantize_state_dict(sd)
    assert set(q) == {"a.weight.q8", "a.weight.scale", "a.bias", "small"}
    back = dequantize_state_dict(q)
    assert set(back) == set(sd)
    assert torch.equal(back["a.bias"], sd["a.bias"])
    assert (back["a.weight"] - sd["a.weight"]).abs().max() <= q["a.weight.scale"].max() / 2 + 1e-7


@pytest.mark.parametrize("shape, axis", [((0, 5), 0), ((5, 0), 0), ((0,), 0), ((3, 0, 2), 1), ((3, 0, 2), 2)])
def test_empty_tensors_quantise_alike_in_both_twins(shape, axis):
    """A 0-element tensor was a raw reshape RuntimeError or an amax IndexError, while the reference
    twin quantised a (5, 0) one (h85): now both give an empty q and scale 1.0 per (empty) channel."""
    w = torch.zeros(shape)
    q, s = quantize_int8(w, axis=axis)
    qr, sr = quantize_int8_reference(w, axis=axis)
    assert q.dtype == torch.int8 and q.shape == w.shape and torch.equal(q, qr)
    assert s.dtype == torch.float32 and torch.equal(s, torch.ones(shape[axis])) and torch.equal(s, sr)
    assert torch.equal(dequantize_int8(q, s, axis=axis), w)
    sd = {"empty": torch.zeros(0, 300), "w": _w((4, 6), 8)}
    back = dequantize_state_dict(quantize_state_dict(sd, min_numel=0))
    assert back["empty"].shape == (0, 300) and set(back) == set(sd)


def test_a_subnormal_channel_gets_a_positive_scale_and_the_error_bound():
    """max|W_c| / 127 underflowed to a scale of 0 for a channel of subnormal weights (W / 0: inf and
    NaN cast to int8), against the contract scale > 0 and error <= scale / 2 (h85)."""
    tiny = torch.finfo(torch.float32).tiny
    w = torch.tensor([[1e-45, -1e-45, 0.0], [3e-39, -1e-40, 0.0], [tiny * 100, tiny, 0.0], [1.0, 0.5, 0.0]])
    q, s = quantize_int8(w)
    qr, sr = quantize_int8_reference(w)
    assert torch.equal(q, qr) and torch.equal(s, sr)
    assert bool((s > 0).all()) and bool((s[:3] == tiny).all()) and float(s[3]) == float(torch.tensor(1.0) / 127)
    err = (dequantize_int8(q, s).double() - w.double()).abs()
    assert bool((err <= s.double()[:, None] / 2).all())

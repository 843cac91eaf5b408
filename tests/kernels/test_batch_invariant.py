"""Batch-invariant evaluation ops: parity with the float64 twins; bit-identical alone vs in a batch."""
import pytest
import torch

from kernels import batch_invariant as bi

G = torch.Generator().manual_seed(0)


def _r(*shape):
    return torch.randn(*shape, generator=G)


@pytest.fixture
def restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_linear_parity_with_reference():
    x, w, b = _r(2, 3, 8), _r(5, 8), _r(5)
    assert torch.allclose(bi.linear(x, w, b), bi.linear_reference(x, w, b), atol=1e-5)


def test_norm_softmax_parity_with_reference():
    x, w, b = _r(4, 12), _r(12), _r(12)
    assert torch.allclose(bi.rms_norm(x, w), bi.rms_norm_reference(x, w), atol=1e-5)
    assert torch.allclose(bi.layer_norm(x, w, b), bi.layer_norm_reference(x, w, b), atol=1e-5)
    assert torch.allclose(bi.softmax(x), bi.softmax_reference(x), atol=1e-6)


def test_attention_parity_with_reference_full_and_cached():
    q, k, v = _r(1, 2, 5, 4), _r(1, 2, 5, 4), _r(1, 2, 5, 4)
    assert torch.allclose(bi.causal_attention(q, k, v), bi.causal_attention_reference(q, k, v), atol=1e-5)
    # the last 2 queries against all 5 keys (bottom-right mask) equal the full result's last rows
    tail = bi.causal_attention(q[:, :, 3:], k, v)
    assert torch.allclose(tail, bi.causal_attention_reference(q[:, :, 3:], k, v), atol=1e-5)
    assert torch.allclose(tail, bi.causal_attention(q, k, v)[:, :, 3:], atol=1e-6)


def test_linear_rows_alone_equal_rows_in_batch():
    # the motivation: MKL picks kernels by M, so a row alone and inside a batch can differ
    x, w = _r(7, 3, 256), _r(256, 256)
    ours = bi.linear(x, w)
    for i in range(7):
        assert torch.equal(ours[i:i + 1], bi.linear(x[i:i + 1], w))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_ops_invariant_to_batch_and_threads(threads, restore_threads):
    x, w = _r(7, 33, 96), _r(160, 96)
    q = _r(7, 4, 33, 16)
    torch.set_num_threads(1)
    ref = [(bi.linear(x[i:i + 1], w), bi.causal_attention(q[i:i + 1], q[i:i + 1], q[i:i + 1]),
            bi.rms_norm(x[i:i + 1], None)) for i in range(7)]
    torch.set_num_threads(threads)
    lin, att, nrm = bi.linear(x, w), bi.causal_attention(q, q, q), bi.rms_norm(x, None)
    for i in range(7):
        assert torch.equal(lin[i:i + 1], ref[i][0])
        assert torch.equal(att[i:i + 1], ref[i][1])
        assert torch.equal(nrm[i:i + 1], ref[i][2])


def test_switch_and_per_sequence():
    m = torch.nn.Linear(3, 3)
    assert bi.is_enabled()
    m.eval()
    assert bi.exact_eval(m)
    with bi.enabled(False):
        assert not bi.is_enabled() and not bi.exact_eval(m)
    assert bi.exact_eval(m)
    m.train()
    assert not bi.exact_eval(m)
    x = _r(3, 2, 3)
    out = bi.per_sequence(lambda t: (t * 2, None), x)
    assert torch.equal(out[0], x * 2) and out[1] is None

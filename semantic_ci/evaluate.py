"""Deterministic evaluation of byte models: fixed windows, one sequence at a time (batch-invariant
by construction), per-window log-likelihoods, raw logit bytes, and bootstrap intervals."""
from __future__ import annotations

import math
import os
import platform

import numpy as np
import torch


def windows(data: bytes, window: int) -> list[tuple[int, bytes]]:
    """Chunks of `window + 1` bytes with stride `window`: (offset, chunk). Inputs are chunk[:-1],
    targets chunk[1:]; the last chunk may be shorter (at least 2 bytes)."""
    out = []
    for start in range(0, max(len(data) - 1, 0), window):
        chunk = data[start:start + window + 1]
        if len(chunk) >= 2:
            out.append((start, chunk))
    return out


def _ids(chunk: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(chunk), dtype=torch.uint8).to(torch.long).unsqueeze(0)


@torch.inference_mode()
def window_logits(model, chunk: bytes) -> torch.Tensor:
    """Logits (T, 256) of the model over chunk[:-1], evaluated alone (batch of one)."""
    out = model(_ids(chunk[:-1]))
    if isinstance(out, tuple):
        out = out[0]
    if out.dim() != 3 or out.shape[0] != 1 or out.shape[1] != len(chunk) - 1 or out.shape[2] != 256:
        raise ValueError(f"model returned logits of shape {tuple(out.shape)}, expected (1, {len(chunk) - 1}, 256)")
    return out[0].contiguous()


def nll_of(logits: torch.Tensor, chunk: bytes) -> float:
    """Summed negative log-likelihood (nats) of chunk[1:] under `logits`, in float64."""
    target = _ids(chunk[1:])[0]
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return float(-logp.gather(1, target.unsqueeze(1)).sum())


def model_nll(model, data: bytes, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window (nll nats, predicted bytes) of `model` on `data`."""
    nll, count = [], []
    for _off, chunk in windows(data, window):
        nll.append(nll_of(window_logits(model, chunk), chunk))
        count.append(len(chunk) - 1)
    return np.array(nll, dtype=np.float64), np.array(count, dtype=np.int64)


def ppl_bpb(nll: np.ndarray, count: np.ndarray) -> tuple[float, float]:
    """PPL and bits per byte from totals (never a mean of per-window PPLs)."""
    mean = float(nll.sum() / count.sum())
    return _exp(mean), mean / math.log(2)


def ppl_ratio(nll_a: np.ndarray, nll_b: np.ndarray, count: np.ndarray) -> float:
    """PPL(a) / PPL(b). Where both perplexities overflow float64 (mean NLL above ~709 nats per
    byte) the ratio still has a value: exp of the difference of the mean NLLs."""
    ppl_a, ppl_b = ppl_bpb(nll_a, count)[0], ppl_bpb(nll_b, count)[0]
    if math.isinf(ppl_a) and math.isinf(ppl_b):
        return _exp(float((nll_a.sum() - nll_b.sum()) / count.sum()))  # NaN where a sum is NaN or inf
    return ppl_a / ppl_b


def _exp(x: float) -> float:
    """exp that gives inf for a diverged model's huge loss instead of raising OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


BOOTSTRAP_BATCH_DRAWS = 1 << 21  # window indices drawn at once by bootstrap_ratio (16 MB of them)


def bootstrap_ratio(nll_c, nll_b, count, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of PPL(candidate)/PPL(baseline) resampling windows with replacement."""
    n = len(count)
    if n < 2:
        r = _exp(float((nll_c.sum() - nll_b.sum()) / count.sum()))
        return r, r
    rng = np.random.default_rng(seed)
    # resampled a batch of rows at a time: the whole (samples x windows) index matrix would need
    # 8 bytes per draw (100,000 resamples of 100,000 windows: 80 GB). The generator gives the rows
    # in the same order either way, so a seed gives the interval one matrix gave (certificates
    # made before still reproduce)
    rows = max(1, BOOTSTRAP_BATCH_DRAWS // n)
    diff = np.empty(samples, dtype=np.float64)
    for start in range(0, samples, rows):
        idx = rng.integers(0, n, size=(min(rows, samples - start), n))
        diff[start:start + len(idx)] = (nll_c[idx].sum(1) - nll_b[idx].sum(1)) / count[idx].sum(1)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged model: inf or nan, judged later
        ratios = np.exp(diff)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


# settings that pick a CPU code path for the same operations (and so the logits' last bits)
CODE_PATH_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                 "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE")


def envelope(dtype: str, window: int) -> dict:
    """The execution envelope an exact figure is only meaningful inside."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        cap = "unknown"
    return {"torch": torch.__version__, "cpu_capability": cap, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "dtype": dtype, "batch": f"1 sequence of <= {window} bytes",
            "deterministic_env": os.environ.get("CUBLAS_WORKSPACE_CONFIG") is not None,
            "code_path_env": {k: os.environ[k] for k in CODE_PATH_ENV if k in os.environ}}

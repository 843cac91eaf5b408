"""Process-wide settings that make torch CPU training bit-reproducible across thread counts.

Intel MKL (torch's CPU BLAS on x86) may split the reduction dimension of a matrix product across
threads, so a weight gradient computed with 2 threads can differ in its last bits from the same
product computed with 1 or 3, and MKL may pick its thread count at run time. MKL's strict
conditional-numerical-reproducibility mode (`MKL_CBWR=AUTO,STRICT`) fixes the reduction order for
gemm whatever the thread count, at a cost of about 2% here (tiny and small LayerCake training).
MKL reads the variable at its first BLAS call, so it must be set before any matrix product runs:
`import kernels` does it (unless the user already set MKL_CBWR), and the `mvc` CLI does it at start.
Strict mode covers gemm; MKL's other routines are reproducible only with a fixed thread count, and
with MKL_DYNAMIC at its default (TRUE) MKL may use fewer threads than asked for a call (torch turns
it off when `torch.set_num_threads` is called, which a plain `mvc run` never does). MKL_DYNAMIC=FALSE
pins the thread count too. Why: a fresh `mvc run` process rarely (3 times in about 150 runs here)
trained a tiny LayerCake to other last bits than the same run before, which tests/pipeline's
kill-and-resume test caught; MKL choosing its own thread count is the likely cause, not a proven one.
This module never imports torch at import time.
"""
from __future__ import annotations

import os

BLAS_ENV = {"MKL_CBWR": "AUTO,STRICT", "MKL_DYNAMIC": "FALSE"}


def pin_blas_reproducibility() -> None:
    """Ask MKL for thread-count-independent results (each variable the user set is kept)."""
    for key, value in BLAS_ENV.items():
        os.environ.setdefault(key, value)


def blas_thread_invariant() -> bool:
    """Whether a reduction-heavy matrix product gives identical bits on 1 and 2 threads in this
    process (False when MKL was first used before `pin_blas_reproducibility`)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 4096, generator=g), torch.randn(4096, 96, generator=g)
    old = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(a @ b)
    finally:
        torch.set_num_threads(old)
    return torch.equal(out[0], out[1])

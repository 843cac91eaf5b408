"""kernels: layer 0 numeric routines (torch only): anchors, int8 quantisation, batch-invariant ops.

Importing the package pins MKL's reproducible gemm mode before any matrix product runs (see
kernels.determinism): training and evaluation give the same bits whatever the thread count."""
from .determinism import pin_blas_reproducibility

pin_blas_reproducibility()

"""kernels: layer 0 numeric routines (torch only): anchors, int8 quantisation, batch-invariant ops."""

"""Deterministic causal ABI anchors: fixed features of a byte prefix at every patch boundary.

Definition (ANCHOR_SPEC version 1). For a byte sequence x_0..x_{T-1} cut into patches of
``patch_bytes`` bytes (patch p = bytes 4p..4p+3; the last patch may be short):

1. every byte position t contributes the hashed n-grams ending at t, n = 1..3 (only n-grams that
   lie inside the sequence); n-gram -> bucket by splitmix64 of ``hash_stream ^ (n << 24 | bytes)``;
2. bucket b of order n owns a fixed integer row M[n, b] in [-2**15, 2**15)^d (counter-based
   splitmix64 stream ``matrix_stream``), so each byte adds an integer vector v_t to the patch sum
   U_p = sum of v_t over the bytes of patch p;
3. per dimension d an integer leaky accumulator runs over patches,
   A_p = A_{p-1} - (A_{p-1} >> k_d) + U_p  (arithmetic shift, A_{-1} = 0),
   i.e. decayed counts with decay 1 - 2**-k_d per patch; dims are split in groups with
   k = decay_shifts (memories of about 2, 4, 16, 64 patches);
4. anchor_p = float32(float64(A_p) * 2**scale_log2[group]).

Everything before the final cast is integer arithmetic, so the anchors are bit-identical on every
machine, batch size, thread count and run; anchor_p depends only on bytes <= 4p+3 (causal).
``causal_anchors`` is the vectorised fast path; ``causal_anchors_reference`` is its plain-Python twin.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from kernels.counter_rng import mix64, mix64_py, signed_int_py, signed_ints, stream_id

ANCHOR_SPEC: dict = {
    "name": "hashed-ngram-decay",
    "version": 1,
    "d_abi": 64,
    "patch_bytes": 4,
    "orders": [1, 2, 3],
    "buckets": 2048,
    "value_bits": 16,
    "decay_shifts": [1, 2, 4, 6],
    "scale_log2": [-16, -17, -19, -20],
    "hash_stream": "anchor-ngram-v1",
    "matrix_stream": "anchor-matrix-v1",
}


def _spec_key(spec: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items()))


@lru_cache(maxsize=4)
def _matrix(key: tuple) -> np.ndarray:
    spec = dict((k, list(v) if isinstance(v, tuple) else v) for k, v in key)
    n_orders, nb, d = len(spec["orders"]), spec["buckets"], spec["d_abi"]
    vals = signed_ints(stream_id(spec["matrix_stream"]), n_orders * nb * d, spec["value_bits"])
    return vals.reshape(n_orders, nb, d).astype(np.int32)


def anchor_matrix(spec: dict = ANCHOR_SPEC) -> np.ndarray:
    """The fixed integer projection M, int32 array (n_orders, buckets, d_abi)."""
    return _matrix(_spec_key(spec))


def _group_params(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    d, groups = spec["d_abi"], len(spec["decay_shifts"])
    per = d // groups
    shifts = np.repeat(np.asarray(spec["decay_shifts"], dtype=np.int64), per)
    scales = np.repeat(np.ldexp(1.0, np.asarray(spec["scale_log2"], dtype=np.int64)), per)
    return shifts, scales.astype(np.float64)


def _bucket_bits(spec: dict) -> int:
    nb = spec["buckets"]
    if nb & (nb - 1):
        raise ValueError("anchor spec: buckets must be a power of two")
    return nb.bit_length() - 1


def _as_uint8_rows(byte_ids) -> np.ndarray:
    if isinstance(byte_ids, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(byte_ids), dtype=np.uint8)[None, :]
    if isinstance(byte_ids, str):
        raise TypeError("anchors: expected bytes or integer byte ids (B, T), got str (encode it first)")
    if isinstance(byte_ids, torch.Tensor):
        byte_ids = byte_ids.detach().cpu().numpy()
    arr = np.asarray(byte_ids)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):  # 1.7 must not become byte 1 silently
        raise TypeError(f"anchors: byte ids must be integers 0..255, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"anchors: expected byte ids of shape (B, T), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("anchors: byte ids must lie in 0..255")
    return arr.astype(np.uint8)


def anchor_ints(byte_ids, spec: dict = ANCHOR_SPEC) -> np.ndarray:
    """Integer accumulators A_p, int64 array (B, P, d_abi), P = ceil(T / patch_bytes)."""
    x = _as_uint8_rows(byte_ids).astype(np.uint64)  # (B, T)
    B, T = x.shape
    pb, d = spec["patch_bytes"], spec["d_abi"]
    P = -(-T // pb)
    M = anchor_matrix(spec)
    hs = np.uint64(stream_id(spec["hash_stream"]))
    shift = np.uint64(64 - _bucket_bits(spec))
    v = np.zeros((B, P * pb, d), dtype=np.int32)  # per-byte integer contributions
    for o, n in enumerate(spec["orders"]):
        if T < n:
            continue
        packed = np.zeros((B, T - n + 1), dtype=np.uint64)
        for i in range(n):  # bytes x_{t-n+1} .. x_t, oldest in the high bits
            packed = (packed << np.uint64(8)) | x[:, i:T - n + 1 + i]
        key = packed | np.uint64(n << 24)
        buckets = (mix64(hs ^ key) >> shift).astype(np.int64)  # (B, T-n+1)
        v[:, n - 1:T, :] += M[o][buckets]
    u = v.reshape(B, P, pb, d).astype(np.int64).sum(axis=2)  # (B, P, d) exact integer sums
    shifts, _ = _group_params(spec)
    a = np.zeros((B, d), dtype=np.int64)
    out = np.empty((B, P, d), dtype=np.int64)
    for p in range(P):
        a = a - (a >> shifts) + u[:, p]
        out[:, p] = a
    return out


def causal_anchors(byte_ids, spec: dict = ANCHOR_SPEC) -> torch.Tensor:
    """Anchors for byte ids (B, T) (tensor, array or bytes) -> float32 tensor (B, P, d_abi).

    anchor[:, p] describes bytes 0..min(4p+3, T-1) of each row.
    """
    _, scales = _group_params(spec)
    a = anchor_ints(byte_ids, spec)
    return torch.from_numpy((a.astype(np.float64) * scales).astype(np.float32))


def causal_anchors_reference(data: bytes, spec: dict = ANCHOR_SPEC) -> list[list[float]]:
    """Plain-Python twin of ``causal_anchors`` for one byte string: a list of P rows of d floats."""
    pb, d, nb = spec["patch_bytes"], spec["d_abi"], spec["buckets"]
    bits = _bucket_bits(spec)
    hs = stream_id(spec["hash_stream"])
    ms = stream_id(spec["matrix_stream"])
    per = d // len(spec["decay_shifts"])
    rows: list[list[float]] = []
    acc = [0] * d
    n_patches = -(-len(data) // pb)
    for p in range(n_patches):
        u = [0] * d
        for t in range(p * pb, min((p + 1) * pb, len(data))):
            for o, n in enumerate(spec["orders"]):
                if t - n + 1 < 0:
                    continue
                packed = 0
                for byte in data[t - n + 1:t + 1]:
                    packed = (packed << 8) | byte
                bucket = mix64_py(hs ^ (packed | (n << 24))) >> (64 - bits)
                base = (o * nb + bucket) * d
                for j in range(d):
                    u[j] += signed_int_py(ms, base + j, spec["value_bits"])
        row = []
        for j in range(d):
            g = j // per
            acc[j] = acc[j] - (acc[j] >> spec["decay_shifts"][g]) + u[j]
            row.append(float(np.float32(float(acc[j]) * 2.0 ** spec["scale_log2"][g])))
        rows.append(row)
    return rows

"""Encoding and decoding of pack entries: byte grouping, XOR deltas and chunked zstd (numpy + zstandard).

Works on bytes only (never torch). An object is cut into chunks of `CHUNK_BYTES`; chunks are
compressed and decompressed on a shared thread pool (zstandard and numpy's copies release the GIL),
and each chunk is small enough that regrouping its byte planes stays in the CPU cache.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from . import pack_format as pf
from .errors import CorruptObject

CHUNK_BYTES = 256 * 1024
GROUPED_DTYPES = {"F32": 4, "BF16": 2, "F16": 2}  # byte-grouped and XOR-delta candidates
DEFAULT_LEVEL = 1  # zstd level: on weight planes level 1 compresses as well as 3, and faster
TASKS_PER_WORKER = 4

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


_workers: int | None = None


def workers() -> int:
    """Threads used to (de)compress the chunks of one object: the CPU cores this process may use."""
    global _workers
    if _workers is None:
        try:
            _workers = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            _workers = max(1, os.cpu_count() or 1)
    return _workers


def _forget_pool() -> None:  # a forked child must not use its parent's threads
    global _pool, _pool_lock, _workers
    _pool, _pool_lock, _workers = None, threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="mvc-pack")
        return _pool


def _parallel(fn, chunks: int) -> list:
    """fn(first, stop) over consecutive chunk ranges, on the pool when there is more than one."""
    n_workers = workers()
    if chunks <= 1 or n_workers == 1 or threading.current_thread().name.startswith("mvc-pack"):
        return [fn(0, chunks)]
    tasks = min(chunks, n_workers * TASKS_PER_WORKER)
    bounds = [chunks * i // tasks for i in range(tasks + 1)]
    futures = [_get_pool().submit(fn, a, b) for a, b in zip(bounds, bounds[1:])]
    return [f.result() for f in futures]


def _cctx(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False,
                                                    write_content_size=True, write_dict_id=False)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


@dataclass
class Encoded:
    """One entry ready to be written: its encoding, byte pieces and total length."""

    encoding: int
    parts: list
    length: int


def _plane_frames(block: np.ndarray, level: int) -> list[tuple[bytes, bool]]:
    """(frame, stored raw?) for each byte plane of `block` (m elements x itemsize bytes)."""
    planes = [block.reshape(-1)] if block.shape[1] == 1 else block.T.copy()
    out = []
    cctx = _cctx(level)
    for p in planes:
        f = cctx.compress(p)
        out.append((p.tobytes(), True) if len(f) >= p.size else (f, False))
    return out


def _assemble(encoding: int, prefix, itemsize: int, chunk_elems: int, frames: list) -> Encoded:
    table = np.array([len(f) | (pf.RAW_FLAG if raw else 0) for chunk in frames for f, raw in chunk],
                     dtype="<u4")
    head = pf.encode_entry_header(len(prefix), itemsize, chunk_elems, len(frames))
    parts = [head, bytes(prefix), table.tobytes()] + [f for chunk in frames for f, _raw in chunk]
    return Encoded(encoding, parts, sum(len(p) for p in parts))


def encode(data, prefix_len: int = 0, itemsize: int = 1, base=None, level: int = DEFAULT_LEVEL) -> Encoded:
    """The smallest of: raw; planes of `itemsize` bytes + zstd; XOR against `base` + planes + zstd.

    `data` (and `base`, an object of the same size and prefix) are bytes-like. Never larger than raw.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    size = buf.size
    body = buf[prefix_len:]
    if body.size % itemsize:
        itemsize = 1
    n = body.size // itemsize
    mat = body.reshape(n, itemsize)
    bmat = None
    if base is not None:
        bbuf = np.frombuffer(base, dtype=np.uint8)
        if bbuf.size == size and bytes(bbuf[:prefix_len]) == bytes(buf[:prefix_len]):
            bmat = bbuf[prefix_len:].reshape(n, itemsize)
    chunk_elems = max(1, CHUNK_BYTES // itemsize)
    chunks = -(-n // chunk_elems)

    def work(first, stop):
        out = []
        for c in range(first, stop):
            a, e = c * chunk_elems, min((c + 1) * chunk_elems, n)
            block = mat[a:e]
            plain = _plane_frames(block, level)
            delta = _plane_frames(np.bitwise_xor(block, bmat[a:e]), level) if bmat is not None else None
            out.append((plain, delta))
        return out

    results = [r for part in _parallel(work, chunks) for r in part]
    prefix = buf[:prefix_len]
    best = Encoded(pf.RAW, [data], size)
    grouped = _assemble(pf.GROUPED if itemsize > 1 else pf.ZSTD, prefix, itemsize, chunk_elems,
                        [p for p, _d in results])
    if grouped.length < best.length:
        best = grouped
    if bmat is not None:
        delta = _assemble(pf.XOR, prefix, itemsize, chunk_elems, [d for _p, d in results])
        if delta.length < best.length:
            best = delta
    return best


def decode(entry, encoding: int, size: int, base: np.ndarray | None, where: str) -> np.ndarray:
    """The object bytes (a new, writable uint8 array) of one entry. Not yet verified by hash."""
    entry = memoryview(entry)
    if encoding == pf.RAW:
        if len(entry) != size:
            raise CorruptObject(f"{where} is corrupt: raw entry of {len(entry)} bytes for a {size}-byte object",
                                "run mvc fsck")
        return np.frombuffer(entry, dtype=np.uint8).copy()
    h = pf.decode_entry_header(entry, size, where)
    out = np.empty(size, dtype=np.uint8)
    out[:h.prefix_len] = np.frombuffer(entry, dtype=np.uint8, count=h.prefix_len, offset=pf.ENTRY_HEADER.size)
    raw_table = np.frombuffer(entry, dtype="<u4", count=h.chunks * h.itemsize,
                              offset=pf.ENTRY_HEADER.size + h.prefix_len).reshape(h.chunks, h.itemsize)
    lengths = (raw_table & ~np.uint32(pf.RAW_FLAG)).astype(np.int64)
    stored_raw = (raw_table & np.uint32(pf.RAW_FLAG)) != 0
    ends = h.body_offset + np.cumsum(lengths.reshape(-1))
    if (ends[-1] if ends.size else h.body_offset) != len(entry):
        raise CorruptObject(f"{where} is corrupt: its chunk table does not match the entry length", "run mvc fsck")
    starts = (ends - lengths.reshape(-1)).reshape(h.chunks, h.itemsize)
    n = (size - h.prefix_len) // h.itemsize
    mat = out[h.prefix_len:].reshape(n, h.itemsize)
    bmat = None
    if encoding == pf.XOR:
        if base is not None and not isinstance(base, np.ndarray):
            base = np.frombuffer(base, dtype=np.uint8)
        if base is None or base.size != size:
            raise CorruptObject(f"{where} is an XOR delta whose base has the wrong size", "run mvc fsck")
        bmat = base[h.prefix_len:].reshape(n, h.itemsize)

    def work(first, stop):
        dctx = _dctx()
        for c in range(first, stop):
            a, e = c * h.chunk_elems, min((c + 1) * h.chunk_elems, n)
            m = e - a
            for k in range(h.itemsize):
                frame = entry[starts[c, k]: starts[c, k] + lengths[c, k]]
                if stored_raw[c, k]:
                    if len(frame) != m:
                        raise CorruptObject(f"{where} is corrupt: chunk {c} plane {k} has the wrong length",
                                            "run mvc fsck")
                    src = np.frombuffer(frame, dtype=np.uint8)
                else:
                    try:
                        if zstandard.frame_content_size(frame) != m:
                            raise zstandard.ZstdError("frame size does not match")
                        src = np.frombuffer(dctx.decompress(frame), dtype=np.uint8)
                    except zstandard.ZstdError as err:
                        raise CorruptObject(f"{where} is corrupt: chunk {c} plane {k} does not decompress ({err})",
                                            "run mvc fsck") from None
                    if src.size != m:
                        raise CorruptObject(f"{where} is corrupt: chunk {c} plane {k} has the wrong size",
                                            "run mvc fsck")
                mat[a:e, k] = src
            if bmat is not None:
                np.bitwise_xor(mat[a:e], bmat[a:e], out=mat[a:e])

    _parallel(work, h.chunks)
    return out

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

from . import forks
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


@forks.on_fork
def _forget_pool() -> None:  # a forked child must not use its parent's threads
    global _pool, _pool_lock, _workers
    _pool, _pool_lock, _workers = None, threading.Lock(), None


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


@dataclass
class _Layout:
    """An object cut for encoding: its bytes, the body as n x itemsize, the base's likewise."""

    buf: np.ndarray
    mat: np.ndarray
    bmat: np.ndarray | None
    itemsize: int
    n: int
    chunk_elems: int
    chunks: int

    def block(self, c: int, delta: bool) -> np.ndarray:
        a, e = c * self.chunk_elems, min((c + 1) * self.chunk_elems, self.n)
        return np.bitwise_xor(self.mat[a:e], self.bmat[a:e]) if delta else self.mat[a:e]


def _layout(data, prefix_len: int, itemsize: int, base) -> _Layout:
    buf = np.frombuffer(data, dtype=np.uint8)
    body = buf[prefix_len:]
    if body.size % itemsize:
        itemsize = 1
    n = body.size // itemsize
    bmat = None
    if base is not None:
        bbuf = np.frombuffer(base, dtype=np.uint8)
        if bbuf.size == buf.size and bytes(bbuf[:prefix_len]) == bytes(buf[:prefix_len]):
            bmat = bbuf[prefix_len:].reshape(n, itemsize)
    chunk_elems = max(1, CHUNK_BYTES // itemsize)
    return _Layout(buf, body.reshape(n, itemsize), bmat, itemsize, n, chunk_elems, -(-n // chunk_elems))


def encode(data, prefix_len: int = 0, itemsize: int = 1, base=None, level: int = DEFAULT_LEVEL) -> Encoded:
    """The smallest of: raw; planes of `itemsize` bytes + zstd; XOR against `base` + planes + zstd.

    `data` (and `base`, an object of the same size and prefix) are bytes-like. Never larger than raw.
    Holds the whole entry in memory: large objects go through encode_into.
    """
    lay = _layout(data, prefix_len, itemsize, base)
    buf, bmat, itemsize, chunk_elems, chunks = lay.buf, lay.bmat, lay.itemsize, lay.chunk_elems, lay.chunks
    size = buf.size

    def work(first, stop):
        out = []
        for c in range(first, stop):
            plain = _plane_frames(lay.block(c, False), level)
            delta = _plane_frames(lay.block(c, True), level) if bmat is not None else None
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


STREAM_BYTES = 64 << 20  # objects from this size are encoded into the pack and verified in batches
BATCH_CHUNKS = 64  # chunks (16 MiB) encoded, decoded or hashed at a time when streaming
SAMPLE_CHUNKS = 32  # chunks compressed both ways to choose the XOR delta for a streamed object


def encode_into(f, data, prefix_len: int = 0, itemsize: int = 1, base=None,
                level: int = DEFAULT_LEVEL, progress=None) -> tuple[int, int]:
    """(encoding, length) of one object encoded straight into file `f` at its position, a batch of
    chunks at a time: what encode() gives for a large object without holding its entry (which
    held 1.7x the largest tensor while packing). The XOR delta is chosen when it compresses a
    sample of chunks better; an entry that would grow past raw is written raw. `progress(n)` is
    called after each batch with the object bytes it covered; the calls add up to the object's size."""
    lay = _layout(data, prefix_len, itemsize, base)
    size, itemsize, chunks = lay.buf.size, lay.itemsize, lay.chunks
    delta = lay.bmat is not None and _delta_smaller(lay, level)
    start = f.tell()
    f.write(pf.encode_entry_header(prefix_len, itemsize, lay.chunk_elems, chunks))
    f.write(lay.buf[:prefix_len].tobytes())
    table_at = f.tell()
    table = np.zeros(chunks * itemsize, dtype="<u4")
    f.write(table.tobytes())  # filled in below, once every frame's length is known
    length = f.tell() - start
    reported = 0
    for b0 in range(0, chunks, BATCH_CHUNKS):
        if length >= size:
            break

        def work(first, stop, b0=b0):
            return [_plane_frames(lay.block(c, delta), level) for c in range(b0 + first, b0 + stop)]
        for c, planes in enumerate((p for part in _parallel(work, min(chunks, b0 + BATCH_CHUNKS) - b0)
                                    for p in part), b0):
            for k, (frame, raw) in enumerate(planes):
                table[c * itemsize + k] = len(frame) | (pf.RAW_FLAG if raw else 0)
                f.write(frame)
                length += len(frame)
        if progress:
            done = prefix_len + min(lay.n, (b0 + BATCH_CHUNKS) * lay.chunk_elems) * itemsize
            progress(done - reported)
            reported = done
    if progress and size > reported:
        progress(size - reported)
    if length >= size:  # never larger than raw
        f.seek(start)
        f.truncate()
        f.write(memoryview(lay.buf))
        return pf.RAW, size
    end = f.tell()
    f.seek(table_at)
    f.write(table.tobytes())
    f.seek(end)
    return (pf.XOR if delta else pf.GROUPED if itemsize > 1 else pf.ZSTD), length


def _delta_smaller(lay: _Layout, level: int) -> bool:
    """Whether XOR against the base compresses a sample of chunks, spread over the object, better."""
    picks = sorted(set(np.linspace(0, lay.chunks - 1, min(lay.chunks, SAMPLE_CHUNKS)).astype(int).tolist()))

    def work(first, stop):
        plain = delta = 0
        for c in picks[first:stop]:
            plain += sum(len(fr) for fr, _raw in _plane_frames(lay.block(c, False), level))
            delta += sum(len(fr) for fr, _raw in _plane_frames(lay.block(c, True), level))
        return plain, delta
    sizes = _parallel(work, len(picks))
    return sum(d for _p, d in sizes) < sum(p for p, _d in sizes)


@dataclass
class _Entry:
    """A parsed (GROUPED, ZSTD or XOR) entry: where each chunk's planes lie, and the base's body."""

    entry: memoryview
    h: object
    starts: np.ndarray
    lengths: np.ndarray
    stored_raw: np.ndarray
    n: int
    bmat: np.ndarray | None
    where: str

    def decode_chunks(self, out: np.ndarray, c0: int, c1: int, in_place: bool = False) -> None:
        """Chunks c0..c1-1 into `out`, an (elements x itemsize) array that starts at chunk c0.
        `in_place`: `out` holds the delta's base (the whole body, c0 == 0), which is XORed with the
        decoded delta where it lies instead of being read beside a second buffer."""
        h, where, base = self.h, self.where, c0 * self.h.chunk_elems

        def work(first, stop):
            dctx = _dctx()
            scratch = np.empty((min(h.chunk_elems, self.n), h.itemsize), dtype=np.uint8) if in_place else None
            for c in range(c0 + first, c0 + stop):
                a, e = c * h.chunk_elems, min((c + 1) * h.chunk_elems, self.n)
                m = e - a
                dest = scratch[:m] if in_place else out[a - base:e - base]
                for k in range(h.itemsize):
                    frame = self.entry[self.starts[c, k]: self.starts[c, k] + self.lengths[c, k]]
                    if self.stored_raw[c, k]:
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
                            raise CorruptObject(f"{where} is corrupt: chunk {c} plane {k} does not decompress: "
                                                f"{err}", "run mvc fsck") from None
                        if src.size != m:
                            raise CorruptObject(f"{where} is corrupt: chunk {c} plane {k} has the wrong size",
                                                "run mvc fsck")
                    dest[:, k] = src
                if in_place:
                    np.bitwise_xor(out[a:e], dest, out=out[a:e])
                elif self.bmat is not None:
                    np.bitwise_xor(dest, self.bmat[a:e], out=dest)

        _parallel(work, c1 - c0)


def _parse(entry, encoding: int, size: int, base, where: str) -> _Entry:
    h = pf.decode_entry_header(entry, size, where)
    raw_table = np.frombuffer(entry, dtype="<u4", count=h.chunks * h.itemsize,
                              offset=pf.ENTRY_HEADER.size + h.prefix_len).reshape(h.chunks, h.itemsize)
    lengths = (raw_table & ~np.uint32(pf.RAW_FLAG)).astype(np.int64)
    stored_raw = (raw_table & np.uint32(pf.RAW_FLAG)) != 0
    ends = h.body_offset + np.cumsum(lengths.reshape(-1))
    if (ends[-1] if ends.size else h.body_offset) != len(entry):
        raise CorruptObject(f"{where} is corrupt: its chunk table does not match the entry length", "run mvc fsck")
    starts = (ends - lengths.reshape(-1)).reshape(h.chunks, h.itemsize)
    n = (size - h.prefix_len) // h.itemsize
    bmat = None
    if encoding == pf.XOR:
        if base is not None and not isinstance(base, np.ndarray):
            base = np.frombuffer(base, dtype=np.uint8)
        if base is None or base.size != size:
            raise CorruptObject(f"{where} is an XOR delta whose base has the wrong size", "run mvc fsck")
        bmat = base[h.prefix_len:].reshape(n, h.itemsize)
    return _Entry(entry, h, starts, lengths, stored_raw, n, bmat, where)


def _raw_entry(entry: memoryview, size: int, where: str) -> memoryview:
    if len(entry) != size:
        raise CorruptObject(f"{where} is corrupt: raw entry of {len(entry)} bytes for a {size}-byte object",
                            "run mvc fsck")
    return entry


def decode(entry, encoding: int, size: int, base, where: str, into_base: bool = False) -> np.ndarray:
    """The object bytes (a writable uint8 array) of one entry. Not yet verified by hash.
    `into_base`: an XOR delta is decoded into its base's own (writable) buffer, which then holds
    the object and no longer the base: memory for one object, not two."""
    entry = memoryview(entry)
    if encoding == pf.RAW:
        return np.frombuffer(_raw_entry(entry, size, where), dtype=np.uint8).copy()
    e = _parse(entry, encoding, size, base, where)
    in_place = into_base and e.bmat is not None and e.bmat.flags.writeable
    if in_place:
        out = base if isinstance(base, np.ndarray) else np.frombuffer(base, dtype=np.uint8)
    else:
        out = np.empty(size, dtype=np.uint8)
    out[:e.h.prefix_len] = np.frombuffer(entry, dtype=np.uint8, count=e.h.prefix_len, offset=pf.ENTRY_HEADER.size)
    e.decode_chunks(out[e.h.prefix_len:].reshape(e.n, e.h.itemsize), 0, e.h.chunks, in_place=in_place)
    return out


def decode_pieces(entry, encoding: int, size: int, base, where: str):
    """An entry's object bytes in order, a batch of chunks at a time (never whole): the prefix,
    then each batch in one buffer that the next batch overwrites (use each piece before asking
    for the next). Not verified by hash: the caller hashes what passes."""
    entry = memoryview(entry)
    if encoding == pf.RAW:
        yield _raw_entry(entry, size, where)
        return
    e = _parse(entry, encoding, size, base, where)
    yield entry[pf.ENTRY_HEADER.size: pf.ENTRY_HEADER.size + e.h.prefix_len]
    batch = np.empty((min(e.n, BATCH_CHUNKS * e.h.chunk_elems), e.h.itemsize), dtype=np.uint8)
    for c0 in range(0, e.h.chunks, BATCH_CHUNKS):
        c1 = min(e.h.chunks, c0 + BATCH_CHUNKS)
        rows = min(e.n, c1 * e.h.chunk_elems) - c0 * e.h.chunk_elems
        e.decode_chunks(batch, c0, c1)
        yield memoryview(batch[:rows]).cast("B")


def decode_hash(entry, encoding: int, size: int, base, where: str) -> str:
    """The BLAKE3 hex of an entry's object, decoded a batch of chunks at a time (never whole)."""
    from .objects import hash_bytes, new_hasher
    if encoding == pf.RAW:
        return hash_bytes(_raw_entry(memoryview(entry), size, where))
    hasher = new_hasher()
    for piece in decode_pieces(entry, encoding, size, base, where):
        hasher.update(piece)
    return hasher.hexdigest()

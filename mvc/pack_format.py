"""On-disk layout of pack files and their indexes (bytes and struct only: no numpy, no I/O policy).

A pack holds many objects, each stored in one of four encodings; its index says where each object
lies, so one object is read without reading the pack. Both files end with the BLAKE3 of everything
before that trailer, and the index names the pack's checksum, which is also the pack's file name.

    pack-<checksum>.pack   header | entry | entry | ... | BLAKE3 trailer
    pack-<checksum>.idx    header | records sorted by object id | BLAKE3 trailer

Entries of the "zstd", "grouped" and "xor" encodings share one layout (`EntryHeader`): the
object's first `prefix_len` bytes verbatim (a tensor blob's safetensors header), then the rest cut
into chunks of `chunk_elems` elements of `itemsize` bytes; each chunk is split into `itemsize` byte
planes (byte k of every element), and each plane chunk is one zstd frame, or stored as is when zstd
does not shrink it. "xor" planes hold the element bytes XOR the base object's, byte for byte.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CorruptObject, FormatTooNew

PACK_MAGIC = b"MVCPACK\x00"
IDX_MAGIC = b"MVCPIDX\x00"
PACK_VERSION = 1
TRAILER_BYTES = 32

PACK_HEADER = struct.Struct("<8sII")          # magic, version, object count
IDX_HEADER = struct.Struct("<8sII32s")        # magic, version, record count, pack checksum
PACK_OVERHEAD = PACK_HEADER.size + IDX_HEADER.size + 2 * TRAILER_BYTES  # a pack's and its index's bytes beyond records
RECORD = struct.Struct("<32s32sQQQBB6x")      # id, base id (zeros: none), offset, length, size,
#                                               encoding, delta depth
ENTRY_HEADER = struct.Struct("<IBBII")        # prefix_len, itemsize, reserved, chunk_elems, chunks
RAW_FLAG = 0x80000000                         # in a chunk-table length: plane chunk stored as is

RAW, ZSTD, GROUPED, XOR = 0, 1, 2, 3
ENCODING_NAMES = {RAW: "raw", ZSTD: "zstd", GROUPED: "grouped", XOR: "xor"}
NO_BASE = b"\x00" * 32


@dataclass(frozen=True)
class Record:
    """Where one object lies in a pack and how it is encoded."""

    oid: str
    base: str | None
    offset: int
    length: int
    size: int          # bytes of the object itself (what its id hashes)
    encoding: int
    depth: int         # XOR deltas applied to read it (0: self-contained)


@dataclass(frozen=True)
class EntryHeader:
    prefix_len: int
    itemsize: int
    chunk_elems: int
    chunks: int

    @property
    def table_bytes(self) -> int:
        return 4 * self.chunks * self.itemsize

    @property
    def body_offset(self) -> int:
        return ENTRY_HEADER.size + self.prefix_len + self.table_bytes


def pack_name(checksum: bytes) -> str:
    return "pack-" + checksum.hex()


def encode_pack_header(count: int) -> bytes:
    return PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, count)


def check_pack_header(data, where: str) -> int:
    """The object count of a pack whose first bytes are `data`."""
    if len(data) < PACK_HEADER.size + TRAILER_BYTES:
        raise CorruptObject(f"{where} is truncated: {len(data)} bytes", "run mvc fsck")
    magic, version, count = PACK_HEADER.unpack_from(data, 0)
    if magic != PACK_MAGIC:
        raise CorruptObject(f"{where} is not an mvc pack file", "run mvc fsck")
    _check_version(version, where)
    return count


def _check_version(version: int, where: str) -> None:
    if version < 1:
        raise CorruptObject(f"{where} has pack format {version}, a format no mvc writes", "run mvc fsck")
    if version > PACK_VERSION:
        raise FormatTooNew(f"{where} has pack format {version}; this mvc reads up to {PACK_VERSION}",
                           "upgrade mvc")


def encode_index(records: list[Record], pack_checksum: bytes) -> bytes:
    """Index bytes (records sorted by id) without the trailer."""
    parts = [IDX_HEADER.pack(IDX_MAGIC, PACK_VERSION, len(records), pack_checksum)]
    for r in sorted(records, key=lambda r: r.oid):
        parts.append(RECORD.pack(bytes.fromhex(r.oid), bytes.fromhex(r.base) if r.base else NO_BASE,
                                 r.offset, r.length, r.size, r.encoding, r.depth))
    return b"".join(parts)


def check_index(data, where: str, trailer: bool = True) -> tuple[int, bytes]:
    """(record count, pack checksum) of an index `data` (a whole file, or without its trailer) whose
    size matches its header; the records themselves are neither read nor verified here."""
    tail = TRAILER_BYTES if trailer else 0
    if len(data) < IDX_HEADER.size + tail:
        raise CorruptObject(f"{where} is truncated", "run mvc fsck")
    magic, version, count, checksum = IDX_HEADER.unpack_from(data, 0)
    if magic != IDX_MAGIC:
        raise CorruptObject(f"{where} is not an mvc pack index", "run mvc fsck")
    _check_version(version, where)
    if len(data) != IDX_HEADER.size + count * RECORD.size + tail:
        raise CorruptObject(f"{where} holds {len(data) - tail} bytes, not {count} records", "run mvc fsck")
    return count, checksum


def _record(fields) -> Record:
    oid, base, offset, length, size, encoding, depth = fields
    return Record(oid.hex(), None if base == NO_BASE else base.hex(), offset, length, size, encoding, depth)


def record_at(data, i: int) -> Record:
    """Record `i` of an index (`data`: the whole index file), as stored: not checked."""
    return _record(RECORD.unpack_from(data, IDX_HEADER.size + i * RECORD.size))


def lower_bound(data, key: bytes, lo: int, hi: int) -> int:
    """The first record in [lo, hi) (records sorted by id) whose id is not below `key`: a binary
    search that reads log2(hi - lo) ids of the index and decodes none of its records."""
    start, step, n = IDX_HEADER.size, RECORD.size, len(key)
    while lo < hi:
        mid = (lo + hi) // 2
        at = start + mid * step
        if data[at: at + n] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def find_record(data, key: bytes, lo: int, hi: int) -> int | None:
    """The position in [lo, hi) of the record whose id is `key` (32 bytes), or None."""
    i = lower_bound(data, key, lo, hi)
    at = IDX_HEADER.size + i * RECORD.size
    return i if i < hi and data[at: at + 32] == key else None


def oid_at(data, i: int) -> str:
    at = IDX_HEADER.size + i * RECORD.size
    return data[at: at + 32].hex()


def decode_index(data: bytes, where: str) -> tuple[bytes, list[Record]]:
    """(pack checksum, records) of an index (without its trailer, which has been verified), every
    record checked to be sorted and of a known encoding."""
    _count, checksum = check_index(data, where, trailer=False)
    records = []
    previous = b""
    for fields in RECORD.iter_unpack(memoryview(data)[IDX_HEADER.size:]):
        oid, encoding = fields[0], fields[5]
        if encoding not in ENCODING_NAMES:
            raise CorruptObject(f"{where}: object {oid.hex()} has unknown encoding {encoding}", "run mvc fsck")
        if oid <= previous:
            raise CorruptObject(f"{where}: its records are not sorted by id", "run mvc fsck")
        previous = oid
        records.append(_record(fields))
    return checksum, records


def encode_entry_header(prefix_len: int, itemsize: int, chunk_elems: int, chunks: int) -> bytes:
    return ENTRY_HEADER.pack(prefix_len, itemsize, 0, chunk_elems, chunks)


def decode_entry_header(entry, size: int, where: str) -> EntryHeader:
    """Parse and check an entry header against the object's size (from the index)."""
    if len(entry) < ENTRY_HEADER.size:
        raise CorruptObject(f"{where}: entry is truncated", "run mvc fsck")
    prefix_len, itemsize, _reserved, chunk_elems, chunks = ENTRY_HEADER.unpack_from(entry, 0)
    h = EntryHeader(prefix_len, itemsize, chunk_elems, chunks)
    data_len = size - prefix_len
    if (itemsize == 0 or chunk_elems == 0 or data_len < 0 or data_len % itemsize
            or chunks != -(-(data_len // itemsize) // chunk_elems) or len(entry) < h.body_offset):
        raise CorruptObject(f"{where}: entry header does not match the object's size", "run mvc fsck")
    return h

"""The read side of packed storage: `PackStore`, a read-only object store over the pack files.

Packs live in `.mvc/objects/pack/` as `pack-<checksum>.pack` + `.idx` (layout: pack_format.py).
The store maps every index and pack, finds an object's record by a binary search of the index (no
index is decoded whole or hashed to open it: lookups cost O(log n) whatever the pack's size; fsck,
gc and pack hash and check every index, see `check_indexes`), and reads one object by its record,
whose fields are checked against the pack before its entry is read: it decodes
the entry (pack_codec.py), applying the XOR delta against its base (read the same way, at most
`depth` steps), and verifies the result against the object id before returning it. Decoded objects
that serve as a base are kept in a small LRU cache, so restoring commits in order costs one decode
each (`_decoded` says why a cached base needs no defensive copy); a base that is not cached is
decoded into by the delta, so reading a large delta holds one object, not two. A lookup that misses rescans the
directory, so packs written by another process are seen, and a pack removed by a repack stays
readable for a reader that has it mapped.
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import mmap
import os
import struct
import threading
from collections import OrderedDict

from . import forks
from . import pack_format as pf
from .errors import ConfigError, CorruptObject, FormatTooNew, MvcError, ObjectMissing, os_error_text
from .objects import hash_bytes, new_hasher
from .store import ObjectStore

PACK_DIR = "pack"                # under the objects directory
DEFAULT_CACHE_BYTES = 256 << 20  # decoded delta bases kept in memory (config pack.cacheMB)
MAX_CHAIN = 255                  # refuses cycles and absurd chains in a damaged index
SIMPLE_DECODE_MAX = 1 << 20      # plain entries up to this size are decoded without numpy
RECENT_LOOKUPS = 4096            # records found kept by id (reading one object looks it up ~3 times)


class Pack:
    """One pack file and its index, both mapped. Opening one reads the headers only (O(1)); a
    lookup binary-searches the index's sorted records and decodes the one it finds, so its cost
    does not grow with the pack. The whole index is hashed and decoded only by `load_records`
    (fsck, gc, pack and du: what reads every record anyway)."""

    def __init__(self, directory: str, name: str):
        self.name = name
        self.idx_path = os.path.join(directory, name + ".idx")
        self.path = os.path.join(directory, name + ".pack")
        self.where = where = f"pack index {name}.idx"
        with open(self.idx_path, "rb") as f:
            st = os.fstat(f.fileno())
            n, self.idx_inode = st.st_size, st.st_ino
            self.idx = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if n else b""
        self._records: dict[str, pf.Record] | None = None  # every record, once load_records ran
        self._sum_ok: bool | None = None  # whether the whole index hashes to its trailer (index_sound)
        self._base_keys = None                               # see is_base
        self._fanout: list = [None] * 257  # where the ids starting with byte b start, once sought
        try:
            self.count, self.checksum = pf.check_index(self.idx, where)
            if pf.pack_name(self.checksum) != name:
                raise CorruptObject(f"{where} belongs to {pf.pack_name(self.checksum)}, not to {name}", "run mvc fsck")
        except MvcError:  # a newer mvc's index, or damage: its checksum tells which
            if not self.index_checksum_matches():
                raise self._index_corrupt() from None
            raise
        with open(self.path, "rb") as f:   # FileNotFoundError: the pack went away (a repack)
            self.file_size = os.fstat(f.fileno()).st_size
            self.mtime = os.fstat(f.fileno()).st_mtime
            self.inode = os.fstat(f.fileno()).st_ino
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.file_size else b""
        try:
            count = pf.check_pack_header(self.map, f"pack {name}.pack")
        except FormatTooNew:  # a newer mvc's pack, or a flipped bit: the name (its checksum) tells
            if self.file_size >= pf.TRAILER_BYTES and not self.verify_checksum():
                raise CorruptObject(f"pack {name}.pack is corrupt: its header is damaged, its checksum does not match",
                                    "mvc fsck --repair-from REMOTE restores its objects from a remote or clone")
            raise
        if count != self.count or bytes(self.map[-pf.TRAILER_BYTES:]) != self.checksum:
            raise CorruptObject(f"pack {name}.pack does not match its index", "run mvc fsck")

    def _index_corrupt(self) -> CorruptObject:
        return CorruptObject(f"{self.where} is corrupt: its checksum does not match",
                             "mvc fsck --repair-from REMOTE restores its objects from a remote or clone; "
                             "then remove this pack's files")

    def index_checksum_matches(self) -> bool:
        idx = self.idx
        return len(idx) >= pf.TRAILER_BYTES and \
            hash_bytes(memoryview(idx)[:-pf.TRAILER_BYTES]) == bytes(idx[-pf.TRAILER_BYTES:]).hex()

    def index_sound(self) -> bool:
        """Whether the whole index hashes to its trailer (hashed once: a binary search reads a few
        ids, so a flipped bit in one would hide its object rather than show as damage)."""
        if self._sum_ok is None:
            self._sum_ok = self.index_checksum_matches()
        return self._sum_ok

    def load_records(self) -> dict[str, pf.Record]:
        """Every record by id, after hashing the whole index against its trailer and checking every
        record (sorted, known encodings, inside the pack); CorruptObject says what is wrong. Kept
        until the pack is closed: for the commands that read every record (fsck, gc, pack)."""
        if self._records is None:
            if not self.index_sound():
                raise self._index_corrupt()
            _checksum, records = pf.decode_index(memoryview(self.idx)[:-pf.TRAILER_BYTES], self.where)
            for r in records:
                self._check(r)
            self._records = {r.oid: r for r in records}
        return self._records

    @property
    def records(self) -> dict[str, pf.Record]:
        return self.load_records()

    def find(self, oid: str) -> pf.Record | None:
        """The record of `oid` (a binary search of the index), or None. Its fields are checked when
        its entry is read (`entry`); the object it decodes to, against its id."""
        if self._records is not None:
            return self._records.get(oid)
        try:
            key = bytes.fromhex(oid)
        except (ValueError, TypeError):
            return None
        if len(key) != 32:
            return None
        b = key[0]
        lo, hi = self._fanout[b], self._fanout[b + 1]
        i = pf.find_record(self.idx, key, self._first(b) if lo is None else lo,
                           self._first(b + 1) if hi is None else hi)
        return None if i is None else pf.record_at(self.idx, i)

    def _first(self, byte: int) -> int:
        """The first record whose id's first byte is not below `byte` (0..256), as git's fanout
        table says: sought once by a binary search, so a lookup searches 1/256 of the index."""
        at = self._fanout[byte]
        if at is None:
            at = self._fanout[byte] = self.count if byte == 256 else \
                pf.lower_bound(self.idx, bytes([byte]), 0, self.count)
        return at

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Ids starting with `prefix`, sorted: a binary search, then the matches (ids are lowercase
        hex; another prefix matches none)."""
        if len(prefix) > 64 or prefix.strip("0123456789abcdef"):
            return []
        i = pf.lower_bound(self.idx, bytes.fromhex(prefix[: len(prefix) // 2 * 2]), 0, self.count)
        found = []
        for i in range(i, self.count):
            oid = pf.oid_at(self.idx, i)
            if oid.startswith(prefix):
                found.append(oid)
            elif oid > prefix:  # sorted: no match lies further
                break
        return found

    def _check(self, r: pf.Record) -> None:
        """CorruptObject unless record `r` names an entry inside the pack in a known encoding."""
        if r.encoding not in pf.ENCODING_NAMES:
            raise CorruptObject(f"{self.where}: object {r.oid} has unknown encoding {r.encoding}", "run mvc fsck")
        if r.offset < pf.PACK_HEADER.size or r.offset + r.length > self.file_size - pf.TRAILER_BYTES:
            raise CorruptObject(f"{self.where}: object {r.oid} lies outside the pack", "run mvc fsck")

    def entry(self, r: pf.Record) -> memoryview:
        self._check(r)
        return memoryview(self.map)[r.offset: r.offset + r.length]

    def checked_size(self, r: pf.Record) -> int:
        """The object size record `r` gives, once it agrees with its entry (a raw entry's length,
        or the chunk count of an encoded one's header): CorruptObject otherwise. The size decides
        whether an object is read to learn its kind (commit, tree or blob), so a flipped bit in it
        must not pass unread, as the rest of a record does until its object is decoded."""
        entry = self.entry(r)
        if r.encoding == pf.RAW:
            if r.length != r.size:
                raise CorruptObject(f"{self.where}: object {r.oid} has a size that does not match its entry",
                                    "run mvc fsck")
        else:
            pf.decode_entry_header(entry, r.size, f"{self.where}: object {r.oid}")
        return r.size

    def is_base(self, oid: str) -> bool:
        """Whether some XOR delta in this pack may have `oid` as its base (false positives only:
        the base ids' first 8 bytes, sorted, read from the index on first use: 8 bytes a delta)."""
        keys = self._base_keys
        if keys is None:
            import numpy as np
            rows = np.frombuffer(self.idx, dtype=np.uint8, count=self.count * pf.RECORD.size,
                                 offset=pf.IDX_HEADER.size).reshape(self.count, pf.RECORD.size)
            firsts = np.ascontiguousarray(rows[:, 32:40]).view(">u8").reshape(-1).astype(np.uint64)
            keys = self._base_keys = memoryview(np.unique(firsts[firsts != 0]))  # (no base: zeros)
        key = int(oid[:16], 16)
        i = bisect.bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    def verify_checksum(self) -> bool:
        return hash_bytes(memoryview(self.map)[: self.file_size - pf.TRAILER_BYTES]) == self.checksum.hex()

    def ordered(self) -> list[pf.Record]:
        """Records in pack order (bases are written before the deltas that use them)."""
        return sorted(self.records.values(), key=lambda r: r.offset)


HEAD_BYTES = 8 + 4096  # what check() returns of an object: a tensor blob's safetensors header


class _LRU:
    """A byte-bounded, thread-safe LRU of decoded objects (numpy arrays)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        forks.track(self)

    def _after_fork(self) -> None:  # (see mvc.forks: a lock another thread held, items half put)
        self._lock = threading.Lock()
        self._items, self._bytes = OrderedDict(), 0

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> bool:
        """Whether `value` is now held (False: larger than the whole cache, or another value is
        already held under `key`)."""
        if value.nbytes > self.capacity:
            return False
        with self._lock:
            if key in self._items:
                return self._items[key] is value
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.capacity:
                _k, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return True

    def discard(self, key) -> None:
        with self._lock:
            value = self._items.pop(key, None)
            if value is not None:
                self._bytes -= value.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class _Scan:
    """Decoded delta bases kept through one scan of many objects (fsck, the check of a written
    pack), each until the last delta on it among the scanned objects is decoded: one decode per
    object, however large the objects or small the cache (through the LRU alone, a base larger than
    it, or one evicted by what the scan decoded since, was decoded again from its chain's root for
    every delta on it). Bases are handed out as cached ones are: trusted only through the hash of
    what decodes on them."""

    def __init__(self, waiting: dict[str, int]):
        self._waiting = waiting  # base -> deltas on it among the scanned objects not yet decoded
        self._kept: dict[str, object] = {}
        self._lock = threading.Lock()

    def wants(self, oid: str) -> bool:
        with self._lock:
            return self._waiting.get(oid, 0) > 0

    def keep(self, oid: str, arr) -> bool:
        with self._lock:
            if self._waiting.get(oid, 0) <= 0:
                return False
            self._kept[oid] = arr
            return True

    def get(self, oid: str):
        with self._lock:
            return self._kept.get(oid)

    def used(self, base: str) -> None:
        """A delta on `base` was decoded: the base goes once none is left."""
        with self._lock:
            n = self._waiting.get(base, 0) - 1
            if n > 0:
                self._waiting[base] = n
            else:
                self._waiting.pop(base, None)
                self._kept.pop(base, None)

    def drop(self, oid: str) -> None:
        with self._lock:
            self._kept.pop(oid, None)


class PackStore(ObjectStore):
    """Read-only store over the packs in `directory`; writes go elsewhere (ChainStore's first store)."""

    def __init__(self, directory: str, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.dir = directory
        self._lock = threading.RLock()
        self._names: tuple | None = None
        self._packs: dict[str, Pack] = {}
        self._order: tuple[Pack, ...] = ()  # newest pack first: lookups take the first copy
        self._pinned: Pack | None = None     # looked up first, no other copy read (a new pack's check)
        self._recent: dict[str, tuple[Pack, pf.Record]] = {}  # the last lookups (a read makes several)
        self.damaged: dict[str, str] = {}   # pack name -> why its index could not be used
        self._bad_indexes: dict[str, tuple[int, str]] = {}  # name -> (inode, why): check_indexes found
        self.cache = _LRU(cache_bytes)
        self._scans = threading.local()  # the scan (see `scanning`) of each thread that runs one
        forks.track(self)

    def _after_fork(self) -> None:  # (see mvc.forks: a lock another thread held, a refresh half done)
        self._lock = threading.RLock()
        self._names, self._recent = None, {}  # (listed again on the next lookup)
        self._scans = threading.local()

    @property
    def _scan(self) -> _Scan | None:
        """The scan the calling thread runs or joined, if any: another thread's reads neither use
        nor count down its bases (two scans of one store at once, e.g. an fsck beside a push)."""
        return getattr(self._scans, "scan", None)

    def current_scan(self) -> _Scan | None:
        """The scan this thread runs (for its worker threads to join)."""
        return self._scan

    @contextlib.contextmanager
    def joining(self, scan: _Scan | None):
        """Reads in this thread use `scan` (a push's worker reading chains of its scan)."""
        previous, self._scans.scan = getattr(self._scans, "scan", None), scan
        try:
            yield
        finally:
            self._scans.scan = previous

    def read_elsewhere(self, oid: str, copy) -> None:
        """`oid`, one of this thread's scan's objects, was read from another copy (a push sends an
        object both loose and packed from its loose copy): its packed copy's base has one delta
        fewer to wait for (else kept to the end of the scan), and where deltas of the scan decode
        against `oid` itself, `copy()` (its bytes, or None when gone) is kept for them as a decoded
        base is: trusted only through the hash of what decodes on it (else decoded from the pack)."""
        scan = self._scan
        if scan is None:
            return
        hit = self.lookup(oid, rescan=False)
        if hit is not None and hit[1].encoding == pf.XOR and hit[1].base:
            scan.used(hit[1].base)
        if scan.wants(oid) and (data := copy()) is not None:
            import numpy as np
            scan.keep(oid, np.frombuffer(data, dtype=np.uint8))

    @contextlib.contextmanager
    def scanning(self, oids):
        """Read `oids` (check or view each, in this thread) as this yields them: a list of delta
        chains (each a list, base first), so that the base a delta among them decodes against,
        when it is among them too, is kept until the last delta on it is decoded (see _Scan) and
        no longer: memory for a base and a delta at a time, not for every chain (a pack holds a
        version of every tensor after another). A base outside them is left to the LRU. Reads on
        other threads use it inside `joining(scan)`, the scan being this thread's `_scan`."""
        members = set(oids)
        waiting: dict[str, int] = {}
        deltas: dict[str, list[str]] = {}
        roots = []
        for oid in dict.fromkeys(oids):
            hit = self.lookup(oid)
            base = hit[1].base if hit is not None and hit[1].encoding == pf.XOR else None
            if base and base in members and base != oid:  # (a base outside them is the LRU's, as for
                waiting[base] = waiting.get(base, 0) + 1   # any read: kept here, each such base would
                deltas.setdefault(base, []).append(oid)    # stay until its last delta among them)
            else:
                roots.append(oid)
        chains, placed = [], set()
        for root in roots:
            chain, stack = [], [root]
            while stack:
                oid = stack.pop()
                if oid not in placed:
                    placed.add(oid)
                    chain.append(oid)
                    stack.extend(reversed(deltas.get(oid, ())))
            chains.append(chain)
        chains += [[o] for o in dict.fromkeys(oids) if o not in placed]  # (a cycle of bases: damage, said on read)
        with self.joining(_Scan(waiting)):
            yield chains

    @classmethod
    def for_repo(cls, repo) -> "PackStore":
        try:
            mb = repo.config_value("pack.cacheMB", DEFAULT_CACHE_BYTES >> 20)
        except ConfigError:  # a cache size is no reason to refuse reading a repository
            mb = DEFAULT_CACHE_BYTES >> 20
        return cls(os.path.join(repo.dir, "objects", PACK_DIR), cache_bytes=int(mb * (1 << 20)))

    # -- the set of packs --------------------------------------------------------------------
    def refresh(self) -> bool:
        """Rescan the directory; True when the set of packs changed."""
        with self._lock:
            try:
                listed = set(os.listdir(self.dir))
            except FileNotFoundError:
                listed = set()
            names = tuple(sorted(n[:-4] for n in listed  # a pack is used once both files are there
                                 if n.startswith("pack-") and n.endswith(".idx") and n[:-4] + ".pack" in listed))
            if names == self._names:
                return False
            packs, damaged, vanished = {}, {}, False
            for name in names:
                pack = self._packs.get(name)
                if pack is None and name in self._bad_indexes:  # the same damaged index: skipped
                    try:
                        if os.stat(os.path.join(self.dir, name + ".idx")).st_ino == self._bad_indexes[name][0]:
                            damaged[name] = self._bad_indexes[name][1]
                            continue
                    except FileNotFoundError:
                        pass
                    del self._bad_indexes[name]
                if pack is None:
                    try:
                        pack = Pack(self.dir, name)
                    except FileNotFoundError:
                        vanished = True  # removed by a concurrent repack after the listing
                        continue
                    except CorruptObject as e:
                        damaged[name] = e.message
                        continue
                    except OSError as e:  # (a folder named like its file, unreadable, a bad disk: set
                        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):  # aside, named by fsck;
                            raise  # not a pack's fault)
                        damaged[name] = f"cannot be opened: {os_error_text(e)}"
                        continue
                packs[name] = pack
            self._packs, self.damaged, self._recent = packs, damaged, {}
            self._order = tuple(sorted(packs.values(), key=lambda p: -p.mtime))
            self._names = None if vanished else names  # None: list again on the next miss
            return True

    def check_indexes(self) -> None:
        """Hash and decode every index not yet checked (what fsck, gc, pack and du read anyway); a
        pack whose index fails is set aside in `damaged`, as one that cannot be opened is."""
        with self._lock:
            bad = {}
            for name, pack in self._packs.items():
                try:
                    pack.load_records()
                except CorruptObject as e:
                    bad[name] = e.message
                    self._bad_indexes[name] = (pack.idx_inode, e.message)
            if bad:
                self._packs = {n: p for n, p in self._packs.items() if n not in bad}
                self._order = tuple(p for p in self._order if p.name not in bad)
                self._recent = {}
                self.damaged = {**self.damaged, **bad}

    def packs(self) -> list[Pack]:
        """Every usable pack, its index checked whole (`check_indexes`)."""
        self.refresh()
        self.check_indexes()
        return list(self._packs.values())

    def damaged_indexes(self) -> list[str]:
        """The names of the packs whose index is damaged: set aside, or failing its checksum (each
        hashed once; a pack still serves the records it finds, but a flipped bit in an id would
        hide that object from the binary search)."""
        return sorted(self.damaged) + sorted(p.name for p in self._order if not p.index_sound())

    def set_aside(self) -> str | None:
        """What is wrong with the first pack that is set aside or whose index fails its checksum
        (a truncated .pack, a damaged .idx: it may hold an object not found), said for an error."""
        bad = self.damaged_indexes()
        if not bad:
            return None
        return f"pack {bad[0]} cannot be used ({self.damaged.get(bad[0]) or 'its index is damaged'})"

    def missing(self, oid: str) -> MvcError:
        """The error for `oid` found in no pack: CorruptObject when a pack's index is damaged (its
        records may hide the object), else ObjectMissing."""
        why = self.set_aside()
        if why:
            return CorruptObject(f"object {oid} is in no usable pack, and {why}: the object may be in that pack",
                                 "mvc fsck --repair-from REMOTE restores its objects from a remote or clone")
        return ObjectMissing(f"object {oid} is missing", "run mvc fsck")

    def pin(self, pack: Pack) -> None:
        """Read `pack`'s copy of every object it holds, never another pack's (a new pack's check)."""
        self._pinned, self._recent = pack, {}

    def _find(self, oid: str) -> tuple[Pack, pf.Record] | None:
        recent = self._recent  # (a refresh meanwhile replaces it: this search's hit goes into the old one)
        hit = recent.get(oid)
        if hit is None:
            hit = self._search(oid)
            if hit is not None:
                if len(recent) >= RECENT_LOOKUPS:
                    recent = self._recent = {}
                recent[oid] = hit
        return hit

    def _search(self, oid: str) -> tuple[Pack, pf.Record] | None:
        pinned = self._pinned
        if pinned is not None:
            r = pinned.find(oid)
            if r is not None:
                return pinned, r
        for pack in self._order:
            r = pack.find(oid)
            if r is not None:
                return pack, r
        return None

    def _copies(self, oid: str, but: Pack) -> list[tuple[Pack, pf.Record]]:
        """The other packs' records of `oid` (packs may overlap), newest first."""
        if self._pinned is not None:
            return []  # a new pack is checked alone: no falling back on an old pack's copy
        found = []
        for pack in self._order:
            r = pack.find(oid) if pack is not but else None
            if r is not None:
                found.append((pack, r))
        return found

    def lookup(self, oid: str, rescan: bool = True) -> tuple[Pack, pf.Record] | None:
        """(pack, record) of `oid`, or None; unless not `rescan`, a miss lists the packs again."""
        hit = self._find(oid)
        for _ in range(3 if rescan else 0):  # a repack may replace packs between our listing and our reads
            if hit is not None:
                break
            changed = self.refresh()
            hit = self._find(oid)  # read again even when unchanged: another thread may have
            if not changed:        # refreshed while this one waited for the lock
                break
        return hit

    def records(self) -> dict[str, tuple[Pack, pf.Record]]:
        """Every packed object: id -> (pack, record), the newest pack's where packs overlap."""
        where: dict[str, tuple[Pack, pf.Record]] = {}
        for pack in sorted(self.packs(), key=lambda p: -p.mtime):
            for oid, r in pack.records.items():
                where.setdefault(oid, (pack, r))
        return where

    # -- the ObjectStore contract ------------------------------------------------------------
    def has(self, oid):
        return self.lookup(oid) is not None

    def freshen(self, oid, older_than=0.0, size=None):
        """Whether a pack holds `oid`, looked up again when the pack it was listed in has gone (a
        repack), with a record that agrees with its entry (and with `size`, when given): a put
        that finds a damaged record writes a loose copy rather than count on it. A pack's time is
        left alone: renewing it would make every unreachable object in it look young, so its
        garbage would never age out; gc drops packed objects only under the writers lock, after
        checking that no commit or push reached them meanwhile."""
        hit = self.lookup(oid)
        if hit is not None and not os.path.exists(hit[0].path):
            self.refresh()
            hit = self._find(oid)
        if hit is None or not os.path.exists(hit[0].path):
            return False
        try:
            held = hit[0].checked_size(hit[1])
        except CorruptObject:
            return False
        return size is None or held == size

    def get(self, oid):
        return bytes(self._read(oid))

    def view(self, oid, verify=True, rehash=False):  # decoded objects are always verified
        return memoryview(self._read(oid))

    def put(self, *buffers, oid=None, progress=None, recheck=False):
        raise MvcError("the pack store is read-only", "objects are written loose and packed by mvc pack")

    def size(self, oid):
        hit = self.lookup(oid)
        if hit is None:
            raise self.missing(oid)
        return self._from_any_copy(oid, hit, lambda pack, r: pack.checked_size(r), lambda: self.size(oid))

    def _from_any_copy(self, oid: str, hit: tuple, read, again):
        """`read(pack, record)` of `hit`; when that copy is damaged, `again()` if a repack rewrote
        its pack under the same name meanwhile, else `read` of another pack's copy of `oid` (packs
        may overlap); the first CorruptObject when every copy is damaged."""
        try:
            return read(*hit)
        except CorruptObject as first:
            if self._reopen_if_replaced(hit[0]):
                return again()
            for pack, r in self._copies(oid, hit[0]):
                try:
                    return read(pack, r)
                except CorruptObject:
                    continue
            raise first

    def ids(self):
        seen = set()
        for pack in self.packs():
            for r in pack.ordered():
                if r.oid not in seen:
                    seen.add(r.oid)
                    yield r.oid

    def ids_with_prefix(self, prefix: str) -> list[str]:
        self.refresh()
        return sorted({o for pack in self._order for o in pack.ids_with_prefix(prefix)})

    def delete(self, oid):
        """Packed objects are removed by a repack (mvc gc), never one by one."""

    # -- decoding ----------------------------------------------------------------------------
    def _read(self, oid: str):
        """The object's verified bytes (a uint8 array or a bytearray) for the caller to keep."""
        cached = self.cache.get(oid)
        scan = self._scan
        if cached is None and scan is not None:
            cached = scan.get(oid)
        if cached is not None:  # handed out before: the first holder may have changed it
            data = cached.copy()
            if hash_bytes(data) == oid:
                return data
            self._forget_base(oid)
        return self._decoded(oid)[0]

    def _decoded(self, oid: str, chain: tuple = (), use_cache: bool = True):
        """(bytes, built on a cached base?, the caller's alone?) of one object, decoded from its
        pack and verified. Bytes that are the caller's alone (neither taken from nor put in the
        cache) may be decoded into by a delta on top of them: memory for one object, not two.

        A decoded object that serves as a base is cached *and* handed to the caller without a copy.
        The caller may change it, so a cached base is trusted only through the hash of what is
        decoded on top of it: on a mismatch the chain is decoded again from the pack alone.
        """
        if chain and use_cache:
            cached = self.cache.get(oid)
            if cached is not None:
                return cached, True, False
        hit = self.lookup(oid)
        if hit is None:
            raise self.missing(oid)
        return self._from_any_copy(oid, hit, lambda pack, r: self._decode_record(oid, pack, r, chain, use_cache),
                                   lambda: self._decoded(oid, chain, use_cache))

    def _reopen_if_replaced(self, pack: Pack) -> bool:
        """Whether the file under `pack`'s name is another one than we mapped (a repack from good
        copies writes a damaged pack again under its name: same checksum, same name); if so it is
        opened afresh."""
        try:
            if os.stat(pack.path).st_ino == pack.inode:
                return False
        except FileNotFoundError:
            return False
        with self._lock:
            if self._packs.get(pack.name) is pack:
                del self._packs[pack.name]
                self._names = None  # decoded objects cached from it were verified: they stay good
        self.refresh()
        return True

    def _base(self, oid: str, pack, r, chain: tuple, use_cache: bool):
        """(base bytes or None, built on a cached base?, the base ours to decode into?) that record
        `r` of `oid` decodes against."""
        where = f"object {oid} in {pack.name}.pack"
        if r.encoding != pf.XOR:
            return None, False, False
        if not r.base or r.base == oid or r.base in chain or len(chain) > MAX_CHAIN:
            raise CorruptObject(f"{where} has an invalid delta base", "run mvc fsck")
        if self.lookup(r.base) is None:
            raise CorruptObject(f"{where} is a delta against {r.base}, which is in no pack",
                                "run mvc fsck; a pack file may have been deleted by hand")
        scan = self._scan
        if scan is not None and use_cache:
            kept = scan.get(r.base)
            if kept is not None:
                return kept, True, False
        try:
            return self._decoded(r.base, chain + (oid,), use_cache)
        except CorruptObject as e:
            raise CorruptObject(f"{where} cannot be read: its delta base is damaged: {e.message}",
                                e.hint) from None

    def _decode_record(self, oid: str, pack, r, chain: tuple, use_cache: bool):
        where = f"object {oid} in {pack.name}.pack"
        base, tainted, owned = self._base(oid, pack, r, chain, use_cache)
        arr = pf_decode(pack.entry(r), r.encoding, r.size, base, where, into_base=owned)
        del base
        got = hash_bytes(arr)
        if got != oid:
            if tainted:  # a cached base was changed by whoever holds it: decode from the pack alone
                self._forget_base(r.base)
                return self._decode_record(oid, pack, r, chain, use_cache=False)
            raise _decodes_wrong(where, got)
        scan = self._scan
        if scan is not None and r.encoding == pf.XOR:
            scan.used(r.base)
        kept = use_cache and scan is not None and scan.keep(oid, arr)
        shared = kept or (use_cache and hasattr(arr, "nbytes") and self._is_base(oid) and self.cache.put(oid, arr))
        return arr, tainted, not shared

    def _forget_base(self, base: str) -> None:
        self.cache.discard(base)
        scan = self._scan
        if scan is not None:
            scan.drop(base)

    def _is_base(self, oid: str) -> bool:
        """Whether a delta in some pack may decode against `oid` (then it is worth caching)."""
        for pack in self._order:
            if pack.is_base(oid):
                return True
        return False

    def streams(self, oid):
        from .pack_codec import STREAM_BYTES
        hit = self.lookup(oid)
        return hit is not None and hit[1].size >= STREAM_BYTES

    def pieces(self, oid):
        """A large object decoded a batch of chunks at a time (see pack_codec.decode_pieces) and
        hashed as it passes; CorruptObject after the last batch when it is not `oid`. Its delta
        base is decoded afresh, not taken from the cache (a holder may have changed a cached base,
        and what was handed out cannot be taken back to decode again). A small one: its view."""
        from .pack_codec import STREAM_BYTES, decode_pieces
        hit = self.lookup(oid)
        if hit is None or hit[1].size < STREAM_BYTES:
            yield self.view(oid)  # (which says it is missing, if it is)
            return
        pack, r = hit
        where = f"object {oid} in {pack.name}.pack"
        base, _tainted, _owned = self._base(oid, pack, r, (), use_cache=False)
        hasher = new_hasher()
        for piece in decode_pieces(pack.entry(r), r.encoding, r.size, base, where):
            hasher.update(piece)
            yield piece
        got = hasher.hexdigest()
        if got != oid:
            raise _decodes_wrong(where, got)

    def check(self, oid: str, use_cache: bool = True) -> bytes:
        """Verify that `oid` decodes to its id (CorruptObject names the damage) and return its first
        bytes: a large object is hashed a batch of chunks at a time, never held whole (a blob's
        safetensors header, as stored before its chunks); a small one is read whole."""
        from .pack_codec import STREAM_BYTES, decode_hash
        hit = self.lookup(oid)
        if hit is None:
            raise self.missing(oid)
        pack, r = hit
        scan = self._scan
        if r.size < STREAM_BYTES or (use_cache and scan is not None and scan.wants(oid)):
            return bytes(memoryview(self._read(oid))[:HEAD_BYTES])  # (a base the scan needs: decoded whole)
        where = f"object {oid} in {pack.name}.pack"
        base, tainted, _owned = self._base(oid, pack, r, (), use_cache)
        entry = pack.entry(r)
        got = decode_hash(entry, r.encoding, r.size, base, where)
        if got != oid:
            if tainted:
                self._forget_base(r.base)
                return self.check(oid, use_cache=False)
            raise _decodes_wrong(where, got)
        if scan is not None and r.encoding == pf.XOR:
            scan.used(r.base)
        if r.encoding == pf.RAW:
            return bytes(entry[:HEAD_BYTES])
        h = pf.decode_entry_header(entry, r.size, where)
        return bytes(entry[pf.ENTRY_HEADER.size: pf.ENTRY_HEADER.size + min(h.prefix_len, HEAD_BYTES)])

    def verify(self, progress=None) -> list[dict]:
        """Problems of the packs themselves (indexes that cannot be used, pack checksums)."""
        self.refresh()
        self.check_indexes()
        problems = [{"id": f"{name}.idx", "problem": why} for name, why in sorted(self.damaged.items())]
        for pack in sorted(self._packs.values(), key=lambda p: p.name):
            if not pack.verify_checksum():
                problems.append({"id": f"{pack.name}.pack",
                                 "problem": f"pack file is corrupt: its checksum does not match "
                                            f"({pack.count} objects in it)"})
            if progress:
                progress(pack.file_size)
        return problems


def _decodes_wrong(where: str, got: str) -> CorruptObject:
    return CorruptObject(f"{where} is corrupt: it decodes to content hashing to {got[:12]}",
                         "run mvc fsck; mvc fsck --repair-from REMOTE restores it from a remote or clone that has it")


def pf_decode(entry, encoding, size, base, where, into_base=False):
    """Decode one entry. Small plain entries (commits, trees, headers) are decoded without numpy,
    so commands that only read metadata start fast; the rest go to pack_codec (`into_base`: an
    XOR delta may be decoded into its base's buffer)."""
    if encoding == pf.RAW or (encoding == pf.ZSTD and size <= SIMPLE_DECODE_MAX):
        return _decode_simple(entry, encoding, size, where)
    from .pack_codec import decode
    return decode(entry, encoding, size, base, where, into_base)


def _decode_simple(entry, encoding, size, where) -> bytearray:
    entry = memoryview(entry)
    if encoding == pf.RAW:
        if len(entry) != size:
            raise CorruptObject(f"{where} is corrupt: raw entry of {len(entry)} bytes for a {size}-byte object",
                                "run mvc fsck")
        return bytearray(entry)
    import zstandard
    h = pf.decode_entry_header(entry, size, where)
    if h.itemsize != 1:
        raise CorruptObject(f"{where} is corrupt: a zstd entry with {h.itemsize}-byte elements", "run mvc fsck")
    start = pf.ENTRY_HEADER.size
    out = bytearray(entry[start: start + h.prefix_len])
    lengths = struct.unpack_from(f"<{h.chunks}I", entry, start + h.prefix_len)
    pos = h.body_offset
    dctx = zstandard.ZstdDecompressor()
    for c, n in enumerate(lengths):
        m = min(h.chunk_elems, size - h.prefix_len - c * h.chunk_elems)
        ln = n & ~pf.RAW_FLAG
        frame = entry[pos: pos + ln]
        pos += ln
        try:
            if n & pf.RAW_FLAG:
                chunk = frame
            elif zstandard.frame_content_size(frame) != m:
                raise zstandard.ZstdError("frame size does not match")
            else:
                chunk = dctx.decompress(frame)
        except zstandard.ZstdError as err:
            raise CorruptObject(f"{where} is corrupt: chunk {c} does not decompress: {err}", "run mvc fsck") from None
        if len(chunk) != m:
            raise CorruptObject(f"{where} is corrupt: chunk {c} has the wrong size", "run mvc fsck")
        out += chunk
    if pos != len(entry):
        raise CorruptObject(f"{where} is corrupt: its chunk table does not match the entry length", "run mvc fsck")
    return out


def pack_store_of(store) -> PackStore | None:
    """The PackStore inside a ChainStore (or the store itself)."""
    if isinstance(store, PackStore):
        return store
    for s in getattr(store, "stores", ()):
        if isinstance(s, PackStore):
            return s
    return None

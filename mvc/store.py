"""Object stores: write-once, verified-on-read storage of objects by BLAKE3 id.

`LooseStore` keeps one file per object at objects/<2 hex>/<62 hex> (b3sum of the file equals its
name); `MemoryStore` keeps them in a dict (tests, scratch work); `ChainStore` reads through a list
of stores and writes to the first (pack files and lazily fetched remotes plug in here).
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import mmap
import os
import stat
import sys
import threading
import time
import weakref
from typing import Iterator

from . import forks
from .errors import ChangedWhileStored, CorruptObject, MvcError, ObjectMissing
from .interrupts import interrupts_deferred
from .objects import hash_bytes, is_oid, new_hasher
from .transfer import BATCHED_BELOW, batches

try:  # (imported now: importing it once the open-file limit is reached needs a descriptor itself)
    import resource
except ImportError:  # (no descriptor limits to keep to: Windows)
    resource = None

WRITE_CHUNK = 1 << 26  # bytes per write() call (the kernel caps one call near 2 GiB anyway)
WRITE_CHUNK_MIN = 1 << 16  # smaller buffers go through the file object's buffer
WRITEBACK_MIN_BYTES = 1 << 20  # objects this large start their disk writes early (start_writeback)
RECHECK_PIECE = 1 << 20  # a put with recheck copies, hashes and writes this much at a time


HUGE_READ_BYTES = 2 << 20  # blobs this large are mapped with MADV_HUGEPAGE
VIEW_MAP_MIN = 64 << 10  # smaller objects are read into memory (they read faster than they map)
VIEW_MAP_ALWAYS = 1 << 20  # objects this large are always mapped; smaller ones only while descriptors are plenty
VIEW_MAP_FDS_MAX = 16384  # a live map holds a file descriptor (and a kernel map: at most ~65,000 a process)
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _ask_large_folios(mm: mmap.mmap) -> None:
    """Ask the kernel to read a mapped blob from disk into large page-cache folios (Linux THP;
    a no-op where there is none): each folio is then mapped in one fault (`load_rate` in
    benchmarks/bench_store.py: ~55 faults for 88 MB read from disk, against ~1345 for load_file)."""
    if _MADV_HUGEPAGE is not None:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(_MADV_HUGEPAGE)


def _read_small(fd: int, size: int) -> bytearray:
    """The whole of a small file as a writable buffer (what a private map would give)."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break  # shorter than its stat: verification reports it
        got += n
    view.release()
    del buf[got:]
    return buf


def raise_open_files_limit() -> bool:
    """Raise this process's soft limit on open files to its hard limit (each live map of a large
    blob holds a descriptor: a component of many large tensors needs one per tensor). False when
    there is nothing to raise."""
    if resource is None:
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return False
    return True


_MID_MAPS: set = set()  # weak references to this process's live maps of blobs under VIEW_MAP_ALWAYS


def _map_mid(fd: int):
    """A private map of a blob under VIEW_MAP_ALWAYS bytes, or None (read it instead) when the
    process holds half of its open-files limit (or VIEW_MAP_FDS_MAX) or mvc's own such maps a
    quarter: each live map holds a descriptor, and the rest are left to large blobs and to the
    program itself. `fd`, just opened, is the lowest descriptor that was free, which says how many
    are held at least (below it, all are); the program's may lie above holes, which the count of
    mvc's maps bounds."""
    soft = -1 if resource is None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = VIEW_MAP_FDS_MAX if soft < 0 else min(soft // 2, VIEW_MAP_FDS_MAX)  # (RLIM_INFINITY is -1)
    if len(_MID_MAPS) >= budget // 2 or fd >= budget:
        return None
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):  # descriptors or kernel maps run out
            return None
        raise
    _MID_MAPS.add(weakref.ref(mm, _MID_MAPS.discard))
    return mm


def _too_many_open_files() -> MvcError:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource is not None else "?"
    return MvcError(f"too many open files, of the {soft} this process may open: every blob of "
                    f"{VIEW_MAP_ALWAYS >> 20} MiB or more that is loaded stays mapped, holding one while its "
                    "tensor lives", "raise the limit with ulimit -n, or load fewer tensors at once "
                    "with repo.load(..., keys=[...])")


@contextlib.contextmanager
def _named(path):
    """An OSError of the writes within, which name no file (os.write, flush, fsync: a full disk, an
    I/O error), is said with `path`, the file written; errors of anything else carry their own."""
    try:
        yield
    except OSError as e:
        if e.filename is None and isinstance(path, str):
            e.filename = path
        raise


def _write_buffer(f, b, progress=None, hasher=None) -> int:
    """Write all of the bytes-like `b` (or FileSpan) to the file object `f` in large write() calls;
    returns the count. `progress(n)`, when given, hears of each call's bytes as they are written.
    With a `hasher` (or a FileSpan), each piece is copied aside, hashed and written from the copy
    (see ObjectStore.put's `recheck`).

    Large writes matter for reads, not only for the write: the page cache keeps what one call
    writes in large folios, and a later mmap of the blob maps each folio in one page fault.
    Blobs copied with copy_file_range (as `cp` does) were cached in 64 KiB folios: one fault per
    64 KiB when a loaded component is read, ~10x the faults of safetensors' load_file on a file
    written in one piece (`load_rate` in benchmarks/bench_store.py prints both counts)."""
    if isinstance(b, FileSpan):
        return _write_copies(f, len(b), b.fill, progress, hasher)
    with memoryview(b) as m, m.cast("B") as view:
        if hasher is not None:
            return _write_copies(f, len(view), _copier(view), progress, hasher)
        if len(view) < WRITE_CHUNK_MIN:
            with _named(f.name):
                f.write(view)
            if progress:
                progress(len(view))
            return len(view)
        with _named(f.name):
            f.flush()
        fd, done, n = f.fileno(), 0, len(view)
        while done < n:
            with view[done:done + WRITE_CHUNK] as piece, _named(f.name):
                wrote = os.write(fd, piece)
            done += wrote
            if progress:
                progress(wrote)
        return n


def _write_copies(f, n: int, fill, progress, hasher) -> int:
    """_write_buffer for bytes that may change meanwhile: `fill(piece, lo)` copies bytes
    [lo, lo + len(piece)) into private memory, which is hashed and written: what is hashed is what
    is written."""
    if n < WRITE_CHUNK_MIN:  # (through the file object's buffer, as _write_buffer writes small ones)
        piece = bytearray(n)
        fill(memoryview(piece), 0)
        if hasher is not None:
            hasher.update(piece)
        with _named(f.name):
            f.write(piece)
        if progress:
            progress(n)
        return n
    with _named(f.name):
        f.flush()
    fd = f.fileno()
    with memoryview(bytearray(min(n, RECHECK_PIECE))) as scratch:
        for lo in range(0, n, RECHECK_PIECE):
            k = min(RECHECK_PIECE, n - lo)
            with scratch[:k] as piece:
                fill(piece, lo)
                if hasher is not None:
                    hasher.update(piece)
                done = 0
                while done < k:
                    with piece[done:] as rest, _named(f.name):  # (fill's reads of a source are not this)
                        done += os.write(fd, rest)
            if progress:
                progress(k)
    return n


def _copier(view):
    """`fill` for _write_copies over memory."""
    def fill(piece, lo: int) -> None:
        piece[:] = view[lo:lo + len(piece)]
    return fill


class FileSpan:
    """`size` bytes of an open file from offset `at`, as a buffer for `ObjectStore.put` (given
    its `oid`: put does not hash a FileSpan to find one): read piece by piece with
    `read(piece, offset)` (e.g. pread) into private memory and written from there, never through
    a mapping of the file (a read past the end of a mapping whose file another program truncated
    kills the process). With `recheck` each piece is hashed as written, so the object holds what
    was hashed even while another program writes the file: writes through a shared mapping into
    pages already dirty move no file time, so no stat check sees them."""

    def __init__(self, read, at: int, size: int):
        self.read, self.at, self.size = read, at, size

    def __len__(self) -> int:
        return self.size

    def fill(self, piece, lo: int) -> None:
        self.read(piece, self.at + lo)

    def __bytes__(self) -> bytes:
        buf = bytearray(self.size)
        self.fill(memoryview(buf), 0)
        return bytes(buf)


def _nbytes(buffers) -> int:
    return sum(len(b) if isinstance(b, FileSpan) else memoryview(b).nbytes for b in buffers)


def _report_all(progress, buffers) -> None:
    """Tell `progress` of the whole object at once (a store that found it held, or keeps it in memory)."""
    if progress:
        progress(_nbytes(buffers))


class ObjectStore:
    """The contract every store keeps. Reads always verify the returned bytes."""

    def has(self, oid: str) -> bool:
        raise NotImplementedError

    def freshen(self, oid: str, older_than: float = 0.0, size: int | None = None) -> bool:
        """Whether the store holds `oid`; a loose file holding it gets its modification time set
        to now when older than `older_than` seconds, so that a gc, which deletes unreachable loose
        objects older than its grace period, keeps it until whoever found it (a commit, a push)
        has made a ref point at it. Packs are not touched (see PackStore.freshen). A loose file
        of another `size` than the object's (cut short by a crash or a bad disk) does not hold it."""
        return self.has(oid)

    def get(self, oid: str) -> bytes:
        """The object's bytes, verified against its id."""
        raise NotImplementedError

    def view(self, oid: str, verify: bool = True, rehash: bool = False):
        """A verified buffer of the object (zero-copy where the store can map it). `verify=False`
        lets a store that maps its objects as they are (loose files) skip the check; stores that
        decode (packs, remotes) always verify. A loose store with stamps may check a file by its
        stamp instead of re-hashing it (see LooseStore); `rehash=True` always re-hashes."""
        return self.get(oid)

    def pieces(self, oid: str):
        """The object's bytes in order, as one or more buffers. A store that decodes objects (a
        pack) hands a large one out a batch at a time, each buffer good until the next is asked
        for, and raises CorruptObject after the last when they do not hash to `oid`: a reader
        acts on them once the iteration has ended (a checkout renames its temp file then).
        Others hand out the verified view."""
        yield self.view(oid)

    def streams(self, oid: str) -> bool:
        """Whether `pieces(oid)` decodes the object a batch at a time (see PackStore)."""
        return False

    def put(self, *buffers, oid: str | None = None, progress=None, recheck: bool = False) -> str:
        """Store the concatenation of `buffers`; returns its id. Idempotent. `progress(n)`, when
        given, hears of the object's bytes as they are written, all at once when the store already
        held the object: the counts always add up to the object's size. A buffer may be a FileSpan
        (bytes of a file, read as they are written). `recheck`: the buffers may change meanwhile
        (a tensor another thread writes, a file another program writes), so the bytes are hashed
        again as they are written and ChangedWhileStored is raised, nothing stored, when they are
        not `oid`'s."""
        raise NotImplementedError

    fetches = False  # True for stores that bring objects from far away (see prefetch)

    def prefetch(self, ids) -> None:
        """A hint that `ids` are about to be read. A store that fetches objects from far away (a
        lazy clone's remote) fetches the ones it lacks now, in parallel; the others do nothing."""

    def size(self, oid: str) -> int:
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        raise NotImplementedError

    def delete(self, oid: str) -> None:
        raise NotImplementedError


def _changed(oid: str) -> ChangedWhileStored:
    return ChangedWhileStored(f"the bytes of object {oid[:12]} changed while they were stored: nothing was stored",
                              "is another thread writing that memory? store a copy")


def _not_a_file(oid: str, path: str) -> CorruptObject:
    return CorruptObject(f"object {oid} is damaged: {path} is not a regular file",
                         "move it aside; mvc fsck --repair-from REMOTE restores the object from a remote or clone")


def _verify(oid: str, data, where: str) -> None:
    got = hash_bytes(data)
    if got != oid:
        raise CorruptObject(f"object {oid} is corrupt: its content hashes to {got[:12]}, in {where}",
                            "run mvc fsck; mvc fsck --repair-from REMOTE restores it from a remote or clone that has it")


class MemoryStore(ObjectStore):
    def __init__(self):
        self._objects: dict[str, bytes] = {}

    def has(self, oid):
        return oid in self._objects

    def get(self, oid):
        try:
            data = self._objects[oid]
        except KeyError:
            raise ObjectMissing(f"object {oid} is missing") from None
        _verify(oid, data, "memory store")
        return data

    def put(self, *buffers, oid=None, progress=None, recheck=False):
        data = b"".join(bytes(b) for b in buffers)
        if recheck and oid and hash_bytes(data) != oid:
            raise _changed(oid)
        oid = oid or hash_bytes(data)
        self._objects.setdefault(oid, data)
        _report_all(progress, buffers)
        return oid

    def size(self, oid):
        if oid not in self._objects:
            raise ObjectMissing(f"object {oid} is missing")
        return len(self._objects[oid])

    def ids(self):
        return iter(list(self._objects))

    def delete(self, oid):
        self._objects.pop(oid, None)


_BATCH: contextvars.ContextVar = contextvars.ContextVar("mvc_loose_batch", default=None)  # (store, pending)


class LooseStore(ObjectStore):
    """One file per object under `root`; atomic (temp + fsync + rename) and write-once.

    Verified stamps (when `stamps` names a folder): after `view` has re-hashed an object file it
    records the file's size, modification and change times, inode and device in
    `stamps/<2 hex>/<62 hex>`. A later `view` whose file still has exactly that stamp trusts the
    earlier hash instead of re-hashing (as git trusts its index for unchanged work-tree files):
    any write, truncation, chmod, touch or replacement through the file system changes the change
    time, which no program can set back. Objects under STAMP_MIN_BYTES get no stamp file (they
    re-hash faster than one is read); the store remembers the stamps it has read or made, of any
    size, for the life of the process. Files changed less than STAMP_SETTLE_NS before the hash
    are not stamped, so a later change within one tick of a coarse file-system clock cannot hide
    behind an equal time. Damage below the file system (a bad disk) needs a re-hash: `mvc fsck`
    and `rehash=True` always re-hash.
    """

    def __init__(self, root: str, fsync: bool = True, stamps: str | None = None):
        self.root = root
        self.fsync = fsync
        self.stamps = stamps
        self.tmp = os.path.join(root, "tmp")
        self._claim = threading.RLock()  # threads of one commit may put the same new id at once (reentrant:
        # a signal handler's commit may run while this thread holds it)
        self._known: dict[str, tuple] = {}  # id -> verified stamp (_stamp_key) already read or written here
        forks.track(self)

    def _after_fork(self) -> None:  # (see mvc.forks)
        self._claim = threading.Lock()

    @contextlib.contextmanager
    def batch(self, keep_whole: bool = False):
        """Objects written inside the block stay in temp files until it ends; then they are fsynced
        in parallel and renamed into place, so a crash never leaves a partial object under its id.
        Nothing may point at them (refs) before the block has exited. The kernel starts writing
        each large file to disk as soon as it is complete (`start_writeback`), so the fsyncs at the
        end mostly find the work done: a durable commit overlaps its disk writes with its copying.
        A batch of SYNCFS_MIN_OBJECTS or more (a model of many small tensors) is made durable by one
        `syncfs` before the renames and one after, instead of an fsync per file and directory.
        The batch belongs to the calling context (a ContextVar): worker threads join it by running
        in a copy of that context (`contextvars.copy_context().run`, as components does); other
        threads, e.g. another commit through the same Repo object, never do. With `keep_whole`, an
        error (not an interrupt) raised in the block still makes the objects already written whole
        durable, for a transfer run again to resume from.
        """
        if self._pending is not None:
            yield self
            return
        pending: dict[str, str | None] = {}  # id -> temp file (None while a thread still writes it)
        # opened before any write: syncfs through it reports every failed write since (errseq)
        watch = _open_fs_watch(self.tmp, create=True) if self.fsync else None
        token = _BATCH.set((self, pending))
        try:
            try:
                yield self
            except Exception:
                if keep_whole:
                    self._flush({oid: tmp for oid, tmp in pending.items() if tmp}, watch)
                raise
            self._flush(pending, watch)
        except BaseException:
            with interrupts_deferred():  # a second Ctrl-C must not leave temp files behind
                for tmp in list(pending.values()):
                    try:
                        if tmp:
                            os.unlink(tmp)
                    except OSError:
                        pass
            raise
        finally:
            _BATCH.reset(token)
            if watch is not None:
                os.close(watch)

    @property
    def _pending(self) -> dict[str, str | None] | None:
        """The pending objects of this context's batch on this store, or None outside one."""
        current = _BATCH.get()
        return current[1] if current is not None and current[0] is self else None

    def batch_slots(self) -> dict[str, str | None] | None:
        """This context's batch as {id: temp file}, for worker threads that write verified temp
        files of their own (a fetch): an entry added is renamed into place, made durable with the
        others, when the batch ends. None outside a batch."""
        return self._pending

    def receive_in_batches(self, ids: list[str], sizes: dict[str, int], receive, parallel_map) -> None:
        """`receive(id, slots)` for each of `ids` through `parallel_map`: those of BATCHED_BELOW
        bytes or more (by `sizes`) with slots None, each durable on its own; the smaller ones into
        the slots of batches (transfer.batches) made durable together, keeping what arrived whole
        when one fails. A kill loses at most the batch being written."""
        list(parallel_map(lambda oid: receive(oid, None), [o for o in ids if sizes[o] >= BATCHED_BELOW]))
        for run in batches([o for o in ids if sizes[o] < BATCHED_BELOW], sizes):
            with self.batch(keep_whole=True):
                slots = self.batch_slots()
                list(parallel_map(lambda oid: receive(oid, slots), run))

    def _flush(self, pending: dict[str, str], watch: int | None = None) -> None:
        try:
            self._flush_pending(pending, watch)
        except FileNotFoundError as e:
            raise MvcError(f"a temporary file of this write disappeared ({e.filename}): another program "
                           "deleted it", "no ref moved; run the command again") from None

    def _flush_pending(self, pending: dict[str, str], watch: int | None) -> None:
        if not pending:
            return
        from concurrent.futures import ThreadPoolExecutor  # only when there is something to sync
        workers = min(16, len(pending))
        whole_fs = (self.fsync and watch is not None and len(pending) >= SYNCFS_MIN_OBJECTS
                    and syncfs(self.tmp, watch))
        if self.fsync and not whole_fs:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_fsync_path, pending.values()))
        made = set()
        for oid, tmp in pending.items():
            if oid[:2] not in made:
                os.makedirs(os.path.dirname(self.path(oid)), exist_ok=True)
                made.add(oid[:2])
            os.replace(tmp, self.path(oid))
        if whole_fs and syncfs(self.tmp, watch):
            return
        if self.fsync:
            dirs = sorted({os.path.dirname(self.path(oid)) for oid in pending})
            with ThreadPoolExecutor(max_workers=min(16, len(dirs))) as pool:
                list(pool.map(fsync_dir, dirs))

    def path(self, oid: str) -> str:
        if not is_oid(oid):  # ids come from objects a remote sent too: never a path of their choosing
            raise CorruptObject(f"{str(oid)[:70]!r} is not an object id (64 lowercase hex)")
        return f"{self.root}{os.sep}{oid[:2]}{os.sep}{oid[2:]}"

    def has(self, oid):
        return is_oid(oid) and (os.path.exists(self.path(oid)) or (self._pending is not None and oid in self._pending))

    def freshen(self, oid, older_than=0.0, size=None):
        return (self._whole(oid, size) and freshen_file(self.path(oid), older_than)) or \
            (self._pending is not None and oid in self._pending)

    def _whole(self, oid: str, size: int | None) -> bool:
        """False when the object's file is there with another size than `size`, or, with `size`
        (a put holding the object's bytes, which can write it anew), when it does not hash to its
        id: checked by its verified stamp, else re-hashed (and stamped), so a commit of a tensor
        whose stored copy was damaged stores it again instead of naming the damaged copy.
        CorruptObject when its path is no regular file, which a put cannot replace."""
        st = self._file_stat(oid)
        if st is None or size is None:
            return True  # (absent: nothing to tell)
        return st.st_size == size and self._sound(oid, st)

    def intact(self, oid: str) -> bool:
        """Whether the object's file (there: see `has`) hashes to its id: by its verified stamp,
        else re-hashed (and stamped). False when it is gone."""
        st = self._file_stat(oid)
        return st is not None and self._sound(oid, st)

    def _file_stat(self, oid: str) -> os.stat_result | None:
        """The stat of the object's file; None when there is none, CorruptObject when its path is
        no regular file."""
        try:
            st = os.stat(self.path(oid))
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(oid, self.path(oid))
        return st

    def _sound(self, oid: str, st: os.stat_result) -> bool:
        if self._stamped(oid, st):
            return True
        try:
            self.view(oid)
        except (CorruptObject, ObjectMissing):
            return False
        return True

    def _open(self, oid) -> tuple[int, os.stat_result]:
        """(descriptor, its stat) of the object's file (or of its pending temp file in a batch)."""
        if self._pending and self._pending.get(oid):
            fd = os.open(self._pending[oid], os.O_RDONLY)
            return fd, os.fstat(fd)
        try:
            fd = os.open(self.path(oid), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectMissing(f"object {oid} is missing", "run mvc fsck") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a directory (a botched restore), a pipe
            os.close(fd)
            raise _not_a_file(oid, self.path(oid))
        return fd, st

    def get(self, oid):
        with open(self._open(oid)[0], "rb") as f:
            data = f.read()
        _verify(oid, data, self.path(oid))
        return data

    def view(self, oid, verify=True, rehash=False):
        try:
            return self._view(oid, verify, rehash)
        except OSError as e:
            if e.errno != errno.EMFILE:
                raise
            if not raise_open_files_limit():
                raise _too_many_open_files() from None
        try:
            return self._view(oid, verify, rehash)
        except OSError as e:
            if e.errno != errno.EMFILE:
                raise
            raise _too_many_open_files() from None

    def _view(self, oid, verify, rehash):
        fd, st = self._open(oid)
        try:
            if st.st_size >= VIEW_MAP_ALWAYS:
                data = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            elif st.st_size < VIEW_MAP_MIN or (data := _map_mid(fd)) is None:
                data = _read_small(fd, st.st_size)
            if st.st_size >= HUGE_READ_BYTES:
                _ask_large_folios(data)
            if verify and (rehash or not self._stamped(oid, st)):
                hashed_at = time.time_ns()
                _verify(oid, data, self.path(oid))
                self._stamp(oid, st, os.fstat(fd), hashed_at)
        finally:
            os.close(fd)
        return data

    # -- verified stamps ---------------------------------------------------------------------------
    def _stamp_path(self, oid: str) -> str:
        return os.path.join(self.stamps, oid[:2], oid[2:])

    def _stamped(self, oid: str, st: os.stat_result) -> bool:
        if not self.stamps:
            return False
        stamp = _stamp_key(st)
        if self._known.get(oid) == stamp:  # verified earlier by this process
            return True
        if st.st_size < STAMP_MIN_BYTES:
            return False
        try:
            with open(self._stamp_path(oid), "rb") as f:
                if f.read(200) != _stamp_bytes(stamp):
                    return False
        except OSError:
            return False
        self._known[oid] = stamp
        return True

    def _stamp(self, oid: str, before: os.stat_result, after: os.stat_result, hashed_at: int) -> None:
        """Record that the file, as `before` describes it, hashed to its id (best effort)."""
        stamp = _stamp_key(before)
        if (not self.stamps
                or stamp != _stamp_key(after)  # changed while it was hashed
                or hashed_at - before.st_ctime_ns < STAMP_SETTLE_NS):
            return
        if len(self._known) >= KNOWN_STAMPS_MAX:
            self._known.clear()
        self._known[oid] = stamp
        if before.st_size < STAMP_MIN_BYTES:  # remembered by this process only
            return
        path = self._stamp_path(oid)
        tmp = f"{path}.{os.urandom(6).hex()}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(_stamp_bytes(stamp))
            os.replace(tmp, path)  # readers see the old stamp or the new one, never half of one
        except OSError:  # a read-only repository or a full disk: the next read re-hashes
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def put(self, *buffers, oid=None, progress=None, recheck=False):
        oid = oid or hash_bytes(*buffers)
        final = self.path(oid)
        pending = self._pending
        deferred = pending is not None  # batch(): fsync + rename happen at its end
        with self._claim:
            if (deferred and oid in pending) or (os.path.exists(final) and self._whole(oid, _nbytes(buffers))):
                _report_all(progress, buffers)
                return oid  # (a file of another size, cut short, is written anew and renamed over)
            if deferred:
                pending[oid] = None  # claimed: another thread putting the same id returns here
        try:
            with new_object_file(self.tmp, oid, None if deferred else final,
                                 self.fsync and not deferred) as f:
                size, hasher = 0, new_hasher(False) if recheck else None
                for b in buffers:
                    size += _write_buffer(f, b, progress, hasher)
                if hasher is not None and hasher.hexdigest() != oid:
                    raise _changed(oid)
                if deferred and self.fsync and size >= WRITEBACK_MIN_BYTES:
                    f.flush()
                    start_writeback(f.fileno())
        except BaseException:
            if deferred:
                pending.pop(oid, None)
            raise
        if deferred:
            pending[oid] = f.name
            return oid
        if self.fsync:
            fsync_dir(os.path.dirname(final))
        return oid

    def size(self, oid):
        try:
            if self._pending and self._pending.get(oid):
                return os.stat(self._pending[oid]).st_size
            return os.stat(self.path(oid)).st_size
        except FileNotFoundError:
            raise ObjectMissing(f"object {oid} is missing") from None

    def mtime(self, oid) -> float:
        return os.stat(self.path(oid)).st_mtime

    def ids(self):
        if not os.path.isdir(self.root):
            return
        with os.scandir(self.root) as listing:  # (file types from the listing: no stat per folder)
            folders = sorted(e.name for e in listing if len(e.name) == 2 and e.is_dir())  # (a stray file "zz")
        for d in folders:
            try:
                names = os.listdir(os.path.join(self.root, d))
            except FileNotFoundError:  # (removed meanwhile)
                continue
            for name in sorted(names):
                if is_oid(d + name):
                    yield d + name

    def delete(self, oid):
        self._known.pop(oid, None)
        for path in (self.path(oid), self._stamp_path(oid) if self.stamps else None):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _stamp_files(self) -> Iterator[tuple[str, str]]:
        """(path, name) of every file in the stamp folder: stamps are named like objects; other
        names are temp files of stamp writes that did not finish."""
        if not self.stamps or not os.path.isdir(self.stamps):
            return
        for d in sorted(os.listdir(self.stamps)):
            sub = os.path.join(self.stamps, d)
            if len(d) == 2 and os.path.isdir(sub):
                for name in sorted(os.listdir(sub)):
                    yield os.path.join(sub, name), d + name

    def stamp_usage(self) -> dict:
        """How many verified stamps there are and what they take on disk (allocated blocks)."""
        count = disk = 0
        for path, _name in self._stamp_files():
            with contextlib.suppress(FileNotFoundError):
                disk += os.stat(path).st_blocks * 512
                count += 1
        return {"stamps": count, "stamp_bytes": disk}

    def prune_stamps(self, dry_run: bool = False, grace_s: float = 60.0) -> int:
        """Remove stamps whose object file is gone (a read that stamped an object while another
        process deleted it) and temp files of unfinished stamp writes older than `grace_s`."""
        removed, now = 0, time.time()
        for path, name in self._stamp_files():
            if is_oid(name):
                stale = not os.path.exists(self.path(name))
            else:
                try:
                    stale = now - os.stat(path).st_mtime >= grace_s
                except FileNotFoundError:
                    continue
            if stale:
                removed += 1
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        return removed


STAMP_SETTLE_NS = 2_000_000_000  # coarse file-system clocks tick at most every 2 s (FAT); ext4 ~4 ms
STAMP_MIN_BYTES = 1 << 20  # smaller objects re-hash faster than a stamp file is written and read (kept in memory only)
KNOWN_STAMPS_MAX = 1 << 17  # stamps one process remembers (about 20 MB at most)


def _stamp_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What a verified stamp records of a file: size, modification and change times, inode, device."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _stamp_bytes(key: tuple) -> bytes:
    """A stamp as its file holds it."""
    return " ".join(map(str, key)).encode()


class ChainStore(ObjectStore):
    """Reads through `stores` in order; writes go to the first one."""

    def __init__(self, *stores: ObjectStore):
        self.stores = list(stores)

    @property
    def primary(self) -> ObjectStore:
        return self.stores[0]

    def _read(self, oid, how: str, **kw):
        """Read through the stores in order; an object that moves between stores while we look
        (a loose object packed by a concurrent `mvc pack`) is found in the next one, and so is an
        object whose first copy is damaged (CorruptObject only when no copy verifies; fsck still
        names the damaged one)."""
        why = None  # the reason given by a store that should have had it (a lazy clone's remote)
        refused: set[int] = set()  # stores other than the first that said it is missing, and why
        damaged: dict[int, CorruptObject] = {}  # a damaged copy: another store's good one still serves
        for i, s in enumerate(self.stores):
            if i == 0 or s.has(oid):  # the first (loose) store answers a miss as cheaply as has()
                try:
                    return getattr(s, how)(oid, **kw)
                except ObjectMissing as e:
                    if i:
                        why = e
                        refused.add(i)
                    continue
                except CorruptObject as e:
                    damaged[i] = e
                    continue
        for i, s in enumerate(self.stores):  # it may have moved behind us (packed meanwhile): one more pass
            if i in damaged or i in refused:
                continue  # asked already, and it said why not
            try:
                return getattr(s, how)(oid, **kw)
            except ObjectMissing:
                continue
            except CorruptObject as e:
                damaged[i] = e
        if damaged:
            raise next(iter(damaged.values()))
        raise why or ObjectMissing(f"object {oid} is missing", "run mvc fsck")

    def has(self, oid):
        return any(s.has(oid) for s in self.stores)

    def prefetch(self, ids):
        """Pass the ids no earlier store holds to the stores that fetch (none in most repositories)."""
        if not any(s.fetches for s in self.stores):
            return
        todo = list(dict.fromkeys(ids))
        for s in self.stores:
            if not todo:
                return
            if s.fetches:
                s.prefetch(todo)
            todo = [i for i in todo if not s.has(i)]

    def get(self, oid):
        return self._read(oid, "get")

    def view(self, oid, verify=True, rehash=False):
        return self._read(oid, "view", verify=verify, rehash=rehash)

    def _streaming(self, oid) -> ObjectStore | None:
        """The store that streams `oid` when no loose copy is there (a loose file is mapped)."""
        if self.primary.has(oid):
            return None
        return next((s for s in self.stores[1:] if s.streams(oid)), None)

    def streams(self, oid):
        return self._streaming(oid) is not None

    def pieces(self, oid):
        """From a pack that streams it (see _streaming); otherwise the view, read through the
        stores as `view` is."""
        store = self._streaming(oid)
        if store is not None:
            yield from store.pieces(oid)
        else:
            yield self.view(oid)

    def put(self, *buffers, oid=None, progress=None, recheck=False):
        """Write to the primary store unless a local store (loose or packed; not a lazy clone's
        remote, which may drop it) already holds the object; a loose copy found is freshened (see
        ObjectStore.freshen) when older than FOUND_FRESHEN_S."""
        oid = oid or hash_bytes(*buffers)
        if any(s.freshen(oid, FOUND_FRESHEN_S, _nbytes(buffers)) for s in self.stores if not s.fetches):
            _report_all(progress, buffers)
            return oid
        return self.primary.put(*buffers, oid=oid, progress=progress, recheck=recheck)

    def freshen(self, oid, older_than=0.0, size=None):
        return any(s.freshen(oid, older_than, size) for s in self.stores)

    def size(self, oid):
        return self._read(oid, "size")

    def ids(self):
        seen = set()
        for s in self.stores:
            for oid in s.ids():
                if oid not in seen:
                    seen.add(oid)
                    yield oid

    def delete(self, oid):
        for s in self.stores:
            s.delete(oid)


@contextlib.contextmanager
def new_object_file(tmp_dir: str, oid: str, final: str | None, fsync: bool = True, readable: bool = False):
    """Yield a fresh temp file for object `oid`; when the block ends normally it is flushed,
    fsynced (if asked) and renamed to `final` (kept as a temp file when `final` is None: the caller
    renames it later). On any exception the temp file is removed, so an object is whole under its
    name or absent. The file object's `.name` is the temp path."""
    if not is_oid(oid):
        raise CorruptObject(f"{str(oid)[:70]!r} is not an object id (64 lowercase hex)")
    tmp = os.path.join(tmp_dir, f"{oid[:16]}-{os.urandom(16).hex()}")
    try:
        try:
            f = open(tmp, "x+b" if readable else "xb", opener=_read_only_opener)
        except FileNotFoundError:  # the first object ever written there
            os.makedirs(tmp_dir, exist_ok=True)
            f = open(tmp, "x+b" if readable else "xb", opener=_read_only_opener)
        try:
            yield f
            with _named(tmp):  # (the close too: it flushes what a failed flush left, and its error is said)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
                f.close()
        except BaseException:
            with contextlib.suppress(OSError):  # (a close that flushes again must not replace the error)
                f.close()
            raise
        if final is not None:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def freshen_file(path: str, older_than: float = 0.0) -> bool:
    """Whether the file exists; if so and its modification time is more than `older_than` seconds
    old, it is set to now (best effort: a file of another user on a shared remote may refuse it,
    and then only its age protects it). Renewing the time of a loose blob voids its verified stamp
    (the next read re-hashes it), hence the threshold."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if time.time() - st.st_mtime > older_than:
        try:
            os.utime(path)
        except OSError:
            pass
    return True


def _read_only_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o444)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# what fsync of a directory fails with on a file system that cannot sync directories (some network
# and FUSE file systems; PostgreSQL ignores the first two there too): nothing to make durable
_NO_DIR_FSYNC = {errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP}


def fsync_dir(path: str) -> None:
    """Make the renames into directory `path` durable. Any other failure than a file system that
    cannot sync directories (an I/O error) is raised, naming the directory: what was renamed
    there may not survive a crash, so no ref may point at it as if it would."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # (removed meanwhile, or not ours to read: nothing we could sync)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise OSError(e.errno, f"{e.strerror} (syncing the directory)", path) from None
    finally:
        os.close(fd)


FOUND_FRESHEN_S = 1800.0  # half gc's default grace: a found object keeps >= 30 min to be referenced
SYNCFS_MIN_OBJECTS = 256  # a batch this large is made durable by one syncfs, not one fsync per file
_syncfs = None  # libc's syncfs, looked up on first use (Linux only)


def syncfs(path: str, fd: int | None = None) -> bool:
    """Flush every dirty page and inode of the file system holding `path` (Linux syncfs(2), what
    `sync -f` runs): one journal commit instead of one per file. It reports write failures since
    `fd` (a descriptor on that file system; default: one opened now) was opened, so open it before
    writing. False when it cannot be trusted to report a failed write (kernels before 5.8; FUSE
    file systems, where it reaches no daemon) or fails; the caller then fsyncs each file itself."""
    global _syncfs
    if _syncfs is None:
        _syncfs = _load_syncfs()
    if not _syncfs or _on_fuse(path):
        return False
    own = fd is None
    if own:
        fd = _open_fs_watch(path)
        if fd is None:
            return False
    try:
        return _syncfs(fd) == 0
    finally:
        if own:
            os.close(fd)


def _open_fs_watch(path: str, create: bool = False) -> int | None:
    """A read-only descriptor on directory `path` (created if missing and asked to), or None."""
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _load_syncfs():
    """libc's syncfs on Linux >= 5.8 (earlier kernels return 0 after a failed writeback), else False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    if (major, minor) < (5, 8):
        return False
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).syncfs
        fn.argtypes = [ctypes.c_int]
        return fn
    except (OSError, AttributeError):
        return False


def _on_fuse(path: str) -> bool:
    """Whether `path` lies on a FUSE mount (the longest mount point above it in /proc/self/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                    best, kind = point, parts[2]
    except OSError:
        return True  # cannot tell: do not trust syncfs
    return kind.startswith("fuse")


_sync_file_range = None  # libc's sync_file_range, looked up on first use (Linux only)
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing `fd`'s dirty pages to disk now, without waiting (Linux
    sync_file_range; a no-op elsewhere or on failure). A later fsync then waits for less: the disk
    write overlaps the copying of the next objects (bench_store.py's durable rows vs cp+sync)."""
    global _sync_file_range
    if not sys.platform.startswith("linux"):
        return
    if _sync_file_range is None:
        try:
            import ctypes
            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _sync_file_range = fn
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # errors only mean no head start

"""Object stores: write-once, verified-on-read storage of objects by BLAKE3 id.

`LooseStore` keeps one file per object at objects/<2 hex>/<62 hex> (b3sum of the file equals its
name); `MemoryStore` keeps them in a dict (tests, scratch work); `ChainStore` reads through a list
of stores and writes to the first (pack files and lazily fetched remotes plug in here).
"""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import sys
import threading
import time
from typing import Iterator

from .errors import BadInput, CorruptObject, ObjectMissing
from .objects import hash_bytes, is_oid


class FileRegion:
    """`len(view)` bytes of the open file `fd` at `offset`, with a memoryview of the same bytes.

    A buffer of `put` may be a FileRegion: it is hashed through its view, and LooseStore copies it
    file to file inside the kernel (copy_file_range, as `cp` does: no copy through Python)."""

    __slots__ = ("fd", "offset", "view")

    def __init__(self, fd: int, offset: int, view):
        self.fd, self.offset, self.view = fd, offset, view

    def __len__(self) -> int:
        return len(self.view)


def as_buffer(b):
    """The bytes-like form of a `put` buffer."""
    return b.view if isinstance(b, FileRegion) else b


# copy_file_range errors that mean "no in-kernel copy between these files": write from memory instead
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def _write_buffer(f, b) -> None:
    if not isinstance(b, FileRegion) or not hasattr(os, "copy_file_range"):
        f.write(as_buffer(b))
        return
    f.flush()
    done, n = 0, len(b.view)
    try:
        while done < n:
            got = os.copy_file_range(b.fd, f.fileno(), n - done, b.offset + done)
            if got == 0:
                raise BadInput("the source file shrank while it was being stored",
                               "commit it again once the program writing it has finished")
            done += got
    except OSError as e:
        if e.errno not in _NO_KERNEL_COPY:
            raise  # ENOSPC, EIO, ...: real errors
        f.write(b.view[done:])


class ObjectStore:
    """The contract every store keeps. Reads always verify the returned bytes."""

    def has(self, oid: str) -> bool:
        raise NotImplementedError

    def get(self, oid: str) -> bytes:
        """The object's bytes, verified against its id."""
        raise NotImplementedError

    def view(self, oid: str, verify: bool = True, rehash: bool = False):
        """A verified buffer of the object (zero-copy where the store can map it). `verify=False`
        lets a store that maps its objects as they are (loose files) skip the check; stores that
        decode (packs, remotes) always verify. A loose store with stamps may check a file by its
        stamp instead of re-hashing it (see LooseStore); `rehash=True` always re-hashes."""
        return self.get(oid)

    def put(self, *buffers, oid: str | None = None) -> str:
        """Store the concatenation of `buffers`; returns its id. Idempotent."""
        raise NotImplementedError

    def size(self, oid: str) -> int:
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        raise NotImplementedError

    def delete(self, oid: str) -> None:
        raise NotImplementedError


def _verify(oid: str, data, where: str) -> None:
    got = hash_bytes(data)
    if got != oid:
        raise CorruptObject(f"object {oid} is corrupt: its content hashes to {got[:12]} ({where})",
                            "run mvc fsck; fetch the object again from a remote if you have one")


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

    def put(self, *buffers, oid=None):
        data = b"".join(bytes(as_buffer(b)) for b in buffers)
        oid = oid or hash_bytes(data)
        self._objects.setdefault(oid, data)
        return oid

    def size(self, oid):
        if oid not in self._objects:
            raise ObjectMissing(f"object {oid} is missing")
        return len(self._objects[oid])

    def ids(self):
        return iter(list(self._objects))

    def delete(self, oid):
        self._objects.pop(oid, None)


class LooseStore(ObjectStore):
    """One file per object under `root`; atomic (temp + fsync + rename) and write-once.

    Verified stamps (when `stamps` names a folder): after `view` has re-hashed an object file it
    records the file's size, modification and change times, inode and device in
    `stamps/<2 hex>/<62 hex>`. A later `view` whose file still has exactly that stamp trusts the
    earlier hash instead of re-hashing (as git trusts its index for unchanged work-tree files);
    objects under STAMP_MIN_BYTES are always re-hashed, which is quicker than reading a stamp:
    any write, truncation, chmod, touch or replacement through the file system changes the change
    time, which no program can set back. Files changed less than STAMP_SETTLE_NS before the hash
    are not stamped, so a later change within one tick of a coarse file-system clock cannot hide
    behind an equal time. Damage below the file system (a bad disk) needs a re-hash: `mvc fsck`
    and `rehash=True` always re-hash.
    """

    def __init__(self, root: str, fsync: bool = True, stamps: str | None = None):
        self.root = root
        self.fsync = fsync
        self.stamps = stamps
        self.tmp = os.path.join(root, "tmp")
        # id -> temp file written inside batch() (None while a thread is still writing it)
        self._pending: dict[str, str | None] | None = None
        self._claim = threading.Lock()  # threads of one commit may put the same new id at once

    @contextlib.contextmanager
    def batch(self):
        """Objects written inside the block stay in temp files until it ends; then they are fsynced
        in parallel and renamed into place, so a crash never leaves a partial object under its id.
        Nothing may point at them (refs) before the block has exited. The kernel starts writing
        each file to disk as soon as it is complete (`start_writeback`), so the fsyncs at the end
        mostly find the work done: a durable commit overlaps its disk writes with its copying.
        Threads may put objects inside one batch at once.
        """
        if self._pending is not None:
            yield self
            return
        self._pending = {}
        try:
            yield self
            self._flush(self._pending)
        except BaseException:
            for tmp in self._pending.values():
                try:
                    if tmp:
                        os.unlink(tmp)
                except OSError:
                    pass
            raise
        finally:
            self._pending = None

    def _flush(self, pending: dict[str, str]) -> None:
        if not pending:
            return
        from concurrent.futures import ThreadPoolExecutor  # only when there is something to sync
        workers = min(16, len(pending))
        if self.fsync:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_fsync_path, pending.values()))
        for oid, tmp in pending.items():
            os.makedirs(os.path.dirname(self.path(oid)), exist_ok=True)
            os.replace(tmp, self.path(oid))
        if self.fsync:
            dirs = sorted({os.path.dirname(self.path(oid)) for oid in pending})
            with ThreadPoolExecutor(max_workers=min(16, len(dirs))) as pool:
                list(pool.map(fsync_dir, dirs))

    def path(self, oid: str) -> str:
        return os.path.join(self.root, oid[:2], oid[2:])

    def has(self, oid):
        return os.path.exists(self.path(oid)) or (self._pending is not None and oid in self._pending)

    def _open(self, oid):
        if self._pending and self._pending.get(oid):
            return open(self._pending[oid], "rb")
        try:
            return open(self.path(oid), "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"object {oid} is missing", "run mvc fsck") from None

    def get(self, oid):
        with self._open(oid) as f:
            data = f.read()
        _verify(oid, data, self.path(oid))
        return data

    def view(self, oid, verify=True, rehash=False):
        with self._open(oid) as f:
            st = os.fstat(f.fileno())
            data = b"" if st.st_size == 0 else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            if verify and (rehash or not self._stamped(oid, st)):
                hashed_at = time.time_ns()
                _verify(oid, data, self.path(oid))
                self._stamp(oid, st, os.fstat(f.fileno()), hashed_at)
        return data

    # -- verified stamps ---------------------------------------------------------------------------
    def _stamp_path(self, oid: str) -> str:
        return os.path.join(self.stamps, oid[:2], oid[2:])

    def _stamped(self, oid: str, st: os.stat_result) -> bool:
        if not self.stamps or st.st_size < STAMP_MIN_BYTES:
            return False
        try:
            with open(self._stamp_path(oid), "rb") as f:
                return f.read(200) == _stamp_bytes(st)
        except OSError:
            return False

    def _stamp(self, oid: str, before: os.stat_result, after: os.stat_result, hashed_at: int) -> None:
        """Record that the file, as `before` describes it, hashed to its id (best effort)."""
        stamp = _stamp_bytes(before)
        if (not self.stamps or before.st_size < STAMP_MIN_BYTES
                or stamp != _stamp_bytes(after)  # changed while it was hashed
                or hashed_at - before.st_ctime_ns < STAMP_SETTLE_NS):
            return
        path = self._stamp_path(oid)
        tmp = f"{path}.{os.urandom(6).hex()}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(stamp)
            os.replace(tmp, path)  # readers see the old stamp or the new one, never half of one
        except OSError:  # a read-only repository or a full disk: the next read re-hashes
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def put(self, *buffers, oid=None):
        oid = oid or hash_bytes(*map(as_buffer, buffers))
        final = self.path(oid)
        pending = self._pending
        deferred = pending is not None  # batch(): fsync + rename happen at its end
        with self._claim:
            if os.path.exists(final) or (deferred and oid in pending):
                return oid
            if deferred:
                pending[oid] = None  # claimed: another thread putting the same id returns here
        try:
            with new_object_file(self.tmp, oid, None if deferred else final,
                                 self.fsync and not deferred) as f:
                for b in buffers:
                    _write_buffer(f, b)
                if deferred and self.fsync:
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
        for d in sorted(os.listdir(self.root)):
            if len(d) != 2:
                continue
            for name in sorted(os.listdir(os.path.join(self.root, d))):
                if is_oid(d + name):
                    yield d + name

    def delete(self, oid):
        for path in (self.path(oid), self._stamp_path(oid) if self.stamps else None):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


STAMP_SETTLE_NS = 2_000_000_000  # coarse file-system clocks tick at most every 2 s (FAT); ext4 ~4 ms
STAMP_MIN_BYTES = 1 << 20  # smaller objects re-hash faster than a stamp file is read


def _stamp_bytes(st: os.stat_result) -> bytes:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_dev}".encode()


class ChainStore(ObjectStore):
    """Reads through `stores` in order; writes go to the first one."""

    def __init__(self, *stores: ObjectStore):
        self.stores = list(stores)

    @property
    def primary(self) -> ObjectStore:
        return self.stores[0]

    def _read(self, oid, how: str, **kw):
        """Read through the stores in order; an object that moves between stores while we look
        (a loose object packed by a concurrent `mvc pack`) is found in the next one."""
        for i, s in enumerate(self.stores):
            if i == 0 or s.has(oid):  # the first (loose) store answers a miss as cheaply as has()
                try:
                    return getattr(s, how)(oid, **kw)
                except ObjectMissing:
                    continue
        for s in self.stores:  # it may have moved behind us: one more pass
            try:
                return getattr(s, how)(oid, **kw)
            except ObjectMissing:
                continue
        raise ObjectMissing(f"object {oid} is missing", "run mvc fsck")

    def has(self, oid):
        return any(s.has(oid) for s in self.stores)

    def get(self, oid):
        return self._read(oid, "get")

    def view(self, oid, verify=True, rehash=False):
        return self._read(oid, "view", verify=verify, rehash=rehash)

    def put(self, *buffers, oid=None):
        if oid is not None and self.has(oid):
            return oid
        return self.primary.put(*buffers, oid=oid)

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
    os.makedirs(tmp_dir, exist_ok=True)
    tmp = os.path.join(tmp_dir, f"{oid[:16]}-{os.urandom(16).hex()}")
    try:
        with open(tmp, "x+b" if readable else "xb", opener=lambda path, flags: os.open(path, flags, 0o444)) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if final is not None:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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

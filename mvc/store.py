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

    def view(self, oid: str, verify: bool = True):
        """A verified buffer of the object (zero-copy where the store can map it). `verify=False`
        lets a store that maps its objects as they are (loose files) skip the re-hash; stores that
        decode (packs, remotes) always verify."""
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
    """One file per object under `root`; atomic (temp + fsync + rename) and write-once."""

    def __init__(self, root: str, fsync: bool = True):
        self.root = root
        self.fsync = fsync
        self.tmp = os.path.join(root, "tmp")
        self._pending: dict[str, str] | None = None  # id -> temp file written inside batch()

    @contextlib.contextmanager
    def batch(self):
        """Objects written inside the block stay in temp files until it ends; then they are fsynced
        in parallel and renamed into place, so a crash never leaves a partial object under its id.
        Nothing may point at them (refs) before the block has exited.
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
        if self._pending and oid in self._pending:
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

    def view(self, oid, verify=True):
        with self._open(oid) as f:
            if os.fstat(f.fileno()).st_size == 0:
                data = b""
            else:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if verify:
            _verify(oid, data, self.path(oid))
        return data

    def put(self, *buffers, oid=None):
        oid = oid or hash_bytes(*map(as_buffer, buffers))
        final = self.path(oid)
        if os.path.exists(final) or (self._pending is not None and oid in self._pending):
            return oid
        deferred = self._pending is not None  # batch(): fsync + rename happen at its end
        with new_object_file(self.tmp, oid, None if deferred else final, self.fsync and not deferred) as f:
            for b in buffers:
                _write_buffer(f, b)
        if deferred:
            self._pending[oid] = f.name
            return oid
        if self.fsync:
            fsync_dir(os.path.dirname(final))
        return oid

    def size(self, oid):
        try:
            if self._pending and oid in self._pending:
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
        try:
            os.unlink(self.path(oid))
        except FileNotFoundError:
            pass


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
        for s in self.stores:
            if s.has(oid):
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

    def view(self, oid, verify=True):
        return self._read(oid, "view", verify=verify)

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

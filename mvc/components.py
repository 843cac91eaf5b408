"""Turning inputs into component trees (files, directories, state dicts) and trees back into files.

A safetensors file becomes one canonical blob per tensor plus a blob of its original header bytes,
which is all that is needed to rebuild the file byte for byte. Other files become raw blobs.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import mmap
import os
import re
import stat
import threading
import time
import warnings
from typing import Callable

from . import safetensors_format as stf
from .errors import BadInput, ChangedWhileStored, CorruptObject, InterruptedAfterLanding, MvcError
from .interrupts import interrupts_deferred
from .objects import (HASH_THREADS_MIN, RESERVED_SEGMENTS, check_new_component_name, check_relpath, case_folded,
                      folded_clashes, hash_bytes, is_reserved_segment, new_hasher, tree_blob_ids, tree_object)
from .output_folders import OutputFolders
from .store import FileSpan, ObjectStore

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
MEMORY_FILE = "model.safetensors"

Progress = Callable[[int], None]
PIECE = 64 << 20  # commits hash, and checkouts write, a large tensor this much at a time: bars move within it
RUN_BYTES = 1 << 20  # items stored by one worker hand-off: up to this many bytes ...
RUN_ITEMS = 64  # ... or this many items
STORE_WORKERS = 4  # threads hashing and copying tensors at once (capped by the core count)


class _Stopped(Exception):
    """Raised in a storing thread once its commit has failed or been interrupted."""


class _CutShort(Exception):
    """The file being committed lost bytes (another program truncated it) while they were read."""


CUT_SHORT_HINT = "commit it again once the program writing it has finished"
TRAINING_HINT = ("is another thread training it? commit between steps, or a copy "
                 "(e.g. {k: v.clone() for k, v in model.state_dict().items()})")


def _changed_file(path: str) -> ChangedWhileStored:
    return ChangedWhileStored(f"{path} changed while it was being committed: nothing was committed", CUT_SHORT_HINT)


def _within(filename, path: str) -> bool:
    """Whether an error's `filename` is `path` or below it (or names no file: taken as the input's)."""
    if filename is None:
        return True
    filename, path = os.path.abspath(os.fsdecode(filename)), os.path.abspath(path)
    return filename == path or filename.startswith(path.rstrip(os.sep) + os.sep)


def _same_file(path: str, fd: int | None, listed: os.stat_result | None, st: os.stat_result | None = None) -> None:
    """Refuse a file that is not the one listed (`fd` open on it, or `st` its lstat): the paths are
    read one after the other, and a folder or file on the way replaced meanwhile by a link would
    otherwise be read through, from outside the committed directory."""
    if listed is None:
        return
    st = os.fstat(fd) if st is None else st
    if (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino):
        raise BadInput(f"{path} was replaced while it was being committed (not the file listed): nothing was "
                       "committed", CUT_SHORT_HINT)


def _refuse_changed(state: dict, versions: dict, names: list[str]) -> None:
    """ChangedWhileStored when a tensor of `names` was written in place since `versions` were read."""
    changed = [n for n in names if versions[n] is not None and _version_of(state[n]) != versions[n]]
    if changed:
        raise ChangedWhileStored(f"tensor {changed[0]!r} changed while the component was being committed"
                                 + (f" ({len(changed)} tensors did)" if len(changed) > 1 else "")
                                 + ": nothing was committed", TRAINING_HINT)


def _shares_memory(t, buf) -> bool:
    """Whether `buf` (tensor_buffer's bytes of tensor `t`) is `t`'s own memory rather than a copy."""
    if not len(buf):
        return False
    try:
        import numpy as np
        at = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        storage = t.untyped_storage()
        return t.device.type == "cpu" and storage.data_ptr() <= at < storage.data_ptr() + storage.nbytes()
    except (AttributeError, RuntimeError, TypeError, ValueError, NotImplementedError):
        return True  # (cannot tell: checked as if it were, which refuses rather than mixes)


def _version_of(t) -> int | None:
    """A tensor's version counter, which every in-place operation on it (or on a view sharing it,
    as a state dict's detached parameters do) increments; None where it has none (an inference
    tensor, something that is not a tensor)."""
    try:
        return t._version
    except (AttributeError, RuntimeError):
        return None


def _stamp(fd: int) -> tuple[int, int, int, int]:
    """What changes when a file is written: size, modification and change times, inode."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _map_read_only(f, path: str, stamp: tuple):
    """The whole file `f` (of `stamp`'s size) mapped read-only; a file emptied or cut since its stamp
    was taken is ChangedWhileStored (mmap's ValueError named no file)."""
    try:
        return mmap.mmap(f.fileno(), stamp[0], access=mmap.ACCESS_READ)
    except ValueError:
        if _stamp(f.fileno()) != stamp:
            raise _changed_file(path) from None
        raise


READ_WHOLE = 1 << 20  # a mapped blob up to this size is read into memory (one pread) and stored from there
HASH_READ = 1 << 20  # a larger one is hashed from pread pieces of this size (they stay in the CPU cache),
HASH_READ_THREADED = 8 << 20  # or of this size when hashed on every core (4 MiB: 1.5x slower on 2 cores)


def pread_exact(fd: int, buf, at: int, mm=None) -> None:
    """Fill the writable buffer `buf` from file offset `at`; raises _CutShort at the file's end.
    Without os.preadv (not POSIX) the bytes are copied from the file's mapping `mm` instead: there a
    file that is mapped cannot be truncated."""
    done, n = 0, len(buf)
    if not hasattr(os, "preadv"):
        if mm is None or at + n > len(mm):
            raise _CutShort()
        buf[:] = mm[at:at + n]
        return
    while done < n:
        got = os.preadv(fd, [buf[done:]], at + done)
        if got <= 0:
            raise _CutShort()
        done += got


RAW_MAP_MIN = 64 << 20  # side files at least this large are mapped, not read, when committed
LINKED_FOLDER_HINT = ("a checkout could not give the link back; copy the folder with its links resolved "
                      "(cp -rL SRC COPY, e.g. a Hugging Face hub snapshot) and commit the copy")


def default_kind(name: str) -> str:
    if name == "core" or name.startswith("core/"):
        return "core"
    if name.startswith("brick/"):
        return "brick"
    if name == "optimizer":
        return "optimizer"
    return "other"


class Ingest:
    """Collects the tensors and files of one component while writing their blobs."""

    def __init__(self, store: ObjectStore, progress: Progress | None = None):
        self.store = store
        self._progress = progress
        self._progress_lock = threading.Lock()  # worker threads report; callers' callbacks need not be thread-safe
        self._stopping = threading.Event()  # set when the commit fails or is interrupted: workers stop
        self.entries: list[tuple[str, str, dict]] = []  # (file, tensor name in it, tree entry)
        self.files: dict[str, dict] = {}
        self.meta: dict | None = None  # (an optimizer state imported from a .pt file: its param groups)
        self.kind: str | None = None

    def progress(self, nbytes: int) -> None:
        if self._stopping.is_set():  # (raised in a worker: its write is undone; see _store_tensors)
            raise _Stopped()
        if self._progress and nbytes:
            with self._progress_lock:
                self._progress(nbytes)

    def _put_blob(self, prefix: bytes, data, threads: bool = True, fd: int | None = None, mm=None,
                  at: int = 0) -> str:
        """Hash `prefix` + `data` and store it; returns its id. Progress hears of `data`'s bytes:
        a blob of more than one PIECE reports half of them piece by piece as it is hashed and half
        as it is written, so a bar moves through a 10 GB tensor too.

        `data` may lie in a mapping `mm` of the file `fd` (from offset `at`): this process then
        never reads it through the mapping, since another program may truncate the file meanwhile
        and a read of a mapping past its file's end kills the process (SIGBUS). A small blob is
        read with pread and stored from memory; a large one is hashed from pread pieces and, when
        new, read again in pieces and hashed as it is written (FileSpan), so that another program
        writing the file meanwhile cannot leave an object whose bytes are not its id's. Either way
        a file cut short raises _CutShort; one changed meanwhile raises ChangedWhileStored, or is
        caught by its stamp."""
        n, in_memory = len(data), fd is None  # (memory another thread may write: rechecked as written)
        if fd is not None and n <= READ_WHOLE:
            data = bytearray(n)
            pread_exact(fd, memoryview(data), at, mm)
            fd = None
        if fd is None and n <= PIECE:
            oid = self.store.put(prefix, data, oid=hash_bytes(prefix, data, threads=threads), recheck=in_memory)
            self.progress(n)
            return oid
        told = 0

        def tell(k: int) -> None:
            nonlocal told
            k = min(k, n - told)
            told += k
            self.progress(k)

        threaded = threads and n >= HASH_THREADS_MIN
        h = new_hasher(threaded)
        h.update(prefix)
        if fd is None:  # in memory
            for lo in range(0, n, PIECE):
                with data[lo:lo + PIECE] as piece:
                    h.update(piece)
                tell(min(PIECE, n - lo) // 2)
        else:
            step = HASH_READ_THREADED if threaded else HASH_READ
            with memoryview(bytearray(min(n, step))) as buf:
                for lo in range(0, n, step):
                    with buf[:min(step, n - lo)] as piece:
                        pread_exact(fd, piece, at + lo, mm)
                        h.update(piece)
                    tell(min(step, n - lo) // 2)
        oid = h.hexdigest()
        if fd is not None:  # read again, in pieces, hashed as written (see FileSpan)
            data = FileSpan(lambda piece, where: pread_exact(fd, piece, where, mm), at, n)
        oid = self.store.put(prefix, data, oid=oid, progress=lambda k: tell(k // 2), recheck=True)
        tell(n - told)
        return oid

    def _add_tensor(self, relpath: str, name: str, oid: str, dtype: str, shape, **extra) -> None:
        self.entries.append((relpath, name, {"id": oid, "dtype": dtype, "shape": list(shape),
                                             "file": relpath, **extra}))

    def tensors(self) -> dict[str, dict]:
        """The tree's tensor map. A name found in one file only is its own key; a name found in
        several files of a directory is `file:name` in each (never the plain name, so that adding
        a file cannot silently re-point an existing key), with `#n` added should a tensor really
        be called that."""
        files_of: dict[str, int] = {}
        for _rel, name, _e in self.entries:
            files_of[name] = files_of.get(name, 0) + 1
        out: dict[str, dict] = {}
        for relpath, name, entry in self.entries:
            if files_of[name] == 1 and name not in out:
                out[name] = entry
                continue
            key, n = f"{relpath}:{name}", 1
            while key in out or key in files_of:
                n += 1
                key = f"{relpath}:{name}#{n}"
            out[key] = {**entry, "name": name}
        return out

    def safetensors_file(self, relpath: str, path: str, listed: os.stat_result | None = None) -> None:
        with open(path, "rb") as f:
            stamp = _stamp(f.fileno())
            _same_file(path, f.fileno(), listed)
            size = stamp[0]
            head8 = f.read(8)
            if len(head8) < 8:
                if size >= 8:  # (the size said it was there)
                    raise _changed_file(path)
                raise BadInput(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(head8, "little")
            if n > stf.MAX_HEADER_BYTES or 8 + n > size:
                stf.parse_header(head8, size, path)  # raises the precise error
            prefix = head8 + f.read(n)
            if len(prefix) < 8 + n:  # (the size said it was there)
                raise _changed_file(path)
            header = stf.parse_header(prefix, size, path)
            mm = _map_read_only(f, path, stamp) if size else b""
            try:
                header_id = self.store.put(prefix[: header.data_start])
                self.progress(header.data_start)  # the bar's total is the file's size
                with memoryview(mm) as view:
                    self._store_tensors(relpath, header, f.fileno(), mm, view)
            except _CutShort:
                raise BadInput(f"{path} was cut short while it was being committed: nothing was committed",
                               CUT_SHORT_HINT) from None
            except ChangedWhileStored:
                raise _changed_file(path) from None
            finally:
                if isinstance(mm, mmap.mmap):
                    mm.close()
            if _stamp(f.fileno()) != stamp:  # each tensor is hashed, then written: two reads of the file
                raise _changed_file(path)
        self.files[relpath] = {"format": "safetensors", "header": header_id, "size": size}

    def _store_tensors(self, relpath: str, header, fd: int, mm, view) -> None:
        """One blob per tensor of a parsed safetensors file, stored by _put_all."""
        def put(e, spare_cores: bool) -> str:
            start, end = header.data_start + e.begin, header.data_start + e.end
            with view[start:end] as data:
                return self._put_blob(stf.blob_prefix(e.dtype, e.shape), data, spare_cores, fd, mm, start)

        for e, oid in self._put_all(header.tensors, lambda e: e.end - e.begin, put):
            self._add_tensor(relpath, e.name, oid, e.dtype, e.shape)

    def _put_all(self, items: list, nbytes, put) -> list:
        """[(item, id)] in the order of `items`, each stored by `put(item, spare_cores)`. A few
        worker threads each take a run of items, biggest first: a tensor of RUN_BYTES or more alone,
        smaller ones up to RUN_BYTES or RUN_ITEMS together (one hand-off per run: per item, the
        threads' wake-ups cost more than storing 16 bytes). Each item is hashed on one core and
        written into the store (both release the GIL), so that on 2 cores no tensor's hashing waits
        behind another's writing (the `mvc (python api)` rows of benchmarks/bench_store.py measure it
        against `cp`, for files and for state dicts in memory; benchmarks/bench_many_tensors.py the
        small ones). `spare_cores`: cores are left over for hashing one item on several. The first
        error stops the others at their next piece, whichever run it comes from."""
        from concurrent.futures import ThreadPoolExecutor, as_completed
        runs, run, size = [], [], 0
        for i in sorted(range(len(items)), key=lambda i: -nbytes(items[i])):
            run.append(i)
            size += nbytes(items[i])
            if size >= RUN_BYTES or len(run) >= RUN_ITEMS:
                runs.append(run)
                run, size = [], 0
        if run:
            runs.append(run)
        cores = os.cpu_count() or 1
        workers = max(1, min(len(runs), cores, STORE_WORKERS))
        spare_cores = workers < cores

        def put_run(run: list) -> list:
            return [put(items[i], spare_cores) for i in run]
        pool = ThreadPoolExecutor(workers, thread_name_prefix="mvc-store")
        try:
            # each task runs in a copy of this thread's context: it joins this commit's store batch.
            # (Deferred: a Ctrl-C inside submit() could start a thread the pool never records, and
            # shutdown would not wait for it.)
            with interrupts_deferred():
                futures = {pool.submit(contextvars.copy_context().run, put_run, r): r for r in runs}
            ids = {}
            for f in as_completed(futures):  # (as they finish: a failure raises at once)
                ids.update(zip(futures[f], f.result()))
            return [(x, ids[i]) for i, x in enumerate(items)]
        except BaseException:  # an error or Ctrl-C: items not yet started are dropped, and those
            self._stopping.set()  # being stored stop at their next piece (their temp files go)
            raise
        finally:  # no worker may outlive this (they use the file's descriptor and the store's batch),
            with interrupts_deferred():  # not even on a second Ctrl-C
                pool.shutdown(wait=True, cancel_futures=True)

    def state_dict(self, relpath: str, state: dict, metadata: dict | None = None) -> None:
        from .tensors import find_aliases, tensor_buffer
        aliases = find_aliases(state)
        names = sorted(n for n in state if n not in aliases)
        versions = {n: _version_of(state[n]) for n in names}  # (before any buffer is taken)
        buffers = {n: tensor_buffer(state[n], n) for n in names}
        # a step while the buffers were taken mixes steps among the copies (a GPU tensor's, a
        # transposed one's); after this, only the tensors stored from their own memory count
        _refuse_changed(state, versions, names)
        own = [n for n in names if _shares_memory(state[n], buffers[n][2])]
        for alias, target in aliases.items():  # the file holds every name, tied ones as copies
            buffers[alias] = buffers[target]
        try:
            prefix, _ = stf.build_header([(n, *buffers[n][:2]) for n in sorted(buffers)], metadata)
        except UnicodeEncodeError:
            raise BadInput("tensor names and metadata must be valid UTF-8 text") from None
        header_id = self.store.put(prefix)
        total = len(prefix)

        def put(n: str, spare_cores: bool) -> str:
            dtype, shape, buf = buffers[n]
            try:
                return self._put_blob(stf.blob_prefix(dtype, shape), buf, spare_cores)
            except ChangedWhileStored:
                raise ChangedWhileStored(f"tensor {n!r} changed while it was being committed: nothing was committed",
                                         TRAINING_HINT) from None

        stored = self._put_all(names, lambda n: len(buffers[n][2]), put)
        # each blob is checked as it is written; an in-place write to a tensor already stored or not
        # yet begun (the next optimizer step) would mix two steps in one model: the versions tell
        _refuse_changed(state, versions, own)
        for n, oid in stored:
            dtype, shape, buf = buffers[n]
            self._add_tensor(relpath, n, oid, dtype, shape)
            total += len(buf)
        if aliases:  # tied tensors: stored once, recorded as aliases of their first name
            ids = {name: e["id"] for _rel, name, e in self.entries if _rel == relpath}
            for alias, target in aliases.items():
                dtype, shape, buf = buffers[alias]
                self._add_tensor(relpath, alias, ids[target], dtype, shape, alias=target)
                total += len(buf)
                self.progress(len(buf))  # (input_bytes counts every name)
        entry = {"format": "safetensors", "header": header_id, "size": total}
        self.files[relpath] = entry

    def raw_file(self, relpath: str, path: str, listed: os.stat_result | None = None) -> None:
        """A side file stored as one raw blob. A large one is hashed and stored piece by piece
        (a 300 MB .bin inside a directory does not pass through memory whole, see _put_blob); a
        small one is read whole, which takes a consistent copy even if another program truncates
        the file meanwhile."""
        with open(path, "rb") as f:
            stamp = _stamp(f.fileno())
            _same_file(path, f.fileno(), listed)
            size = stamp[0]
            mapped = size >= RAW_MAP_MIN
            mm = _map_read_only(f, path, stamp) if mapped else f.read()
            try:
                with memoryview(mm) as view:
                    oid = self._put_blob(b"", view, fd=f.fileno() if mapped else None, mm=mm)
            except _CutShort:
                raise BadInput(f"{path} was cut short while it was being committed: nothing was committed",
                               CUT_SHORT_HINT) from None
            except ChangedWhileStored:
                raise _changed_file(path) from None
            finally:
                if isinstance(mm, mmap.mmap):
                    mm.close()
            size = len(mm) if not isinstance(mm, mmap.mmap) else size
            if _stamp(f.fileno()) != stamp:
                raise _changed_file(path)
        self.files[relpath] = {"format": "raw", "id": oid, "size": size}

    def path(self, path: str, relpath: str | None = None) -> None:
        try:
            self._path(path, relpath)
        except (PermissionError, FileNotFoundError, NotADirectoryError) as e:
            if not _within(e.filename, path):  # the repository's own files (its temp folder): not the input's
                raise
            if isinstance(e, PermissionError):
                raise BadInput(f"{e.filename or path}: permission denied", "nothing was committed") from None
            raise BadInput(f"{e.filename or path} was removed while it was being committed: nothing was "
                           "committed", CUT_SHORT_HINT) from None  # (a missing input is refused before this)

    def _path(self, path: str, relpath: str | None, listed: os.stat_result | None = None) -> None:
        """Commit the file or directory at `path`; a directory's file comes with the `lstat` its
        listing took (`listed`), which the file opened must match."""
        st = os.lstat(path.rstrip(os.sep) or path)  # (a trailing slash would follow a link to a folder)
        _same_file(path, None, listed, st)
        if stat.S_ISLNK(st.st_mode):
            raise BadInput(f"{path} is a symbolic link; mvc refuses symlinks",
                           "commit the file it points to")
        if stat.S_ISDIR(st.st_mode):
            return self.directory(path)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{path} is not a regular file")
        base = relpath or os.path.basename(path)
        suffix = base.lower()  # (MODEL.PT is a .pt file, as export takes it)
        if relpath is None and not suffix.endswith(PICKLE_SUFFIXES):  # (a directory's paths are checked
            check_new_component_name(base, "file name", None)  # as it is listed; a .pt becomes model.safetensors)
        if suffix.endswith(SAFETENSORS_SUFFIX):
            self.safetensors_file(base, path, st)
        elif suffix.endswith(PICKLE_SUFFIXES) and relpath is None:
            from .tensors import load_pickle_state_dict, optimizer_state
            with open(path, "rb") as f:  # (torch.load reads its zip directory, then each tensor: a save
                stamp = _stamp(f.fileno())  # over the file meanwhile gave a mix of two checkpoints)
                _same_file(path, f.fileno(), st)
                try:
                    state = load_pickle_state_dict(path, f)
                except Exception:
                    if _stamp(f.fileno()) != stamp:  # (a refusal of what it read then: not the file's fault)
                        raise _changed_file(path) from None
                    raise
                if _stamp(f.fileno()) != stamp:
                    raise _changed_file(path)
            optimizer = optimizer_state(state)  # a torch.save(optimizer.state_dict()): as from memory
            if optimizer is not None:
                (state, self.meta), self.kind = optimizer, "optimizer"
            self.state_dict(MEMORY_FILE, state)
        else:
            if relpath is None and stf.looks_like_safetensors(path):  # (a hub cache blob is named by its hash)
                warnings.warn(f"{path} looks like a safetensors file but its name does not end in "
                              ".safetensors: it is stored as bytes, with no tensors to load, diff or share with "
                              "other commits (copy it to a name ending in .safetensors and commit that)")
            self.raw_file(base, path, st)

    def directory(self, root: str) -> None:
        entries = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=_refuse_unreadable):
            dirnames[:] = sorted(d for d in dirnames if d not in RESERVED_SEGMENTS)  # (git's and mvc's own)
            for d in dirnames:  # .Git, .mvc. and the like: other folders here, but .git for a checkout
                if is_reserved_segment(d):  # on a case-insensitive or Windows file system
                    raise BadInput(f"{os.path.join(dirpath, d)}: a folder named {d!r} cannot be committed: a "
                                   "checkout on a case-insensitive file system would write it as "
                                   f"{d.lower().rstrip('. ')}", "rename it (only folders named exactly .git and .mvc are skipped)")
            # a `.git` file (a worktree's or submodule's link) is git's, as a `.git` folder is
            filenames = [n for n in filenames if n != ".git"]  # (other reserved names are refused below)
            for name in [n for n in filenames if _TEMP_NAME.match(n)]:  # never part of a model
                filenames.remove(name)
                if not name.endswith(".mvc-tmp"):  # (a backup: the files were going into place)
                    raise BadInput(f"{os.path.join(dirpath, name)}: the backup of a file a checkout was replacing; "
                                   "a checkout is putting its files in place in this folder, or one was killed "
                                   "doing it, and the folder may mix the files of two revisions",
                                   "when no checkout writes there: check out the revision you want into it again "
                                   "(--force), then delete the .mvc-bak and .mvc-old files (a .mvc-old one may "
                                   "be the only copy of a file that is now missing: rename it back)")
                warnings.warn(f"skipped {os.path.join(dirpath, name)}: a temp file a killed mvc checkout or "
                              "export left (the next checkout into this folder removes it once it is an hour old)")
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    raise BadInput(f"{os.path.join(dirpath, d)} is a symbolic link; mvc refuses symlinks",
                                   LINKED_FOLDER_HINT)
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                check_new_component_name(rel, "file path", None)  # what a checkout could not write back
                entries.append((rel, full))
        files, special = [], []
        for rel, full in entries:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise BadInput(f"{full} is a symbolic link; mvc refuses symlinks", LINKED_FOLDER_HINT)
            (files if stat.S_ISREG(st.st_mode) else special).append((rel, full, st))
        _refuse_case_clashes(root, [rel for rel, _full, _st in files])
        if not files:
            raise BadInput(f"{root} holds no files to commit" + (": only pipes, sockets or devices" if special else ""))
        for _rel, full, _st in special:
            warnings.warn(f"skipped {full}: not a regular file (a pipe, socket or device)")
        for rel, full, st in files:
            self._path(full, rel, st)


def _refuse_case_clashes(root: str, paths: list[str]) -> None:
    """Refuse file paths of a folder that clash where case or Unicode form is ignored (macOS,
    Windows), as such component names are (objects.folded_clashes): `w.bin` beside `W.bin` (one
    written over the other), or a file `a` beside a folder `A/` (the file where the folder must be);
    warn of those differing only in trailing dots or spaces (Windows drops them)."""
    for a, b, kind in folded_clashes(paths, case_folded):  # (first: a trailing-dot name must not hide them)
        same = kind == "same"
        what = f"files {a!r} and {b!r}" if same else f"the file {a!r} and the folder of {b!r}"
        raise BadInput(f"{root}: {what} differ only in case or Unicode form: a checkout on a case-insensitive file "
                       f"system (macOS, Windows) {'would write one over the other' if same else 'cannot write both'}",
                       "rename one of them")
    for a, b, kind in folded_clashes(paths):  # said, not refused: a folder an older mvc took commits again
        same = kind == "same"
        what = f"files {a!r} and {b!r}" if same else f"the file {a!r} and the folder of {b!r}"
        warnings.warn(f"{root}: {what} differ only in trailing dots or spaces (which Windows drops): a checkout on "
                      f"Windows {'would write one over the other' if same else 'cannot write both'}; rename one of them")


def _refuse_unreadable(err: OSError):
    """os.walk's error hook: a directory that cannot be listed fails the commit, never drops files."""
    raise BadInput(f"{err.filename}: cannot read this directory: {err.strerror}", "nothing was committed")


def inside_repository_dir(path: str) -> bool:
    """True for a path in (or equal to) the `.mvc` directory of a repository."""
    p = os.path.realpath(path)
    while True:
        if os.path.basename(p) == ".mvc" and os.path.isdir(os.path.join(p, "objects")):
            return True
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent


def input_bytes(value) -> int:
    """Bytes a commit of `value` will read (for progress bars); 0 when unknown."""
    if isinstance(value, (str, os.PathLike)):
        p = os.fspath(value)
        if os.path.isfile(p):
            return os.path.getsize(p)
        total = 0
        for dirpath, dirnames, files in os.walk(p):
            dirnames[:] = [d for d in dirnames if not is_reserved_segment(d)]
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                         if os.path.isfile(os.path.join(dirpath, f)))
        return total
    try:
        from .tensors import module_state
        state = module_state(value)[0]
        return sum(t.numel() * t.element_size() for t in state.values())
    except Exception:
        return 0


def build_tree(store: ObjectStore, name: str, value, progress: Progress | None = None) -> dict:
    """The tree object (a dict) for component `name` from a path, state dict or module."""
    check_new_component_name(name)
    ing = Ingest(store, progress)
    arch = config = abi = meta = None
    kind = None
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.lexists(path):
            raise BadInput(f"{path}: no such file or directory")
        if inside_repository_dir(path):
            raise BadInput(f"{path} is inside an mvc repository's own .mvc directory",
                           "commit model files, not repository internals")
        ing.path(path)
        meta, kind = ing.meta, ing.kind
    else:
        from .tensors import check_module_fits, module_state, optimizer_state
        optimizer = optimizer_state(value)
        if optimizer is not None:  # an optimizer before its first step has no tensors yet: still stored
            (state, meta), kind = optimizer, "optimizer"
        else:
            state, arch, config, abi, kind = module_state(value)
            if not state:
                raise BadInput(f"component {name!r} has no tensors")
            if arch is not None:
                check_module_fits(arch, config, state, name)
        ing.state_dict(MEMORY_FILE, state)
    return tree_object(kind or default_kind(name), ing.tensors(), ing.files, arch=arch, config=config,
                       abi=abi, meta=meta)


# -- writing trees back out ------------------------------------------------------------------
def file_chunks(store: ObjectStore, tree: dict, relpath: str, whole: bool = False):
    """Yield the byte chunks that rebuild one file of a tree exactly, verifying each blob. A large
    packed blob comes a batch at a time (see ObjectStore.pieces: each chunk good until the next is
    asked for, a damaged blob's CorruptObject raised after its last chunk) unless `whole` (every
    blob decoded and verified before any of its bytes is handed out, for a reader that cannot take
    them back, such as standard output)."""
    entry = tree["files"][relpath]
    if entry["format"] == "raw":
        if whole:
            yield memoryview(store.view(entry["id"]))  # mapped, not read whole, where the store can
        else:
            yield from store.pieces(entry["id"])
        return
    header, parsed, by_name = _file_layout(store, tree, relpath)
    missing = [e.name for e in parsed.tensors if e.name not in by_name]
    if missing:
        raise CorruptObject(f"tree lacks tensor {missing[0]!r} of {relpath}")
    yield header
    for e in parsed.tensors:
        t = by_name[e.name]
        if whole:
            view, blob = tensor_blob(store, t, e.name)
            _check_body_size(t, e, blob)
            chunk = memoryview(view)[blob.begin: blob.end]
            del view  # the chunk alone holds the bytes: a reader that drops it before asking for the
            yield chunk  # next one (as the writers here do) frees a decoded pack object before the
            del chunk  # next one is made
        else:
            yield from tensor_pieces(store, t, e)


class ProgressOnce:
    """A progress callback for work `streamed_else_whole` may run twice: after `restart()` the
    bytes are reported only past what an earlier try reported (a bar never overshoots)."""

    def __init__(self, progress: Callable[[int], None] | None):
        self.progress, self.reported, self.passed = progress, 0, 0

    def restart(self) -> None:
        self.passed = 0

    def __call__(self, nbytes: int) -> None:
        self.passed += nbytes
        if self.progress and self.passed > self.reported:
            self.progress(self.passed - self.reported)
            self.reported = self.passed


def streamed_else_whole(run: Callable[[bool], object]):
    """run(whole=False) and, should a large packed object read a batch at a time prove damaged
    (CorruptObject, after its last batch), run(whole=True): a whole read takes another good copy
    where there is one (another pack, a pack rewritten meanwhile), as every other read does, or
    raises. `run` starts afresh each time (a file it writes is emptied first)."""
    try:
        return run(False)
    except CorruptObject:
        return run(True)


def _check_body_size(t: dict, e: stf.TensorEntry, blob: stf.TensorEntry) -> None:
    if blob.end - blob.begin != e.end - e.begin:
        raise CorruptObject(f"blob {t['id'][:12]} has the wrong size for {e.name!r}")


def tensor_pieces(store: ObjectStore, t: dict, e: stf.TensorEntry):
    """The data bytes of the tensor blob tree entry `t` names, for the tensor `e` of a file's
    header, in pieces as store.pieces hands them out (a large packed blob a batch at a time),
    once the blob's own header has been checked as tensor_blob checks it."""
    oid, head, blob = t["id"], bytearray(), None
    size = store.size(oid)
    need = 8  # (then the whole header: 8 + its length)
    for piece in store.pieces(oid):
        mv, at = memoryview(piece).cast("B"), 0
        while blob is None and at < len(mv):
            take = min(len(mv) - at, need - len(head))
            head += mv[at: at + take]
            at += take
            if len(head) == 8 and need == 8:
                n = int.from_bytes(head, "little")
                need = 8 + n if 8 + n <= min(size, 8 + stf.MAX_HEADER_BYTES) else 8
            if len(head) == need:
                blob = _parsed_blob(t, e.name, bytes(head), size)
                if blob.begin != need or blob.end != size:
                    raise CorruptObject(f"blob {oid[:12]} of {e.name!r} is not a canonical tensor blob")
                _check_body_size(t, e, blob)
        if blob is not None and at < len(mv):
            yield mv[at:]
    if blob is None:
        raise CorruptObject(f"blob {oid[:12]} of {e.name!r} is shorter than its header")


def tensor_blob(store: ObjectStore, t: dict, name: str, **view_options):
    """(verified bytes, parsed blob entry) of the tensor a tree entry `t` names; CorruptObject when
    that object is not a canonical tensor blob of the entry's dtype and shape (a tree pointing at
    the wrong object hashes right all the same: only this check catches it)."""
    view = store.view(t["id"], **view_options)
    return view, _parsed_blob(t, name, view, len(view))


def _parsed_blob(t: dict, name: str, data, size: int) -> stf.TensorEntry:
    """The entry of blob `data` (its first bytes; `size` long) that tree entry `t` names, checked
    against the entry's dtype and shape."""
    try:
        e = stf.parse_blob(data, f"blob {t['id'][:12]}", size)
    except BadInput as err:
        raise CorruptObject(f"tensor {name!r} names object {t['id'][:12]}, which is not a tensor blob: "
                            f"{err.message}", "run mvc fsck") from None
    if e.dtype != t["dtype"] or list(e.shape) != list(t["shape"]):
        raise CorruptObject(f"tensor {name!r} is {t['dtype']} {list(t['shape'])} in its tree, but the blob "
                            f"it names ({t['id'][:12]}) holds {e.dtype} {list(e.shape)}", "run mvc fsck")
    return e


def _file_layout(store: ObjectStore, tree: dict, relpath: str, parsed_headers: dict | None = None):
    """(header bytes, parsed header, {tensor name in the file: tree entry}) of a safetensors file;
    `parsed_headers` ({(header id, file size): (bytes, parsed)}) keeps what one run parsed."""
    entry = tree["files"][relpath]
    key = (entry["header"], entry["size"])
    if parsed_headers is not None and key in parsed_headers:
        header, parsed = parsed_headers[key]
    else:
        header = store.get(entry["header"])
        if len(header) < 8:
            raise CorruptObject(f"header blob {entry['header'][:12]} of {relpath} is truncated")
        try:
            parsed = stf.parse_header(header, entry["size"], f"stored header of {relpath}")
        except (BadInput, ValueError) as e:
            raise CorruptObject(f"stored header of {relpath} is unreadable: {e}") from None
        if parsed_headers is not None:
            parsed_headers[key] = header, parsed
    by_name = {t.get("name", k): t for k, t in tree["tensors"].items() if t["file"] == relpath}
    return header, parsed, by_name


def tree_problems(store: ObjectStore, tree: dict, present: Callable[[str], bool],
                  parsed_headers: dict | None = None) -> list[str]:
    """What would stop a checkout of this tree, beyond missing or damaged objects: a safetensors
    file whose header names a tensor the tree has no entry for, or one of another dtype or shape.
    Only headers for which `present(id)` holds are read (a lazy clone fetches nothing for this);
    `parsed_headers` lets many trees sharing one header (checkpoints of one model) parse it once."""
    problems = []
    for relpath, entry in sorted(tree["files"].items()):
        if entry.get("format") != "safetensors" or not present(entry["header"]):
            continue
        try:
            _header, parsed, by_name = _file_layout(store, tree, relpath, parsed_headers)
        except CorruptObject as e:
            problems.append(e.message)
            continue
        for e in parsed.tensors:
            t = by_name.get(e.name)
            if t is None:
                problems.append(f"file {relpath} has tensor {e.name!r} but the tree has no entry for it")
            elif t["dtype"] != e.dtype or tuple(t["shape"]) != tuple(e.shape):
                problems.append(f"tensor {e.name!r} of {relpath} differs from its header in dtype or shape")
    return problems


def _output_error(dest: str, e: OSError) -> BadInput | OSError:
    """What to raise for `e`, met writing `dest`: a BadInput naming what is wrong with the output
    path, or `e` itself for what is not the path's doing (the open-file limit: the CLI says so)."""
    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return e
    d = os.path.dirname(dest)
    while d and os.path.dirname(d) != d and not os.path.lexists(d):
        d = os.path.dirname(d)  # (the nearest folder on the way that is there)
    if os.path.islink(d) and not os.path.exists(d):  # (-o naming a link to nothing)
        return BadInput(f"cannot write {dest}: {d} is a symbolic link to {os.readlink(d)}, which does not exist",
                        "create its target, or remove the link")
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        in_the_way = d if d and os.path.lexists(d) and not os.path.isdir(d) else None
        why = (f"{in_the_way} is a file where the checkout needs a folder: remove it if an older checkout left it"
               if in_the_way else "a file stands where a directory is needed")
    elif isinstance(e, IsADirectoryError):
        return BadInput(f"cannot write {dest}: a folder stands there, where the checkout writes a file",
                        "mvc does not remove folders, --force neither: remove it, or choose another output path")
    elif isinstance(e, FileNotFoundError):
        why = f"{e.strerror} (was its directory removed?)"
    else:
        why = e.strerror or str(e)
    return BadInput(f"cannot write {dest or repr(dest)}: {why}",
                    "free some space and run it again" if e.errno == errno.ENOSPC else "choose another output path")


def _temp_name() -> str:
    """A new temp file's name: short whatever the file it becomes is called (a file name may take
    all 255 bytes) and unique (two checkouts into one place do not collide)."""
    return f".{os.urandom(6).hex()}.mvc-tmp"


class _ReadFailed(Exception):
    """An OSError reading the repository while a checkout writes a file (raised as itself once the
    temp files are gone; an OSError writing is said as the output path's problem)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _temp_copy(store: ObjectStore, tree: dict, relpath: str, dest: str, folder: int, tmp: str, sync: bool,
               progress: Progress | None) -> None:
    """The bytes of file `relpath` of `tree`, written to the new temp file `tmp` beside `dest`, in
    the open `folder` (fsynced if `sync`). The caller knows the name before the file is made, so
    that a signal handled just after it was made, or just after this returns, leaves nothing."""
    try:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(os.path.basename(dest), dir_fd=folder).st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", dest)
        f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder), "wb")
    except OSError as e:
        raise _output_error(dest, e) from None
    once = ProgressOnce(progress)

    def write(whole: bool) -> None:
        f.seek(0)
        f.truncate()
        once.restart()
        chunks = file_chunks(store, tree, relpath, whole)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except OSError as e:  # reading the repository (an object this user may not read): not
                raise _ReadFailed(e) from None  # the output path's fault
            with memoryview(chunk) as mv:  # in pieces: a bar moves through a 10 GB tensor too
                for at in range(0, len(mv), PIECE):
                    f.write(mv[at: at + PIECE])
                    once(min(PIECE, len(mv) - at))
            del chunk  # (see file_chunks)

    try:
        with f:
            streamed_else_whole(write)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        if isinstance(e, OSError):
            raise _output_error(dest, e) from None
        raise


def _lexists(name: str, folder: int) -> bool:
    try:
        os.lstat(name, dir_fd=folder)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _refuse_unwritable_path(base: str, dest: str) -> None:
    """No symlink on the way from `base` (the user's output directory) to `dest`, nor at `dest`;
    folders on the way (or nothing), and a regular file at `dest` (or nothing): mvc does not write
    through a link or replace a link, device, pipe or folder (`-o /dev/stdout` would replace the
    link; use `-o -`). Checked before a lazy clone downloads anything for the files."""
    path = os.path.abspath(base)
    there = path  # the output directory, or the nearest folder above it that is there, may be a
    while os.path.dirname(there) != there:  # link (the user named it), but must be a folder
        try:
            if not stat.S_ISDIR(os.stat(there).st_mode):
                raise _output_error(dest, NotADirectoryError(errno.ENOTDIR, "Not a directory", there))
            break
        except (FileNotFoundError, NotADirectoryError):
            there = os.path.dirname(there)
        except OSError:
            break
    parts = os.path.relpath(os.path.abspath(dest), path).split(os.sep)
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(st.st_mode):
            raise BadInput(f"{path} is a symbolic link; mvc does not write through or replace links",
                           "remove the link, or write into another place")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise _output_error(dest, NotADirectoryError(errno.ENOTDIR, "Not a directory", path))
    if stat.S_ISDIR(st.st_mode):
        raise _output_error(dest, IsADirectoryError(errno.EISDIR, "Is a directory", dest))
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{dest} is not a regular file (a device, pipe or socket); mvc does not replace it",
                       "use -o - to write to standard output")


def write_files(store: ObjectStore, items: list[tuple[dict, str, str]], force: bool = False,
                progress: Progress | None = None, base: str | None = None,
                unchanged: list | None = None) -> list[str]:
    """Write each (tree, file path in it, destination); returns every destination, and adds to
    `unchanged` those that already held the bytes and were left alone. A destination that already holds other
    bytes (a file the user edited, another checkout) is refused before anything is written,
    unless `force`; one that holds the same bytes is left alone; no link is written through
    below `base` (default: each destination's folder). Every file is written to a temp file
    first and the temp files are renamed into place only once all are whole: a failure (a
    damaged blob, a full disk) leaves every destination as it was and removes what it created."""
    for _tree, _relpath, dest in items:
        _refuse_unwritable_path(base if base is not None else os.path.dirname(os.path.abspath(dest)), dest)
    there = {dest: _size_of(dest) for _tree, _relpath, dest in items}
    if not force:  # a file of another size refuses before a lazy clone downloads anything
        _refuse_other_content([dest for tree, relpath, dest in items if there[dest] not in (
            None, tree["files"][relpath]["size"])])
    _prefetch(store, [tree for tree, _relpath, dest in items if there[dest] is not None])  # (to compare)
    differing, same = [], set()
    for tree, relpath, dest in items:
        try:
            held = holds_file(store, tree, relpath, dest, verified=not force)
        except BadInput:  # unreadable: --force replaces it unread
            if not force:
                raise
            held = False
        if held:
            same.add(dest)
        elif held is False and not force:
            differing.append(dest)
    _refuse_other_content(differing)
    _prefetch(store, [tree for tree, relpath, dest in items if dest not in same])  # what is written
    with OutputFolders() as folders:
        return _write_new(store, items, force, progress, base, same, folders, unchanged)


def _size_of(path: str) -> int | None:
    """The size of the regular file at `path` (not followed if a link), None for anything else."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _refuse_other_content(differing: list[str]) -> None:
    if differing:
        raise BadInput(f"{len(differing)} file(s) to write already exist with other content, e.g. {differing[0]}",
                       "pass --force to overwrite them, or write into another place; nothing was written")


def _prefetch(store: ObjectStore, trees: list[dict]) -> None:
    """Have a lazy clone fetch the blobs of `trees` at once (a store that fetches nothing ignores it)."""
    store.prefetch(oid for tree in {id(t): t for t in trees}.values() for oid in tree_blob_ids(tree))


def _write_new(store: ObjectStore, items: list[tuple[dict, str, str]], force: bool, progress: Progress | None,
               base: str | None, same: set, folders: OutputFolders, unchanged: list | None) -> list[str]:
    """write_files once the destinations are checked: each file not in `same` through a temp file
    in its folder, opened by `folders` (below `base`, no link followed), then all put in place."""
    # absolute once: a relative path made absolute at each use would change with the working
    # directory (a callback or another thread calling os.chdir), temp files one place, renames another
    folder_paths = {dest: os.path.dirname(os.path.abspath(dest)) for _t, _r, dest in items}
    root = os.path.abspath(base) if base is not None else None

    def open_folder(path: str) -> int:  # (good until the next call: see OutputFolders)
        return folders.open(path, root or path)

    def folder_of(dest: str) -> int:
        return open_folder(folder_paths[dest])

    temps: list[tuple[str, str]] = []  # (temp file name in dest's folder, dest)
    renamed: list[tuple[str, bool, str | None]] = []  # (dest, replaced a file, its backup's name beside it)
    installed = False
    try:
        for _tree, _relpath, dest in items:  # (each folder opened, or made, before anything is written)
            try:
                folder_of(dest)
            except OSError as e:
                raise _output_error(dest, e) from None
        for tree, relpath, dest in items:
            if dest in same:
                if progress:
                    progress(tree["files"][relpath]["size"])
                continue
            fd = folder_of(dest)
            # a file replaced is synced first, so a crash cannot leave it empty; a new one need not be
            sync = _lexists(os.path.basename(dest), fd)
            tmp = _temp_name()
            temps.append((tmp, dest))  # (before it is made: see _temp_copy)
            _temp_copy(store, tree, relpath, dest, fd, tmp, sync, progress)
        with interrupts_deferred():  # renames, then backups removed: a Ctrl-C amid them would
            for tmp, dest in temps:  # put back only the files whose backup was still there
                renamed.append((dest, *_install(tmp, dest, folder_of(dest), force)))
            installed = True  # (from here on, the new files stand whatever happens)
            for dest, _existed, backup in renamed:
                if backup:
                    with contextlib.suppress(OSError, MvcError):
                        os.unlink(backup, dir_fd=folder_of(dest))
            for path in dict.fromkeys(folder_paths.values()):
                with contextlib.suppress(OSError, MvcError):
                    _remove_stale_temps(open_folder(path))
    except BaseException as e:
        if installed:  # (a Ctrl-C held back while the files went into place)
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, InterruptedAfterLanding):
                raise InterruptedAfterLanding(f"writing all {len(items)} files", "they stand: the output is "
                                              "complete") from None
            raise
        for tmp, dest in temps:
            with contextlib.suppress(OSError, MvcError):
                os.unlink(tmp, dir_fd=folder_of(dest))  # (the ones already renamed are gone from here)
        for dest, existed, backup in reversed(renamed):  # the folder as it was: files replaced put
            name = os.path.basename(dest)                  # back, new ones removed
            with contextlib.suppress(OSError, MvcError):
                fd = folder_of(dest)
                if backup:
                    os.replace(backup, name, src_dir_fd=fd, dst_dir_fd=fd)
                elif not existed:
                    os.unlink(name, dir_fd=fd)
        for path in reversed(folders.created):
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only if empty: another program may have put files there meanwhile
        if isinstance(e, _ReadFailed):
            raise e.error from None
        if isinstance(e, OSError):
            raise _output_error(e.filename or "", e) from None
        raise
    if unchanged is not None:
        unchanged += [dest for _tree, _rel, dest in items if dest in same]
    return [dest for _tree, _rel, dest in items]


_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _appeared(dest: str) -> BadInput:
    return BadInput(f"{dest} appeared while this checkout was writing (another checkout into the same place?): "
                    "it was left as it is", "nothing was written; run it again, or pass --force to overwrite it")


def _install(tmp: str, dest: str, folder: int, force: bool) -> tuple[bool, str | None]:
    """Put the whole temp file `tmp` (a name in the open `folder`) in place as `dest`, also in it;
    returns (whether it replaced a file, the name of that file's backup beside it: a hard link,
    or the file itself renamed aside where the file system makes no hard links). Without `force`
    `dest` was absent when checked: it is linked into place, which fails rather than replace a
    file another checkout or program put there meanwhile (BadInput); a file system without hard
    links gets a rename."""
    name = os.path.basename(dest)
    if not force:
        try:
            os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            raise _appeared(dest) from None
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise _output_error(dest, e) from None
            if _lexists(name, folder):  # (no hard links here: a rename, checked first)
                raise _appeared(dest) from None
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            return False, None
    existed = _lexists(name, folder)
    if existed:  # modes are not committed: a file replaced keeps its own (a 0600 one stays private)
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(os.lstat(name, dir_fd=folder).st_mode), dir_fd=folder)
    backup, aside = _backup_beside(name, folder) if existed else (None, False)
    try:
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as e:  # name the file the user asked for, not the temp file
        if backup:
            with contextlib.suppress(OSError):
                if aside:
                    os.replace(backup, name, src_dir_fd=folder, dst_dir_fd=folder)
                else:
                    os.unlink(backup, dir_fd=folder)
        raise _output_error(dest, e) from None
    return existed, backup


def _backup_beside(name: str, folder: int) -> tuple[str | None, bool]:
    """(the name of a backup of file `name` of the open `folder`, made beside it, that a failed
    checkout puts back; whether the file itself was renamed aside for it). A hard link
    (`.*.mvc-bak`) where the file system makes them: a killed checkout's link goes as its temp
    files do; else the file renamed aside (`.*.mvc-old`; vfat, exFAT): one a killed checkout
    leaves may be the only copy of that file, and is kept. None where neither can be made."""
    stem = f".{os.urandom(6).hex()}.mvc-"
    try:
        os.link(name, stem + "bak", src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        return stem + "bak", False
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            return None, False
    try:
        os.rename(name, stem + "old", src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        return None, False
    return stem + "old", True


_TEMP_NAME = re.compile(r"^\.[0-9a-f]{12}\.mvc-(tmp|bak|old)$")
STALE_TEMP_S = 3600.0  # a checkout's temp file this old was left by a killed process


def _remove_stale_temps(folder: int) -> None:
    """Remove temp files a killed checkout or export left in the open `folder` (named as
    _temp_name names them, older than STALE_TEMP_S: a running one's are younger). A backup link's
    age counts from its making (the change time of the file's links): it links to a file that may
    be years old. A file renamed aside (`.mvc-old`) is kept: it may be the only copy of a file a
    killed checkout was replacing."""
    now = time.time()
    try:  # (listed through a readable descriptor: `folder` may be an O_PATH one)
        listing = os.open(".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), dir_fd=folder)
    except OSError:
        return  # (a folder that may be written but not listed)
    try:
        names = [n for n in os.listdir(listing) if _TEMP_NAME.match(n) and not n.endswith(".mvc-old")]
    except OSError:
        return
    finally:
        os.close(listing)
    for name in names:
        with contextlib.suppress(OSError):
            st = os.lstat(name, dir_fd=folder)
            if now - (st.st_ctime if name.endswith(".mvc-bak") else st.st_mtime) > STALE_TEMP_S:
                os.unlink(name, dir_fd=folder)


def stray_files(folders: list[str], written: list[str], temps: list | None = None) -> list[str]:
    """Files under `folders` (a checkout's component folders) that the checkout did not write
    (left there by an earlier checkout); the temp files of other checkouts (a killed one's, or one
    running now) go to `temps` instead, as (path, size)."""
    mine = {os.path.abspath(p) for p in written}  # (once for all folders: a checkout of thousands
    out = []                                        # of components took time quadratic in them)
    for folder in folders:
        for dirpath, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not is_reserved_segment(d)]  # (.git, .mvc: never committed)
            for name in files:
                path = os.path.abspath(os.path.join(dirpath, name))
                if path in mine:
                    continue
                if not _TEMP_NAME.match(name):
                    out.append(path)
                elif temps is not None and not name.endswith(".mvc-old"):  # (.mvc-old: see _remove_stale_temps)
                    with contextlib.suppress(OSError):
                        temps.append((path, os.lstat(path).st_size))
    return sorted(out)


# files a folder of model weights holds; a bare `.bin` only beside a Hugging Face config or index
# (token data is `.bin` too, e.g. nanoGPT's train.bin)
MODEL_FILE_SUFFIXES = (SAFETENSORS_SUFFIX, ".pt", ".pth", ".ckpt", ".gguf")
STALE_SCAN_DEPTH, STALE_SCAN_FOLDERS = 3, 2000  # how far a checkout looks for other components' folders
STALE_NAME_COMMITS = 2000  # how many commits near it a checkout reads for the component names they hold


def _holds_model_files(files: list[str]) -> bool:
    lower = [f.lower() for f in files]
    return any(f.endswith(MODEL_FILE_SUFFIXES) for f in lower) or (
        any(f.endswith(".bin") for f in lower) and any(f == "config.json" or f.endswith(".index.json") for f in lower))


def stale_component_folders(out_dir: str, names: list[str], others: set[str]) -> list[str]:
    """Folders under `out_dir` (a checkout of components `names`), outside every component's
    folder, named as one of the components `others` (those of commits near it), that directly hold
    model files: what an earlier checkout of a commit with another component left (a checkout
    writes only the components it has), a folder above a nested component (`brick` when the commit
    has `brick/python`) included; not a folder of the user's (what a component was committed
    from, when the checkout goes into the project). Looks STALE_SCAN_DEPTH levels down and at
    STALE_SCAN_FOLDERS folders at most (the output folder may be a whole project)."""
    comps = {tuple(n.split("/")) for n in names}
    above = {c[:i] for c in comps for i in range(1, len(c))}
    out, seen = [], 0
    for dirpath, dirs, files in os.walk(out_dir):
        seen += 1
        if seen > STALE_SCAN_FOLDERS:
            break
        rel = tuple(os.path.relpath(dirpath, out_dir).split(os.sep)) if dirpath != out_dir else ()
        if rel and "/".join(rel) in others and _holds_model_files(files):
            out.append(dirpath)
            if rel not in above:  # (what is below it is named with it)
                dirs[:] = []
                continue
        dirs[:] = [d for d in sorted(dirs) if not is_reserved_segment(d) and rel + (d,) not in comps
                   and len(rel) < STALE_SCAN_DEPTH]
    return out


def checkout_paths(trees: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(component, file path in it, path under the checkout directory) for every file of `trees`
    ({component name: tree}), refusing unsafe paths and two files landing on one path (or a file
    where another needs a directory), which nesting component names could otherwise cause."""
    out = []
    files: dict[str, str] = {}  # checkout path -> component writing a file there
    dirs: dict[str, str] = {}   # checkout path -> a component needing a directory there
    for name in sorted(trees):
        for relpath in sorted(trees[name]["files"]):
            check_relpath(relpath)
            path = f"{name}/{relpath}"
            segs = path.split("/")
            parents = ["/".join(segs[:i]) for i in range(1, len(segs))]
            other = files.get(path) or dirs.get(path) or next((files[d] for d in parents if d in files), None)
            if other is not None:
                raise BadInput(f"components {other!r} and {name!r} both write {path} or a directory above it",
                               "check them out one at a time with mvc checkout REV -c NAME")
            files[path] = name
            dirs.update((d, name) for d in parents)
            out.append((name, relpath, path))
    return out


def holds_file(store: ObjectStore, tree: dict, relpath: str, dest: str, verified: bool = True) -> bool | None:
    """Whether `dest` already holds exactly the bytes a checkout of `relpath` would write (None
    when nothing is there). Compared as a stream, so a re-run checkout rewrites nothing. A blob
    streamed from a pack is verified only after its last piece: `verified` reads on past a
    difference, so that a damaged object is said to be damaged, not the file to hold other bytes
    (a forced checkout, which reads it all again to write it, need not)."""
    try:
        st = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISDIR(st.st_mode):
        return None  # the write reports it
    if not stat.S_ISREG(st.st_mode) or st.st_size != tree["files"][relpath]["size"]:
        return False
    piece = 1 << 20  # compared a piece at a time: a 10 GB tensor is never read whole

    def compare(whole: bool) -> bool:
        differs = False
        with open(dest, "rb") as f:
            for chunk in file_chunks(store, tree, relpath, whole):
                with memoryview(chunk) as mv:
                    for at in range(0, 0 if differs else len(mv), piece):
                        with mv[at: at + piece] as part:  # (released: nothing outlives the chunk)
                            if f.read(len(part)) != part:
                                if whole or not verified:
                                    return False
                                differs = True
                                break
                del chunk  # (see file_chunks)
            return not differs and not f.read(1)
    try:
        return streamed_else_whole(compare)
    except PermissionError:
        raise BadInput(f"cannot read {dest} to compare it with the file a checkout writes there: "
                       "permission denied", "pass --force to replace it, or write into another place; "
                       "nothing was written") from None

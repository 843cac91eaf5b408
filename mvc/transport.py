"""Transports: the far side of a remote (objects + refs), and the store a lazy clone reads through.

A remote holds a bare repository layout, the same files as a local `.mvc` directory:

    config               [core] format = 1, bare = true
    HEAD                 ref: refs/heads/<default branch>
    objects/<2>/<62>     loose objects (b3sum of the file equals its name); packs come later
    refs/heads/*         one 64-hex id per file
    refs/tags/*
    certs/<2>/<62>       the certificate ids attached to a commit, one per line
    graph/<8 digits>     (S3) each commit pushed and its parents: see mvc.remote.commit_graph

A transport moves bytes and never trusts them: `get` returns what the far side holds and the
caller (mvc.remote, LazyRemoteStore) verifies it against its BLAKE3 id before storing anything.
Mutable files (refs, HEAD, certificate indexes) only change by compare-and-swap: `read_file`
returns a token and `cas_file` writes only if the file still matches it. `DirectoryTransport`
implements that with the lock files of mvc.files (the content read is the token);
`mvc.transport_s3.S3Transport` (imported only for s3:// URLs) with S3 conditional writes (the
ETag is the token).

Directory objects are written to objects/tmp, fsynced and renamed, so an object is whole under
its name or absent; the new directory entries are synced together by `flush`, which the pusher
calls after each phase (blobs, trees, commits) and before any ref moves. A directory holding an
mvc repository (with .mvc) works as a remote too: its branches move as its owner's do, with reflog
entries (a deleted branch's reflog is retired, so the owner's gc keeps its commits for a while).
Its owner may collect garbage while a push is in flight, whose objects nothing references until
the branch moves: the push holds the repository's writers lock (shared, see Repo.writing and
`writing` below), so a gc with a short grace waits for it, and a gc with the default grace deletes
only under that lock, deciding on what the refs reach then; `has` also renews the time of a loose
object it finds there (packs are left alone: see PackStore.freshen).
`put(..., replace=True)` (push --repair) renames a good copy over a damaged loose one; an object
that only a damaged pack holds gets a loose copy, which reads take before any packed one.
"""
from __future__ import annotations

import configparser
import contextlib
import errno
import mmap
import itertools
import os
import re
import shlex
import shutil
import threading
import unicodedata
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlparse
from typing import Callable


from . import forks
from .config import check_extensions, new_parser as new_config_parser
from .errors import (BadInput, BadName, ConfigError, CorruptObject, CredentialsRefused, FormatTooNew, MvcError,
                     ObjectMissing, RefConflict, TooLarge)
from .files import LockFile, atomic_write, is_atomic_temp, makedirs, prune_empty_dirs, shared_or_exclusive, walk
from .listing_cache import ListingCache
from .idlines import append_id_lines, append_sized_lines, parse_id_lines, parse_sized_lines
from .objects import check_ref_name, hash_bytes, is_oid, new_hasher
from .pack import PACK_DIR, PackStore
from .quoting import shown
from .refs import RefStore, moves_said_elsewhere
from .store import LooseStore, ObjectStore, freshen_file, fsync_dir, new_object_file
from .transfer import BATCHED_BELOW

REMOTE_FORMAT = 1
REPAIR_HINT = ("the remote is damaged: fetch from another copy; mvc push --repair from a repository that "
               "has the history whole re-sends what the remote lacks or holds damaged")
ABSENT = None  # the token of a file that does not exist
LAYOUT_NAMES = frozenset({"HEAD", "config", "objects", "refs", "certs", "graph"})  # what a remote's layout holds
REF_READ_JOBS = 16  # refs a listing reads at once (each a request on S3)
RENEW_AGAIN_S = 30.0  # a lazy clone's credentials refused again after a renewal: read anew after this long
STALE_TMP_S = 3600.0  # a bare remote's temp object file untouched this long belongs to a killed push


def hash_file(f) -> str:
    """The id of what an open (readable) file holds, mapped rather than read into memory."""
    f.flush()
    if not os.fstat(f.fileno()).st_size:
        return hash_bytes(b"")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return hash_bytes(mm)


def check_received(oid: str, got: str, where: str) -> None:
    """An object from remote `where` whose bytes hash to `got` is refused unless that is its id."""
    if got != oid:
        raise CorruptObject(f"object {oid} on remote {where} is corrupt: its content hashes to {got[:12]}; "
                            "it was not stored", REPAIR_HINT)


def received(read: Callable[[], bytes], oid: str, where: str) -> bytes:
    """`read()`'s bytes of object `oid` from remote `where`, verified; read once more when they do
    not hash to the id (damaged in transit: the remote's copy may be good) before the remote's copy
    is called damaged."""
    data = read()
    if hash_bytes(data) != oid:
        data = read()
        check_received(oid, hash_bytes(data), where)
    return data


def received_into(read_into: Callable[[object], int], f, oid: str, where: str) -> int:
    """`read_into(f)` of object `oid` from remote `where` into the empty file `f`, verified as
    `received` verifies (emptied and read once more)."""
    n = read_into(f)
    if hash_file(f) != oid:
        f.seek(0)
        f.truncate()
        n = read_into(f)
        check_received(oid, hash_file(f), where)
    return n


def _repository_layout(path: str) -> bool:
    """Whether the layout at `path` is a repository's .mvc, not a bare remote: by its name, or by
    its config, which a bare remote's says (`bare = true`): a .mvc reached through a link, or one
    that is itself a link to another disk, is still its owner's."""
    if ".mvc" in (os.path.basename(path), os.path.basename(os.path.realpath(path))):
        return True
    try:
        with open(os.path.join(path, "config"), encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return False
    return re.search(r"^\s*\[core\]", text, re.M) is not None and \
        re.search(r"^\s*bare\s*=\s*true\s*$", text, re.M | re.I) is None


def remote_config_bytes() -> bytes:
    return f"[core]\nformat = {REMOTE_FORMAT}\nbare = true\n".encode()


def check_full_ref(ref: str) -> str:
    """refs/heads/NAME or refs/tags/NAME with a valid NAME."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            check_ref_name(ref[len(prefix):])
            return ref
    raise BadName(f"not a branch or tag ref: {ref!r}")


def parse_ref_value(ref: str, data: bytes | None) -> str | None:
    if data is None:
        return None
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return None
    if not is_oid(text):
        raise CorruptObject(f"remote ref {ref} holds {text[:40]!r}, not an object id",
                            "push with --force to replace it, or a branch with push --delete to remove it")
    return text


DAMAGED = object()  # the value of a remote ref that holds no object id
MAX_FILE_BYTES = 16 << 20  # refs, HEAD, config and certificate indexes are far smaller


def _moved_there(ref: str, current: str | None, expected: str | None) -> RefConflict:
    """The error of a remote ref that no longer holds what the mover read."""
    return RefConflict(f"remote {ref} is {current[:12] if current else '(none)'}, expected "
                       f"{expected[:12] if expected else '(none)'}", "fetch and try again")


def check_size(oid_or_name: str, size: int | None, max_size: int | None, url: str) -> None:
    """Refuse (TooLarge) an object or file the remote holds with more bytes than the reader
    expects, before reading it: a remote must not make mvc store or allocate unbounded data."""
    if max_size is not None and size is not None and size > max_size:
        what = f"object {oid_or_name[:12]}" if is_oid(oid_or_name) else oid_or_name
        raise TooLarge(f"{what} on remote {url} is {size} bytes, more than the {max_size} expected; "
                            "nothing was stored", REPAIR_HINT)


class Transport:
    """The far side of a remote. Subclasses provide the byte-level primitives below."""

    url = ""
    listing_cache: ListingCache | None = None  # set by whoever opens it for a repository (mvc.remote)
    keeps_commit_graph = False  # pushes record their commits in graph/ (mvc.remote.commit_graph): S3's

    # -- primitives ---------------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        raise NotImplementedError

    def get(self, oid: str, max_size: int | None = None) -> bytes:
        """The bytes the remote holds for `oid`, unverified; ObjectMissing when absent;
        CorruptObject (nothing read past it) when the remote holds more than `max_size` bytes."""
        raise NotImplementedError

    def get_into(self, oid: str, f, max_size: int | None = None) -> int:
        """Write the remote's bytes for `oid` (unverified) into the open file `f`; returns the count.
        Lets big objects stream to disk instead of passing through memory whole."""
        data = self.get(oid, max_size)
        f.write(data)
        return len(data)

    def digest(self, oid: str) -> tuple[str, int]:
        """(BLAKE3 hex, size) of the bytes the remote holds for `oid`, read as a stream (push
        --repair compares it with the id); ObjectMissing when absent, CorruptObject when the
        remote's own storage reports the copy damaged."""
        sink = _HashSink()
        n = self.get_into(oid, sink)
        return sink.hexdigest(), n

    def put(self, oid: str, data: bytes, replace: bool = False) -> None:
        """Store an object atomically (readers see all of it or nothing); idempotent. A copy
        already there is kept unless `replace` (push --repair overwriting a damaged copy)."""
        raise NotImplementedError

    def put_file(self, oid: str, path: str, replace: bool = False) -> None:
        """Store the object held in local file `path` (already verified by the caller)."""
        with open(path, "rb") as f:
            self.put(oid, f.read(), replace=replace)

    def read_file(self, name: str) -> tuple[bytes | None, object]:
        """(content or None, token for cas_file) of a mutable file such as refs/heads/main."""
        raise NotImplementedError

    def cas_file(self, name: str, data: bytes | None, token):
        """Write (None: delete) `name` only if it still matches `token`; else RefConflict. Returns
        the version it now has where the far side says (an S3 ETag), else None."""
        raise NotImplementedError

    def list_versions(self, prefix: str, flat: bool = False) -> dict[str, str | None]:
        """The files under `prefix` (`flat`: not in its subfolders), each with a version that changes
        whenever it does (an S3 ETag), or None where the far side gives none (a directory: reading
        is as cheap)."""
        return dict.fromkeys(n for n in self.list_files(prefix) if not flat or "/" not in n[len(prefix):])

    def read_listed(self, name: str, version: str | None) -> bytes | None:
        """`read_file`'s data of a file a listing showed at `version`: from `listing_cache` when it
        holds that version, else read (and cached with the version the read returned)."""
        cache = self.listing_cache
        if version is None or cache is None:
            return self.read_file(name)[0]
        data = cache.get(name, version)
        if data is None:
            data, token = self.read_file(name)
            if data is not None and isinstance(token, str):
                cache.put(name, token, data)
        return data

    def save_listing_cache(self, prefix: str, listed) -> None:
        if self.listing_cache is not None:
            self.listing_cache.keep_only(prefix, listed)
            self.listing_cache.save()

    def list_files(self, prefix: str) -> list[str]:
        """Names of the mutable files under `prefix` (refs/, certs/); never used for objects."""
        raise NotImplementedError

    def flush(self, parallel_map=map) -> None:
        """Make every object put so far durable (called before a ref may point at them)."""

    @contextlib.contextmanager
    def phase(self):
        """A block of puts (a batch of one phase of a push) whose small objects may be made durable
        together when it ends, as a commit's are (a directory remote: one syncfs); on an error, what
        was put whole is still kept. Where there is nothing to batch (S3), a plain block."""
        yield

    def writing(self):
        """A context a push holds from before it lists the remote's refs until its refs and
        certificate indexes are written: the objects it sends, and those it finds there, must not
        be collected meanwhile. Only a directory holding an mvc repository has a gc to hold off."""
        return contextlib.nullcontext()

    def close(self) -> None:
        pass

    # -- layout -------------------------------------------------------------------------------
    def describe(self) -> str:
        return self.url

    def is_repository(self) -> bool:
        data, _ = self.read_file("config")
        if data is None:
            return False
        cfg = new_config_parser()
        try:
            cfg.read_string(data.decode("utf-8"))
            fmt = cfg.getint("core", "format")
        except (configparser.Error, ValueError, UnicodeDecodeError):
            raise CorruptObject(f"{self.describe()}: the remote's config is unreadable",
                                "is this an mvc remote?") from None
        if fmt < 1:
            raise CorruptObject(f"{self.describe()}: the remote's config sets format {fmt}, a format no mvc writes",
                                "is this an mvc remote?")
        if fmt > REMOTE_FORMAT:
            raise FormatTooNew(f"remote {self.describe()} has format {fmt}; this mvc reads up to "
                               f"{REMOTE_FORMAT}", "upgrade mvc")
        check_extensions(cfg, f"remote {self.describe()}")
        return True

    def require_repository(self) -> None:
        if not self.is_repository():
            raise MvcError(f"no mvc repository at {self.describe()}",
                           "check the URL; a first mvc push creates it")

    def lazy_clone_origin(self) -> str | None:
        """Where the repository serving as this remote fetches its blobs from, when it is a lazy
        clone (it may lack blobs it has not fetched: no damage); None otherwise."""
        return None

    def holds_files(self) -> bool:
        """Whether anything at all is stored at this remote's location."""
        return bool(self.list_files(""))

    def init(self, default_branch: str) -> None:
        """Create the bare layout when missing (idempotent; safe against a concurrent init).
        A location holding other data is refused: mvc never mixes its layout into it. A HEAD that
        an init killed after writing the config did not write is written now. HEAD comes last, once
        the storage's conditional writes are checked: an init that stopped before it (a failed
        check, a kill) checks them again."""
        if self.is_repository():
            if self.read_file("HEAD")[0] is None:
                self.check_conditional_writes()
                with contextlib.suppress(RefConflict):
                    self.cas_file("HEAD", f"ref: refs/heads/{default_branch}\n".encode(), ABSENT)
            return
        self.refuse_nested()
        if self.holds_files() and not self.is_repository():  # (re-checked: a concurrent init)
            raise BadInput(f"remote {self.describe()} is not empty and is not an mvc repository",
                           "use an empty or new location")
        with contextlib.suppress(RefConflict):  # (created meanwhile by another pusher, or this write landed
            self.cas_file("config", remote_config_bytes(), ABSENT)  # and its answer was lost)
        self.check_conditional_writes()
        try:
            self.cas_file("HEAD", f"ref: refs/heads/{default_branch}\n".encode(), ABSENT)
        except RefConflict:
            pass

    def check_conditional_writes(self) -> None:
        """Called by `init` once the config is there, before HEAD: refuse a storage whose conditional
        writes do not hold (refs could not move safely). Directories hold them by construction."""

    def enclosing_repository(self) -> str | None:
        """The location of an mvc repository whose layout this location lies inside (its
        refs/tags/x, say: a folder LAYOUT_NAMES names), or None. (Beside the layout, e.g.
        REMOTE/project, is not inside it.)"""
        return None

    def refuse_nested(self) -> None:
        """A new remote inside another one's layout would read to that one as refs and objects it
        does not hold (its clones failed as "damaged"): refused."""
        outer = self.enclosing_repository()
        if outer is not None:
            raise BadInput(f"remote {self.describe()} lies inside the mvc repository at {outer}",
                           "push to a location outside it")

    def head_target(self) -> str | None:
        data, _ = self.read_file("HEAD")
        text = (data or b"").decode("utf-8", "replace").strip()
        return text[len("ref: "):] if text.startswith("ref: ") else None

    # -- refs ---------------------------------------------------------------------------------
    def read_ref(self, ref: str) -> str | None:
        data, _ = self.read_file(check_full_ref(ref))
        return parse_ref_value(ref, data)

    def list_refs(self, unreadable: set | None = None) -> dict[str, str]:
        """Branches and tags; a ref holding no object id is left out with a warning, so that one
        damaged ref does not block the others (`unreadable`, a set, receives its name: it is there,
        and a fetch must not take it for deleted)."""
        out = {}
        listed = self.list_versions("refs/")
        names = sorted(listed)

        def read(name):  # (each read a round trip on S3: several at once; none for a ref cached as listed)
            try:
                check_full_ref(name)
                return parse_ref_value(name, self.read_listed(name, listed[name])), None
            except (BadName, CorruptObject) as e:
                return None, e
        with ThreadPoolExecutor(max_workers=max(1, min(REF_READ_JOBS, len(names)))) as pool:
            read_back = list(pool.map(read, names))
        self.save_listing_cache("refs/", names)
        for name, (value, e) in zip(names, read_back):
            if isinstance(e, BadName):
                if name.startswith(("refs/heads/", "refs/tags/")) and not name.endswith(".lock") \
                        and "/." not in name:  # not a push's lock or temp file, nor a remote-tracking ref
                    warnings.warn(f"skipped {name[:80]!r} on {self.describe()}: {e.message}")
            elif e is not None:
                warnings.warn(f"{e.message} on {self.describe()}; ignored ({e.hint})")
                if unreadable is not None:
                    unreadable.add(name)
            elif value:
                out[name] = value
        return dict(sorted(out.items()))

    def update_ref(self, ref: str, new: str | None, expected: str | None, replace_damaged: bool = False,
                   message: str = "", author: str = "") -> None:
        """Move `ref` to `new` (None deletes it) only if it still holds `expected`; a ref holding
        no object id is replaced only with `replace_damaged`. `message` and `author` make the
        reflog entry where the remote keeps reflogs (a repository's: see DirectoryTransport)."""
        check_full_ref(ref)
        data, token = self.read_file(ref)
        try:
            current = parse_ref_value(ref, data)
        except CorruptObject:
            if not replace_damaged:
                raise
            current = DAMAGED
        if current is not DAMAGED and current != expected:
            raise _moved_there(ref, current, expected)
        data = None if new is None else (new + "\n").encode()
        self._written(ref, self.cas_file(ref, data, token), data)

    def _written(self, name: str, version, data: bytes | None) -> None:
        """Keep what this process wrote, at the version the write returned, in the listing cache:
        the next listing need not read it back (the tag a run pushes each checkpoint)."""
        if self.listing_cache is not None and isinstance(version, str) and data is not None:
            self.listing_cache.put(name, version, data)

    # -- certificate indexes ------------------------------------------------------------------
    @staticmethod
    def cert_index_name(commit: str) -> str:
        return f"certs/{commit[:2]}/{commit[2:]}"

    def cert_index_versions(self) -> dict[str, str | None]:
        """{commit: version of its index} for the certificate indexes there (one listing)."""
        out = {}
        for name, version in self.list_versions("certs/").items():
            parts = name.split("/")
            if len(parts) == 3 and is_oid(parts[1] + parts[2]):
                out[parts[1] + parts[2]] = version
        return out

    def read_cert_indexes(self, commits: list[str], parallel_map=map, listed: dict | None = None) -> list[list[str]]:
        """The certificate ids there of each of `commits`: one listing (`listed`, from
        cert_index_versions, where the caller has it), then a read of each index that is there and
        not cached at its listed version."""
        if listed is None:
            listed = self.cert_index_versions()

        def read(commit):
            if commit not in listed:
                return []
            return parse_id_lines(self.read_listed(self.cert_index_name(commit), listed[commit]))
        out = list(parallel_map(read, commits))
        self.save_listing_cache("certs/", [self.cert_index_name(c) for c in listed])
        return out

    def add_to_cert_index(self, commit: str, ids: list[str], retries: int = 20) -> None:
        """Union `ids` into the commit's certificate index (compare-and-swap, retried)."""
        name = self.cert_index_name(commit)
        for _ in range(retries):
            data, token = self.read_file(name)
            current = parse_id_lines(data)
            merged = current + [i for i in ids if i not in current]
            if merged == current:
                return
            try:
                data = "".join(i + "\n" for i in merged).encode()
                self._written(name, self.cas_file(name, data, token), data)
                return
            except RefConflict:
                continue
        raise RefConflict(f"certificate index of {commit[:12]} on {self.describe()} kept changing", "try again")


class _HashSink:
    """A write-only file that hashes what is written (get_into's target when only the id matters)."""

    def __init__(self):
        self._h = new_hasher()

    def write(self, b) -> int:
        self._h.update(b)
        return len(b)

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _file_system_now(folder: str) -> float:
    """The time the file system at `folder` gives a file made now (this machine's clock where no
    file can be made there)."""
    probe = os.path.join(folder, f".now-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


class DirectoryTransport(Transport):
    """A remote in a directory: a bare layout, or an mvc repository (its .mvc directory is used)."""

    def __init__(self, path: str, url: str | None = None):
        path = os.path.abspath(path)
        if os.path.isdir(os.path.join(path, ".mvc")):
            path = os.path.join(path, ".mvc")
        self.root = path
        # a repository's .mvc (its owner may run gc there), not a bare remote
        self.repository = _repository_layout(path)
        self.url = url or path
        self.objects = LooseStore(os.path.join(path, "objects"), fsync=True)
        self.packs = PackStore(os.path.join(path, "objects", PACK_DIR))  # a repository's `mvc pack`
        self._dirty: set[str] = set()  # object directories whose new entries await fsync
        self._slots: dict | None = None  # the open phase's batch of small objects (LooseStore.batch_slots)

    @contextlib.contextmanager
    def phase(self):
        with self.objects.batch(keep_whole=True):
            self._slots = self.objects.batch_slots()
            try:
                yield
            finally:
                self._slots = None

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def enclosing_repository(self):
        d = os.path.dirname(self.root)
        while True:
            below = os.path.relpath(self.root, d).split(os.sep)[0]
            if os.path.basename(d) == ".mvc" or (below in LAYOUT_NAMES and all(
                    check(os.path.join(d, sub)) for check, sub in ((os.path.isfile, "config"),
                                                                   (os.path.isdir, "objects"), (os.path.isdir, "refs")))):
                return d
            parent = os.path.dirname(d)
            if parent == d:
                return None
            d = parent

    def init(self, default_branch: str) -> None:
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise BadInput(f"remote {self.url} is a file, not a directory")
        if not os.path.exists(self._path("config")):
            self.refuse_nested()  # (before any folder of the layout is made)
        if os.path.isdir(self.root) and not os.path.exists(self._path("config")) and _holds_files(self.root):
            raise BadInput(f"remote directory {self.url} is not empty and is not an mvc repository",
                           "use an empty or new directory")
        for sub in ("objects", "refs/heads", "refs/tags"):
            os.makedirs(self._path(sub), exist_ok=True)
        super().init(default_branch)

    def writing(self):
        """The repository's writers lock, shared (Repo.writing): its owner's `gc --grace` shorter
        than the default takes it exclusively, so it waits for the push (and the push for it).
        A bare remote has no owner to run gc: each push first removes the temp files that killed
        pushes left there (untouched for STALE_TMP_S; a live push keeps writing its own)."""
        if not self.repository:
            self._remove_stale_tmp()
            return contextlib.nullcontext()
        return shared_or_exclusive(os.path.join(self.root, WRITERS_LOCK), exclusive=False)

    def _remove_stale_tmp(self) -> int:
        """Remove temp object files older than STALE_TMP_S under objects/tmp, and the temp files of
        killed ref, HEAD and config writes (atomic_write's) as old; returns how many. Their
        age is told by the file system's clock (a file server's, for a shared remote), not this
        machine's: one running an hour ahead would delete a live push's temp files."""
        removed = 0
        if not os.path.isfile(self._path("config")):  # (no remote yet, or a folder that is none: its files
            return 0                                   # are not ours to sweep; the push says what it is)
        try:
            top = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        try:
            paths = [os.path.join(self.objects.tmp, n) for n in os.listdir(self.objects.tmp)]
        except (FileNotFoundError, NotADirectoryError):  # (no push has written an object yet)
            paths = []
        now = _file_system_now(self.root)
        for dirpath, _dirs, files in itertools.chain([(self.root, [], top)],
                                                     os.walk(self._path("refs"))):  # (unreadable: skipped)
            paths += [os.path.join(dirpath, n) for n in files if is_atomic_temp(n)]
        for path in paths:
            try:
                if now - os.stat(path).st_mtime >= STALE_TMP_S:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                pass
            except PermissionError:  # another user's file on a shared remote: theirs to clean
                pass
        return removed

    def has(self, oid):
        """Whether the remote holds `oid`; a loose object found gets its modification time renewed,
        so that a gc there, which keeps unreachable objects younger than its grace period, keeps it
        until the push that found it has moved its branch (see ObjectStore.freshen)."""
        return self.objects.freshen(oid, FRESHEN_S) or self.packs.freshen(oid, FRESHEN_S)

    def get(self, oid, max_size=None):
        data = self._get(oid, max_size)
        return bytes(data) if isinstance(data, memoryview) else data

    def _get(self, oid, max_size=None):
        """`get`'s bytes, or a view of the decoded pack object where it comes from a pack (no copy:
        a clone of a packed remote holds each object once)."""
        try:
            with open(self.objects.path(oid), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if max_size is not None and size > max_size and self.packs.has(oid):
                    return self._packed(oid, max_size)  # a damaged loose copy beside a packed one
                check_size(oid, size, max_size, self.url)
                data = f.read()
        except FileNotFoundError:
            return self._packed(oid, max_size)
        if self.packs.has(oid) and hash_bytes(data) != oid:  # a damaged loose copy beside a packed one
            return self._packed(oid, max_size)
        return data

    def get_into(self, oid, f, max_size=None):
        if self.packs.has(oid):  # packed (or loose and packed: whichever copy verifies)
            data = self._get(oid, max_size)
            f.write(data)
            return len(data)
        try:
            src = open(self.objects.path(oid), "rb")
        except FileNotFoundError:
            data = self._packed(oid, max_size)
            f.write(data)
            return len(data)
        with src:
            check_size(oid, os.fstat(src.fileno()).st_size, max_size, self.url)
            return _copy_file(src, f)

    def digest(self, oid):
        try:
            fd = os.open(self.objects.path(oid), os.O_RDONLY)
        except FileNotFoundError:
            data = self._packed(oid)  # decoded and verified by the pack store
            return hash_bytes(data), len(data)
        try:
            size = os.fstat(fd).st_size
            if not size:
                return hash_bytes(b""), 0
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                return hash_bytes(mm), size
        finally:
            os.close(fd)

    def _packed(self, oid, max_size=None):
        """An object not loose here, as a view of its decoded bytes: packed by `mvc pack` in a
        repository used as a remote (its index's size is checked before anything is decoded: a
        crafted entry could declare any)."""
        if self.packs.has(oid):
            try:
                check_size(oid, self.packs.size(oid), max_size, self.url)
                return self.packs.view(oid)
            except CorruptObject as e:  # its hint is for the repository's owner, not for us
                raise CorruptObject(f"{e.message}, on remote {self.url}", REPAIR_HINT
                                    + "; or repair the repository there with mvc fsck --repair-from") from None
        lazy = self.lazy_clone_origin()
        if lazy is not None:  # not fetched there yet: no damage
            raise ObjectMissing(f"object {oid} is not on remote {self.url}, a lazy clone that has not fetched it",
                                f"clone from its origin, {lazy}")
        raise ObjectMissing(f"object {oid} is missing on remote {self.url}", REPAIR_HINT)

    def lazy_clone_origin(self) -> str | None:
        if not self.repository:
            return None
        config = new_config_parser()
        try:
            config.read(os.path.join(self.root, "config"))
        except configparser.Error:
            return None
        name = promisor_remote(config)
        return None if name is None else config.get(remote_section(name), "url", fallback=name)

    def put(self, oid, data, replace=False):
        with memoryview(data) as m:
            size = m.nbytes
        self._write(oid, lambda f: f.write(data), replace, size)

    def put_file(self, oid, path, replace=False):
        """A kernel-side copy of a local object file."""
        def copy(f):
            with open(path, "rb") as src:
                _copy_file(src, f)
        self._write(oid, copy, replace, os.path.getsize(path))

    def _write(self, oid, fill, replace=False, size=None) -> None:
        """Temp file, fsync, rename: an object is whole under its name or absent. The directory
        entries are synced together in flush(): until then a power loss can only drop whole objects,
        which the next push re-sends. Within a phase, an object under BATCHED_BELOW bytes is left
        in its temp file for the phase's batch to make durable and rename. `replace` renames over a
        loose copy already there; a packed copy is left in its pack, and reads take the loose one
        first (see get)."""
        final = self.objects.path(oid)
        if not replace and freshen_file(final, FRESHEN_S):
            return
        slots = self._slots
        batched = slots is not None and size is not None and size < BATCHED_BELOW
        with new_object_file(self.objects.tmp, oid, None if batched else final, fsync=not batched) as f:
            fill(f)
        if batched:
            slots[oid] = f.name
        else:
            self._dirty.add(os.path.dirname(final))

    def flush(self, parallel_map=map):
        dirs, self._dirty = self._dirty, set()
        list(parallel_map(fsync_dir, sorted(dirs)))

    def read_file(self, name):
        try:
            with open(self._path(name), "rb") as f:
                check_size(name, os.fstat(f.fileno()).st_size, MAX_FILE_BYTES, self.url)
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None, ABSENT
        return data, data

    def cas_file(self, name, data, token):
        path = self._path(name)
        makedirs(os.path.dirname(path))  # (retried: a deletion of a sibling ref may prune a parent meanwhile)
        with LockFile(path + ".lock", what=f"{name} on remote {self.url}"):
            current, _ = self.read_file(name)
            if current != token:
                raise RefConflict(f"{name} on remote {self.url} changed meanwhile", "fetch and try again")
            if data is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                with contextlib.suppress(OSError):  # an empty folder an older mvc's deletion left
                    os.rmdir(path)
                atomic_write(path, data)
        parts = name.split("/")
        if data is None and len(parts) > 3 and parts[0] == "refs":  # refs/heads/a/b: no empty a/ stays
            prune_empty_dirs(os.path.dirname(path), self._path("/".join(parts[:2])))  # in ref a's way

    def update_ref(self, ref, new, expected, replace_damaged=False, message="", author=""):
        """In a repository, a move through its RefStore: under the same lock as its owner's moves,
        with a reflog entry, and a deleted branch's reflog retired (its commits stay safe from the
        owner's gc until the entries expire, as for a move made there)."""
        if not self.repository:
            return super().update_ref(ref, new, expected, replace_damaged)
        check_full_ref(ref)
        with moves_said_elsewhere():  # (the push or fetch says what moved on the remote)
            self._update_repository_ref(ref, new, expected, replace_damaged, message, author)

    def _update_repository_ref(self, ref, new, expected, replace_damaged, message, author):
        refs = RefStore(self.root)
        current, junk = refs.held(ref)
        if junk is not None:  # no id there (an empty file counts as none, as parse_ref_value reads it)
            if junk and not replace_damaged:
                parse_ref_value(ref, junk.encode())  # (raises CorruptObject, naming what it holds)
            if not junk and expected is not None:
                raise _moved_there(ref, None, expected)
            refs.update(ref, None, expected=junk, message=f"{message}: replaced a damaged ref", author=author)
            current = None
        elif current != expected:
            raise _moved_there(ref, current, expected)
        if new is None and current is None:
            return
        try:
            refs.update(ref, new, expected=current, message=message, author=author)
        except RefConflict:  # moved by someone else since it was read above
            raise _moved_there(ref, refs.read_raw(ref), expected) from None

    def add_to_cert_index(self, commit, ids, retries=20):
        """Append the ids the index lacks, in place, under the index's lock (mvc.idlines), as the
        repository's owner does (mvc.certindex): replacing the file (a compare-and-swap by rename)
        would lose a line the owner's `mvc ci` appends meanwhile."""
        name = self.cert_index_name(commit)
        append_id_lines(self._path(name), ids, f"{name} on remote {self.url}")

    def list_files(self, prefix):
        base = self._path(prefix.rstrip("/"))
        out = []
        for dirpath, _dirs, files in walk(base):
            for f in files:
                if f.endswith(".lock") or f.startswith("."):
                    continue
                out.append(os.path.relpath(os.path.join(dirpath, f), self.root).replace(os.sep, "/"))
        return sorted(out)


def _holds_files(root: str) -> bool:
    """Whether a directory holds any file but lock files and the temp file of a config being
    written. Those are what an init in progress, or one killed before its config was in place,
    leaves: the next init completes it."""
    for _dirpath, _dirs, files in os.walk(root):
        if any(not f.endswith(".lock") and not (f.startswith(".config.") and is_atomic_temp(f)) for f in files):
            return True
    return False


WRITERS_LOCK = "writers.lock"  # the lock of Repo.writing (mvc.repo.WRITERS_LOCK; no import upward)
FRESHEN_S = 60.0  # an object touched this recently is not touched again


def _copy_file(src, dst) -> int:
    """Copy an open file into another in the kernel where it can (sendfile), else through memory."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    offset = 0
    try:
        while offset < size:
            n = os.sendfile(dst.fileno(), src.fileno(), offset, size - offset)
            if n == 0:
                break
            offset += n
    except (AttributeError, OSError) as e:
        if offset:
            _name_destination(e, dst)
            raise
        try:
            shutil.copyfileobj(src, dst)
        except OSError as e2:
            _name_destination(e2, dst)
            raise
        return size
    return offset


def _name_destination(e: BaseException, dst) -> None:
    """A failed copy's OSError, when the write failed (a full disk, a quota, a file-size limit, a
    read-only file system), names the file it wrote: the remote's or ours (a read error is the source's)."""
    import errno
    if (isinstance(e, OSError) and not e.filename and isinstance(getattr(dst, "name", None), str)
            and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)):
        e.filename = dst.name


# -- opening transports ------------------------------------------------------------------------
def is_url(text: str) -> bool:
    return "://" in text or text.startswith(("/", ".", "~")) or os.path.isdir(text)


def _parse_url(url: str, what: str = "remote URL", hint: str = "name it in another way"):
    """urlparse's parts of `url`, or BadInput where it refuses it (ValueError: a '[' opening no IPv6
    address, a host that NFKC changes)."""
    try:
        return urlparse(url)
    except ValueError as e:
        raise BadInput(f"the {what} {url!r} cannot be read as a URL: {e}", hint) from None


def normalize_url(url: str) -> str:
    """What goes into the repository config: absolute paths; never credentials."""
    if not url.strip():
        raise BadInput("the remote URL is empty", "use a directory path, file:///PATH or s3://bucket/prefix")
    if any(unicodedata.category(c) == "Cc" for c in url):  # (urlparse drops TAB, CR and LF: s3://b/exp<TAB>1
        raise BadInput(f"the remote URL {url!r} holds a control character",  # read and wrote s3://b/exp1)
                       "name a location without tabs or line breaks")
    parsed = _parse_url(url)
    if parsed.scheme and (parsed.username or parsed.password or "@" in parsed.netloc):  # (before any message
        raise BadInput("credentials are never stored in the repository config",        # that shows the URL)
                       "use the standard AWS environment variables or ~/.aws/credentials")
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise BadInput(f"{url}: a file URL names a path on this machine (file:///PATH), not on host "
                       f"{parsed.netloc!r}")
    if parsed.scheme in ("file", "s3") and ("?" in url or "#" in url):  # (s3://b/exp#1 and #2 were one prefix)
        plain = ", or as a plain path" if parsed.scheme == "file" else ""
        raise BadInput(f"{url}: a remote's {parsed.scheme} URL may not hold '?' or '#', where a URL's path ends",
                       f"name it without them{plain}")
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else url
        return os.path.abspath(os.path.expanduser(path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BadInput(f"{url}: an S3 URL looks like s3://bucket/prefix")
        return "s3://" + url.split("://", 1)[1].rstrip("/")  # (S3://: the scheme as mvc compares it)
    raise BadInput(f"unsupported remote URL {url!r}", "use a directory path, file://PATH or s3://bucket/prefix")


def check_endpoint(endpoint: str | None, url: str | None = None) -> str | None:
    """`endpoint` as stored (an http(s) URL with no credentials), None for none; refused beside a
    `url` that is no S3 one (a directory remote has no endpoint: it would be kept and ignored)."""
    if not endpoint:
        return None
    if url is not None and not url.startswith("s3://"):
        raise BadInput(f"an endpoint is for S3 remotes (s3://bucket/prefix); {url} is a directory",
                       "leave the endpoint out")
    parsed = _parse_url(endpoint, "endpoint")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BadInput(f"endpoint {endpoint!r} is not an http(s) URL", "e.g. --endpoint http://127.0.0.1:9000")
    if parsed.username or parsed.password:
        raise BadInput("credentials are never stored in the repository config",
                       "use the standard AWS environment variables or ~/.aws/credentials")
    return endpoint.rstrip("/")


def open_transport(url: str, endpoint: str | None = None, jobs: int = 8) -> Transport:
    """A transport for a directory path, file:// URL or s3://bucket/prefix."""
    url = normalize_url(url)
    if url.startswith("s3://"):
        from .transport_s3 import S3Transport  # boto3 is imported only for S3 remotes
        return S3Transport(url, endpoint=check_endpoint(endpoint), jobs=jobs)
    return DirectoryTransport(url)


def remote_section(name: str) -> str:
    return f'remote "{name}"'


def configured_remote(config: configparser.ConfigParser, name: str, root: str) -> tuple[str, str | None]:
    """(url, endpoint) of remote `name` from the config of the repository at `root`. A relative
    path (written by hand: mvc remote add stores absolute ones) is relative to `root`, as git's
    are to the work tree's top, wherever the command runs."""
    section = remote_section(name)
    if not config.has_option(section, "url"):
        raise ConfigError(f"no remote named {name!r}", "add one with mvc remote add NAME URL")
    url = config.get(section, "url")
    try:
        parsed = urlparse(url)
    except ValueError:  # (refused where it is used: listing remotes, or using another, must not fail on it)
        return url, config.get(section, "endpoint", fallback=None)
    path = unquote(parsed.path) if parsed.scheme == "file" and parsed.netloc in ("", "localhost") else \
        url if not parsed.scheme else None  # (file:../x too; one with ? or # is left whole: refused on use)
    if parsed.scheme == "file" and ("?" in url or "#" in url):
        path = None
    if path and path.strip() and not os.path.isabs(os.path.expanduser(path)):
        url = _under_root(path, root)
    return url, config.get(section, "endpoint", fallback=None)


def _under_root(path: str, root: str) -> str:
    """A config's path as the repository at `root` reads it: a relative one is relative to `root`
    (as normalize_url's abspath writes paths)."""
    return os.path.normpath(os.path.join(root, os.path.expanduser(path)))


def open_configured_remote(config: configparser.ConfigParser, name: str, root: str, jobs: int = 8) -> Transport:
    """The transport of remote `name` of the repository at `root`. A URL with '?' or '#' (which an
    older mvc let in, reading it cut there) is refused saying what that mvc used."""
    url, endpoint = configured_remote(config, name, root)
    parsed = _parse_url(url, f"URL of remote {shown(name)} in .mvc/config,",
                        f"set another with mvc config remote.{name}.url URL, or mvc remote remove {name}")
    if parsed.scheme in ("file", "s3") and ("?" in url or "#" in url):
        used = re.split(r"[?#]", url, maxsplit=1)[0].rstrip("/")
        normalize_url(used)  # (credentials are refused before any message shows the URL)
        if parsed.scheme == "file":  # (as the repository reads a relative one: the hint's command
            used = _under_root(unquote(urlparse(used).path), root)  # may run in a subfolder)
        raise BadInput(f"remote {shown(name)}'s URL in the config, {shown(url)}, holds '?' or '#': an older mvc read "
                       f"it cut there, as {shown(used)}, where what it pushed lies",
                       f"{set_url_command(name, shlex.quote(used))} keeps using that; or point it elsewhere")
    return open_transport(url, endpoint, jobs)


def set_url_command(name: str, url: str) -> str:
    """The command that points remote `name` at `url` (a placeholder or a quoted URL), as a hint gives it."""
    return f"mvc config {shlex.quote(f'remote.{name}.url')} {url}"


def promisor_remote(config: configparser.ConfigParser) -> str | None:
    for section in config.sections():
        if section.startswith('remote "') and config.getboolean(section, "promisor", fallback=False):
            return section[len('remote "'):-1]
    return None


# -- lazy clones -------------------------------------------------------------------------------
PROMISED_FILE = os.path.join("lazy", "promised")
PROMISED_SIZES_FILE = os.path.join("lazy", "sizes")  # `id size`: the most bytes its trees declare


class LazyRemoteStore(ObjectStore):
    """The blobs a lazy clone knows of but has not fetched: fetched from the promisor remote on
    first read, verified by BLAKE3 and cached in the loose store.

    `has` answers from a local list of promised ids (written when a lazy fetch stores a tree), so
    it never touches the network; `ids` lists nothing (the blobs are not here).
    """

    def __init__(self, mvc_dir: str, config: configparser.ConfigParser, remote: str, cache: ObjectStore):
        self.dir = mvc_dir
        self.config = config
        self.remote = remote
        self.cache = cache
        self._promised: set[str] | None = None
        self._promised_bytes = 0  # the size of the list when it was read
        self._transport: Transport | None = None
        self._renewed_unproven = False  # the transport was opened again after a refusal, and no read took yet
        self._opened_at = 0.0
        self._sizes: dict[str, int] | None = None
        self._lock = threading.Lock()
        forks.track(self)

    def _after_fork(self) -> None:  # (see mvc.forks: a lock another thread held; a network client's
        self._lock = threading.Lock()  # connections are the parent's)
        self._transport = None

    @property
    def promised_path(self) -> str:
        return os.path.join(self.dir, PROMISED_FILE)

    def promised(self) -> set[str]:
        if self._promised is None:
            self._read_promised()
        return self._promised

    def _read_promised(self) -> None:
        try:
            with open(self.promised_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        self._promised_bytes = len(data)
        self._promised = set(parse_id_lines(data))

    def _promised_now(self, oid: str) -> bool:
        """Whether `oid` is promised, re-reading the list when it grew since it was read: a fetch
        in another process (mvc pull) appends to it while this one holds the repository open."""
        if oid in self.promised():
            return True
        try:
            grew = os.stat(self.promised_path).st_size != self._promised_bytes
        except FileNotFoundError:
            grew = False
        if grew:
            self._read_promised()
        return oid in self._promised

    def promise(self, ids, sizes: dict[str, int] | None = None) -> None:
        """Record blob ids the promisor remote holds (appended under a lock, fsynced), with the
        most bytes their trees declare (`sizes`): a fetch later reads no more than that."""
        new = sorted(set(ids) - self.promised())
        if not new:
            return
        if sizes:  # first, so that a promise is never without its bound
            append_sized_lines(os.path.join(self.dir, PROMISED_SIZES_FILE),
                               {i: sizes[i] for i in new if i in sizes}, "the lazy-clone size list")
            self._sizes = None
        append_id_lines(self.promised_path, new, "the lazy-clone promise list")
        self._promised.update(new)

    def _size_limit(self, oid: str) -> int | None:
        """The most bytes a fetch of `oid` may read (None for promises made by an older mvc)."""
        if self._sizes is None or oid not in self._sizes:
            try:
                with open(os.path.join(self.dir, PROMISED_SIZES_FILE), "rb") as f:
                    self._sizes = parse_sized_lines(f.read())
            except FileNotFoundError:
                self._sizes = {}
        return self._sizes.get(oid)

    def transport(self, renew_from: Transport | None = None) -> Transport:
        """The promisor remote's transport, opened on first use; opened again (new credentials read)
        when `renew_from`, one whose credentials the remote refused, is still the current one,
        unless the current one was itself opened so less than RENEW_AGAIN_S ago and has not yet been
        accepted (see `_accepted`): credentials read again at once would be refused again, and each
        read asking would open one; later, new ones may have come."""
        with self._lock:
            renew = renew_from is not None and self._transport is renew_from and (
                not self._renewed_unproven or time.monotonic() - self._opened_at >= RENEW_AGAIN_S)
            if self._transport is None or renew:
                self._transport = open_configured_remote(self.config, self.remote, os.path.dirname(self.dir))
                self._renewed_unproven, self._opened_at = renew, time.monotonic()
            return self._transport

    def _accepted(self, t: Transport) -> None:
        """A read through `t` succeeded: its credentials may be renewed again when refused later."""
        if self._renewed_unproven and t is self._transport:
            with self._lock:
                if t is self._transport:
                    self._renewed_unproven = False

    def has(self, oid):
        return self._promised_now(oid)

    def fetch(self, oid: str) -> bytes:
        """The object's bytes: downloaded into the cache first (a stream, never whole in memory),
        or, where this user may not write the cache, read into memory and verified there."""
        if self.cache.has(oid) or self._download(oid):
            return self.cache.get(oid)
        return self._in_memory(oid)

    def _in_memory(self, oid: str) -> bytes:
        """`oid` read from the remote into memory and verified (a cache we may not write)."""
        with self._newer_not_damaged():
            return received(lambda: self._from_remote(lambda t: t.get(oid, max_size=self._size_limit(oid)), oid),
                            oid, self.remote)

    @contextlib.contextmanager
    def _newer_not_damaged(self):
        """An object that does not hash to its id on a remote a newer mvc marked (a format or an
        extension this mvc does not know, e.g. another object encoding) is FormatTooNew, not damage."""
        try:
            yield
        except CorruptObject:
            self.transport().is_repository()  # (raises FormatTooNew for such a remote)
            raise

    def _download(self, oid: str, slots: dict | None = None) -> bool:
        """Stream `oid` from the remote into the cache, verified before it gets its name; False
        (nothing stored) where the cache cannot be written: a clone this user may only read. The
        writers lock is held shared meanwhile, as a fetch holds it: a gc with a short grace would
        otherwise delete the temp file being written. With the `slots` of a cache batch (prefetch,
        which holds that lock), the verified temp file joins the batch instead."""
        cache = self.cache
        try:
            with self._newer_not_damaged(), \
                    (contextlib.nullcontext() if slots is not None else self._writers_shared()), \
                    new_object_file(cache.tmp, oid, None if slots is not None else cache.path(oid),
                                    cache.fsync and slots is None, readable=True) as f:
                received_into(lambda out: self._from_remote(
                    lambda t: _emptied(out) or t.get_into(oid, out, max_size=self._size_limit(oid)), oid),
                    f, oid, self.remote)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return False
            raise
        if slots is not None:
            slots[oid] = f.name
        return True

    def _writers_shared(self):
        return shared_or_exclusive(os.path.join(self.dir, WRITERS_LOCK), exclusive=False,
                                   waiting_for="a gc or pack that is deleting objects to finish")

    def _from_remote(self, read, oid: str):
        """`read(transport)` for a promised `oid`, its failures said as a lazy clone's."""
        if not self._promised_now(oid):
            raise ObjectMissing(f"object {oid} is missing", "run mvc fsck")
        try:
            t = self.transport()
            try:
                got = read(t)
            except CredentialsRefused:  # (a long process: its credentials rotated or expired since the
                renewed = self.transport(renew_from=t)  # transport was opened; a new one reads them again)
                if renewed is t:
                    raise
                t, got = renewed, read(renewed)
            self._accepted(t)
            return got
        except ObjectMissing:
            if not self.transport().is_repository():
                raise ObjectMissing(f"object {oid} is not fetched yet (lazy clone) and remote {self.remote} "
                                    f"({self.transport().describe()}) is gone or is no mvc repository",
                                    f"if it moved: {set_url_command(self.remote, 'NEW_URL')}") from None
            origin = self.transport().lazy_clone_origin()
            if origin is not None:  # a lazy clone of a lazy clone: no damage, not fetched there either
                raise ObjectMissing(f"object {oid} is not fetched yet (lazy clone), and remote {self.remote} "
                                    f"({self.transport().describe()}) is a lazy clone that has not fetched it either",
                                    f"load it there first, or fetch from its origin: "
                                    f"{set_url_command(self.remote, shlex.quote(origin))}") from None
            raise ObjectMissing(f"object {oid} is not fetched yet and remote {self.remote} does not have it: "
                                "its gc may have collected a branch deleted or rewritten there, or it is damaged",
                                "fetch from another copy that has it, or mvc push --repair from a repository "
                                "that has it") from None
        except MvcError as e:  # a damaged remote copy stays a CorruptObject
            kind = CorruptObject if isinstance(e, CorruptObject) else MvcError
            raise kind(f"object {oid} is not fetched yet (lazy clone) and remote {self.remote} "
                       f"failed: {e.message}", e.hint) from None

    def get(self, oid):
        return self.fetch(oid)

    fetches = True
    PREFETCH_JOBS = 8

    def prefetch(self, ids):
        """Fetch the promised blobs of `ids` not yet here, PREFETCH_JOBS at a time (a component of
        many tensors no longer waits for one round trip per blob). A blob that fails is left for
        the read that follows, which fetches it again and reports the error."""
        promised = self.promised()
        missing = [i for i in dict.fromkeys(ids) if i in promised and not self.cache.has(i)]
        if len(missing) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        refused = threading.Event()

        def fetch(oid, slots=None):
            if refused.is_set():  # (the read that follows says why: not one refusal per blob)
                return
            try:
                self._download(oid, slots)
            except CredentialsRefused:
                refused.set()
            except MvcError:
                pass

        sizes = {oid: self._size_limit(oid) or BATCHED_BELOW for oid in missing}  # (unknown: one by one)
        with ThreadPoolExecutor(max_workers=min(self.PREFETCH_JOBS, len(missing))) as pool:
            try:
                with self._writers_shared():  # (held once for the batches; a large blob takes it again)
                    self.cache.receive_in_batches(missing, sizes, fetch, pool.map)
            except OSError as e:  # a clone this user may only read: each read then fetches into memory
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise

    def view(self, oid, verify=True, rehash=False):  # fetched objects are verified as they arrive
        if not self.cache.has(oid) and not self._download(oid):  # a clone this user may only read:
            return memoryview(bytearray(self._in_memory(oid)))  # in memory (writable, as tensors expect)
        return self.cache.view(oid, rehash=rehash)

    def size(self, oid):
        if self.cache.has(oid) or self._download(oid):
            return self.cache.size(oid)
        return len(self._in_memory(oid))

    def put(self, *buffers, oid=None, progress=None, recheck=False):
        raise MvcError("a lazy clone's remote store is read-only (this is a bug in mvc)")

    def ids(self):
        return iter(())

    def delete(self, oid):
        pass

    def not_fetched(self, ids, stores) -> list[str]:
        """Of `ids`, those promised and held by none of `stores` (this one aside)."""
        promised = self.promised()
        local = [s for s in stores if s is not self]
        return sorted(i for i in ids if i in promised and not any(s.has(i) for s in local))


def _emptied(f) -> None:
    """Empty `f` for a read from the start (a retry after part of a body had arrived)."""
    f.seek(0)
    f.truncate()


def promisor_store(repo) -> LazyRemoteStore | None:
    """The lazy store of a repository cloned with --lazy (None for ordinary repositories)."""
    name = promisor_remote(repo.config)
    return LazyRemoteStore(repo.dir, repo.config, name, repo.loose) if name else None

"""Repository upkeep: what refs, reflogs and certificates reach, garbage collection, fsck and du.

`Maintenance` is mixed into `Repo` (it uses the repository's refs, stores, config and locks).
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import stat
import time
import warnings
from typing import Callable

from . import certindex
from . import components as comp
from . import safetensors_format as stf
from .errors import CorruptObject, FormatTooNew, MvcError, ObjectMissing, UnknownRevision
from .files import FUTURE_SLACK_S, LockFile, is_atomic_temp, shared_or_exclusive
from .interrupts import hold_user_handlers_in
from .listing_cache import LISTING_DIR
from .objects import (MAX_TREE_BYTES, SMALL_OBJECT, certificate_refs, decode, may_say_commit_or_tree, named_ids,
                      object_kind, tree_blob_ids, tree_blob_sizes)
from .refs import note_moved
from .transfer import Progress

GC_GRACE_S = 3600.0
WRITERS_LOCK = "writers.lock"  # see Repo.writing
REFLOG_EXPIRE_S = 90 * 24 * 3600.0


RESERVE = "reserve"  # .mvc/reserve: room for gc's lock and log files on a full disk
RESERVE_BYTES = 256 * 1024
ATOMIC_TEMP_MIN_AGE_S = 3600.0  # a ref/reflog/HEAD/config temp file this old belongs to a killed write
# (judged by its mtime: a writer stalled in fsync, or a file server's clock behind, must not lose it)


def keep_reserve(mvc_dir: str) -> None:
    """Write .mvc/reserve (real blocks, not a sparse file) when it is missing; on a full disk gc
    deletes it to take its locks and free the rest. Best effort: a repository works without it."""
    path = os.path.join(mvc_dir, RESERVE)
    if os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(RESERVE_BYTES))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # (a Ctrl-C too: nothing else ever removed it; gc sweeps a kill's)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise


def _is_reserve_temp(name: str) -> bool:
    """Whether `name` (in .mvc) is a reserve file's temp copy a killed keep_reserve left."""
    head, _, tail = name.partition(".")
    return head == RESERVE and tail.endswith(".tmp") and tail[:-4].isdigit()


def _release_reserve(mvc_dir: str) -> bool:
    try:
        os.unlink(os.path.join(mvc_dir, RESERVE))
        return True
    except OSError:
        return False


@hold_user_handlers_in
class Maintenance:
    """reachable, gc, fsck and du of a `Repo`."""

    def reachable(self, include_reflogs: bool = True, reflog_expiry: float | None = None,
                  damaged: list | None = None, bad_refs: dict | None = None,
                  refs_only: set | None = None, commits: set | None = None,
                  newer: set | None = None, stop_at=None) -> tuple[set[str], list[tuple[str, str]]]:
        """(ids of every object reachable from refs/reflogs, [(missing id, who refers to it)]).

        A reached commit's certificates (its certificate index) are reached with it, and every
        object they name (data blobs, baseline commits, trees), so `mvc verify` works after `mvc
        gc`; a commit nothing else reaches is not kept by its certificates. `reflog_expiry`:
        count only reflog entries that expiring reflogs at that age would keep (a gc dry run).
        `damaged` (a list) receives (id, who refers to it, why) for the reachable commits and trees
        that cannot be read; `bad_refs`
        (a dict), when given, receives {ref: problem} for ref files that do not hold an id, which
        otherwise stop the walk (CorruptObject). `refs_only` (a set), when given, receives what is
        reachable without the reflogs, found on the way (what only reflogs keep is the difference).
        `commits` (a set), when given, receives the reachable commits read on the way. `newer` (a
        set), when given, receives those of `damaged` that are intact but of a newer format.
        `stop_at(id)`, when given, names commits the walk does not enter (only their certificates
        are walked): what an incremental pack need not look past.
        """
        from .pack import pack_store_of
        packs = pack_store_of(self.store)
        if packs is not None:  # every index hashed and checked first (a walk reads every object's
            packs.refresh()    # kind; an index that fails is set aside: its objects read as damage naming it)
            packs.check_indexes()
        roots = set(self.refs.list("refs/", bad=bad_refs, strict=True).values())
        try:
            symbolic = (self.refs.read_raw("HEAD") or "").startswith("ref:")  # (one naming no branch: fsck says so)
            head = None if symbolic else self.refs.read("HEAD")
        except CorruptObject as e:
            if bad_refs is None:
                raise
            bad_refs["HEAD"], head = e.message, None
        if head:
            roots.add(head)
        logged = self.refs.all_reflog_ids(reflog_expiry) - roots if include_reflogs else set()
        seen: set[str] = set()
        missing = []
        certified = set(certindex.certified_commits(self.dir))
        self._walk([(r, "a ref", "commit") for r in roots], seen, missing, damaged, commits, certified, newer,
                   stop_at)
        if refs_only is not None:
            refs_only.update(seen)
        self._walk([(r, "a reflog", "commit") for r in logged], seen, missing, damaged, commits, certified, newer,
                   stop_at)
        return seen, missing

    def _walk(self, stack: list, seen: set, missing: list, damaged: list | None = None,
              commits: set | None = None, certified: set | None = None, newer: set | None = None,
              stop_at=None) -> None:
        """Add to `seen` everything reachable from `stack` ((id, who refers to it, kind) with kind
        "commit", "tree" or "any"), a commit's certificates and what they name included (of the
        commits in `certified`, those with a certificate index: all when None); ids referred to but
        absent go to `missing` with who, commits and trees that cannot be read to `damaged` with
        who and why (what they refer to is then not in `seen`)."""
        if certified is None:
            certified = set(certindex.certified_commits(self.dir))
        while stack:
            oid, who, kind = stack.pop()
            if oid in seen:
                continue
            if kind == "named":  # an id a commit's extra holds (any text may look like one): what is
                if not self._has_locally(oid):  # here is kept with the commit, a certificate with
                    continue                    # what it names (the result a pipeline stage records)
                try:
                    kind = self.kind_of(oid)
                    if kind == "blob" and self.store.size(oid) <= SMALL_OBJECT:
                        stack += self._certificate_named(oid)
                except MvcError:
                    pass
            seen.add(oid)
            if kind == "any":  # named by a certificate: a commit, a tree or a blob
                if not self._has_locally(oid):
                    if not self.store.has(oid):
                        missing.append((oid, who))
                    continue  # absent locally but promised by a lazy remote: a blob
                try:
                    kind = self.kind_of(oid)
                except MvcError as e:
                    if damaged is not None:
                        damaged.append((oid, who, e.message))
                    continue  # damaged: fsck reports it
            if kind == "commit" and stop_at is not None and stop_at(oid):
                if oid in certified:
                    stack += self._certificates_of(oid, seen)
                continue
            try:
                if kind == "commit":
                    c = self.read_commit(oid)
                    if commits is not None:
                        commits.add(oid)
                    stack += [(p, f"commit {oid[:12]}", "commit") for p in c["parents"]]
                    stack += [(t, f"commit {oid[:12]} component {n}", "tree") for n, t in c["components"].items()]
                    if oid in certified:
                        stack += self._certificates_of(oid, seen)
                    stack += [(o, f"commit {oid[:12]} extra", "named") for o in named_ids(c["extra"])]
                elif kind == "tree":
                    seen.update(tree_blob_ids(self.read_tree(oid, shared=True)))
            except ObjectMissing:
                missing.append((oid, who))
            except MvcError as e:
                if damaged is not None:
                    damaged.append((oid, who, e.message))
                if newer is not None and isinstance(e, FormatTooNew):
                    newer.add(oid)
                continue  # damaged: fsck reports it

    def _certificates_of(self, commit: str, seen: set) -> list:
        """The certificates the index lists for `commit`, added to `seen`, and what each names, to
        walk (a certificate that is missing or damaged names nothing: fsck reports it)."""
        stack = []
        for cert_id in certindex.read_index(self.dir, commit):
            seen.add(cert_id)
            stack += self._certificate_named(cert_id)
        return stack

    def reach_loose_certificates(self, ids, seen: set, stop_at=None) -> None:
        """Add to `seen` the certificates among loose objects `ids` (not in it yet) and what they
        name: an incremental walk that stops at packed commits misses those attached to older
        ones (`mvc ci HEAD~3`, fetched ones). Only small objects opening with '{' are read."""
        found = []
        for oid in ids:
            if oid in seen:
                continue
            try:
                st = os.stat(self.loose.path(oid))
                if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_OBJECT:  # (a pipe would block the open)
                    continue
                with open(self.loose.path(oid), "rb") as f:
                    if f.read(1) != b"{":
                        continue
                data = self.loose.get(oid)
                try:
                    commit = decode(data, "certificate", oid)["commit"]
                except FormatTooNew:  # (a newer mvc's certificate: what it names is kept all the same)
                    commit = json.loads(data).get("commit")
            except (MvcError, OSError, ValueError, AttributeError):
                continue
            # the certificate of a commit that is reachable (reached, or packed where the walk stopped):
            # one of a commit nothing reaches is garbage, with what it names (gc's to drop, loose)
            if not isinstance(commit, str) or not (commit in seen or (stop_at is not None and stop_at(commit))):
                continue
            seen.add(oid)
            found += self._certificate_named(oid)
        self._walk(found, seen, [], stop_at=stop_at)

    def _certificate_named(self, cert_id: str) -> list:
        """What certificate `cert_id` names, to walk; nothing when it is missing, damaged or no
        certificate. Of one of a newer format, every id-like text is kept when it is here, and
        not missed when it is not (this mvc cannot tell its ids from other hex, a checksum)."""
        try:
            data = self.store.get(cert_id)
            try:
                named, kind = named_ids(decode(data, "certificate", cert_id)), "any"
            except FormatTooNew:
                named, kind = certificate_refs(data, cert_id), "named"
        except MvcError:
            return []
        return [(o, f"certificate {cert_id[:12]}", kind) for o in named]

    def reachable_whole(self, who: str, reflog_expiry: float | None = None, refs_only: set | None = None) -> set[str]:
        """`reachable()`, refusing (CorruptObject) while a reachable object is missing or damaged:
        what only it leads to would look unreachable, and `who` (gc, packing) would drop it."""
        damaged: list = []
        bad_refs: dict = {}
        newer: set[str] = set()
        live, missing = self.reachable(reflog_expiry=reflog_expiry, damaged=damaged, bad_refs=bad_refs,
                                       refs_only=refs_only, newer=newer)
        if bad_refs:
            ref, why = next(iter(bad_refs.items()))
            more = f"; mvc fsck names {len(bad_refs) - 1} more" if len(bad_refs) > 1 else ""
            raise CorruptObject(f"{who} stopped, deleting nothing: {os.path.join(self.dir, *ref.split('/'))}: {why}",
                                f"it may be the only ref to some commits{more}")
        skip = {oid for oid, _who in missing} | certindex.all_listed(self.dir)  # (a missing certificate: fsck names it)
        missing += [(oid, "a reachable tree or certificate") for oid in live
                    if oid not in skip and not self.store.has(oid)]  # blobs
        if damaged and not missing and all(oid in newer for oid, _who, _why in damaged):
            oid, ref, why = damaged[0]
            are = "1 reachable object is" if len(damaged) == 1 else f"{len(damaged)} reachable objects are"
            raise FormatTooNew(f"{who} stopped, deleting nothing: {are} of a newer "
                               f"format than this mvc reads (e.g. {why}, referenced by {ref}), and what they "
                               "refer to cannot be told apart from garbage", "upgrade mvc to collect garbage here")
        if missing or damaged:
            oid, ref = (missing or damaged)[0][:2]
            what = "missing" if missing else "damaged"
            aside = self._packs_set_aside()
            raise CorruptObject(f"{len(missing or damaged)} reachable objects are {what} (e.g. {oid[:12]}, "
                                f"referenced by {ref}){aside}; {who} stopped so as not to delete what they refer to",
                                f"run mvc fsck, and restore the {what} objects with mvc fsck --repair-from REMOTE "
                                "before collecting garbage")
        return live

    def _packs_set_aside(self) -> str:
        """', and N pack indexes are damaged, e.g. NAME.idx' when packs were set aside (their
        objects may be the missing ones), else ''."""
        from .pack import pack_store_of
        packs = pack_store_of(self.store)
        damaged = sorted(packs.damaged) if packs is not None else []
        if not damaged:
            return ""
        return (f", and {len(damaged)} pack {'index is' if len(damaged) == 1 else 'indexes are'} damaged, "
                f"e.g. {damaged[0]}.idx")

    def recently_referenced(self, live: set[str], grace: float) -> set[str]:
        """Unreachable objects gc keeps because a commit or tree younger than `grace` refers to
        them. A push or fetch that finds a commit or tree already present skips everything it
        refers to, so an old blob that only such a recent object names must outlive the grace
        too (git: "keep objects reachable from recent objects"). Pack ages are their files'."""
        now = time.time()
        recent = []
        for oid in self.loose.ids():
            if oid not in live:
                try:
                    if now - os.stat(self.loose.path(oid)).st_mtime < grace:
                        recent.append(oid)
                except FileNotFoundError:
                    pass
        from .pack import pack_store_of
        packs = pack_store_of(self.store)
        for p in packs.packs() if packs is not None else ():
            try:
                young = now - os.stat(p.path).st_mtime < grace
            except FileNotFoundError:
                continue
            if young:
                recent += [oid for oid in p.records if oid not in live]
        seen = set(live)
        self._walk([(oid, "a recent object", "any") for oid in recent], seen, [])
        return seen - live

    def kind_of(self, oid: str) -> str:
        """"commit", "tree" or "blob" (tensors, headers, files, data, certificates) of a stored object.
        One larger than SMALL_OBJECT (a tree of many tensors) is read whole only when a peek
        (unverified) finds a JSON object that may say it is one; none larger than MAX_TREE_BYTES is made."""
        size = self.store.size(oid)
        if size <= SMALL_OBJECT:
            return object_kind(self.store.get(oid))
        if size > MAX_TREE_BYTES:
            return "blob"
        peek = self.store.view(oid, verify=False)
        find = getattr(peek, "find", None) or bytes(peek).find  # (a map searches in place)
        if (bytes(peek[:1]) != b"{" or not bytes(peek[-64:]).rstrip().endswith(b"}")
                or not may_say_commit_or_tree(find)):
            return "blob"
        del peek, find
        return object_kind(self.store.view(oid))

    def _has_locally(self, oid: str) -> bool:
        """In this repository's own stores (not merely promised by a lazy clone's remote)."""
        return any(s.has(oid) for s in self.store.stores if not hasattr(s, "not_fetched"))

    def _not_fetched(self, ids) -> list[str] | None:
        """Of `ids`, those a lazy clone's remote promises and no local store holds; None for a
        repository that is no lazy clone."""
        lazy = [s for s in self.store.stores if hasattr(s, "not_fetched")]
        return lazy[0].not_fetched(ids, self.store.stores) if lazy else None

    def gc(self, dry_run: bool = False, grace_s: float | None = None, expire_reflogs: bool = True,
           progress: Progress | None = None) -> dict:
        """Delete loose objects unreachable from refs and reflogs and older than the grace period.

        With a grace shorter than the default, gc waits for commits and fetches in progress and
        holds new ones until it is done (see `writing`): their new objects are younger than any
        grace but not yet referenced."""
        grace = GC_GRACE_S if grace_s is None else grace_s
        if not (isinstance(grace, (int, float)) and 0 <= grace < math.inf):
            raise MvcError(f"gc grace of {grace_s!r} seconds: it must be a finite number >= 0")
        exclusive = grace < GC_GRACE_S and not dry_run

        def run(cycle: bool = True):
            """`cycle`: let the pack lock go between tries (not on the reserve's space: the lock
            file made again could find the disk full once more)."""
            if not exclusive:
                return self._gc(dry_run, grace, expire_reflogs, exclusive, progress or Progress())
            from .pack_write import pack_lock  # (taken first: a pack dropping garbage holds it and waits for
            waiting_for = ("commits, fetches and pushes in progress to finish "  # the writers lock)
                           "(a gc with a grace below the default waits for them)")
            from . import files
            packing = pack_lock(self)  # (one object: its wait is said once, its timeout counts all rounds)
            while True:  # a gate period at a time (commits in flight drain: new ones wait at the gate), then
                # the pack lock is let go a moment: a pack run waiting for it goes first, not behind this wait
                with packing, shared_or_exclusive(
                        os.path.join(self.dir, WRITERS_LOCK), exclusive=True, waiting_for=waiting_for,
                        within=files.GATE_WAIT_S + files.GATE_PAUSE_S if cycle else math.inf) as held:
                    if held is not False:  # (None: no flock here, said; it runs as before, unlocked)
                        return self._gc(dry_run, grace, expire_reflogs, exclusive, progress or Progress())
                waiting_for = ""  # (said once)
                time.sleep(0.1)
        try:
            try:
                return run()
            except OSError as e:  # a full disk: even its lock files need room; the reserve gives it
                if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not _release_reserve(self.dir):
                    raise
                warnings.warn("the disk is full: gc freed the space mvc keeps in reserve to take its locks")
                return run(cycle=False)
        finally:
            keep_reserve(self.dir)

    def _sweep_loose(self, dry_run: bool, grace: float, expiry: float | None):
        """gc's loose phase: (live, what refs reach without the reflogs, protected, loose files
        deleted, objects removed, bytes freed, kept young), deleting the unreachable loose objects
        older than the grace unless `dry_run`."""
        by_refs: set[str] = set()
        live = self.reachable_whole("gc", reflog_expiry=expiry, refs_only=by_refs)
        protected = self.recently_referenced(live, grace)
        from .pack import pack_store_of
        packs = pack_store_of(self.store)
        now = time.time()
        doomed, removed, freed, kept_young = 0, 0, 0, 0
        to_delete = []
        for oid in list(self.loose.ids()):
            if oid in live:
                continue
            packed = packs is not None and packs.has(oid)  # (a packed copy is counted by packing: kept or dropped)
            if oid in protected:
                kept_young += not packed
                continue
            try:
                st = os.stat(self.loose.path(oid))
            except FileNotFoundError:
                continue
            if now - st.st_mtime < grace:
                kept_young += not packed
                continue
            if not packed:
                removed += 1
            doomed += 1
            freed += st.st_size
            to_delete.append(oid)
        if not dry_run:  # a gc killed half way leaves no commit without its trees, no tree without its blobs
            for oid in sorted(to_delete, key=self._deletion_rank):
                self.loose.delete(oid)
        return live, by_refs, protected, doomed, removed, freed, kept_young

    def _sweep_temp_files(self, grace: float, dry_run: bool) -> int:
        """Bytes of temp files older than the grace in objects/tmp (left by killed writes), and of
        the temp files a killed ref, reflog, HEAD or config write left (older than the grace and
        ATOMIC_TEMP_MIN_AGE_S, whatever the grace: such a write takes no writers lock), deleted
        unless `dry_run`. Deleting needs the writers lock held exclusively: a commit writing for
        longer than the grace holds it shared, and its early temp files are that old."""
        now = time.time()
        tmp = self.loose.tmp
        candidates = [(os.path.join(tmp, name), grace) for name in (os.listdir(tmp) if os.path.isdir(tmp) else ())]
        ref_grace = max(grace, ATOMIC_TEMP_MIN_AGE_S)
        candidates += [(os.path.join(self.dir, name), ref_grace) for name in os.listdir(self.dir)
                       if is_atomic_temp(name) or _is_reserve_temp(name)]
        for top in ("refs", "logs", LISTING_DIR):
            for dirpath, _dirs, files in os.walk(os.path.join(self.dir, top)):
                candidates += [(os.path.join(dirpath, name), ref_grace) for name in files if is_atomic_temp(name)]
        freed = 0
        for p, age in candidates:
            try:
                st = os.stat(p)
                if now - st.st_mtime >= age:
                    if not dry_run:
                        os.unlink(p)
                    freed += st.st_size
            except FileNotFoundError:  # a commit renamed it meanwhile
                continue
        return freed

    def _stale_ref_locks(self, min_age_s: float = 0.0) -> list[tuple[LockFile, str]]:
        """(lock, why it is stale) for the lock files of refs and HEAD that killed writers left
        (LockFile's rules: a dead owner on this host, or none after a while), older than
        `min_age_s`. A later move of the same ref breaks such a lock; one of a ref no command
        touches again (a `branch -d` killed before it removed its lock) stays until gc."""
        paths = [os.path.join(self.dir, "HEAD.lock")]
        for dirpath, _dirs, files in os.walk(os.path.join(self.dir, "refs")):
            paths += [os.path.join(dirpath, name) for name in sorted(files) if name.endswith(".lock")]
        found = []
        for path in paths:
            lock = LockFile(path)
            why = lock.stale(min_age_s)
            if why:
                found.append((lock, why))
        return found

    def _deletion_rank(self, oid: str) -> int:
        """0 for commits, 1 for trees, 2 for everything else (blobs, JSON files among them, and
        certificates): gc deletes in this order, so what it leaves stays closed under references
        at every moment. Canonical commits and trees end with their "type" key, so only files that
        look so are parsed."""
        try:
            with open(self.loose.path(oid), "rb") as f:
                if f.read(2) != b'{"':
                    return 2  # a tensor blob begins with its header length
                f.seek(max(0, os.fstat(f.fileno()).st_size - 32))
                if not f.read().endswith((b'"type":"commit"}', b'"type":"tree"}')):
                    return 2
                f.seek(0)
                kind = object_kind(f.read())
        except OSError:
            return 2
        return {"commit": 0, "tree": 1}.get(kind, 2)

    def _restamp_future(self) -> int:
        """Loose objects, temp files and packs whose modification time is ahead of this machine's
        clock (written under a clock ahead of ours, or copied from such a machine) get the time of
        now: their grace runs from now, where it would have run from the future, keeping garbage
        for as long as the clock was ahead. Returns how many were restamped."""
        from .pack import PACK_DIR
        now = time.time()
        root = self.loose.root
        dirs = [os.path.join(root, d) for d in sorted(os.listdir(root)) if len(d) == 2] \
            + [self.loose.tmp, os.path.join(root, PACK_DIR)]
        restamped = 0
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime > now + FUTURE_SLACK_S:
                        os.utime(e.path, (now, now))
                        restamped += 1
                except OSError:  # gone meanwhile, or not ours to touch: left as it is
                    continue
        return restamped

    def _gc(self, dry_run: bool, grace: float, expire_reflogs: bool, exclusive: bool, progress: Progress) -> dict:
        expired, expiry = 0, None
        restamped = 0 if dry_run else self._restamp_future()
        stale_locks = sum(lock.break_stale() for lock, _why in self._stale_ref_locks(grace)) if not dry_run else 0
        if expire_reflogs:
            expire = self.config_value("gc.reflogExpire", REFLOG_EXPIRE_S)
            if dry_run:  # count what expiring would drop, and leave the reflogs as they are
                expired, expiry = self.refs.count_expiring(expire), expire
            else:
                expired = self.refs.expire_reflogs(expire)
                if expired:  # (an error later says what gc had done: not "nothing was moved")
                    note_moved(f"expired {expired} reflog entries", logged=False)
        from .pack_write import DROP_LOCK_WAIT_S
        # deleting waits for commits, fetches and pushes in flight (they hold the lock shared from
        # finding objects to moving their ref) and decides on what the refs reach then
        locked = True
        if exclusive and not dry_run:  # a short-grace gc holds the lock already: one sweep
            live, by_refs, protected, doomed, removed, freed, kept_young = self._sweep_loose(False, grace, expiry)
            freed += self._sweep_temp_files(grace, False)
        else:  # count first; wait for the lock only when there is something to delete
            live, by_refs, protected, doomed, removed, freed, kept_young = self._sweep_loose(True, grace, expiry)
            tmp_bytes = self._sweep_temp_files(grace, True)
            if (doomed or tmp_bytes) and not dry_run:
                with self.writers_exclusive_within(DROP_LOCK_WAIT_S) as locked:
                    if locked:
                        live, by_refs, protected, doomed, removed, freed, kept_young = self._sweep_loose(
                            False, grace, expiry)
                        tmp_bytes = self._sweep_temp_files(grace, False)
                    else:  # nothing deleted: the next gc tries again
                        removed = freed = tmp_bytes = 0
            freed += tmp_bytes
        if doomed and locked and not dry_run:
            note_moved(f"deleted {doomed} unreachable loose objects", logged=False)
        self._cache.clear()
        result = {"removed": removed, "bytes_freed": freed, "kept_recent": kept_young,
                  "reflog_entries_expired": expired, "dry_run": dry_run, **self._kept_by_reflogs(live, by_refs)}
        if restamped:
            result["restamped_future_mtimes"] = restamped
        if stale_locks:
            result["stale_locks_removed"] = stale_locks
        if not locked:
            result["loose_left_why"] = "busy: commits or pushes held the writers lock"
        from .pack_write import Packer  # repack kept objects (big clean packs stay), dropping unreachable ones
        with Packer(self, full=True, grace_s=grace, geometric=True, protect=protected,
                    live=live if dry_run or exclusive else None,  # (refs cannot move while gc holds the
                    writers_locked=exclusive, dry_run=dry_run,  # writers lock: what they reach stands)
                    pack_locked=exclusive,  # (taken before the writers lock, in run above)
                    wait_again=not locked) as p:  # (it waited in vain: the packs wait again, holding the gate, so
            # that commits in flight drain: h71 found a single try lost to them every time)
            progress.begin("packing", 0 if dry_run else len(p.targets), p.total_bytes)
            try:
                result["pack"] = p.run(progress.advance, dry_run=dry_run, partial=progress.advance_bytes)
                packed_dropped = p.gone
            except OSError as e:  # garbage in a pack goes only once its live objects are rewritten
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise MvcError(f"no space left on device to repack: the objects it rewrites (to drop "
                               f"garbage from packs, or to pack loose ones) need up to {p.total_bytes / 1e6:.1f} MB",
                               f"{freed / 1e6:.1f} MB of loose garbage was freed and nothing was lost; free "
                               f"{p.total_bytes / 1e6:.1f} MB and run mvc gc again") from None
            finally:
                progress.end()
        result["removed"] += result["pack"]["dropped"]
        result["kept_recent"] += result["pack"]["kept_young"]  # (unreachable ones packed, kept for their youth)
        result["bytes_freed"] += (result["pack"]["dropped_bytes"] + result["pack"].get("tmp_bytes", 0)
                                  + result["pack"].get("overhead_freed", 0) + result["pack"].get("duplicate_bytes", 0))
        result["stamps_removed"] = self.loose.prune_stamps(dry_run=dry_run)  # after packing emptied files
        result["certificate_indexes_removed"] = (  # (a dry run counts those it would remove)
            self._prune_certificate_indexes(grace, self.store.has) if not dry_run else self._prune_certificate_indexes(
                grace, self._stays_after_gc(live, protected, packed_dropped, grace), delete=False))
        if (unfetched := self._not_fetched(live)) is not None:  # reachable blobs still on the promisor
            result["not_fetched"] = len(unfetched)                  # remote are not missing
        return result

    def _prune_certificate_indexes(self, grace: float, stays: Callable[[str], bool], delete: bool = True) -> int:
        """Delete (unless not `delete`: only count) the certificate indexes of commits gc removed,
        those `stays` says are not there (older than the grace: an index being written for a commit
        that is arriving stays); returns how many."""
        now, removed = time.time(), 0
        for commit in certindex.certified_commits(self.dir):
            path = certindex.index_path(self.dir, commit)
            try:
                if stays(commit) or now - os.stat(path).st_mtime < grace:
                    continue
                if delete:
                    os.unlink(path)
            except OSError:  # gone meanwhile, or not ours to remove: the next gc tries again
                continue
            removed += 1
        return removed

    def _stays_after_gc(self, live: set[str], protected: set[str], packed_dropped: set[str],
                        grace: float) -> Callable[[str], bool]:
        """For a dry run: whether an object would still be here after the gc it plans (reachable,
        referenced or written within the grace, or packed where the repack keeps it)."""
        from .pack import pack_store_of
        packs, now = pack_store_of(self.store), time.time()

        def stays(oid: str) -> bool:
            if oid in live or oid in protected:
                return True
            with contextlib.suppress(OSError):
                if now - os.stat(self.loose.path(oid)).st_mtime < grace:
                    return True
            return packs is not None and packs.has(oid) and oid not in packed_dropped
        return stays

    def _kept_by_reflogs(self, live: set[str], by_refs: set[str]) -> dict:
        """What only reflog entries keep (a rolled-back checkpoint, a deleted branch): gc leaves it
        until the entries expire (gc.reflogExpire), and says so."""
        kept = [o for o in live - by_refs if self._has_locally(o)]
        return {"kept_by_reflogs": len(kept), "kept_by_reflogs_bytes": sum(self.store.size(o) for o in kept)}

    def fsck(self, progress: Callable[[int], None] | None = None) -> dict:
        """Re-hash every stored object and check everything reachable exists and is well formed."""
        damaged, seen = [], set()  # (seen: every object listed, and those checked late)
        heads: dict[str, tuple[bytes, int]] = {}  # (safetensors prefix, size) of every blob that has one

        def check(store, oid) -> None:
            try:
                if hasattr(store, "check"):  # packed: large objects are hashed without being held whole
                    data, size = store.check(oid), store.size(oid)
                else:
                    data = store.view(oid, rehash=True)  # never trusts a verified stamp
                    size = len(data)
                if progress:
                    progress(size)
                n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
                if 0 <= n <= 4096 and 8 + n <= len(data):
                    heads[oid] = (bytes(data[:8 + n]), size)
                intact.add(oid)
            except CorruptObject as e:
                damaged.append({"id": oid, "problem": e.message})
            except ObjectMissing:
                pass

        def check_late(oid) -> None:
            """Check an object stored after the listing, as the listing would have (its header is
            needed to judge the tensor a tree names it as; it was no damage)."""
            seen.add(oid)
            held = [st for st in self.store.stores if not hasattr(st, "not_fetched") and st.has(oid)]
            before = len(damaged)
            for store in held:
                check(store, oid)
            if len(damaged) > before:
                bad.add(oid)

        intact: set[str] = set()  # objects of which some copy re-hashed right
        for store in self.store.stores:  # every copy: a read would take a good one over a damaged one
            ids = list(store.ids())
            with store.scanning(ids) if hasattr(store, "scanning") else contextlib.nullcontext([ids]) as chains:
                for oid in itertools.chain.from_iterable(chains):  # (packed: each delta base decoded once)
                    seen.add(oid)
                    check(store, oid)
        for d in damaged:  # (e.g. after a repair, which writes good copies loose: the damaged pack stays)
            if d["id"] in intact:
                d["problem"] += "; another copy of it is whole (mvc gc, or mvc pack --all, drops the damaged one)"
        from .pack_write import pack_problems  # damaged pack indexes and pack checksums
        damaged += pack_problems(self)
        bad = {d["id"] for d in damaged}
        self._cache.clear()
        unreadable, bad_refs, commits, newer = [], {}, set(), set()
        live, missing = self.reachable(damaged=unreadable, bad_refs=bad_refs, commits=commits, newer=newer)
        from .pack_write import lost_pack_files  # (an index whose pack file is gone: what it took with it)
        damaged += lost_pack_files(self, live)
        head = self.refs.head_problem()
        if head:
            bad_refs["HEAD"] = head  # (in place of what the walk said of a detached HEAD)
        problems = [{"id": ref, "problem": why} for ref, why in bad_refs.items()]
        listed = {cert for c in commits & set(certindex.certified_commits(self.dir))
                  for cert in certindex.read_index(self.dir, c)}  # (of the commits refs and reflogs reach)
        problems += [{"id": cert, "problem": "missing (named by the certificate index; mvc fsck --repair-from "
                                             "REMOTE restores it)"}
                     for cert in sorted(listed) if not self.store.has(cert)]
        problems += [{"id": oid, "problem": f"missing (referenced by {who})"} for oid, who in missing]
        problems += [{"id": oid, "problem": f"{why} (referenced by {who})"}  # hashes right, cannot be read
                     for oid, who, why in unreadable if oid not in bad and oid not in newer]  # (damaged: above)
        newer_format = [{"id": oid, "problem": f"{why} (referenced by {who})"}
                        for oid, who, why in unreadable if oid in newer - bad]
        for ref, oid in self.refs.list("refs/", bad=bad_refs).items():
            if oid in bad:
                problems.append({"id": oid, "problem": f"{ref} points to a damaged commit"})
                continue
            try:
                self._as_commit(oid, ref)
            except UnknownRevision as e:
                problems.append({"id": oid, "problem": e.message})
            except MvcError:
                continue  # missing: reported above
        # every blob of every reachable tree must exist, and every tree must check out
        trees_seen, parsed_headers = set(), {}
        unread = bad | newer
        for ref_cid in sorted(commits):  # (the walk above found them, those certificates name included)
            c = self.read_commit(ref_cid)
            for name, tid in c["components"].items():
                if tid in unread or tid in trees_seen or not self.store.has(tid):
                    continue
                trees_seen.add(tid)
                try:
                    tree = self.read_tree(tid, shared=True)
                except MvcError as e:
                    problems.append({"id": tid, "problem": f"component {name} of commit {ref_cid[:12]}: {e.message}"})
                    continue
                problems += [{"id": tid, "problem": f"tree of {name} in commit {ref_cid[:12]}: {p}"}
                             for p in comp.tree_problems(self.store, tree,
                                                         lambda o: o not in bad and self._has_locally(o),
                                                         parsed_headers)]
                for tname, t in tree["tensors"].items():
                    if t["id"] not in seen and self._has_locally(t["id"]):
                        check_late(t["id"])  # stored after the listing: a commit or fetch landed meanwhile
                    if not self.store.has(t["id"]):
                        problems.append({"id": t["id"], "problem": f"missing tensor {tname} of {name} "
                                                                     f"in commit {ref_cid[:12]}"})
                    elif t["id"] not in bad and self._has_locally(t["id"]) and not holds_tensor(heads, t):
                        problems.append({"id": tid, "problem": f"tree of {name} in commit {ref_cid[:12]}: tensor "
                                                              f"{tname!r} ({t['dtype']} {t['shape']}) names object "
                                                              f"{t['id'][:12]}, which is not that tensor"})
                for rel, f in tree["files"].items():
                    for key in ("header", "id"):
                        if f.get(key) and not self.store.has(f[key]):
                            problems.append({"id": f[key], "problem": f"missing file {rel} of {name}"})
        for lock, why in self._stale_ref_locks():  # no damage: the next move of its ref, or gc, removes it
            warnings.warn(f"stale lock file {lock.path} ({why}): mvc gc removes it once older than its grace")
        seen_ids = set()
        uniq = []
        for p in damaged + problems:
            if (p["id"], p["problem"]) not in seen_ids:
                seen_ids.add((p["id"], p["problem"]))
                uniq.append(p)
        result = {"ok": not uniq and not newer_format, "checked": len(seen), "problems": uniq}
        if newer_format:  # intact, but neither they nor what they refer to could be checked
            result["newer_format"] = newer_format
        if (unfetched := self._not_fetched(live)) is not None:  # expected, not damage
            result["not_fetched"] = len(unfetched)
        return result

    def _reachable_commits(self) -> list[str]:
        roots = set(self.refs.list("refs/", bad={}, strict=True).values()) | self.refs.all_reflog_ids()  # fsck names bad refs
        out, seen, stack = [], set(), list(roots)
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            try:
                c = self.read_commit(cid)
            except MvcError:
                continue
            out.append(cid)
            stack.extend(c["parents"])
        return out

    def du(self) -> dict:
        """Logical bytes (every commit as plain files), object bytes (after dedup) and bytes on disk
        (after pack compression), with what dedup and compression each saved. Dedup is judged on
        the objects commits reach; unreachable ones (garbage gc has not removed yet) are counted
        apart. In a lazy clone, reachable blobs not fetched yet count after dedup by the sizes their
        trees give (`not_fetched`, `not_fetched_bytes`), so the ratio is the origin's."""
        from .pack_write import storage_usage
        damaged: list = []  # (fsck names a damaged ref or object; an unreadable one hides what it names)
        commits: set[str] = set()  # (those certificates name included, with their history)
        live, missing = self.reachable(bad_refs={}, damaged=damaged, commits=commits)
        if damaged or missing:
            oid, _who, *why = (damaged or missing)[0]
            what = f"cannot be read (e.g. {oid[:12]}: {why[0]})" if damaged else f"are missing (e.g. {oid[:12]})"
            warnings.warn(f"{len(damaged) + len(missing)} reachable commits or trees {what}"
                          f"{self._packs_set_aside()}: what they name is not counted, and garbage is not told apart; "
                          "mvc fsck names them")
        elif aside := self._packs_set_aside():
            warnings.warn(f"the objects of packs set aside are not counted{aside}; mvc fsck names them")
        usage = {"unreachable_objects": 0, "unreachable_bytes": 0,
                 **storage_usage(self, None if damaged or missing else live)}
        objects, stored = usage["object_bytes"] - usage["unreachable_bytes"], usage["stored_bytes"]
        unfetched = self._not_fetched(live)
        logical, sizes = 0, {}
        for cid in commits:
            for tid in self.read_commit(cid)["components"].values():
                try:
                    tree = self.read_tree(tid, shared=True)
                except MvcError:
                    continue
                logical += sum(f["size"] for f in tree["files"].values())
                if unfetched:
                    sizes.update(tree_blob_sizes(tree))
        if unfetched is not None:  # a lazy clone: what commits reach counts after dedup, fetched or not
            usage["not_fetched"], usage["not_fetched_bytes"] = len(unfetched), sum(sizes.get(o, 0) for o in unfetched)
            objects += usage["not_fetched_bytes"]
        return {**usage, **self.loose.stamp_usage(), "logical_bytes": logical, "commits": len(commits),
                "dedup_saved_bytes": logical - objects, "dedup_ratio": (logical / objects) if objects else None,
                "compression_saved_bytes": usage["object_bytes"] - stored,
                "compression_ratio": (usage["object_bytes"] / stored) if stored else None}


def holds_tensor(heads: dict[str, tuple[bytes, int]], t: dict) -> bool:
    """Whether the stored object a tree's tensor entry `t` names is the canonical blob of a tensor of
    its dtype and shape (`heads`: {id: (safetensors prefix, size)} of the stored objects)."""
    prefix = stf.blob_prefix(t["dtype"], t["shape"])
    return heads.get(t["id"]) == (prefix, len(prefix) + stf.DTYPE_SIZES[t["dtype"]] * math.prod(t["shape"]))

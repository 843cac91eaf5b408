"""Packing: choose each object's encoding and XOR base from the commit graph and write packs atomically.

`pack(repo)` moves reachable loose objects into a new pack; `pack(repo, full=True)` rewrites every
reachable object, and packed unreachable ones younger than the grace period, into one pack and
removes the old packs. gc runs `pack(repo, full=True, geometric=True)`: it leaves the largest packs
as they are while each holds nothing to drop and is at least twice the bytes of everything smaller,
and rewrites only the rest (see `Packer._geometric_keep`). Rules:

- The XOR base of a tensor blob is the same tensor name in the same component of the parent
  commit, at the blob's first appearance in a parents-first walk of every commit reachable from
  refs and reflogs; bases therefore always appeared earlier and chains cannot loop. A delta is
  used only while the chain stays within `pack.maxDepth` (default 8) and only when it is the
  smallest encoding; float32, bfloat16 and float16 blobs are byte grouped, other tensor blobs,
  commits, trees, headers and raw files are zstd'd; any object is stored raw when that is smaller.
- Only reachable objects are packed, so blobs of an in-flight commit stay loose.
- The pack is written to a temporary file, fsync'd and renamed, then its index the same way (a pack
  is visible only through its index); every object is then read back from the new pack and
  verified, and only then are the loose copies (and, for a full repack, the old packs) deleted.
  Readers therefore always find each object loose or packed.

This module works on a `Repo` passed in (it never imports repo.py) and never imports torch.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
import time
import warnings

from . import pack_format as pf
from . import safetensors_format as stf
from .errors import BadInput, CorruptObject, LockHeld, MvcError, environment_error, os_error_text
from .files import LockFile
from .objects import hash_bytes
from .pack import PACK_DIR, PackStore, pack_store_of
from .store import fsync_dir

DEFAULT_MAX_DEPTH = 8
AUTO_PACK_LIMIT = 50              # automatic packing merges packs past this many (git's gc.autoPackLimit); 0: never
GEOMETRIC_FACTOR = 2             # gc keeps a pack at least this many times the bytes of all smaller ones
TMP_PREFIX = "tmp-"
DROP_LOCK_WAIT_S = 60.0          # how long dropping objects waits for commits and pushes in flight
LOCK_TIMEOUT_S = 600.0
WRITER_CACHE_BYTES = 512 << 20   # recently read objects kept to serve as XOR bases


def _pack_dir(repo) -> str:
    return os.path.join(repo.dir, "objects", PACK_DIR)


def _store(repo) -> PackStore:
    ps = pack_store_of(repo.store)
    return ps if ps is not None else PackStore(_pack_dir(repo))


def commits_parents_first(repo, stop_at=None, reflogs: bool = True) -> list[str]:
    """Every commit reachable from refs, reflogs (unless not `reflogs`) and a detached HEAD;
    parents before children. `stop_at(id)`, when given, names commits left out and not looked past."""
    roots = set(repo.refs.list("refs/").values()) | (repo.refs.all_reflog_ids() if reflogs else set())
    head = repo.refs.read("HEAD")
    if head:
        roots.add(head)
    order, state = [], set()
    for root in sorted(roots):
        stack = [(root, False)]
        while stack:
            cid, done = stack.pop()
            if done:
                order.append(cid)
                continue
            if cid in state:
                continue
            state.add(cid)
            if stop_at is not None and stop_at(cid):
                continue
            try:
                c = repo.read_commit(cid)
            except MvcError:
                continue  # a certificate or a missing commit: fsck reports the latter
            stack.append((cid, True))
            stack.extend((p, False) for p in reversed(c["parents"]) if p not in state)
    return order


def history_bases(repo, stop_at=None, reflogs: bool = True) -> tuple[dict[str, int], dict[str, str], dict[str, str]]:
    """(first-appearance rank of each tensor blob, its XOR base candidate, its dtype); of the
    commits `commits_parents_first(repo, stop_at, reflogs)` lists."""
    rank: dict[str, int] = {}
    base_of: dict[str, str] = {}
    dtype_of: dict[str, str] = {}
    done_trees: set[str] = set()
    previous: dict[str, dict] = {}  # the trees of the commit before: mostly the next one's parent's
    from .pack_codec import GROUPED_DTYPES
    for cid in commits_parents_first(repo, stop_at, reflogs):
        c = repo.read_commit(cid)
        decoded: dict[str, dict] = {}
        parent = None
        if c["parents"]:
            try:
                parent = repo.read_commit(c["parents"][0])["components"]
            except MvcError:
                parent = None
        for name, tid in sorted(c["components"].items()):
            if tid in done_trees:
                continue
            done_trees.add(tid)
            try:
                tree = decoded[tid] = repo.read_tree(tid, shared=True)
            except MvcError:
                continue
            ptree = None
            if parent and parent.get(name) and parent[name] != tid:
                try:
                    ptree = previous.get(parent[name]) or repo.read_tree(parent[name], shared=True)
                except MvcError:
                    ptree = None
            for tname, t in tree["tensors"].items():
                oid = t["id"]
                if "alias" in t or oid in rank:
                    continue
                rank[oid] = len(rank)
                dtype_of[oid] = t["dtype"]
                pt = ptree["tensors"].get(tname) if ptree else None
                if (pt and "alias" not in pt and pt["id"] != oid and pt["dtype"] == t["dtype"]
                        and pt["shape"] == t["shape"] and t["dtype"] in GROUPED_DTYPES):
                    base_of[oid] = pt["id"]
        previous = decoded
    return rank, base_of, dtype_of


class _Packed:
    """The packed objects as `PackStore.records()` maps them (id -> (pack, record), or id -> record
    with `records`), each looked up in the indexes when asked for rather than all listed first:
    an incremental pack asks about the few new objects only."""

    def __init__(self, ps: PackStore, records: bool = False):
        self.ps, self.records = ps, records

    def get(self, oid: str, default=None):
        hit = self.ps.lookup(oid, rescan=False)
        return default if hit is None else hit[1] if self.records else hit

    def __contains__(self, oid: str) -> bool:
        return self.get(oid) is not None

    def __getitem__(self, oid: str):
        hit = self.get(oid)
        if hit is None:
            raise KeyError(oid)
        return hit


def _recent_limit() -> int:
    """How many objects the writer keeps at hand: each loose one is a map holding a file
    descriptor, so a quarter of the open-file limit at most (a `ulimit -n 128` failed packing)."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(4, min(256, (soft if soft > 0 else 1024) // 4))


def pack_lock(repo, timeout_s: float = LOCK_TIMEOUT_S) -> LockFile:
    """The lock every run that writes or deletes packs holds. Taken before the writers lock by
    those holding both (a gc with a short grace; a pack dropping garbage waits for the writers
    lock holding it): the other order would have each wait for the other."""
    return LockFile(os.path.join(repo.dir, "pack.lock"), timeout=timeout_s, what="packing")


class Packer:
    """`with Packer(repo) as p: stats = p.run()`: holds the pack lock; `p.total_bytes` after entry.

    `recent_only` (not with `full`): the walk for loose objects starts at the refs (not the
    reflogs) and does not look past commits already packed (and not also loose), so its cost
    follows what is new, not the history (automatic packing after each commit). What it misses,
    a loose object only a packed commit or a reflog reaches (a blob fetched later from a lazy
    remote, an object once damaged and repaired, a commit rolled back from), stays loose for the
    next `mvc pack` or gc; loose certificates (of older commits too) and what they name are
    packed with the rest.

    `merge_only` ("young" or "old"): merge the small packs written within gc's grace period (or
    before it) the geometric way of gc, keeping every object, loose ones left as they are,
    without walking the history (automatic packing past `pack.autoPackLimit`): the objects keep
    the order they had in their packs, oldest pack first, so entries are copied as they are (a
    delta's base is written before it). Young and old packs are merged apart, so that the garbage
    in old ones keeps its age (the new pack takes its sources' newest time) and gc drops it."""

    def __init__(self, repo, full: bool = False, grace_s: float | None = None, geometric: bool = False,
                 protect: set[str] | None = None, live: set[str] | None = None, writers_locked: bool = False,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, dry_run: bool = False, recent_only: bool = False,
                 wait_again: bool = False, merge_only: str | None = None, pack_locked: bool = False):
        if recent_only and (full or merge_only):
            raise ValueError("a full repack walks the whole history")
        self.merge_only = merge_only
        if merge_only:  # nothing is reachable and everything young: nothing dropped, nothing walked
            full, geometric, grace_s, protect, live = True, True, math.inf, set(), set()
        self.repo = repo
        self.recent_only = recent_only
        self.dry_run = dry_run  # writes nothing: on a read-only repository it runs without the lock
        self.writers_locked = writers_locked  # the caller holds the writers lock exclusively (short-grace gc)
        self.wait_again = wait_again  # a gc's second wait for that lock (its first, for loose objects, was in vain)
        self.live = live  # what is reachable, when the caller knows better (a gc dry run's reflog expiry)
        # unreachable objects kept whatever their age (Repo.recently_referenced); None: a full
        # repack finds them itself, as gc does (`mvc pack --all`, a repair's repack)
        self.protect = protect
        self.full = full
        self.geometric = full and geometric
        self.grace_s = 3600.0 if grace_s is None else grace_s
        self.max_depth = repo.config_value("pack.maxDepth", DEFAULT_MAX_DEPTH)
        self.level = repo.config_value("pack.level", 1)
        self.verify = repo.config_value("pack.verify", True)
        # (`pack_locked`: the caller holds it, taken before the writers lock, as every holder of both does)
        self.lock = None if pack_locked else pack_lock(repo, lock_timeout_s)
        self._told_damaged_base = False  # (said once a run: see _encode)
        self.targets: list[str] = []
        self.total_bytes = 0

    def __enter__(self):
        try:
            if self.lock is not None:
                self.lock.acquire()
        except OSError as e:
            if not (self.dry_run and environment_error(e)):
                raise
            self.lock = None  # a report on a read-only (or full) repository: nothing to guard
        try:
            self._plan()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()

    # -- planning ----------------------------------------------------------------------------
    def _plan(self) -> None:
        repo = self.repo
        self.ps = _store(repo)
        self.ps.refresh()
        # every record listed (a full repack rewrites them) or, for new objects only, looked up one by one
        self.packed = self.ps.records() if self.full else _Packed(self.ps)
        self.old_packs = self.ps.packs()
        self.outside: list = []  # packs a merge leaves be (of the other age): they stay, as kept ones do
        if self.merge_only:
            from .maintenance import GC_GRACE_S
            cutoff = time.time() - GC_GRACE_S
            self.outside = [p for p in self.old_packs if (_mtime(p) >= cutoff) != (self.merge_only == "young")]
            self.old_packs = [p for p in self.old_packs if p not in self.outside]
        stop_at = None
        if self.recent_only:  # where the walk stops; what it packs is listed again after it (below)
            loose_then = set(repo.loose.ids())
            stop_at = lambda oid: oid in self.packed and oid not in loose_then  # noqa: E731
        if self.live is not None:
            live = self.live
        elif self.full:  # drops what is unreachable: refuses while something reachable is damaged
            live = repo.reachable_whole("packing")
        else:  # deletes nothing: a ref file that holds no id is skipped (history_bases warns of it)
            live = repo.reachable(bad_refs={}, stop_at=stop_at, include_reflogs=not self.recent_only)[0]
        # an index whose pack is gone is kept while it lists reachable objects stored nowhere (any
        # such object, where the walk stops early and what it found is not all that is reachable)
        self.reachable = None if self.recent_only or self.merge_only else live
        if self.protect is None:
            self.protect = repo.recently_referenced(live, self.grace_s) if self.full else set()
        # listed after the walk: whatever a commit it reached names was written before that commit's ref
        # moved (a listing made before the walk, one folder at a time, could hold such a commit and
        # miss its blobs: packed alone, later walks would stop at it and leave them loose)
        loose = set(repo.loose.ids())
        if self.recent_only:  # (certificates of older, packed commits: the walk stopped above them)
            live = set(live)
            repo.reach_loose_certificates(sorted(loose - live), live, stop_at)
        if self.merge_only:
            self.rank = {oid: i for i, oid in enumerate(dict.fromkeys(
                r.oid for p in sorted(self.old_packs, key=_mtime) for r in p.ordered()))}
            self.base_of, self.dtype_of = {}, {}
        else:
            self.rank, self.base_of, self.dtype_of = history_bases(repo, stop_at, reflogs=not self.recent_only)
        self.kept_packs: list = []
        self.young_time: float | None = None
        self.kept_young = 0
        self._whole_packs: dict[str, bool] = {}
        self.gone: set[str] = set()
        self.dropped_bytes = self.dup_bytes = 0
        if self.full:
            now = time.time()
            mtime = {p.name: _mtime(p) for p in self.old_packs}  # now, not when this process opened it
            holders: dict[str, list] = {}
            for p in self.old_packs:
                for oid in p.records:
                    holders.setdefault(oid, []).append(p)
            young = {oid for oid, ps in holders.items() if oid not in live and (
                oid in self.protect or any(now - mtime[p.name] < self.grace_s for p in ps))}
            gone = self.gone = {oid for oid in holders if oid not in live and oid not in young}
            self.kept_young = len(young)  # (unreachable, kept for their youth: gc reports them)
            if self.geometric:
                self.kept_packs = self._geometric_keep(gone, loose, live)
            kept_ids = {oid for p in self.kept_packs for oid in p.records}
            # the garbage kept for its youth keeps its age: the new pack gets the time of the
            # youngest pack it comes from, not now (else it would look young again at every gc)
            self.young_time = max((mtime[p.name] for oid in young - kept_ids for p in holders[oid]), default=None)
            self.rolled_packs = [p for p in self.old_packs if p not in self.kept_packs]
            self.dropped = len(gone)
            targets = ({oid for oid in live if oid in loose or oid in self.packed} | young) - kept_ids
            if (not self.geometric and len(self.old_packs) <= 1 and not self.dropped
                    and not (targets & loose)
                    and all(r.depth <= self.max_depth for p in self.old_packs for r in p.records.values())):
                targets = set()  # already one pack holding exactly what should be kept
                self.rolled_packs = []
            # what the disk frees: every copy of a dropped object in the packs rewritten (each entry and
            # its index record), and all but one copy of those kept (a gc that had to leave its old
            # packs, writers being busy, stored each live object twice; a pack kept holds the one)
            seen: set[str] = set(kept_ids)
            for p in self.rolled_packs:
                for oid, r in p.records.items():
                    if oid in gone:
                        self.dropped_bytes += r.length + pf.RECORD.size
                    elif oid in seen:
                        self.dup_bytes += r.length + pf.RECORD.size
                    seen.add(oid)
        else:
            self.dropped = 0
            self.rolled_packs = []
            targets = {oid for oid in live if oid in loose and oid not in self.packed}
        # records that stay where they are: new XOR deltas may use them as bases
        self.fixed = _Packed(self.ps, records=True) if not self.full else \
            {oid: r for p in self.outside + self.kept_packs for oid, r in p.records.items()}
        # packed elsewhere already: their loose copies go once this run is durable
        self.loose_dups = {oid for oid in loose if oid in self.packed} if not (self.full and targets) else set()
        self.loose_targets = {oid for oid in targets if oid in loose}
        self.loose_dup_bytes = sum(_size(repo.loose, oid) for oid in  # (loose copies of packed objects: deleted;
                                   {o for o in self.loose_dups | self.loose_targets if o in self.packed} & live)  # gc's
        # sweep counts those of garbage)
        big = len(self.rank) + 1
        self.targets = sorted(targets, key=lambda o: (o in self.rank, self.rank.get(o, big), o))
        self.total_bytes = sum(self.packed[o][1].size if o in self.packed else repo.loose.size(o)
                               for o in self.targets)

    def _geometric_keep(self, gone: set, loose: set, live: set) -> list:
        """The packs gc leaves as they are: the largest ones, each at least GEOMETRIC_FACTOR times
        the bytes of everything smaller (including what must be rewritten), so an object is
        rewritten a logarithmic number of times however many gcs run. A pack is rewritten when it
        holds an object to drop or one that also lies loose (the loose copy may repair a damaged
        record: it wins), when a chain in it is deeper than pack.maxDepth (lowered since), and when
        a delta in it has its base in a pack being rewritten (kept chains stay exactly as they were
        written, depths included)."""
        def dirty(p) -> bool:
            return any(oid in gone or oid in loose or r.depth > self.max_depth for oid, r in p.records.items())
        clean = sorted((p for p in self.old_packs if not dirty(p)), key=lambda p: p.file_size, reverse=True)
        rest = sum(p.file_size for p in self.old_packs if p not in clean)
        rest += sum(self.repo.loose.size(oid) for oid in loose if oid in live and oid not in self.packed)
        kept = []
        for i, p in enumerate(clean):
            if p.file_size < GEOMETRIC_FACTOR * (sum(q.file_size for q in clean[i + 1:]) + rest):
                break
            kept.append(p)
        while True:  # removing a pack leaves the others' sizes conditions true: it still counts below them
            ids = {oid for p in kept + self.outside for oid in p.records}
            open_ = [p for p in kept if any(r.base is not None and r.base not in ids for r in p.records.values())]
            if not open_:
                return kept
            kept = [p for p in kept if p not in open_]

    # -- writing -----------------------------------------------------------------------------
    def run(self, progress=None, dry_run: bool = False, partial=None) -> dict:
        """Write the pack and remove what it replaces; `dry_run` only reports the plan.
        `progress(nbytes)` is called once an object is written; `partial(nbytes)`, when given, as a
        large object's batches are encoded (its `progress` call then carries only the rest)."""
        t0 = time.perf_counter()
        stats = {"full": self.full, "packed": len(self.targets), "bytes_before": 0, "bytes_after": 0,
                 "encodings": {name: 0 for name in pf.ENCODING_NAMES.values()}, "reused": 0,
                 "pack": None, "loose_removed": 0, "packs_removed": 0, "dropped": self.dropped,
                 "dropped_bytes": self.dropped_bytes, "duplicate_bytes": self.dup_bytes + self.loose_dup_bytes,
                 "kept_young": self.kept_young, "max_depth": self.max_depth,
                 "seconds": 0.0, "dry_run": dry_run}
        if dry_run:
            stats["bytes_before"] = self.total_bytes
            stats["tmp_bytes"] = self._remove_stale_tmp(dry_run=True)
            stats["overhead_freed"] = pf.PACK_OVERHEAD * max(0, len(self.rolled_packs) - bool(self.targets))
            stats["loose_removed"] = len(self.loose_targets | self.loose_dups)  # (as run does, the
            stats["packs_removed"] = len(self.rolled_packs) if self.full else 0  # packs it merges)
            return stats
        name = None
        if self.targets:
            name, records, reused = self._write(progress, partial)
            if self.young_time is not None and self.young_time < time.time():
                with contextlib.suppress(OSError):
                    os.utime(os.path.join(self.ps.dir, name + ".pack"), (self.young_time, self.young_time))
            stats["pack"] = name
            stats["reused"] = reused
            stats["bytes_before"] = sum(r.size for r in records)
            stats["bytes_after"] = sum(os.path.getsize(os.path.join(self.ps.dir, name + ext))
                                       for ext in (".pack", ".idx"))
            for r in records:
                stats["encodings"][pf.ENCODING_NAMES[r.encoding]] += 1
            stats["depth_max_written"] = max((r.depth for r in records), default=0)
        self.ps.refresh()  # this process's readers see the new pack before loose copies go
        for oid in sorted(self.loose_targets | {o for o in self.loose_dups if self._packed_copy_whole(o)}):
            self.repo.loose.delete(oid)
            stats["loose_removed"] += 1
        rolled = [p for p in self.rolled_packs if p.name != name] if self.full and (name or not self.targets) else []
        waited = 0.0
        if rolled and self.gone:
            t_wait = time.perf_counter()
            with (contextlib.nullcontext(True) if self.writers_locked
                  else self.repo.writers_exclusive_within(DROP_LOCK_WAIT_S, self.wait_again)) as locked:
                waited = time.perf_counter() - t_wait
                why = self._keep_old_packs(locked)
                if why:  # leave every old pack, so nothing they hold loses a delta base; a later gc drops
                    stats["packs_left"], stats["packs_left_why"] = len(rolled), why
                    stats["dropped"] = stats["dropped_bytes"] = 0
                    stats["duplicate_bytes"] = self.loose_dup_bytes  # (the loose copies went all the same)
                    rolled = []
                self._delete(rolled, stats)
        else:
            self._delete(rolled, stats)
        made = bool(name) and name not in {p.name for p in self.old_packs}  # (the same content: the same pack)
        stats["overhead_freed"] = pf.PACK_OVERHEAD * max(0, len(rolled) - made)  # (packs merged into one)
        stats["packs_kept"] = len(self.kept_packs)
        stats["tmp_bytes"] = self._remove_stale_tmp()  # left by killed pack runs, once past the grace
        self.ps.refresh()
        stats["lock_wait_s"] = waited
        stats["seconds"] = time.perf_counter() - t0 - waited  # (the work: a speed is not one of waiting)
        return stats

    def _keep_old_packs(self, locked: bool) -> str | None:
        """Why the old packs must stay although this run drops objects from them, or None. Called
        holding the writers lock exclusively (`locked`): no commit, fetch or push into this
        repository is between finding an object and pointing a ref at it, so what the refs reach
        now is final; an object this run drops that they reach again (a commit or push that reused
        it while the pack was written) keeps the old packs."""
        if not locked:
            return "busy: commits or pushes held the writers lock"
        if self.gone & self.repo.reachable()[0]:
            return "referenced again while packing"
        return None

    def _delete(self, packs: list, stats: dict) -> None:
        for pack in _deletion_order(packs):
            # the pack first, renamed to a temp name: a run killed here leaves an index without its
            # pack and a temp file (both removed past the grace), never a pack without its index
            doomed = os.path.join(self.ps.dir, f"{TMP_PREFIX}{os.urandom(16).hex()}.pack")
            try:
                os.replace(pack.path, doomed)
            except FileNotFoundError:
                doomed = None
            for path in (pack.idx_path, doomed):
                try:
                    if path:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
            stats["packs_removed"] += 1
        if packs:
            fsync_dir(self.ps.dir)

    def _whole(self, pack) -> bool:
        """Whether a pack's bytes match its checksum (asked once per pack and run)."""
        whole = self._whole_packs.get(pack.name)
        if whole is None:
            whole = self._whole_packs[pack.name] = pack.verify_checksum()
        return whole

    def _packed_copy_whole(self, oid: str) -> bool:
        """Whether the packed copy of an object that also lies loose decodes and verifies: if not,
        the loose copy (perhaps a repair) is the good one and stays."""
        try:
            self.ps.view(oid)
            return True
        except MvcError:
            return False

    def _read(self, oid: str, recent: dict):
        data = recent.get(oid)
        if data is None:
            data = self.repo.store.view(oid)
            recent[oid] = data
            self._recent_bytes += len(data)
            while (self._recent_bytes > WRITER_CACHE_BYTES or len(recent) > _recent_limit()) and len(recent) > 1:
                old = recent.pop(next(iter(recent)))
                self._recent_bytes -= len(old)
        return data

    def _encode(self, oid: str, depth_of: dict, recent: dict, into=None, progress=None):
        """(encoding, length, parts, base id or None, depth, object size) for one object. With a
        file `into`, an object of STREAM_BYTES or more is written there (parts None), a batch of
        chunks at a time, reporting its bytes to `progress` as it goes; otherwise `parts` are the
        entry's bytes for the caller to write (and to report)."""
        from .pack_codec import GROUPED_DTYPES, STREAM_BYTES, encode, encode_into
        data = self._read(oid, recent)
        prefix, itemsize, base, base_depth = 0, 1, None, None
        if self.dtype_of.get(oid) is not None:
            try:
                e = stf.parse_blob(data, f"blob {oid[:12]}")
            except BadInput:
                e = None
            if e is not None:
                prefix, itemsize = e.begin, GROUPED_DTYPES.get(e.dtype, 1)
                base = self.base_of.get(oid)
                if base is not None:
                    base_depth = self._depth(base, depth_of)
                if base_depth is None or base_depth + 1 > self.max_depth:
                    base = None
        base_data = None
        if base:
            try:
                base_data = self._read(base, recent)
            except CorruptObject as e:  # (a damaged base is only a reference: this object goes whole,
                base = None             # and fsck names the base; packing stops only when it packs that one)
                if not self._told_damaged_base:
                    self._told_damaged_base = True
                    warnings.warn(f"{e.message}: objects like it were packed whole (see mvc fsck)")
        if into is not None and len(data) >= STREAM_BYTES:
            encoding, length = encode_into(into, data, prefix, itemsize, base_data, level=self.level,
                                           progress=progress)
            parts = None
        else:
            enc = encode(data, prefix, itemsize, base_data, level=self.level)
            encoding, length, parts = enc.encoding, enc.length, enc.parts
        if encoding == pf.XOR:
            return encoding, length, parts, base, base_depth + 1, len(data)
        return encoding, length, parts, None, 0, len(data)

    def _write(self, progress, partial=None) -> tuple[str, list[pf.Record], int]:
        os.makedirs(self.ps.dir, exist_ok=True)
        tmp = os.path.join(self.ps.dir, f"{TMP_PREFIX}{os.urandom(16).hex()}.pack")
        tmp_idx = None
        records: list[pf.Record] = []
        depth_of: dict[str, int] = {}
        recent: dict = {}
        self._recent_bytes = 0
        reused = 0
        told = [0]  # bytes of the current object told to `partial`
        damaged: list[str] = []  # entries copied as they are from packs failing their checksum

        def part(n: int) -> None:
            told[0] += n
            partial(n)
        try:
            with open(tmp, "w+b") as f:
                put = f.write
                put(pf.encode_pack_header(len(self.targets)))
                offset = pf.PACK_HEADER.size
                for oid in self.targets:
                    told[0] = 0
                    old = self.packed.get(oid)
                    # a loose copy wins over the packed one: it may be a repair of a damaged record
                    reuse = (self.full and old is not None and oid not in self.loose_targets
                             and self._reusable(old[1], depth_of))
                    encoded = None
                    if reuse and not self._whole(old[0]):
                        # its pack fails its checksum: decode the object (any good copy serves);
                        # if that fails, copy the entry as it is (its base may be whole here)
                        try:
                            encoded = self._encode(oid, depth_of, recent)
                            reuse = False
                        except CorruptObject:
                            damaged.append(oid)
                    if reuse:
                        pack, r = old
                        piece = pack.entry(r)
                        put(piece)
                        base, depth, encoding, length, size = r.base, (self._depth(r.base, depth_of) + 1 if r.base else 0), \
                            r.encoding, r.length, r.size
                        reused += 1
                    else:
                        encoding, length, parts, base, depth, size = \
                            encoded or self._encode(oid, depth_of, recent, f, part if partial else None)
                        for piece in parts or ():
                            put(piece)
                    records.append(pf.Record(oid, base, offset, length, size, encoding, depth))
                    depth_of[oid] = depth
                    offset += length
                    if progress:
                        progress(size - told[0])
                f.flush()
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as written:
                    checksum = bytes.fromhex(hash_bytes(written))  # all cores, unlike piecewise updates
                f.write(checksum)
                f.flush()
                os.fsync(f.fileno())
            name = pf.pack_name(checksum)
            final = os.path.join(self.ps.dir, name)
            _read_only(tmp)
            index = pf.encode_index(records, checksum)
            tmp_idx = os.path.join(self.ps.dir, f"{TMP_PREFIX}{os.urandom(16).hex()}.idx")
            with open(tmp_idx, "wb") as f:
                f.write(index + bytes.fromhex(hash_bytes(index)))
                f.flush()
                os.fsync(f.fileno())
            _read_only(tmp_idx)
            # the index first: readers use a pack once both files are there, so a run killed between
            # the renames leaves an index without its pack (no data; removed past the grace), never
            # a pack without its index (which fsck reports as damage)
            os.replace(tmp_idx, final + ".idx")
            tmp_idx = None
            os.replace(tmp, final + ".pack")
            fsync_dir(self.ps.dir)
        except BaseException as e:
            for path in (tmp, tmp_idx):
                try:
                    if path:
                        os.unlink(path)
                except OSError:
                    pass
            if isinstance(e, OSError) and e.filename in (None, tmp, tmp_idx):  # (a full disk: say where; the
                e.filename, e.filename2 = self.ps.dir, None                  # temp files are removed)
            raise
        recent.clear()  # (decoded delta bases: not held while the pack is read back)
        if self.verify:
            self._verify_written(name, records, damaged)
        return name, records, reused

    def _depth(self, base: str, depth_of: dict) -> int | None:
        """The chain depth of `base` written earlier in this pack or in one that stays, else None."""
        if base in depth_of:
            return depth_of[base]
        r = self.fixed.get(base)
        return r.depth if r is not None else None

    def _reusable(self, r: pf.Record, depth_of: dict) -> bool:
        if r.encoding != pf.XOR:
            return True
        depth = self._depth(r.base, depth_of)
        return depth is not None and depth + 1 <= self.max_depth

    def _verify_written(self, name: str, records: list[pf.Record], damaged: list[str]) -> None:
        """Read every object back from the new pack; on any failure remove it before anything else.
        `damaged`: entries copied unread from packs failing their checksum (no other copy decoded):
        when one of them fails, the damage is on disk, not packing's."""
        fresh = PackStore(self.ps.dir, cache_bytes=self.ps.cache.capacity)
        try:
            pack = fresh._packs.get(name) if fresh.refresh() else None
            if pack is None:
                raise CorruptObject(f"the new pack {name} cannot be opened")
            if pack.records != {r.oid: r for r in records}:  # its index hashed and decoded whole
                raise CorruptObject(f"the index of the new pack {name} does not list what was written")
            fresh.pin(pack)  # read this pack's copy, never another's
            with fresh.scanning([r.oid for r in sorted(records, key=lambda r: r.offset)]) as chains:
                for chain in chains:
                    for oid in chain:
                        fresh.check(oid)
        except MvcError as e:
            for ext in (".idx", ".pack"):
                try:
                    os.unlink(os.path.join(self.ps.dir, name + ext))
                except FileNotFoundError:
                    pass
            if damaged:  # (copied unread: the new pack fails on them or on deltas built on them)
                more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
                raise CorruptObject(f"packing stopped, the packs stay as they were: object {damaged[0]}{more} is "
                                    "damaged in its pack and no other copy reads whole", "mvc fsck names what "
                                    "refers to it; mvc fsck --repair-from REMOTE restores it from a remote or "
                                    "clone") from None
            raise CorruptObject(f"packing failed verification, nothing was removed: {e.message}",
                                "this is a bug in mvc; please report it") from None

    def _lost_reachable(self, index: str) -> bool:
        """Whether an index without its pack lists reachable objects stored nowhere (fsck names it;
        it is kept): any object stored nowhere, where this run's walk did not find all that is."""
        lost = _lost_with_pack(self.repo, self.ps.dir, index)
        return any(o in self.reachable for o in lost) if self.reachable is not None else bool(lost)

    def _remove_stale_tmp(self, dry_run: bool = False) -> int:
        """Remove temp files of killed pack runs, and indexes whose pack never arrived or was being
        removed, older than the grace period; returns their bytes."""
        now, freed = time.time(), 0
        if not os.path.isdir(self.ps.dir):  # nothing was ever packed here
            return 0
        names = os.listdir(self.ps.dir)
        for n in names:
            if n.startswith(TMP_PREFIX) or (_pack_missing(n, names) and not self._lost_reachable(n)):
                p = os.path.join(self.ps.dir, n)
                try:
                    st = os.stat(p)
                    if now - st.st_mtime >= self.grace_s:
                        if not dry_run:
                            os.unlink(p)
                        freed += st.st_size
                except FileNotFoundError:
                    pass
        return freed


def _mtime(pack) -> float:
    try:
        return os.stat(pack.path).st_mtime
    except FileNotFoundError:  # removed by another repack since we listed it
        return pack.mtime


def _deletion_order(packs: list) -> list:
    """`packs` ordered so that a pack goes before the packs holding the bases of its deltas: a run
    killed between two deletions leaves no delta whose base is gone."""
    holder = {oid: p.name for p in packs for oid in p.records}
    left, order = list(packs), []
    while left:
        needed = {holder.get(r.base) for p in left for r in p.records.values()
                  if r.base is not None and holder.get(r.base) != p.name}
        free = [p for p in left if p.name not in needed] or left  # a cycle: any order
        order += free
        left = [p for p in left if p not in free]
    return order


def pack(repo, full: bool = False, grace_s: float | None = None, progress=None, dry_run: bool = False,
         geometric: bool = False, protect: set[str] | None = None, live: set[str] | None = None,
         writers_locked: bool = False, lock_timeout_s: float = LOCK_TIMEOUT_S, partial=None,
         recent_only: bool = False, merge_only: str | None = None) -> dict:
    """Pack reachable loose objects (full: repack everything into one pack; full and geometric: keep
    the large packs with nothing to drop, as gc does; recent_only, merge_only: see `Packer`).
    Returns statistics."""
    with Packer(repo, full=full, grace_s=grace_s, geometric=geometric, protect=protect, live=live,
                writers_locked=writers_locked, lock_timeout_s=lock_timeout_s, dry_run=dry_run,
                recent_only=recent_only, merge_only=merge_only) as p:
        return p.run(progress, dry_run=dry_run, partial=partial)


def _size(store, oid: str) -> int:
    try:
        return store.size(oid)
    except MvcError:  # (gone meanwhile)
        return 0


def maybe_autopack(repo, cid: str) -> dict | None:
    """Pack when `pack.autoEvery = K` is set and K first-parent commits up to `cid` are loose; then,
    past `pack.autoPackLimit` packs (each lookup of an object asks every pack), merge the small
    ones as gc does, keeping every object (unreachable ones too: what to drop is gc's call)."""
    k = repo.config_value("pack.autoEvery", 0)
    if k <= 0:
        return None
    n, c = 0, cid
    while c and n < k and repo.loose.has(c):
        n += 1
        parents = repo.read_commit(c)["parents"]
        c = parents[0] if parents else None
    if n < k:
        return None
    try:
        stats = pack(repo, lock_timeout_s=0.0, recent_only=True)  # never makes a commit wait for a gc
        limit = repo.config_value("pack.autoPackLimit", AUTO_PACK_LIMIT)
        if limit and len(_store(repo).packs()) > limit:  # merge the small packs as gc would, dropping
            for age in ("old", "young"):                   # nothing (that is gc's job)
                pack(repo, merge_only=age, lock_timeout_s=0.0)
        return stats
    except LockHeld:
        return None  # another process is packing right now: the next commit packs
    except (MvcError, OSError) as e:  # the commit itself has succeeded: say so, do not fail it
        warnings.warn(f"automatic packing after commit {cid[:12]} failed: "
                      f"{os_error_text(e) if isinstance(e, OSError) else e}")
        return None


def storage_usage(repo, reachable: set[str] | None = None) -> dict:
    """Objects, their own bytes, and the bytes on disk (loose files, pack files and indexes); with
    the set of `reachable` ids, also how many objects and bytes are garbage (unreachable)."""
    ps = _store(repo)
    packed = ps.records()
    object_bytes = loose_disk = loose_count = garbage = garbage_bytes = 0
    for oid in repo.loose.ids():
        try:
            n = repo.loose.size(oid)
        except MvcError:
            continue
        loose_count += 1
        loose_disk += n
        if oid not in packed:
            object_bytes += n
            if reachable is not None and oid not in reachable:
                garbage, garbage_bytes = garbage + 1, garbage_bytes + n
    object_bytes += sum(r.size for _p, r in packed.values())
    if reachable is not None:
        unreached = [r.size for oid, (_p, r) in packed.items() if oid not in reachable]
        garbage, garbage_bytes = garbage + len(unreached), garbage_bytes + sum(unreached)
    pack_disk = 0
    packs = ps.packs()
    try:
        names = os.listdir(ps.dir)
    except FileNotFoundError:
        names = []
    for path in [q for p in packs for q in (p.path, p.idx_path)] + [
            os.path.join(ps.dir, name + ext) for name in ps.damaged for ext in (".pack", ".idx")] + [
            os.path.join(ps.dir, n) for n in names if _index_missing(n, names)]:
        try:  # (packs set aside, their index damaged or lost, take their room on disk too)
            pack_disk += os.path.getsize(path)
        except FileNotFoundError:
            pass
    count = len(packed) + sum(1 for oid in repo.loose.ids() if oid not in packed)
    tmp_files, tmp_bytes = _unfinished_writes(repo, ps.dir)
    extra = {} if reachable is None else {"unreachable_objects": garbage, "unreachable_bytes": garbage_bytes}
    return {**extra, "objects": count, "object_bytes": object_bytes, "stored_bytes": loose_disk + pack_disk,
            "loose_objects": loose_count, "loose_bytes": loose_disk, "packed_objects": len(packed),
            "pack_files": len(packs), "pack_bytes": pack_disk,
            "unfinished_files": tmp_files, "unfinished_bytes": tmp_bytes}


def _index_missing(name: str, names: list[str]) -> bool:
    """A pack file without its index (invisible to readers: a pack is used only through its index):
    an index lost or deleted by hand (mvc writes and removes the index so that a killed run never
    leaves this). Never deleted by mvc (its objects may be the only copies); fsck names it."""
    return name.startswith("pack-") and name.endswith(".pack") and name[:-5] + ".idx" not in names


def _pack_missing(name: str, names: list[str]) -> bool:
    """An index without its pack: left by a pack run killed between its two renames, or by a gc
    killed while removing that pack. Holds no object data; readers ignore it."""
    return name.startswith("pack-") and name.endswith(".idx") and name[:-4] + ".pack" not in names


def _lost_with_pack(repo, pack_dir: str, index: str) -> list[str]:
    """The objects an index without its pack lists that no store holds: reachable ones were lost
    with the pack file (removed by hand), unreachable ones were dropped by the gc that was removing
    it when killed (a killed pack run's are all still loose). None listed when the index cannot be
    read."""
    try:
        with open(os.path.join(pack_dir, index), "rb") as f:
            data = f.read()
        pf.check_index(data, index)
        _checksum, records = pf.decode_index(data[:len(data) - pf.TRAILER_BYTES], index)
    except (OSError, CorruptObject):
        return []
    return [r.oid for r in records if not repo.store.has(r.oid)]


def lost_pack_files(repo, live: set[str]) -> list[dict]:
    """fsck's problems for indexes whose pack file is gone while reachable objects they list are
    stored nowhere else (gc keeps such an index: see Packer._remove_stale_tmp)."""
    ps = _store(repo)
    try:
        names = os.listdir(ps.dir)
    except FileNotFoundError:
        return []
    problems = []
    for n in sorted(n for n in names if _pack_missing(n, names)):
        lost = _lost_with_pack(repo, ps.dir, n)
        reached = [o for o in lost if o in live]  # (the walk stops at a lost commit: what lies past it
        if reached:                               # is counted among all the index lists)
            problems.append({"id": n, "problem": f"index of a pack whose pack file {n[:-4]}.pack is gone: "
                             f"{len(lost)} object(s) it lists are stored nowhere else, {len(reached)} of them found "
                             f"reachable, e.g. {reached[0]} (restore the pack file, or the objects with mvc fsck "
                             "--repair-from REMOTE; gc keeps this index until then)"})
    return problems


def _unfinished(repo, pack_dir: str, name: str, names: list[str]) -> bool:
    """A file in the pack directory that a killed write left and gc removes: a temp file or an
    index without its pack (not a pack without its index: damage, which fsck names and mvc keeps;
    nor an index listing objects stored nowhere, which gc keeps for fsck to name)."""
    return name.startswith(TMP_PREFIX) or (_pack_missing(name, names) and not _lost_with_pack(repo, pack_dir, name))


def _unfinished_writes(repo, pack_dir: str) -> tuple[int, int]:
    """Temp files of object and pack writes that did not finish (a killed process): gc and pack
    remove them once older than the grace period."""
    files = total = 0
    for d, keep in ((repo.loose.tmp, lambda n, names: True),
                    (pack_dir, lambda n, names: _unfinished(repo, pack_dir, n, names))):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for n in (n for n in names if keep(n, names)):
            try:
                total += os.path.getsize(os.path.join(d, n))
                files += 1
            except OSError:
                continue
    return files, total


def pack_problems(repo, progress=None) -> list[dict]:
    """Damaged pack indexes and pack files, and pack files without an index, for fsck."""
    ps = _store(repo)
    problems = ps.verify(progress)
    try:
        names = os.listdir(ps.dir)
    except FileNotFoundError:
        return problems
    for n in names:
        if _index_missing(n, names):
            problems.append({"id": n, "problem": "pack file without its index: the objects in it are invisible "
                             "(mvc never leaves one, even when killed: the index was lost or removed by hand; "
                             "keep the file, its objects may be the only copies, and restore them with "
                             "mvc fsck --repair-from REMOTE)"})
    return problems


def _read_only(path: str) -> None:
    """Take the write permission off a file, keeping the rest of the mode the umask gave it (as a
    loose object has: a umask of 077 keeps packs private too)."""
    os.chmod(path, os.stat(path).st_mode & 0o444)

"""fetch and pull: downloading a remote's missing history (verified on receipt, stored blobs,
then trees, then commits) and moving remote-tracking refs; pull merges by fast-forward."""
from __future__ import annotations

import threading
import time
import warnings

from .. import certindex
from . import commit_graph
from ..errors import (BadName, ConfigError, CorruptObject, FormatTooNew, MvcError, NonFastForward, ObjectMissing,
                      TooLarge, UnknownRevision, WrongObjectType)
from ..objects import certificate_refs, decode, object_kind
from ..repo import Repo
from ..transfer import DEFAULT_JOBS, Progress
from ..transport import LazyRemoteStore, Transport, promisor_remote, promisor_store
from .common import (MAX_META_BYTES, NAMED_MAX_BYTES, Pool, ancestors, blob_size_hint, blob_size_limit,
                     branch_of, has_commit, holds, is_ancestor, permission_errors, receive, receive_into, sync_dirs)
from .config import open_remote

FETCH_ATTEMPTS = 4  # a fetch starts over when an object is gone because the remote's branches moved


# -- fetch -------------------------------------------------------------------------------------
def fetch(repo: Repo, remote: str | None = None, jobs: int = DEFAULT_JOBS, progress: Progress | None = None,
          transport: Transport | None = None, lazy: bool | None = None) -> dict:
    """Download what the remote's branches and tags reach and update refs/remotes/<remote>/*."""
    name, t = open_remote(repo, remote, jobs, transport)
    if name is None:  # (what it fetched no ref would hold: the next gc would delete it)
        raise ConfigError("fetch needs a configured remote: remote-tracking branches (NAME/BRANCH) keep what "
                          "it fetches", f"mvc remote add NAME {remote} first, or mvc clone {remote}")
    with Pool(jobs) as pool, permission_errors(t), repo.writing():
        return _fetch(repo, name, t, pool, progress or Progress(), lazy)


def _fetch(repo: Repo, name, t: Transport, pool: Pool, progress: Progress, lazy) -> dict:
    where = name or t.describe()
    t.require_repository()
    if lazy is None:
        lazy = name is not None and promisor_remote(repo.config) == name
    lazy_store = None
    if lazy:
        lazy_store = next((s for s in repo.store.stores if isinstance(s, LazyRemoteStore)), None) \
            or promisor_store(repo)
        if lazy_store is None:
            raise MvcError("a lazy fetch needs a promisor remote (clone with --lazy)")
    unreadable: set[str] = set()  # refs there that hold no id: their tracking refs stay as they are
    remote_refs = t.list_refs(unreadable)
    started = time.perf_counter()
    history = _History(repo, t, where, pool, progress, lazy_store)
    for attempt in range(FETCH_ATTEMPTS):
        try:
            history.fetch(set(remote_refs.values()))
            certs = _fetch_certs(repo, t, where, pool, history)
            break
        except ObjectMissing:
            # A branch deleted or rewritten there since we listed it may have had its history
            # collected by the gc of the repository serving as the remote: that is no damage.
            # What arrived is kept; fetch again what the branches reach now.
            unreadable_now: set[str] = set()
            now = t.list_refs(unreadable_now)
            if now == remote_refs or attempt == FETCH_ATTEMPTS - 1:
                raise
            remote_refs, unreadable = now, unreadable_now
    updated = {}
    damaged = {r for r, v in remote_refs.items() if v in history.not_commits}
    for r in sorted(damaged):  # like a ref file that holds no id: one bad entry blocks nothing else
        mend = (f"mvc push --repair {name or 'REMOTE'} {r[len('refs/heads/'):]} from a good copy sends what is "
                "missing there" if remote_refs[r] in history.absent and r.startswith("refs/heads/") else
                "push --force there replaces it" if r.startswith("refs/heads/") else
                f"a push never moves a tag there: remove {r} from it by hand")
        why = ("a newer mvc wrote it: upgrade mvc to fetch it" if remote_refs[r] in history.newer else
               f"the remote is damaged; {mend}")
        warnings.warn(f"skipped remote ref {r} on {where}: {history.not_commits[remote_refs[r]]} ({why})")
    if name:
        heads = {r[len("refs/heads/"):]: v for r, v in remote_refs.items()
                 if r.startswith("refs/heads/") and r not in damaged}
        there = damaged | unreadable  # (refs that are there, but fetched nothing: not pruned)
        for tref, oid in repo.refs.list(f"refs/remotes/{name}/").items():  # first: a branch `a/b` deleted
            gone = tref[len(f"refs/remotes/{name}/"):]                    # there frees the name `a` here
            if gone not in heads and f"refs/heads/{gone}" not in there:
                repo.refs.update(tref, None, expected=oid, message=f"fetch from {where}: pruned")
                updated[tref] = {"old": oid, "new": None}
        for branch, oid in heads.items():
            tref = f"refs/remotes/{name}/{branch}"
            old = repo.refs.read(tref)
            if old != oid:
                try:
                    repo.refs.update(tref, oid, message=f"fetch from {where}")
                except BadName as e:  # e.g. the remote has `a` and `a/b`: keep the other branches
                    warnings.warn(f"skipped remote branch {branch}: {e.message}")
                    continue
                updated[tref] = {"old": old, "new": oid}
                if old is not None and repo.store.has(old) and not is_ancestor(repo, old, oid):
                    updated[tref]["forced"] = True  # rewritten there (a rollback, a forced push)
    tags, tag_conflicts = {}, {}
    for r, oid in remote_refs.items():
        if not r.startswith("refs/tags/") or r in damaged:
            continue
        mine = repo.refs.read(r)
        if mine is None:
            try:
                repo.refs.update(r, oid, expected=None, message=f"fetch from {where}")
            except BadName as e:  # a tag here named `a` and one there `a/b`: keep the other tags
                warnings.warn(f"skipped remote tag {r[len('refs/tags/'):]}: {e.message}")
                continue
            tags[r[len("refs/tags/"):]] = oid
        elif mine != oid:
            tag_conflicts[r[len("refs/tags/"):]] = {"local": mine, "remote": oid}
    return {"remote": name, "url": t.url, "lazy": bool(lazy), "refs": updated, "tags": tags,
            "tag_conflicts": tag_conflicts, "commits": history.commits, "trees": history.trees,
            "objects_received": history.objects, "bytes_received": history.bytes,
            "blobs_promised": history.promised, "certificates": certs,
            "skipped_newer": sorted(r for r in damaged if remote_refs[r] in history.newer),
            "skipped": sorted(damaged), "unreadable": sorted(unreadable),
            "skipped_absent": sorted(r for r in damaged if remote_refs[r] in history.absent),
            "seconds": time.perf_counter() - started}


class _History:
    """Downloads the history of some commits: the commits down to those local refs reach (complete
    by construction; a commit here that no ref reaches may be the leftover of an interrupted fetch),
    their trees, and the blobs (promised instead in a lazy clone); blobs are stored first, then
    trees, then commits, so a commit here has its trees and a tree its blobs. Counts what arrived."""

    def __init__(self, repo: Repo, t: Transport, where: str, pool: Pool, progress: Progress, lazy_store):
        self.repo, self.t, self.where, self.pool, self.progress = repo, t, where, pool, progress
        self.lazy_store = lazy_store
        self.commits = self.trees = self.objects = self.bytes = self.promised = 0
        self._lock, self._dirty = threading.Lock(), set()
        self.limits: dict[str, int] = {}  # blob id -> the most bytes a tree naming it declares
        self.not_commits: dict[str, str] = {}  # tips that name no commit (a tree, a blob) -> what they are
        self.absent: set[str] = set()  # tips that name no object there (push --repair sends it, not --force)
        self.newer: set[str] = set()  # those of them that are commits of a newer format than this mvc reads
        self._ahead: dict[str, bytes] = {}  # commits downloaded ahead of the walk (mvc.remote.commit_graph)

    def download(self, oid: str, pending: dict | None = None) -> None:
        """Receive one object (verified) into the loose store, no larger than its trees declare
        (into the `pending` map of a loose-store batch when given: durable when the batch ends)."""
        n = receive_into(self.repo, self.t, oid, self.where, self._dirty, self.limits.get(oid, MAX_META_BYTES),
                         pending)
        with self._lock:
            self.objects += 1
            self.bytes += n
        self.progress.advance(n)

    def store(self, oid: str, data: bytes) -> None:
        """Keep one object received (and verified) already."""
        self.repo.loose.put(data, oid=oid)
        with self._lock:
            self.objects += 1
            self.bytes += len(data)

    def _tree_here(self, tid: str) -> dict:
        """A tree this repository holds; the remote's (verified) copy when the one here is damaged."""
        try:
            return self.repo.read_tree(tid, shared=True)
        except MvcError:
            return decode(receive(self.t, tid, self.where, MAX_META_BYTES), "tree", tid)

    def _reached_by_refs(self, tips) -> set[str]:
        """Commits local refs reach (complete by construction); empty when one cannot be read,
        so that everything found here is looked below."""
        try:
            return ancestors(self.repo, [c for c in tips if has_commit(self.repo, c)])
        except MvcError:
            return set()

    def sync(self) -> None:
        sync_dirs(self.repo, self._dirty, self.pool)

    def _commit_or_not(self, oid: str, tips) -> tuple[dict, bytes] | str:
        """(commit, its bytes), or for a tip that names another kind of object (a damaged ref there)
        what it is. A parent that is no commit is damaged history: that raises."""
        try:
            data = self._ahead.pop(oid, None) or receive(self.t, oid, self.where, MAX_META_BYTES)
            return decode(data, "commit", oid), data
        except WrongObjectType as e:
            if oid not in tips:
                raise
            return e.message
        except FormatTooNew as e:  # a newer mvc's commit: the refs reaching it are skipped, the others fetched
            self.newer.add(oid)
            return e.message
        except TooLarge:  # (a blob, most likely: it is not read to find out)
            if oid not in tips:
                raise
            return f"object {oid[:12]} is larger than any commit"
        except ObjectMissing:
            # a ref there naming no object is damaged as one naming a tree is, unless the ref
            # moved since it was listed (its history collected meanwhile): then fetch starts over
            if oid not in tips or oid not in set(self.t.list_refs().values()):
                raise
            self.absent.add(oid)
            return f"object {oid[:12]} is not there"

    def _leave_out_newer(self, tips, commits: dict) -> None:
        """Leave out of `commits` those whose history holds an object a newer mvc wrote (a commit, or
        a tree one names): nothing is stored that this mvc could not read whole. The tips among them
        are skipped as a newer tip is, naming the object (their refs are not moved; the others are)."""
        below: dict[str, str] = {}  # left-out commit -> the newer object its history holds

        def newer_in(c: str) -> str | None:
            obj = commits[c][0]
            return next((x for x in [*obj["components"].values(), *obj["parents"]] if x in self.newer),
                        None) or next((below[p] for p in obj["parents"] if p in below), None)

        changed = True
        while changed:  # (to a fixed point: a child is left out once a parent is; parents first, as the
            changed = False  # walk went down from the tips: one pass for a line of history)
            for c in reversed(list(commits)):
                if c not in below and (x := newer_in(c)):
                    below[c] = x
                    changed = True
        for c, x in below.items():
            del commits[c]
            if c in tips:
                self.newer.add(c)
                self.not_commits[c] = f"its history holds an object of a newer format ({self.not_commits[x]})"

    def fetch(self, tips, extra_trees=()) -> None:
        """The history of `tips`, and `extra_trees` with their blobs.

        Only what local refs reach is complete by construction. A commit or tree here that no ref
        reaches (left by an interrupted fetch, or by a gc killed while it deleted) may lack what it
        refers to, so the walk looks below it rather than skipping it."""
        repo, t, where, pool = self.repo, self.t, self.where, self.pool
        # (a ref's commit not here, e.g. its pack file lost, is no complete history: fetched again)
        complete = {c for c in set(repo.refs.list("refs/").values()) if holds(repo, c)}
        trusted: set[str] | None = None  # what local refs reach: computed when the walk meets a commit here
        commits: dict[str, tuple[dict, bytes]] = {}
        here: list[str] = []  # commits found here that no local ref reaches
        frontier = sorted(set(tips) - complete)
        seen = set(frontier)
        self._ahead = commit_graph.commits_ahead(repo, t, where, pool, frontier, complete)
        while frontier:
            missing = [c for c in frontier if not has_commit(repo, c)]
            if trusted is None and len(missing) < len(frontier):
                trusted = self._reached_by_refs(complete)
            here += [c for c in frontier if c not in missing and c not in (trusted or ())]
            for c, got in zip(missing, pool.map(lambda c: self._commit_or_not(c, tips), missing)):
                if isinstance(got, str):
                    self.not_commits[c] = got  # a damaged ref there (or a newer mvc's commit): skipped
                else:
                    commits[c] = got
            frontier = [c for c in frontier if c not in self.not_commits]
            parents = {p for c in frontier if c not in (trusted or ())
                       for p in (commits[c][0] if c in commits else repo.read_commit(c))["parents"]}
            for p in sorted(parents & set(self.not_commits) - self.newer):  # a skipped tip other history needs
                raise ObjectMissing(f"commit {p} on remote {where} ({self.not_commits[p]}) is the parent of "
                                    "commits a branch there reaches",
                                    "the remote is damaged: fetch from another copy, or mvc push --repair "
                                    "from a repository that has the history whole")
            frontier = sorted(parents - seen - complete - (trusted or set()))
            seen.update(frontier)
        self._ahead = {}  # (what the walk did not take: a graph line that lied)

        def trees_wanted():  # (those of a newer format left out)
            return sorted(({tid for obj, _ in commits.values() for tid in obj["components"].values()}
                           | {tid for c in here for tid in repo.read_commit(c)["components"].values()}
                           | set(extra_trees)) - self.newer)

        wanted = trees_wanted()
        tree_ids = [tid for tid in wanted if not repo.store.has(tid)]
        trees = {}
        for tid, data in zip(tree_ids, pool.map(lambda x: receive(t, x, where, MAX_META_BYTES), tree_ids)):
            try:
                trees[tid] = (decode(data, "tree", tid), data)
            except FormatTooNew as e:
                self.newer.add(tid)
                self.not_commits[tid] = e.message
        if self.newer:
            self._leave_out_newer(tips, commits)
            wanted = trees_wanted()
            trees = {tid: v for tid, v in trees.items() if tid in wanted}
        kept = [self._tree_here(tid) for tid in wanted if tid not in trees]  # here already: are their blobs?
        hints: dict[str, int] = {}
        for obj in [obj for obj, _ in trees.values()] + kept:
            hints.update(blob_size_hint(obj))
            for oid, n in blob_size_limit(obj).items():
                self.limits[oid] = max(n, self.limits.get(oid, 0))
        for b in sorted(b for b in hints if repo.loose.has(b) and not repo.loose.intact(b)):
            repo.loose.delete(b)  # (a damaged leftover, e.g. of an interrupted fetch: fetched anew, not trusted)
        blob_ids = sorted(b for b in hints if not repo.store.has(b))
        self.objects += len(commits) + len(trees)
        self.bytes += sum(len(d) for _, d in commits.values()) + sum(len(d) for _, d in trees.values())
        if self.lazy_store is not None:
            self.lazy_store.promise(blob_ids, self.limits)
            self.promised += len(blob_ids)
        else:
            self.progress.begin(f"fetching from {where}", len(blob_ids), sum(hints[b] for b in blob_ids))
            try:
                repo.loose.receive_in_batches(blob_ids, hints, self.download, pool.map)  # (small ones as a
                                                                                         # commit's: one syncfs)
            finally:
                self.progress.end()
                self.sync()
        for kind in (trees, commits):  # trees once their blobs are durable, commits once their trees are
            with repo.loose.batch():
                for oid, (_obj, data) in kind.items():
                    repo.loose.put(data, oid=oid)
        self.commits += len(commits)
        self.trees += len(trees)


def _fetch_certs(repo: Repo, t: Transport, where: str, pool: Pool, history: _History) -> int:
    """Certificates the remote holds for commits we have, with everything they name: data blobs,
    and named commits (with their history) and trees, and then the certificates of those commits
    in turn (gc keeps them with the commits: `mvc verify` of one must work here too)."""
    listed = t.cert_index_versions()
    done: set[str] = set()
    total = 0
    while True:
        commits = [c for c in listed if c not in done and has_commit(repo, c)]
        if not commits:
            return total
        done.update(commits)
        total += _fetch_certs_of(repo, t, where, pool, history, commits, listed)


def _fetch_certs_of(repo: Repo, t: Transport, where: str, pool: Pool, history: _History, commits: list,
                    listed: dict) -> int:
    """The certificates the remote holds for `commits`, with everything they name. The index lines come last."""
    wanted = {}
    for c, theirs in zip(commits, t.read_cert_indexes(commits, pool.map, listed)):
        mine = certindex.read_index(repo.dir, c)  # (a line here whose certificate is gone is fetched again:
        new = [i for i in theirs if i not in mine or not repo.store.has(i)]  # an index gc had not yet pruned)
        if new:
            wanted[c] = new
    ids = sorted({i for v in wanted.values() for i in v if not repo.loose.has(i)})

    def download(oid):  # one index line naming what the remote lacks or holds damaged must not block every fetch
        try:
            history.download(oid)
            return None
        except ObjectMissing:
            return "does not hold it"
        except CorruptObject as e:  # (its bytes do not hash to its id, or too large to be one)
            return f"holds it damaged ({e.message})"
    try:
        gone = {i: why for i, why in zip(ids, pool.map(download, ids)) if why}
    finally:
        history.sync()
    for c, v in wanted.items():
        for cid in [i for i in v if i in gone]:
            warnings.warn(f"remote {where} lists {cid[:12]} among the certificates of commit {c[:12]}, "
                          f"but {gone[cid]}; skipped")
            v.remove(cid)
    named, names = set(), {}
    for c, v in wanted.items():
        for cid in list(v):
            try:  # (a newer mvc's certificate is kept, with what it names, as gc and push keep it)
                names[cid] = certificate_refs(repo.store.get(cid), cid)
                named |= names[cid]
            except MvcError as e:  # one bad index line must not block every fetch
                warnings.warn(f"remote {where} lists {cid[:12]} among the certificates of commit {c[:12]}, "
                              f"but {e.message}; skipped")
                v.remove(cid)
    here = {x: k for x in named for k in [_local_kind(repo, x)] if k}  # present: looked below as well
    named = sorted(x for x in named if x not in here and not repo.store.has(x))

    def fetch_named(oid):  # data is stored now; commits and trees come with their history below
        try:
            data = receive(t, oid, where, NAMED_MAX_BYTES)
        except ObjectMissing:
            return None  # the certificate refers to it, fsck in this repository will say so
        kind = object_kind(data)
        if kind == "blob":
            history.store(oid, data)
        return kind

    kinds = {**dict(zip(named, pool.map(fetch_named, named))), **here}
    history.fetch([o for o, k in kinds.items() if k == "commit"], [o for o, k in kinds.items() if k == "tree"])
    for c, v in wanted.items():
        for cid in list(v):  # one naming what the fetch left out (a newer mvc's history): not attached,
            left = sorted(x for x in names[cid] if x in history.not_commits)  # so a later fetch tries again
            if left:
                warnings.warn(f"skipped certificate {cid[:12]} of commit {c[:12]} from {where}: it names "
                              f"{left[0][:12]}, which was not fetched ({history.not_commits[left[0]]})")
                v.remove(cid)
        if v:
            certindex.attach(repo.dir, c, v)
    return sum(len(v) for v in wanted.values())


def _local_kind(repo: Repo, oid: str) -> str | None:
    """The kind of an object held here (not merely promised by a lazy clone's remote); None when
    it is not here or cannot be read."""
    if not holds(repo, oid):
        return None
    try:
        return repo.kind_of(oid)
    except MvcError:
        return None


# -- pull --------------------------------------------------------------------------------------
def pull(repo: Repo, remote: str | None = None, branch: str | None = None, jobs: int = DEFAULT_JOBS,
         progress: Progress | None = None, transport: Transport | None = None) -> dict:
    """Fetch, then fast-forward `branch` (default: the current one) to the remote's."""
    name, t = open_remote(repo, remote, jobs, transport)
    if name is None:
        raise ConfigError("pull needs a configured remote", "mvc remote add NAME URL first")
    fetched = fetch(repo, name, jobs, progress, transport=t)
    branch = branch_of(repo, branch)
    if f"refs/heads/{branch}" in fetched["skipped"]:  # (its tracking ref did not move: not "up to date")
        newer = f"refs/heads/{branch}" in fetched["skipped_newer"]
        raise (FormatTooNew if newer else CorruptObject)(
            f"remote {name}'s branch {branch} was not fetched: " + (
                "its history holds what a newer mvc wrote" if newer else "it names no commit there"),
            "upgrade mvc" if newer else f"the remote is damaged: mvc push --force {name} {branch} from a good copy")
    theirs = repo.refs.read(f"refs/remotes/{name}/{branch}")
    if theirs is None:
        raise UnknownRevision(f"remote {name} has no branch {branch!r}", f"push it first: mvc push {name} {branch}")
    ref = f"refs/heads/{branch}"
    ours = repo.refs.read(ref)
    out = {"remote": name, "branch": branch, "old": ours, "new": theirs, "fetch": fetched}
    if ours is None:
        repo.refs.update(ref, theirs, expected=None, message=f"pull: created from {name}/{branch}")
        return {**out, "status": "created"}
    if ours == theirs:
        return {**out, "new": ours, "status": "up-to-date"}
    if is_ancestor(repo, ours, theirs):
        repo.refs.update(ref, theirs, expected=ours, message=f"pull: fast-forward to {name}/{branch}")
        return {**out, "status": "fast-forward"}
    if is_ancestor(repo, theirs, ours):
        return {**out, "new": ours, "status": "ahead"}
    mine = len(ancestors(repo, [ours]) - ancestors(repo, [theirs]))
    other = len(ancestors(repo, [theirs]) - ancestors(repo, [ours]))
    raise NonFastForward(
        f"{branch} and {name}/{branch} have diverged ({mine} and {other} commits of their own); "
        "pull only fast-forwards",
        f"mvc has no merge: keep yours with mvc push --force {name} {branch}, or take theirs with "
        f"mvc rollback remotes/{name}/{branch}")

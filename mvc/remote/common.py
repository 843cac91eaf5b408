"""What push, fetch, repair and clone share: the transfer thread pool, verified receipt of
remote objects, commit-graph walks and what certificates name."""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor, as_completed, wait

from ..errors import CorruptObject, MvcError, ObjectMissing, WrongObjectType
from ..objects import MAX_TREE_BYTES, certificate_refs, check_ref_name, tree_blob_sizes
from ..refs import moves_scope, moves_so_far
from ..repo import Repo
from ..store import fsync_dir, new_object_file
from ..transport import LazyRemoteStore, Transport, received, received_into


class Pool:
    """The thread pool of one transfer: `map` runs fn over items in parallel (results in order);
    the first error cancels what has not started and is raised."""

    def __init__(self, jobs: int):
        self.jobs = max(1, jobs)
        self._executor = None

    def map(self, fn, items) -> list:
        items = list(items)
        if self.jobs == 1 or len(items) <= 1:
            return [fn(i) for i in items]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.jobs)
        futures = {self._executor.submit(fn, item): k for k, item in enumerate(items)}
        results = [None] * len(items)
        try:
            for f in as_completed(futures):
                results[futures[f]] = f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            raise
        return results

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def permission_errors(t: Transport):
    """A file the user may not read or write is an error to fix, not a bug (naming what this
    operation, not an earlier one, had moved)."""
    with moves_scope():
        try:
            yield
        except PermissionError as e:
            raise MvcError(f"permission denied: {e.filename or t.describe()}",
                           f"{moves_so_far()}; check the permissions of the repository and of the remote") from None
        except (IsADirectoryError, NotADirectoryError, FileNotFoundError) as e:  # e.g. a ref that is a folder
            raise MvcError(f"unexpected file layout at {e.filename2 or e.filename or t.describe()}: {e.strerror}",
                           f"a file stands where a folder belongs or the reverse, or it was removed meanwhile; "
                           f"check that path; the remote is {t.describe()}") from None


def holds(repo: Repo, oid: str) -> bool:
    """Whether this repository holds `oid`, of any kind (not merely promised by a lazy clone's remote)."""
    return repo.loose.has(oid) or any(s.has(oid) for s in repo.store.stores[1:] if not isinstance(s, LazyRemoteStore))


def has_commit(repo: Repo, oid: str) -> bool:
    """Whether this repository holds `oid` as a commit. An id of a tree or blob here, which a
    damaged ref there may name, is not."""
    if not holds(repo, oid):
        return False
    try:
        repo.read_commit(oid, shared=True)
    except (WrongObjectType, ObjectMissing):  # (ObjectMissing: deleted by a gc meanwhile)
        return False
    except CorruptObject:
        return True  # here, but damaged: what reads it says so
    return True


def ancestors(repo: Repo, tips, stop=frozenset()) -> set[str]:
    """Commits reachable from `tips` (local), not descending into `stop`."""
    seen: set[str] = set()
    stack = [t for t in tips if t not in stop]
    while stack:
        c = stack.pop()
        if c in seen or c in stop:
            continue
        seen.add(c)
        stack.extend(repo.read_commit(c)["parents"])
    return seen


def is_ancestor(repo: Repo, a: str, b: str) -> bool:
    """Is commit `a` reachable from commit `b` (both local)?"""
    if a == b:
        return True
    seen, stack = set(), [b]
    while stack:
        c = stack.pop()
        if c == a:
            return True
        if c in seen:
            continue
        seen.add(c)
        stack.extend(repo.read_commit(c)["parents"])
    return False


MAX_META_BYTES = MAX_TREE_BYTES  # a commit, tree or certificate from a remote is refused beyond this
NAMED_MAX_BYTES = 1 << 30  # what a certificate names (check data: semantic CI reads at most 1 GiB)


def receive(transport: Transport, oid: str, where: str, max_size: int | None = None) -> bytes:
    """An object from the remote, verified against its id (a bad one raises and is not stored);
    one larger than `max_size` is refused before it is read."""
    return received(lambda: transport.get(oid, max_size=max_size), oid, where)


def receive_into(repo: Repo, t: Transport, oid: str, where: str, dirty: set, max_size: int | None = None,
                 pending: dict | None = None) -> int:
    """Stream an object from the remote into the loose store: a temp file, verified against its
    id, fsynced, then renamed into place (a bad object never gets its name). The directory entry
    is synced later with the others (see sync_dirs); returns the object's size. An object larger
    than `max_size` (what the tree naming it declares) is refused before it is read. With the
    `pending` map of a loose-store batch (LooseStore.batch), the verified temp file joins it
    instead: the batch makes all of them durable at once and renames them when it ends."""
    loose = repo.loose
    final = loose.path(oid)
    if os.path.exists(final):
        return os.path.getsize(final)
    with new_object_file(loose.tmp, oid, None if pending is not None else final,
                         loose.fsync and pending is None, readable=True) as f:
        n = received_into(lambda out: t.get_into(oid, out, max_size=max_size), f, oid, where)
    if pending is not None:
        pending[oid] = f.name
        return n
    dirty.add(os.path.dirname(final))
    return n


def sync_dirs(repo: Repo, dirty: set, pool: Pool) -> None:
    if repo.loose.fsync and dirty:
        dirs = sorted(dirty)
        dirty.clear()
        pool.map(fsync_dir, dirs)


def cert_inputs(repo: Repo, cert_ids) -> tuple[list[str], list[str], list[str]]:
    """(data blobs, commits, trees) that the certificates `cert_ids` name and this repository holds.
    A named commit travels with its history (a migration check names host commits of other
    branches), so that `mvc verify` and `mvc fsck` work in every clone."""
    found: dict[str, set[str]] = {"blob": set(), "commit": set(), "tree": set()}
    for cid in cert_ids:
        try:
            named = certificate_refs(repo.store.get(cid), cid)
        except MvcError:
            continue  # damaged here: fsck reports it
        for x in named:
            if x not in cert_ids and repo.store.has(x):
                try:
                    found[repo.kind_of(x)].add(x)
                except ObjectMissing:
                    continue  # (gone since has(): fsck says so)
                except CorruptObject:
                    found["blob"].add(x)  # damaged here: a push refuses to send it, push --repair names it
    return sorted(found["blob"]), sorted(found["commit"]), sorted(found["tree"])


def branch_of(repo: Repo, branch: str | None) -> str:
    """`branch`, or the current branch when it is None or HEAD (`mvc push origin HEAD`)."""
    if branch is None or branch == "HEAD":
        return repo.refs.head_branch_ref("name the branch", "e.g. mvc push origin main")[len("refs/heads/"):]
    check_ref_name(branch)
    return branch


def blob_size_hint(tree: dict) -> dict[str, int]:
    """Expected sizes of a tree's blobs (progress totals only: a header counts as 0)."""
    headers = {f["header"] for f in tree["files"].values() if f.get("header")}
    return {oid: 0 if oid in headers else n for oid, n in blob_size_limit(tree).items()}


def blob_size_limit(tree: dict) -> dict[str, int]:
    """The most bytes each blob of a (shape-checked) tree can have (see tree_blob_sizes)."""
    return tree_blob_sizes(tree, exact_headers=False)

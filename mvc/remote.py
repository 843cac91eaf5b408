"""Remotes: push, fetch, pull and clone between a Repo and a transport (directory or S3).

Only missing objects move, found without listing the remote's objects:
- push walks the local commit graph from the branch tip down to the commits the remote's refs
  already reach, asks the remote which of the remaining commits, trees and blobs it has (one
  existence check per object, in parallel) and uploads the rest in three phases, each made
  durable before the next: blobs, trees, commits. A tree on the remote therefore has its blobs
  there, which is what lets an interrupted push resume by skipping what arrived. The remote ref
  moves last, by compare-and-swap. A push to a directory holding an mvc repository holds off its
  owner's gc until then (mvc.transport.DirectoryTransport.writing and has).
- push --repair trusts nothing there: every object the pushed history reaches is read back and
  re-hashed; what is missing is sent and what is damaged is sent again over the bad copy, from
  local copies re-hashed first (one damaged here too is reported, never sent).
- fetch walks the remote's commit graph from its refs down to commits that local refs reach
  (complete by construction), downloads the missing commits, trees and blobs in parallel,
  verifies every object's BLAKE3 id on receipt (a bad object is rejected, never stored), writes
  blobs, then trees, then commits, and only then moves refs/remotes/<remote>/<branch>. An object
  gone because the remote's branches moved since they were listed (a deleted branch whose history
  the gc of a repository serving as the remote collected) is no damage: the fetch starts over
  from the branches as they are then, keeping what arrived.
Certificates (the index .mvc/certs/<2>/<62> of certificate ids per commit) and tags travel with
the commits they name, and so does what a certificate names: its data blobs, trees, and commits
with their history (a migration check names host commits of other branches), so that `mvc verify`
and `mvc fsck` work in every clone. A lazy fetch (clone --lazy) takes commits, trees and certificates only and
records the blob ids as promised; mvc.transport.LazyRemoteStore fetches them on first use.
No torch here: remotes move bytes.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import shutil
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed, wait

from . import safetensors_format as stf
from .errors import (BadInput, BadName, ConfigError, CorruptObject, FormatTooNew, MvcError, NonFastForward,
                     ObjectMissing, RefConflict, UnknownRevision, WrongObjectType)
from . import certindex
from .files import pid_alive
from .objects import check_ref_name, decode, hash_bytes, is_oid, named_ids, object_kind, tree_blob_ids
from .repo import Repo
from .store import fsync_dir, new_object_file
from .transport import (DAMAGED, REPAIR_HINT, LazyRemoteStore, Transport, check_endpoint, configured_remote,
                        is_url, normalize_url, open_transport, promisor_remote, promisor_store,
                        remote_section)
from .transfer import DEFAULT_JOBS, Progress  # noqa: F401  (part of this module's API)

DEFAULT_REMOTE = "origin"
FETCH_ATTEMPTS = 4  # a fetch starts over when an object is gone because the remote's branches moved


# -- remote configuration ----------------------------------------------------------------------
def check_remote_name(name: str) -> str:
    if "/" in name:
        raise BadName(f"invalid remote name {name!r} (no '/')")
    try:
        check_ref_name(name)
    except BadName:
        raise BadName(f"invalid remote name {name!r}") from None
    return name


def _not_itself(repo: Repo, url: str) -> str:
    """A directory remote must be another repository: pushing to itself would move (or delete) the
    very branches it reads from."""
    if "://" not in url and os.path.realpath(url) in (os.path.realpath(repo.root), os.path.realpath(repo.dir)):
        raise BadInput(f"{url} is this repository itself", "a remote is another repository or location")
    return url


def list_remotes(repo: Repo) -> list[dict]:
    out = []
    for section in repo.config.sections():
        m = re.fullmatch(r'remote "(.+)"', section)
        if m and repo.config.has_option(section, "url"):
            out.append({"name": m.group(1), "url": repo.config.get(section, "url"),
                        "endpoint": repo.config.get(section, "endpoint", fallback=None),
                        "lazy": repo.config.getboolean(section, "promisor", fallback=False)})
    return sorted(out, key=lambda r: r["name"])


def add_remote(repo: Repo, name: str, url: str, endpoint: str | None = None, promisor: bool = False) -> dict:
    check_remote_name(name)
    if repo.config.has_section(remote_section(name)):
        raise BadName(f"remote {name!r} already exists", f"remove it first: mvc remote remove {name}")
    url = _not_itself(repo, normalize_url(url))
    endpoint = check_endpoint(endpoint)
    repo.set_config(f"remote.{name}.url", url)
    if endpoint:
        repo.set_config(f"remote.{name}.endpoint", endpoint)
    if promisor:
        repo.set_config(f"remote.{name}.promisor", "true")
    return {"name": name, "url": url, "endpoint": endpoint, "lazy": promisor}


def remove_remote(repo: Repo, name: str, force: bool = False) -> dict:
    section = remote_section(name)
    if not repo.config.has_section(section):
        raise ConfigError(f"no remote named {name!r}", "see mvc remote -v")
    if repo.config.getboolean(section, "promisor", fallback=False) and not force:
        raise MvcError(f"remote {name!r} is where this lazy clone fetches its missing blobs",
                       "pass --force to remove it anyway")
    for option in list(repo.config.options(section)):
        repo.set_config(f"remote.{name}.{option}", None)
    removed = []
    for ref, oid in repo.refs.list(f"refs/remotes/{name}/").items():
        repo.refs.update(ref, None, expected=oid, message=f"remote remove {name}")
        removed.append(ref)
    return {"name": name, "removed_refs": removed}


def resolve_remote(repo: Repo, remote: str | None) -> str:
    """The remote's name (default: origin, or the only remote) or a URL given directly."""
    if remote:
        return remote
    names = [r["name"] for r in list_remotes(repo)]
    if DEFAULT_REMOTE in names or not names:
        if not names:
            raise ConfigError("no remote configured", "add one with mvc remote add origin URL")
        return DEFAULT_REMOTE
    if len(names) == 1:
        return names[0]
    raise ConfigError("several remotes and none is named origin", "name one: " + ", ".join(names))


def open_remote(repo: Repo, remote: str | None, jobs: int = DEFAULT_JOBS,
                transport: Transport | None = None) -> tuple[str | None, Transport]:
    """(remote name or None for a plain URL, transport)."""
    remote = resolve_remote(repo, remote)
    if repo.config.has_section(remote_section(remote)):
        if transport is None:
            url, endpoint = configured_remote(repo.config, remote)
            transport = open_transport(url, endpoint, jobs)
        return remote, transport
    if is_url(remote):
        return None, transport or open_transport(_not_itself(repo, normalize_url(remote)), None, jobs)
    raise ConfigError(f"no remote named {remote!r}", "add it with mvc remote add NAME URL, or see mvc remote -v")


# -- helpers -----------------------------------------------------------------------------------
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
def _permission_errors(t: Transport):
    """A file the user may not read or write is an error to fix, not a bug."""
    try:
        yield
    except PermissionError as e:
        raise MvcError(f"permission denied: {e.filename or t.describe()}",
                       "check the permissions of the repository and of the remote") from None
    except (IsADirectoryError, NotADirectoryError, FileNotFoundError) as e:  # e.g. a ref that is a folder
        raise MvcError(f"unexpected file layout at {e.filename2 or e.filename or t.describe()} ({e.strerror})",
                       f"a file stands where a folder belongs or the reverse, or it was removed meanwhile; "
                       f"check that path (the remote is {t.describe()})") from None


def _has_commit(repo: Repo, oid: str) -> bool:
    return repo.loose.has(oid) or any(s.has(oid) for s in repo.store.stores[1:]
                                      if not isinstance(s, LazyRemoteStore))


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


MAX_META_BYTES = 64 << 20  # a commit, tree or certificate from a remote is refused beyond this
NAMED_MAX_BYTES = 1 << 30  # what a certificate names (check data: semantic CI reads at most 1 GiB)


def receive(transport: Transport, oid: str, where: str, max_size: int | None = None) -> bytes:
    """An object from the remote, verified against its id (a bad one raises and is not stored);
    one larger than `max_size` is refused before it is read."""
    data = transport.get(oid, max_size=max_size)
    got = hash_bytes(data)
    if got != oid:
        raise CorruptObject(f"object {oid} on remote {where} is corrupt: its content hashes to {got[:12]}; "
                            "it was not stored",
                            REPAIR_HINT)
    return data


def receive_into(repo: Repo, t: Transport, oid: str, where: str, dirty: set, max_size: int | None = None) -> int:
    """Stream an object from the remote into the loose store: a temp file, verified against its
    id, fsynced, then renamed into place (a bad object never gets its name). The directory entry
    is synced later with the others (see _sync_dirs); returns the object's size. An object larger
    than `max_size` (what the tree naming it declares) is refused before it is read."""
    loose = repo.loose
    final = loose.path(oid)
    if os.path.exists(final):
        return os.path.getsize(final)
    with new_object_file(loose.tmp, oid, final, loose.fsync, readable=True) as f:
        n = t.get_into(oid, f, max_size=max_size)
        f.flush()
        if n:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                got = hash_bytes(mm)
        else:
            got = hash_bytes(b"")
        if got != oid:
            raise CorruptObject(f"object {oid} on remote {where} is corrupt: its content hashes to "
                                f"{got[:12]}; it was not stored",
                                REPAIR_HINT)
    dirty.add(os.path.dirname(final))
    return n


def _sync_dirs(repo: Repo, dirty: set, pool: Pool) -> None:
    if repo.loose.fsync and dirty:
        dirs = sorted(dirty)
        dirty.clear()
        pool.map(fsync_dir, dirs)


def _cert_inputs(repo: Repo, cert_ids) -> tuple[list[str], list[str], list[str]]:
    """(data blobs, commits, trees) that the certificates `cert_ids` name and this repository holds.
    A named commit travels with its history (a migration check names host commits of other
    branches), so that `mvc verify` and `mvc fsck` work in every clone."""
    found: dict[str, set[str]] = {"blob": set(), "commit": set(), "tree": set()}
    for cid in cert_ids:
        try:
            cert = decode(repo.store.get(cid), "certificate", cid)
        except MvcError:
            continue  # damaged here: fsck reports it
        for x in named_ids(cert):
            if x not in cert_ids and repo.store.has(x):
                try:
                    found[repo.kind_of(x)].add(x)
                except MvcError:
                    continue
    return sorted(found["blob"]), sorted(found["commit"]), sorted(found["tree"])


def _branch_of(repo: Repo, branch: str | None) -> str:
    branch = branch or repo.head_branch
    if not branch:
        raise MvcError("HEAD is detached: name the branch", "e.g. mvc push origin main")
    check_ref_name(branch)
    return branch


# -- push --------------------------------------------------------------------------------------
class RepairIncomplete(CorruptObject):
    """push --repair met objects the remote lacks or holds damaged whose local copy is damaged (or
    missing) too: they were not sent, nor the trees and commits naming them, and no ref moved.
    `result` is the push report, with the counts of what was repaired."""

    def __init__(self, result: dict, where: str):
        bad = sorted(result["repair"]["local_damaged"])
        named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        super().__init__(f"{len(bad)} objects could not be repaired on {where}: it lacks a good copy and the "
                         f"local copy is damaged too ({named}); they were not sent and no ref moved",
                         "restore them here first with mvc fsck --repair-from ANOTHER-COPY, then run "
                         "mvc push --repair again")
        self.result = result


def push(repo: Repo, remote: str | None = None, branch: str | None = None, force: bool = False,
         dry_run: bool = False, delete: bool = False, jobs: int = DEFAULT_JOBS,
         progress: Progress | None = None, transport: Transport | None = None, repair: bool = False) -> dict:
    """Send `branch` (default: the current one) to `remote` (default: origin).

    With `repair`, every object the pushed history reaches is read back from the remote and
    re-hashed, and what is missing or damaged there is sent again (see _repair_plan); the report
    gains a "repair" entry. RepairIncomplete when a local copy is damaged too."""
    if repair and delete:
        raise BadInput("push --repair and --delete do not go together", "repair the branch you keep")
    name, t = open_remote(repo, remote, jobs, transport)
    with Pool(jobs) as pool, _permission_errors(t), \
            (contextlib.nullcontext() if delete or dry_run else t.writing()):  # see Transport.writing
        return _push(repo, name, t, branch, force, dry_run, delete, pool, progress or Progress(), repair)


def _push(repo: Repo, name, t: Transport, branch, force, dry_run, delete, pool: Pool, progress: Progress,
          repair: bool = False) -> dict:
    where = name or t.describe()
    branch = _branch_of(repo, branch)
    ref = f"refs/heads/{branch}"
    tracking = f"refs/remotes/{name}/{branch}" if name else None
    result = {"remote": name, "url": t.url, "branch": branch, "dry_run": dry_run, "forced": False,
              "objects_sent": 0, "bytes_sent": 0, "objects_present": 0, "tags": [], "tags_skipped": {},
              "certificates": 0}
    if delete:
        t.require_repository()
        try:
            old = t.read_ref(ref)
        except CorruptObject:  # a damaged ref: deleting it loses nothing
            old = DAMAGED
        if old is None:
            raise UnknownRevision(f"remote {where} has no branch {branch!r}")
        old = None if old is DAMAGED else old
        if not dry_run:
            try:
                t.update_ref(ref, None, expected=old, replace_damaged=True)
            except RefConflict:
                raise NonFastForward(f"remote branch {branch} moved while deleting it",
                                     "fetch and look before deleting it again") from None
            if tracking and repo.refs.read(tracking):
                repo.refs.update(tracking, None, message=f"push --delete to {where}")
        return {**result, "old": old, "new": None, "status": "deleted", "sent": []}

    local = repo.refs.read(ref)
    if local is None:
        raise UnknownRevision(f"no local branch {branch!r}", "see mvc branch")
    exists = t.is_repository()
    if not dry_run and (not exists or t.read_file("HEAD")[0] is None):  # new, or an init cut short
        t.init(branch)
        exists = True
    remote_refs = t.list_refs() if exists else {}
    _refuse_clashing_name(ref, remote_refs, where)
    old = remote_refs.get(ref)
    if old == local:
        status = "up-to-date"
    elif old is None:
        status = "new branch"
    elif _has_commit(repo, old) and is_ancestor(repo, old, local):
        status = "fast-forward"
    elif force:
        status, result["forced"] = "forced update", True
    else:
        raise NonFastForward(
            f"push to {where} rejected: remote {branch} ({old[:12]}) is not an ancestor of your {branch} "
            f"({local[:12]})",
            f"fetch first (mvc pull {name or 'REMOTE'} {branch}); or pass --force to overwrite the remote branch")

    certs = _certs_to_push(repo, t, local, pool)
    plan = (_repair_plan(repo, t, where, local, pool, progress) if repair
            else _plain_plan(repo, t, local, remote_refs, certs, pool))
    tags, skipped = _tags_to_push(repo, local, remote_refs)
    sizes = plan["sizes"]
    result.update(status=status, old=old, new=local, tags=sorted(tags), tags_skipped=skipped,
                  certificates=sum(len(v) for v in certs.values()),
                  objects_sent=len(sizes), bytes_sent=sum(sizes.values()), objects_present=plan["present"])
    if repair:
        result["repair"] = plan["report"]
    if dry_run:
        return _repaired({**result, "sent": []}, where)
    sent = _send(repo, t, where, plan, pool, progress)
    _repaired({**result, "sent": sent}, where)  # nothing moves while history there is incomplete
    if old != local:
        try:
            t.update_ref(ref, local, expected=old, replace_damaged=force)
        except RefConflict:
            try:
                now = t.read_ref(ref)
            except MvcError:
                now = DAMAGED
            if now is None and old is not None:
                how, hint = ("was deleted while pushing (a push --delete won)",
                             "push again to create it anew, if it should not stay deleted")
            else:
                how, hint = ("moved while pushing (another push won)",
                             f"run mvc pull {name or 'REMOTE'} {branch} (or mvc fetch) and push again")
            raise NonFastForward(f"push to {where} rejected: remote {branch} {how}; your objects are there, "
                                 "only the branch did not move", hint) from None
    for tag in sorted(tags):
        try:
            t.update_ref(f"refs/tags/{tag}", tags[tag], expected=None, replace_damaged=force)
        except RefConflict:
            result["tags"].remove(tag)
            result["tags_skipped"][tag] = t.read_ref(f"refs/tags/{tag}")
        except CorruptObject as e:  # a damaged tag there: the branch has moved, report it, go on
            warnings.warn(f"tag {tag} not pushed: {e.message} (push --force replaces it)")
            result["tags"].remove(tag)
            result["tags_skipped"][tag] = None
    for commit, ids in certs.items():
        t.add_to_cert_index(commit, ids)
    if tracking:
        repo.refs.update(tracking, local, message=f"push to {where}")
    return {**result, "sent": sent}


def _refuse_clashing_name(ref: str, remote_refs: dict, where: str) -> None:
    """A branch cannot also be a folder of branches there (`a` beside `a/b`): clones would fail."""
    for other in remote_refs:
        if other.startswith(ref + "/") or ref.startswith(other + "/"):
            raise BadName(f"remote {where} has {other}, which clashes with {ref}",
                          "a branch name cannot also be a folder of branch names; rename one of them")


def _plain_plan(repo: Repo, t: Transport, local: str, remote_refs: dict, certs: dict, pool: Pool) -> dict:
    """What a plain push sends: the objects the remote lacks ("phases": blobs with certificate
    objects, trees, commits; "sizes" of what is sent; "present": how many were there already)."""
    cert_ids = sorted({i for ids in certs.values() for i in ids})
    data, commits, trees = _cert_inputs(repo, cert_ids)
    plan = _plan_push(repo, t, [local, *commits], remote_refs, pool, extra_trees=trees)
    extra = sorted(set(cert_ids + data) - set(plan["blobs"]))
    extra_missing = [o for o, there in zip(extra, pool.map(t.has, extra)) if not there]
    phases = [plan["blobs"] + extra_missing, plan["trees"], plan["commits"]]
    return {"phases": phases, "replace": set(), "sizes": {o: repo.store.size(o) for p in phases for o in p},
            "present": plan["present"] + len(extra) - len(extra_missing)}


def _send(repo: Repo, t: Transport, where: str, plan: dict, pool: Pool, progress: Progress) -> list[str]:
    """Upload the plan's phases in order, each made durable before the next (a tree there has its
    blobs there, a commit its trees). Ids in plan["replace"] overwrite the remote's damaged copy."""
    sent: list[str] = []

    def upload(oid):
        kw = {"replace": True} if oid in plan["replace"] else {}
        if repo.loose.has(oid) and _loose_copy_whole(repo, oid):  # then copied file to object
            n = repo.loose.size(oid)
            t.put_file(oid, repo.loose.path(oid), **kw)
        else:  # packed, fetched on demand, or a damaged loose copy beside a good one: verified on read
            data = repo.store.get(oid)
            n = len(data)
            t.put(oid, data, **kw)
        sent.append(oid)
        progress.advance(n)

    progress.begin(f"pushing to {where}", len(plan["sizes"]), sum(plan["sizes"].values()))
    try:
        for phase in plan["phases"]:
            pool.map(upload, phase)
            t.flush(pool.map)
    finally:
        progress.end()
    return sent


def _loose_copy_whole(repo: Repo, oid: str) -> bool:
    """Whether the loose copy verifies (through a map of the file, or its verified stamp)."""
    try:
        view = repo.loose.view(oid)
    except CorruptObject:
        return False
    if hasattr(view, "close"):
        view.close()
    return True


def _plan_push(repo: Repo, t: Transport, tips: list[str], remote_refs: dict, pool: Pool,
               extra_trees=()) -> dict:
    """The commits, trees and blobs the remote lacks, found by the commit graph + existence checks:
    the history of `tips`, and `extra_trees` with their blobs."""
    known = ancestors(repo, [v for v in set(remote_refs.values()) if _has_commit(repo, v)])
    new = ancestors(repo, tips, stop=known)
    ordered = sorted(new)
    there = {c for c, h in zip(ordered, pool.map(t.has, ordered)) if h}  # left by an interrupted push
    present = len(there)
    parents = {c: repo.read_commit(c)["parents"] for c in new}
    base = {p for ps in parents.values() for p in ps if p not in new}
    on_remote: set[str] = set()
    for c in base:  # trees and blobs of the commits the new ones build on need no check
        for tid in repo.read_commit(c)["components"].values():
            on_remote.add(tid)
            on_remote.update(tree_blob_ids(repo.read_tree(tid)))
    trees = sorted(({tid for c in new for tid in repo.read_commit(c)["components"].values()}
                    | set(extra_trees)) - on_remote)
    tree_there = dict(zip(trees, pool.map(t.has, trees)))
    present += sum(tree_there.values())
    missing_trees = [tid for tid in trees if not tree_there[tid]]
    blobs = sorted({b for tid in missing_trees for b in tree_blob_ids(repo.read_tree(tid))} - on_remote)
    blob_there = dict(zip(blobs, pool.map(t.has, blobs)))
    present += sum(blob_there.values())
    return {"commits": [c for c in ordered if c not in there], "trees": missing_trees,
            "blobs": [b for b in blobs if not blob_there[b]], "present": present}


def _repair_plan(repo: Repo, t: Transport, where: str, local: str, pool: Pool, progress: Progress) -> dict:
    """push --repair: every object the history of `local` reaches (commits, trees, blobs, the
    certificates of its commits and the inputs they name) is read back from the remote and
    re-hashed, trusting nothing there. A missing object is sent; a damaged one is sent again over
    the bad copy (on a directory remote a loose copy, which reads take before a damaged pack's).
    Only a local copy that re-hashes right is sent: one damaged here too goes to "local_damaged",
    and the trees and commits naming it are held back (a tree there must have its blobs there)."""
    ids, kinds, hints = _history_objects(repo, local)
    progress.begin(f"verifying {where}", len(ids), sum(hints.values()))
    try:
        found = dict(zip(ids, pool.map(lambda oid: _check_copy(repo, t, oid, progress), ids)))
    finally:
        progress.end()
    bad = {o: f"{state} on {where}, and the local copy cannot be sent: {why}"
           for o, (state, _, why) in found.items() if why}
    send = {o for o, (state, _, why) in found.items() if state != "ok" and not why}
    held = _held_back(repo, bad, [o for o in ids if o in send and kinds[o] != "blob"], kinds)
    send -= held
    report = {"checked": len(ids), "local_damaged": bad, "held_back": sorted(held)}
    for state in ("missing", "damaged"):
        report[state] = sorted(o for o in send if found[o][0] == state)
        report[f"{state}_resent"] = len(report[state])
    report["bytes_sent"] = sum(found[o][1] for o in send)
    phases = [[o for o in ids if o in send and kinds[o] == k] for k in ("blob", "tree", "commit")]
    return {"phases": phases, "replace": set(report["damaged"]), "sizes": {o: found[o][1] for o in send},
            "present": sum(state == "ok" for state, _, _ in found.values()), "report": report}


def _history_objects(repo: Repo, local: str) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """(ids, {id: "commit", "tree" or "blob"}, expected blob sizes) of everything a push of `local`
    sends when the remote has nothing: certificates and the inputs they name count as blobs."""
    reach = ancestors(repo, [local])
    cert_ids = sorted({i for c in certindex.certified_commits(repo.dir) if c in reach
                       for i in certindex.read_index(repo.dir, c) if repo.store.has(i)})
    data, named_commits, named_trees = _cert_inputs(repo, cert_ids)
    commits = sorted(ancestors(repo, [local, *named_commits]))
    trees = sorted({tid for c in commits for tid in repo.read_commit(c)["components"].values()} | set(named_trees))
    hints: dict[str, int] = {}
    for tid in trees:
        hints.update(_blob_size_hint(repo.read_tree(tid)))
    kinds = {o: "blob" for o in [*hints, *cert_ids, *data]}
    kinds.update({o: "tree" for o in trees})
    kinds.update({o: "commit" for o in commits})
    return sorted(kinds), kinds, hints


def _check_copy(repo: Repo, t: Transport, oid: str, progress: Progress) -> tuple[str, int, str | None]:
    """(state of the remote's copy: "ok", "missing" or "damaged"; the size of the local copy to
    send; why the local copy cannot be sent, or None). The local copy is re-hashed only when the
    remote's is not good."""
    try:
        got, n = t.digest(oid)
        state = "ok" if got == oid else "damaged"
    except ObjectMissing:
        state, n = "missing", 0
    except CorruptObject:  # the remote's storage says so itself (a damaged pack there)
        state, n = "damaged", 0
    progress.advance(n)
    if state == "ok":
        return state, 0, None
    try:
        return state, _verified_size(repo, oid), None
    except MvcError as e:
        return state, 0, e.message


def _verified_size(repo: Repo, oid: str) -> int:
    """The size of the local copy of `oid`, re-hashed now (a verified stamp is not enough here)."""
    view = repo.store.view(oid, rehash=True)
    try:
        return len(view)
    finally:
        if hasattr(view, "close"):
            view.close()


def _held_back(repo: Repo, bad: dict, to_send: list[str], kinds: dict) -> set[str]:
    """Of the trees and commits `to_send`, those naming an object that cannot be sent (or, for a
    commit, a tree held back): sending them would leave the remote a tree without its blobs."""
    held: set[str] = set()
    for oid in sorted(to_send, key=lambda o: kinds[o] == "commit"):  # trees first
        named = (tree_blob_ids(repo.read_tree(oid)) if kinds[oid] == "tree"
                 else repo.read_commit(oid)["components"].values())
        if any(x in bad or x in held for x in named):
            held.add(oid)
    return held


def _repaired(result: dict, where: str) -> dict:
    """The push report, or RepairIncomplete when push --repair could not send a good copy of
    something the remote lacks."""
    if result.get("repair", {}).get("local_damaged"):
        raise RepairIncomplete(result, where)
    return result


def _tags_to_push(repo: Repo, local: str, remote_refs: dict) -> tuple[dict, dict]:
    """Local tags on the pushed history the remote lacks; tags it holds with another value are kept."""
    candidates = {n: v for n, v in repo.tags().items() if remote_refs.get(f"refs/tags/{n}") != v}
    if not candidates:
        return {}, {}
    reach = ancestors(repo, [local])
    send, skipped = {}, {}
    for n, v in candidates.items():
        if v not in reach:
            continue
        if f"refs/tags/{n}" in remote_refs:
            skipped[n] = remote_refs[f"refs/tags/{n}"]
        else:
            send[n] = v
    return send, skipped


def _certs_to_push(repo: Repo, t: Transport, local: str, pool: Pool) -> dict[str, list[str]]:
    """{commit: certificate ids the remote index lacks} for certified commits of the pushed history."""
    certified = certindex.certified_commits(repo.dir)
    if not certified:
        return {}
    reach = ancestors(repo, [local])
    commits = [c for c in certified if c in reach]
    remote_lists = pool.map(t.read_cert_index, commits)
    out = {}
    for c, theirs in zip(commits, remote_lists):
        missing = [i for i in certindex.read_index(repo.dir, c) if i not in theirs and repo.store.has(i)]
        if missing:
            out[c] = missing
    return out


# -- repair ------------------------------------------------------------------------------------
def repair(repo: Repo, remote: str | None = None, jobs: int = DEFAULT_JOBS, rounds: int = 64) -> dict:
    """Restore what `fsck` finds damaged or missing from a remote (or a clone used as one): each
    object is downloaded, verified and written loose, replacing a damaged loose copy. Rounds repeat
    while they restore something (a restored commit reveals the trees it needs, and so on). Loose
    objects are read before packed ones: a full repack then rewrites the packs from the good
    copies, and pack files whose index is unusable are moved to objects/pack/damaged/ once every
    reachable object is whole again. Returns the fsck reports before and after."""
    before = report = repo.fsck()
    name, t = open_remote(repo, remote, jobs)
    where = name or t.describe()
    restored, failed = [], {}
    with _permission_errors(t), repo.writing():
        for _ in range(rounds):
            wanted = [oid for oid in sorted({p["id"] for p in report["problems"] if is_oid(p["id"])})
                      if oid not in failed and not _intact(repo, oid)]  # e.g. a tree named for its header
            got = _restore(repo, t, where, wanted, failed)
            restored += got
            if not got:
                break
            repo._cache.clear()
            report = repo.fsck()
    from .pack import pack_store_of
    packs = pack_store_of(repo.store)
    if any(not is_oid(p["id"]) for p in before["problems"]) or any(packs.has(o) for o in restored):
        from .pack_write import pack
        pack(repo, full=True)
    fresh = Repo(repo.root)  # fresh readers: a rewritten pack may keep its name (same bytes)
    after = fresh.fsck()
    if not any(is_oid(p["id"]) for p in after["problems"]) and pack_store_of(fresh.store).damaged:
        _set_aside(pack_store_of(fresh.store))
        after = Repo(repo.root).fsck()
    return {"remote": where, "before": before, "restored": restored, "failed": failed, "after": after,
            "ok": after["ok"]}


def _restore(repo: Repo, t: Transport, where: str, wanted: list[str], failed: dict) -> list[str]:
    limits = _declared_sizes(repo)
    got = []
    for oid in wanted:
        try:
            data = receive(t, oid, where, limits.get(oid))
        except MvcError as e:
            failed[oid] = e.message
            continue
        if repo.loose.has(oid):
            repo.loose.delete(oid)  # the damaged copy: objects are write-once, so it goes first
        repo.loose.put(data, oid=oid)
        got.append(oid)
    return got


def _declared_sizes(repo: Repo) -> dict[str, int]:
    """The most bytes each blob may have, by the readable trees of every reachable commit (what
    a repair may read from a remote for it)."""
    out: dict[str, int] = {}
    seen = set()
    for cid in repo._reachable_commits():
        for tid in repo.read_commit(cid)["components"].values():
            if tid in seen:
                continue
            seen.add(tid)
            try:
                tree = repo.read_tree(tid)
            except MvcError:
                continue
            for oid, n in _blob_size_limit(tree).items():
                out[oid] = max(n, out.get(oid, 0))
    return out


def _set_aside(packs) -> None:
    """Move packs whose index cannot be used out of the way (kept, not deleted): every object
    they held is readable elsewhere again."""
    aside = os.path.join(packs.dir, "damaged")
    os.makedirs(aside, exist_ok=True)
    for name in list(packs.damaged):
        for ext in (".idx", ".pack"):
            try:
                os.replace(os.path.join(packs.dir, name + ext), os.path.join(aside, name + ext))
            except FileNotFoundError:
                pass
    fsync_dir(packs.dir)


def _intact(repo: Repo, oid: str) -> bool:
    """Whether the object is stored here and every local copy of it verifies (a read takes any good
    copy, so a damaged loose copy beside a good packed one must be checked on its own)."""
    found = False
    for s in repo.store.stores:
        if s.fetches or not s.has(oid):
            continue
        found = True
        try:
            s.view(oid, rehash=True)
        except MvcError:
            return False
    return found


# -- fetch -------------------------------------------------------------------------------------
def _blob_size_hint(tree: dict) -> dict[str, int]:
    """Expected sizes of a tree's blobs (progress totals only: a header counts as 0)."""
    headers = {f["header"] for f in tree["files"].values() if f.get("header")}
    return {oid: 0 if oid in headers else n for oid, n in _blob_size_limit(tree).items()}


def _blob_size_limit(tree: dict) -> dict[str, int]:
    """The most bytes each blob of a (shape-checked) tree can have: exact for tensors and raw
    files, the file's size (and the header limit) for a safetensors header."""
    out = {}
    for t in tree["tensors"].values():
        prefix = stf.blob_prefix(t["dtype"], tuple(t["shape"]))
        out[t["id"]] = len(prefix) + stf.DTYPE_SIZES[t["dtype"]] * math.prod(t["shape"])
    for f in tree["files"].values():
        if f.get("id"):
            out[f["id"]] = f["size"]
        if f.get("header"):
            out[f["header"]] = min(f["size"], 8 + stf.MAX_HEADER_BYTES)
    return out


def fetch(repo: Repo, remote: str | None = None, jobs: int = DEFAULT_JOBS, progress: Progress | None = None,
          transport: Transport | None = None, lazy: bool | None = None) -> dict:
    """Download what the remote's branches and tags reach and update refs/remotes/<remote>/*."""
    name, t = open_remote(repo, remote, jobs, transport)
    with Pool(jobs) as pool, _permission_errors(t), repo.writing():
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
    remote_refs = t.list_refs()
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
            now = t.list_refs()
            if now == remote_refs or attempt == FETCH_ATTEMPTS - 1:
                raise
            remote_refs = now
    updated = {}
    if name:
        heads = {r[len("refs/heads/"):]: v for r, v in remote_refs.items() if r.startswith("refs/heads/")}
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
        for tref, oid in repo.refs.list(f"refs/remotes/{name}/").items():
            if tref[len(f"refs/remotes/{name}/"):] not in heads:  # deleted on the remote: prune
                repo.refs.update(tref, None, expected=oid, message=f"fetch from {where}: pruned")
                updated[tref] = {"old": oid, "new": None}
    tags, tag_conflicts = {}, {}
    for r, oid in remote_refs.items():
        if not r.startswith("refs/tags/"):
            continue
        mine = repo.refs.read(r)
        if mine is None:
            repo.refs.update(r, oid, expected=None, message=f"fetch from {where}")
            tags[r[len("refs/tags/"):]] = oid
        elif mine != oid:
            tag_conflicts[r[len("refs/tags/"):]] = {"local": mine, "remote": oid}
    return {"remote": name, "url": t.url, "lazy": bool(lazy), "refs": updated, "tags": tags,
            "tag_conflicts": tag_conflicts, "commits": history.commits, "trees": history.trees,
            "objects_received": history.objects, "bytes_received": history.bytes,
            "blobs_promised": history.promised, "certificates": certs,
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

    def download(self, oid: str) -> None:
        """Receive one object (verified) into the loose store, no larger than its trees declare."""
        n = receive_into(self.repo, self.t, oid, self.where, self._dirty, self.limits.get(oid, MAX_META_BYTES))
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

    def sync(self) -> None:
        _sync_dirs(self.repo, self._dirty, self.pool)

    def fetch(self, tips, extra_trees=()) -> None:
        """The history of `tips`, and `extra_trees` with their blobs."""
        repo, t, where, pool = self.repo, self.t, self.where, self.pool
        complete = set(repo.refs.list("refs/").values())
        commits: dict[str, tuple[dict, bytes]] = {}
        frontier = sorted(set(tips) - complete)
        seen = set(frontier)
        while frontier:
            missing = [c for c in frontier if not _has_commit(repo, c)]
            for c, data in zip(missing, pool.map(lambda c: receive(t, c, where, MAX_META_BYTES), missing)):
                commits[c] = (decode(data, "commit", c), data)
            parents = {p for c in frontier
                       for p in (commits[c][0] if c in commits else repo.read_commit(c))["parents"]}
            frontier = sorted(parents - seen - complete)
            seen.update(frontier)
        tree_ids = sorted({tid for obj, _ in commits.values() for tid in obj["components"].values()}
                          | set(extra_trees))
        tree_ids = [tid for tid in tree_ids if not repo.store.has(tid)]
        trees = {}
        for tid, data in zip(tree_ids, pool.map(lambda x: receive(t, x, where, MAX_META_BYTES), tree_ids)):
            trees[tid] = (decode(data, "tree", tid), data)
        hints: dict[str, int] = {}
        for obj, _ in trees.values():
            hints.update(_blob_size_hint(obj))
            for oid, n in _blob_size_limit(obj).items():
                self.limits[oid] = max(n, self.limits.get(oid, 0))
        blob_ids = sorted(b for b in hints if not repo.store.has(b))
        self.objects += len(commits) + len(trees)
        self.bytes += sum(len(d) for _, d in commits.values()) + sum(len(d) for _, d in trees.values())
        if self.lazy_store is not None:
            self.lazy_store.promise(blob_ids, self.limits)
            self.promised += len(blob_ids)
        else:
            self.progress.begin(f"fetching from {where}", len(blob_ids), sum(hints[b] for b in blob_ids))
            try:
                pool.map(self.download, blob_ids)
            finally:
                self.progress.end()
                self.sync()
        pool.map(lambda tid: repo.loose.put(trees[tid][1], oid=tid), list(trees))
        pool.map(lambda c: repo.loose.put(commits[c][1], oid=c), list(commits))
        self.commits += len(commits)
        self.trees += len(trees)


def _fetch_certs(repo: Repo, t: Transport, where: str, pool: Pool, history: _History) -> int:
    """Certificates the remote holds for commits we have, with everything they name: data blobs,
    and named commits (with their history) and trees. The index lines come last."""
    commits = [c for c in t.cert_index_commits() if _has_commit(repo, c)]
    if not commits:
        return 0
    wanted = {}
    for c, theirs in zip(commits, pool.map(t.read_cert_index, commits)):
        mine = certindex.read_index(repo.dir, c)
        new = [i for i in theirs if i not in mine]
        if new:
            wanted[c] = new
    ids = sorted({i for v in wanted.values() for i in v if not repo.loose.has(i)})
    try:
        pool.map(history.download, ids)
    finally:
        history.sync()
    named = set()
    for c, v in wanted.items():
        for cid in list(v):
            try:
                named |= named_ids(decode(repo.store.get(cid), "certificate", cid))
            except (WrongObjectType, FormatTooNew) as e:  # one bad index line must not block every fetch
                warnings.warn(f"remote {where} lists {cid[:12]} among the certificates of commit {c[:12]}, "
                              f"but {e.message}; skipped")
                v.remove(cid)
    named = sorted(x for x in named if not repo.store.has(x))

    def fetch_named(oid):  # data is stored now; commits and trees come with their history below
        try:
            data = receive(t, oid, where, NAMED_MAX_BYTES)
        except ObjectMissing:
            return None  # the certificate refers to it, fsck in this repository will say so
        kind = object_kind(data)
        if kind == "blob":
            history.store(oid, data)
        return kind

    kinds = dict(zip(named, pool.map(fetch_named, named)))
    history.fetch([o for o, k in kinds.items() if k == "commit"], [o for o, k in kinds.items() if k == "tree"])
    for c, v in wanted.items():
        if v:
            certindex.attach(repo.dir, c, v)
    return sum(len(v) for v in wanted.values())


# -- pull --------------------------------------------------------------------------------------
def pull(repo: Repo, remote: str | None = None, branch: str | None = None, jobs: int = DEFAULT_JOBS,
         progress: Progress | None = None, transport: Transport | None = None) -> dict:
    """Fetch, then fast-forward `branch` (default: the current one) to the remote's."""
    name, t = open_remote(repo, remote, jobs, transport)
    if name is None:
        raise ConfigError("pull needs a configured remote", "mvc remote add NAME URL first")
    fetched = fetch(repo, name, jobs, progress, transport=t)
    branch = _branch_of(repo, branch)
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


# -- clone -------------------------------------------------------------------------------------
def default_clone_dir(url: str) -> str:
    tail = url.rstrip("/").split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    tail = tail[:-4] if tail.endswith(".mvc") and len(tail) > 4 else tail
    if not tail or tail in (".", ".."):
        raise BadInput(f"cannot name a directory after {url!r}", "pass DIR")
    return tail


def clone(url: str, path: str | None = None, lazy: bool = False, endpoint: str | None = None,
          jobs: int = DEFAULT_JOBS, progress: Progress | None = None,
          transport: Transport | None = None) -> tuple[Repo, dict]:
    """A new repository at `path` with remote origin = `url`, its branches fetched and the remote's
    default branch checked out as HEAD. `lazy` fetches commits and trees only. Re-running an
    interrupted clone into the same directory resumes it."""
    norm = normalize_url(url)
    endpoint = check_endpoint(endpoint)
    t = transport or open_transport(norm, endpoint, jobs)
    t.require_repository()
    path = os.path.abspath(path or default_clone_dir(norm))
    head = t.head_target() or ""
    default = head[len("refs/heads/"):] if head.startswith("refs/heads/") else "main"
    try:
        check_ref_name(default)
    except BadName as e:
        warnings.warn(f"the remote's HEAD names no valid branch ({e.message}); using main")
        default = "main"
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        if not _resumable_clone(path, norm):
            raise BadInput(f"destination {path} already exists and is not empty", "clone into a new directory")
    repo = _clone_setup(path, norm, endpoint, lazy, default)
    lazy = promisor_remote(repo.config) == DEFAULT_REMOTE  # a resumed lazy clone stays lazy
    try:
        fetched = fetch(repo, DEFAULT_REMOTE, jobs, progress, transport=t)
    except MvcError as e:
        if "to resume" not in (e.hint or ""):  # S3 read failures say so already
            e.hint = (e.hint + "; " if e.hint else "") + "run the same mvc clone again to resume"
        raise
    heads = {r[len("refs/remotes/origin/"):]: v for r, v in repo.refs.list("refs/remotes/origin/").items()}
    branch = default if default in heads else ("main" if "main" in heads else min(heads, default=None))
    if branch:
        repo.refs.update(f"refs/heads/{branch}", heads[branch], message=f"clone: from {norm}")
        repo.refs.set_symbolic("HEAD", f"refs/heads/{branch}")
    return repo, {"path": repo.root, "url": norm, "branch": branch, "head": heads.get(branch), "lazy": lazy,
                  "fetch": fetched}


def _clone_setup(path: str, url: str, endpoint: str | None, lazy: bool, default: str) -> Repo:
    """The repository a clone fetches into, created or (resuming) completed: remote origin = `url`
    with its endpoint, and marked lazy when asked. Each step is redone if a killed clone did not
    finish it (a kill between `mvc init` and the origin's configuration left a repository that the
    next run could not resume; one between the url and the lazy mark resumed as a full clone)."""
    repo = Repo.init(path, default_branch=default)  # an existing .mvc is opened as it is
    if not repo.config.has_option(remote_section(DEFAULT_REMOTE), "url"):
        add_remote(repo, DEFAULT_REMOTE, url, endpoint, promisor=lazy)
    else:
        if endpoint and repo.get_config(f"remote.{DEFAULT_REMOTE}.endpoint") != endpoint:
            repo.set_config(f"remote.{DEFAULT_REMOTE}.endpoint", endpoint)
        if lazy and promisor_remote(repo.config) != DEFAULT_REMOTE:
            repo.set_config(f"remote.{DEFAULT_REMOTE}.promisor", "true")
    return Repo(repo.root)  # re-open: a lazy clone reads through its promisor store


INIT_LEFTOVER = re.compile(r"\.mvc-init-(\d+)")  # Repo.init's temp folder, renamed to .mvc when complete


def _resumable_clone(path: str, url: str) -> bool:
    """An earlier clone of `url` into `path` that stopped before creating its branch: a repository
    with that origin and no branch, or what a clone killed before configuring its origin leaves
    (mvc's own files only: an empty repository with no remote, and the temp folders of an init
    whose process is gone, which are removed here)."""
    if not os.path.isdir(path):
        return False
    entries = set(os.listdir(path))
    leftovers = {e for e in entries if INIT_LEFTOVER.fullmatch(e)}
    ours_only = entries - leftovers <= {".mvc"}
    try:
        repo = Repo(path)
        if repo.root != os.path.abspath(path):
            repo = None  # a parent directory's repository
    except MvcError:
        repo = None
    if repo is not None and repo.branches():
        return False
    if repo is not None and repo.get_config("remote.origin.url") is not None:
        ok = repo.get_config("remote.origin.url") == url
    elif repo is not None:  # killed between init and configuring origin: nothing else is there
        ok = ours_only and not list_remotes(repo) and not repo.refs.list("refs/") \
            and next(iter(repo.loose.ids()), None) is None
    else:  # killed inside init: only its temp folder
        ok = bool(leftovers) and entries == leftovers
    if ok and ours_only:
        for name in leftovers:
            if not pid_alive(int(INIT_LEFTOVER.fullmatch(name).group(1))):
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    return ok

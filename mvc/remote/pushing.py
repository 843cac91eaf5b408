"""push: sending a branch's missing commits, trees, blobs, tags and certificates to a remote
(blobs, then trees, then commits, each phase durable before the next; the ref moves last), and
push --repair, which re-checks everything the remote holds for the pushed history."""
from __future__ import annotations

import collections
import contextlib
import os
import threading
import warnings

from .. import certindex
from . import commit_graph
from .. import forks
from ..errors import (BadInput, BadName, CorruptObject, MvcError, NonFastForward, ObjectMissing, RefConflict,
                      UnknownRevision, os_error_text)
from ..objects import tree_blob_ids, tree_blob_sizes
from ..provenance import default_author
from ..refs import note_moved
from ..pack import pack_store_of
from ..repo import Repo
from .. import transfer
from ..transfer import DEFAULT_JOBS, Progress
from ..transport import DAMAGED, Transport
from .common import (Pool, ancestors, blob_size_hint, branch_of, cert_inputs, has_commit, holds, is_ancestor,
                     permission_errors)
from .config import open_remote


class RepairIncomplete(CorruptObject):
    """push --repair met objects the remote lacks or holds damaged whose local copy is damaged (or
    missing) too: they were not sent, nor the trees and commits naming them, and no ref moved.
    `result` is the push report, with the counts of what was repaired."""

    def __init__(self, result: dict, where: str):
        bad = sorted(result["repair"]["local_damaged"])
        named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        unfetched = result["repair"].get("not_fetched", [])
        if unfetched and len(unfetched) == len(bad):  # a lazy clone never had them: no damage here
            super().__init__(f"{len(bad)} objects could not be repaired on {where}: it lacks them, and this lazy "
                             f"clone never fetched them ({named}); they were not sent and no ref moved",
                             "run mvc push --repair from a repository that holds them (a full clone, or "
                             "the repository they were pushed from)")
            self.result = result
            return
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
    try:
        with Pool(jobs) as pool, permission_errors(t), \
                (contextlib.nullcontext() if delete or dry_run else t.writing()):  # see Transport.writing
            return _push(repo, name, t, branch, force, dry_run, delete, pool, progress or Progress(), repair)
    finally:
        if t.listing_cache is not None:  # (what it wrote there: see Transport._written)
            t.listing_cache.save()


def _push(repo: Repo, name, t: Transport, branch, force, dry_run, delete, pool: Pool, progress: Progress,
          repair: bool = False) -> dict:
    where = name or t.describe()
    branch = branch_of(repo, branch)
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
        if getattr(t, "repository", False) and not force and t.head_target() == ref:  # (as git's denyDeleteCurrent)
            raise MvcError(f"refusing to delete {branch} on {where}: it is the current branch of the repository "
                           "there, whose next commit would start a new history", "its owner can switch to "
                           "another branch first; or pass --force to delete it all the same")
        if not dry_run:
            try:
                t.update_ref(ref, None, expected=old, replace_damaged=True, message="push --delete",
                             author=default_author(repo.root))
            except KeyboardInterrupt:
                if _note_if_landed(t, ref, where, None, f"deleted {branch} on {where}") and tracking:
                    with contextlib.suppress(MvcError, OSError):
                        repo.refs.update(tracking, None, message=f"push --delete to {where}")
                raise
            except RefConflict:
                if _now(t, ref, where) is not None:  # (gone: this delete landed, its answer was lost, and a retry
                    raise NonFastForward(f"remote branch {branch} moved while deleting it",  # found it gone)
                                         "fetch and look before deleting it again") from None
            note_moved(f"deleted {branch} on {where}", logged=False)  # (its reflog is there, not here)
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
    elif has_commit(repo, old) and is_ancestor(repo, old, local):
        status = "fast-forward"
    elif force:
        status, result["forced"] = "forced update", True
    else:
        remote = name or "REMOTE"
        known = has_commit(repo, old)  # (else the remote moved since the last fetch: behind or diverged?)
        behind = known and is_ancestor(repo, local, old)
        raise NonFastForward(
            f"push to {where} rejected: remote {branch} at {old[:12]} is not an ancestor of your {branch} "
            f"at {local[:12]}" + (": the two have diverged" if known and not behind else ""),
            f"yours is behind it: mvc pull {remote} {branch} brings it here; after a rollback, mvc push --force "
            f"{remote} {branch} moves it back to yours" if behind else
            f"mvc pull {remote} {branch} fetches it and fast-forwards yours if it is behind, or says that they "
            "have diverged"
            if not known else
            f"mvc has no merge: keep yours with mvc push --force {remote} {branch}, or take theirs with "
            f"mvc fetch {remote}, then, on {branch}, mvc rollback {remote}/{branch}")

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
    author = default_author(repo.root)  # (of the moves: a repository remote's reflog names who pushed)
    _repaired({**result, "sent": sent}, where)  # nothing moves while history there is incomplete
    if not _record_graph(repo, t, plan["new_commits"], local) and repair:
        plan["report"]["graph_added"] = 0  # (not written: a warning says why, or graph/ is another's)
    if old != local:
        try:
            t.update_ref(ref, local, expected=old, replace_damaged=force,
                         message=f"push: {status}", author=author)
        except KeyboardInterrupt:
            if _note_if_landed(t, ref, where, local, f"moved {branch} on {where} to {local[:12]}") and tracking:
                with contextlib.suppress(MvcError, OSError):
                    _track(repo, name, tracking, local, where)
            raise
        except RefConflict:
            now = _now(t, ref, where)  # where we moved it: this write landed and its answer was lost (a retry of it
            if now != local:    # then met its own result), or another push sent the same commit: pushed
                if now is None and old is not None:
                    how, hint = ("was deleted while pushing (a push --delete won)",
                                 "push again to create it anew, if it should not stay deleted")
                else:
                    how, hint = (f"moved to {now[:12] if now else 'nothing'} while pushing" + (
                                     ": a commit or push there won" if getattr(t, "repository", False)
                                     else ": another push won"),
                                 f"run mvc pull {name or 'REMOTE'} {branch}, or mvc fetch, and push again")
                raise NonFastForward(f"push to {where} rejected: remote {branch} {how}; your objects are there, "
                                     "only the branch did not move", hint) from None
        note_moved(f"moved {branch} on {where} to {local[:12]}", logged=False)
    if tracking:  # (at once: the branch is there now, whatever happens to the tags and certificates)
        _track(repo, name, tracking, local, where)
    try:
        for tag in sorted(tags):
            try:
                t.update_ref(f"refs/tags/{tag}", tags[tag], expected=None, replace_damaged=force,
                             message="push: tag", author=author)
            except RefConflict:
                if (there := _now(t, f"refs/tags/{tag}", where)) != tags[tag]:  # (the same id: it landed)
                    result["tags"].remove(tag)
                    result["tags_skipped"][tag] = None if there is DAMAGED else there
                    continue
            except CorruptObject as e:  # a damaged tag there: the branch has moved, report it, go on
                warnings.warn(f"tag {tag} not pushed: {e.message} (push --force replaces it)")
                result["tags"].remove(tag)
                result["tags_skipped"][tag] = None
                continue
            note_moved(f"made tag {tag} on {where}", logged=False)
        for commit, ids in certs.items():
            t.add_to_cert_index(commit, ids)
    except MvcError as e:  # (an OSError says what moved through the CLI: see refs.note_moved)
        if old != local:
            e.message += f"; the push had moved {branch} on {where} to {local[:12]}, which stays"
            e.hint = e.hint or "the same push again sends the rest"
        raise
    return {**result, "sent": sent}


def _note_if_landed(t: Transport, ref: str, where: str, new: str | None, what: str) -> bool:
    """After an interrupt as the remote's `ref` was moving to `new`: whether it got there (noted as
    `what`, so the error does not hide that it did)."""
    try:
        landed = _now(t, ref, where) == new
    except (MvcError, OSError):
        return False
    if landed:
        note_moved(what, logged=False)
    return landed


def _now(t: Transport, ref: str, where: str):
    """What `ref` holds on the remote now, after a compare-and-swap failed: an id, None, or
    DAMAGED where it holds no id. A read that fails (the network: the fault that lost the write's
    answer, maybe) cannot tell whether the write landed, and says so."""
    try:
        return t.read_ref(ref)
    except CorruptObject:
        return DAMAGED
    except MvcError as e:
        raise MvcError(f"cannot tell whether the write of {ref} on {where} landed: it was answered as a conflict, "
                       f"and reading it back failed: {e.message}",
                       f"mvc fetch {where} shows where it stands; push again if it did not land") from None


def _track(repo: Repo, name: str, tracking: str, local: str, where: str) -> None:
    """Move the tracking ref of a pushed branch. A tracking ref in its way (origin/a, for a push of
    a/b) names a branch the remote no longer has (the push checked that none clashes there): it is
    pruned, as a fetch would. Any other failure is a warning: the remote branch has moved."""
    try:
        for stale in _clashing(tracking, repo.refs.list(f"refs/remotes/{name}/")):
            repo.refs.update(stale, None, message=f"push to {where}: pruned (gone there)")
        repo.refs.update(tracking, local, message=f"push to {where}")
    except (MvcError, OSError) as e:  # (a full disk here must not stop the tags and certificates there)
        why = e.message if isinstance(e, MvcError) else os_error_text(e)
        warnings.warn(f"pushed, but {tracking} was not moved to {local[:12]}: {why} (mvc fetch {name} "
                      "updates it)")


def _refuse_clashing_name(ref: str, remote_refs: dict, where: str) -> None:
    """A branch cannot also be a folder of branches there (`a` beside `a/b`): clones would fail."""
    clash = _clashing(ref, remote_refs)
    if clash:
        raise BadName(f"remote {where} has {clash[0]}, which clashes with {ref}",
                      "a branch name cannot also be a folder of branch names; rename one of them")


def _clashing(ref: str, refs) -> list[str]:
    """The refs of `refs` that `ref` cannot stand beside (`a` and `a/b`)."""
    return sorted(o for o in refs if o.startswith(ref + "/") or ref.startswith(o + "/"))


def _plain_plan(repo: Repo, t: Transport, local: str, remote_refs: dict, certs: dict, pool: Pool) -> dict:
    """What a plain push sends: the objects the remote lacks ("phases": blobs with certificate
    objects, trees, commits; "sizes" of what is sent; "present": how many were there already)."""
    cert_ids = sorted({i for ids in certs.values() for i in ids})
    data, commits, trees = cert_inputs(repo, cert_ids)
    plan = _plan_push(repo, t, [local, *commits], remote_refs, pool, extra_trees=trees)
    extra = sorted(set(cert_ids + data) - set(plan["blobs"]))
    extra_missing = [o for o, there in zip(extra, pool.map(t.has, extra)) if not there]
    phases = [plan["blobs"] + extra_missing, plan["trees"], plan["commits"]]
    declared = plan["declared"]  # a lazy clone's unfetched blobs are sized by their trees, not downloaded
    sizes = {o: declared[o] if o in declared and not holds(repo, o) else repo.store.size(o) for p in phases for o in p}
    return {"phases": phases, "replace": set(), "sizes": sizes, "new_commits": plan["parents"],
            "present": plan["present"] + len(extra) - len(extra_missing)}


LARGE_DECODED = 64 << 20  # packed objects from this size are decoded (held whole) one at a time
_one_large_at_a_time = threading.Lock()


@forks.on_fork
def _new_large_turn() -> None:  # (see mvc.forks)
    global _one_large_at_a_time
    _one_large_at_a_time = threading.Lock()


def _send(repo: Repo, t: Transport, where: str, plan: dict, pool: Pool, progress: Progress) -> list[str]:
    """Upload the plan's phases in order, each made durable before the next (a tree there has its
    blobs there, a commit its trees). Ids in plan["replace"] overwrite the remote's damaged copy."""
    sent: list[str] = []

    def upload(oid):
        kw = {"replace": True} if oid in plan["replace"] else {}
        n = _send_loose(repo, t, oid, kw) if repo.loose.has(oid) else None
        if n is not None and packs is not None:  # (packed too: see PackStore.read_elsewhere)
            packs.read_elsewhere(oid, lambda: _loose_bytes(repo, oid))
        if n is None:  # packed, fetched on demand, or a damaged loose copy beside a good one: verified on read
            # decoded once (no bytes copy); large ones one at a time: each is held whole while it goes
            with _one_large_at_a_time if plan["sizes"].get(oid, 0) >= LARGE_DECODED else contextlib.nullcontext():
                data = repo.store.view(oid)
                n = len(data)
                t.put(oid, data, **kw)
                del data
        sent.append(oid)
        progress.advance(n)

    progress.begin(f"pushing to {where}", len(plan["sizes"]), sum(plan["sizes"].values()))
    packs = pack_store_of(repo.store)
    try:
        for phase in plan["phases"]:  # (packed objects: delta chains, each base decoded once)
            packed = [o for o in phase if packs is not None and packs.lookup(o, rescan=False) is not None]
            with packs.scanning(packed) if packed else contextlib.nullcontext([]) as chains:
                scan = packs.current_scan() if packed else None

                def upload_run(run, scan=scan):  # (a worker reads its chain's run with the scan)
                    with packs.joining(scan) if scan is not None else contextlib.nullcontext():
                        for oid in run:
                            upload(oid)
                for batch in _chain_batches(_runs(phase, chains, plan["sizes"], pool.jobs), plan["sizes"]):
                    with t.phase():  # (small objects made durable together)
                        pool.map(upload_run, batch)
            t.flush(pool.map)
    finally:
        progress.end()
    return sent


def _runs(phase: list[str], chains: list[list[str]], sizes: dict, jobs: int) -> list[tuple[int, tuple]]:
    """(chain number, run) for each object of `phase` outside `chains` (alone), then for the packed
    delta chains (see PackStore.scanning) cut into runs of about BATCH_BYTES / jobs (and at most
    BATCH_OBJECTS objects), in layers of one run of each of `jobs` chains (a window: a chain that
    ends gives its place to the next), so that a batch reads several chains at once, each on one
    thread, a chain's next run comes in a later batch, once its base is decoded, and the scan keeps
    a decoded base for at most `jobs` chains. Chains holding an object of LARGE_DECODED or more go
    last, one whole chain after another (such objects are read one at a time anyway)."""
    chains = [chain for chain in chains if len(chain) > 1]  # (an object alone: no base kept for it)
    in_chains = {o for chain in chains for o in chain}
    out = [(-1 - k, (o,)) for k, o in enumerate(o for o in phase if o not in in_chains)]
    jobs = max(1, jobs)
    limit = max(1, transfer.BATCH_BYTES // jobs)
    cut, large = [], []
    for n, chain in enumerate(chains):
        runs, run, total = [], [], 0
        for oid in chain:
            if run and (total + sizes[oid] > limit or len(run) >= transfer.BATCH_OBJECTS):
                runs.append((n, tuple(run)))
                run, total = [], 0
            run.append(oid)
            total += sizes[oid]
        runs.append((n, tuple(run)))
        (large if any(sizes[o] >= LARGE_DECODED for o in chain) else cut).append(runs)
    out += _windowed(cut, jobs)
    for runs in large:
        out += runs
    return out


def _windowed(chains: list[list], width: int) -> list:
    """The runs of `chains` in layers of one run of each of `width` chains at a time."""
    waiting = collections.deque(collections.deque(c) for c in chains)
    active: list[collections.deque] = []
    out = []
    while waiting or active:
        while waiting and len(active) < width:
            active.append(waiting.popleft())
        out += [c.popleft() for c in active]
        active = [c for c in active if c]
    return out


def _chain_batches(runs: list[tuple[int, tuple]], sizes: dict):
    """`batches` of runs (at most BATCH_BYTES, BATCH_OBJECTS objects), a batch never holding two
    runs of one chain (the later one's base would be decoded twice, by two threads at once): it
    closes before such a run."""
    out, chains_in, total, count = [], set(), 0, 0
    for n, run in runs:
        size = sum(sizes[o] for o in run)
        if out and (n in chains_in or total + size > transfer.BATCH_BYTES
                    or count + len(run) > transfer.BATCH_OBJECTS):
            yield out
            out, chains_in, total, count = [], set(), 0, 0
        out.append(run)
        chains_in.add(n)
        total += size
        count += len(run)
    if out:
        yield out


def _send_loose(repo: Repo, t: Transport, oid: str, kw: dict) -> int | None:
    """Send the loose copy of `oid` file to object; its size, or None where it is damaged, or went
    into a pack meanwhile (mvc pack or gc, which take no lock a push holds): then the caller sends
    it from wherever the store finds it."""
    path = repo.loose.path(oid)
    try:
        if not _loose_copy_whole(repo, oid):
            return None
        n = repo.loose.size(oid)
        t.put_file(oid, path, **kw)
        return n
    except ObjectMissing:
        return None
    except FileNotFoundError:
        if os.path.exists(path):  # (not the local file: something at the remote)
            raise
        return None


def _loose_bytes(repo: Repo, oid: str) -> bytearray | None:
    """The bytes of the loose copy of `oid` just sent (for packed deltas on it to decode against),
    or None when it is gone meanwhile (a pack or gc removed it: they decode it from the pack)."""
    try:
        data = repo.loose.view(oid, verify=False)
    except (ObjectMissing, FileNotFoundError):
        return None
    try:
        return bytearray(data)
    finally:
        if hasattr(data, "close"):
            data.close()


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
    the history of `tips`, and `extra_trees` with their blobs. Only what the remote's refs reach
    is complete there by construction; below a commit or tree it holds otherwise (left by an
    interrupted push, or by its owner's gc killed while it deleted) each object is checked."""
    tip_commits = [v for v in set(remote_refs.values()) if has_commit(repo, v)]
    known = ancestors(repo, tip_commits)
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
            on_remote.update(tree_blob_ids(repo.read_tree(tid, shared=True)))
    # trees of the remote's ref heads are complete there (a new commit often shares one)
    tip_trees = {tid for c in tip_commits for tid in repo.read_commit(c)["components"].values()}
    trees = sorted(({tid for c in new for tid in repo.read_commit(c)["components"].values()}
                    | set(extra_trees)) - on_remote)
    tree_there = dict(zip(trees, pool.map(t.has, trees)))
    present += sum(tree_there.values())
    missing_trees = [tid for tid in trees if not tree_there[tid]]
    unsure = [tid for tid in trees if not tree_there[tid] or tid not in tip_trees]  # look below these
    declared: dict[str, int] = {}
    for tid in unsure:
        declared.update(tree_blob_sizes(repo.read_tree(tid, shared=True)))
    blobs = sorted(set(declared) - on_remote)
    blob_there = dict(zip(blobs, pool.map(t.has, blobs)))
    present += sum(blob_there.values())
    return {"commits": [c for c in ordered if c not in there], "trees": missing_trees,
            "blobs": [b for b in blobs if not blob_there[b]], "present": present, "declared": declared,
            "parents": parents}


def _repair_plan(repo: Repo, t: Transport, where: str, local: str, pool: Pool, progress: Progress) -> dict:
    """push --repair: every object the history of `local` reaches (commits, trees, blobs, the
    certificates of its commits and the inputs they name) is read back from the remote and
    re-hashed, trusting nothing there. A missing object is sent; a damaged one is sent again over
    the bad copy (on a directory remote a loose copy, which reads take before a damaged pack's).
    Only a local copy that re-hashes right is sent: one damaged here too goes to "local_damaged",
    and the trees and commits naming it are held back (a tree there must have its blobs there)."""
    ids, kinds, hints = _history_objects(repo, local)
    packs = getattr(t, "packs", None)  # (a directory remote: a pack whose index fails its checksum is set
    if packs is not None:               # aside, as its own fsck and gc do, so what only it holds is sent)
        packs.refresh()
        packs.check_indexes()
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
    report = {"checked": len(ids), "local_damaged": bad, "held_back": sorted(held),
              "not_fetched": sorted(repo._not_fetched(bad) or [])}  # (a lazy clone's, not damage)
    for state in ("missing", "damaged"):
        report[state] = sorted(o for o in send if found[o][0] == state)
        report[f"{state}_resent"] = len(report[state])
    report["bytes_sent"] = sum(found[o][1] for o in send)
    phases = [[o for o in ids if o in send and kinds[o] == k] for k in ("blob", "tree", "commit")]
    unsent = set(held) | set(bad)
    lines = _graph_lacks(repo, t, pool, [o for o in ids if kinds[o] == "commit" and o not in unsent])
    report["graph_added"] = len(lines)
    return {"phases": phases, "replace": set(report["damaged"]), "sizes": {o: found[o][1] for o in send},
            "present": sum(state == "ok" for state, _, _ in found.values()), "report": report,
            "new_commits": lines}


def _graph_lacks(repo: Repo, t: Transport, pool: Pool, commits: list[str]) -> dict[str, list[str]]:
    """{commit: parents} of `commits` that the remote's commit graph lacks or gives wrong parents
    for (pushed by an mvc before the graph, or a graph write that failed), for push --repair to
    add; {} where the remote keeps no graph or it cannot be read."""
    if not t.keeps_commit_graph:
        return {}
    try:
        graph = commit_graph.read_graph(t, pool)
    except MvcError:
        return {}
    if graph is None:  # (graph/ holds another's files: left alone)
        return {}
    parents = {c: repo.read_commit(c)["parents"] for c in commits}
    return {c: ps for c, ps in parents.items() if graph.get(c) != ps}


def _history_objects(repo: Repo, local: str) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """(ids, {id: "commit", "tree" or "blob"}, expected blob sizes) of everything a push of `local`
    sends when the remote has nothing: certificates and the inputs they name count as blobs."""
    reach = _certified_history(repo, local, set(certindex.certified_commits(repo.dir)))
    cert_ids = sorted({i for c in certindex.certified_commits(repo.dir) if c in reach
                       for i in certindex.read_index(repo.dir, c) if repo.store.has(i)})
    data, named_commits, named_trees = cert_inputs(repo, cert_ids)
    commits = sorted(ancestors(repo, [local, *named_commits]))
    trees = sorted({tid for c in commits for tid in repo.read_commit(c)["components"].values()} | set(named_trees))
    hints: dict[str, int] = {}
    for tid in trees:
        hints.update(blob_size_hint(repo.read_tree(tid, shared=True)))
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
        named = (tree_blob_ids(repo.read_tree(oid, shared=True)) if kinds[oid] == "tree"
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
        ref = f"refs/tags/{n}"
        clash = _clashing(ref, remote_refs)
        if ref in remote_refs:
            skipped[n] = remote_refs[ref]
        elif clash:  # `rel/1` beside a tag `rel` there: clones could not hold both
            warnings.warn(f"tag {n} not pushed: the remote has {clash[0]}, which clashes with it (a tag name "
                          "cannot also be a folder of tag names)")
            skipped[n] = None
        else:
            send[n] = v
    return send, skipped


def _record_graph(repo: Repo, t: Transport, parents: dict[str, list[str]], local: str) -> bool:
    """Add the commits of `parents` (those the branch gains there: {commit: its parents}, as the
    plan read them) to the remote's commit graph, where it keeps one, newest first (what a fetch
    from `local` meets first): a hint for fetches, so a push goes on without it (a fetch then walks
    those commits one by one)."""
    if not t.keeps_commit_graph or not parents:
        return False
    ordered, todo, seen = [], collections.deque([local]), set()
    while todo:  # (from the tip down, within `commits`; any not met so: after them)
        c = todo.popleft()
        if c in parents and c not in seen:
            seen.add(c)
            ordered.append(c)
            todo.extend(parents[c])
    ordered += sorted(set(parents) - seen)
    try:
        return commit_graph.record(t, [commit_graph.graph_line(c, parents[c]) for c in ordered])
    except MvcError as e:
        warnings.warn(f"the commit graph on {t.describe()} was not updated ({e.message}); fetches of these "
                      "commits read them one at a time")
        return False


def _certified_history(repo: Repo, local: str, certified: set) -> set[str]:
    """The history of `local` and of every commit its commits' certificates name, with theirs in
    turn (what gc walks with them): their certificates travel, so `mvc verify` works in a clone."""
    reach = ancestors(repo, [local])
    done: set[str] = set()
    while True:
        todo = (certified & reach) - done
        if not todo:
            return reach
        done |= todo
        ids = {i for c in todo for i in certindex.read_index(repo.dir, c) if repo.store.has(i)}
        named = [c for c in cert_inputs(repo, ids)[1] if c not in reach]
        reach |= ancestors(repo, named, stop=reach)


def _certs_to_push(repo: Repo, t: Transport, local: str, pool: Pool) -> dict[str, list[str]]:
    """{commit: certificate ids the remote index lacks} for certified commits of the pushed history."""
    certified = certindex.certified_commits(repo.dir)
    if not certified:
        return {}
    reach = _certified_history(repo, local, set(certified))
    commits = [c for c in certified if c in reach]
    remote_lists = t.read_cert_indexes(commits, pool.map)
    out = {}
    for c, theirs in zip(commits, remote_lists):
        missing = [i for i in certindex.read_index(repo.dir, c) if i not in theirs and repo.store.has(i)]
        if missing:
            out[c] = missing
    return out

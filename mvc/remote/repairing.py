"""fsck --repair-from: restoring missing or damaged local objects from a remote's good copies."""
from __future__ import annotations

import os

from ..errors import CorruptObject, MvcError, ObjectMissing
from ..objects import is_oid
from ..repo import Repo
from ..store import fsync_dir
from ..transfer import DEFAULT_JOBS
from ..transport import Transport
from .common import MAX_META_BYTES, NAMED_MAX_BYTES, blob_size_limit, permission_errors, receive
from .config import open_remote


def repair(repo: Repo, remote: str | None = None, jobs: int = DEFAULT_JOBS) -> dict:
    """Restore what `fsck` finds damaged or missing from a remote (or a clone used as one): each
    object is downloaded, verified and written loose, replacing a damaged loose copy. Rounds repeat
    while they restore something (a restored commit reveals its parent and the trees it needs, and
    so on, however deep the history lost); after the first, which re-hashes everything, a round
    reads only what the last one restored (`_revealed`). Loose objects are read before packed
    ones: a full repack then rewrites the packs from the good copies, and pack files whose index
    is unusable are moved to objects/pack/damaged/ once every reachable object is whole again.
    Returns the fsck reports before and after."""
    before = repo.fsck()
    name, t = open_remote(repo, remote, jobs)
    where = name or t.describe()
    t.require_repository()  # (a remote of a newer format or extension: "upgrade mvc", not "damaged")
    restored, failed, done = [], {}, set()  # (done: restored, as a set)
    named = {p["id"] for p in before["problems"] if is_oid(p["id"])}
    from .. import certindex
    certificates = certindex.all_listed(repo.dir)  # (read once: a repair writes no index)
    limits = _declared_sizes(repo, certificates)
    with permission_errors(t), repo.writing():
        while True:  # (ends: each round restores objects not restored before, or stops)
            wanted = [oid for oid in sorted(named)
                      if oid not in failed and oid not in done  # (a damaged packed copy stays named
                      and not _intact(repo, oid)]  # until the repack below) e.g. a tree named for its header
            got = _restore(repo, t, where, wanted, failed, limits)
            restored += got
            done.update(got)
            if not got:
                break
            repo._cache.clear()
            named = _revealed(repo, got, limits, certificates)
    from ..pack import pack_store_of
    packs = pack_store_of(repo.store)
    if any(not is_oid(p["id"]) for p in before["problems"]) or any(packs.has(o) for o in restored):
        from ..pack_write import pack
        pack(repo, full=True)
    fresh = Repo(repo.root)  # fresh readers: a rewritten pack may keep its name (same bytes)
    after = fresh.fsck()
    if not any(is_oid(p["id"]) for p in after["problems"]) and pack_store_of(fresh.store).damaged:
        _set_aside(pack_store_of(fresh.store))
        after = Repo(repo.root).fsck()
    return {"remote": where, "before": before, "restored": restored, "failed": failed, "after": after,
            "ok": after["ok"]}


def _revealed(repo: Repo, got: list[str], limits: dict[str, int], certificates: set[str]) -> set[str]:
    """What the objects just restored name that this repository does not hold: a commit's parents,
    trees and listed certificates, a tree's blobs (whose sizes go into `limits`), what a
    certificate (one of `certificates`, those the indexes list) names. Only they are read, so a
    lost history of any depth is restored in one walk (damage to objects that were here was found
    by the first fsck)."""
    from .. import certindex
    from ..objects import certificate_refs, decode, object_kind, tree_blob_ids
    out: set[str] = set()
    for oid in got:
        data = repo.store.get(oid)
        kind = object_kind(data)
        try:
            if kind == "commit":
                commit = decode(data, "commit", oid)
                names = [*commit["parents"], *commit["components"].values(), *certindex.read_index(repo.dir, oid)]
            elif kind == "tree":
                tree = decode(data, "tree", oid)
                for blob, n in blob_size_limit(tree).items():
                    limits[blob] = max(n, limits.get(blob, 0))
                names = tree_blob_ids(tree)
            elif oid in certificates:
                names = list(certificate_refs(data, oid))
                limits.update({x: max(NAMED_MAX_BYTES, limits.get(x, 0)) for x in names})
            else:
                continue
        except MvcError:  # (one of a newer format: the fsck after the repair names it)
            continue
        out.update(n for n in names if is_oid(n) and not repo.store.has(n))
    return out


def _restore(repo: Repo, t: Transport, where: str, wanted: list[str], failed: dict,
             limits: dict[str, int]) -> list[str]:
    got = []
    for oid in wanted:
        try:
            data = receive(t, oid, where, limits.get(oid, MAX_META_BYTES))  # (a commit, tree or certificate)
        except (ObjectMissing, CorruptObject) as e:  # not there, or damaged there too; a remote that
            failed[oid] = e.message                  # cannot be read (the network, credentials) stops it
            continue
        if repo.loose.has(oid):
            repo.loose.delete(oid)  # the damaged copy: objects are write-once, so it goes first
        repo.loose.put(data, oid=oid)
        got.append(oid)
    return got


def _declared_sizes(repo: Repo, certificates: set[str]) -> dict[str, int]:
    """The most bytes each blob may have, by the readable trees of every reachable commit (what
    a repair may read from a remote for it), and by the `certificates` held here."""
    from ..objects import certificate_refs
    out: dict[str, int] = {}
    for cid in certificates:  # what certificates name: check data up to NAMED_MAX_BYTES
        try:
            out.update({x: NAMED_MAX_BYTES for x in certificate_refs(repo.store.get(cid), cid)})
        except MvcError:
            continue
    seen = set()
    for cid in repo._reachable_commits():
        for tid in repo.read_commit(cid)["components"].values():
            if tid in seen:
                continue
            seen.add(tid)
            try:
                tree = repo.read_tree(tid, shared=True)
            except MvcError:
                continue
            for oid, n in blob_size_limit(tree).items():
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

"""The commit graph an S3 remote keeps beside its objects, so that a fetch or clone downloads the
new commits of a long history in parallel instead of one round trip per commit (a commit names its
parents only inside itself: without the graph, a linear history of N new commits is N requests one
after the other before any blob moves).

Each push appends a line per commit it sent, `<commit> <parent>,<parent>` (`-` for none), to the
last of the segments `graph/<8 digits>`, each kept under 4,000 bytes (so that the listing cache,
mvc.listing_cache, holds every segment and a fetch reads only the one that grew). A hint only: a
fetch downloads the commits the graph says its tips need before its walk, every one verified
against its id as always, and the walk itself decides what is kept; a line that lies, a segment
that is damaged or missing, or a remote that keeps none (a directory, an older mvc's push) costs
requests, never a wrong history.
"""
from __future__ import annotations

import re

from ..errors import MvcError, RefConflict
from ..objects import is_oid
from ..transport import ABSENT, Transport
from .common import MAX_META_BYTES, Pool, has_commit, receive

GRAPH_PREFIX = "graph/"
SEGMENT_BYTES = 4000
_SEGMENT = re.compile(r"graph/\d{8}")
APPEND_RETRIES = 20


def graph_line(commit: str, parents: list[str]) -> bytes:
    return f"{commit} {','.join(parents) or '-'}\n".encode()


def record(t: Transport, lines: list[bytes]) -> None:
    """Append `lines` to the remote's graph (compare-and-swap on its last segment, new segments
    past SEGMENT_BYTES). Failures are left to the caller: a push goes on without them."""
    pending = list(lines)
    for _ in range(APPEND_RETRIES):
        if not pending:
            return
        segments = sorted(n for n in t.list_files(GRAPH_PREFIX) if _SEGMENT.fullmatch(n))
        last = segments[-1] if segments else None
        data, token = t.read_file(last) if last else (None, ABSENT)
        if data is None or len(data) + len(pending[0]) > SEGMENT_BYTES:
            last, data, token = f"{GRAPH_PREFIX}{len(segments) and int(segments[-1][6:]) + 1:08d}", b"", ABSENT
        take = 0
        size = len(data)
        while take < len(pending) and (take == 0 or size + len(pending[take]) <= SEGMENT_BYTES):
            size += len(pending[take])
            take += 1
        try:
            t.cas_file(last, data + b"".join(pending[:take]), token)
        except RefConflict:  # another push appended meanwhile: read it again
            continue
        pending = pending[take:]
    if pending:
        raise RefConflict(f"the commit graph on {t.describe()} kept changing", "push again")


def read_graph(t: Transport, pool: Pool) -> dict[str, list[str]]:
    """{commit: parents} as the remote's graph says (lines that do not parse are left out)."""
    listed = {n: v for n, v in t.list_versions(GRAPH_PREFIX).items() if _SEGMENT.fullmatch(n)}
    names = sorted(listed)
    graph: dict[str, list[str]] = {}
    for data in pool.map(lambda n: t.read_listed(n, listed[n]), names):
        for line in (data or b"").decode("ascii", "replace").splitlines():
            commit, _, parents = line.partition(" ")
            parents = [] if parents == "-" else parents.split(",")
            if is_oid(commit) and all(is_oid(p) for p in parents):
                graph[commit] = parents
    t.save_listing_cache(GRAPH_PREFIX, names)
    return graph


def commits_ahead(repo, t: Transport, where: str, pool: Pool, tips, stop: set[str]) -> dict[str, bytes]:
    """The verified bytes of the commits the graph says `tips` need and this repository lacks
    (down to commits here or in `stop`), downloaded in parallel; {} where the remote keeps no graph.
    One that fails to arrive is left out: the walk reads it, and says what is wrong."""
    tips = [c for c in tips if c not in stop and not has_commit(repo, c)]
    if not t.keeps_commit_graph or not tips:  # (nothing new: not even the listing)
        return {}
    try:
        graph = read_graph(t, pool)
    except MvcError:
        return {}
    want, todo = [], list(tips)
    seen = set()
    while todo:
        c = todo.pop()
        if c in seen or c in stop or c not in graph or has_commit(repo, c):
            continue
        seen.add(c)
        want.append(c)
        todo.extend(graph[c])

    def get(c):
        try:
            return receive(t, c, where, MAX_META_BYTES)
        except MvcError:
            return None
    return {c: data for c, data in zip(want, pool.map(get, want)) if data is not None}

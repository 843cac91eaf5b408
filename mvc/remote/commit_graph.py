"""The commit graph an S3 remote keeps beside its objects, so that a fetch or clone downloads the
new commits of a long history in parallel instead of one round trip per commit (a commit names its
parents only inside itself: without the graph, a linear history of N new commits is N requests one
after the other before any blob moves).

Each push appends a line `<commit> <parent>,<parent>` (`-` for none) for each commit its branch
gains there (those an interrupted push left there too), newest first, to the last of the segments
`graph/<number, 8 digits or more>`, each kept under 4,000 bytes (so that the listing cache,
mvc.listing_cache, holds every segment and a fetch reads only the one that grew). A fetch
reads segments newest first until the graph covers what its tips need, and downloads those
commits before its walk: each verified against its id as always, no larger than a commit can be
(AHEAD_MAX_BYTES), kept only if it is one, and the walk itself decides what is kept. A line that
lies, a segment that is damaged or missing, or a remote that keeps none (a directory, an older
mvc's push) costs requests, never a wrong history; `push --repair` adds the lines its history
lacks or has wrong (the newest line of a commit wins).
"""
from __future__ import annotations

import re

from ..errors import MvcError, RefConflict
from ..objects import is_oid, object_kind
from ..transport import ABSENT, Transport
from .common import Pool, has_commit, receive

GRAPH_PREFIX = "graph/"
SEGMENT_BYTES = 4000
_SEGMENT = re.compile(r"graph/[0-9]{8,18}")  # (numbered from 0, 8 digits at least: ordered by number)
CONFLICT_RETRIES = 20
AHEAD_MAX_BYTES = 1 << 20  # a commit downloaded ahead of the walk (a larger one: the walk reads it)
AHEAD_TOTAL_BYTES = 256 << 20  # and all of them


def graph_line(commit: str, parents: list[str]) -> bytes:
    return f"{commit} {','.join(parents) or '-'}\n".encode()


def _segments(t: Transport) -> dict[str, str | None] | None:
    """{segment: version}, newest (highest number) first; None where graph/ holds other files: a
    remote an older mvc let stand there, inside this one's layout, which the graph leaves alone."""
    listed = t.list_versions(GRAPH_PREFIX, flat=True)
    if any(not _SEGMENT.fullmatch(n) for n in listed):
        return None
    return dict(sorted(listed.items(), key=lambda kv: -int(kv[0][len(GRAPH_PREFIX):])))


def record(t: Transport, lines: list[bytes]) -> bool:
    """Append `lines` to the remote's graph: to its last segment (compare-and-swap), then to new
    ones past SEGMENT_BYTES; False where graph/ holds other files (nothing written). Failures are
    left to the caller: a push goes on without them."""
    pending = list(lines)
    conflicts = 0
    name = None  # the segment to write next, when known without a listing (the one after a full one)
    while pending:
        if name is None:
            segments = _segments(t)
            if segments is None:
                return False
            name = next(iter(segments), None)
            data, token = t.read_file(name) if name else (None, ABSENT)
            if data is None or len(data) + len(pending[0]) > SEGMENT_BYTES:
                name, data, token = _next(t, name), b"", ABSENT
        take, size = 0, len(data)
        while take < len(pending) and (take == 0 or size + len(pending[take]) <= SEGMENT_BYTES):
            size += len(pending[take])
            take += 1
        try:
            t.cas_file(name, data + b"".join(pending[:take]), token)
        except RefConflict:  # another push appended meanwhile: list and read again
            conflicts += 1
            if conflicts > CONFLICT_RETRIES:
                raise RefConflict(f"the commit graph on {t.describe()} kept changing", "push again") from None
            name = None
            continue
        pending = pending[take:]
        name, data, token = _next(t, name), b"", ABSENT
    return True


def _next(t: Transport, name: str | None) -> str:
    number = int(name[len(GRAPH_PREFIX):]) + 1 if name else 0
    if number >= 10 ** 18:
        raise MvcError(f"the commit graph on {t.describe()} has no segment name left after {name}")
    return f"{GRAPH_PREFIX}{number:08d}"


def _parse(data: bytes | None, graph: dict[str, list[str]]) -> None:
    """Add a segment's lines to `graph`, read newest segment first: the newest line of a commit
    wins (the last in its segment), so push --repair mends a wrong line by appending the right one."""
    lines: dict[str, list[str]] = {}
    for line in (data or b"").decode("ascii", "replace").splitlines():
        commit, _, parents = line.partition(" ")
        parents = [] if parents == "-" else parents.split(",")
        if is_oid(commit) and all(is_oid(p) for p in parents):
            lines[commit] = parents
    for commit, parents in lines.items():
        graph.setdefault(commit, parents)


def _read_into(t: Transport, pool: Pool, listed: dict, names: list[str], graph: dict[str, list[str]]) -> None:
    for data in pool.map(lambda n: t.read_listed(n, listed[n]), names):
        _parse(data, graph)


def read_graph(t: Transport, pool: Pool) -> dict[str, list[str]] | None:
    """{commit: parents} as the whole of the remote's graph says (lines that do not parse are left
    out); None where graph/ holds other files (the graph is left alone there: see _segments)."""
    listed = _segments(t)
    if listed is None:
        return None
    graph: dict[str, list[str]] = {}
    _read_into(t, pool, listed, list(listed), graph)
    t.save_listing_cache(GRAPH_PREFIX, listed)
    return graph


def commits_ahead(repo, t: Transport, where: str, pool: Pool, tips, stop: set[str]) -> dict[str, bytes]:
    """The verified bytes of the commits the graph says `tips` need and this repository lacks
    (down to commits here or in `stop`), downloaded in parallel; {} where the remote keeps no graph.
    Segments are read newest first, a few at a time, until the graph covers what the tips need (or
    runs out). One that fails to arrive, or is no commit, is left out: the walk reads it."""
    tips = [c for c in dict.fromkeys(tips) if c not in stop and not has_commit(repo, c)]
    if not t.keeps_commit_graph or not tips:  # (nothing new: not even the listing)
        return {}
    try:
        listed = _segments(t)
    except MvcError:
        return {}
    if not listed:
        return {}
    names = list(listed)
    graph: dict[str, list[str]] = {}
    want: list[str] = []
    seen: set[str] = set()
    unknown = set(tips)  # needed, and not (yet) in the graph read so far

    def expand() -> None:
        todo = [c for c in unknown if c in graph]
        unknown.difference_update(todo)
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            want.append(c)
            for p in graph[c]:
                if p in seen or p in stop or p in unknown or has_commit(repo, p):
                    continue
                if p in graph:
                    todo.append(p)
                else:
                    unknown.add(p)
    try:
        for i in range(0, len(names), pool.jobs):
            if not unknown:
                break
            _read_into(t, pool, listed, names[i:i + pool.jobs], graph)
            expand()
        t.save_listing_cache(GRAPH_PREFIX, listed)
    except MvcError:
        return {}
    return _download(t, where, pool, want)


def _download(t: Transport, where: str, pool: Pool, want: list[str]) -> dict[str, bytes]:
    budget = [AHEAD_TOTAL_BYTES]

    def get(c):
        if budget[0] <= 0:
            return None
        try:
            data = receive(t, c, where, AHEAD_MAX_BYTES)
        except MvcError:
            return None
        budget[0] -= len(data)
        return data if object_kind(data) == "commit" else None
    return {c: data for c, data in zip(want, pool.map(get, want)) if data is not None}

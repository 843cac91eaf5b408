"""The certificate index of a repository: `.mvc/certs/<2 hex>/<62 hex>` lists, one per line, the
certificates attached to that commit (so that attaching one never changes the commit's id).
Where it lives, reading it, the commits that have one, and attaching certificates to a commit.
The index is not trusted by its readers (semantic_ci.certificate checks every line)."""
from __future__ import annotations

import os

from .idlines import append_id_lines, read_id_lines
from .objects import is_oid

CERTS_DIR = "certs"


def index_path(mvc_dir: str, commit: str) -> str:
    return os.path.join(mvc_dir, CERTS_DIR, commit[:2], commit[2:])


def read_index(mvc_dir: str, commit: str) -> list[str]:
    """The certificate ids listed for `commit` (well-formed lines only, each once)."""
    return read_id_lines(index_path(mvc_dir, commit))


def certified_commits(mvc_dir: str) -> list[str]:
    """The commits that have an index."""
    base = os.path.join(mvc_dir, CERTS_DIR)
    out = []
    if os.path.isdir(base):
        for d in os.listdir(base):
            sub = os.path.join(base, d)
            if len(d) == 2 and os.path.isdir(sub):
                out.extend(d + n for n in os.listdir(sub) if is_oid(d + n))
    return sorted(out)


def all_listed(mvc_dir: str) -> set[str]:
    """Every id any index lists (of every certified commit, reachable or not)."""
    return {i for c in certified_commits(mvc_dir) for i in read_index(mvc_dir, c)}


def attach(mvc_dir: str, commit: str, ids) -> list[str]:
    """Append to `commit`'s index the ids it lacks (locked, fsynced); returns those appended."""
    return append_id_lines(index_path(mvc_dir, commit), ids, f"the certificate index of {commit[:12]}")

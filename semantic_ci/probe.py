"""The built-in deterministic probe byte stream and the data a check reads (stored as blobs)."""
from __future__ import annotations

import os
import stat

import blake3

from mvc.errors import BadInput

_WORDS = (b"the model of a weight and its brick core patch byte train loss step layer commit branch "
          b"def return import self value for in if else while print class list dict none true false "
          b"data stream test check ratio exact logits version store object tree 0 1 2 3 42 100").split()
_PUNCT = [b" ", b" ", b" ", b" ", b", ", b". ", b"\n", b"(", b")", b": ", b" = ", b"_", b"    "]


def builtin_probe(n_bytes: int) -> bytes:
    """`n_bytes` of text-like bytes from a counter-based generator: identical on every machine."""
    from .config import MAX_PROBE_BYTES
    if not isinstance(n_bytes, int) or isinstance(n_bytes, bool) or not 0 <= n_bytes <= MAX_PROBE_BYTES:
        raise BadInput(f"probe_bytes must be a whole number from 0 to {MAX_PROBE_BYTES}, got {n_bytes!r}")
    out = bytearray()
    stream = blake3.blake3(b"mvc-semantic-ci-probe-v1").digest(length=max(64, n_bytes * 2))
    i = 0
    while len(out) < n_bytes:
        a, b = stream[i % len(stream)], stream[(i + 1) % len(stream)]
        out += _WORDS[a % len(_WORDS)] + _PUNCT[b % len(_PUNCT)]
        i += 2
    return bytes(out[:n_bytes])


def read_data(repo, spec: str | None, default_bytes: int, files: dict | None = None) -> tuple[bytes, str, str]:
    """(bytes, blob id, description) for a check's data: a path under the repository root (taken
    from `files`, {path: (bytes, description)}, when it is there), a `blob:<id>` reference, or the
    built-in probe when `spec` is None. The bytes are stored as a blob so the certificate can name
    them and `mvc verify` can reproduce them anywhere."""
    if spec is None or spec == "builtin":
        data, desc = builtin_probe(default_bytes), f"builtin probe ({default_bytes} bytes)"
    elif spec.startswith("blob:"):
        oid = spec[5:]
        data = repo.store.get(oid)
        if len(data) < 2:  # (no window to measure: a check of it compared nothing and passed)
            raise BadInput(f"check data {spec} holds fewer than 2 bytes")
        return data, oid, f"blob {oid[:12]}"
    else:
        data, desc = files[spec] if files and spec in files else (read_repository_file(repo, spec), spec)
        if len(data) < 2:
            raise BadInput(f"check data {spec} holds fewer than 2 bytes")
    return data, repo.store.put(data), desc


MAX_DATA_BYTES = 1 << 30  # a check's data file is read whole: refuse what cannot be held


def repository_path(repo, spec: str) -> str:
    """The absolute path of check data `spec` (relative to the repository root); BadInput when it
    lies outside the root or inside its .mvc folder (see read_repository_file)."""
    root = os.path.abspath(repo.root)  # lexically: a linked data folder inside it is the user's choice
    path = os.path.abspath(spec if os.path.isabs(spec) else os.path.join(repo.root, spec))
    inside = os.path.relpath(path, root)
    if inside == os.pardir or inside.startswith(os.pardir + os.sep) or os.path.isabs(inside):
        raise BadInput(f"check data {spec} is outside the repository ({root})",
                       "keep held-out and probe data under the repository root")
    if inside.split(os.sep)[0] == ".mvc":
        raise BadInput(f"check data {spec} is inside the repository's .mvc folder")
    return path


def read_repository_file(repo, spec: str) -> bytes:
    """The bytes of a regular file under the repository root (not inside .mvc): a check's data is
    stored as a blob and named in the certificate, which travels with pushes, so a path naming
    a file outside (an absolute path, '..') must not carry other files along. (A symlink inside
    the repository is followed: mvc.toml is the user's, as its adapters are.)"""
    return read_regular_file(repository_path(repo, spec), f"check data {spec}")


def read_regular_file(path: str, what: str, limit: int = MAX_DATA_BYTES) -> bytes:
    """The bytes of the regular file at `path` (links followed), at most `limit` of them;
    BadInput naming it `what` for anything else (a pipe, a device, a folder, too big)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: a pipe would block the open
            raise BadInput(f"{what} is not a regular file")
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BadInput(f"{what} is not a regular file")
            if st.st_size > limit:
                raise BadInput(f"{what} is {st.st_size} bytes, more than {limit}")
            return f.read(limit + 1)[:limit]
    except OSError as e:
        raise BadInput(f"cannot read {what}: {e.strerror}") from None

"""What this repository last read of a remote's small mutable files (refs, certificate indexes),
each with the version the remote gave it (an S3 ETag): a file that a listing shows at the same
version is not read again, so a push or fetch costs one listing plus the files that changed, not
one request per ref and per certified commit of the history.

A hint only: an entry is used when its version equals the listed one, and a version names one
content (the ETag of a small object is its MD5, and changes with every write), so a lost, stale or
damaged cache (each entry carries a checksum) costs reads, never a wrong answer. One per
configured remote, in `.mvc/remote-listing/<hash of its name>.json` (a push or fetch to a plain
URL keeps none; `mvc remote remove` drops it), written whole (temp + rename) after each listing
read; two processes at once: the last write wins.
"""
from __future__ import annotations

import json
import os
import threading

from .files import atomic_write, makedirs
from .objects import hash_bytes

LISTING_DIR = "remote-listing"
MAX_CACHED_BYTES = 4096  # a larger file (a certificate index of very many lines) is read each time


def listing_cache_path(mvc_dir: str, remote: str) -> str:
    """The cache of configured remote `remote` (by name: one whose URL changes keeps it, since an
    entry is used only at the ETag it was read at, and a file's ETag is its content's MD5)."""
    return os.path.join(mvc_dir, LISTING_DIR, hash_bytes(remote.encode())[:32] + ".json")


def _check(name: str, version: str, data: bytes) -> str:
    """An entry's checksum: one damaged on disk is dropped, not believed."""
    return hash_bytes(b"\0".join([name.encode(), version.encode(), data]))[:16]


class ListingCache:
    """One remote's cache: {file name: (version, content)}, loaded on first use, saved by `save`."""

    def __init__(self, path: str):
        self.path = path
        self._entries: dict[str, tuple[str, bytes]] | None = None
        self._dirty = False
        self._lock = threading.Lock()

    def _load(self) -> dict[str, tuple[str, bytes]]:
        if self._entries is None:
            entries = {}
            try:
                with open(self.path, "rb") as f:
                    raw = json.loads(f.read())
                for name, (version, text, check) in raw.items():
                    if isinstance(name, str) and isinstance(version, str) and isinstance(text, str) \
                            and check == _check(name, version, text.encode("latin-1")):
                        entries[name] = (version, text.encode("latin-1"))
            except Exception:  # noqa: BLE001 (none yet, or damaged in any way, e.g. nested past the
                entries = {}  # recursion limit: a hint only, so read everything again)
            self._entries = entries
        return self._entries

    def get(self, name: str, version: str) -> bytes | None:
        """The content of `name` at `version`, if that is the version cached."""
        with self._lock:
            hit = self._load().get(name)
        return hit[1] if hit is not None and hit[0] == version else None

    def put(self, name: str, version: str, data: bytes) -> None:
        if len(data) > MAX_CACHED_BYTES:
            return
        with self._lock:
            entries = self._load()
            if entries.get(name) != (version, data):
                entries[name] = (version, data)
                self._dirty = True

    def keep_only(self, prefix: str, names) -> None:
        """Forget the files under `prefix` that a listing no longer shows (deleted there)."""
        names = set(names)
        with self._lock:
            entries = self._load()
            gone = [n for n in entries if n.startswith(prefix) and n not in names]
            for n in gone:
                del entries[n]
            self._dirty |= bool(gone)

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            entries = {n: [v, d.decode("latin-1"), _check(n, v, d)] for n, (v, d) in sorted(self._entries.items())}
            data = json.dumps(entries, separators=(",", ":")).encode()
            self._dirty = False
        try:
            makedirs(os.path.dirname(self.path))
            atomic_write(self.path, data, fsync=False)
        except OSError:  # (a full disk or a read-only repository: the next run reads the files again)
            pass

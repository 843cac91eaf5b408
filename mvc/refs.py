"""Refs (HEAD, branches, tags, remote-tracking refs) with compare-and-swap updates and reflogs."""
from __future__ import annotations

import json
import os
import time

from .errors import BadName, CorruptObject, RefConflict
from .files import LockFile, atomic_write
from .objects import check_ref_name, is_oid

SYMREF_PREFIX = "ref: "


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RefStore:
    """Refs are files under `root` (the .mvc directory) holding a 64-hex id; HEAD may be symbolic."""

    def __init__(self, root: str, fsync: bool = True):
        self.root = root
        self.fsync = fsync

    # -- paths -------------------------------------------------------------------------------
    def _path(self, ref: str) -> str:
        if ref != "HEAD":
            if not ref.startswith("refs/"):
                raise BadName(f"not a full ref name: {ref!r}")
            check_ref_name(ref[5:].split("/", 1)[1] if "/" in ref[5:] else ref[5:])
        return os.path.join(self.root, *ref.split("/"))

    def _log_path(self, ref: str) -> str:
        return os.path.join(self.root, "logs", *ref.split("/"))

    # -- reading -----------------------------------------------------------------------------
    def read_raw(self, ref: str) -> str | None:
        try:
            with open(self._path(ref), encoding="utf-8") as f:
                return f.read().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def head_target(self) -> str | None:
        """The branch ref HEAD points to (e.g. refs/heads/main), or None when detached."""
        raw = self.read_raw("HEAD")
        if raw and raw.startswith(SYMREF_PREFIX):
            return raw[len(SYMREF_PREFIX):]
        return None

    def read(self, ref: str) -> str | None:
        """The id a ref holds (following HEAD's symbolic link), or None when unborn/missing."""
        raw = self.read_raw(ref)
        if raw is None or raw == "":
            return None
        if raw.startswith(SYMREF_PREFIX):
            return self.read(raw[len(SYMREF_PREFIX):])
        if not is_oid(raw):
            raise CorruptObject(f"ref {ref} holds {raw[:40]!r}, not an object id", "run mvc fsck")
        return raw

    def list(self, prefix: str = "refs/") -> dict[str, str]:
        base = os.path.join(self.root, *prefix.rstrip("/").split("/"))
        out = {}
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(".lock") or name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                ref = os.path.relpath(full, self.root).replace(os.sep, "/")
                value = self.read(ref)
                if value:
                    out[ref] = value
        return dict(sorted(out.items()))

    # -- writing -----------------------------------------------------------------------------
    def set_symbolic(self, ref: str, target: str) -> None:
        with LockFile(self._path(ref) + ".lock", what=ref):
            atomic_write(self._path(ref), (SYMREF_PREFIX + target + "\n").encode(), self.fsync)

    def update(self, ref: str, new: str | None, expected: str | None | object = ..., message: str = "",
               author: str = "") -> None:
        """Move `ref` to `new` (None deletes) if it still holds `expected` (... skips the check)."""
        if ref == "HEAD":
            target = self.head_target()
            if target:
                return self.update(target, new, expected, message, author)
        path = self._path(ref)
        with LockFile(path + ".lock", what=f"ref {ref}"):
            old = self.read(ref)
            if expected is not ... and old != expected:
                raise RefConflict(
                    f"{ref} moved to {old[:12] if old else '(none)'} while expecting "
                    f"{expected[:12] if expected else '(none)'}",
                    "another process updated it; try again")
            if new is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                atomic_write(path, (new + "\n").encode(), self.fsync)
            self._append_log(ref, old, new, message, author)

    def _append_log(self, ref, old, new, message, author):
        path = self._log_path(ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        line = json.dumps({"old": old, "new": new, "time": utc_now(), "author": author,
                           "message": message}, sort_keys=True, separators=(",", ":"))
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def reflog(self, ref: str) -> list[dict]:
        """Entries newest first. A torn last line (crash mid-append) is skipped."""
        try:
            with open(self._log_path(ref), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out[::-1]

    def all_reflog_ids(self) -> set[str]:
        ids = set()
        logs = os.path.join(self.root, "logs")
        for dirpath, _d, files in os.walk(logs):
            for name in files:
                ref = os.path.relpath(os.path.join(dirpath, name), logs).replace(os.sep, "/")
                for e in self.reflog(ref):
                    for k in ("old", "new"):
                        if e.get(k):
                            ids.add(e[k])
        return ids

    def expire_reflogs(self, older_than_s: float) -> int:
        """Drop reflog entries older than the cutoff; returns how many were dropped."""
        cutoff = time.time() - older_than_s
        dropped = 0
        logs = os.path.join(self.root, "logs")
        for dirpath, _d, files in os.walk(logs):
            for name in files:
                path = os.path.join(dirpath, name)
                keep = []
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        try:
                            e = json.loads(line)
                            t = time.mktime(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
                        except (ValueError, KeyError):
                            continue
                        if t >= cutoff:
                            keep.append(line if line.endswith("\n") else line + "\n")
                        else:
                            dropped += 1
                atomic_write(path, "".join(keep).encode(), self.fsync)
        return dropped

"""Files of object ids, one per line (certificate indexes, a lazy clone's promise list) or of
`id size` lines (the sizes a lazy clone's trees declare for promised blobs): parsing, and
appending under a lock file so that concurrent writers never lose a line and a line cut short by
a crash stays apart from the next one."""
from __future__ import annotations

import os

from .errors import MvcError
from .files import LockFile
from .objects import is_oid
from .store import fsync_dir


def parse_id_lines(data: bytes | None) -> list[str]:
    """The ids of a file's lines, in order, each once; other lines (cut short, damaged) are skipped."""
    if not data:
        return []
    out: dict[str, None] = {}  # (a dict: ordered, and a line already seen is found at once)
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if is_oid(line):
            out[line] = None
    return list(out)


def read_id_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            return parse_id_lines(f.read())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # (a folder there lists nothing)
        return []


def parse_sized_lines(data: bytes | None) -> dict[str, int]:
    """{id: size} of a file's `id size` lines (the largest where an id comes twice); others skipped."""
    out: dict[str, int] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and is_oid(parts[0]) and parts[1].isdigit():
            out[parts[0]] = max(int(parts[1]), out.get(parts[0], 0))
    return out


def append_id_lines(path: str, ids, what: str) -> list[str]:
    """Append the ids the file lacks (under `path`.lock, fsynced; a new file's directory too);
    returns the ids appended. `what` names the file in a lock-timeout error."""
    return _append(path, {i: i for i in ids}, lambda raw: set(parse_id_lines(raw)), what)


def append_sized_lines(path: str, sizes: dict[str, int], what: str) -> list[str]:
    """Append `id size` lines for the ids the file lacks, as append_id_lines does."""
    return _append(path, {i: f"{i} {n}" for i, n in sizes.items()}, lambda raw: set(parse_sized_lines(raw)), what)


def _append(path: str, lines: dict[str, str], have_of, what: str) -> list[str]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with LockFile(path + ".lock", what=what):
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = None
        except (IsADirectoryError, NotADirectoryError):
            raise MvcError(f"{what} ({path}) is a folder, not a file", "move it aside and run again") from None
        have = have_of(raw)
        new = [i for i in lines if i not in have]
        if not new:
            return []
        text = "".join(lines[i] + "\n" for i in new)
        if raw and not raw.endswith(b"\n"):
            text = "\n" + text  # a line cut short (a crash mid-write) stays apart from ours
        with open(path, "ab") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        if raw is None:
            fsync_dir(os.path.dirname(path))
    return new

"""Refs (HEAD, branches, tags, remote-tracking refs) with compare-and-swap updates and reflogs.

A ref is the file `<root>/refs/...`, its reflog `<root>/logs/refs/...`. A ref is never both a name
and a folder of names (`feature` and `feature/x`). The reflog of a deleted ref is retired to
`<root>/logs/deleted/<ref>@<UTC time>`: its commits stay protected from gc, and it no longer
stands in the way of new refs.
"""
from __future__ import annotations

import calendar
import contextlib
import contextvars
import errno
import itertools
import json
import os
import re
import time
import warnings

from .errors import BadName, CorruptObject, MvcError, RefConflict, os_error_text
from .files import FUTURE_SLACK_S, LockFile, atomic_write, is_atomic_temp, makedirs, prune_empty_dirs, walk
from .interrupts import deliver, interrupts_deferred
from .objects import check_new_ref_name, check_ref_name, is_oid
from .store import fsync_dir

_KIND = re.compile(r"[A-Za-z0-9_-]+")  # the part after refs/ (heads, tags, remotes, ...)

SYMREF_PREFIX = "ref: "
SYMREF_MAX_DEPTH = 5  # as git
RETIRED_LOGS = "deleted"  # logs/deleted/...: live refs are HEAD or refs/..., so never clash with it


# the last changes that stand, of this thread (a thread starts with none): another thread's commit
# or an earlier API call is not what an error here should name
_MOVED: contextvars.ContextVar[tuple] = contextvars.ContextVar("mvc_moved", default=())
_MOVES_KEPT = 6


def note_moved(what: str, logged: bool = True) -> None:
    """Remember a ref (here or on a remote) this thread moved, said as what it did ("moved
    refs/heads/main to <id>", "deleted ..."), or another change that stands (`logged=False`: one no
    reflog records, as HEAD switched or a config value set): an error after it must not say that
    nothing moved (the CLI names these)."""
    _MOVED.set((_MOVED.get() + ((what, logged),))[-_MOVES_KEPT:])


@contextlib.contextmanager
def moves_scope():
    """Within it, moves_so_far names the changes made within it only (an API call's own, not those
    of earlier calls); afterwards they count for whoever is outside, as before."""
    outer = _MOVED.get()
    _MOVED.set(())
    try:
        yield
    finally:
        _MOVED.set((outer + _MOVED.get())[-_MOVES_KEPT:])


@contextlib.contextmanager
def moves_said_elsewhere():
    """Within it, moves noted are dropped: a repository serving as a remote moves its refs with
    its own RefStore, and the push says what moved there ("moved main on origin"), not the
    remote's RefStore ("moved refs/heads/main", read as a ref of this repository)."""
    outer = _MOVED.get()
    try:
        yield
    finally:
        _MOVED.set(outer)


def moves_of_this_thread() -> list[str]:
    return [what for what, _logged in _MOVED.get()]


def moves_logged() -> bool:
    """Whether a change this thread made is one a reflog records (a ref moved)."""
    return any(logged for _what, logged in _MOVED.get())


def moves_so_far() -> str:
    """What a command stopped by an error had done to refs, said for its error line."""
    moved = moves_of_this_thread()
    see = ": see mvc reflog" if moves_logged() else ""
    return f"it had {', '.join(moved)}, which stays{see}; the rest stopped" if moved else "nothing was moved"


def forget_moves() -> None:
    _MOVED.set(())


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_RETIRED_STAMP = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{9}Z")  # what _retired_stamp writes


def _retired_stamp(ns: int) -> str:
    """Fixed width, so that names sort in time order."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def _stamp_ns(stamp: str) -> int | None:
    """The nanoseconds a `_retired_stamp` stands for; None for other text."""
    try:
        return calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S")) * 10**9 + int(stamp[16:25])
    except (ValueError, OverflowError):
        return None


def repair_hint(ref: str) -> str:
    """How the user mends a ref file that holds no id (what fsck and the errors about it say)."""
    for prefix, command in (("refs/heads/", "mvc branch -d"), ("refs/tags/", "mvc tag -d")):
        if ref.startswith(prefix):
            return f"{command} {ref[len(prefix):]} deletes it; or write the commit id it should hold into it"
    if ref == "HEAD":
        return "mvc switch BRANCH repairs it"
    return "delete the file, or write the commit id it should hold into it"


def _read_log(path: str, checked: bool = True) -> list[dict]:
    """Entries oldest first; torn or unparsable lines (a crash mid-append) are skipped, and so,
    with a warning, are entries of another shape than mvc writes (a hand edit, another program),
    unless not `checked` (what gc counts: every id an entry names keeps its commit)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    out, odd = [], 0
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if checked and not _well_formed(e):
            odd += 1
        elif isinstance(e, dict):
            out.append(e)
    if odd:
        warnings.warn(f"skipped {odd} malformed entr{'y' if odd == 1 else 'ies'} of reflog {path}")
    return out


def _unfinished(e: dict, current: str | None) -> bool:
    """Whether reflog entry `e`, the last of its log, is a move that did not happen: it moves the ref
    away from the value the ref still holds (the entry is written first; a process killed before
    the ref file moved leaves it)."""
    return e.get("old") == current and e.get("new") != current


def _last_line(fd: int, size: int) -> tuple[int, bytes] | None:
    """(offset, bytes) of the last whole line of a log `size` long (None: empty, or it ends torn)."""
    if not size or os.pread(fd, 1, size - 1) != b"\n":
        return None
    start = size - 1
    while start > 0:  # back to the newline before it, 64 KiB at a time (a commit message may be long)
        begin = max(0, start - 65536)
        at = os.pread(fd, start - begin, begin).rfind(b"\n")
        if at >= 0:
            start = begin + at + 1
            break
        start = begin
    return start, os.pread(fd, size - start, start)


def _well_formed(e) -> bool:
    """Whether a parsed reflog line is an entry as update() writes it (author is optional:
    older mvc wrote none)."""
    return (isinstance(e, dict) and all(e.get(k) is None or (isinstance(e[k], str) and is_oid(e[k])) for k in ("old", "new"))
            and "new" in e and isinstance(e.get("time"), str) and isinstance(e.get("message"), str)
            and isinstance(e.get("author", ""), str))


def _entry_time(e) -> float:
    """A reflog entry's time in seconds since the epoch; NaN when it has none readable (such an
    entry is dropped when reflogs expire, so it compares as old)."""
    try:
        return calendar.timegm(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%SZ"))  # (UTC: no zone, no DST)
    except (ValueError, KeyError, TypeError, OverflowError):
        return float("nan")


def _ages(entries: list, now: float) -> list[float]:
    """The time each entry of a reflog (in append order) counts as for expiry: its own, but never
    ahead of `now` (a clock that ran ahead: such an entry is restamped when reflogs expire, and
    ages from then) nor older than an entry appended before it (a clock that went back: entries
    go oldest first, a log only loses a prefix, and a commit made minutes ago is not "a year old").
    NaN for an entry with no readable time (dropped)."""
    out, newest = [], float("-inf")
    for e in entries:
        t = _entry_time(e)
        if t == t:
            newest = max(newest, min(t, now))
            t = newest
        out.append(t)
    return out


def _cutoff(older_than_s: float) -> float:
    """Entries counting as older than this expire (every one when `older_than_s` <= 0)."""
    return time.time() - older_than_s if older_than_s > 0 else float("inf")


def _open_append(path: str) -> int:
    for attempt in range(10):
        try:
            makedirs(os.path.dirname(path))
            return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # the umask decides, as for git
        except FileNotFoundError:  # a ref deletion pruned the empty directory meanwhile
            if attempt == 9:
                raise


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _walk_later(make):
    """The walk `make()` returns, made only when iteration reaches it."""
    yield from make()


def _prune_tree(top: str) -> None:
    """Remove empty directories at and under `top`, and temp files of crashed writes (no lock
    beside them: a live writer holds the ref's lock in the same directory while its temp exists)."""
    for dirpath, _dirs, files in os.walk(top, topdown=False):
        if not any(f.endswith(".lock") for f in files):
            for f in files:
                if f.startswith(".") and f.endswith(".tmp"):
                    try:
                        os.unlink(os.path.join(dirpath, f))
                    except OSError:
                        pass
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


class RefStore:
    """Refs are files under `root` (the .mvc directory) holding a 64-hex id; HEAD may be symbolic."""

    def __init__(self, root: str, fsync: bool = True):
        self.root = root
        self.fsync = fsync
        self._newest_retired: dict[str, dict[str, str]] = {}  # folder of retired logs -> {leaf: newest stamp}

    # -- paths -------------------------------------------------------------------------------
    def _path(self, ref: str) -> str:
        if ref != "HEAD":
            if not ref.startswith("refs/"):
                raise BadName(f"not a full ref name: {ref!r}")
            kind, _, name = ref[5:].partition("/")
            if name and not _KIND.fullmatch(kind):  # refs/../config is no ref
                raise BadName(f"not a ref name: {ref!r}")
            check_ref_name(name or kind)
        return os.path.join(self.root, *ref.split("/"))

    def _log_path(self, ref: str) -> str:
        return os.path.join(self.root, "logs", *ref.split("/"))

    def _kind_dir(self, base: str, ref: str) -> str:
        """Where pruning of empty directories stops: <base>/refs/heads etc."""
        return os.path.join(base, *ref.split("/")[:2])

    @staticmethod
    def _conflict(ref: str, other: str) -> BadName:
        return BadName(f"cannot create {ref}: it conflicts with existing {other}",
                       "a name cannot also be a folder of names; pick another name or delete that one")

    def check_free(self, ref: str) -> None:
        """Refuse `ref` when its file would clash with other refs (`feature` vs `feature/x`);
        empty directories left there by deleted refs are removed."""
        if ref == "HEAD":
            return
        if self.read_raw(ref) is None:  # a ref to be created (names the user picks get stricter
            # rules where they are picked: Repo.create_branch, tag, commit --branch, init)
            check_new_ref_name(ref[5:].split("/", 1)[1] if "/" in ref[5:] else ref[5:], mirrored=True)
        parts = ref.split("/")
        for i in range(2, len(parts)):
            above = os.path.join(self.root, *parts[:i])
            if os.path.isfile(above):
                raise self._conflict(ref, "/".join(parts[:i]))
            if not os.path.isdir(above):
                return  # nothing can exist below it
        path = self._path(ref)
        if os.path.isdir(path):
            _prune_tree(path)
        if os.path.isdir(path):
            for dirpath, dirs, files in os.walk(path):
                dirs.sort()
                names = sorted(f for f in files if not f.startswith("."))
                if names:
                    name = names[0][:-len(".lock")] if names[0].endswith(".lock") else names[0]
                    other = os.path.relpath(os.path.join(dirpath, name), self.root)
                    raise self._conflict(ref, other.replace(os.sep, "/"))
            raise self._conflict(ref, f"{ref}/ (a directory)")

    # -- reading -----------------------------------------------------------------------------
    def read_raw(self, ref: str) -> str | None:
        try:
            with open(self._path(ref), encoding="utf-8", errors="replace") as f:  # garbage stays garbage
                return f.read().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # a name no ref here can have (a deep repository path)
                return None
            raise

    def _holds(self, ref: str, value: str | None) -> bool:
        """Whether the ref file holds `value` now (None: absent); False when it cannot be read."""
        try:
            return self.read_raw(ref) == value
        except (OSError, ValueError):
            return False

    def held(self, ref: str) -> tuple[str | None, str | None]:
        """(the id `ref` holds, None) or, for a file that holds no id, (None, the text it holds);
        (None, None) when there is no such ref. A symbolic ref is not followed."""
        raw = self.read_raw(ref)
        if raw is None or is_oid(raw):
            return raw, None
        return None, raw

    def head_problem(self) -> str | None:
        """What is wrong with HEAD (fsck names it), or None: it must name a branch
        (`ref: refs/heads/NAME`, which may have no commits yet) or hold a commit id (detached)."""
        damage = self._head_damage()
        return f"{damage} ({repair_hint('HEAD')})" if damage else None

    def head_branch_ref(self, cannot: str, hint: str) -> str:
        """The branch ref HEAD names, for a command that needs one; MvcError when HEAD is detached
        ("HEAD is detached: <cannot>", `hint`) or damaged (what is wrong with it, and the repair)."""
        ref = self.head_target()
        if ref is not None:
            return ref
        damage = self._head_damage()
        if damage:
            raise MvcError(f"{damage}: {cannot}", repair_hint("HEAD"))
        raise MvcError(f"HEAD is detached: {cannot}", hint)

    def _head_damage(self) -> str | None:
        raw = self.read_raw("HEAD")
        if raw is not None and raw.startswith(SYMREF_PREFIX):
            target = raw[len(SYMREF_PREFIX):]
            try:
                if target.startswith("refs/heads/"):
                    self._path(target)
                    return None
            except BadName:
                pass
            what = f"names {target[:60]!r}, not a branch"
        elif raw is not None and is_oid(raw):
            return None
        else:
            what = "is missing" if raw is None else f"holds {raw[:40]!r}, neither a branch nor a commit id"
        return f"HEAD {what}"

    def head_target(self) -> str | None:
        """The branch ref HEAD points to (e.g. refs/heads/main), or None when detached, or when it
        names a ref that is no branch (a damaged HEAD: commit and rollback must not move a tag)."""
        raw = self.read_raw("HEAD")
        if raw and raw.startswith(SYMREF_PREFIX + "refs/heads/"):
            return raw[len(SYMREF_PREFIX):]
        return None

    def read(self, ref: str) -> str | None:
        """The id a ref holds (following HEAD's symbolic link), or None when unborn/missing."""
        seen = []
        while True:
            raw = self.read_raw(ref)
            if raw is None:
                return None
            if raw == "":  # (mvc never writes one: a write a crash cut short, which must not read as unborn)
                raise CorruptObject(f"ref {ref} is an empty file, not an object id", repair_hint(ref))
            if not raw.startswith(SYMREF_PREFIX):
                break
            seen.append(ref)
            ref = raw[len(SYMREF_PREFIX):]
            if ref in seen or len(seen) > SYMREF_MAX_DEPTH:  # (a loop would recurse without end)
                what = "is a loop of symbolic refs" if ref in seen else f"follows more than {SYMREF_MAX_DEPTH} symbolic refs"
                raise CorruptObject(f"ref {seen[0]} {what}: {' -> '.join(seen + [ref])[:200]}", repair_hint(seen[0]))
        if not is_oid(raw):
            raise CorruptObject(f"ref {ref} holds {raw[:40]!r}, not an object id", repair_hint(ref))
        return raw

    def list(self, prefix: str = "refs/", bad: dict | None = None, strict: bool = False) -> dict[str, str]:
        """{ref: id} under `prefix`. A ref file that does not hold an id or cannot be read, a folder
        that cannot be read, or a file whose name no ref may have (a stray file, which mvc never writes), is
        skipped with a warning, or, `strict` (what gc keeps must count every ref), stops the
        listing (CorruptObject). `bad` (a dict), when given, receives {ref: problem} for the
        first two kinds instead (no warning, and no stop)."""
        base = os.path.join(self.root, *prefix.rstrip("/").split("/"))
        out = {}
        for dirpath, _dirs, files in walk(base, strict):
            for name in files:
                if name.endswith(".lock") or name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                ref = os.path.relpath(full, self.root).replace(os.sep, "/")
                try:
                    value = self.read(ref)
                except (CorruptObject, BadName, PermissionError) as e:
                    if isinstance(e, CorruptObject):  # (its hint says how to mend it: part of the problem)
                        problem = f"{e.message}; {e.hint}" if e.hint else e.message
                    elif isinstance(e, PermissionError):  # (another user's private branch on a shared repository)
                        problem = "permission denied: another user's ref this user may not read"
                    else:
                        problem = f"a file whose name no ref may have ({e.message}); rename it or move it out of refs/"
                    if bad is not None:
                        bad[ref] = problem
                    elif strict:
                        raise e if not isinstance(e, BadName) else CorruptObject(f"{full}: {problem}")
                    else:
                        warnings.warn(f"skipped {full}: {problem}")
                    continue
                if value:
                    out[ref] = value
        return dict(sorted(out.items()))

    # -- writing -----------------------------------------------------------------------------
    def wait_unlocked(self, ref: str) -> None:
        """Return once no other writer holds `ref`'s lock (LockHeld after the usual wait), so that
        a commit to a branch someone holds writes no objects before it fails."""
        LockFile(self._path(ref) + ".lock", what=f"ref {ref}").wait_free()

    def set_symbolic(self, ref: str, target: str) -> None:
        with LockFile(self._path(ref) + ".lock", what=ref):
            atomic_write(self._path(ref), (SYMREF_PREFIX + target + "\n").encode(), self.fsync,
                         placed=lambda: note_moved(f"pointed {ref} at {target}", logged=False))

    def update(self, ref: str, new: str | None, expected: str | None | object = ..., message: str = "",
               author: str = "") -> None:
        """Move `ref` to `new` (None deletes) if it still holds `expected` (... skips the check).
        A ref file that holds no id can be deleted: `expected` is then the text it holds (see
        `held`), and its reflog entry says what that was."""
        if ref == "HEAD":
            target = self.head_target()
            if target:
                return self.update(target, new, expected, message, author)
        path = self._path(ref)
        if new is not None:
            self.check_free(ref)  # before the lock: taking it creates directories
        held: list[int] = []  # signals held back while it moved, delivered once its lock is released
        try:
            with LockFile(path + ".lock", what=f"ref {ref}"):
                old, junk = self.held(ref) if new is None else (self.read(ref), None)
                if expected is not ... and (old if junk is None else junk) != expected:
                    now = old or (repr(junk[:40]) if junk is not None else "(none)")
                    raise RefConflict(
                        f"{ref} moved to {now[:12] if old else now} while expecting "
                        f"{expected[:12] if expected else '(none)'}",
                        "another process updated it; try again")
                if junk is not None:  # (the log names ids only: gc counts every id in it)
                    message = f"{message} (it held {junk[:40]!r}, not an id)"
                entry = json.dumps({"old": old, "new": new, "time": utc_now(), "author": author,
                                    "message": message}, sort_keys=True, separators=(",", ":"))
                with interrupts_deferred(held):  # a move is whole: ref, reflog entry and their fsyncs
                    moved = f"moved {ref} to {new[:12]}" if new else f"deleted {ref}"
                    try:
                        self._logged_move(ref, entry.encode() + b"\n", new, old)
                    except BaseException:
                        if new != old and self._holds(ref, new):  # a sync after the move failed:
                            note_moved(moved)  # the error must not say that nothing moved
                        raise
                    note_moved(moved)
                    if new is None:
                        self._retire_log(ref)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as e:
            # another process made (or is making) a clashing ref meanwhile; nothing moved here
            if new is not None:
                self.check_free(ref)
            raise MvcError(f"could not update {ref}: a ref with a clashing name was being written "
                           f"at {e.filename}: {e.strerror}", "try again") from e
        finally:
            if not os.path.lexists(path):  # deleted, or a failed creation: no empty folders stay
                prune_empty_dirs(os.path.dirname(path), self._kind_dir(self.root, ref))
            deliver(held)

    def _logged_move(self, ref: str, entry: bytes, new: str | None, old: str | None) -> None:
        """Append the reflog entry, then move the ref. If either fails the log is cut back to its
        old length, so the caller's error means nothing moved."""
        path = self._log_path(ref)
        self._cut_unfinished(ref, old)
        self._clear_log_path(ref, creating=old is None and new is not None and not os.path.lexists(self._path(ref)))
        fd = _open_append(path)
        try:
            size = os.fstat(fd).st_size
            try:
                if size:
                    os.lseek(fd, size - 1, os.SEEK_SET)
                    if os.read(fd, 1) != b"\n":
                        entry = b"\n" + entry  # after a torn line: lose only that one, not this too
                try:
                    _write_all(fd, entry)
                    if self.fsync:
                        os.fsync(fd)
                except OSError as e:  # (a full disk: say where; the descriptor's errors name no file)
                    e.filename = e.filename or path
                    raise
                if self.fsync and not size:
                    fsync_dir(os.path.dirname(path))
                if new is None:
                    try:
                        os.unlink(self._path(ref))
                    except FileNotFoundError:
                        pass
                else:
                    atomic_write(self._path(ref), (new + "\n").encode(), self.fsync)
            except BaseException:
                if new != old and self._holds(ref, new):  # it moved (a failed fsync after): the entry stays
                    raise
                try:  # best effort: cut the entry off again (a log this call created goes too)
                    os.ftruncate(fd, size)
                    if not size:
                        os.unlink(path)
                        logs = os.path.join(self.root, "logs")
                        prune_empty_dirs(os.path.dirname(path), self._kind_dir(logs, ref))
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)

    def _cut_unfinished(self, ref: str, old: str | None) -> None:
        """Cut the last entry of the ref's log when it is a move that did not happen (see _unfinished:
        its writer was killed between the entry and the ref file, and we hold the lock it left); a
        log left empty goes. A ref file holding no id is not judged."""
        if old is None and os.path.lexists(self._path(ref)):
            return
        path = self._log_path(ref)
        try:
            fd = os.open(path, os.O_RDWR)  # (through a link, as the append that follows goes)
        except OSError:
            return  # (no log, or one that cannot be opened: left as it is)
        try:
            last = _last_line(fd, os.fstat(fd).st_size)
            try:
                unfinished = last is not None and _unfinished(json.loads(last[1]), old)
            except (ValueError, AttributeError):
                unfinished = False
            if not unfinished:
                return
            os.ftruncate(fd, last[0])
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if last[0] == 0:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _clear_log_path(self, ref: str, creating: bool = False) -> None:
        """Retire reflogs of deleted refs that older mvc left in place where this ref's log goes
        (`logs/refs/heads/feature` as a file, or as a folder holding `feature/x`), and, when the ref
        is being created, its own old log (a delete killed between removing the ref file and
        retiring its log: the new branch's reflog went on with the old one's entries)."""
        if creating and os.path.isfile(self._log_path(ref)):
            self._retire_log(ref)
        logs = os.path.join(self.root, "logs")
        parts = ref.split("/")
        for i in range(2, len(parts)):
            above = os.path.join(logs, *parts[:i])
            if os.path.isfile(above):
                self._retire_stale("/".join(parts[:i]), ref)
                break
            if not os.path.isdir(above):
                break
        path = self._log_path(ref)
        if os.path.isdir(path):
            for dirpath, _dirs, files in os.walk(path):
                for name in files:
                    rel = os.path.relpath(os.path.join(dirpath, name), logs).replace(os.sep, "/")
                    self._retire_stale(rel, ref)
            _prune_tree(path)

    def _retire_stale(self, stale: str, ref: str) -> None:
        live = os.path.join(self.root, *stale.split("/"))
        if os.path.isfile(live) or os.path.exists(live + ".lock"):
            raise self._conflict(ref, stale)  # live after all, or being written: made meanwhile
        self._retire_log(stale)

    def _retire_log(self, ref: str) -> None:
        """Move the reflog of a deleted ref to logs/deleted/<ref>@<time>, best effort: the ref is
        deleted already, and a log left in place is retired when it stands in a new ref's way."""
        logs = os.path.join(self.root, "logs")
        src = self._log_path(ref)
        if not os.path.isfile(src):
            return
        ns = time.time_ns()
        base = os.path.join(logs, RETIRED_LOGS, *ref.split("/"))
        folder, leaf = os.path.split(base)
        newest = self._newest_retired_stamps(folder)
        last = _stamp_ns(newest[leaf]) if leaf in newest else None  # after it, whatever the clock says: they
        ns = max(ns, last + 1) if last is not None else ns     # go in name order (a clock that ran ahead named it)
        try:
            makedirs(folder)
            while os.path.lexists(f"{base}@{_retired_stamp(ns)}"):
                ns += 1
            os.rename(src, f"{base}@{_retired_stamp(ns)}")
            newest[leaf] = _retired_stamp(ns)
            if self.fsync:
                fsync_dir(os.path.dirname(base))
                fsync_dir(os.path.dirname(src))
        except OSError as e:
            if os.path.lexists(src):  # (not moved: a branch made again under that name would go on from it)
                warnings.warn(f"the reflog of deleted {ref} stays at {src} ({os_error_text(e)}): a branch made "
                              f"again under that name would list its entries; move it into "
                              f"{os.path.join(logs, RETIRED_LOGS)} by hand")
            return
        prune_empty_dirs(os.path.dirname(src), self._kind_dir(logs, ref))

    def _newest_retired_stamps(self, folder: str) -> dict[str, str]:
        """{leaf: its newest retired log's stamp} of a folder of retired logs, listed once per RefStore:
        listing it for each deletion made deleting N refs (remote remove, fetch pruning) N^2 / 2."""
        newest = self._newest_retired.get(folder)
        if newest is None:
            newest = self._newest_retired[folder] = {}
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                names = []
            for name in names:
                leaf, at, stamp = name.rpartition("@")  # (stamps are fixed width: name order is time order;
                if at and stamp > newest.get(leaf, "") and _RETIRED_STAMP.fullmatch(stamp):  # a strptime of each
                    newest[leaf] = stamp                                                # was ~10 us a name)
        return newest

    def _retired_logs(self, ref: str) -> list[str]:
        """Paths of the retired reflogs of `ref`, oldest first."""
        base = os.path.join(self.root, "logs", RETIRED_LOGS, *ref.split("/"))
        d, leaf = os.path.split(base)
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith(leaf + "@"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [os.path.join(d, n) for n in names]

    def reflog(self, ref: str) -> list[dict]:
        """Entries newest first (torn lines skipped). A live ref shows its own log only; a deleted
        ref with no new log shows its retired logs, so its last commits can still be found."""
        entries = _read_log(self._log_path(ref))
        current = self.read_raw(ref)
        if entries and (current is None or is_oid(current)) and _unfinished(entries[-1], current):
            entries.pop()  # a move that was logged but has not happened (in flight, or its process killed)
        if not entries and current is None:
            for path in self._retired_logs(ref):
                entries += _read_log(path)
        return entries[::-1]

    def all_reflog_ids(self, expiring_after_s: float | None = None) -> set[str]:
        """Every id in any reflog, retired ones included: they keep their commits from gc. With
        `expiring_after_s`, only entries that `expire_reflogs(expiring_after_s)` would keep (what a
        gc dry run counts on)."""
        cutoff = None if expiring_after_s is None else _cutoff(expiring_after_s)
        ids, now = set(), time.time()
        logs = os.path.join(self.root, "logs")
        retired = os.path.join(logs, RETIRED_LOGS)
        # retired logs last: a log that a deletion retires while the live ones are read is found
        # there (listed when reached; walked on its own when the deletion made the folder meanwhile)
        for dirpath, dirs, files in itertools.chain(walk(logs), _walk_later(lambda: walk(retired))):
            if dirpath == logs and RETIRED_LOGS in dirs:
                dirs.remove(RETIRED_LOGS)
            for name in files:
                entries = _read_log(os.path.join(dirpath, name), checked=False)
                expires = cutoff is not None and not is_atomic_temp(name)  # (expire_reflogs leaves a temp be)
                for e, age in zip(entries, _ages(entries, now) if expires else itertools.repeat(None)):
                    if expires and not age >= cutoff:
                        continue
                    for k in ("old", "new"):
                        if isinstance(e.get(k), str) and e[k]:
                            ids.add(e[k])
        return ids

    def count_expiring(self, older_than_s: float) -> int:
        """How many reflog entries `expire_reflogs(older_than_s)` would drop now."""
        cutoff, now = _cutoff(older_than_s), time.time()
        n = 0
        for dirpath, _d, files in walk(os.path.join(self.root, "logs")):
            for name in files:
                if not is_atomic_temp(name):  # (a killed rewrite's: gc deletes it, see expire_reflogs)
                    n += sum(1 for age in _ages(_read_log(os.path.join(dirpath, name), checked=False), now)
                             if not age >= cutoff)
        return n

    def expire_reflogs(self, older_than_s: float) -> int:
        """Drop reflog entries older than the cutoff (by `_ages`); returns how many were dropped. A
        live ref's log is rewritten under that ref's lock, so a move appending to it meanwhile is
        kept. An entry dated ahead of the clock is restamped now, to age from now on."""
        cutoff = _cutoff(older_than_s)
        dropped = 0
        logs = os.path.join(self.root, "logs")
        retired = os.path.join(logs, RETIRED_LOGS)
        for dirpath, _d, files in walk(logs):
            for name in files:
                if is_atomic_temp(name):  # a killed rewrite's temp file: gc deletes it once it is old
                    continue  # (until then all_reflog_ids counts it: it keeps only what the log kept)
                path = os.path.join(dirpath, name)
                if path.startswith(retired + os.sep):
                    dropped += self._expire_log(path, cutoff, retired)
                    continue
                ref = os.path.relpath(path, logs).replace(os.sep, "/")
                try:
                    lock = LockFile(self._path(ref) + ".lock", what=f"ref {ref}")
                except BadName:  # not a ref name mvc would make: rewrite it unlocked
                    dropped += self._expire_log(path, cutoff, retired)
                    continue
                with lock:
                    dropped += self._expire_log(path, cutoff, retired)
        return dropped

    def _expire_log(self, path: str, cutoff: float, retired: str) -> int:
        read, keep, dropped = [], [], 0
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return 0  # retired or pruned meanwhile
        with f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # torn (a crash mid-append): dropped, as _read_log skips it
                if isinstance(e, dict):
                    read.append((line, e))
        now = time.time()
        for (line, e), age in zip(read, _ages([e for _line, e in read], now)):
            if not age >= cutoff:
                dropped += 1
                continue
            if _entry_time(e) > now + FUTURE_SLACK_S:  # written under a clock that ran ahead
                line = json.dumps({**e, "time": utc_now()})
            keep.append(line if line.endswith("\n") else line + "\n")
        if not keep and path.startswith(retired + os.sep):
            os.unlink(path)  # nothing left of a deleted ref's history
            prune_empty_dirs(os.path.dirname(path), retired)
        else:
            atomic_write(path, "".join(keep).encode(), self.fsync)
        return dropped

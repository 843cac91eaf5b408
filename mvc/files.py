"""Atomic file writes and lock files (O_EXCL; records pid and host; dead owners are broken)."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import threading
import time
import warnings
from typing import Callable

from .errors import LockHeld
from .forks import hold_over_fork, on_fork
from .interrupts import interrupts_deferred
from .store import fsync_dir

# A lock file with no readable owner this old cannot be a writer between create and write: stale.
STALE_OWNERLESS_LOCK_S = 5.0
FUTURE_SLACK_S = 60.0  # times (of files, of reflog entries) this far ahead were set by a clock ahead of ours


def hostname() -> str:
    """This machine's network name (os.uname: the socket module is not imported for it)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket
    return socket.gethostname()


def walk(top: str, strict: bool = True):
    """os.walk that raises when a directory below `top` cannot be listed (`strict`: a ref or
    reflog in an unreadable folder would go unseen, and gc would delete the commits it keeps), or
    warns that it skips it (a reader: one user's private folder in a shared repository must not
    stop everyone's `mvc log`). A missing `top`, or a folder removed meanwhile, lists nothing."""
    def fail(err: OSError):
        if isinstance(err, FileNotFoundError):
            return
        if strict:
            raise err
        warnings.warn(f"skipped {err.filename}: cannot read it ({err.strerror})")
    return os.walk(top, onerror=fail)


def physical_path(path: str) -> str:
    """`path` with each ".." resolved as the kernel does, after the links before it (os.path.abspath
    folds "L/.." away as text, naming another folder than the one written to when L is a link),
    so that checks made along the path see the folders a write goes through. Only the part up to
    the last ".." is resolved: what follows is checked as given (a link to nothing stays a link to
    nothing, and is refused). Unchanged without "..". """
    parts = path.replace(os.sep, "/").split("/")
    if ".." not in parts:
        return path
    last = len(parts) - 1 - parts[::-1].index("..")
    head = os.path.realpath("/".join(parts[: last + 1]) or "/")
    return os.path.join(head, *parts[last + 1:]) if parts[last + 1:] else head


def prune_empty_dirs(path: str, stop: str) -> None:
    """Remove `path` and its parents below `stop` while they are empty (left by deleted refs)."""
    path, stop = os.path.normpath(path), os.path.normpath(stop)
    while path.startswith(stop + os.sep):
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)


def makedirs(path: str) -> None:
    """os.makedirs, retried when a concurrent ref deletion prunes an empty parent meanwhile (a
    directory removed between its mkdir and makedirs' check is reported as FileExistsError)."""
    for attempt in range(10):
        try:
            return os.makedirs(path, exist_ok=True)
        except (FileNotFoundError, FileExistsError):
            if attempt == 9:
                raise


_ATOMIC_TEMP = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")


def is_atomic_temp(name: str) -> bool:
    """Whether a file name is that of atomic_write's temp file (one a killed writer leaves)."""
    return bool(_ATOMIC_TEMP.fullmatch(name))


def atomic_write(path: str, data: bytes, fsync: bool = True, placed: Callable[[], None] | None = None) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix;
    `placed()` is called once the new content is in place (a failed sync after it still raises)."""
    d = os.path.dirname(path) or "."
    makedirs(d)
    # 16 hex digits: unique enough, and short, as retired reflog names come close to NAME_MAX
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.urandom(8).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:  # a failed write (full disk, path taken by a directory) leaves no temp file behind
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp):  # (a full disk names none; the temp is gone:
            refused = e.errno in (errno.EACCES, errno.EPERM)      # the folder refuses a file, or the file failed)
            e.filename, e.filename2 = (d if refused else path), None
        raise
    if placed is not None:
        placed()
    if fsync:
        fsync_dir(d)


LOCK_NOTICE_AFTER_S = 2.0  # a wait for a lock longer than this is announced
GATE_WAIT_S = 30.0  # an exclusive waiter holds new shared holders back this long at a time (see _gate_path)
GATE_PAUSE_S = 1.0  # and then lets them in this long before it holds them back again
_POLL_S = 0.05


def _gate_path(path: str) -> str:
    """The turnstile beside the lock at `path`: flock gives a waiting exclusive locker no priority,
    so a stream of overlapping shared holds (commits) would starve it (gc --grace 0). An exclusive
    locker holds the gate while it waits, GATE_WAIT_S at a time with GATE_PAUSE_S between (a long
    holder keeps it waiting anyway: new holders go in meanwhile); a new shared holder passes through
    the gate first."""
    stem, ext = os.path.splitext(path)  # (writers.lock -> writers-gate.lock: a lock file, as readers of
    return f"{stem}-gate{ext}"           # a repository's folders expect)


@contextlib.contextmanager
def shared_or_exclusive(path: str, exclusive: bool, waiting_for: str = "", within: float = math.inf):
    """Hold an advisory lock on `path` (flock): many shared holders at once, or one exclusive.

    The kernel drops it when the process dies, so it can never go stale. Without flock (not
    POSIX, or a file system that refuses it) it is a no-op. Asking for it exclusively while this
    thread holds it already (e.g. gc inside `Repo.writing()`) is an error, not a wait on itself.
    Shared holds of one process (nested, or in several threads: a lazy load's downloads inside a
    paste) share one descriptor, locked by the first and closed by the last: where flock is
    emulated by POSIX locks (NFS), closing any descriptor of the file drops every hold of the process.
    Exclusively, `within` bounds the wait: it yields True (held), False (not within it: not held)
    or None (no flock: not held, said)."""
    try:
        import fcntl
    except ImportError:
        yield None
        return
    key = (os.path.abspath(path), threading.get_ident())
    if exclusive and _held_here.get(key):
        raise LockHeld(f"this process holds {path} already (inside Repo.writing()?); it cannot also "
                       "take it exclusively", "run gc outside the block that writes")
    if _held_exclusively.get(key):  # (flock would wait for this thread's own hold: forever)
        raise LockHeld(f"this thread holds {path} exclusively (a gc or pack is deleting objects): a write "
                       "cannot start inside it, e.g. from a signal handler", "in a signal handler, set a flag "
                       "and commit once the running mvc call has returned")
    if exclusive:
        fd = _open_lock_file(path)
        hold = None
    else:
        if key[0] not in _shared_holds:  # a first hold: behind a waiting exclusive one (not under the guard,
            if _pass_gate(fcntl, path, waiting_for):  # which other threads' releases, of other locks too, take)
                waiting_for = ""  # (said once)
        with _shared_guard:  # (a first hold waits for an exclusive one here: so would the others)
            hold = _shared_holds.get(key[0])
            if hold is None:
                fd = _open_lock_file(path)
                try:
                    _flock(fcntl, fd, fcntl.LOCK_SH, path, waiting_for)
                except BaseException:
                    _close_lock_file(fd)
                    raise
                hold = _shared_holds[key[0]] = [fd, 0]
            hold[1] += 1
    _held_here[key] = _held_here.get(key, 0) + 1
    mine = 0  # (exclusive holds of this thread, counted while held)
    try:
        got = _take_exclusive(fcntl, fd, path, within, waiting_for) if exclusive else True
        if got is None:
            _say_unlocked(path, "no flock on this file system")
        mine = int(bool(exclusive and got))
        _count_exclusive(key, mine)
        yield got
    finally:
        _count_exclusive(key, -mine)
        _held_here[key] -= 1
        if hold is None:
            _close_lock_file(fd)  # releases the lock
        else:
            with _shared_guard:
                hold[1] -= 1
                if hold[1] == 0:
                    del _shared_holds[key[0]]
                    _close_lock_file(hold[0])  # releases the process's shared hold


def _pass_gate(fcntl, path: str, waiting_for: str) -> bool:
    """Wait while an exclusive locker waits for `path` (it holds the gate); returns whether it
    waited (and said so). At most GATE_WAIT_S, besides the waiter's own bound: a process holding
    the lock shared may run another that wants it too (it would wait on the exclusive one, which
    waits on it); it then goes in as it would without the gate. Where the gate cannot be opened or
    locked (another user's read-only repository, no flock) there is no gate."""
    try:
        gate = _open_lock_file(_gate_path(path))
    except OSError:
        return False
    try:
        if _try_flock(fcntl, gate, fcntl.LOCK_SH) is not False:
            return False
        start = time.monotonic()
        said = False
        while time.monotonic() - start < GATE_WAIT_S and _try_flock(fcntl, gate, fcntl.LOCK_SH) is False:
            if waiting_for and not said and time.monotonic() - start >= LOCK_NOTICE_AFTER_S:
                warnings.warn(f"waiting for {waiting_for}")  # (a short wait passes without a word)
                said = True
            time.sleep(_POLL_S / 2)
        return said
    finally:
        _close_lock_file(gate)


def _try_flock(fcntl, fd: int, mode: int) -> bool | None:
    """flock without waiting: True (had), False (held the other way), None (no flock here)."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _take_exclusive(fcntl, fd: int, path: str, timeout_s: float, waiting_for: str = "") -> bool | None:
    """Lock `fd` (the lock file at `path`) exclusively within `timeout_s` (math.inf: until had):
    True, False (not within it) or None (no flock here). Holds the gate meanwhile, so that new
    shared holders wait and those in flight drain: GATE_WAIT_S at a time, then opens it for
    GATE_PAUSE_S (a long holder keeps this waiter waiting anyway: the held-back ones go in) and
    takes it again (else a stream of overlapping holds would starve it once more, as without a
    gate). Says what it waits for once."""
    start = time.monotonic()
    try:
        gate = _open_lock_file(_gate_path(path))
    except OSError:
        gate = None
    have_gate, said, turn = False, False, start  # (turn: when the gate was last taken or opened)
    try:
        while True:
            now = time.monotonic()
            if gate is not None and not have_gate and (turn == start or now - turn >= GATE_PAUSE_S):
                have_gate = _try_flock(fcntl, gate, fcntl.LOCK_EX)
                if have_gate is None:  # (no flock on the gate: the lock alone decides)
                    _close_lock_file(gate)
                    gate, have_gate = None, False
                elif have_gate:
                    turn = now
            elif have_gate and now - turn >= GATE_WAIT_S:  # held back long enough: open it a while
                fcntl.flock(gate, fcntl.LOCK_UN)
                have_gate, turn = False, now
            got = _try_flock(fcntl, fd, fcntl.LOCK_EX)
            if got is not False:
                return got
            if now - start >= timeout_s:
                return False
            if waiting_for and not said and now - start >= LOCK_NOTICE_AFTER_S:
                warnings.warn(f"waiting for {waiting_for}")
                said = True
            time.sleep(_POLL_S)
    finally:
        if gate is not None:
            _close_lock_file(gate)  # releases the gate


def _flock(fcntl, fd: int, mode: int, path: str, waiting_for: str) -> None:
    try:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:  # held the other way: a while, then say what the wait is for and
                pass                 # wait (a short wait passes without a word)
            if time.monotonic() - start >= LOCK_NOTICE_AFTER_S:
                if waiting_for:
                    warnings.warn(f"waiting for {waiting_for}")
                fcntl.flock(fd, mode)
                return
            time.sleep(_POLL_S / 2)
    except OSError as e:  # a file system without flock (some network mounts): go on unlocked
        _say_unlocked(path, e.strerror)


def _say_unlocked(path: str, why: str | None) -> None:
    warnings.warn(f"cannot lock {path} ({why}): commits are not kept from racing a short-grace gc here, "
                  "and gc with the default grace deletes no garbage")


_held_here: dict[tuple[str, int], int] = {}  # (lock path, thread) -> holds (flock is per open file)
_shared_holds: dict[str, list] = {}  # lock path -> [descriptor, holds] of this process's shared holds
_shared_guard = threading.Lock()
_held_exclusively: dict[tuple[str, int], int] = {}  # (lock path, thread) -> exclusive holds (exclusive_within)


def _count_exclusive(key: tuple[str, int], n: int) -> None:
    left = _held_exclusively.get(key, 0) + n
    if left > 0:
        _held_exclusively[key] = left
    else:
        _held_exclusively.pop(key, None)


@contextlib.contextmanager
def exclusive_within(path: str, timeout_s: float, waiting_for: str = ""):
    """Hold `path`'s advisory lock (as `shared_or_exclusive`) exclusively if it can be had within
    `timeout_s` (saying once what it waits for); yields whether it was (False where flock is not
    available: what needs it is left undone, e.g. gc keeps garbage there rather than race commits)."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    if _held_here.get((os.path.abspath(path), threading.get_ident())):  # it would wait for itself
        yield False
        return
    fd = _open_lock_file(path)
    key = (os.path.abspath(path), threading.get_ident())
    try:
        got = bool(_take_exclusive(fcntl, fd, path, timeout_s, waiting_for))  # (no flock here: it cannot be had)
        _count_exclusive(key, int(got))
        try:
            yield got
        finally:
            _count_exclusive(key, -int(got))
    finally:
        _close_lock_file(fd)


def _open_lock_file(path: str) -> int:
    """The file flock locks: opened for writing (NFS refuses an exclusive lock on a read-only
    descriptor), or read-only where we may not write it (another user's, in a shared repository:
    local file systems lock it all the same). Created with the mode the umask allows, as git does.
    Close it with `_close_lock_file` (a forked child closes those of the parent's other threads)."""
    with _lock_fds_guard:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # not there, and not ours to make: the first error says why
                raise e from None
        _lock_fds[fd] = threading.get_ident()
        return fd


def _close_lock_file(fd: int) -> None:
    with _lock_fds_guard:
        _lock_fds.pop(fd, None)
        os.close(fd)


_lock_fds: dict[int, int] = {}  # open lock-file descriptor -> the thread that opened it
_lock_fds_guard = threading.Lock()  # (held over a fork: no descriptor is open there but unlisted)
hold_over_fork(_lock_fds_guard)


@on_fork
def _drop_other_threads_locks() -> None:
    """In a forked child: close the lock descriptors of the parent's other threads (a flock lives
    as long as any copy of its descriptor: the child would hold the parent's write or gc lock,
    or the gate, for as long as it lives) and forget their holds; the forking thread's own holds,
    which it releases in the child as it goes on, stay."""
    global _shared_guard
    me = threading.get_ident()
    _shared_guard = threading.Lock()
    for key in [k for k in _held_here if k[1] != me]:
        del _held_here[key]
    for key in [k for k in _held_exclusively if k[1] != me]:
        del _held_exclusively[key]
    for path, hold in list(_shared_holds.items()):
        mine = _held_here.get((path, me), 0)
        if mine:
            hold[1] = mine
        else:
            del _shared_holds[path]
            _lock_fds[hold[0]] = -1  # (closed below)
    for fd, owner in list(_lock_fds.items()):
        if owner != me and fd not in (hold[0] for hold in _shared_holds.values()):
            del _lock_fds[fd]
            try:
                os.close(fd)
            except OSError:
                pass


def process_start(pid: int) -> str | None:
    """When process `pid` started, as "<boot id>:<clock ticks since boot>" (Linux); None where it
    cannot be told. A live process with another start than a lock records reuses a dead one's pid
    (a restarted container's job is pid 1 again)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            ticks = f.read().rsplit(")", 1)[1].split()[19]  # (starttime: field 22, the name may hold spaces)
    except (OSError, IndexError):
        return None
    return f"{boot}:{ticks}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_OWN_START: dict = {}  # pid -> process_start(pid) of this process (a forked child has its own pid)


class LockFile:
    """`with LockFile(path):` holds `path` (created with O_EXCL) until the block ends.

    Waits up to `timeout` seconds for another holder; a lock left by a dead process on this host
    (whose pid may be another process's now: process_start tells them apart), or one without a
    readable owner older than STALE_OWNERLESS_LOCK_S, is broken with a warning.

    One object taken again and again (a gc waiting in rounds) says its wait once, and its timeout
    counts the time all its waits took together, not each wait afresh.
    """

    def __init__(self, path: str, timeout: float = 10.0, what: str = "the repository"):
        self.path = path
        self.timeout = timeout
        self.what = what
        self.held = False
        self.waited_s = 0.0  # in earlier waits of this object
        self.said = False

    def _try(self) -> bool:
        pid = os.getpid()
        if _OWN_START.get(pid, _OWN_START) is _OWN_START:  # (read once per process: a wait tries again
            _OWN_START[pid] = process_start(pid)          # every few ms)
        owner = json.dumps({"pid": pid, "host": hostname(), "time": time.time(), "start": _OWN_START[pid]}).encode()
        try:
            with interrupts_deferred():  # (a Ctrl-C between the file's creation and its owner's line
                return self._create(owner)  # left a lock no one owns, waited for and broken as stale)
        except BaseException:  # (the Ctrl-C, delivered once it was made: the block is never entered)
            with contextlib.suppress(OSError):
                self.release()
            raise

    def _create(self, owner: bytes) -> bool:
        for attempt in range(10):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                return False
            except FileNotFoundError:  # a ref deletion pruned the empty directory meanwhile
                if attempt == 9:
                    raise
                makedirs(os.path.dirname(self.path) or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(owner)
        except BaseException as e:
            try:  # an ownerless lock could never be broken: remove it (full disk)
                os.unlink(self.path)
            except OSError:
                pass
            if isinstance(e, OSError) and e.filename is None:  # (a full disk: say where)
                e.filename = self.path
            raise
        self.held = True
        return True

    def _owner(self) -> dict | None:
        """Who holds the lock ({"pid", "host", "time", "start"}); None when the file names nobody. A lock
        file we may not read is another user's: {"unreadable": True}, never judged stale."""
        try:
            with open(self.path) as f:
                owner = json.load(f)
        except PermissionError:
            return {"unreadable": True}
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _stale_reason(self, owner: dict | None, st: os.stat_result) -> str | None:
        if owner and owner.get("unreadable"):
            return None
        if owner is None:
            age = time.time() - st.st_mtime
            return f"with no owner, {age:.0f} s old" if age > STALE_OWNERLESS_LOCK_S else None
        if owner.get("host") == hostname() and isinstance(owner.get("pid"), int):
            if not pid_alive(owner["pid"]):
                return f"left by dead process {owner['pid']}"
            if isinstance(owner.get("start"), str) and process_start(owner["pid"]) not in (owner["start"], None):
                return f"left by dead process {owner['pid']} (its pid is another process's now)"
        return None

    def stale(self, min_age_s: float = 0.0) -> str | None:
        """Why the lock file is stale (see the class), when it is and is older than `min_age_s`
        seconds; None while it is held, or when there is none. (gc and fsck look for those that
        killed writers left on refs no command touches again.)"""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if time.time() - st.st_mtime < min_age_s:
            return None
        return self._stale_reason(self._owner(), st)

    def break_stale(self) -> bool:
        """Remove the lock file if it is stale, judged afresh as a waiter does; whether it did."""
        return self._break()

    def _break(self) -> bool:
        """Remove the lock file if it is stale (with a warning); whether it did. Breakers take
        turns under a guard file and judge the lock afresh while they hold it: a waiter that judged
        an older file stale never removes a lock another waiter has taken since (check-then-unlink
        let two processes hold it)."""
        guard = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.break")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            self._clear_stale_guard(guard)
            return False  # another waiter is breaking it: look again
        except FileNotFoundError:
            return False
        try:
            os.write(fd, json.dumps({"pid": os.getpid(), "host": hostname()}).encode())
            os.close(fd)
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return False
            reason = self._stale_reason(self._owner(), st)
            if reason:  # nobody else removes a stale file, and a new lock needs it gone first
                try:
                    os.unlink(self.path)
                except FileNotFoundError:  # removed by hand (the LockHeld hint says how)
                    return False
                warnings.warn(f"broke stale lock {self.path} {reason}")
                return True
            return False
        finally:
            try:
                os.unlink(guard)
            except FileNotFoundError:
                pass

    @staticmethod
    def _clear_stale_guard(guard: str) -> None:
        """A guard is held for the few microseconds of a break: one older than
        STALE_OWNERLESS_LOCK_S, or whose owner on this host is dead, was left by a killed breaker."""
        try:
            st = os.stat(guard)
            with open(guard) as f:
                owner = json.loads(f.read() or "null")
        except (OSError, ValueError):
            owner, st = None, None
        if st is None:
            return
        dead = isinstance(owner, dict) and owner.get("host") == hostname() and \
            isinstance(owner.get("pid"), int) and not pid_alive(owner["pid"])
        if dead or time.time() - st.st_mtime > STALE_OWNERLESS_LOCK_S:
            try:  # only the file judged (a live breaker's new guard differs); a narrow window remains,
                now = os.stat(guard)  # open only when a breaker was killed holding its guard
                if (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
                    os.unlink(guard)
            except FileNotFoundError:
                pass

    def acquire(self) -> "LockFile":
        makedirs(os.path.dirname(self.path) or ".")
        self._wait(take=True)
        return self

    def wait_free(self) -> None:
        """Wait as `acquire` would (breaking a stale lock, LockHeld after the timeout) until nobody
        holds the lock, without taking it: a writer checks so before it writes anything."""
        self._wait(take=False)

    def _wait(self, take: bool) -> None:
        start = time.monotonic()
        try:
            self._wait_from(start, take)
        finally:
            self.waited_s += time.monotonic() - start

    def _wait_from(self, start: float, take: bool) -> None:
        deadline = start + self.timeout - self.waited_s
        delay = 0.002
        short = self.timeout <= 2 * LOCK_NOTICE_AFTER_S  # short waits pass without a word
        while not (take and self._try()):
            try:
                st = os.stat(self.path)
            except (FileNotFoundError, NotADirectoryError):  # (a clashing name: the update reports it)
                if not take:
                    return
                continue  # released meanwhile
            owner = self._owner()
            if self._stale_reason(owner, st):
                self._break()
                time.sleep(0.001)  # (a guard held by another breaker: let it finish)
                continue
            who = ("another user's process (its lock file is not readable)" if owner and owner.get("unreadable")
                   else f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process")
            if not (short or self.said) and time.monotonic() - start + self.waited_s >= LOCK_NOTICE_AFTER_S:
                self.said = True
                warnings.warn(f"waiting for {self.what}: locked by {who} ({self.path}); giving up after "
                              f"{self.timeout:.0f} s")
            if time.monotonic() >= deadline:
                raise LockHeld(f"{self.what} is locked by {who}: {self.path}",
                               "wait for it to finish; if no mvc process is running, delete the lock file")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

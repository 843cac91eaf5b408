"""Atomic file writes and lock files (O_EXCL; records pid and host; dead owners are broken)."""
from __future__ import annotations

import json
import os
import time
import warnings

from .errors import LockHeld
from .store import fsync_dir


def hostname() -> str:
    """This machine's network name (os.uname: the socket module is not imported for it)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket
    return socket.gethostname()


def atomic_write(path: str, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.urandom(16).hex()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(d)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockFile:
    """`with LockFile(path):` holds `path` (created with O_EXCL) until the block ends.

    Waits up to `timeout` seconds for another holder; a lock left by a dead process on this host
    is broken with a warning.
    """

    def __init__(self, path: str, timeout: float = 10.0, what: str = "the repository"):
        self.path = path
        self.timeout = timeout
        self.what = what
        self.held = False

    def _try(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": hostname(), "time": time.time()}, f)
        self.held = True
        return True

    def _owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self) -> "LockFile":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while not self._try():
            owner = self._owner()
            if (owner and owner.get("host") == hostname()
                    and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"])):
                warnings.warn(f"breaking stale lock {self.path} left by dead process {owner['pid']}")
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            if time.monotonic() >= deadline:
                who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
                raise LockHeld(f"{self.what} is locked by {who}: {self.path}",
                               "wait for it to finish; if no mvc process is running, delete the lock file")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self

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

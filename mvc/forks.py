"""What a process forked from one using mvc (DataLoader workers, multiprocessing's fork) must not
inherit: the thread locks other threads of the parent held at the fork (no thread of the child
would ever release them: its next commit or packed load would wait forever), the state those locks
guarded (caches, the list of packs: possibly half updated), network clients, and the flock
descriptors of the parent's writes (a child holding one kept a gc waiting as long as it lived).

Modules register a function and objects a `_after_fork()` method here; both run in the child
right after `os.fork()`, in its one thread (the thread that forked)."""
from __future__ import annotations

import os
import weakref

_functions: list = []
_objects: weakref.WeakSet = weakref.WeakSet()


def on_fork(fn):
    """Run `fn()` in a forked child (usable as a decorator)."""
    _functions.append(fn)
    return fn


def track(obj) -> None:
    """Call `obj._after_fork()` in a forked child while `obj` lives."""
    _objects.add(obj)


def hold_over_fork(lock) -> None:
    """Take `lock` before a fork and release it after, in parent and child: for a lock held only
    around a few system calls (never while taking another lock), whose state a fork must not split
    (a descriptor opened but not yet listed)."""
    _held_over.append(lock)


_held_over: list = []


def _before_fork() -> None:
    for lock in _held_over:
        lock.acquire()


def _after_fork_in_parent() -> None:
    for lock in reversed(_held_over):
        lock.release()


def _after_fork_in_child() -> None:
    _after_fork_in_parent()
    for fn in _functions:
        fn()
    for obj in list(_objects):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)

"""Holding Ctrl-C, SIGTERM and SIGHUP back while a step that must not stop half way runs."""
from __future__ import annotations

import contextlib
import functools
import inspect
import signal
import threading


_HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()


@contextlib.contextmanager
def interrupts_deferred(held: list[int] | None = None):
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP held back until the block is done, then delivered to the handler
    in place (Python's raises KeyboardInterrupt; the CLI's SIGTERM handler raises Terminated; a
    training loop's own handler is called; SIGTERM's default ends the process): for steps that
    must not stop half way (a ref moved but its reflog entry cut back, or a commit that landed
    reported as interrupted). Only the main thread receives signals; elsewhere the block runs as
    it is, and so does a signal whose handler Python does not own. With `held`, the signals
    caught are added to it instead, for the caller to `deliver` once it has released a lock that
    a handler's own commit (a training loop saving on SIGTERM) would wait for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, *_HANGUP)}
    owned = [s for s, h in old.items() if h is not None]  # None: installed outside Python
    got: list[int] = []
    for s in owned:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:  # (on every way out: a signal held back while the block failed is the caller's too)
        for s in owned:
            signal.signal(s, old[s])
        if held is not None:
            held.extend(got)
        else:
            deliver(got)


def deliver(signals: list[int]) -> None:
    """Raise each of `signals` (held back by interrupts_deferred) once, in order."""
    for s in dict.fromkeys(signals):
        signal.raise_signal(s)


_HELD = threading.local()  # n: user handlers are held back by an mvc call this thread is in


def _own(handler) -> bool:
    """Whether `handler` interrupts as Ctrl-C does (Python's KeyboardInterrupt, the CLI's Terminated):
    mvc's code is written to be interrupted so; a program's own handler is not (see user_handlers_held)."""
    return handler is signal.default_int_handler or getattr(handler, "mvc_interrupts", False)


@contextlib.contextmanager
def user_handlers_held():
    """The program's own Python handlers of SIGINT, SIGTERM and SIGHUP (a training loop saving a
    checkpoint on SIGTERM, then ending) held back while an mvc call runs, then called: such a
    handler calling mvc inside the call found what the call holds taken by its own thread (a lock:
    a hang) or half done (a batch of objects it joined, deleted when the handler ended the
    process). Ctrl-C's KeyboardInterrupt and the CLI's handler stay: a long commit can still be
    interrupted. In the main thread only (the only one signals reach), once for nested calls."""
    if getattr(_HELD, "n", 0) or threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {s: h for s in (signal.SIGINT, signal.SIGTERM, *_HANGUP)
                if callable(h := signal.getsignal(s)) and not _own(h)}
    if not handlers:
        yield
        return
    got: list[int] = []
    _HELD.n = 1
    try:
        for s in handlers:
            signal.signal(s, lambda signum, frame: got.append(signum))
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        _HELD.n = 0
        deliver(got)


def holding_user_handlers(fn):
    """`fn` run inside user_handlers_held (the public methods of Repo)."""
    @functools.wraps(fn)
    def held(*args, **kwargs):
        with user_handlers_held():
            return fn(*args, **kwargs)
    return held


def hold_user_handlers_in(cls):
    """Class decorator: the public methods of `cls` (classmethods too) run inside
    user_handlers_held (Repo: what a program calls, each call whole before its handlers run)."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, classmethod):
            setattr(cls, name, classmethod(holding_user_handlers(value.__func__)))
        elif inspect.isfunction(value) and not inspect.isgeneratorfunction(value):
            setattr(cls, name, holding_user_handlers(value))
    return cls

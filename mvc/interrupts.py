"""Holding signals back: Ctrl-C, SIGTERM and SIGHUP while a step that must not stop half way runs
(interrupts_deferred), and a program's own handlers of a scheduler's stop and preemption notices
while any public mvc call runs (call_holding_user_handlers)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
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
    owned = [s for s in (signal.SIGINT, signal.SIGTERM, *_HANGUP) if signal.getsignal(s) is not None]
    got: list[int] = []  # (None above: installed outside Python)
    before: dict = {}

    def collect(signum, frame):
        got.append(signum)
    try:
        _swap_in(owned, collect, before)
        yield
    finally:  # (on every way out: a signal held back while the block failed is the caller's too)
        interrupted = _put_back(before, collect)
        if held is not None:
            held.extend(got)
            _raise(interrupted)
        else:
            _deliver_then(got, interrupted)


def _swap_in(signals, collect, before: dict) -> None:
    """Each of `signals` handled by `collect`, the one before kept in `before`; swapped with the
    signals blocked (a Ctrl-C half way through must not leave one replaced for good)."""
    with _signals_blocked():
        for s in signals:
            before[s] = signal.getsignal(s)
            signal.signal(s, collect)


def _put_back(before: dict, collect) -> BaseException | None:
    """The handlers of `before` back where `collect` still is (one installed meanwhile stays), with
    the signals blocked; done again until whole when a pending Ctrl-C's handler raised as the mask
    changed, which is returned, to be raised once what was held back is delivered."""
    interrupted = None
    while True:
        try:
            with _signals_blocked():
                for s, h in list(before.items()):
                    if signal.getsignal(s) is collect:
                        signal.signal(s, h)
                    del before[s]
            return interrupted
        except BaseException as e:  # noqa: BLE001 (returned, raised by the caller)
            interrupted = interrupted or e


def _raise(e: BaseException | None) -> None:
    if e is not None:
        raise e


def _deliver_then(got: list[int], interrupted: BaseException | None) -> None:
    try:
        deliver(got)
    finally:
        _raise(interrupted)


def deliver(signals: list[int]) -> None:
    """Raise each of `signals` (held back) once, in order; where a handler raises, the others are
    still raised, then the first exception (a preemption notice must not be lost behind a Ctrl-C)."""
    first = None
    for s in dict.fromkeys(signals):
        try:
            signal.raise_signal(s)
        except BaseException as e:  # noqa: BLE001 (raised again below, once the rest are delivered)
            first = first or e
    if first is not None:
        raise first


_HELD = threading.local()  # n: a program's handlers are held back by an mvc call this thread is in
# the signals whose program handlers are held: a scheduler's stop or preemption notice (SLURM's
# --signal=USR1@90, Lightning's requeue). Not SIGINT: Ctrl-C must stop a long call (asyncio's handler,
# a program's own, cancels at the first and raises at the second)
_HOLDABLE = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))


def _own(handler) -> bool:
    """Whether `handler` interrupts as Ctrl-C does (the CLI's Terminated): mvc's code is written to
    be interrupted so; a program's own handler is not (see call_holding_user_handlers)."""
    return handler is signal.default_int_handler or getattr(handler, "mvc_interrupts", False)


@contextlib.contextmanager
def _signals_blocked():
    """SIGINT and the held signals kept pending (not lost) while handlers are swapped, so that a
    Ctrl-C cannot stop the swap half way (a handler left replaced for good)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # (the mask as it is, changed in the try: a pending
    try:                                               # handler run as it changes may raise, mask set)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *_HANGUP, *_HOLDABLE})
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def call_holding_user_handlers(fn, *args, **kwargs):
    """fn(...) with the program's own Python handlers of SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 (a
    training loop saving a checkpoint on a preemption notice, then ending) held back, and called
    once it returns: such a handler calling mvc inside an mvc call found what the call holds taken
    by its own thread (a lock: a hang) or half done (a batch of objects it joined, deleted when the
    handler ended the process). Ctrl-C (SIGINT) is left alone, and so are the CLI's handlers. In
    the main thread only (the only one Python runs handlers in), once for nested calls; a handler
    installed during the call stays."""
    if getattr(_HELD, "n", 0) or threading.get_ident() != threading.main_thread().ident:
        return fn(*args, **kwargs)  # (a call inside one: repo.log reads each commit through read_commit)
    handlers = {s: h for s in _HOLDABLE if callable(h := signal.getsignal(s)) and not _own(h)}
    if not handlers:
        try:
            _HELD.n = 1  # (calls inside this one look no further)
            return fn(*args, **kwargs)
        finally:
            _HELD.n = 0
    global _HOLD
    got: list[int] = []
    before: dict = {}

    def collect(signum, frame):
        got.append(signum)
    try:
        _HELD.n = 1
        _HOLD = (before, collect)
        _swap_in(handlers, collect, before)
        return fn(*args, **kwargs)
    finally:
        interrupted = _put_back(before, collect)
        _HOLD, _HELD.n = None, 0
        _deliver_then(got, interrupted)


_HOLD: tuple | None = None  # (handlers before, mvc's collecting one) of the hold in force


def _after_fork_in_child() -> None:
    """A child forked inside a held call (a callback starting a worker) gets the program's handlers
    back at once: it may never return through the call (multiprocessing's child exits from its
    target), and nothing would deliver what the collecting handler takes (SIGTERM ignored)."""
    global _HOLD
    if _HOLD is not None:
        _put_back(*_HOLD)
    _HOLD, _HELD.n = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def holding_user_handlers(fn):
    """`fn` run by call_holding_user_handlers (the public methods of Repo, the remote calls)."""
    @functools.wraps(fn)
    def held(*args, **kwargs):
        return call_holding_user_handlers(fn, *args, **kwargs)
    return held


def hold_user_handlers_in(cls):
    """Class decorator: the public methods of `cls` (classmethods too) run by
    call_holding_user_handlers (Repo: what a program calls, each call whole before its handlers run)."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, classmethod):
            setattr(cls, name, classmethod(holding_user_handlers(value.__func__)))
        elif inspect.isfunction(value) and not inspect.isgeneratorfunction(value):
            setattr(cls, name, holding_user_handlers(value))
    return cls

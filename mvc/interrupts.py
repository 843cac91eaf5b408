"""Holding Ctrl-C, SIGTERM and SIGHUP back while a step that must not stop half way runs."""
from __future__ import annotations

import contextlib
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

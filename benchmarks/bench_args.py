"""Argument types the benchmark scripts share: a bad value is a usage error (exit 2), not a traceback."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def cases(text: str) -> list[tuple[int, int]]:
    """COUNTxNUMEL[,COUNTxNUMEL...] -> [(count, numel), ...]."""
    out = []
    for case in text.split(","):
        count, x, numel = case.strip().partition("x")
        if not x:
            raise argparse.ArgumentTypeError(f"{case!r} is not COUNTxNUMEL (e.g. 2000x16384)")
        out.append((positive_int(count), positive_int(numel)))
    return out

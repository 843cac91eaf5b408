"""CLI output: JSON documents on stdout, rich tables for people, errors and progress on stderr."""
from __future__ import annotations

import contextlib
import json
import os
import sys

import click

PROGRESS_MIN_BYTES = 32 * 1024 * 1024


def short(oid: str | None) -> str:
    return oid[:12] if oid else "-"


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))


def console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False,
                   soft_wrap=True)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@contextlib.contextmanager
def byte_progress(total: int, label: str):
    """Yields advance(nbytes); shows a rich bar with bytes/s on a TTY for large jobs only."""
    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)

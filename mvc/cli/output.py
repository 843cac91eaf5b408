"""CLI output: JSON documents on stdout, rich tables for people, errors and progress on stderr."""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import sys
import threading
import time

import click

from ..quoting import one_line, shown, shown_name  # noqa: F401  (the commands import them from here)
from ..transfer import Progress

PROGRESS_MIN_BYTES = 32 * 1024 * 1024  # a job this large shows its bar at once; a smaller one
PROGRESS_AFTER_S = 1.0                 # once it has run this long
PIPE_WIDTH = 10_000  # columns of a console that is not a terminal: piped output never cuts a name or id
ID_WIDTH = 12  # hex digits of an id in human output


# the --json option of every data command (DESIGN.md section 4)
json_opt = click.option("--json", "as_json", is_flag=True, help="Print one JSON document with full ids.")


def _message(ctx, param, values):
    """The paragraphs of -m given once or more, joined as git joins them. An empty one is a usage
    error where a message is required, as a missing -m is (exit 2); where the command has a
    default message (revert, paste) it means that default, as in the Python API."""
    text = "\n\n".join(values or ())
    if not text.strip():
        if param.required:
            raise click.BadParameter("the message is empty" + (" (only white space)" if text else ""))
        return None
    return text


def message_opt(required: bool = False):
    """-m/--message: repeatable, each one a paragraph (`-m subject -m body`)."""
    return click.option("-m", "--message", multiple=True, required=required, callback=_message,
                        help="Commit message (repeatable: each -m is a paragraph).")


def short(oid: str | None) -> str:
    return oid[:ID_WIDTH] if oid else "-"


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))


@contextlib.contextmanager
def json_when_ci_fails(as_json: bool):
    """With --json, a commit (or revert, paste) that mvc.toml's on-commit checks failed (exit 1) or
    could not run on (exit 3) still prints a document: the commit landed (with a certificate when
    the checks ran), and its branch may have been rolled back."""
    from ..errors import CheckFailed, OnCommitCi
    try:
        yield
    except OnCommitCi as e:
        if as_json:
            emit_json({"commit": e.commit, "certificate": e.certificate, "ci_passed": False,
                       "ci_ran": isinstance(e, CheckFailed), "error": e.message, "rolled_back": e.rolled_back,
                       **({"branch_head": e.branch_head} if e.rolled_back else {})})
        raise


def console(stderr: bool = False, markup: bool = False):
    """A rich console; text is printed as given (no markup) unless a renderer asks for markup.

    On a terminal rich fits tables to its width; piped or redirected output (`mvc diff | grep`)
    gets a console so wide that no table cell is cut or wrapped."""
    con = _console_class()(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False,
                  soft_wrap=True, markup=markup, emoji=False)
    if not con.is_terminal:
        con.width = PIPE_WIDTH
    return con


def silence_stdout() -> None:
    """Send what is still to be written to stdout to /dev/null: its reader closed the pipe, and
    nothing more (buffered text at exit included) should raise there."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def write_stdout(data) -> None:
    """Bytes to standard output, flushed (cat-object, export -o -). A failure to write (`>
    /dev/full`, a closed stdout) is raised from here, where the CLI's error boundary knows it for
    output (as it knows click.echo and rich), not for the repository's disk."""
    out = sys.stdout.buffer
    with memoryview(data) as mv, mv.cast("B") as left:
        while left:  # a large write may be cut short (a pipe whose reader left, a signal): the
            left = left[out.write(left):]  # rest goes again, and a closed pipe raises then
    out.flush()


def stream_stdout(chunks, what: str) -> None:
    """Write a data stream (`what`: a file's or an object's bytes) to standard output. A reader that
    closes the pipe before its end (an ssh session that dropped, `| head -c`) is an error (exit 3),
    not exit 0 as for a listing whose reader has all it wanted."""
    try:
        for chunk in chunks:
            write_stdout(chunk)
            del chunk  # before the next blob is decoded (see components.file_chunks)
    except BrokenPipeError:
        silence_stdout()
        from ..errors import MvcError
        raise MvcError(f"cannot write to standard output: its reader closed it before the end of {what}",
                       "what it received is incomplete") from None


class _ClosedStdout(io.RawIOBase):
    """What a write to the standard output of a process started without one (`mvc log >&-`) meets."""

    def writable(self) -> bool:
        return True

    def write(self, b):
        raise OSError(errno.EBADF, "it is closed")


def stand_in_for_closed_stdout() -> None:
    """Python sets sys.stdout to None when file descriptor 1 is closed, and click.echo then prints
    nothing: a command would exit 0 with its output lost. A stream whose writes fail takes its
    place, so that every printer fails as on `> /dev/full` ("cannot write to standard output")."""
    if sys.stdout is None:
        sys.stdout = io.TextIOWrapper(_ClosedStdout(), encoding="utf-8", write_through=True)


@functools.lru_cache(maxsize=None)
def _console_class():
    """rich's Console, except that a closed pipe (`mvc diff | head -1`) raises BrokenPipeError,
    which the CLI maps to exit 0 like any other closed pipe (rich exits 1 itself, and 1 means
    "differs" or "failed" in mvc)."""
    from rich.console import Console

    class MvcConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            silence_stdout()
            raise BrokenPipeError(errno.EPIPE, "broken pipe")

    return MvcConsole


NAME_MIN_WIDTH = 8  # a name column folds a long name, never below this many columns
PLAIN_TABLE_ROWS = 500  # rich draws ~0.5 ms a row (20k rows: 10 s): longer tables print as plain lines


def table(*columns: str, names=(), ids=(), title: str | None = None):
    """A rich Table of text cells: columns in `names` fold a long name on a narrow terminal, the
    others keep their width (`ids` the 12 hex digits of `short`). A terminal too narrow for that
    gets the table at its natural width (the terminal wraps its lines), never one with a name
    left out or an id cut."""
    t = _table_class()(title=title)
    for col in columns:
        if col in names:
            t.add_column(col, overflow="fold", min_width=NAME_MIN_WIDTH)
        else:
            t.add_column(col, width=ID_WIDTH if col in ids else None, no_wrap=True)
    return t


def print_table(con, t) -> None:
    """Print a table made by `table()`: drawn by rich, or past PLAIN_TABLE_ROWS rows as aligned
    plain lines (a header, then a line a row; names never cut), which take milliseconds."""
    if t.row_count <= PLAIN_TABLE_ROWS:
        con.print(t)
        return
    from rich.cells import cell_len
    cols = [[str(c.header), *map(str, c.cells)] for c in t.columns]
    widths = [max(map(cell_len, col)) for col in cols]
    lines = ("  ".join(cell + " " * (w - cell_len(cell)) for cell, w in zip(row, widths)).rstrip()
             for row in zip(*cols))
    con.file.flush()
    click.echo("\n".join(lines))


@functools.lru_cache(maxsize=None)
def _table_class():
    from rich.cells import cell_len
    from rich.measure import Measurement
    from rich.table import Table

    class WholeTable(Table):
        def __rich_console__(self, console, options):
            natural = Measurement.get(console, options.update_width(PIPE_WIDTH), self).maximum
            foldable = sum(max(0, max(map(cell_len, [str(col.header), *map(str, col.cells)])) - NAME_MIN_WIDTH)
                           for col in self.columns if col.overflow == "fold")
            if options.max_width < natural - foldable:
                options = options.update_width(natural)
            return super().__rich_console__(console, options)

    return WholeTable


def change(a, b) -> str:
    """`a` when both sides are equal, else `a -> b` (dtypes, shapes, sizes of a diff)."""
    return str(a) if a == b else f"{a} -> {b}"


def negative_result() -> None:
    """Record that the command's exit status is 1 (differs, failed, damaged) before its output is
    printed: a reader that closes the pipe early (`| head -1`) must not turn it into 0."""
    click.get_current_context().meta["mvc.exit_status"] = 1


def error(what: str, hint: str | None = None) -> None:
    """The one-line error of DESIGN.md section 4: `error: <what> (<hint>)` on stderr."""
    click.echo(one_line(f"error: {what}" + (f" ({hint})" if hint else "")), err=True)


def warn(message) -> None:
    click.echo(one_line(f"warning: {message}"), err=True)


def human_bytes(n: float | None) -> str:
    """Decimal units (1 MB = 10**6 bytes), as the progress bars (rich) show them."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(round(n, 0 if unit == "B" else 1)) < 1000 or unit == "TB":  # 999,992 B: 1.0 MB, not 1000.0 kB
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def rate(nbytes: float, seconds: float) -> str:
    """Bytes per second, human-sized ("-" when no time was measured)."""
    return f"{human_bytes(nbytes / seconds)}/s" if seconds > 0 else "-"


def size_change(before: int, after: int) -> str:
    """How packing changed a size, said the right way round: tiny repositories can grow."""
    if not after or not before:
        return "-"
    if after < before:
        return f"{before / after:.2f}x smaller"
    if after == before:
        return "same size"
    return f"{after / before:.2f}x larger: pack headers and index outweigh compression on so little data"


@contextlib.contextmanager
def byte_progress(total: int, label: str):
    """Yields advance(nbytes); on a TTY, a rich bar with bytes/s: from the start for a job of
    PROGRESS_MIN_BYTES or more, and for a smaller one (many small tensors) once it has run for
    PROGRESS_AFTER_S (DESIGN.md section 4: progress on anything that may take over a second)."""
    if total <= 0 or not sys.stderr.isatty():
        yield lambda n: None
        return
    shown_at = time.monotonic() + (0.0 if total >= PROGRESS_MIN_BYTES else PROGRESS_AFTER_S)
    state = {"bar": None, "task": None, "done": 0}
    lock = threading.Lock()  # (commits advance from worker threads)

    def show():
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), console=console(stderr=True), transient=True)
        bar.start()
        state["task"] = bar.add_task(label, total=total, completed=state["done"])
        state["bar"] = bar

    def advance(n: int) -> None:
        bar = state["bar"]
        if bar is not None:
            bar.advance(state["task"], n)
            return
        with lock:
            if state["bar"] is not None:
                state["bar"].advance(state["task"], n)
                return
            state["done"] += n
            if time.monotonic() >= shown_at:
                show()

    try:
        yield advance
    finally:
        if state["bar"] is not None:
            with contextlib.suppress(OSError):  # (a closed terminal: the hangup that ends the command)
                state["bar"].stop()


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 file`, `2 files` (`many` for irregular plurals, e.g. entry/entries)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


class BarProgress(Progress):
    """A rich bar on stderr (objects, bytes, bytes/s), drawn only on a TTY."""

    def __init__(self):
        self.enabled = sys.stderr.isatty()
        self.bar = None

    def begin(self, label, objects, nbytes=None):
        if not self.enabled or not objects:
            return
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.fields[done]}/{task.fields[objects]} objects"), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=console(stderr=True),
                            transient=True)
        self.bar.start()
        self.task = self.bar.add_task(label, total=nbytes or None, done=0, objects=objects)
        self.done = 0

    def advance(self, nbytes):
        if self.bar is not None:
            self.done += 1  # called from worker threads; rich's Progress is thread-safe
            self.bar.update(self.task, advance=nbytes, done=self.done)

    def advance_bytes(self, nbytes):
        if self.bar is not None:
            self.bar.update(self.task, advance=nbytes)

    def end(self):
        if self.bar is not None:
            with contextlib.suppress(OSError):  # (a closed terminal: the hangup that ends the command)
                self.bar.stop()
            self.bar = None

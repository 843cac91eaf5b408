"""What remote transfers and the commands that start them share, kept light so the CLI can import
it at start-up: the default parallelism, how received objects are batched for durability, and the
progress-callback interface."""
from __future__ import annotations

DEFAULT_JOBS = 8
BATCHED_BELOW = 1 << 20  # objects smaller than this are made durable a batch at a time, larger ones one by one
BATCH_BYTES = 64 << 20  # at most this much of a transfer is lost (left in temp files) when it is killed -9
BATCH_OBJECTS = 4096


def batches(ids: list[str], sizes: dict[str, int]):
    """`ids` in consecutive runs of at most BATCH_BYTES (by `sizes`) and BATCH_OBJECTS objects: what
    one batch makes durable at once."""
    run, total = [], 0
    for oid in ids:
        if run and (total + sizes[oid] > BATCH_BYTES or len(run) >= BATCH_OBJECTS):
            yield run
            run, total = [], 0
        run.append(oid)
        total += sizes[oid]
    if run:
        yield run


class Progress:
    """Transfer progress callbacks (the CLI draws a bar; the default draws nothing)."""

    def begin(self, label: str, objects: int, nbytes: int | None = None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        """One object of `nbytes` moved (less what `advance_bytes` told of it already)."""

    def advance_bytes(self, nbytes: int) -> None:
        """`nbytes` of a large object moved, before its `advance` (a pack's encode of a big tensor)."""

    def end(self) -> None:
        pass

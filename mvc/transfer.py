"""What remote transfers and the commands that start them share, kept light so the CLI can import
it at start-up: the default parallelism and the progress-callback interface."""
from __future__ import annotations

DEFAULT_JOBS = 8


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

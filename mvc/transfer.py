"""What remote transfers and the commands that start them share, kept light so the CLI can import
it at start-up: the default parallelism and the progress-callback interface."""
from __future__ import annotations

DEFAULT_JOBS = 8


class Progress:
    """Transfer progress callbacks (the CLI draws a bar; the default draws nothing)."""

    def begin(self, label: str, objects: int, nbytes: int | None = None) -> None:
        pass

    def advance(self, nbytes: int, objects: int = 1) -> None:
        """`nbytes` moved, completing `objects` objects (0: a part of a large one)."""

    def end(self) -> None:
        pass

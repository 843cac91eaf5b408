"""The folders a checkout or export writes into, opened from its output directory one name at a
time without following links (O_NOFOLLOW) and held open while it writes: every file is then
created, linked and renamed relative to a folder's descriptor (the *at system calls), so a folder
replaced by a symbolic link after the link checks (another program racing the checkout) is refused,
never written through. The output directory itself may be a link (the user named it); what is
below it may not."""
from __future__ import annotations

import errno
import os

from .errors import BadInput

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class OutputFolders:
    """Descriptors of open folders by absolute path; `created` lists, in order, the folders this
    made (for a failed checkout to remove again). Use as a context manager: closes them all."""

    def __init__(self):
        self._fds: dict[str, int] = {}
        self.created: list[str] = []

    def __enter__(self) -> "OutputFolders":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def open(self, folder: str, root: str) -> int:
        """A descriptor of `folder`, made if missing; the folders from `root` (the output
        directory, followed and made as a path) down to it are opened without following links."""
        folder, root = os.path.abspath(folder), os.path.abspath(root)
        fd = self._fds.get(folder)
        if fd is not None:
            return fd
        if folder == root or not folder.startswith(root.rstrip(os.sep) + os.sep):
            fd = self._open_root(folder)
        else:
            fd = self._open_below(self.open(os.path.dirname(folder), root), folder)
        self._fds[folder] = fd
        return fd

    def _open_root(self, folder: str) -> int:
        missing, d = [], folder
        while d and not os.path.lexists(d):
            missing.append(d)
            d = os.path.dirname(d)
        os.makedirs(folder, exist_ok=True)
        self.created += reversed(missing)
        return os.open(folder, _DIR_FLAGS)

    def _open_below(self, parent: int, folder: str) -> int:
        name = os.path.basename(folder)
        for _attempt in range(3):
            try:
                return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
            except FileNotFoundError:
                try:
                    os.mkdir(name, dir_fd=parent)
                except FileExistsError:
                    continue  # (made meanwhile by another program: opened as it is)
                self.created.append(folder)
            except OSError as e:
                if e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and os.path.islink(folder)):
                    raise BadInput(f"{folder} is a symbolic link; mvc does not write through or replace links",
                                   "remove the link, or write into another place") from None
                e.filename = folder  # (a file where a folder goes: named by the caller's error)
                raise
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)

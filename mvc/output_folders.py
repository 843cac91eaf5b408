"""The folders a checkout or export writes into, opened from its output directory one name at a
time without following links (O_NOFOLLOW): every file is created, linked and renamed relative to
a folder's descriptor (the *at system calls), so a folder replaced by a symbolic link after the
link checks (another program racing the checkout) is refused, never written through. The output
directory itself may be a link (the user named it); what is below it may not. A few descriptors
are kept open (a model may have thousands of folders, more than the open-file limit); a folder
opened again must be the one opened first (device and inode), or the checkout stops."""
from __future__ import annotations

import errno
import os
from collections import OrderedDict

from .errors import BadInput

# O_PATH (Linux) opens a folder that may be written but not listed (a drop box, mode 0333), as
# creating a file by name needs; elsewhere a folder is opened for reading
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
OPEN_MAX = 8  # descriptors kept open at once (files go in path order: one folder after the other)


class OutputFolders:
    """Descriptors of folders by absolute path, `OPEN_MAX` at most (the least recently used is
    closed); `created` lists, in order, the folders this made (for a failed checkout to remove
    again). Use as a context manager: closes what is open. A descriptor is good until the next
    call of `open`."""

    def __init__(self):
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._ids: dict[str, tuple[int, int]] = {}  # (device, inode) of each folder when first opened
        self.created: list[str] = []

    def __enter__(self) -> "OutputFolders":
        return self

    def __exit__(self, *exc) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def open(self, folder: str, root: str) -> int:
        """A descriptor of `folder`, made if missing; the folders from `root` (the output
        directory, followed and made as a path) down to it are opened without following links.
        At the open-file limit the folders held open are closed and it is tried once more."""
        try:
            return self._open(folder, root)
        except OSError as e:
            if e.errno != errno.EMFILE or not self._fds:
                raise
            self.__exit__()
            return self._open(folder, root)

    def _open(self, folder: str, root: str) -> int:
        folder, root = os.path.abspath(folder), os.path.abspath(root)
        fd = self._fds.get(folder)
        if fd is not None:
            self._fds.move_to_end(folder)
            return fd
        if folder == root or not folder.startswith(root.rstrip(os.sep) + os.sep):
            fd = self._open_root(folder)
        else:
            parent = self._open(os.path.dirname(folder), root)
            fd = self._open_below(parent, folder)
        try:
            st = os.fstat(fd)
            if self._ids.setdefault(folder, (st.st_dev, st.st_ino)) != (st.st_dev, st.st_ino):
                raise BadInput(f"{folder} was replaced by another folder while the checkout wrote into it",
                               "nothing more was written; run it again once nothing else writes there")
        except BaseException:
            os.close(fd)
            raise
        self._fds[folder] = fd
        if len(self._fds) > OPEN_MAX:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _open_root(self, folder: str) -> int:
        missing, d = [], folder
        while d and not os.path.lexists(d):
            missing.append(d)
            d = os.path.dirname(d)
        self.created += reversed(missing)  # (before they are made: an interrupt may come in between)
        os.makedirs(folder, exist_ok=True)
        return os.open(folder, _DIR_FLAGS)

    def _open_below(self, parent: int, folder: str) -> int:
        name = os.path.basename(folder)
        for _attempt in range(3):
            try:
                return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
            except FileNotFoundError:
                if folder not in self.created:
                    self.created.append(folder)
                try:
                    os.mkdir(name, dir_fd=parent)
                except FileExistsError:
                    self.created.remove(folder)
                    continue  # (made meanwhile by another program: opened as it is)
            except OSError as e:
                if e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and os.path.islink(folder)):
                    raise BadInput(f"{folder} is a symbolic link; mvc does not write through or replace links",
                                   "remove the link, or write into another place") from None
                e.filename = folder  # (a file where a folder goes: named by the caller's error)
                raise
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)

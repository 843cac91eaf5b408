"""The repository: commits, revisions, branches, tags, loading, diff, rollback (gc, fsck and du
are mixed in from maintenance).

`Repo` is the Python API the CLI wraps. It imports torch only inside the operations that compute
on tensors (committing in-memory tensors, load, diff).
"""
from __future__ import annotations

import configparser
import contextvars
import functools
import heapq
import json
import numbers
import os
import random
import re
import threading
import time
import warnings
from collections import OrderedDict
from typing import Callable, Iterable

from . import components as comp
from . import config as cfg
from . import forks
from .errors import (AmbiguousRevision, BadInput, BadName, ConfigError, CorruptObject, FormatTooNew,
                     InterruptedAfterLanding, MvcError, NotARepository, ObjectMissing, RefConflict,
                     UnknownRevision, WrongObjectType, os_error_text)
from .diffs import diff_trees
from .files import atomic_write, physical_path, shared_or_exclusive
from .interrupts import hold_user_handlers_in
from .maintenance import WRITERS_LOCK, Maintenance, keep_reserve
from .objects import (MAX_JSON_DEPTH, SMALL_OBJECT, canonical_json, check_component_name, check_metric,
                      check_new_component_name, check_new_ref_name, check_no_nesting,
                      check_ref_name, commit_object, decode, encode, is_oid, json_copy, nests_deeper,
                      tree_blob_ids)
from .provenance import check_author, default_author, git_current_branch, git_provenance
from .quoting import short_repr
from .refs import RefStore, note_moved, utc_now
from .store import FOUND_FRESHEN_S, ChainStore, LooseStore
from .tensors import arch_builder, recorded_builder

MVC_DIR = ".mvc"
REPO_FORMAT = 1
DEFAULT_BRANCH = "main"
COMMIT_RETRIES = 20
TORCH_FILE_SUFFIXES = comp.PICKLE_SUFFIXES + (".ckpt",)  # names torch.load files go by (.ckpt: Lightning)


def find_root(start: str | os.PathLike | None = None) -> str:
    """The directory holding .mvc at or above `start`: above it as written, else above where its
    symbolic links lead (as the working directory is always seen)."""
    given = os.fsdecode(start or os.getcwd())  # (a bytes path too)
    for path in dict.fromkeys((os.path.abspath(given), os.path.realpath(given))):
        while True:
            if os.path.isdir(os.path.join(path, MVC_DIR)):
                return path
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    main = _main_work_tree_repository(given)
    raise NotARepository(f"not an mvc repository (or any parent): {given}",
                         f"this is a linked git work tree (git worktree add) of the one holding the mvc repository "
                         f"{main}: run mvc there (mvc init here would make a second, separate one)" if main
                         else "run mvc init")


def _main_work_tree_repository(path: str) -> str | None:
    """For a path in a linked git work tree, the mvc repository (the folder holding .mvc) of its
    main work tree at or above the same place, if there is one."""
    from .provenance import git_common_dir, git_work_tree
    found = git_work_tree(path)
    if not found:
        return None
    top, git_dir = found
    common = os.path.realpath(git_common_dir(git_dir))
    if common == os.path.realpath(git_dir) or os.path.basename(common) != ".git":
        return None  # (not a linked work tree; or a bare repository's, which has no main work tree)
    main_top = os.path.dirname(common)
    here = os.path.join(main_top, os.path.relpath(os.path.realpath(path), os.path.realpath(top)))
    while True:
        if os.path.isdir(os.path.join(here, MVC_DIR)):
            return here
        if os.path.realpath(here) == main_top or os.path.dirname(here) == here:
            return None
        here = os.path.dirname(here)


def _opens(path: str) -> bool:
    """Whether the file at `path` opens; PermissionError (naming it) when this user may not read
    it: another user's repository is no reason to ask whether it is one."""
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        raise
    except OSError:
        return False


class _Newest:
    """A commit of log's frontier: the heap gives the newest first, then the first one found."""
    __slots__ = ("time", "seq", "cid")

    def __init__(self, time: str, seq: int, cid: str):
        self.time, self.seq, self.cid = time, seq, cid

    def __lt__(self, other: "_Newest") -> bool:
        return self.time > other.time or (self.time == other.time and self.seq < other.seq)


def _check_expected_head(ref: str, head: str | None, expect_head: str | None) -> None:
    """RefConflict when commit's `expect_head` is given and the branch is not there."""
    if expect_head is not None and head != (expect_head or None):
        name = ref.removeprefix("refs/heads/")
        raise RefConflict(f"branch {name} is at {head[:12] if head else 'nothing (it does not exist)'}, not at "
                          f"{expect_head[:12] if expect_head else 'nothing'} as expected: another process "
                          "committed to it or moved it", f"mvc reflog {name} shows its moves")


@hold_user_handlers_in
class Repo(Maintenance):
    """An mvc repository. `Repo(path)` finds .mvc at or above `path`; `Repo.init(path)` creates one."""

    def __reduce__(self):
        """Pickled as its root: the copy (a DataLoader worker started by spawn, a Pool task) opens
        the repository again, with its own locks, caches and open files."""
        return (type(self), (self.root,))

    def __init__(self, path: str | os.PathLike | None = None):
        self.root = find_root(path)
        self.dir = os.path.join(self.root, MVC_DIR)
        self.config = cfg.new_parser()
        try:
            self.config.read(os.path.join(self.dir, "config"))
            fmt = self.config.getint("core", "format", fallback=None)
        except (configparser.Error, ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.dir}/config is unreadable: {str(e).splitlines()[0]}",
                              "fix the file by hand; core.format = 1 is required") from None
        if fmt is None:
            if _opens(os.path.join(self.dir, "config")):  # (configparser skips a file it cannot open)
                raise ConfigError(f"{self.dir}/config sets no core.format",
                                  "fix the file by hand: its [core] section needs format = 1")
            raise NotARepository(f"{self.dir} has no readable config", "is it an mvc repository?")
        if fmt < 1:
            raise ConfigError(f"{self.dir}/config sets core.format = {fmt}, a format no mvc writes",
                              "fix the file by hand: its [core] section needs format = 1")
        if fmt > REPO_FORMAT:
            raise FormatTooNew(f"repository format {fmt} is newer than format {REPO_FORMAT}, the newest this mvc reads",
                               "upgrade mvc")
        cfg.check_extensions(self.config, f"the repository {self.root}")
        cfg.warn_miscased_sections(self.config, f"{self.dir}/config")
        fsync = self._fsync_setting()
        objects = os.path.join(self.dir, "objects")
        if not os.path.isdir(objects):  # (mvc never removes it: every object would be gone)
            raise CorruptObject(f"this repository is damaged: {objects} is "
                                f"{'not a directory' if os.path.lexists(objects) else 'missing'}",
                                "restore it from a backup, or clone the repository again from a remote")
        self.loose = LooseStore(objects, fsync=fsync, stamps=os.path.join(self.dir, "verified"))
        self.store = ChainStore(self.loose, *self._read_stores())
        self.refs = RefStore(self.dir, fsync=fsync)
        self._cache = _ObjectCache()

    def _fsync_setting(self) -> bool:
        """core.fsync as the config read says."""
        try:
            return cfg.parse("core.fsync", self.config.get("core", "fsync", fallback="true"))
        except ConfigError as e:  # durable by default: a bad value must not stop `mvc config` fixing it
            warnings.warn(f"{e.message}; writing durably (fsync) meanwhile")
            return True

    def _read_stores(self) -> list:
        """Stores read after the loose objects: pack files, then a lazy clone's remote."""
        from .pack import PackStore  # read-only; `mvc pack` and gc write packs (pack_write.py)
        stores = [PackStore.for_repo(self)]
        if any(s.startswith('remote "') for s in self.config.sections()):
            from .transport import promisor_store  # a lazy clone fetches missing blobs on first use
            lazy = promisor_store(self)
            if lazy is not None:
                stores.append(lazy)
        return stores

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike = ".", default_branch: str | None = None) -> "Repo":
        root = os.path.abspath(os.fsdecode(path))
        d = os.path.join(root, MVC_DIR)
        if os.path.isdir(d):  # re-initialising adds what the first init could not (git's exclude)
            repo = cls(root)
            repo._exclude_from_git()
            if default_branch is not None and repo.head_branch != default_branch:
                warnings.warn(f"{root} is a repository already: default_branch={default_branch!r} ignored "
                              "(mvc branch and mvc switch make and change branches)", stacklevel=2)
            return repo
        for p, what in ((root, "the path"), (d, MVC_DIR)):
            if os.path.lexists(p) and not os.path.isdir(p):
                _refuse_init_at(root, p, what)
        if comp.inside_repository_dir(root):  # its refs/ would hold a folder that no ref name fits
            raise BadInput(f"cannot create a repository at {root}: it is inside the .mvc folder of another",
                           "choose a folder outside it")
        parent = os.path.dirname(root)
        while not os.path.lexists(parent):  # (a symbolic link to nothing is there, and no folder)
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            _refuse_init_at(root, parent, parent)
        default_branch = DEFAULT_BRANCH if default_branch is None else default_branch
        check_new_ref_name(default_branch)
        try:
            os.makedirs(root, exist_ok=True)
        except (FileNotFoundError, NotADirectoryError) as e:  # a folder that cannot hold folders (/proc/...)
            raise BadInput(f"cannot create a repository at {root}: the folder {e.filename or root} cannot be made: "
                           f"{e.strerror}", "choose a folder on an ordinary file system") from None
        tmp = os.path.join(root, f".mvc-init-{os.getpid()}")
        try:  # built aside and renamed into place: a failure (a full disk) leaves neither .mvc nor it
            for sub in ("objects", "refs/heads", "refs/tags", "refs/remotes", "logs"):
                os.makedirs(os.path.join(tmp, sub), exist_ok=True)
            initial = cfg.new_parser()
            initial["core"] = {"format": str(REPO_FORMAT)}
            with open(os.path.join(tmp, "config"), "w") as f:
                initial.write(f)
            with open(os.path.join(tmp, "HEAD"), "w") as f:
                f.write(f"ref: refs/heads/{default_branch}\n")
            keep_reserve(tmp)
            os.rename(tmp, d)
        except BaseException as e:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and (e.filename is None or str(e.filename).startswith(tmp)):
                e.filename, e.filename2 = (root if e.filename == tmp else d), None  # (the temp folder is gone:
                # the folder that refused it, or the repository being made)
            if not isinstance(e, Exception) or not os.path.isdir(d):  # (another init won the race: use its
                raise                                                  # repository, unless interrupted)
        repo = cls(root)
        repo._exclude_from_git()
        return repo

    def _exclude_from_git(self) -> None:
        """Inside a git work tree, make git ignore .mvc/: one anchored, gitignore-escaped line in
        the exclude file git reads ($GIT_COMMON_DIR/info/exclude: a worktree's too), added once.
        The file is handled as bytes (any encoding, any folder name); what stops the update is a
        warning, never a failed init: the repository stands."""
        from .provenance import git_common_dir, git_work_tree
        found = git_work_tree(self.root)
        if not found:
            return
        top, git_dir = found
        rel = os.path.relpath(os.path.join(os.path.realpath(self.root), MVC_DIR), top)  # (git's view)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return
        exclude = os.path.join(git_common_dir(git_dir), "info", "exclude")
        shown_path = os.fsencode(exclude).decode("utf-8", "backslashreplace")
        name = os.fsencode(rel.replace(os.sep, "/"))
        if b"\n" in name or b"\r" in name:
            warnings.warn(f"git will list .mvc/ as untracked: its path holds a line break, which "
                          f"{shown_path} cannot express; move the repository or ignore it another way")
            return
        entry = b"/" + re.sub(rb"([\\\[\]*?!#])", rb"\\\1", name) + b"/"
        try:
            try:
                with open(exclude, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = b""
            lines = [line.rstrip(b"\r") for line in data.splitlines()]
            if entry in lines or {b".mvc", b".mvc/"} & set(lines):  # (unanchored: .mvc at any depth)
                return
            os.makedirs(os.path.dirname(exclude), exist_ok=True)  # (inside the existing git dir)
            with open(exclude, "ab") as f:
                f.write((b"\n" if data and not data.endswith(b"\n") else b"") + entry + b"\n")
        except OSError as e:
            warnings.warn(f"could not add {entry.decode('utf-8', 'backslashreplace')} to {shown_path} "
                          f"({os_error_text(e)}): git will list .mvc/ as untracked; add that line yourself")

    # -- config ------------------------------------------------------------------------------
    def get_config(self, key: str, default=None):
        """The raw text of `key` (or `default`); see config_value for a checked, typed value."""
        section, name = cfg.split_key(key)
        if not self.config.has_option(section, name):
            cfg.check_key(key)  # a typo is an error, not an unset key
        return self.config.get(section, name, fallback=default)

    def config_value(self, key: str, default):
        """The parsed value of a known key (mvc.config.KNOWN), `default` when unset."""
        raw = self.get_config(key)
        return default if raw is None else cfg.parse(key, raw)

    def checked_remote_url(self, url: str) -> str:
        """A remote's url as the config stores it: an absolute path or s3://bucket/prefix, never
        credentials (BadInput), and never this repository itself (pushing to it would move the very
        branches it reads from)."""
        from .transport import normalize_url
        url = normalize_url(url)
        if "://" not in url and os.path.realpath(url) in (os.path.realpath(self.root), os.path.realpath(self.dir)):
            raise BadInput(f"{url} is this repository itself", "a remote is another repository or location")
        return url

    def set_config(self, key: str, value: str | None) -> None:
        """Set `key` to `value` (None: unset it) in .mvc/config. The file is edited in place, as it
        is now (a hand edit made since this Repo read it stays, and so do comments and layout)."""
        section, name = cfg.split_key(key)
        value = None if value is None else str(value)
        if value is not None and cfg.is_remote_url(key):
            value = self.checked_remote_url(value)
            endpoint = self.config.get(section, "endpoint", fallback=None)
            if endpoint and not value.startswith("s3://"):  # (kept, and ignored, beside a directory)
                remote = section[len('remote "'):-1]
                raise BadInput(f"remote {remote} has an endpoint ({endpoint}), which is for S3 remotes; "
                               f"{value} is a directory", f"mvc config --unset remote.{remote}.endpoint first")
        elif value is not None and section.startswith('remote "') and name.lower() == "endpoint":
            from .transport import check_endpoint  # never credentials, and S3's only, as mvc remote add --endpoint
            url = self.config.get(section, "url", fallback=None)
            value = check_endpoint(value, url if url is not None and not url.startswith("s3://") else None) or value
        path = os.path.join(self.dir, "config")
        config, text = self.config, None
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            config = cfg.new_parser()
            config.read_string(text)
        except OSError:  # cannot be read now: written whole from what was read
            config, text = self.config, None
        except (UnicodeDecodeError, configparser.Error) as e:  # a hand edit broke it: it is not overwritten
            raise ConfigError(f"{path} is unreadable: {str(e).splitlines()[0]}",
                              "fix the file by hand; nothing was changed") from None
        if value is not None:
            cfg.check_setting(key, value)
        elif cfg.canonical(key) in cfg.READ_ONLY:
            raise ConfigError(f"config {cfg.canonical(key)} cannot be unset", cfg.READ_ONLY[cfg.canonical(key)])
        elif not config.has_option(section, name):
            cfg.check_key(key)  # a typo is an error, not a key already unset
        if value is None:
            if config.has_option(section, name):
                config.remove_option(section, name)
                if not config.options(section):
                    config.remove_section(section)
        else:
            if not config.has_section(section):
                config.add_section(section)
            config.set(section, name, value)
        if text is not None:
            text = cfg.edited_text(text, section, name, value)
            check = cfg.new_parser()
            try:
                check.read_string(text)
            except configparser.Error:
                text = None
            if text is not None and cfg.state(check) != cfg.state(config):  # a layout the editor misread
                text = None
        if text is None:  # the whole file, from what was read (comments are lost)
            import io
            buf = io.StringIO()
            config.write(buf)
            text = buf.getvalue()
        atomic_write(path, text.encode(), placed=lambda: note_moved(f"set {key} in .mvc/config" if value is not None
                                                                   else f"unset {key} in .mvc/config", logged=False))
        self.config = config
        if cfg.canonical(key) == "core.fsync":  # (this Repo's writes too: a run's last checkpoint made durable)
            self.loose.fsync = self.refs.fsync = self._fsync_setting()

    # -- objects -----------------------------------------------------------------------------
    def _read_obj(self, oid: str, kind: str) -> dict:
        obj = self._cache.get(oid)
        if obj is None:
            data = self.store.get(oid)
            obj = decode(data, kind, oid)
            self._cache.put(oid, obj, len(data))
        elif obj["type"] != kind:
            raise WrongObjectType(f"object {oid[:12]} is a {obj['type']}, not a {kind}", obj["type"])
        return obj

    def read_commit(self, oid: str, shared: bool = False) -> dict:
        """The commit object `oid`: a copy of the cached one (changing it changes nothing), or
        with `shared` the cached object itself, for callers that only read it (see read_tree)."""
        obj = self._read_obj(oid, "commit")
        return obj if shared else json_copy(obj)

    def read_tree(self, oid: str, shared: bool = False) -> dict:
        """The tree object `oid`: a copy of the cached one (changing it changes nothing), or with
        `shared` the cached object itself, for callers that only read it (mvc's walks over every
        tree of a history: gc, pack, push, where copying 20,000-tensor trees would double the work)."""
        obj = self._read_obj(oid, "tree")
        return obj if shared else json_copy(obj)

    def write_object(self, obj: dict) -> str:
        oid, data = encode(obj)
        self.store.put(data, oid=oid)
        return oid

    def tree(self, rev: str | None, component: str, shared: bool = False) -> dict:
        """The tree of `component` in `rev` (a copy, or the cached object with `shared`: see read_tree)."""
        cid = self.resolve(rev)  # (None: HEAD)
        comps = self.read_commit(cid, shared=True)["components"]
        if not isinstance(component, str):
            raise BadInput(f"component must be a name (str), not a {type(component).__name__}",
                           'e.g. repo.load("HEAD", "model")')
        if component not in comps:
            raise BadName(f"commit {cid[:12]} has no component {component!r}",
                          f"it has: {', '.join(sorted(comps)) or 'none'}")
        return self.read_tree(comps[component], shared=shared)

    # -- revisions ---------------------------------------------------------------------------
    @property
    def head_branch(self) -> str | None:
        target = self.refs.head_target()
        return target[len("refs/heads/"):] if target else None

    def head(self) -> str | None:
        return self.refs.read("HEAD")

    def branches(self) -> dict[str, str]:
        return {k[len("refs/heads/"):]: v for k, v in self.refs.list("refs/heads/").items()}

    def tags(self) -> dict[str, str]:
        return {k[len("refs/tags/"):]: v for k, v in self.refs.list("refs/tags/").items()}

    def resolve(self, rev: str | None = None) -> str:
        """A full commit id for branch, tag, id or prefix, HEAD, REV~N, REV^ or REV@{N}."""
        rev = "HEAD" if rev is None else str(rev).strip()
        if not rev:
            raise UnknownRevision("empty revision")
        base, walk = split_walk(rev)
        if walk:
            oid = self.resolve(base)
            for op, num in re.findall(r"([~^])([0-9]*)", walk):
                n = _rev_count(num, rev) if num else 1
                if op == "~":
                    for _ in range(n):
                        oid = self._parent(oid, rev, 1)
                else:
                    oid = self._parent(oid, rev, n) if n else oid
            return oid
        m = re.fullmatch(r"(.*)@\{([0-9]+)\}", rev)
        if m:
            base = m.group(1) or "HEAD"
            ref = self.refs.head_target() if base == "HEAD" else self._ref_for_name(base)
            if not ref:
                damage = self.refs.head_problem()
                raise UnknownRevision(f"{rev}: {damage}" if damage else
                                      f"{rev}: HEAD is detached; name a branch, e.g. main@{{{m.group(2)}}}")
            log = self.refs.reflog(ref)
            n = _rev_count(m.group(2), rev)
            if n == 0 and not log and (current := self.refs.read(ref)):
                return current  # (its reflog expired, or was never kept: @{0} is where it is, as in git)
            if n >= len(log):
                raise UnknownRevision(f"{rev}: the reflog of {ref} has only {len(log)} entr" + ("y" if len(log) == 1 else "ies"))
            if not log[n].get("new"):
                raise UnknownRevision(f"{rev}: entry {n} of the reflog of {ref} is its deletion: it points to no commit",
                                      f"mvc reflog {ref.removeprefix('refs/heads/')} lists the commits it held")
            return log[n]["new"]
        if re.fullmatch(r".*@\{[^}]*\}", rev):  # (no ref name holds "@{")
            raise UnknownRevision(f"{rev}: mvc reads NAME@{{N}}, the place of a branch N moves ago; dates and "
                                  "@{-N} are not supported", "mvc reflog NAME lists the moves, with their times")
        if rev == "HEAD":
            oid = self.head()
            if oid is None:
                raise UnknownRevision("HEAD has no commits yet", self.no_commits_hint())
            return oid
        qualified = [q] if (q := _qualified_ref(rev)) else []
        for ref in qualified + [f"refs/heads/{rev}", f"refs/tags/{rev}", f"refs/remotes/{rev}"]:
            try:
                oid = self.refs.read(ref)
            except BadName:
                break
            if oid:
                if not qualified:
                    self._warn_if_ambiguous(rev, ref, oid)
                return self._as_commit(self._peel(oid), rev)
        if re.fullmatch(r"[0-9A-F]+", rev, re.IGNORECASE):
            rev = rev.lower()  # ids are lowercase hex; a prefix copied in capitals means the same
        if is_oid(rev):
            if self.store.has(rev):
                return self._as_commit(rev, rev)
            raise UnknownRevision(f"unknown revision {rev[:12]}...: no such object", self._packs_damaged_hint())
        if re.fullmatch(r"[0-9a-f]{6,63}", rev):
            matches = self._prefix_matches(rev)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousRevision(f"ambiguous revision {rev}: {len(matches)} commits match",
                                        "candidates: " + ", ".join(m[:12] for m in matches[:10]))
        elif re.fullmatch(r"[0-9a-f]{1,5}", rev):
            raise UnknownRevision(f"unknown revision {short_repr(rev, 80)}", "id prefixes need at least 6 hex digits")
        if ".." in rev:  # no branch or tag name holds "..": a range given where one revision goes
            raise UnknownRevision(f"{short_repr(rev, 80)} is a range, not a revision",
                                  "ranges A..B are for mvc log; compare two revisions with mvc diff A B")
        raise UnknownRevision(f"unknown revision {short_repr(rev, 80)}", "see mvc log, mvc branch and mvc tag")

    def _warn_if_ambiguous(self, rev: str, ref: str, oid: str) -> None:
        """Warn when `rev` also names another branch, tag or remote-tracking branch holding
        another commit (a fetched tag `origin/main` would otherwise shadow refs/remotes/origin/main
        without a word)."""
        kinds = {"refs/heads/": "branch", "refs/tags/": "tag", "refs/remotes/": "remote-tracking branch"}
        for prefix, kind in kinds.items():
            other = prefix + rev
            if other == ref:
                continue
            try:
                held = self.refs.read(other)
            except (BadName, CorruptObject):
                continue
            if held not in (None, oid):
                used = next(k for p, k in kinds.items() if ref.startswith(p))
                warnings.warn(f"{rev!r} names both a {used} and a {kind}; using the {used} (name the "
                              f"{kind} as {other[len('refs/'):]})")

    def _peel(self, oid: str) -> str:
        return oid

    def _packs_damaged_hint(self) -> str | None:
        """A hint naming a pack set aside as damaged (it may hold what was not found)."""
        from .pack import pack_store_of
        why = None if (packs := pack_store_of(self.store)) is None else packs.set_aside()
        return f"{why} and may hold it: run mvc fsck" if why else None

    def _as_commit(self, oid: str, rev: str) -> str:
        """`oid` if it is a commit: a revision naming a tree or a tensor blob is refused here, so
        that no branch or tag can be made to point at one."""
        try:
            if self._not_fetched([oid]) or self.store.size(oid) > SMALL_OBJECT:  # (a lazy clone promises
                                                                                   # blobs only: not downloaded)
                raise WrongObjectType(f"object {oid[:12]} is a blob, not a commit", "blob")
            self.read_commit(oid, shared=True)
        except WrongObjectType as e:
            raise UnknownRevision(f"revision {rev[:12] if is_oid(rev) else rev!r} names a {e.got}, not a commit",
                                  "see mvc log for commit ids") from None
        return oid

    def _ref_for_name(self, name: str) -> str:
        """The branch, tag or remote-tracking ref of `name`; a deleted branch whose moves are still
        logged (what `mvc reflog NAME` lists, so its NAME@{N} selectors resolve)."""
        qualified = _qualified_ref(name)
        for ref in ([qualified] if qualified else [f"refs/heads/{name}", f"refs/tags/{name}", f"refs/remotes/{name}"]):
            if self.refs.read(ref):
                return ref
        logged = self._logged_ref(name)
        if logged:
            return logged
        raise UnknownRevision(f"unknown branch {name!r}")

    def _logged_ref(self, name: str) -> str | None:
        """The ref whose moves `mvc reflog NAME` lists: a branch, else a remote-tracking branch
        (origin/main), held or deleted with its moves still logged; None when there is none."""
        qualified = _qualified_ref(name)
        for ref in ([qualified] if qualified else [f"refs/heads/{name}", f"refs/remotes/{name}"]):
            if self.refs.read(ref) or self.refs.reflog(ref):
                return ref
        return None

    def _parent(self, oid: str, rev: str, n: int) -> str:
        parents = self.read_commit(oid, shared=True)["parents"]
        if len(parents) < n:
            raise UnknownRevision(f"{rev}: commit {oid[:12]} has no parent {n}" if n > 1
                                  else f"{rev}: commit {oid[:12]} has no parent (it is a root commit)")
        return parents[n - 1]

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Every stored object id (loose or packed, any kind) that starts with `prefix`."""
        d = os.path.join(self.loose.root, prefix[:2])
        found = []
        if os.path.isdir(d):
            found = [prefix[:2] + n for n in os.listdir(d) if n.startswith(prefix[2:])]
        for s in self.store.stores[1:]:
            found.extend(o for o in getattr(s, "ids_with_prefix", lambda p: [])(prefix) if o not in found)
        return sorted(found)

    def _prefix_matches(self, prefix: str) -> list[str]:
        """The commits whose ids start with `prefix`; when none does but other objects do, the
        revision is refused as naming a tree or blob (as a full id of one is)."""
        commits, others = [], []
        for oid in self.ids_with_prefix(prefix):
            try:
                if self.store.size(oid) <= SMALL_OBJECT:  # a tensor blob is not read in full
                    self.read_commit(oid, shared=True)
                    commits.append(oid)
                else:
                    others.append("blob")
            except WrongObjectType as e:
                others.append(e.got)
            except ObjectMissing:
                continue
            except CorruptObject as e:  # a damaged object this prefix names may be the commit meant
                raise CorruptObject(f"revision {prefix} names a damaged object: {e.message}",
                                    "run mvc fsck") from None
        if not commits and others:
            raise UnknownRevision(f"revision {prefix!r} names a {' and a '.join(sorted(set(others)))}, not a commit",
                                  "see mvc log for commit ids")
        return commits

    # -- committing --------------------------------------------------------------------------
    def commit(self, components: dict | None = None, message: str = "", metrics: dict | None = None,
               branch: str | None = None, remove: Iterable[str] = (), author: str | None = None,
               extra: dict | None = None, progress: Callable[[int], None] | None = None,
               trees: dict[str, str] | None = None, run_hooks: bool = True, root: bool = False,
               trees_from_history: bool = False, expect_head: str | None = None) -> str:
        """Commit components onto a branch; returns the new commit id (64 hex).

        `components` maps names to a state dict, an nn.Module or a file/directory path; `trees`
        maps names to existing tree ids (used by paste). Components not named carry over from the
        parent; `remove` drops components. `root=True` starts a new branch as a root commit
        instead of from HEAD's commit. New names follow the rules of new names; `trees` names the
        branch holds already, or all of them with `trees_from_history` (a revert restoring a
        commit's components), only those a reader takes (names older mvc allowed stay usable).
        `expect_head`: the branch must be at this commit ("": must not exist yet) when the commit
        lands, else RefConflict and the branch is left as it is (a program that commits in a loop,
        as mvc run does, so that another process's commit or rollback is not built upon unseen).
        """
        if components is not None and not isinstance(components, dict):
            raise BadInput(f"components must map names to values, not a {type(components).__name__}",
                           'e.g. repo.commit({"model": state_dict}, message=...)')
        components, remove = dict(components or {}), _names_arg(remove, "remove")
        if expect_head is not None and not (expect_head == "" or (isinstance(expect_head, str) and is_oid(expect_head))):
            raise BadInput(f"expect_head is {str(expect_head)[:70]!r}: it must be a full commit id, or \"\" for a "
                           "branch that does not exist yet")
        for what, value, ok in (("author", author, author is None or isinstance(author, str)),
                                ("extra", extra, extra is None or isinstance(extra, dict)),
                                ("metrics", metrics, metrics is None or isinstance(metrics, dict)),
                                ("branch", branch, branch is None or isinstance(branch, str)),
                                ("trees", trees, trees is None or isinstance(trees, dict))):
            if not ok:
                raise BadInput(f"{what} is a {type(value).__name__}: it must be "
                               + {"author": "a string", "branch": "a string"}.get(what, "a dict") + " or None")
        for name in remove + list(trees or {}):  # existing components, maybe named before the rules
            check_component_name(name)            # of new names (revert passes a commit's trees)
        if trees and not trees_from_history:  # a name the branch holds may predate them; others are new
            ref, created_from, _warn, _follow = self._target_branch(branch)
            head = self.refs.read(ref) or created_from
            held = set(self.read_commit(head, shared=True)["components"]) if head else set()
            components_named = [*components, *(n for n in trees if n not in held)]
        else:
            components_named = list(components)
        for name in components_named:
            check_new_component_name(name)
        for name, tid in (trees or {}).items():  # existing trees only: a commit must be readable
            if not (isinstance(tid, str) and is_oid(tid)):
                raise BadInput(f"trees[{name!r}] is {str(tid)[:70]!r}, not a tree id")
            self.read_tree(tid, shared=True)
        both = sorted(set(remove) & (set(components) | set(trees or {})))
        if both:
            raise BadInput(f"component {both[0]!r} is both added and removed", "name it once")
        if not isinstance(message, str):
            raise BadInput(f"the commit message is a {type(message).__name__}, not a string")
        if not message.strip():
            raise BadInput("a commit needs a message" + (" (this one is only white space)" if message else ""),
                           "pass -m MSG")
        metrics = _plain_number(metrics or {})
        for key in metrics:
            if not isinstance(key, str) or not key:
                raise BadInput(f"invalid metric name {key!r}")
            check_metric(key, metrics[key])
        author = check_author(author, "the author argument") if author else default_author(self.root)
        size = 0
        for what, value in (("commit message", message), ("metrics", metrics), ("author", author or ""),
                            ("extra", extra or {})):  # refuse NaN or text that is not UTF-8 before writing
            try:
                size += len(canonical_json(value))
            except BadInput as e:
                raise BadInput(f"{what}: {e.message}", e.hint) from None
        if extra and nests_deeper(extra, MAX_JSON_DEPTH - 1):  # (in the commit, a level below its top)
            raise BadInput(f"extra nests deeper than {MAX_JSON_DEPTH - 1} levels of dicts and lists")
        if size > SMALL_OBJECT - (64 << 10):  # (the commit object's own check comes after the blobs)
            raise BadInput(f"the message, metrics and extra take {size} bytes: a commit holds at most "
                           f"{SMALL_OBJECT} bytes", "store large notes as a component or a file")
        ref, created_from, warn, follow = self._target_branch(branch)
        if root:
            created_from = None
        if warn:
            warnings.warn(warn)
        if run_hooks:
            self._hooks("mvc.pre_commit")  # e.g. an invalid mvc.toml refuses the commit here
        parent = self.refs.read(ref)  # checked again below, after the objects are written
        _check_expected_head(ref, parent, expect_head)
        self._next_components(parent if parent is not None else created_from, remove,
                              set(components) | set(trees or {}), quiet=True)  # (warned of when it lands)
        # a commit inside this thread's commit (a progress callback that commits; a handler of a signal mvc
        # does not hold) runs in a context of its own: its objects must not join the other's batch, whose
        # temp files go if that one then fails (see mvc.interrupts for the signals held during calls)
        depth = getattr(_COMMITTING, "depth", 0)
        _COMMITTING.depth = depth + 1
        try:
            with self.writing():
                cid, ref = (contextvars.Context().run if depth else _call)(
                    self._write_commit, components, trees, remove, message, metrics, author, extra, progress, ref,
                    created_from, expect_head)
        except InterruptedAfterLanding:
            if follow:
                self.refs.set_symbolic("HEAD", ref)
            raise
        finally:
            _COMMITTING.depth = depth
        try:
            if follow:  # only now: a commit that failed leaves HEAD where it was
                self.refs.set_symbolic("HEAD", ref)
            if run_hooks:
                self._run_commit_hooks(cid, ref)
            from .pack_write import maybe_autopack  # packs when pack.autoEvery = K is configured
            try:
                maybe_autopack(self, cid)
            except (MvcError, OSError) as e:  # the commit has landed: an error now would invite a second
                warnings.warn(f"committed {cid[:12]}, but packing after it failed: "  # commit
                              f"{os_error_text(e) if isinstance(e, OSError) else e}")
        except KeyboardInterrupt as e:  # the commit stands; what follows it (checks, packing) stopped
            if isinstance(e, InterruptedAfterLanding):
                raise
            raise InterruptedAfterLanding(_landed(cid, ref)) from None
        return cid

    def writers_exclusive_within(self, timeout_s: float, again: bool = False):
        """The writers lock held exclusively if it can be had within `timeout_s` (yields whether it
        was): packing waits so for commits and fetches in flight before it drops objects. `again`:
        a gc's second wait (for its packs, after the loose sweep's), said as such."""
        from .files import exclusive_within
        what = (f"them once more, to drop garbage from packs (up to {timeout_s:.0f} s more)" if again else
                f"commits, fetches and pushes in progress to finish (up to {timeout_s:.0f} s; else unreachable "
                "objects are left for the next gc)")
        return exclusive_within(os.path.join(self.dir, WRITERS_LOCK), timeout_s, what)

    def writing(self):
        """Held (shared) from writing new objects until a ref or index points at them: commit,
        fetch, certificates. A gc with a grace shorter than maintenance.GC_GRACE_S takes it
        exclusively, so it never deletes a new object in that window; with the default grace their
        age protects them."""
        return shared_or_exclusive(os.path.join(self.dir, WRITERS_LOCK), exclusive=False,
                                   waiting_for="a gc or pack that is deleting objects to finish")

    def _write_commit(self, components, trees, remove, message, metrics, author, extra, progress, ref,
                      created_from, expect_head=None) -> tuple[str, str]:
        new_trees = dict(trees or {})
        self.refs.wait_unlocked(ref)  # a branch held by another writer: fail before writing anything
        with self.loose.batch():  # every object is durable before any ref points at it
            for name, tid in (trees or {}).items():  # (read through the object cache above: a gc
                if not self.store.freshen(tid, FOUND_FRESHEN_S):  # may have removed one since)
                    raise ObjectMissing(f"trees[{name!r}]: tree {tid} is no longer in the store: a gc may have "
                                        "removed it", "commit the component's tensors again")
            for name, value in components.items():
                new_trees[name] = self.write_object(comp.build_tree(self.store, name, value, progress))
        provenance = git_provenance(self.root)
        if provenance.get("git", {}).get("error"):  # (recorded as dirty: null; said, so that it can be mended)
            warnings.warn(f"git could not say whether the work tree is dirty ({provenance['git']['error']}): the "
                          "commit records dirty: null")
        with _branch_turn(self.dir, ref):
            return self._land_commit(new_trees, remove, message, metrics, author, extra, ref, created_from,
                                     provenance, expect_head)

    def _land_commit(self, new_trees, remove, message, metrics, author, extra, ref, created_from,
                     provenance, expect_head=None) -> tuple[str, str]:
        """The commit object on the branch's current head, and the branch moved to it by compare-
        and-swap, again on the new head when another process moved it meanwhile (unless
        `expect_head` names the head it must be on)."""
        for attempt in range(COMMIT_RETRIES):
            parent = self.refs.read(ref)
            _check_expected_head(ref, parent, expect_head)
            base = parent if parent is not None else created_from
            comps = self._next_components(base, remove, new_trees)
            comps.update(new_trees)
            obj = commit_object(comps, [base] if base else [], message, author, utc_now(), metrics,
                                provenance, extra)
            cid = self.write_object(obj)
            try:
                self.refs.update(ref, cid, expected=parent, message=f"commit: {message.splitlines()[0]}",
                                 author=author)
            except RefConflict:  # (another process: waits spread out, so that two do not collide again)
                time.sleep(random.uniform(0.005, 0.01 * (attempt + 1)))
                continue
            except KeyboardInterrupt:  # held back while the ref moved: did it move?
                if self.refs.read(ref) == cid:
                    raise InterruptedAfterLanding(_landed(cid, ref)) from None
                raise
            break
        else:
            raise RefConflict(f"could not commit to {ref}: it kept moving", "try again")
        return cid, ref

    def _next_components(self, base: str | None, remove: list[str], added, quiet: bool = False) -> dict[str, str]:
        """The parent's components minus `remove`; refuses removing what is not there, an empty
        commit, and names that nest (`a` and `a/b` would check out into each other)."""
        comps = dict(self.read_commit(base, shared=True)["components"]) if base else {}
        for name in remove:
            if name not in comps:
                raise BadName(f"cannot remove {name!r}: the parent commit has no such component")
            comps.pop(name)
        names = set(comps) | set(added)
        if not names:
            raise BadInput("nothing to commit: no components")
        check_no_nesting(names, new=set(added) - set(comps), quiet=quiet)  # (names the parent has: warned of)
        return comps

    def _target_branch(self, branch: str | None) -> tuple[str, str | None, str | None, bool]:
        """(ref to commit on, commit to start a new branch from, warning, whether HEAD follows to the
        ref once the commit has landed: inside git, mvc's branch follows git's)."""
        head_target = self.refs.head_target()
        head_commit = self.head()
        if branch is not None:  # ("" is a bad name, not "the current branch")
            check_ref_name(branch)
            if self.refs.read_raw(f"refs/heads/{branch}") is None:  # a branch this commit creates
                check_new_ref_name(branch)
                self.refs.check_free(f"refs/heads/{branch}")  # (`a/b` beside `a`: before any object is written)
            return f"refs/heads/{branch}", head_commit, None, False
        git_branch, detached = git_current_branch(self.root)
        warn = None
        if git_branch:
            try:
                check_ref_name(git_branch)
                ref = f"refs/heads/{git_branch}"
                new = self.refs.read_raw(ref) is None  # a branch this commit creates
                if new:
                    check_new_ref_name(git_branch)  # (e.g. hex in capitals: it would hide an id prefix)
            except BadName as e:
                warn = f"git branch {git_branch!r} cannot be an mvc branch ({e.message})"
            else:
                if new:
                    self.refs.check_free(ref)  # (`feature/x` beside `feature`: refused before any object is written)
                    if head_commit and head_target:  # (from mvc's HEAD, which git's fork point may not be)
                        warn = (f"mvc branch {git_branch} is new: it starts from {head_target.removeprefix('refs/heads/')} "
                                f"({head_commit[:12]}), mvc's current branch")
                return ref, head_commit, warn, head_target != ref
        elif detached:
            warn = "git HEAD is detached"
        if head_target is None:  # (raises: HEAD is detached, or damaged)
            head_target = self.refs.head_branch_ref("mvc does not know which branch to commit to",
                                                    "pass --branch NAME or mvc switch BRANCH")
        if warn:
            warn += f"; committing to the current mvc branch {head_target[len('refs/heads/'):]}"
        return head_target, head_commit, warn, False

    def git_branch_elsewhere(self) -> str | None:
        """In a git work tree whose branch is not mvc's current one (after git checkout OTHER, until
        the next mvc commit moves HEAD there), the mvc branch commits go to now (git's); else None."""
        head_ref = self.refs.head_target()
        if head_ref is None:  # (detached: the callers say so themselves)
            return None
        ref, _from, _warn, follow = self._target_branch(None)
        return ref.removeprefix("refs/heads/") if follow and ref != head_ref else None

    def _refuse_git_branch_mismatch(self, what: str, new_ok: bool = False) -> None:
        """A rollback or revert on mvc's current branch while commits go to git's other one would act
        on the one and commit to (or be expected on) the other. `new_ok`: git's branch has no mvc
        branch yet, and would start from mvc's current one (a revert lands there coherently)."""
        git = self.git_branch_elsewhere()
        if git is None:
            return
        exists = self.refs.read_raw(f"refs/heads/{git}") is not None
        if new_ok and not exists:
            return
        ours = self.refs.head_target().removeprefix("refs/heads/")
        switch = f"mvc switch {git}" if exists else f"mvc branch {git}; mvc switch {git}"
        raise MvcError(f"cannot {what}: mvc's current branch is {ours}, but commits here go to {git}, git's "
                       "current branch", f"{switch} first, or git checkout {ours}")

    def _run_commit_hooks(self, cid: str, ref: str) -> None:
        """Call post-commit hooks registered by other packages (semantic CI) via entry points."""
        self._hooks("mvc.post_commit", cid, ref)

    def _hooks(self, group: str, *args) -> None:
        """Entry points of `group` (only where mvc.toml configures them): mvc.pre_commit hooks run
        before anything is written and may refuse the commit (an invalid mvc.toml)."""
        if not os.path.exists(os.path.join(self.root, "mvc.toml")):
            return
        for hook in _registered_hooks(group):
            hook(self, *args)

    # -- reading -----------------------------------------------------------------------------
    def load(self, rev: str | None, component: str, keys: Iterable[str] | None = None, device=None,
             dtype=None, verify: bool = True, rehash: bool = False) -> dict:
        """Tensors of a component as a dict (zero-copy views of the blobs where possible).

        Every blob is verified before it is returned (a damaged object is a CorruptObject error):
        re-hashed, or, for a loose blob file unchanged since an earlier read re-hashed it, checked
        by its verified stamp (size, times, inode: see LooseStore), which makes repeated loads as
        fast as reading a plain file. ``verify=False`` skips the check for loose objects (packed or
        remote ones are always checked as they are decoded or fetched); the tree and commit objects
        are verified either way. ``rehash=True`` re-hashes every blob, stamped or not, as
        `mvc fsck` does. ``dtype`` converts floating-point tensors only (integer and bool tensors
        keep theirs, as with ``Module.to(dtype)``)."""
        return self.load_tree(self.tree(rev, component, shared=True), keys, device, dtype, component, verify,
                              rehash)

    def load_tree(self, tree: dict, keys: Iterable[str] | None = None, device=None, dtype=None,
                  component: str = "component", verify: bool = True, rehash: bool = False) -> dict:
        """Tensors of a tree object; tied tensors come back as the same tensor object."""
        from .tensors import buffer_tensor, load_target
        device, dtype = load_target(device, dtype)
        if isinstance(keys, str):
            raise BadInput(f"keys is a string ({keys!r}); pass a list of tensor names, e.g. [{keys!r}]")
        keys = None if keys is None else _names_arg(keys, "keys")
        if not tree["tensors"] and tree["files"] and all(f["format"] == "raw" for f in tree["files"].values()):
            # (a component of files stored as bytes: nothing to load; an empty state dict loads as {})
            raise BadInput(f"{component} holds no tensors: its files ({', '.join(list(tree['files'])[:3])}) are "
                           "stored as bytes", "mvc checkout REV -c NAME -o DIR or mvc export writes them")
        names = list(tree["tensors"]) if keys is None else list(keys)
        aliases = {k: t["alias"] for k, t in tree["tensors"].items() if "alias" in t}
        out = {}
        wanted = list(dict.fromkeys(aliases.get(n, n) for n in names))
        self.store.prefetch(tree["tensors"][n]["id"] for n in wanted if n in tree["tensors"])
        for name in wanted:
            if name not in tree["tensors"]:
                raise BadName(f"{component} has no tensor {name!r}")
            buf, e = comp.tensor_blob(self.store, tree["tensors"][name], name, verify=verify, rehash=rehash)
            x = buffer_tensor(buf, e.begin, e.end, e.dtype, e.shape)
            cast = dtype if dtype is not None and x.is_floating_point() else None  # as Module.to(dtype):
            if device is not None or cast is not None:                            # ids and masks keep theirs
                x = x.to(device=device, dtype=cast)
            out[name] = x
        for name in names:
            if name in aliases:
                out[name] = out[aliases[name]]
        return {n: out[n] for n in names}

    def load_model(self, rev: str | None, component: str = "core"):
        """Rebuild the nn.Module committed as `component` through its arch's `mvc.archs` entry point."""
        tree = self.tree(rev, component, shared=True)
        arch, config = tree.get("arch"), tree.get("config")
        if not arch:
            raise BadInput(f"component {component!r} was committed as plain tensors, with no arch recorded",
                           "use repo.load() for its state dict")
        from .tensors import BUILD_ERRORS, match_stored_dtypes, precheck_build
        builder = arch_builder(arch)
        what = f"component {component!r} (arch {arch!r})"
        precheck_build(lambda: builder(json_copy(config)), tree, what)  # (a builder may change its config)
        try:
            model = builder(json_copy(config))
        except BUILD_ERRORS as e:
            raise BadInput(f"{what} records a config its arch cannot build: {type(e).__name__}: {str(e)[:200]}",
                           "the commit is damaged or was made by other code") from None
        state = self.load_tree(tree, component=component)  # (the tree read above: `rev` may move meanwhile)
        match_stored_dtypes(model, state)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # missing / unexpected keys, shapes that do not fit the config
            detail = " ".join(str(e).split())
            raise BadInput(f"component {component!r} does not fit its recorded arch {arch!r} and config: "
                           f"{detail[:300]}", "load its tensors with repo.load() instead") from None
        spec, recorded = getattr(model, "abi_spec", None), (tree.get("abi") or {}).get("hash")
        if recorded and spec is not None and getattr(spec, "hash", recorded) != recorded:
            raise CorruptObject(f"{what} records ABI {recorded[:12]}, but its config builds ABI {spec.hash[:12]}",
                                "the tree was edited or written by another program: paste and CI would trust "
                                "the record; rebuild the model and commit it again")
        model.eval()
        return model

    def built_abi_hash(self, tree: dict) -> str | None:
        """The ABI hash of the model a tree's arch and config build, as the arch's builder tells it
        without building (its `abi_spec_of(config)`), or None when it cannot be told here (no arch,
        one not installed or without `abi_spec_of`, a config it refuses). Paste checks records by it."""
        found = recorded_builder(tree)
        if found is None:
            return None
        builder, config = found
        spec_of = getattr(builder, "abi_spec_of", None)
        try:
            got = getattr(spec_of(config), "hash", None) if callable(spec_of) else None
        except Exception:  # noqa: BLE001 (a config this arch cannot build: load_model says what)
            return None
        return got if isinstance(got, str) else None

    def check_rebuilds(self, tree: dict, what: str) -> None:
        """Refuse (BadInput) a tree with an arch whose tensors are not those its arch and config
        build (see tensors.check_fits_record); nothing is checked where the arch is not installed."""
        found = recorded_builder(tree)
        if found is None:
            return
        builder, config = found
        from .tensors import built_shapes, check_fits_record, loads_on_meta, torch_dtype
        make = lambda: builder(json_copy(config))  # noqa: E731
        try:
            stored = {n: (t["shape"], torch_dtype(t["dtype"])) for n, t in tree["tensors"].items()}
        except (KeyError, TypeError, AttributeError):
            stored = None  # (a dtype this torch lacks: the names and shapes alone decide)
        if stored is None or not loads_on_meta(make, stored):  # (as load_model loads it, e.g. a
            check_fits_record(built_shapes(make), tree["tensors"], tree.get("arch"), what)  # data-sized tensor)

    def load_optimizer(self, rev: str | None, component: str = "optimizer") -> dict:
        """The optimizer state dict committed as `component` (an `optimizer.state_dict()`), ready
        for `optimizer.load_state_dict`: its tensors and the param groups its tree records. A state
        keyed by parameter names (torch.distributed.checkpoint's) comes back keyed by those names."""
        tree = self.tree(rev, component, shared=True)
        meta = json_copy(tree.get("meta", {}))
        groups, keys = meta.get("param_groups"), meta.get("state_keys")  # (keys: a state keyed by names)
        tuples, plain = meta.get("tuple_settings", []), meta.get("plain_state", [])  # (what JSON and tensors change)
        nones = meta.get("none_state", [])
        if not isinstance(groups, list):
            raise BadInput(f"component {component!r} records no param groups: it was committed as flat tensors",
                           "load its tensors with repo.load() and take the settings from your training code")
        for what, v in (("state_keys", keys), ("tuple_settings", tuples), ("plain_state", plain), ("none_state", nones)):
            if v is not None and not isinstance(v, list):
                raise CorruptObject(f"component {component!r} records {what} that are not a list")
        plain = set(plain)
        sequences = meta.get("sequence_state", {})
        parts = _recorded_sequences(sequences, component, tree["tensors"])
        state: dict[int | str, dict] = {}

        def slot(name: str, error) -> tuple[dict, str]:
            """(the per-parameter dict, the key) a name `state.<i>.<key>` goes to; `error()` raised otherwise."""
            _, i, key = name.split(".", 2) if name.count(".") >= 2 else ("", "", "")
            if not (name.startswith("state.") and i.isdigit() and key and (keys is None or int(i) < len(keys))):
                raise error()
            return state.setdefault(int(i) if keys is None else keys[int(i)], {}), key
        filled: dict[str, list] = {}  # a sequence of tensors -> its items (None where it had None)
        for name, t in self.load_tree(tree, component=component).items():
            per, key = slot(parts.get(name, (name, None))[0], lambda: BadInput(
                f"component {component!r} holds {name!r}, not an optimizer state tensor (state.<i>.<key>)"))
            if name in parts:
                filled.setdefault(parts[name][0], [None] * sequences[parts[name][0]]["length"])[parts[name][1]] = t
            elif name in sequences:  # a list or tuple of numbers, stored as one tensor
                per[key] = t.tolist() if sequences[name]["type"] == "list" else _as_tuple(t.tolist())
            else:
                per[key] = t.item() if name in plain else t
        for name in nones:  # values None
            if not isinstance(name, str) or name in tree["tensors"]:
                raise CorruptObject(f"component {component!r} records a none_state entry {short_repr(name)}, "
                                    "not the name of a state value without a tensor")
            per, key = slot(name, lambda: CorruptObject(f"component {component!r} records a none_state entry "
                                                        f"{short_repr(name)}, not an optimizer state name"))
            per[key] = None
        for whole, spec in sequences.items():  # sequences of tensors: whole, as list or tuple
            if "length" in spec:
                items = filled.get(whole, [None] * spec["length"])  # (one of Nones alone has no tensor)
                per, key = slot(whole, lambda: CorruptObject(
                    f"component {component!r} records a sequence_state entry {whole!r}, not an optimizer state "
                    "name (state.<i>.<key>)"))
                per[key] = tuple(items) if spec["type"] == "tuple" else items
        from .tensors import setting_value
        groups = [setting_value(g) for g in groups]
        for g, names in zip(groups, tuples):
            for k in names if isinstance(g, dict) and isinstance(names, list) else ():
                if isinstance(g.get(k), list):
                    g[k] = tuple(g[k])
        return {"state": state, "param_groups": groups}

    def no_commits_hint(self) -> str:
        """What to do when HEAD's branch has no commits: commit, or go where commits are."""
        return self.commits_elsewhere() or "make a first commit with mvc commit"

    def commits_elsewhere(self) -> str | None:
        """Where the commits are when HEAD's branch has none (other branches, which a commit --branch
        or a pipeline made, or fetched ones) and how to get there; None when there are none."""
        def listed(names):
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        others = sorted(self.branches())
        if others:
            return f"branches with commits: {listed(others)}; mvc switch NAME, or mvc log NAME"
        fetched = sorted(r[len("refs/remotes/"):] for r in self.refs.list("refs/remotes/"))
        if fetched:  # (a repository made to fetch a team's remote, as in a CI system)
            return f"fetched branches: {listed(fetched)}; mvc branch NAME origin/NAME makes one here"
        return None

    def log(self, rev: str | None = None, n: int | None = None, exclude: str | None = None) -> list[dict]:
        """Commits reachable from `rev` (default HEAD), newest first, each with its `id`; with
        `exclude`, only those not reachable from it too (git's `exclude..rev`)."""
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise BadInput(f"n={n!r}: the number of commits must be a whole number >= 0")
        try:
            start = self.resolve(rev)
        except UnknownRevision:
            if rev is None and self.head() is None:
                return []
            raise
        hidden: set[str] = set()
        if exclude is not None:
            stack = [self.resolve(exclude)]
            while stack:
                c = stack.pop()
                if c not in hidden:
                    hidden.add(c)
                    stack.extend(self.read_commit(c, shared=True)["parents"])
        if start in hidden:
            return []
        out, seen = [], {start} | hidden
        frontier = [_Newest(self.read_commit(start, shared=True)["time"], 0, start)]  # (a heap: newest first, and
        while frontier and (n is None or len(out) < n):                         # the first found of equal times)
            cid = heapq.heappop(frontier).cid
            c = self.read_commit(cid, shared=True)
            out.append({"id": cid, **json_copy(c)})
            if n is not None and len(out) >= n:
                break  # (the parents of the last one listed are not read)
            for p in c["parents"]:
                if p not in seen:
                    seen.add(p)
                    heapq.heappush(frontier, _Newest(self.read_commit(p, shared=True)["time"], len(seen), p))
        return out

    def show(self, rev: str | None = None) -> dict:
        cid = self.resolve(rev)
        c = self.read_commit(cid, shared=True)
        comps = {}
        for name, tid in sorted(c["components"].items()):
            t = self.read_tree(tid, shared=True)
            dtypes: dict[str, int] = {}
            nbytes = 0
            for ten in t["tensors"].values():
                dtypes[ten["dtype"]] = dtypes.get(ten["dtype"], 0) + 1
            for f in t["files"].values():
                nbytes += f["size"]
            comps[name] = {"tree": tid, "kind": t["kind"], "arch": t.get("arch"), "tensors": len(t["tensors"]),
                           "files": len(t["files"]), "bytes": nbytes, "dtypes": dtypes,
                           "abi": (t.get("abi") or {}).get("hash")}
        return {"id": cid, **{k: json_copy(v) for k, v in c.items() if k != "components"}, "components": comps}

    # -- diff --------------------------------------------------------------------------------
    def diff(self, a: str, b: str, progress: Callable[[int], None] | None = None) -> dict:
        """Per component and tensor: added / removed / changed / unchanged, with change statistics.
        `progress` gets the bytes compared as they are (their total: `diffs.compared_bytes`)."""
        ida, idb = self.resolve(a), self.resolve(b)
        ca, cb = self.read_commit(ida, shared=True), self.read_commit(idb, shared=True)
        result = {"a": ida, "b": idb, "components": {}, "metrics": {}, "identical": True}
        for name in sorted(set(ca["components"]) | set(cb["components"])):
            ta_id, tb_id = ca["components"].get(name), cb["components"].get(name)
            if ta_id == tb_id:
                result["components"][name] = {"status": "unchanged", "tensors": {}, "files": {}}
                continue
            result["identical"] = False
            ta = self.read_tree(ta_id, shared=True) if ta_id else None
            tb = self.read_tree(tb_id, shared=True) if tb_id else None
            result["components"][name] = diff_trees(self.store, ta, tb, progress)
        for k in sorted(set(ca["metrics"]) | set(cb["metrics"])):
            # a metric one side lacks ("a" or "b" null there) is "only_in" the other: a metric recorded
            # as null differs from none; true vs 1, 1 vs 1.0, -0.0 vs 0.0 differ too
            va, vb = ca["metrics"].get(k), cb["metrics"].get(k)
            held = [side for side, c in (("a", ca), ("b", cb)) if k in c["metrics"]]
            if len(held) < 2 or json.dumps(va) != json.dumps(vb):
                result["metrics"][k] = {"a": json_copy(va), "b": json_copy(vb)} | (
                    {"only_in": held[0]} if len(held) < 2 else {})
        return result

    # -- branches, tags, rollback -------------------------------------------------------------
    def create_branch(self, name: str, rev: str | None = None) -> str:
        """Make branch `name` at `rev` (default HEAD); returns its commit (`force_branch` moves one)."""
        check_new_ref_name(name)
        with self.writing():
            oid = self._live_commit(rev)
            try:
                self.refs.update(f"refs/heads/{name}", oid, expected=None,
                                 message=f"branch: created from {rev or 'HEAD'}", author=default_author(self.root))
            except RefConflict:
                current = self.refs.head_target() == f"refs/heads/{name}"
                raise BadName(f"branch {name!r} already exists",
                              f"it is the current branch: mvc rollback {rev or 'REV'} moves it" if current
                              else "pass --force to move it") from None
        return oid

    def _live_commit(self, rev: str | None) -> str:
        """The commit `rev` names, read, for a branch or tag to point at. Called inside `writing()`
        (as branch, tag and rollback move refs): the commit may be one no ref reaches (an old id from
        the reflog), which a gc deciding what is live meanwhile would delete under the new ref; gc
        with a short grace waits for the lock, and one that went before is refused here."""
        oid = self.resolve(rev)
        self.read_commit(oid, shared=True)
        return oid

    def force_branch(self, name: str, rev: str | None = None) -> dict:
        """Move branch `name` to `rev` (default HEAD), making it if it does not exist; not the current
        branch (`rollback` moves that one). The move is in its reflog. {"branch", "old", "new"}."""
        ref = f"refs/heads/{name}"
        now = self.refs.read(ref)  # (a ref holding no id: CorruptObject, naming it)
        if now is None:
            check_new_ref_name(name)
        elif self.refs.head_target() == ref:
            raise MvcError(f"cannot force-move the current branch {name!r}",
                           f"mvc rollback {rev} moves it" if rev else "mvc rollback REV moves it")
        with self.writing():
            oid = self._live_commit(rev)
            try:
                self.refs.update(ref, oid, expected=now, author=default_author(self.root),
                                 message=f"branch: {'reset to' if now else 'created from'} {rev or 'HEAD'}")
            except RefConflict:
                raise MvcError(f"branch {name!r} was {'moved' if now else 'made'} by another process meanwhile",
                               "look at mvc branch and try again") from None
        return {"branch": name, "old": now, "new": oid}

    def delete_branch(self, name: str) -> str | None:
        """Remove branch `name`; returns the commit it named (None for a ref file that held no id,
        which is deleted all the same)."""
        if self.refs.head_target() == f"refs/heads/{name}":
            raise MvcError(f"cannot delete the current branch {name!r}", "switch to another branch first")
        return self._delete_ref("branch", name, None)

    def _delete_ref(self, kind: str, name: str, hint: str | None) -> str | None:
        """Delete refs/heads/NAME or refs/tags/NAME whatever it holds (warning about a file that
        holds no id); the commit it named, or None."""
        ref = f"refs/{'heads' if kind == 'branch' else 'tags'}/{name}"
        oid, junk = self.refs.held(ref)
        if oid is None and junk is None:
            raise UnknownRevision(f"no {kind} {name!r}", hint)
        if junk is not None:
            warnings.warn(f"{ref} held {junk[:40]!r}, not a commit id")
        self.refs.update(ref, None, expected=oid if junk is None else junk, message=f"{kind}: deleted",
                         author=default_author(self.root))
        return oid

    def switch(self, name: str) -> bool:
        """Make branch `name` the current one; False when it is already. `HEAD` means the current
        branch. In a repository without branches (no commits yet) any new name is taken: the first
        commit creates it (and a damaged HEAD is mended so). A revision that names no branch (an
        id, HEAD~1, a tag) is refused with what to do instead: mvc has no detached HEAD."""
        current = self.refs.head_target()
        if name == "HEAD" and current:  # (head_target names branches only)
            name = current[len("refs/heads/"):]
        ref = f"refs/heads/{name}"
        if ref == current:
            return False
        try:
            check_ref_name(name)
        except BadName:
            self._refuse_detached_head(name)
            raise
        if self.refs.read(ref) is None:
            self._refuse_detached_head(name)
            if self.branches():
                raise UnknownRevision(f"no branch {name!r}", f"create it with mvc branch {name}")
            check_new_ref_name(name)  # (the branch the first commit creates)
        self.refs.set_symbolic("HEAD", ref)
        return True

    def _refuse_detached_head(self, rev: str) -> None:
        """MvcError when `rev`, which names no branch, is a revision: switch takes branches only."""
        try:
            self.resolve(rev)
        except MvcError:
            return
        raise MvcError(f"{rev!r} names a commit, not a branch: mvc has no detached HEAD",
                       f"make a branch there and switch to it: mvc branch NAME {rev} && mvc switch NAME")

    def tag(self, name: str, rev: str | None = None, force: bool = False) -> str:
        check_ref_name(name)
        oid = self.resolve(rev)
        ref = f"refs/tags/{name}"
        now, junk = self.refs.held(ref)
        exists = BadName(f"tag {name!r} already exists", "pass --force to move it")
        if now and not force:
            raise exists
        if now is None and junk is None:
            check_new_ref_name(name)
        with self.writing():
            oid = self._live_commit(oid)
            try:  # without --force, only over what was read: a tag another writer makes meanwhile stays
                self.refs.update(ref, oid, **({} if force else {"expected": None}),  # (over a junk file: CorruptObject)
                                 message=f"tag: {rev or 'HEAD'}", author=default_author(self.root))
            except RefConflict:
                raise exists from None
        return oid

    def delete_tag(self, name: str) -> str | None:
        """Remove tag `name`; returns the commit it named (its reflog keeps it from gc a while;
        None for a ref file that held no id, which is deleted all the same)."""
        return self._delete_ref("tag", name, "see mvc tag")

    def rollback(self, rev: str | None = None) -> dict:
        """Move the current branch to `rev` (default: its parent); recorded in the reflog."""
        ref = self.refs.head_branch_ref("nothing to roll back", "mvc switch BRANCH first")
        self._refuse_git_branch_mismatch("roll back")
        old = self.refs.read(ref)
        if old is None and rev is None:  # (with REV, an emptied branch can go back: CI's rollback empties one)
            raise UnknownRevision("the current branch has no commits to roll back", "mvc rollback REV moves it to one")
        with self.writing():
            if rev is not None:
                target = self.resolve(rev)
            elif not self.read_commit(old, shared=True)["parents"]:
                raise UnknownRevision(f"nothing to roll back to: {old[:12]}, the head of {ref[len('refs/heads/'):]}, "
                                      "is a root commit, with no parent", "mvc rollback REV moves it to another commit")
            else:
                target = self._parent(old, "HEAD~1", 1)
            self.read_commit(target, shared=True)
            self.refs.update(ref, target, expected=old, message=f"rollback: to {target[:12]}",
                             author=default_author(self.root))
        return {"branch": ref[len("refs/heads/"):], "old": old, "new": target}

    def revert(self, rev: str, message: str | None = None, branch: str | None = None) -> str:
        """A new commit whose components are those of `rev`; returns its id. Unlike `git revert`
        (which undoes a commit), this returns to REV's weights while keeping the history in
        between, as `rollback` does by moving the branch back."""
        ref, created_from, _warn, _follow = self._target_branch(branch)
        if branch is None:
            self._refuse_git_branch_mismatch("revert", new_ok=True)  # (REV's HEAD would be the other's)
        cid = self.resolve(rev)
        target = self.read_commit(cid, shared=True)["components"]
        base = self.refs.read(ref) or created_from
        current = self.read_commit(base, shared=True)["components"] if base else {}
        if current == target:
            name = ref.removeprefix("refs/heads/")
            parents = self.read_commit(base, shared=True)["parents"] if base else []
            raise BadInput(f"nothing to revert: {name} already holds the components of {rev}, {cid[:12]}",
                           f"the last commit of {name} changed no weights (its message or metrics only): "
                           f"mvc rollback undoes it" if cid in parents else
                           "mvc revert REV returns to REV's weights; to undo the last commit run "
                           "mvc revert HEAD~1 or mvc rollback")
        return self.commit({}, message=message or f"revert to {cid[:12]}", trees=target, branch=branch,
                           remove=[n for n in current if n not in target], trees_from_history=True)

    def reflog(self, branch: str | None = None) -> list[dict]:
        """The moves of `branch` (None or HEAD: the current branch), newest first."""
        if branch == "HEAD":
            branch = None
        if branch is None:
            return self.refs.reflog(self.refs.head_branch_ref("it has no reflog of its own", "name a branch"))
        check_ref_name(branch)  # ("" is a bad name, not "the current branch")
        ref = self._logged_ref(branch)
        if ref is None:
            raise UnknownRevision(f"no branch {branch!r}", "see mvc branch")
        return self.refs.reflog(ref)

    def paste_brick(self, name: str, source_rev: str, host_rev: str, run_hooks: bool = True, **kwargs) -> dict:
        """Install brick `name` of `source_rev` into the host branch (see mvc.paste.paste_brick).
        As a commit does, a paste that moves its branch runs mvc.toml's on-commit checks
        (`run_hooks`), and an mvc.toml that cannot be read refuses it before anything is written."""
        from .paste import paste_brick
        if run_hooks:
            self._hooks("mvc.pre_commit")
        r = paste_brick(self, name, source_rev, host_rev, **kwargs)
        if run_hooks and r.get("moved"):
            self._run_commit_hooks(r["commit"], f"refs/heads/{r['branch']}")
        return r

    # -- checkout / export -------------------------------------------------------------------
    def checkout(self, rev: str | None, out_dir: str, components: Iterable[str] | None = None,
                 progress: Callable[[int], None] | None = None, force: bool = False,
                 unchanged: list | None = None) -> list[str]:
        """Write the components of `rev` as their original files under `out_dir/<component>/`;
        returns their paths. Files already there with other content are refused (nothing is
        written) unless `force`; files already holding the same bytes are left alone (and added
        to `unchanged` when it is given)."""
        out_dir = _output_path(out_dir)
        if not out_dir:  # (the checks below would take "" for no path at all)
            raise BadInput("the output folder is an empty path", "name a folder, e.g. '.' or 'restored'")
        out_dir = physical_path(out_dir)
        self._refuse_output_inside_mvc(out_dir)
        blocker = _file_at_or_above(out_dir)
        if blocker == out_dir:  # (-o naming the user's own model file)
            raise BadInput(f"cannot check out into {out_dir}: it is a file, and checkout writes a folder, "
                           "one folder per component", "name a folder; mvc export REV COMPONENT -o FILE writes one "
                           "component as one file")
        if blocker:  # (never "remove it": the file is one the user named)
            raise BadInput(f"cannot check out into {out_dir}: {blocker} is a file, not a folder", "name a folder")
        cid = self.resolve(rev)
        comps = self.read_commit(cid, shared=True)["components"]
        names = [components] if isinstance(components, str) else list(components) if components else sorted(comps)
        trees = {}
        for name in names:
            if name not in comps:
                raise BadName(f"commit {cid[:12]} has no component {name!r}",
                              f"it has: {', '.join(sorted(comps)) or 'none'}")
            check_component_name(name)
            trees[name] = self.read_tree(comps[name], shared=True)
        paths = comp.checkout_paths(trees)  # no two files on one path: checked before anything is written
        items = [(trees[name], rel, os.path.join(out_dir, *path.split("/"))) for name, rel, path in paths]
        written = comp.write_files(self.store, items, force, progress, base=out_dir, unchanged=unchanged)
        temps: list = []
        stray = comp.stray_files([os.path.join(out_dir, *name.split("/")) for name in trees], written, temps)
        if stray:
            warnings.warn(f"{len(stray)} file(s) under {out_dir} are not part of {cid[:12]} (left from before), "
                          f"e.g. {stray[0]}")
        stale = comp.stale_component_folders(out_dir, list(trees), self._component_names_near(cid)) \
            if not components else []
        if stale:  # (a checkout of some components only leaves the others' folders be, as asked)
            warnings.warn(f"{len(stale)} folder(s) under {out_dir} hold model files but are no component of "
                          f"{cid[:12]} (left from an earlier checkout?), e.g. {stale[0]}; checking out "
                          "named components (-c NAME) skips this look")
        if temps:
            warnings.warn(f"{len(temps)} temp file(s) of another checkout or export ({sum(n for _, n in temps):,} bytes) "
                          f"are under {out_dir}, e.g. {temps[0][0]}: a killed one's, or one running now; delete "
                          "them when no mvc checkout or export writes there")
        return written

    def _component_names_near(self, cid: str) -> set[str]:
        """The component names of the commits on the first-parent histories of `cid` and of every
        branch and tag, STALE_NAME_COMMITS commits at most (what an earlier checkout may have left)."""
        names: set[str] = set()
        seen: set[str] = set()
        walks = list(dict.fromkeys([cid] + sorted(self.refs.list("refs/", bad={}).values())))
        while walks:  # a step down each history in turn: a long one does not hide the other branches
            going = []
            for c in walks:
                if c in seen or len(seen) >= comp.STALE_NAME_COMMITS:  # (more refs than the budget: the
                    continue                                             # first ones, the commit's first)
                seen.add(c)
                try:
                    commit = self.read_commit(c, shared=True)
                except MvcError:  # (a damaged or absent commit: fsck's to name)
                    continue
                names.update(commit["components"])
                if commit["parents"]:
                    going.append(commit["parents"][0])
            walks = going
        return names

    def _refuse_output_inside_mvc(self, out: str) -> None:
        """Checkout and export never write into the .mvc directory of this or any repository (a
        component named heads/x checked out under .mvc/refs would be a branch file)."""
        if not out:
            return
        real, mine = os.path.realpath(out), os.path.realpath(self.dir)
        own = real == mine or real.startswith(mine + os.sep)
        if own or comp.inside_repository_dir(out):
            where = f"the repository's own {os.path.basename(self.dir)}" if own else "another repository's .mvc"
            raise BadInput(f"cannot write to {out}: it is inside {where} directory, which holds its objects and refs",
                           "write somewhere else, e.g. -o restored/")

    def export(self, rev: str | None, component: str, out_file: str, force: bool = False,
               progress: Callable[[int], None] | None = None, unchanged: list | None = None) -> str:
        """Write a single-file component to `out_file` (an existing file with other content is
        refused unless `force`; one holding the same bytes is left alone, and added to
        `unchanged` when it is given); `progress(nbytes)` is called as bytes are written."""
        out_file = _output_path(out_file)
        folder, name = os.path.split(out_file)
        if name not in ("", ".", "..") and physical_path(folder) != folder:  # (refused below: not a file name)
            out_file = os.path.join(physical_path(folder), name)
        self._refuse_output_inside_mvc(out_file)
        blocker = _file_at_or_above(os.path.dirname(out_file))
        if blocker:  # (-o model.safetensors/x: never "remove it", the file is one the user named)
            raise BadInput(f"cannot export to {out_file}: {blocker} is a file, not a folder",
                           "name a file in a folder")
        tree = self.tree(rev, component, shared=True)
        if len(tree["files"]) != 1:
            raise BadInput(f"component {component!r} holds {len(tree['files'])} files",
                           "use mvc checkout REV -o DIR for multi-file components")
        if (not out_file or os.path.isdir(out_file) or out_file.endswith(("/", os.sep))
                or os.path.basename(out_file) in (".", "..")):  # (nd/. with nd missing: a folder all the same)
            raise BadInput(f"cannot write {out_file!r}: not a file name", "name the file to write, e.g. -o core.safetensors")
        (relpath, entry), = tree["files"].items()
        if entry["format"] == "safetensors" and out_file.lower().endswith(TORCH_FILE_SUFFIXES):
            optimizer = isinstance(tree.get("meta"), dict) and isinstance(tree["meta"].get("param_groups"), list)
            loader = (f"mvc.Repo().load_optimizer(REV, {component!r})" if optimizer  # (param groups included)
                      else f"dict(mvc.Repo().load(REV, {component!r}))")
            raise BadInput(f"component {component!r} is stored as safetensors ({relpath}), and export writes "
                           f"those bytes: {os.path.basename(out_file)} would hold safetensors under a PyTorch "
                           "name, which torch.load refuses",
                           f"name the file .safetensors, or write a PyTorch file from Python: "
                           f"torch.save({loader}, {os.path.basename(out_file)!r})")
        comp.write_files(self.store, [(tree, relpath, out_file)], force, progress, unchanged=unchanged)
        return out_file

    def export_chunks(self, rev: str | None, component: str):
        """The bytes of a single-file component, as chunks, for writing to a stream, which cannot take
        back what it was given: every blob is read and verified before the first chunk (a damaged or
        missing one raises with nothing handed out; the verified stamps, or this process's memory of
        small blobs, spare the loose ones a second hash), and again as its chunks go out (a large
        packed one decoded whole)."""
        tree = self.tree(rev, component, shared=True)
        if len(tree["files"]) != 1:
            raise BadInput(f"component {component!r} holds {len(tree['files'])} files",
                           "use mvc checkout REV -o DIR for multi-file components")
        ids = tree_blob_ids(tree)
        self.store.prefetch(ids)
        for oid in dict.fromkeys(ids):
            self.store.view(oid)  # (dropped at once: a decoded packed blob is not held for the stream)
        return comp.file_chunks(self.store, tree, next(iter(tree["files"])), whole=True)


def _recorded_sequences(recorded, component: str, names) -> dict:
    """{tensor name: (the sequence's name, its position)} of the items of sequences of tensors, from
    the `sequence_state` an optimizer tree records (see tensors.optimizer_state), checked against
    the tree's tensor `names`. A length the tree's items and None positions do not fill exactly is
    refused (a forged one must not make a list of a trillion Nones)."""
    def bad(why: str):
        return CorruptObject(f"component {component!r} records a sequence_state {why}")
    if not isinstance(recorded, dict):
        raise bad("that is not a dict")
    for name, spec in recorded.items():
        if not (isinstance(spec, dict) and spec.get("type") in ("list", "tuple")):
            raise bad(f"entry for {name!r} that names no list or tuple")
        if "length" in spec and not (type(spec["length"]) is int and isinstance(spec.get("none"), list)
                                     and all(type(j) is int for j in spec["none"])):
            raise bad(f"entry for {name!r} with no valid length and None positions")
    parts, filled = {}, {}
    for tname in names:
        whole, _, j = tname.rpartition(".")
        if "length" in recorded.get(whole, {}) and j.isdigit() and str(int(j)) == j:
            parts[tname] = (whole, int(j))
            filled.setdefault(whole, set()).add(int(j))
    for name, spec in recorded.items():
        if "length" in spec:
            have, nones = filled.get(name, set()), set(spec["none"])
            every = have | nones  # (distinct positions: they fill 0..length-1 exactly when all lie there)
            if have & nones or len(every) != spec["length"] or any(not 0 <= j < spec["length"] for j in every):
                raise bad(f"entry for {name!r} whose length {spec['length']} its items and None positions "
                          "do not fill exactly")
    return parts


def _as_tuple(value):
    """A loaded list of numbers as the tuple it was (its nested lists as tuples too)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _output_path(path) -> str:
    """An output path given to checkout or export, as text (bytes are decoded as the file system
    encodes names: physical_path and the checks work on text)."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise BadInput(f"the output path is a {type(path).__name__}, not a path",
                       "give a str or pathlib.Path") from None


_COMMITTING = threading.local()  # depth: commits this thread is in (more than one: a signal handler's)


def _call(fn, *args):
    return fn(*args)


_BRANCH_TURNS: dict[tuple[str, str], threading.RLock] = {}
_BRANCH_TURNS_GUARD = threading.RLock()


@forks.on_fork
def _new_branch_turns() -> None:  # (see mvc.forks: turns other threads of the parent held)
    global _BRANCH_TURNS_GUARD
    _BRANCH_TURNS.clear()
    _BRANCH_TURNS_GUARD = threading.RLock()


def _branch_turn(mvc_dir: str, ref: str) -> threading.RLock:
    """The lock threads of this process take in turn to commit onto one branch of a repository:
    the ref's compare-and-swap retries on a moved head, and among many threads one could lose
    every retry (16 threads: a few commits of 240 failed with RefConflict). Other processes still
    meet at the compare-and-swap. Reentrant: a training loop's signal handler that commits while
    its thread holds the turn goes on (a plain lock waited for itself forever); the commit it
    interrupted then lands on the handler's, or stops when the handler ends the process."""
    key = (os.path.realpath(mvc_dir), ref)
    with _BRANCH_TURNS_GUARD:
        return _BRANCH_TURNS.setdefault(key, threading.RLock())


@functools.lru_cache(maxsize=None)
def _registered_hooks(group: str) -> tuple:
    """The loaded entry points of `group`, looked up once per process (a lookup scans the installed
    distributions: ~3 ms, which a training loop committing often would pay twice per commit)."""
    from importlib.metadata import entry_points
    return tuple(ep.load() for ep in entry_points(group=group))


def _refuse_init_at(root: str, path: str, what: str):
    """BadInput: `path`, on the way to the repository at `root`, is there but is no folder (a file,
    or a symbolic link to nothing, where makedirs would fail with a bare FileNotFoundError)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise BadInput(f"cannot create a repository at {root}: {what} is a symbolic link to "
                       f"{os.readlink(path)}, which does not exist", "create its target, or remove the link")
    raise BadInput(f"cannot create a repository at {root}: {what} is a file")


def _rev_count(digits: str, rev: str) -> int:
    """N of REV~N, REV^N or REV@{N} (no history is a billion commits deep)."""
    if len(digits.lstrip("0")) > 9:
        raise UnknownRevision(f"{rev[:40]!r}: {digits[:12]}... is too large a count")
    return int(digits)


METRICS_MAX_DEPTH = 32  # nesting of dicts and lists in metrics (deeper: a value that contains itself?)


def _plain_number(value, path: str = "metrics", depth: int = 0):
    """A metric given as a one-element tensor or numpy scalar (`loss.item()` forgotten) as the
    Python number it holds, in lists and dicts too; other values unchanged (canonical_json judges
    them)."""
    if isinstance(value, (dict, list, tuple)) and depth >= METRICS_MAX_DEPTH:
        raise BadInput(f"{path[:80]}...: metrics nest deeper than {METRICS_MAX_DEPTH} levels",
                       "does a value contain itself? give metrics as plain numbers, text and small dicts")
    if isinstance(value, dict):
        return {k: _plain_number(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_number(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    item = getattr(value, "item", None)
    size = getattr(value, "size", None)
    numel = getattr(value, "numel", None)
    if callable(item) and ((callable(numel) and numel() == 1) or size == 1):
        try:
            number = item()
        except (RuntimeError, ValueError, TypeError) as e:  # e.g. a tensor on the meta device
            raise BadInput(f"{path}: {type(value).__name__} holds no number to store: {str(e)[:80]}",
                           "give metrics as Python numbers, e.g. loss.item()") from None
        if isinstance(number, numbers.Real) and not isinstance(number, (int, float)):  # (numpy's
            return float(number)  # longdouble's item() is a longdouble again)
        return number
    if callable(item) and (callable(numel) or isinstance(size, int)):  # a tensor or array of another size
        count = numel() if callable(numel) else size
        raise BadInput(f"{path}: a {type(value).__name__} of {count} elements is no metric",
                       "give metrics as Python numbers, e.g. loss.item(), or lists of them, e.g. t.tolist()")
    return value


def _names_arg(names, what: str) -> list[str]:
    """An argument naming components or tensors (a name, or an iterable of names; None: none) as
    a list of names, or BadInput."""
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    try:
        out = list(names) if not isinstance(names, (bytes, bytearray)) else None
    except TypeError:
        out = None
    if out is None or not all(isinstance(n, str) for n in out):
        raise BadInput(f"{what} must be a list of names (str), not {type(names).__name__}"
                       + (f" holding a {type(next(n for n in out if not isinstance(n, str))).__name__}" if out else ""),
                       f'e.g. {what}=["name"]')
    return out


def split_walk(rev: str) -> tuple[str, str]:
    """("main", "~2^") for "main~2^": the revision and its trailing walk of ~N and ^N (ASCII digits,
    as git); (rev, "") without one. A scan from the end: a regex with a lazy prefix took quadratic
    time to refuse a long run of ~ followed by anything else (h67)."""
    i = len(rev)
    while i and rev[i - 1] in "~^0123456789":
        i -= 1
    ops = [j for j in range(i, len(rev)) if rev[j] in "~^"]
    return (rev[:ops[0]], rev[ops[0]:]) if ops and ops[0] else (rev, "")


def _file_at_or_above(path: str) -> str | None:
    """The nearest path at or above `path` that exists, when it is a file (or a link to one), not a
    folder: part of an output path the user gave. None otherwise (a link to nothing: said where
    the write fails)."""
    while path and not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return path if path and os.path.exists(path) and not os.path.isdir(path) else None


def _landed(cid: str, ref: str) -> str:
    return f"commit {cid} landed on {ref.removeprefix('refs/heads/')}"


BIG_KEPT = 2  # a diff reads two large trees
OBJECT_CACHE_BYTES = 16 << 20  # commits and trees kept decoded, by stored size (decoded: ~5x)


class _ObjectCache:
    """Commits and trees a Repo has read, the most recently used kept up to a byte budget (a
    long-lived Repo loading many commits of a large model grew without end)."""

    def __init__(self, limit: int | None = None):
        self.limit, self._bytes = OBJECT_CACHE_BYTES if limit is None else limit, 0
        self._items: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._big: OrderedDict[str, dict] = OrderedDict()  # the last BIG_KEPT objects over half the budget
        self._lock = threading.Lock()
        forks.track(self)

    def _after_fork(self) -> None:  # (see mvc.forks: a lock another thread held, items half put)
        self._lock = threading.Lock()
        self._items, self._big, self._bytes = OrderedDict(), OrderedDict(), 0

    def get(self, oid: str) -> dict | None:
        with self._lock:
            if oid in self._big:
                return self._big[oid]
            hit = self._items.get(oid)
            if hit is None:
                return None
            self._items.move_to_end(oid)
            return hit[0]

    def put(self, oid: str, obj: dict, size: int) -> None:
        """Keep `obj`, dropping the least recently used beyond the budget. The last two objects
        larger than half the budget (trees of ~50,000 tensors or more) have places of their own, so
        that loading from one again, or a diff of two, does not read and decode them again."""
        with self._lock:
            if size > self.limit // 2:
                self._big[oid] = obj
                self._big.move_to_end(oid)
                while len(self._big) > BIG_KEPT:
                    self._big.popitem(last=False)
                return
            if oid in self._items:
                return
            self._items[oid] = (obj, size)
            self._bytes += size
            while self._bytes > self.limit:
                _oid, (_obj, old) = self._items.popitem(last=False)
                self._bytes -= old

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._big.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items) + len(self._big)


def _qualified_ref(name: str) -> str | None:
    """`refs/...`, `heads/X`, `tags/X` or `remotes/X` as the ref it names (heads/main@{1}, as git
    reads it); None for a short name."""
    return name if name.startswith("refs/") else f"refs/{name}" \
        if name.startswith(("heads/", "tags/", "remotes/")) else None

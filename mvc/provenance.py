"""Who made a commit and from which code: the author string and the git work tree's sha, branch
and dirty flag.

The git work tree is found as git finds it, without running git: upward from the mvc repository's
real path, not entering a directory listed in GIT_CEILING_DIRECTORIES, not crossing a file-system
boundary unless GIT_DISCOVERY_ACROSS_FILESYSTEM is true; a `.git` file (worktree, submodule,
--separate-git-dir) leads to its git dir, and one git cannot use ends the search. Variables that
point git elsewhere (GIT_DIR, GIT_WORK_TREE, ...) are ignored: provenance always describes the
work tree around the mvc repository. The sha and branch are read from the git dir's files (HEAD,
loose refs, packed-refs), so they are recorded even where git cannot run; only the dirty flag needs
git itself (through GitPython, imported lazily and only inside a git work tree), and when git cannot
give it the record says why (`"dirty": null, "error": ...`).
"""
from __future__ import annotations

import contextlib
import getpass
import os
import re
import sys
import threading

from . import forks
from .errors import BadInput
from .files import hostname

# environment variables that make git use another repository, index or object store than the one
# around the mvc repository: removed for the git processes mvc runs (GIT_CEILING_DIRECTORIES and
# GIT_DISCOVERY_ACROSS_FILESYSTEM are read by git_work_tree itself, and harmless to git)
REDIRECTING = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
               "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")
_ENV_LOCK = threading.RLock()


@forks.on_fork
def _new_env_lock() -> None:  # (see mvc.forks)
    global _ENV_LOCK
    _ENV_LOCK = threading.RLock()
_LINE_BREAK = re.compile("[\x00\n\r]")  # what would end an author's line (other controls are shown escaped)
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def check_author(author: str, where: str) -> str:
    """`author` if it is one line (no line break or NUL: it could forge lines of a log); else
    BadInput naming `where` it came from. Other control characters are kept, and human output
    shows them escaped (mvc.quoting)."""
    m = _LINE_BREAK.search(author)
    if m:
        raise BadInput(f"the author from {where} holds a line break or NUL: {m.group()!r} at position {m.start()}",
                       "an author is one line of text, e.g. 'Ada <ada@example.org>'")
    return author


def _utf8_escaped(text: str) -> str:
    """Text git read as bytes (a branch name, a config value: git takes any bytes) with the bytes
    that are not UTF-8 written as backslash escapes (b'caf\\xe9' -> 'caf\\\\xe9'): mvc records UTF-8
    only, and a commit must not fail over what git holds."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def default_author(root: str | None = None) -> str:
    """MVC_AUTHOR, else git config's user.name <user.email> (inside a git work tree), else user@host."""
    env = os.environ.get("MVC_AUTHOR")
    if env:
        return check_author(env, "MVC_AUTHOR")
    found = git_work_tree(root) if root else None
    if found:
        name, email = (_utf8_escaped(_git_config(*found, key)) for key in ("user.name", "user.email"))
        if name:
            check_author(name, "git config user.name")
            check_author(email, "git config user.email")
            return f"{name} <{email}>" if email else name
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return check_author(f"{user}@{hostname()}", "the user and host name")


# -- finding the git work tree -------------------------------------------------------------------
def _ceilings() -> list[str]:
    """GIT_CEILING_DIRECTORIES as git reads it: absolute entries only, resolved through symbolic
    links unless they follow an empty entry."""
    out, resolve = [], True
    for entry in os.environ.get("GIT_CEILING_DIRECTORIES", "").split(os.pathsep):
        if not entry:
            resolve = False
        elif os.path.isabs(entry):
            out.append(os.path.realpath(entry) if resolve else os.path.normpath(entry))
    return out


def _below(path: str, top: str) -> bool:
    """Whether `path` lies strictly below the directory `top`."""
    return path != top and path.startswith(top.rstrip(os.sep) + os.sep)


def _env_true(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("true", "yes", "on"):
        return True
    try:
        return int(value) != 0
    except ValueError:
        return False


def git_common_dir(git_dir: str) -> str:
    """Where a git dir keeps what its worktrees share (objects, refs, config, info/exclude): the
    folder its `commondir` file names, else the git dir itself."""
    try:
        with open(os.path.join(git_dir, "commondir"), "rb") as f:
            named = os.fsdecode(f.read(4096).strip())
    except OSError:
        return git_dir
    return os.path.normpath(os.path.join(git_dir, named)) if named else git_dir


def _is_git_dir(d: str) -> bool:
    """git's own test (is_git_directory), less HEAD's contents: HEAD, and objects/ and refs/ in the
    common dir."""
    common = git_common_dir(d)
    return (os.path.isfile(os.path.join(d, "HEAD")) and os.path.isdir(os.path.join(common, "objects"))
            and os.path.isdir(os.path.join(common, "refs")))


def _read_gitfile(path: str) -> str | None:
    """The git dir a `.git` file names ("gitdir: PATH", relative to its folder); None when it is
    not such a file or names no usable git dir."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    if not data.startswith(b"gitdir: "):
        return None
    named = os.fsdecode(data[len(b"gitdir: "):].rstrip(b"\r\n"))  # (as git reads it)
    if not named:
        return None
    gd = os.path.normpath(os.path.join(os.path.dirname(path), named))
    return gd if _is_git_dir(gd) else None


def git_work_tree(path: str) -> tuple[str, str] | None:
    """(top of the git work tree around `path`, its git dir), found as git finds it (see the module
    docstring), without running git; None outside git or when the `.git` found is unusable."""
    p = os.path.realpath(path)
    ceilings = [c for c in _ceilings() if _below(p, c)]  # a ceiling only stops a search from below it
    one_fs = not _env_true("GIT_DISCOVERY_ACROSS_FILESYSTEM")
    try:
        device = os.stat(p).st_dev
    except OSError:
        return None
    while True:
        candidate = os.path.join(p, ".git")
        if os.path.isdir(candidate):
            if _is_git_dir(candidate):
                return p, candidate
        elif os.path.isfile(candidate):  # a worktree's, submodule's or --separate-git-dir link
            gd = _read_gitfile(candidate)
            return (p, gd) if gd else None  # git stops at a .git file it cannot use
        parent = os.path.dirname(p)
        if parent == p or not all(_below(parent, c) for c in ceilings):
            return None
        if one_fs:
            try:
                if os.stat(parent).st_dev != device:
                    return None
            except OSError:
                return None
        p = parent


# -- reading HEAD without git --------------------------------------------------------------------
def _read_small(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "surrogateescape").strip()
    except OSError:
        return None


def _resolve_ref(git_dir: str, ref: str, depth: int = 0) -> str | None:
    """The sha a ref names, from its loose file (the worktree's git dir, then the common dir) or
    packed-refs; None when it does not exist (an unborn branch) or cannot be read."""
    common = git_common_dir(git_dir)
    if depth > 5 or ".." in ref.split("/"):
        return None
    for base in dict.fromkeys((git_dir, common)):
        text = _read_small(os.path.join(base, *ref.split("/")))
        if text is None:
            continue
        if text.startswith("ref: "):
            return _resolve_ref(git_dir, text[5:].strip(), depth + 1)
        return text if _SHA.fullmatch(text) else None
    try:
        with open(os.path.join(common, "packed-refs"), "rb") as f:
            for line in f:
                parts = line.decode("utf-8", "surrogateescape").split()
                if len(parts) == 2 and parts[1] == ref and _SHA.fullmatch(parts[0]):
                    return parts[0]
    except OSError:
        pass
    return None


REFTABLE_HEAD = "ref: refs/heads/.invalid"  # what a reftable repository's HEAD file holds (refs are elsewhere)


def _head(git_dir: str, top: str | None = None) -> tuple[str | None, str | None, bool]:
    """(sha, branch, detached) of a git dir's HEAD, read from its files; a reftable repository's
    (git >= 2.45 --ref-format=reftable), whose files hold a placeholder, from git itself."""
    head = _read_small(os.path.join(git_dir, "HEAD"))
    if head is None:
        return None, None, False
    if head == REFTABLE_HEAD:
        return _head_from_git(top or os.path.dirname(git_dir), git_dir)
    if head.startswith("ref: "):
        ref = head[5:].strip()
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None
        return _resolve_ref(git_dir, ref), branch, False
    return (head if _SHA.fullmatch(head) else None), None, True


def _head_from_git(top: str, git_dir: str) -> tuple[str | None, str | None, bool]:
    """(sha, branch, detached) of HEAD as git says; (None, None, False) when git cannot tell."""
    try:
        g = import_git().Git(top)
        env = git_env(top, git_dir)
        ref = g.symbolic_ref("-q", "HEAD", env=env, with_extended_output=True, with_exceptions=False)
        sha = g.rev_parse("-q", "--verify", "HEAD", env=env, with_extended_output=True, with_exceptions=False)
    except Exception:  # git missing, too old for reftable, refusing the repository
        return None, None, False
    ref_out = ref[1].strip() if ref[0] == 0 else ""
    sha_out = sha[1].strip() if sha[0] == 0 and _SHA.fullmatch(sha[1].strip()) else None
    if ref_out.startswith("refs/heads/"):
        return sha_out, ref_out[len("refs/heads/"):], False
    return sha_out, None, sha_out is not None


def git_current_branch(root: str) -> tuple[str | None, bool]:
    """(git's current branch name, detached?) for the work tree holding `root`; (None, False) outside git."""
    found = git_work_tree(root)
    if not found:
        return None, False
    _sha, branch, detached = _head(found[1], found[0])
    return branch, detached  # callers check the branch is a valid mvc name


# -- running git ----------------------------------------------------------------------------------
def import_git():
    """GitPython, imported so that a git binary it cannot find never fails the import
    (GIT_PYTHON_REFRESH=quiet unless the user chose otherwise): only running git fails then."""
    if "git" in sys.modules:
        return sys.modules["git"]
    with _ENV_LOCK:
        added = "GIT_PYTHON_REFRESH" not in os.environ
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        try:
            import git
        finally:
            if added:
                os.environ.pop("GIT_PYTHON_REFRESH", None)
    return git


def git_env(top: str, git_dir: str) -> dict[str, str]:
    """What a git command run for the work tree around the mvc repository is given on top of
    os.environ (which is never changed: other threads run on): the REDIRECTING variables the
    environment sets, pointed back at that work tree. Unset ones stay unset, so git still checks
    who owns the repository (safe.directory) as it does for one it discovers."""
    if "GIT_DIR" in os.environ:  # git checks who owns a repository it discovers, not one GIT_DIR names
        _check_owner(top)
    common = git_common_dir(git_dir)
    own = {"GIT_DIR": git_dir, "GIT_WORK_TREE": top, "GIT_INDEX_FILE": os.path.join(git_dir, "index"),
           "GIT_COMMON_DIR": common, "GIT_OBJECT_DIRECTORY": os.path.join(common, "objects"),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": "", "GIT_NAMESPACE": ""}
    return {k: v for k, v in own.items() if k in os.environ}


def _check_owner(top: str) -> None:
    """git's safe.directory rule, for when mvc names the repository (GIT_DIR) and git would not
    check: a work tree owned by another user is refused (its config could run commands, e.g.
    core.fsmonitor). safe.directory settings are not read: such a repository gets no dirty flag."""
    uid = os.geteuid()
    if uid == 0 and os.environ.get("SUDO_UID", "").isdigit():
        uid = int(os.environ["SUDO_UID"])  # (as git does under sudo)
    if os.stat(top).st_uid != uid:
        raise BadInput(f"detected dubious ownership in repository at '{top}' (owned by another user)")


def _git_config(top: str, git_dir: str, key: str) -> str:
    """git config's value of `key` for that work tree ("" when unset): through git, else, where git
    cannot run, read from the config files by GitPython's parser."""
    try:
        return str(import_git().Git(top).config("--get", key, env=git_env(top, git_dir)))
    except Exception as e:
        git = sys.modules.get("git")
        if git is None or not isinstance(e, git.GitCommandNotFound):
            return ""  # unset (git exits 1), or git refusing the repository: no author from it
    try:
        section, _, option = key.rpartition(".")  # GitPython reads the system, user and repository
        return str(import_git().Repo(top).config_reader().get_value(section, option, ""))  # files, includes too
    except Exception:  # no GitPython, an unreadable config
        return ""


@contextlib.contextmanager
def plain_git_env():
    """Within it, the REDIRECTING variables are out of os.environ, so that GitPython's Repo (which
    reads GIT_DIR and GIT_WORK_TREE itself) works on the repository it is given: for the `mvc
    hooks` commands, one thread in a short process. Library code passes git_env() per command."""
    with _ENV_LOCK:
        saved = {k: os.environ.pop(k) for k in REDIRECTING if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def git_failure(e: BaseException) -> str:
    """Why git could not be used, in a few words: 'git not found on PATH', git's own fatal message, ..."""
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "git":
        return "GitPython is not installed"
    if isinstance(e, ImportError):  # GitPython found no git binary (GIT_PYTHON_REFRESH=raise), ...
        return "GitPython cannot start: " + (str(e).strip().splitlines() or ["ImportError"])[0]
    if isinstance(e, BadInput):
        return e.message
    git = sys.modules.get("git")
    if git is not None and isinstance(e, git.GitCommandNotFound):
        exe = git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"
        return "git not found" + (" on PATH" if exe == "git" else f": {exe}")
    if git is not None and isinstance(e, git.GitCommandError):
        stderr = str(e.stderr or "")  # GitPython's "\n  stderr: '...'"
        m = re.search(r"(?:fatal|error): ([^\n]+(?:\n[ \t]+[^\n]+)*)", stderr[:-1] if stderr.endswith("'") else stderr)
        return " ".join(m.group(1).split()) if m else f"git exited with status {e.status}"  # (with its indented lines)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def git_provenance(root: str) -> dict:
    """Code provenance of the git work tree around the repository: sha, branch, dirty flag; {}
    outside git. Never fails a commit: a dirty flag git cannot give is null, with the reason."""
    found = git_work_tree(root)
    if not found:
        return {}
    top, git_dir = found
    sha, branch, _detached = _head(git_dir, top)
    if branch is not None:
        branch = _utf8_escaped(branch)
    record = {"sha": sha, "branch": branch, "dirty": None}
    try:  # changes to tracked files, staged or not (untracked files are not scanned)
        status = import_git().Git(top).status("--porcelain", "--untracked-files=no",  # (without refreshing
                                              env={**git_env(top, git_dir), "GIT_OPTIONAL_LOCKS": "0"})  # git's index)
        record["dirty"] = bool(status.strip())
    except Exception as e:  # git missing or refusing (dubious ownership), a broken repository
        record["error"] = git_failure(e)
    return {"git": record}

"""Who made a commit and from which code: the author string and the git work tree's sha, branch
and dirty flag (GitPython is imported only when the repository sits inside a git work tree)."""
from __future__ import annotations

import getpass
import os

from .files import hostname


def default_author(root: str | None = None) -> str:
    env = os.environ.get("MVC_AUTHOR")
    if env:
        return env
    if root and git_dir_of(root):
        try:
            import git
            reader = git.Repo(root, search_parent_directories=True).config_reader()
            name = reader.get_value("user", "name", "")
            email = reader.get_value("user", "email", "")
            if name:
                return f"{name} <{email}>" if email else str(name)
        except Exception:
            pass
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{hostname()}"


def git_dir_of(path: str) -> str | None:
    """The .git directory of the work tree containing `path`, found without importing GitPython."""
    p = os.path.abspath(path)
    while True:
        candidate = os.path.join(p, ".git")
        if os.path.isdir(candidate):
            return candidate
        if os.path.isfile(candidate):
            try:  # a worktree's or submodule's `.git` file; anything else there is not git's
                with open(candidate, encoding="utf-8", errors="replace") as f:
                    line = f.read(4096).strip()
            except OSError:
                line = ""
            if line.startswith("gitdir:"):
                return os.path.normpath(os.path.join(p, line[7:].strip()))
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def git_current_branch(root: str) -> tuple[str | None, bool]:
    """(git's current branch name, detached?) for the work tree holding `root`; (None, False) outside git."""
    gd = git_dir_of(root)
    if not gd:
        return None, False
    try:
        with open(os.path.join(gd, "HEAD"), encoding="utf-8", errors="replace") as f:
            head = f.read(4096).strip()
    except OSError:
        return None, False
    if head.startswith("ref: refs/heads/"):
        return head[len("ref: refs/heads/"):], False  # callers check it is a valid mvc name
    return None, True


def git_provenance(root: str) -> dict:
    """Code provenance of the git work tree around the repository: sha, branch, dirty flag."""
    if not git_dir_of(root):
        return {}
    try:
        import git
        g = git.Repo(root, search_parent_directories=True)
        try:
            sha = g.head.commit.hexsha
        except ValueError:
            sha = None
        branch = None if g.head.is_detached else g.active_branch.name
        dirty = g.is_dirty(untracked_files=False)
        return {"git": {"sha": sha, "branch": branch, "dirty": dirty}}
    except Exception as e:  # git not installed or a broken repository: record why, never fail a commit
        return {"git": {"error": type(e).__name__}}

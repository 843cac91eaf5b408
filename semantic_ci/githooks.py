"""Installing git hooks (pre-merge-commit, pre-commit, pre-push) that run semantic CI before a
merge or push.

Hooks chain to existing ones, call mvc through this interpreter's absolute path, and set
`merge.ff=false` (pre-merge-commit does not run for fast-forward merges); uninstall undoes both.
pre-commit gates the commit that concludes a merge git stopped (a conflict, or a merge the gate
blocked, finished with `git commit` or `git merge --continue`, which run no pre-merge-commit);
other commits pass through it at the cost of one `git rev-parse`.
"""
from __future__ import annotations

import os
import shlex
import stat
import sys

from mvc.errors import MvcError

HOOKS = ("pre-merge-commit", "pre-commit", "pre-push")
MARKER = "# installed by mvc hooks install"
CHAINED = ".mvc-chained"


def _git(root):
    import git
    try:
        return git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise MvcError(f"{root} is not inside a git work tree", "git hooks need a git repository") from None


def _hooks_dir(g) -> str:
    path = g.git.rev_parse("--git-path", "hooks")
    return path if os.path.isabs(path) else os.path.join(g.working_tree_dir, path)


def _script(name: str, mvc_root: str) -> str:
    """The hook: chains to the hook it replaced, then runs semantic CI for the mvc repository at
    `mvc_root` (relative to the git work tree: the hook runs at its top, the repository may sit
    in a subfolder)."""
    py = shlex.quote(sys.executable)
    root = shlex.quote(mvc_root)
    if name == "pre-push":  # git feeds the pushed refs on stdin: give both hooks a copy
        return f"""#!/bin/sh
{MARKER}
hook_dir=$(dirname "$0")
input=$(cat)
if [ -x "$hook_dir/{name}{CHAINED}" ]; then
    printf '%s\\n' "$input" | "$hook_dir/{name}{CHAINED}" "$@" || exit $?
fi
printf '%s\\n' "$input" | exec {py} -m semantic_ci.git_hook {name} --mvc-root {root} "$@"
"""
    only_merges = ""
    if name == "pre-commit":  # only the commit that concludes a stopped merge is gated
        only_merges = '[ -f "$(git rev-parse --git-dir)/MERGE_HEAD" ] || exit 0\n'
    return f"""#!/bin/sh
{MARKER}
hook_dir=$(dirname "$0")
if [ -x "$hook_dir/{name}{CHAINED}" ]; then
    "$hook_dir/{name}{CHAINED}" "$@" || exit $?
fi
{only_merges}exec {py} -m semantic_ci.git_hook {name} --mvc-root {root} "$@"
"""


def _ours(path: str) -> bool:
    try:
        with open(path) as f:
            return MARKER in f.read()
    except (OSError, UnicodeDecodeError):
        return False


def install(root: str) -> dict:
    g = _git(root)
    hooks = _hooks_dir(g)
    os.makedirs(hooks, exist_ok=True)
    for name in HOOKS:  # check all before changing any: nothing is half installed
        path = os.path.join(hooks, name)
        if os.path.exists(path) and not _ours(path) and os.path.exists(path + CHAINED):
            raise MvcError(f"{path} is not mvc's hook and {name}{CHAINED} (an earlier chained hook) exists too",
                           "move one of them away; mvc never overwrites a hook it chains to")
    chained = []
    for name in HOOKS:
        path = os.path.join(hooks, name)
        if os.path.exists(path) and not _ours(path):
            os.replace(path, path + CHAINED)
            chained.append(name)
        with open(path, "w") as f:
            f.write(_script(name, os.path.relpath(os.path.abspath(root), g.working_tree_dir)))
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if _config(g, "--get", "mvc.previousMergeFf") is None:  # (a second install keeps the first's record)
        _config(g, "mvc.previousMergeFf", _config(g, "--get", "merge.ff") or "(unset)")
        _config(g, "mvc.mergeSection", "present" if _config(g, "--get-regexp", r"^merge\.") else "absent")
    _config(g, "merge.ff", "false")
    return {"hooks_dir": hooks, "installed": list(HOOKS), "chained": chained, "merge.ff": "false"}


def uninstall(root: str) -> dict:
    g = _git(root)
    hooks = _hooks_dir(g)
    removed, kept = [], []
    for name in HOOKS:
        path = os.path.join(hooks, name)
        if _ours(path):
            os.unlink(path)
            removed.append(name)
            if os.path.exists(path + CHAINED):
                os.replace(path + CHAINED, path)
        elif os.path.exists(path + CHAINED):  # our hook was replaced by another tool's meanwhile
            kept.append(name + CHAINED)
    previous = _config(g, "--get", "mvc.previousMergeFf")
    if previous is not None:
        if previous == "(unset)":
            _config(g, "--unset", "merge.ff")
            if _config(g, "--get", "mvc.mergeSection") == "absent" and not _config(g, "--get-regexp", r"^merge\."):
                _config(g, "--remove-section", "merge")  # the section install made, now empty
        else:
            _config(g, "merge.ff", previous)
        for key in ("mvc.previousMergeFf", "mvc.mergeSection"):
            _config(g, "--unset", key)
        if not _config(g, "--get-regexp", r"^mvc\."):
            _config(g, "--remove-section", "mvc")
    return {"removed": removed, "kept": kept}


def _config(g, *args) -> str | None:
    """`git config --local ARGS` through git itself, which edits the file in place (comments and
    layout kept; GitPython's writer rewrote the whole file); None when git says there is nothing."""
    import git
    try:
        return g.git.config("--local", *args)
    except git.GitCommandError:
        return None

"""Installing git hooks (pre-merge-commit, pre-commit, pre-push) that run semantic CI before a
merge or push.

Hooks chain to existing ones, call mvc through this interpreter's absolute path, and set
`merge.ff=false` (pre-merge-commit does not run for fast-forward merges); uninstall undoes both (a
merge.ff the user set since stays). They go only into the repository's own git folder: a
core.hooksPath elsewhere (shared by other repositories, or tracked in the work tree) is refused.
pre-commit gates the commit that concludes a merge git stopped (a conflict, or a merge the gate
blocked, finished with `git commit` or `git merge --continue`, which run no pre-merge-commit);
other commits pass through it at the cost of one `git rev-parse`.

An existing hook, a symbolic link included (even one whose target does not exist), is chained by
renaming it, never written through; new hook files are created without following links, and a
failed install undoes what it did. One work tree's hooks gate one mvc repository: installing for a
second one is refused (naming the first), and uninstall removes only hooks that gate its own. The
git work tree is the one around the mvc repository, found as mvc.provenance finds it (variables
such as GIT_DIR are ignored); git that cannot run or refuses the repository is an MvcError.
"""
from __future__ import annotations

import os
import shlex
import sys

from mvc.errors import MvcError, os_error_text
from mvc.provenance import git_failure, git_work_tree, import_git, plain_git_env

HOOKS = ("pre-merge-commit", "pre-commit", "pre-push")
MARKER = "# installed by mvc hooks install"
CHAINED = ".mvc-chained"
NEW = ".mvc-new"  # a hook being written, renamed over the hook once complete


def _unusable(e: BaseException) -> MvcError:
    git = sys.modules.get("git")
    missing = isinstance(e, ImportError) or (git is not None and isinstance(e, git.GitCommandNotFound))
    return MvcError(f"cannot use git here: {git_failure(e)}",
                    "install git, put it on PATH or set GIT_PYTHON_GIT_EXECUTABLE" if missing
                    else "run git status here to see why; nothing was changed")


def _git(root) -> tuple:
    """(GitPython's Repo of the work tree around `root`, that work tree's top); call it within
    plain_git_env()."""
    found = git_work_tree(root)
    if not found:
        raise MvcError(f"{root} is not inside a git work tree", "git hooks need a git repository")
    try:
        return import_git().Repo(found[0]), found[0]
    except Exception as e:  # no GitPython, a git dir GitPython cannot read
        raise _unusable(e) from None


def _hooks_dir(g, top: str) -> str:
    """Where git runs hooks from (core.hooksPath honoured); the first git command run: one git
    cannot run, or that refuses the repository (dubious ownership), fails here, before any change."""
    try:
        path = g.git.rev_parse("--git-path", "hooks")
    except Exception as e:
        raise _unusable(e) from None
    return path if os.path.isabs(path) else os.path.join(top, path)


def _script(name: str, mvc_root: str, mvc_path: str) -> str:
    """The hook: chains to the hook it replaced, then runs semantic CI for the mvc repository at
    `mvc_root` (relative to the git work tree: the hook runs at its top, the repository may sit
    in a subfolder), or at `mvc_path` where it was installed, for a work tree that has none there
    (a linked one: `git worktree add`). Python runs with -P: the work tree's top, which holds
    the merged branch's files, is not searched for modules (they could replace the gate's own)."""
    py = shlex.quote(sys.executable)
    root = f"{shlex.quote(mvc_root)} --mvc-path {shlex.quote(mvc_path)}"
    if name == "pre-push":  # git feeds the pushed refs on stdin: give both hooks a copy (none
        # when git sent none, an up-to-date push: `printf` of an empty $input wrote an empty line;
        # git ends each line it sends with a newline, which $(cat) drops and printf puts back)
        return f"""#!/bin/sh
{MARKER}
hook_dir=$(dirname "$0")
input=$(cat)
feed() {{ [ -z "$input" ] || printf '%s\\n' "$input"; }}
if [ -x "$hook_dir/{name}{CHAINED}" ]; then
    feed | "$hook_dir/{name}{CHAINED}" "$@" || exit $?
fi
feed | exec {py} -P -m semantic_ci.git_hook {name} --mvc-root {root} "$@"
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
{only_merges}exec {py} -P -m semantic_ci.git_hook {name} --mvc-root {root} "$@"
"""


def _read_hook(path: str) -> bytes | None:
    """The bytes of a hook that is a regular file (not a link: mvc never makes one), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _ours(path: str) -> bool:
    data = _read_hook(path)
    return data is not None and MARKER.encode() in data


def _gated_root(path: str) -> str | None:
    """The mvc repository (relative to the work tree's top) that mvc's hook at `path` gates; None
    when the hook names none (one written before hooks named it)."""
    for line in (_read_hook(path) or b"").decode("utf-8", "surrogateescape").splitlines():
        if "semantic_ci.git_hook" not in line:
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if "--mvc-root" in words[:-1]:
            return words[words.index("--mvc-root") + 1]
    return None


def _other_root(hooks: str, rel: str) -> str | None:
    """Another mvc repository that mvc's installed hooks gate, if any."""
    for name in HOOKS:
        path = os.path.join(hooks, name)
        other = _gated_root(path) if _ours(path) else None
        if other is not None and os.path.normpath(other) != os.path.normpath(rel):
            return other
    return None


def _write_new(path: str, text: str) -> str:
    """`text` in a new executable file beside `path` (created, never opened through a link)."""
    tmp = path + NEW
    try:
        os.unlink(tmp)  # a leftover of an install that was killed (a link is removed, not followed)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o755)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
        os.chmod(tmp, os.stat(tmp).st_mode | 0o111)  # executable whatever the umask (git skips others)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _refuse_foreign_hooks_dir(g, top: str, hooks: str) -> None:
    """mvc's hooks go only into this repository's own git folder: a core.hooksPath outside it is
    shared by other repositories (a user-wide one: they would all run this repository's gate, and
    another install or an uninstall there would re-point or remove it) or tracked in the work tree
    (the hooks, which name this machine's paths, would be committed)."""
    try:
        common = g.git.rev_parse("--git-common-dir")
    except Exception as e:
        raise _unusable(e) from None
    common = os.path.realpath(common if os.path.isabs(common) else os.path.join(top, common))
    real = os.path.realpath(hooks)
    if real != common and not real.startswith(common + os.sep):
        raise MvcError(f"git runs hooks from {hooks} (core.hooksPath), outside this repository's git folder "
                       f"{common}: a hooks folder other repositories share, or one the work tree tracks",
                       "mvc installs its hooks only into the repository's own; point a hook of yours at "
                       "python -m semantic_ci.git_hook pre-merge-commit|pre-commit|pre-push, or unset "
                       "core.hooksPath for this repository")


def install(root: str) -> dict:
    with plain_git_env():
        g, top = _git(root)
        hooks = _hooks_dir(g, top)
        _refuse_foreign_hooks_dir(g, top, hooks)
        rel = os.path.relpath(os.path.realpath(root), top)
        other = _other_root(hooks, rel)  # check all before changing any: nothing is half installed
        if other is not None:
            raise MvcError(f"the git hooks in {hooks} already gate the mvc repository {other} of this work tree",
                           f"one work tree's hooks gate one mvc repository: run mvc hooks uninstall in "
                           f"{os.path.join(top, other)} first")
        for name in HOOKS:
            path = os.path.join(hooks, name)
            if os.path.lexists(path) and not _ours(path) and os.path.lexists(path + CHAINED):
                raise MvcError(f"{path} is not mvc's hook and {name}{CHAINED} (an earlier chained hook) exists too",
                               "move one of them away; mvc never overwrites a hook it chains to")
        chained, made, done = [], [], []
        try:
            os.makedirs(hooks, exist_ok=True)
            for name in HOOKS:
                path = os.path.join(hooks, name)
                made.append(_write_new(path, _script(name, rel, os.path.realpath(root))))
                if os.path.lexists(path) and not _ours(path):  # a link is renamed itself, never followed
                    os.replace(path, path + CHAINED)
                    chained.append(name)
                    done.append((name, True))
                elif not os.path.lexists(path):
                    done.append((name, False))
                os.replace(made.pop(), path)
            if _config(g, "--get", "mvc.previousMergeFf") is None:  # (a second install keeps the first's record)
                _config(g, "mvc.previousMergeFf", _config(g, "--get", "merge.ff") or "(unset)")
                _config(g, "mvc.mergeSection", "present" if _config(g, "--get-regexp", r"^merge\.") else "absent")
            _config(g, "merge.ff", "false")
        except BaseException as e:
            for tmp in made:
                _quietly(os.unlink, tmp)
            for name, was_chained in reversed(done):  # undo: what was there before is back
                path = os.path.join(hooks, name)
                if was_chained:
                    _quietly(os.replace, path + CHAINED, path)
                elif _ours(path):
                    _quietly(os.unlink, path)
            if isinstance(e, OSError):
                raise MvcError(f"could not install the git hooks in {hooks}: {os_error_text(e)}",
                               "the hooks there are as they were") from None
            git = sys.modules.get("git")
            if git is not None and isinstance(e, git.CommandError):  # git stopped working midway
                raise _unusable(e) from None
            raise
    return {"hooks_dir": hooks, "installed": list(HOOKS), "chained": chained, "merge.ff": "false"}


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def uninstall(root: str) -> dict:
    with plain_git_env():
        g, top = _git(root)
        hooks = _hooks_dir(g, top)
        rel = os.path.relpath(os.path.realpath(root), top)
        other = _other_root(hooks, rel)
        if other is not None:
            raise MvcError(f"the git hooks in {hooks} gate the mvc repository {other} of this work tree, not this one",
                           f"run mvc hooks uninstall in {os.path.join(top, other)} to remove them")
        removed, kept = [], []
        for name in HOOKS:
            path = os.path.join(hooks, name)
            if _ours(path):
                os.unlink(path)
                removed.append(name)
                if os.path.lexists(path + CHAINED):  # (a chained link is renamed back, not followed)
                    os.replace(path + CHAINED, path)
            elif os.path.lexists(path + CHAINED):  # our hook was replaced by another tool meanwhile
                kept.append(name + CHAINED)
        previous = _config(g, "--get", "mvc.previousMergeFf")
        now = _config(g, "--get", "merge.ff")
        if previous is not None and now not in (None, "false"):  # set by the user since: theirs stays
            previous = None
            for key in ("mvc.previousMergeFf", "mvc.mergeSection"):
                _config(g, "--unset", key)
            if not _config(g, "--get-regexp", r"^mvc\."):
                _config(g, "--remove-section", "mvc")
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
    layout kept; GitPython's writer rewrote the whole file); None when git says there is nothing
    (a --get of an unset key, an --unset or --remove-section of one not there). Any other failure
    (a stale config.lock, a config file we may not write) is an MvcError: a merge.ff said to be set
    must be set, or fast-forward merges would skip the gate."""
    git = import_git()
    try:
        return g.git.config("--local", *args)
    except git.GitCommandError as e:
        nothing = {"--get": 1, "--get-regexp": 1, "--unset": 5}.get(args[0]) == e.status or \
            (args[0] == "--remove-section" and "no such section" in str(e.stderr))
        if nothing:
            return None
        said = str(e.stderr)
        hint = ("a stale .git/config.lock: remove it if no git runs, then run it again" if "could not lock" in said
                else "free some space on the disk and run it again" if "space" in said.lower() or _disk_full(g)
                else "fix what git says and run it again")
        raise MvcError(f"git config {' '.join(args)} failed: {git_failure(e)}", hint) from None


def _disk_full(g) -> bool:
    """Whether the disk of the repository's git folder has (almost) no room left: git says only
    that it failed to write its new config file."""
    import shutil
    try:
        return shutil.disk_usage(g.git_dir).free < 1 << 20
    except (OSError, AttributeError):
        return False

"""clone: a new repository from a remote (full or lazy), resumable when interrupted."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import warnings

from ..errors import BadInput, BadName, CorruptObject, FormatTooNew, MvcError, ObjectMissing
from ..files import pid_alive
from ..objects import check_new_ref_name, check_ref_name
from ..repo import MVC_DIR, Repo
from ..transfer import DEFAULT_JOBS, Progress
from ..transport import (Transport, check_endpoint, normalize_url, open_transport, promisor_remote,
                         remote_section)
from .config import DEFAULT_REMOTE, add_remote, list_remotes
from .fetching import fetch


def default_clone_dir(url: str) -> str:
    """The folder `mvc clone URL` makes: the URL's last part less `.mvc` (team.mvc: team), that of
    the repository around it for a repository's own .mvc (/x/b/.mvc: b, as git clone /x/b/.git)."""
    parts = url.rstrip("/").split("://", 1)[-1].rstrip("/").rsplit("/", 2)
    tail = parts[-2] if parts[-1] == ".mvc" and len(parts) > 1 else parts[-1]
    tail = tail[:-4] if tail.endswith(".mvc") and len(tail) > 4 else tail
    if not tail or tail in (".", "..", ".mvc"):
        raise BadInput(f"cannot name a directory after {url!r}", "pass DIR")
    return tail


def clone(url: str, path: str | None = None, lazy: bool = False, endpoint: str | None = None,
          jobs: int = DEFAULT_JOBS, progress: Progress | None = None,
          transport: Transport | None = None) -> tuple[Repo, dict]:
    """A new repository at `path` with remote origin = `url`, its branches fetched and the remote's
    default branch checked out as HEAD. `lazy` fetches commits and trees only. Re-running an
    interrupted clone into the same directory resumes it."""
    norm = normalize_url(url)
    endpoint = check_endpoint(endpoint, norm)
    t = transport or open_transport(norm, endpoint, jobs)
    t.require_repository()
    path = os.path.abspath(path or default_clone_dir(norm))
    head = t.head_target() or ""
    default = head[len("refs/heads/"):] if head.startswith("refs/heads/") else "main"
    try:
        check_ref_name(default)
    except BadName as e:
        warnings.warn(f"the remote's HEAD names no valid branch ({e.message}); using main")
        default = "main"
    resuming = os.path.exists(path) and (not os.path.isdir(path) or bool(os.listdir(path)))
    if resuming and not _resumable_clone(path, norm):
        raise BadInput(f"destination {path} already exists and is not empty", "clone into a new directory")
    made = not os.path.exists(path)
    top = path  # the outermost folder the clone makes (a clone into new/a/b makes new and a too)
    while made and not os.path.lexists(os.path.dirname(top)) and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    try:
        repo = _clone_setup(path, norm, endpoint, lazy, default)
    except MvcError:  # (a url the config cannot hold): a new clone leaves nothing behind
        if not resuming:
            shutil.rmtree(top if made else os.path.join(path, MVC_DIR), ignore_errors=True)
        raise
    lazy = promisor_remote(repo.config) == DEFAULT_REMOTE  # a resumed lazy clone stays lazy
    try:
        fetched = fetch(repo, DEFAULT_REMOTE, jobs, progress, transport=t)
        if f"refs/heads/{default}" in fetched["skipped_newer"]:  # (another branch alone is no clone of it)
            raise FormatTooNew(f"the default branch {default} of {norm} is of a newer format than this mvc reads",
                               "upgrade mvc")
        heads_only = lambda refs: [r[len("refs/heads/"):] for r in refs if r.startswith("refs/heads/")]  # noqa: E731
        newer = heads_only(fetched["skipped_newer"])
        bad = [b for b in heads_only(fetched["skipped"] + fetched["unreadable"]) if b not in newer]
        if (bad or newer) and not repo.refs.list("refs/remotes/origin/"):  # (not "an empty repository")
            if not bad:
                raise FormatTooNew(f"every branch of {norm} is of a newer format than this mvc reads", "upgrade mvc")
            also = (f"; {', '.join(newer)} {'is' if len(newer) == 1 else 'are'} of a newer format than this mvc "
                    "reads: upgrade mvc for those") if newer else ""
            raise CorruptObject(f"no branch of {norm} could be fetched: {', '.join(sorted(bad))} "
                                f"name{'s' if len(bad) == 1 else ''} no commit there{also}",
                                _mend(fetched, bad))
        if default in bad:  # (checking out another branch instead gave the user what they did not ask for)
            raise CorruptObject(f"the default branch {default} of {norm} names no commit there: nothing was "
                                f"checked out; its other branches were fetched", _use_another(repo, path))
    except FormatTooNew:  # no retry helps: this clone leaves nothing behind
        if not resuming:
            shutil.rmtree(path if made else repo.dir, ignore_errors=True)
        raise
    except MvcError as e:
        if isinstance(e, ObjectMissing) and t.lazy_clone_origin():
            raise  # a blob the lazy clone serving as the remote has not fetched: no retry brings it
        if "to resume" not in (e.hint or ""):  # S3 read failures say so already
            again = ("once the remote is repaired, the same mvc clone resumes"  # (damage there: a retry
                     if isinstance(e, (ObjectMissing, CorruptObject)) else     # alone meets it again)
                     "run the same mvc clone again to resume")
            e.hint = (e.hint + "; " if e.hint else "") + again
        raise
    heads = {r[len("refs/remotes/origin/"):]: v for r, v in repo.refs.list("refs/remotes/origin/").items()}
    branch = default if default in heads else ("main" if "main" in heads else min(heads, default=None))
    if branch and branch != default and head == f"refs/heads/{default}":  # (left naming a branch deleted there)
        warnings.warn(f"the remote's HEAD names branch {default}, which it does not have: checked out {branch}")
    if branch:
        repo.refs.update(f"refs/heads/{branch}", heads[branch], message=f"clone: from {norm}")
        repo.refs.set_symbolic("HEAD", f"refs/heads/{branch}")
    return repo, {"path": repo.root, "url": norm, "branch": branch, "head": heads.get(branch), "lazy": lazy,
                  "fetch": fetched}


def _mend(fetched: dict, bad: list[str]) -> str:
    """How branches of a damaged remote that name no commit there are mended from a good copy: a
    push --repair sends a commit that is not there (a push --force finds the ref up to date); a
    push --force replaces a ref naming a tree or a blob."""
    absent = {r[len("refs/heads/"):] for r in fetched.get("skipped_absent", ())}
    if absent >= set(bad):
        return "the remote is damaged: mvc push --repair REMOTE BRANCH from a good copy sends what is missing there"
    if not absent & set(bad):
        return "the remote is damaged: mvc push --force BRANCH there from a good copy"
    return ("the remote is damaged: from a good copy, mvc push --repair REMOTE BRANCH sends what is missing "
            "there, and mvc push --force BRANCH replaces a ref naming no commit")


def _use_another(repo: Repo, path: str) -> str:
    """How to use one of the branches a clone fetched (main when there is one), as commands to run."""
    names = sorted(r[len("refs/remotes/origin/"):] for r in repo.refs.list("refs/remotes/origin/"))
    fine = [n for n in names if _new_branch_name(n)]  # (a name an older mvc made may be no new branch's)
    other = "main" if "main" in fine else (fine or [None])[0]
    mine = shlex.quote(other) if other else "NAME"
    return (f"to use one: cd {shlex.quote(path)} && mvc branch {mine} {shlex.quote('origin/' + (other or names[0]))} "
            f"&& mvc switch {mine}")


def _new_branch_name(name: str) -> bool:
    try:
        check_new_ref_name(name)
        return True
    except BadName:
        return False


def _clone_setup(path: str, url: str, endpoint: str | None, lazy: bool, default: str) -> Repo:
    """The repository a clone fetches into, created or (resuming) completed: remote origin = `url`
    with its endpoint, and marked lazy when asked. Each step is redone if a killed clone did not
    finish it (a kill between `mvc init` and the origin's configuration left a repository that the
    next run could not resume; one between the url and the lazy mark resumed as a full clone)."""
    try:  # the remote's name, made by an older mvc maybe, that mvc init no longer takes: HEAD
        check_new_ref_name(default)  # points at it once the clone has fetched it
    except BadName:
        default = "main"
    resumed = os.path.isdir(os.path.join(path, MVC_DIR))  # (an existing .mvc is opened as it is)
    repo = Repo.init(path, default_branch=None if resumed else default)
    if not repo.config.has_option(remote_section(DEFAULT_REMOTE), "url"):
        add_remote(repo, DEFAULT_REMOTE, url, endpoint, promisor=lazy)
    else:
        if endpoint and repo.get_config(f"remote.{DEFAULT_REMOTE}.endpoint") != endpoint:
            repo.set_config(f"remote.{DEFAULT_REMOTE}.endpoint", endpoint)
        if lazy and promisor_remote(repo.config) != DEFAULT_REMOTE:
            repo.set_config(f"remote.{DEFAULT_REMOTE}.promisor", "true")
    return Repo(repo.root)  # re-open: a lazy clone reads through its promisor store


INIT_LEFTOVER = re.compile(r"\.mvc-init-(\d+)")  # Repo.init's temp folder, renamed to .mvc when complete


def _only_the_clones_branch(repo: Repo, path: str, url: str) -> bool:
    """No branch, or only the one a clone makes, still where the clone put it while HEAD is not
    on it yet (a clone killed while it set HEAD up): nothing of the user's is there that a resumed
    clone could move. A finished clone of `url` is BadInput saying so."""
    branches = repo.branches()
    if not branches:
        return True
    if len(branches) > 1:
        return False
    (name, oid), = branches.items()
    if repo.refs.read(f"refs/remotes/{DEFAULT_REMOTE}/{name}") != oid:
        return False
    if repo.refs.head_target() == f"refs/heads/{name}" and repo.get_config("remote.origin.url") == url:
        raise BadInput(f"destination {path} already holds a clone of {url}", "mvc pull there brings it up to date")
    return True


def _resumable_clone(path: str, url: str) -> bool:
    """An earlier clone of `url` into `path` that stopped before it was done: a repository with
    that origin and no branch but the one the clone makes, still where the clone put it (it may
    have been killed while it set HEAD up), or what a clone killed before configuring its origin leaves
    (mvc's own files only: an empty repository with no remote, and the temp folders of an init
    whose process is gone, which are removed here)."""
    if not os.path.isdir(path):
        return False
    entries = set(os.listdir(path))
    leftovers = {e for e in entries if INIT_LEFTOVER.fullmatch(e)}
    ours_only = entries - leftovers <= {".mvc"}
    try:
        repo = Repo(path)
        if repo.root != os.path.abspath(path):
            repo = None  # a parent directory's repository
    except MvcError:
        repo = None
    if repo is not None and not _only_the_clones_branch(repo, path, url):
        return False
    if repo is not None and repo.get_config("remote.origin.url") is not None:
        ok = repo.get_config("remote.origin.url") == url
    elif repo is not None:  # killed between init and configuring origin: nothing else is there
        ok = ours_only and not list_remotes(repo) and not repo.refs.list("refs/") \
            and next(iter(repo.loose.ids()), None) is None
    else:  # killed inside init: only its temp folder
        ok = bool(leftovers) and entries == leftovers
    if ok and ours_only:
        for name in leftovers:
            if not pid_alive(int(INIT_LEFTOVER.fullmatch(name).group(1))):
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    return ok

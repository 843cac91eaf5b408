"""What the installed git hooks run: `python -m semantic_ci.git_hook pre-merge-commit|pre-commit|pre-push`.

pre-merge-commit: the model head of the branch being merged (GITHEAD_* or MERGE_HEAD) is checked
against the target branch's model head, with mvc.toml and the check data it names read from the
target branch's commit (symbolic links it tracks followed within it), so a feature branch cannot
relax its own gate or swap its held-out text. pre-commit: the same for the commit that concludes a
merge git stopped (its shell script runs this only while MERGE_HEAD exists). pre-push: each
pushed branch's model head is checked, with mvc.toml and its data read from the remote's commit of
the target branch (see gate_revision).
Exit 1 blocks the merge or push.
"""
from __future__ import annotations

import os
import subprocess
import sys

from mvc.errors import BadInput, ConfigError, MvcError

from . import config as cfgmod
from .probe import MAX_DATA_BYTES, read_regular_file
from .report import as_text as _said, render_table
from .runner import run_ci


def _git(*args, cwd=None, env=None) -> str | None:
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def _repo_top(repo) -> str | None:
    """The top of the work tree holding the mvc repository, found from it (not from the GIT_DIR
    git gives a hook: in a linked work tree that names the linked one)."""
    from mvc.provenance import REDIRECTING
    env = {k: v for k, v in os.environ.items() if k not in REDIRECTING}
    top = _git("rev-parse", "--show-toplevel", cwd=repo.root, env=env)
    return top.strip() if top else None


def _console():
    """Markup on for the CI table's verdicts; names printed go through _said."""
    from rich.console import Console
    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), emoji=False, highlight=False,
                   soft_wrap=True)  # (a table wider than the terminal is wrapped by it, not cut)


def _git_bytes(*args) -> bytes | None:
    r = subprocess.run(["git", *args], capture_output=True)
    return r.stdout if r.returncode == 0 else None


def _in_git(repo, path: str, top: str) -> str:
    """A path under the mvc repository as git names it (relative to the work tree's top, '/')."""
    return os.path.relpath(os.path.normpath(os.path.join(repo.root, path)), top).replace(os.sep, "/")


DATA_KEYS = ("data", "probe", "domain_data", "general_data")
MAX_LINKS = 40  # symbolic links followed for one path, as Linux does


def _tree(oid: str) -> dict[str, tuple[str, str, str]]:
    """The entries of git tree `oid`: {name: (mode, type, object id)}."""
    entries = {}
    for item in (_git_bytes("ls-tree", "-z", oid) or b"").split(b"\0"):
        if item:
            meta, _, name = item.partition(b"\t")
            mode, kind, obj = meta.decode().split()
            entries[os.fsdecode(name)] = (mode, kind, obj)
    return entries


def _resolve_at(git_rev: str, path: str, top: str, label: str) -> tuple[str, str, str]:
    """Where `path` (relative to the work tree's top, '/') leads in git revision `git_rev`, the
    symbolic links tracked there followed as the file system would (relative to the link's
    folder): ("blob", object id, path) for a file the revision tracks, ("untracked", "", path) for
    one it does not, ("outside", "", absolute path) where a link leads out of the work tree.
    `label`: the revision's name in messages."""
    trees = [(_git("rev-parse", "--verify", "-q", f"{git_rev}^{{tree}}") or "").strip()]
    done, pending, links = [], path.split("/"), 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if not done:
                return "outside", "", os.path.join(top, os.pardir, *pending)
            done.pop()
            trees.pop()
            continue
        mode, kind, obj = _tree(trees[-1]).get(name, ("", "", ""))
        if mode == "120000":
            links += 1
            if links > MAX_LINKS:
                raise ConfigError(f"{path} at {label}: more than {MAX_LINKS} symbolic links to follow",
                                  "a link there leads back to itself: fix it on that branch")
            target = os.fsdecode(_git_bytes("cat-file", "blob", obj) or b"")
            if target.startswith("/"):
                inside = os.path.relpath(target, top)  # (a link into the work tree by its absolute
                if inside == os.pardir or inside.startswith(os.pardir + os.sep):  # path: resolved in
                    return "outside", "", os.path.join(target, *pending)  # the commit, not the branch's)
                done, trees = [], trees[:1]
                target = inside
            pending = target.split("/") + pending
        elif kind == "tree" and pending:
            done.append(name)
            trees.append(obj)
        elif kind == "blob" and not pending:
            return "blob", obj, "/".join(done + [name])
        else:  # not there (or a submodule, or a file where a folder is named): untracked
            return "untracked", "", "/".join(done + [name] + pending)
    return "untracked", "", "/".join(done)


def _file_at(git_rev: str, label: str, path: str, where_git: tuple[str, str], what: str,
             limit: int) -> tuple[bytes | None, str]:
    """(bytes, the path read) of `path` as of git revision `git_rev` (named `label`), its links
    followed there (_resolve_at); where_git: (the work tree's top, the work tree merging, whose
    index is asked). A link out of the work tree is read from disk wherever it points, as `mvc ci`
    reads check data, and so is a link to a file the revision does not track, unless that work
    tree's git index has it (the branch under test brought it: an error). None: `path` itself is
    not tracked there (the caller's rule); a link's text is never what is read."""
    top, here = where_git
    kind, obj, where = _resolve_at(git_rev, path, top, label)
    if kind == "blob":
        size = int((_git("cat-file", "-s", obj) or "0").strip())
        if size > limit:
            raise ConfigError(f"{what} at {label} is {size} bytes, more than {limit}",
                              f"keep it smaller on {label}")
        return _git_bytes("cat-file", "blob", obj), where
    if kind == "untracked" and where == path:
        return None, path
    if kind == "untracked" and _git("ls-files", "--error-unmatch", "--", where, cwd=here) is not None:
        raise ConfigError(f"{what}: a symbolic link at {label} to {where}, which is not tracked there but the work "
                          "tree's git index has (from the branch under test)",
                          f"the gate's files must come from {label}: commit {where} there, or keep it untracked")
    try:
        return read_regular_file(where if kind == "outside" else os.path.join(top, where), what, limit), where
    except BadInput as e:
        raise ConfigError(f"{e.message} (a symbolic link at {label} leads to {where})",
                          f"fix the link on {label}, or put the file it names in place") from None


def _config_at(repo, git_rev: str, label: str | None = None):
    """mvc.toml as of a git revision (named `label` in messages, else as given), with the check
    data it names taken from that revision too: a branch under test cannot swap the held-out text
    its gate is measured on. Symbolic links tracked there are followed there (_file_at). Data that
    revision does not track is read from the work tree, unless git tracks it there (the branch
    under test brought it: an error)."""
    label = label or git_rev
    here = (_git("rev-parse", "--show-toplevel") or "").strip() or None  # the work tree merging (a linked
    top = _repo_top(repo) or here  # one, maybe; none in a bare repository), and the mvc repository's
    if top is None:
        return None  # (no work tree: nothing of this repository's to gate)
    rel = _in_git(repo, cfgmod.CONFIG_FILE, top)
    raw, _where = _file_at(git_rev, label, rel, (top, here), f"{label}:{rel}", cfgmod.MAX_CONFIG_BYTES)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}:{rel}: not UTF-8 text (byte {e.start})") from None
    cfg = cfgmod.load(repo.root, text=text, source=f"{label}:{rel}")
    cfg.files = _data_at(repo, git_rev, label, cfg, (top, here))
    return cfg


def _data_at(repo, git_rev: str, label: str, cfg, where_git: tuple[str, str]) -> dict:
    """{spec: (bytes, description)} of the check data `cfg` names, as of git revision `git_rev`
    (see _config_at); data it does not track, nor links to, is left for the check to read."""
    files = {}
    for check in cfg.checks:
        for key in DATA_KEYS:
            spec = check.params.get(key)
            if not isinstance(spec, str) or spec == "builtin" or spec.startswith("blob:") or spec in files \
                    or os.path.isabs(spec):
                continue  # (an absolute path is refused when the check reads it)
            path = _in_git(repo, spec, where_git[0])
            if path.startswith("../"):
                continue
            data, where = _file_at(git_rev, label, path, where_git, f"check data {spec}", MAX_DATA_BYTES)
            if data is not None:
                files[spec] = (data, f"{spec} at {label}" + (f" ({where})" if where != path else ""))
            elif _git("ls-files", "--error-unmatch", "--", path, cwd=where_git[1]) is not None:
                raise ConfigError(f"{cfg.source}: ci.checks[{check.name}].{key}: {spec} is not tracked at "
                                  f"{label}, but the work tree's git index has it (from the branch under test)",
                                  f"the gate's data must come from {label}: commit {spec} there, or keep it "
                                  "untracked")
    return files


def _upstream(git_branch: str) -> str | None:
    """The remote-tracking branch (origin/NAME) a git branch tracks, if any."""
    full = (_git("rev-parse", "--symbolic-full-name", f"{git_branch}@{{upstream}}") or "").strip()
    return full[len("refs/remotes/"):] if full.startswith("refs/remotes/") else None


def _model_of(repo, git_branch: str, target: str | None = None) -> tuple[str, str] | None:
    """(name, commit) of the model branch of a git branch: the mvc branch of that name, else the
    remote-tracking one (`git merge origin/feat` after mvc fetch: origin/feat), else the one of the
    git branch's upstream (a local review branch tracking origin/feat, with no mvc branch here),
    unless that is the target's own (`checkout -b feat origin/main` tracks main's model, not one of
    feat's)."""
    local = repo.branches()
    if git_branch in local:
        return git_branch, local[git_branch]
    names = [git_branch]
    upstream = _upstream(git_branch)
    if upstream and not (target and (upstream == _upstream(target) or upstream.split("/", 1)[-1] == target)):
        names.append(upstream)
    for name in names:
        oid = repo.refs.read(f"refs/remotes/{name}")
        if oid:
            return name, oid
    return None


def _check(repo, candidate_branch: str, base_branch: str | None, cfg, con) -> bool:
    model = _model_of(repo, candidate_branch, base_branch)
    if model is None:
        con.print(f"mvc: git branch {_said(candidate_branch)} has no model branch; nothing to check")
        return True
    name, head = model
    if name != candidate_branch:
        con.print(f"mvc: the model of git branch {_said(candidate_branch)} is mvc's {_said(name)}")
    base = repo.branches().get(base_branch) if base_branch and base_branch != candidate_branch else None
    if base is not None and base == head:  # (run_ci refuses comparing a model with itself: the merge was blocked)
        con.print(f"mvc: model branches {_said(name)} and {_said(base_branch)} hold the same commit; nothing to check")
        return True
    summary = run_ci(repo, head, base=base, config=cfg)
    render_table(summary, con)
    return summary["passed"]


def _heads_at(sha: str, where: str = "refs/heads") -> list[str]:
    """The branches (or, with refs/remotes, the remote-tracking branches: origin/NAME) `sha` heads."""
    prefix = where + "/"
    return [r[len(prefix):] for r in (_git("for-each-ref", "--points-at", sha, "--format=%(refname)", where)
                                      or "").split() if r.startswith(prefix) and not r.endswith("/HEAD")]


def merged_branches() -> list[str]:
    """The branches being merged. git writes MERGE_HEAD only when a merge stops; for a clean merge
    it passes GITHEAD_<sha>=<name> in the hook's environment, which we read first. A merge named
    by commit id (`git merge 5be1f8`) is mapped to the branches whose head it is."""
    merged = {k[len("GITHEAD_"):]: v for k, v in os.environ.items() if k.startswith("GITHEAD_") and v}
    # (one heading no local branch, such as what `git pull` fetched, is not gated, as before)
    if merged:
        out = []
        for sha, name in merged.items():  # (a name exactly: `feat^0` is a revision of feat, no branch)
            if _git("show-ref", "--verify", "-q", f"refs/heads/{name}") is not None or \
                    _git("show-ref", "--verify", "-q", f"refs/remotes/{name}") is not None:
                out.append(name)
            else:  # named by id (or a tag, or `git pull`'s fetched commit): the branches it heads
                out += _heads_at(sha) + _heads_at(sha, "refs/remotes")
        return sorted(set(out))
    git_dir = (_git("rev-parse", "--git-dir") or ".git").strip()
    try:
        with open(os.path.join(git_dir, "MERGE_HEAD")) as f:
            shas = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []
    out = []
    for sha in shas:  # (no names here: the branches, local or remote-tracking, each commit heads)
        out += _heads_at(sha) + _heads_at(sha, "refs/remotes")
    return sorted(set(out))


def pre_merge_commit(repo) -> int:
    con = _console()
    target = (_git("symbolic-ref", "--short", "-q", "HEAD") or "").strip()
    names = [n for n in merged_branches() if n != target]
    if not names:
        con.print("mvc: the merged commit is no branch head; nothing to check")
        return 0
    cfg = _config_at(repo, "HEAD")
    if cfg is None or not cfg.checks:
        con.print(f"mvc: {_said(target)} has no {cfgmod.CONFIG_FILE} with checks; merge allowed")
        return 0
    ok = all(_check(repo, name, target, cfg, con) for name in names)
    if not ok:
        con.print(f"mvc: merge blocked: the model of {', '.join(map(_said, names))} fails semantic CI against "
                  f"{_said(target)}")
    return 0 if ok else 1


def pushed_branches(local_ref: str, local_sha: str) -> list[str]:
    """The branches whose model a push line sends: its branch (`git push origin feat:main`), the
    current branch for HEAD (`git push origin HEAD:main`), else (an id, a tag) the branches whose
    head the pushed commit is, as for a merge by id."""
    if local_ref.startswith("refs/heads/"):
        return [local_ref[len("refs/heads/"):]]
    if local_ref == "HEAD":
        current = (_git("symbolic-ref", "--short", "-q", "HEAD") or "").strip()
        if current:
            return [current]
    return _heads_at(local_sha)


def gate_revision(remote: str | None, target: str, remote_sha: str) -> tuple[str, str] | None:
    """(git revision, its name in messages) whose mvc.toml gates a push to branch `target` of
    `remote`: the remote's commit of it now (git gives its id), else, for a branch the remote does
    not have, the remote-tracking branch <remote>/<target>, else the local branch `target`; None:
    none of these (a new branch: the pushed commit's own mvc.toml). Neither a local branch nor the
    pushed commit may stand for a target the remote has: either can be the branch under test's."""
    if set(remote_sha) != {"0"}:
        if _git("cat-file", "-e", f"{remote_sha}^{{commit}}") is None:
            raise MvcError(f"the remote's {target} is at {remote_sha[:12]}, a commit this repository does not "
                           f"have: its mvc.toml, which gates this push, cannot be read",
                           f"git fetch {remote or 'the remote'}, then push again (or --no-verify to skip the gate)")
        return remote_sha, f"{remote}/{target}" if remote else target
    for ref in ([f"refs/remotes/{remote}/{target}"] if remote else []) + [f"refs/heads/{target}"]:
        if _git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}") is not None:
            return ref, ref.split("/", 2)[2]
    return None


def pre_push(repo, stdin_text: str, remote: str | None = None) -> int:
    """Each pushed branch's model checked with the target's mvc.toml (gate_revision); `remote`:
    the remote's name (the hook's first argument)."""
    con = _console()
    ok = True
    for line in stdin_text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[2].startswith("refs/heads/"):
            continue  # (a tag, a note: no branch there moves)
        local_ref, local_sha, remote_ref, remote_sha = parts
        if set(local_sha) == {"0"}:
            continue  # a deletion
        target = remote_ref[len("refs/heads/"):]
        gate = gate_revision(remote, target, remote_sha)  # (where that has no mvc.toml, the pushed
        cfg = (_config_at(repo, *gate) if gate else None) or _config_at(repo, local_sha)  # one's only adds)
        if cfg is None or not cfg.checks:
            continue
        branches = pushed_branches(local_ref, local_sha)
        if not branches:
            con.print(f"mvc: the commit pushed to {_said(target)} is no branch head; nothing to check")
        for branch in branches:
            ok = _check(repo, branch, target, cfg, con) and ok
    if not ok:
        con.print("mvc: push blocked by semantic CI")
    return 0 if ok else 1


def _what(argv) -> str:
    return "push" if argv and argv[0] == "pre-push" else "merge"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m semantic_ci.git_hook pre-merge-commit|pre-commit|pre-push", file=sys.stderr)
        return 2
    import mvc
    from mvc.errors import NotARepository
    from mvc.repo import MVC_DIR
    if (_git("rev-parse", "--is-bare-repository") or "").strip() == "true":
        print(f"mvc: a bare git repository has no models to gate; {_what(argv)} allowed", file=sys.stderr)
        return 0
    where, installed_at = os.getcwd(), None
    if len(argv) >= 3 and argv[1] == "--mvc-root":  # the repository `hooks install` was run for,
        top = (_git("rev-parse", "--show-toplevel") or where).strip()  # relative to the work tree
        where = os.path.join(top, argv[2])
        argv = [argv[0]] + argv[3:]
    if len(argv) >= 3 and argv[1] == "--mvc-path":  # and where it was then: a linked work tree
        installed_at = argv[2]                       # (git worktree add) has no .mvc of its own
        argv = [argv[0]] + argv[3:]
    if installed_at and os.path.isdir(os.path.join(installed_at, MVC_DIR)):
        where = installed_at  # (in a linked work tree, a .mvc the merged branch brought is not it)
    try:
        repo = mvc.Repo(where)
    except NotARepository:
        print(f"mvc: no mvc repository at {where}; nothing to gate", file=sys.stderr)
        return 0
    except MvcError as e:  # one that cannot be read must not open the gate
        print(f"error: the mvc repository gating this {_what(argv)} cannot be opened: {e}", file=sys.stderr)
        print(f"mvc: {_what(argv)} blocked (git's --no-verify skips the gate)", file=sys.stderr)
        return 1
    try:
        if argv[0] in ("pre-merge-commit", "pre-commit"):  # pre-commit: concluding a stopped merge
            return pre_merge_commit(repo)
        if argv[0] == "pre-push":
            return pre_push(repo, sys.stdin.read(), argv[1] if len(argv) > 1 else None)
    except MvcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"unknown hook {argv[0]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""CI on every commit: the `mvc.post_commit` entry point mvc's storage layer calls after a commit
when mvc.toml exists. With `on_fail = "rollback"` a failing commit stays in history but its branch
moves back to the last passing commit and `mvc.CheckFailed` is raised; so it does when CI could
not run (raising `mvc.CiDidNotRun`; both are `mvc.OnCommitCi`) or was interrupted before it judged
the commit (raising the interrupt)."""
from __future__ import annotations

import contextlib
import warnings

from mvc.errors import CheckFailed, CiDidNotRun, InterruptedAfterLanding, MvcError, RefConflict, environment_error
from mvc.interrupts import interrupts_deferred

from . import certificate
from . import config as cfgmod
from .runner import run_ci


def before_commit(repo) -> None:
    """The `mvc.pre_commit` entry point: an mvc.toml that cannot be read refuses the commit before
    anything is written (after the commit, CI could not run on it)."""
    cfgmod.load(repo.root)


def on_commit(repo, commit: str, ref: str) -> dict | None:
    cfg = cfgmod.load(repo.root)
    if cfg is None or not cfg.on_commit or not cfg.checks:
        return None
    try:
        try:
            parents = repo.read_commit(commit)["parents"]  # (the branch's tip before: a commit extends it)
            moved = (ref.removeprefix("refs/heads/"), parents[0] if parents else None)  # (None: it started the branch)
            report = run_ci(repo, commit, config=cfg, moved=moved)
        except OSError as e:  # a full disk while storing the certificate: CI could not run either
            found = environment_error(e)
            if not found:
                raise
            raise MvcError(found[0], found[1]) from None
    except KeyboardInterrupt:  # (Ctrl-C, SIGTERM, SIGHUP) before CI judged it: under rollback, it is not kept
        if cfg.on_fail != "rollback":
            raise
        raise _interrupted(repo, commit, ref) from None
    except MvcError as e:  # CI could not run (e.g. a revision in mvc.toml): the commit has landed
        if cfg.on_fail == "rollback":
            target = _roll_back(repo, commit, ref, "CI could not run")
            raise CiDidNotRun(commit, f"committed {commit[:12]}, but semantic CI could not run on it ({e.message}); "
                              f"{ref.removeprefix('refs/heads/')} {_back_to(target)}; {_undo_hint(repo, ref, commit)}",
                              e.hint, rolled_back=True, branch_head=target) from None
        raise CiDidNotRun(commit, f"committed {commit[:12]} (the branch moved), but semantic CI could not run on it: "
                          f"{e.message}", e.hint) from None
    if report["passed"]:
        return report
    failed = ", ".join(c["name"] for c in report["checks"] if c["status"] == "failed")
    if cfg.on_fail == "rollback":
        branch = ref.removeprefix("refs/heads/")
        try:
            target = _roll_back(repo, commit, ref, f"failed {failed}")
        except RefConflict:  # another commit landed on it meanwhile: that one is not ours to undo
            raise CheckFailed(commit, report["certificate"],
                              f"semantic CI failed on {commit[:12]} ({failed}); {branch} was not rolled back: "
                              f"another commit landed on it meanwhile (the failing one stays in its history)") from None
        raise CheckFailed(commit, report["certificate"],
                          f"semantic CI failed on {commit[:12]} ({failed}); {branch} {_back_to(target)}",
                          rolled_back=True, branch_head=target,
                          hint=_undo_hint(repo, ref, commit))
    warnings.warn(f"semantic CI failed on {commit[:12]} ({failed}); certificate {report['certificate'][:12]}")
    return report


def _interrupted(repo, commit: str, ref: str) -> InterruptedAfterLanding:
    """The interrupt to raise after CI on `commit` was stopped under on_fail = "rollback": its branch
    goes back to the last passing commit first, as when CI cannot run (a signal meanwhile waits)."""
    branch = ref.removeprefix("refs/heads/")
    landed = f"commit {commit} landed on {branch}, before semantic CI judged it"
    said = None
    try:
        with interrupts_deferred():  # (the interrupt to raise is made in here: a signal meanwhile waits)
            try:
                target = _roll_back(repo, commit, ref, "CI was interrupted")
                said = InterruptedAfterLanding(f"{landed}: {branch} {_back_to(target)}")
                said.hint = _undo_hint(repo, ref, commit)
            except RefConflict:  # another commit landed on it meanwhile: that one is not ours to undo
                said = InterruptedAfterLanding(f"{landed} ({branch} was not rolled back: another commit landed "
                                               "on it meanwhile)", f"mvc ci {commit[:12]} runs its checks")
            except (MvcError, OSError) as e:  # (a held ref lock, a full disk: the commit stays on the branch)
                why = e.message if isinstance(e, MvcError) else (environment_error(e) or (str(e),))[0]
                said = InterruptedAfterLanding(f"{landed} ({branch} could not be rolled back: {why})",
                                               f"mvc ci {commit[:12]} runs its checks")
                with contextlib.suppress(MvcError, OSError):  # (the interrupt is said, hint or not)
                    said.hint = f"{said.hint}; {_move_back_hint(repo, ref, commit)}"
    except KeyboardInterrupt:  # another signal, held back while the branch moved: what it did is said
        if said is None:
            raise
    return said


def _move_back_hint(repo, ref: str, commit: str) -> str:
    """How to move the branch back to the last passing commit by hand (a rollback that failed):
    `mvc rollback` for the current branch, `mvc branch -f` for another."""
    branch = ref.removeprefix("refs/heads/")
    target = certificate.last_passing_ancestor(repo, commit)
    if target is None:
        return f"no commit of {branch} passed: mvc branch -d {branch} (after switching away) removes it"
    if repo.refs.head_target() == ref and repo.git_branch_elsewhere() is None:
        return f"mvc rollback {target[:12]} moves {branch} back"
    return f"mvc branch -f {branch} {target[:12]} moves it back"


def _back_to(target: str | None) -> str:
    return f"rolled back to {target[:12]}" if target else "rolled back to no commit: none of its commits passed"


def _undo_hint(repo, ref: str, commit: str) -> str:
    """How to move the branch back to the commit CI rolled it back from (the current branch with
    rollback; another, which the rollback may have deleted, with branch -f)."""
    branch = ref.removeprefix("refs/heads/")
    undo = f"mvc branch -f {branch} {commit[:12]}"
    if repo.refs.head_target() == ref:  # (the current branch: rollback, which refuses while git's is another,
        git = repo.git_branch_elsewhere()  # and then branch -f, from git's branch made current)
        if git is None:
            undo = f"mvc rollback {commit[:12]}"
        else:
            switch = f"mvc switch {git}" if git in repo.branches() else f"mvc branch {git}; mvc switch {git}"
            undo = f"{switch}; {undo}"
    return f"to keep the commit anyway: {undo}"


def _roll_back(repo, commit: str, ref: str, why: str) -> str | None:
    """Move the branch back to the last passing commit; the failing one stays in history."""
    target = certificate.last_passing_ancestor(repo, commit)
    repo.refs.update(ref, target, expected=commit,
                     message=f"ci rollback: {commit[:12]} {why}; back to {target[:12] if target else '(no commit)'}")
    return target

"""CI on every commit: the `mvc.post_commit` entry point mvc's storage layer calls after a commit
when mvc.toml exists. With `on_fail = "rollback"` a failing commit stays in history but its branch
moves back to the last passing commit and `mvc.CheckFailed` is raised."""
from __future__ import annotations

import warnings

from mvc.errors import CheckFailed

from . import certificate
from . import config as cfgmod
from .runner import run_ci


def on_commit(repo, commit: str, ref: str) -> dict | None:
    cfg = cfgmod.load(repo.root)
    if cfg is None or not cfg.on_commit or not cfg.checks:
        return None
    report = run_ci(repo, commit, config=cfg)
    if report["passed"]:
        return report
    failed = ", ".join(c["name"] for c in report["checks"] if c["status"] == "failed")
    if cfg.on_fail == "rollback":
        target = certificate.last_passing_ancestor(repo, commit)
        repo.refs.update(ref, target, expected=commit,
                         message=f"ci rollback: {commit[:12]} failed {failed}; back to "
                                 f"{target[:12] if target else '(no commit)'}")
        raise CheckFailed(commit, report["certificate"],
                          f"semantic CI failed on {commit[:12]} ({failed}); {ref.split('/')[-1]} rolled back to "
                          f"{target[:12] if target else '(empty)'}")
    warnings.warn(f"semantic CI failed on {commit[:12]} ({failed}); certificate {report['certificate'][:12]}")
    return report

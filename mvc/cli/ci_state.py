"""What the CLI shows of semantic CI on commits: their certificates and verdicts, read from the
certificate index (semantic_ci.certificate checks every line; no torch is imported), and the
report of mvc.toml's on-commit checks after a command that commits (commit, revert, paste)."""
from __future__ import annotations

import os
import warnings

import click

from .output import short


def commit_certificates(repo, cid: str) -> list[str]:
    """The ids of a commit's certificates, oldest first."""
    from ..certindex import index_path
    if not os.path.exists(index_path(repo.dir, cid)):
        return []
    from semantic_ci.certificate import of_commit
    return of_commit(repo, cid)


def ci_states(repo, ids) -> dict:
    """CI verdicts of those of `ids` that have a certificate ({commit: "passed" | "failed" | ...})."""
    from ..certindex import CERTS_DIR, index_path
    out = {}
    if not os.path.isdir(os.path.join(repo.dir, CERTS_DIR)):
        return out
    from semantic_ci.certificate import ci_state  # the index is checked, not trusted
    for cid in ids:
        if os.path.exists(index_path(repo.dir, cid)):
            state, problems = ci_state(repo, cid)
            for p in problems:
                warnings.warn(p)
            if state or problems:
                out[cid] = state or "unknown"
    return out


def on_commit_ci(repo, cid: str) -> dict:
    """The JSON fields a committing command prints of mvc.toml's on-commit checks on its new commit
    (the same as when they fail: see output.json_when_ci_fails)."""
    certs = commit_certificates(repo, cid)
    state = ci_states(repo, [cid]).get(cid) if certs else None
    return {"ci_ran": bool(certs), "ci_passed": str(state).startswith("passed") if certs else None,
            "certificate": certs[-1] if certs else None}


def echo_on_commit_ci(ci: dict) -> None:
    """The line a committing command prints under its own when the on-commit checks ran."""
    if ci["ci_ran"]:
        cert = short(ci["certificate"])
        click.echo(f"semantic CI {'passed' if ci['ci_passed'] else 'failed'}: certificate {cert} "
                   f"(mvc verify {cert} re-runs it)")

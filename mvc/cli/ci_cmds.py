"""Semantic-CI commands: ci, verify, hooks (they import semantic_ci, and so torch, lazily)."""
from __future__ import annotations

import os
import sys

import click

from ..repo import Repo
from .main import cli
from .output import console, emit_json, json_opt, negative_result, one_line, short, shown, warn


def _junit_option(ctx, param, value):
    """--junit: checked before any check runs (a late failure would lose nothing but still hurts)."""
    if value is None or value == "-":
        return value
    if value == "":
        raise click.BadParameter("empty path (use - for standard output)", ctx, param)
    from semantic_ci.report import junit_target_problem
    problem = junit_target_problem(value)
    if problem:
        raise click.BadParameter(problem, ctx, param)
    return value


def _progress_lines(as_json: bool, verb: str):
    """A line on stderr as each check starts, on a terminal (checks run for seconds to minutes each)."""
    if as_json or not sys.stderr.isatty():
        return None
    return lambda name: click.echo(f"{verb} {shown(name)} ...", err=True)


@cli.command()
@click.argument("rev", required=False)
@click.option("--base", help="Baseline revision for every check (overrides mvc.toml); HEAD means REV, as in "
              "mvc.toml (HEAD~1: REV's parent). It must resolve (a relative baseline in mvc.toml past the "
              "root commit skips its check instead).")
@click.option("--check", "names", multiple=True, help="Run only this check (repeatable).")
@click.option("--junit", metavar="PATH", callback=_junit_option,
              help="Also write a JUnit XML report to PATH (written atomically; missing parent directories "
                   "are created). PATH '-' prints the XML to stdout instead of the table (not with --json).")
@json_opt
def ci(rev, base, names, junit, as_json):
    """Run the semantic-CI checks of mvc.toml on REV (default HEAD) and store a certificate.

    Exit 0 when every check passes (a check whose relative baseline, such as a first commit's
    HEAD~1, goes past the root commit is skipped), 1 when a model is measured and found wanting
    (a NaN or infinite figure fails its check), 2 for a bad option (an unusable --junit path),
    3 for an error, and then no certificate is stored: an invalid mvc.toml, one that defines no
    checks, a setting in it that names nothing (a revision, component, brick, data file or
    adapter; the error names the key), a missing or corrupt object (a lazy clone whose remote is
    gone included), or a user adapter that fails.

    \b
    Examples:
      mvc ci
      mvc ci feature --base main --junit reports/mvc-ci.xml
      mvc ci HEAD --check frozen-core --json
      mvc ci --junit - > mvc-ci.xml
    """
    from mvc.errors import MvcError
    if junit == "-" and as_json:
        raise click.UsageError("--junit - and --json both write to stdout: choose one")
    from semantic_ci.report import junit_xml, render_table, write_junit
    from semantic_ci.runner import run_ci
    repo = Repo(os.getcwd())
    summary = run_ci(repo, rev, base=base, names=list(names), progress=_progress_lines(as_json, "running"))
    if not summary["passed"]:
        negative_result()
    if as_json:
        emit_json(summary)
    elif junit == "-":
        click.echo(junit_xml(summary), nl=False)
    else:
        render_table(summary, console(markup=True))
    if junit and junit != "-":
        try:
            write_junit(summary, junit)
        except OSError as e:
            raise MvcError(f"cannot write the JUnit report {junit}: {e.strerror or e}",
                           f"the checks ran and {'passed' if summary['passed'] else 'failed'}, and certificate "
                           f"{short(summary['certificate'])} was stored") from None
    if not summary["passed"]:
        sys.exit(1)


@cli.command()
@click.argument("target", default="HEAD")
@json_opt
def verify(target, as_json):
    """Re-run a certificate's checks (TARGET, default HEAD: a commit, or a certificate id or unique
    prefix of at least 6 hex digits, as mvc ci prints) and confirm the figures.

    TARGET as a commit verifies its latest full run (every check of mvc.toml), or its latest
    partial run when it has none (the output says so). Exact figures must reproduce bit for bit,
    except the logits' digests: another CPU code path changes the logits' bits (a note says so)
    while every figure comparing two models must still match. Other figures must agree within a
    relative 1e-6. What a check measured must be what mvc.toml defines for it now; its bounds are
    taken from mvc.toml. A skipped check must still have its reason (its relative revision,
    re-walked from the recorded commit ids, goes past the root commit).

    Exit 3 when a figure does not reproduce (an edited or stale certificate, or another machine's
    arithmetic: the notes name how its execution envelope differs), when mvc.toml no longer
    defines a check as it ran or cannot be read, when there is no mvc.toml here (the bounds would
    be the certificate's own claim), when a full run lacks a check mvc.toml defines, when a
    training gate appears outside a pipeline stage's certificate, when a check cannot be re-run (a missing or
    corrupt object), when the certificate records no checks or an error instead of figures, or
    when the commit's certificate index names a missing object or a certificate of another commit
    (such entries are never used). Exit 1 when the certificate verifies but records failed checks
    (`mvc verify REV && deploy` deploys only what passed).

    \b
    Examples:
      mvc verify HEAD
      mvc verify c911831367af
    """
    from semantic_ci.runner import verify as run_verify
    repo = Repo(os.getcwd())
    r = run_verify(repo, target, progress=_progress_lines(as_json, "re-running"))
    failure = _verify_error(r)
    if as_json:  # (a document printed with exit 3 carries "error", as a commit's whose CI could not run)
        emit_json({**r, **({"error": failure.message} if failure else {})})
    else:
        for c in r["checks"]:
            mark = "reproduced" if c["reproduced"] else "NOT reproduced"
            click.echo(f"{shown(c['name'])}: {mark}" + (" (skipped)" if c.get("skipped") else ""))
            for d in c["diffs"]:
                click.echo(f"    {one_line(d)}")
            if c.get("note"):
                click.echo(f"    note: {one_line(c['note'])}")
    if failure:
        raise failure
    run = (f" (a partial run: {', '.join(map(shown, r['checks_run']))} only"
           + ("" if r.get("full_run_recorded") else "; no full run of mvc.toml's checks is recorded for this commit")
           + ")") if r.get("partial") else ""
    if not r["passed"]:  # authentic, and it records a failure: a negative result, like mvc ci's
        if not as_json:
            click.echo(f"certificate {short(r['certificate'])} of {short(r['commit'])} verified: it records a "
                       f"FAILED run ({', '.join(map(shown, r['failed'])) or 'its verdict'}){run}")
        sys.exit(1)
    if not as_json:
        click.echo(f"certificate {short(r['certificate'])} of {short(r['commit'])} verified: its checks passed{run}")


def _verify_error(r: dict):
    """The error `mvc verify` exits with (3) for its result `r`, or None when it verified."""
    from mvc.errors import MvcError
    if r.get("index_problems"):
        problems = r["index_problems"]
        from semantic_ci.certificate import NEWER_FORMAT, NEWER_HINT
        return MvcError("; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""),
                        NEWER_HINT if all(NEWER_FORMAT in p for p in problems) else
                        "the certificate index was edited or damaged; remove the line or run mvc ci again")
    if not r["verified"]:
        diffs = [d for c in r["checks"] for d in c["diffs"]]
        hints = [c["hint"] for c in r["checks"] if not c["reproduced"] and c.get("hint")]
        if hints:
            hint = hints[0]
        elif any(d.startswith("re-run failed") for d in diffs):
            hint = "a check could not be re-run: fix what it names (mvc fsck finds damaged objects) and verify again"
        elif all(c.get("config_changed") for c in r["checks"] if not c["reproduced"]) and r.get("stage"):
            hint = (f"its figures reproduce, but the pipeline stage it names ({r['stage']}) does not define "
                    "what it records (the pipeline file changed since it was made, or the certificate was "
                    "edited): mvc run certifies the stage's result again")
        elif all(c.get("config_changed") for c in r["checks"] if not c["reproduced"]):
            hint = ("its figures reproduce, but mvc.toml's checks or bounds are not those the certificate "
                    "records (mvc.toml changed since it was made, or the certificate was edited): run mvc ci "
                    "to certify the commit under them")
        elif any(c.get("definition_changed") for c in r["checks"] if not c["reproduced"]):
            hint = (f"what it measured is not what {'the pipeline stage it names' if r.get('stage') else 'mvc.toml'} "
                    "defines now (see the differences: it changed since the certificate was made, or the "
                    "certificate was edited): " + ("mvc run certifies the stage's result again" if r.get("stage")
                                                   else "run mvc ci to certify the commit under it"))
        elif any(c.get("envelope_changes") for c in r["checks"] if not c["reproduced"]):
            hint = ("its figures do not reproduce here, and this machine computes in another execution "
                    "envelope than the one that made it (see the notes): verify where it was made, or run "
                    "mvc ci here to certify the commit on this machine")
        else:
            hint = ("its figures do not reproduce: the certificate was edited, or mvc's evaluation code "
                    "changed since it was made; run mvc ci to certify the commit again")
        return MvcError(f"certificate {short(r['certificate'])} does not verify", hint)
    return None


@cli.group()
def hooks():
    """Install or remove the git hooks that run semantic CI before merges and pushes.

    \b
    Examples:
      mvc hooks install
      mvc hooks uninstall
    """


@hooks.command("install")
def hooks_install():
    """Install pre-merge-commit, pre-push and pre-commit hooks (chaining existing ones); sets
    merge.ff=false.

    pre-merge-commit and pre-push run mvc ci on the merged model before a merge or push;
    pre-commit runs it only for the commit that concludes a merge git stopped (a conflict, or a
    blocked merge finished with `git commit`); other commits pass straight to a pre-commit hook
    of your own, which stays chained. pre-merge-commit does not run for fast-forward merges, so
    merges always create a merge commit while the hooks are installed (`mvc hooks uninstall`
    restores the previous setting and your own hooks).

    \b
    Example:
      mvc hooks install && git merge feature   # the merge runs mvc ci first
    """
    from semantic_ci.githooks import install
    r = install(Repo(os.getcwd()).root)
    click.echo(f"installed {', '.join(r['installed'])} in {shown(r['hooks_dir'])}")
    if r["chained"]:
        click.echo(f"existing hooks kept and chained: {', '.join(r['chained'])}")
    click.echo("set merge.ff=false in this repository's git config (fast-forward merges skip pre-merge-commit; "
               "git merge --ff-only or --ff still would, so merge without them)")


@hooks.command("uninstall")
def hooks_uninstall():
    """Remove mvc's git hooks, restore chained hooks and the previous merge.ff setting.

    \b
    Example:
      mvc hooks uninstall
    """
    from semantic_ci.githooks import uninstall
    r = uninstall(Repo(os.getcwd()).root)
    click.echo(f"removed {', '.join(r['removed']) or 'nothing'}")
    for name in r.get("kept", []):
        warn(f"kept {name}: your original hook, chained by mvc; its hook was replaced "
             "by another tool meanwhile, so restore it yourself if you want it back")

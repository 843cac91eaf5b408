"""`mvc paste brick NAME --from REV --into HOST`: install a brick into a host branch, gated by the
migration checks mvc.toml configures for that brick."""
from __future__ import annotations

import os
import sys

import click

from ..errors import BadInput
from ..repo import Repo
from .ci_state import echo_on_commit_ci, on_commit_ci
from .main import cli
from .output import (console, emit_json, error, json_opt, json_when_ci_fails, message_opt, negative_result, short,
                     shown)


@cli.group()
def paste():
    """Paste components from one model into another.

    \b
    Example:
      mvc paste brick python --from brick-run --into host-b
    """


@paste.command("brick")
@click.argument("name")
@click.option("--from", "source", required=True, help="Revision that holds brick/NAME.")
@click.option("--into", "host", required=True, help="Host branch (HEAD: the current branch), or a revision with --branch.")
@click.option("--branch", help="Commit onto this branch (new, or at the host revision).")
@click.option("--as", "as_name", help="Install as brick/NEWNAME.")
@message_opt()
@click.option("--int8", is_flag=True, help="Install the int8 artifact of the brick (writes the quantised blobs).")
@click.option("--force", is_flag=True, help="Replace an existing brick of that name on the host.")
@click.option("--no-ci", is_flag=True, help="Do not run the migration checks configured for this brick, nor "
              "mvc.toml's on-commit checks.")
@json_opt
def paste_brick_cmd(name, source, host, branch, as_name, message, int8, force, no_ci, as_json):
    """Install brick NAME from --from into the host: checks the ABI contract (naming the differing
    field on a mismatch) and that the brick's tensors are those its recorded arch and config build,
    reuses the brick's tensors by id, and records where it came from (mvc show names it).

    \b
    Examples:
      mvc paste brick python --from brick-run --into host-b
      mvc paste brick python --from brick-run --into host-small --int8 --as python-int8
    """
    for given, hint in ((name, "NAME"), (as_name, "--as")):
        if given is not None and not given.strip():
            raise click.BadParameter("an empty or blank name", param_hint=hint)
    repo = Repo(os.getcwd())
    transform = _int8_transform(repo, f"brick/{name}", f"brick/{as_name or name}") if int8 else None
    gate = None if no_ci else _migration_gate(repo, name, int8)
    with json_when_ci_fails(as_json):
        r = repo.paste_brick(name, source, host, as_name=as_name, message=message, force=force, branch=branch,
                             transform=transform, gate=gate, mode="int8" if int8 else "copy", run_hooks=not no_ci)
    if r.get("unchanged"):
        if as_json:
            emit_json(r)
        else:
            click.echo(f"{shown(r['branch'])} already holds these tensors as brick/{as_name or name}: nothing to paste")
        return
    if not r["moved"]:
        negative_result()
    ci = on_commit_ci(repo, r["commit"]) if r["moved"] else {}  # (certificates of the pasted commit)
    if as_json:
        emit_json({**r, **ci})
    elif r["moved"]:
        click.echo(f"[{shown(r['branch'])} {short(r['commit'])}] pasted brick {name}"
                   + (f" as brick/{as_name}" if as_name and as_name != name else "")
                   + f" ({r['tensors']} tensors{' as int8' if int8 else ', reused by id'})")
        echo_on_commit_ci(ci)
        if gate is None and not no_ci:
            click.echo("no migration checks are configured for this brick in mvc.toml; none ran"
                       if os.path.exists(os.path.join(repo.root, "mvc.toml")) else
                       "no mvc.toml: no migration checks ran", err=True)
    if r.get("ci") and not as_json:
        from semantic_ci.report import render_table
        render_table(r["ci"], console(markup=True))
    if not r["moved"]:
        if not as_json:
            error(f"migration checks failed; {r['branch']} was not moved", "pass --no-ci to paste anyway")
        sys.exit(1)


def _int8_transform(repo, component, installed_as):
    """The paste transform quantising brick `component` of the source (named in its errors),
    written as the tree of `installed_as`."""
    def transform(tree):
        import bricks
        from ..components import build_tree
        from semantic_ci.models import rebuild_stored_brick
        brick = rebuild_stored_brick(tree, repo.load_tree(tree), component)
        try:
            small = bricks.quantize(brick)
        except ValueError as e:  # e.g. the brick is an int8 artifact already, or its weights are not finite
            hint = "paste it without --int8" if "int8 artifact already" in str(e) else \
                "paste a brick from a checkpoint whose weights are finite (this one's training diverged)" \
                if "non-finite" in str(e) else None
            raise BadInput(f"cannot make an int8 artifact of {component}: {e}", hint) from None
        return repo.write_object(build_tree(repo.store, installed_as, small))
    return transform


def _migration_gate(repo, name, int8):
    """A gate running mvc.toml's migration checks for brick NAME before the paste commit lands,
    measured on what is being pasted: the brick of the paste's source (as int8 with --int8) on the
    host it is pasted onto (mvc.toml's own hosts are for `mvc ci`), both read from the paste commit
    (resolved before the paste, a branch that moved meanwhile was measured, not the one pasted on)."""
    from dataclasses import replace

    from semantic_ci import config as cfgmod
    cfg = cfgmod.load(repo.root)
    checks = [c for c in (cfg.checks if cfg else []) if c.kind == "migration" and c.get("brick") == name]
    if not checks:
        return None

    def gate(cid):
        from semantic_ci.runner import run_ci
        commit = repo.read_commit(cid)
        source, host = commit["extra"]["paste"]["source"], commit["parents"][0]
        measured = [replace(c, params={**c.params, "source": source, "hosts": [host], "int8": int8,
                                       "paste_gate": True}) for c in checks]
        sub = cfgmod.CiConfig(checks=measured, adapter=cfg.adapter, probe_bytes=cfg.probe_bytes, window=cfg.window,
                              source=cfg.source)
        summary = run_ci(repo, cid, config=sub, partial=True)  # (a sub-suite, measured on this paste's own brick
        # and host: never the commit's full run of mvc.toml's checks)
        return summary["passed"], summary
    return gate

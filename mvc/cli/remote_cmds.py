"""Remote commands: remote (add, list, remove), push, fetch, pull and clone (no torch: bytes only)."""
from __future__ import annotations

import os
import time

import click

from ..repo import Repo
from ..transfer import DEFAULT_JOBS
from .main import cli, resumes_when_interrupted
from .output import BarProgress, emit_json, human_bytes, json_opt, one_line, rate, short, shown, warn

jobs_opt = click.option("-j", "--jobs", type=click.IntRange(1, 64), default=DEFAULT_JOBS, show_default=True,
                        help="Parallel transfers.")


def _repo() -> Repo:
    return Repo(os.getcwd())


def _rm():
    """mvc.remote, imported by the commands that use it only (it pulls in threads and transports)."""
    from .. import remote
    return remote


# -- mvc remote --------------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show URLs and endpoints.")
@json_opt
@click.pass_context
def remote(ctx, verbose, as_json):
    """Manage remotes: directories or S3-compatible object storage.

    Credentials are never stored in the repository: S3 remotes use the standard AWS configuration
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, instance roles).

    \b
    Examples:
      mvc remote add origin /mnt/shared/models.mvc
      mvc remote add origin s3://my-bucket/team/models
      mvc remote add minio s3://models/run1 --endpoint http://127.0.0.1:9000
      mvc remote -v
      mvc remote remove minio
    """
    if ctx.invoked_subcommand is None:
        _list(verbose, as_json)


def _list(verbose, as_json):
    remotes = _rm().list_remotes(_repo())
    if as_json:
        emit_json(remotes)
        return
    for r in remotes:
        if verbose:
            extra = (f" (endpoint {r['endpoint']})" if r["endpoint"] else "") + (" [lazy]" if r["lazy"] else "")
            click.echo(f"{shown(r['name'])}\t{shown(r['url'])}{one_line(extra)}")
        else:
            click.echo(shown(r["name"]))


@remote.command("list")
@click.option("-v", "--verbose", is_flag=True, help="Show URLs and endpoints.")
@json_opt
def remote_list(verbose, as_json):
    """List the remotes.

    \b
    Example:
      mvc remote list -v
    """
    _list(verbose, as_json)


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--endpoint", metavar="URL", help="S3 endpoint (MinIO, Ceph, a local S3 server).")
@json_opt
def remote_add(name, url, endpoint, as_json):
    """Add remote NAME at URL: a directory, file://PATH or s3://bucket/prefix.

    \b
    Examples:
      mvc remote add origin ../models.mvc
      mvc remote add origin s3://bucket/prefix --endpoint http://127.0.0.1:9000
    """
    rm = _rm()
    r = rm.add_remote(_repo(), name, url, endpoint)
    if as_json:
        emit_json(r)
    else:
        click.echo(f"added remote {shown(r['name'])}: {shown(r['url'])}"
                   + (f" (endpoint {shown(r['endpoint'])})" if r["endpoint"] else ""))


@remote.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even the remote a lazy clone fetches blobs from.")
@json_opt
def remote_remove(name, force, as_json):
    """Remove remote NAME and its remote-tracking refs.

    \b
    Example:
      mvc remote remove minio
    """
    rm = _rm()
    r = rm.remove_remote(_repo(), name, force)
    if as_json:
        emit_json(r)
    else:
        click.echo(f"removed remote {shown(name)} ({len(r['removed_refs'])} remote-tracking refs)")


# -- push / fetch / pull / clone ---------------------------------------------------------------
def _push_args(repo: Repo, remote: str | None, branch: str | None, delete: bool = False):
    """One argument that names no remote but a branch (any branch with --delete) means the default remote."""
    if remote and branch is None:
        rm = _rm()
        names = {r["name"] for r in rm.list_remotes(repo)}
        if remote not in names and not rm.is_url(remote) and (delete or remote in repo.branches() or remote == "HEAD"):
            return None, remote
    return remote, branch



@cli.command()
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@click.option("-f", "--force", is_flag=True, help="Overwrite the remote branch even if it is not an ancestor (with --delete: delete "
                                                "the current branch of a repository serving as the remote).")
@click.option("-n", "--dry-run", is_flag=True, help="Only report how many objects and bytes would move.")
@click.option("-d", "--delete", is_flag=True, help="Delete BRANCH on the remote.")
@click.option("--repair", is_flag=True,
              help="Read back every object of the pushed history from the remote, re-hash it, and send again "
                   "what is missing or damaged there.")
@jobs_opt
@json_opt
def push(remote, branch, force, dry_run, delete, repair, jobs, as_json):
    """Send BRANCH (default, or HEAD: the current branch) to REMOTE (default: origin).

    Only objects the remote lacks move; an interrupted push resumes where it stopped. Tags on the
    pushed history and certificates of its commits travel with it. A remote branch that is not an
    ancestor of yours is not overwritten without --force.

    A plain push trusts that the remote holds the whole history of what it has. With --repair it
    reads back every object of the pushed history, re-hashes it, sends what is missing and sends
    again what is damaged there (it reads everything: as long as a clone). Only local copies that
    re-hash right are sent; when one is damaged here too it is named, nothing moves, and the exit
    status is 3 (repair it first: mvc fsck --repair-from ANOTHER-COPY). On S3 it also adds the
    commits the remote's commit graph lacks (pushed by an older mvc) or has wrong.

    \b
    Examples:
      mvc push
      mvc push origin main --dry-run
      mvc push origin experiment --force
      mvc push --delete experiment
      mvc push origin main --repair
    """
    repo = _repo()
    if not (delete or dry_run):  # (a delete run again finds the branch gone)
        resumes_when_interrupted("the same mvc push sends the rest")
    remote, branch = _push_args(repo, remote, branch, delete)
    if delete and branch is None:
        raise click.UsageError("--delete needs the BRANCH to delete")
    if delete and repair:
        raise click.UsageError("--repair and --delete do not go together")
    started = time.perf_counter()
    rm = _rm()
    try:
        r = rm.push(repo, remote, branch, force=force, dry_run=dry_run, delete=delete, jobs=jobs,
                    progress=BarProgress(), repair=repair)
    except rm.RepairIncomplete as e:  # report what was repaired, then the error (exit 3)
        if as_json:
            _print_push(repo, e.result, dry_run, as_json, started)
        else:
            _print_repair(e.result["repair"], e.result["remote"] or e.result["url"], dry_run)
        raise
    _print_push(repo, r, dry_run, as_json, started)


def _print_push(repo, r, dry_run, as_json, started):
    r.pop("sent", None)
    r["seconds"] = time.perf_counter() - started
    if as_json:
        emit_json(r)
        return
    where = shown(r["remote"] or r["url"])
    if r["status"] == "deleted":
        click.echo(f"{'would delete' if dry_run else 'deleted'} {where}/{shown(r['branch'])} (was {short(r['old'])})")
        return
    if dry_run:
        if r.get("repair"):
            _print_repair(r["repair"], where, dry_run)
        click.echo(f"would send {r['objects_sent']} objects, {human_bytes(r['bytes_sent'])} to {where} "
                   f"({r['objects_present']} already there); {shown(r['branch'])}: {r['status'].replace('-', ' ')}")
        return
    click.echo(f"To {shown(r['url'])}")
    if r["status"] == "up-to-date":
        click.echo(f"  {shown(r['branch'])}: {short(r['new'])} (up to date)")
    else:
        arrow = f"{short(r['old'])}..{short(r['new'])}" if r["old"] else short(r["new"])
        click.echo(f"  {shown(r['branch'])}: {arrow} ({r['status']})")
    local_tags = repo.tags() if r["tags"] else {}  # (once: per tag it read every tag, O(T^2))
    for tag in r["tags"]:
        click.echo(f"  tag {shown(tag)}: {short(local_tags.get(tag))} (new tag)")
    for tag, value in r["tags_skipped"].items():
        if value is not None:  # None: damaged there, warned about already
            warn(f"tag {shown(tag)} differs on {where} ({short(value)}); not overwritten")
    if r.get("repair"):
        _print_repair(r["repair"], where, dry_run)
    certs = f"; {r['certificates']} certificates" if r["certificates"] else ""
    if not r["objects_sent"]:
        click.echo("nothing to send: the remote has every object" + certs)
        return
    click.echo(f"sent {r['objects_sent']} objects, {human_bytes(r['bytes_sent'])} in {r['seconds']:.1f} s "
               f"({rate(r['bytes_sent'], r['seconds'])}); {r['objects_present']} already there" + certs)


def _print_repair(rep, where, dry_run):
    """The verification pass of push --repair: what was checked, re-sent, and what could not be."""
    verb = "would re-send" if dry_run else "re-sent"
    if rep["missing_resent"] or rep["damaged_resent"]:
        click.echo(f"verified {rep['checked']} objects on {where}: {verb} {rep['missing_resent']} missing and "
                   f"{rep['damaged_resent']} damaged ({human_bytes(rep['bytes_sent'])})")
    elif not rep["local_damaged"]:
        click.echo(f"verified {rep['checked']} objects on {where}: all intact")
    if rep.get("graph_added"):
        click.echo(f"{'would add' if dry_run else 'added'} {rep['graph_added']} commits to the commit graph on {where}")
    for oid, why in sorted(rep["local_damaged"].items()):
        click.echo(one_line(f"not sent: {oid}: {why}"), err=True)
    if rep["held_back"]:
        click.echo(f"held back {len(rep['held_back'])} trees and commits that name them (a tree there needs "
                   "its blobs there)", err=True)


@cli.command()
@click.argument("remote", required=False)
@jobs_opt
@json_opt
def fetch(remote, jobs, as_json):
    """Download the branches and tags of REMOTE (default: origin) into refs/remotes/REMOTE/*.

    Every object is verified by its BLAKE3 id on receipt; a corrupt one is named and not stored.
    Local branches do not move (see mvc pull). Branches deleted on the remote are pruned.

    \b
    Example:
      mvc fetch origin
      mvc log origin/main -n 3
    """
    resumes_when_interrupted("the same mvc fetch fetches the rest")
    rm = _rm()
    r = rm.fetch(_repo(), remote, jobs, BarProgress())
    if as_json:
        emit_json(r)
        return
    _print_fetch(r)


def _print_fetch(r):
    where = shown(r["remote"] or r["url"])
    for ref, change in sorted(r["refs"].items()):
        name = ref[len("refs/remotes/"):]
        if change["new"] is None:
            click.echo(f"  {shown(name)}: deleted on {where} (pruned)")
        else:
            new = short(change["new"])
            arrow = f"{short(change['old'])}..{new}" if change["old"] else f"{new} (new)"
            click.echo(f"  {shown(name)}: {arrow}" + (" (forced update: not a descendant)" if change.get("forced") else ""))
    for tag, oid in sorted(r["tags"].items()):
        click.echo(f"  tag {shown(tag)}: {short(oid)} (new)")
    for tag, both in sorted(r["tag_conflicts"].items()):
        warn(f"tag {shown(tag)} is {short(both['remote'])} on {where} but {short(both['local'])} here; kept yours")
    lazy = f"; {r['blobs_promised']} blobs left on the remote until used (lazy)" if r["lazy"] else ""
    click.echo(f"received {r['objects_received']} objects, {human_bytes(r['bytes_received'])} "
               f"({rate(r['bytes_received'], r['seconds'])}){lazy}")


@cli.command()
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@jobs_opt
@json_opt
def pull(remote, branch, jobs, as_json):
    """Fetch REMOTE, then fast-forward BRANCH (default, or HEAD: the current branch) to REMOTE/BRANCH.

    Pull only fast-forwards: when both sides have commits of their own it stops and says what to
    do (mvc has no merge).

    \b
    Examples:
      mvc pull
      mvc pull origin main
    """
    repo = _repo()
    resumes_when_interrupted("the same mvc pull goes on from there")
    remote, branch = _push_args(repo, remote, branch)
    rm = _rm()
    r = rm.pull(repo, remote, branch, jobs, BarProgress())
    if as_json:
        emit_json(r)
        return
    _print_fetch(r["fetch"])
    b = shown(r["branch"])
    msg = {"created": f"created {b} at {short(r['new'])}",
           "up-to-date": f"{b} is up to date",
           "fast-forward": f"{b}: {short(r['old'])}..{short(r['new'])} (fast-forward)",
           "ahead": f"{b} is ahead of {shown(r['remote'])}/{b}; nothing to pull (mvc push publishes it)"}
    click.echo(msg[r["status"]])


@cli.command()
@click.argument("url")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--lazy", is_flag=True, help="Fetch commits and trees only; blobs are fetched on first use.")
@click.option("--endpoint", metavar="URL", help="S3 endpoint (MinIO, Ceph, a local S3 server).")
@jobs_opt
@json_opt
def clone(url, directory, lazy, endpoint, jobs, as_json):
    """Copy the repository at URL into DIRECTORY (default: the URL's last part, less a `.mvc`
    suffix, as git drops `.git`: models.mvc -> models) with remote origin.

    With --lazy only commits and trees are copied; tensor blobs are fetched from origin the first
    time something reads them (load, checkout, CI) and cached. Re-running an interrupted clone
    resumes it.

    \b
    Examples:
      mvc clone /mnt/shared/models.mvc models
      mvc clone s3://my-bucket/team/models --lazy
      mvc clone s3://models/run1 run1 --endpoint http://127.0.0.1:9000
    """
    started = time.perf_counter()
    rm = _rm()
    resumes_when_interrupted("the same mvc clone resumes it; what it fetched so far stays (remove the folder to give it up)")
    repo, r = rm.clone(url, directory, lazy=lazy, endpoint=endpoint, jobs=jobs, progress=BarProgress())
    resumes_when_interrupted(None)  # (done: a signal from here on interrupts a clone that stands)
    r["seconds"] = time.perf_counter() - started
    if as_json:
        emit_json(r)
        return
    f = r["fetch"]
    click.echo(f"cloned {shown(r['url'])} into {shown(r['path'])}" + (" (lazy)" if lazy else ""))
    click.echo(f"received {f['objects_received']} objects, {human_bytes(f['bytes_received'])} in "
               f"{r['seconds']:.1f} s" + (f"; {f['blobs_promised']} blobs fetched on first use" if lazy else ""))
    if r["branch"]:
        click.echo(f"HEAD is {shown(r['branch'])} at {short(r['head'])}")
    else:
        warn("the remote has no branches yet (an empty repository)")

"""Pack command: `mvc pack` moves loose objects into a compressed pack (byte grouping, XOR deltas)."""
from __future__ import annotations

import errno
import os

import click

from ..errors import MvcError
from ..repo import Repo
from .main import cli, resumes_when_interrupted
from .output import byte_progress, emit_json, human_bytes, json_opt, rate, short, size_change


@cli.command("pack")
@click.option("--all", "full", is_flag=True,
              help="Rewrite every reachable object into one pack and drop old packs (gc rewrites only "
                   "the small packs and those holding garbage).")
@json_opt
def pack_cmd(full, as_json):
    """Move reachable loose objects into a pack file; object ids and history do not change.

    Each tensor is stored as the smallest of raw, byte-grouped + zstd, or the XOR against the same
    tensor in the parent commit + byte-grouped + zstd (float32, bfloat16, float16; other objects
    are zstd'd or raw). Delta chains are at most `pack.maxDepth` long (default 8). `mvc gc` packs
    too; `mvc config pack.autoEvery K` packs after every K commits.

    \b
    Examples:
      mvc pack
      mvc pack --all --json
      mvc du
    """
    from ..pack_write import Packer
    resumes_when_interrupted("the same mvc pack finishes the work")
    repo = Repo(os.getcwd())
    with Packer(repo, full=full) as packer:
        with byte_progress(packer.total_bytes, "packing") as advance:
            try:
                r = packer.run(progress=advance, partial=advance)
            except OSError as e:  # (as gc says it: how much room packing needs)
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise MvcError(f"no space left on device to pack ({e.filename or repo.dir}): the pack it writes "
                               f"needs up to {human_bytes(packer.total_bytes)}",
                               f"nothing was lost; free {human_bytes(packer.total_bytes)} and run mvc pack again") \
                    from None
    if as_json:
        emit_json(r)
        return
    if not r["packed"]:
        click.echo("nothing to pack" + (f" (removed {r['loose_removed']} loose copies of packed objects)"
                                        if r["loose_removed"] else ""))
        return
    counts = ", ".join(f"{k} {v}" for k, v in r["encodings"].items() if v)
    before, after = r["bytes_before"], r["bytes_after"]
    speed = f", {rate(before, r['seconds'])}" if r["seconds"] > 0 else ""
    click.echo(f"packed {r['packed']} objects into pack-{short(r['pack'][5:])} ({counts})")
    click.echo(f"  {human_bytes(before)} -> {human_bytes(after)} ({size_change(before, after)}) "
               f"in {r['seconds']:.1f} s{speed}")
    extra = [f"removed {r['loose_removed']} loose objects"]
    if r["packs_removed"]:
        extra.append(f"{r['packs_removed']} old packs")
    if r["dropped"]:
        extra.append(f"dropped {r['dropped']} unreachable packed objects")
    click.echo("  " + ", ".join(extra))
    if r.get("packs_left"):  # (as gc says it)
        click.echo(f"  {r['packs_left']} old packs left in place ({r['packs_left_why']}); the next gc or "
                   "mvc pack --all drops their garbage")

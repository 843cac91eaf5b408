"""Repository commands: init, commit, log, show, diff, checkout, export, rollback, reflog, branch,
switch, tag, status, gc, fsck, du, config and the plumbing (rev-parse, cat-object, ls-tree)."""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

import click

from ..errors import BadInput, MvcError
from ..repo import Repo
from .main import cli, resumes_when_interrupted
from .ci_state import ci_states, commit_certificates, echo_on_commit_ci, on_commit_ci
from .output import (BarProgress, byte_progress, change, console, emit_json, human_bytes, json_opt, json_when_ci_fails,
                     message_opt, negative_result, plural, print_table, short, shown, shown_name, size_change,
                     stream_stdout, table, warn)
from ..quoting import json_shown, message_body, quoted


def _repo() -> Repo:
    return Repo(os.getcwd())


def _pairs(values, what: str, example: str) -> dict:
    """KEY=VALUE option values as a dict; refuses a missing '=', an empty side or a repeated KEY."""
    out = {}
    left, _, right = what.partition("=")
    for text in values:
        key, sep, raw = text.partition("=")
        key = key.strip()
        problem = "no '='" if not sep else f"empty {left}" if not key else f"empty {right}" if not raw else None
        if problem:
            raise click.BadParameter(f"{text!r} has {problem}: use {what}, e.g. {example}")
        if key in out:
            raise click.BadParameter(f"{key!r} given twice")
        out[key] = raw
    return out


def _metrics_option(ctx, param, values) -> dict:
    """--metric KEY=VALUE: VALUE is read as an int, a float, true/false, or else kept as text;
    nan, inf and numbers too large for a float are a usage error (JSON has no such numbers)."""
    from ..objects import check_metric
    metrics = {k: _metric_value(v) for k, v in _pairs(values, "KEY=VALUE", "loss=2.31").items()}
    for k, v in metrics.items():
        try:
            check_metric(k, v)
        except BadInput as e:
            raise click.BadParameter(f"{e.message} (record it as text instead, e.g. {k}=diverged)") from None
    return metrics


def _components_option(ctx, param, values) -> dict:
    return _pairs(values, "NAME=PATH", "core=core.safetensors")


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.I)


def _metric_value(raw: str):
    """A number written plainly (ASCII digits; NaN and inf are refused by the caller), true/false, or
    else the text as given: Python's int() would read 2024_01, ' 7 ' or Arabic-Indic digits."""
    if _INT_TEXT.fullmatch(raw):
        try:
            return int(raw)
        except ValueError:  # more than 4300 digits
            raise BadInput(f"metric value {raw[:20]}... has {len(raw)} digits: a number holds at most 4300") from None
    if _FLOAT_TEXT.fullmatch(raw):
        value = float(raw)
        if value == 0 and any(c in "123456789" for c in raw.lower().partition("e")[0]):
            raise click.BadParameter(f"metric value {raw} is too small for a float (it would be stored as 0): "
                                     "the smallest is about 5e-324", param_hint="--metric")
        return value
    return {"true": True, "false": False}.get(raw.lower(), raw)


def _commit_components(path, comps: dict, remove) -> dict:
    """The NAME -> PATH map of `mvc commit`: PATH is component `model`; none may also be removed."""
    if path and "model" in comps:
        raise click.BadParameter("component 'model' given twice (PATH and -c model=...)", param_hint="--component")
    components = {"model": path, **comps} if path else dict(comps)
    both = sorted(set(components) & set(remove))
    if both:
        raise click.BadParameter(f"component {both[0]!r} is both committed and removed", param_hint="--remove")
    for p in components.values():
        if not os.path.lexists(p):
            raise BadInput(f"{p}: no such file or directory")
    if not components and not remove:
        raise click.UsageError("nothing to commit: give a PATH, --component NAME=PATH or --remove NAME")
    return components


@cli.command()
@click.argument("path", default=".", type=click.Path(file_okay=False))
@json_opt
def init(path, as_json):
    """Create an empty repository in PATH (default: the current directory).

    \b
    Example:
      mvc init my-models
    """
    existed = os.path.isdir(os.path.join(path, ".mvc"))
    repo = Repo.init(path)
    if as_json:
        emit_json({"path": repo.root, "created": not existed})
    else:
        click.echo(("Reinitialized existing" if existed else "Initialized empty") + f" mvc repository in {shown(repo.dir)}")


@cli.command()
@click.argument("path", required=False, type=click.Path(exists=False, readable=False))  # (unreadable: exit 3, as -c)
@click.option("-c", "--component", "comps", multiple=True, metavar="NAME=PATH", callback=_components_option,
              help="Commit PATH as component NAME (repeatable).")
@message_opt(required=True)
@click.option("--metric", "metrics", multiple=True, metavar="KEY=VALUE", callback=_metrics_option,
              help="Record a metric (repeatable); VALUE is a number, true/false or text.")
@click.option("--branch", "-b", help="Commit onto this branch (created when new); HEAD does not move.")
@click.option("--remove", multiple=True, metavar="NAME", help="Drop a component carried over from the parent.")
@json_opt
def commit(path, comps, message, metrics, branch, remove, as_json):
    """Commit a file or directory (component `model`) and/or named components.

    Components not named carry over from the parent commit; unchanged tensors are never stored
    twice.

    \b
    Examples:
      mvc commit model.safetensors -m "step 1000" --metric loss=2.31
      mvc commit -c core=core.safetensors -c brick/python=brick.safetensors -m "paste"
      mvc commit ./hf-model-dir -m "import" --branch imports
    """
    repo = _repo()
    components = _commit_components(path, comps, remove)
    from ..components import input_bytes
    total = sum(input_bytes(p) for p in components.values())
    with byte_progress(total, "committing") as advance, json_when_ci_fails(as_json):
        cid = repo.commit(components, message=message, metrics=metrics,
                          branch=branch, remove=remove, progress=advance)
    c = repo.read_commit(cid)
    unchanged = bool(c["parents"]) and repo.read_commit(c["parents"][0])["components"] == c["components"]
    if unchanged:  # git would refuse; a checkpoint may still record new metrics, so say it only
        warn(f"no component changed since {short(c['parents'][0])}: the commit records its message and "
             "metrics only")
    elif c["parents"]:  # weights replaced by what holds none (mvc commit notes.txt): likely a slip, said once
        landed = branch or repo.head_branch
        undo = "mvc rollback" if landed == repo.head_branch else f"mvc switch {shown(landed)}; mvc rollback"
        for name, n in _emptied(repo, c["parents"][0], cid, components):
            warn(f"component {shown_name(name)} held {plural(n, 'tensor')} and now holds none (only files): "
                 f"{undo} undoes this commit")
    ci = on_commit_ci(repo, cid)
    if as_json:
        emit_json({"commit": cid, "branch": branch or repo.head_branch, "parents": c["parents"],
                   "components": c["components"], "unchanged": unchanged, **ci})
    else:
        click.echo(f"[{shown(branch or repo.head_branch)} {short(cid)}] {shown(message.splitlines()[0])}")
        echo_on_commit_ci(ci)


def _emptied(repo: Repo, parent: str, cid: str, names) -> list[tuple[str, int]]:
    """(component, tensors it held) of `names` that held tensors in `parent` and hold none in `cid`;
    nothing when a tree cannot be read (the commit stands: this is only a warning)."""
    try:
        before, after = repo.read_commit(parent)["components"], repo.read_commit(cid)["components"]
        return [(name, n) for name in sorted(set(names) & set(before))
                if (n := len(repo.read_tree(before[name], shared=True)["tensors"]))
                and not repo.read_tree(after[name], shared=True)["tensors"]]
    except MvcError:
        return []


@cli.command()
@click.argument("rev", required=False)
@click.option("-n", "--max-count", "n", type=click.IntRange(min=0), help="Show at most N commits.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@json_opt
def log(rev, n, oneline, as_json):
    """List commits reachable from REV (default HEAD), newest first.

    A..B lists the commits B reaches and A does not (either side defaults to HEAD).

    \b
    Examples:
      mvc log -n 10 --json
      mvc log main..experiment      # what experiment added since it left main
    """
    repo = _repo()
    exclude = None
    if rev and "..." in rev:
        raise click.BadParameter(f"{rev}: A...B (commits on either side) is not supported; "
                                 "mvc log A..B and mvc log B..A list each side", param_hint="REV")
    if rev and ".." in rev:  # no branch or tag name holds ".."
        exclude, _, rev = rev.partition("..")
        exclude, rev = exclude or "HEAD", rev or "HEAD"
    commits = repo.log(rev, n, exclude=exclude)
    if not commits and not as_json:
        if n == 0:  # asked for none
            return
        elsewhere = repo.commits_elsewhere() if rev in (None, "HEAD") and repo.head_branch else None
        click.echo(f"no commits in {exclude}..{rev}" if exclude else "no commits yet" + (
            f" on {shown(repo.head_branch)} ({elsewhere})" if elsewhere else ""), err=True)
        return
    status = ci_states(repo, [c["id"] for c in commits])
    if as_json:
        emit_json([{"id": c["id"], "parents": c["parents"], "message": c["message"], "metrics": c["metrics"],
                    "components": c["components"], "author": c["author"], "time": c["time"],
                    "ci": status.get(c["id"])} for c in commits])
        return
    heads = {}
    local, tracking = repo.branches(), {r[len("refs/remotes/"):]: oid for r, oid in repo.refs.list("refs/remotes/").items()}
    for b, oid in local.items():  # (a local branch named as a tracking one, origin/main: both said in full)
        heads.setdefault(oid, []).append(shown_name(f"heads/{b}" if b in tracking else b))
    for b, oid in tracking.items():  # (what fetch brought: origin/NAME)
        heads.setdefault(oid, []).append(shown_name(f"remotes/{b}" if b in local else b))
    for t, oid in repo.tags().items():
        heads.setdefault(oid, []).append(f"tag: {shown_name(t)}")
    out = []
    for c in commits:
        deco = f" ({', '.join(heads[c['id']])})" if c["id"] in heads else ""
        ci = f" [ci: {status[c['id']]}]" if c["id"] in status else ""
        if oneline:
            out.append(f"{short(c['id'])}{deco} {shown(c['message'].splitlines()[0]) if c['message'] else ''}{ci}")
            continue
        out.append(f"commit {short(c['id'])}{deco}")
        out.append(f"Author: {shown(c['author'])}")
        out.append(f"Date:   {shown(c['time'])}")
        if c["metrics"]:
            out.append("Metrics: " + _metrics_line(c["metrics"]))
        if ci:
            out.append(f"CI:     {status[c['id']]}")
        out.append("")
        out.extend(message_body(c["message"]))
        out.append("")
    click.echo("\n".join(out))


@cli.command()
@click.argument("rev", default="HEAD")
@json_opt
def show(rev, as_json):
    """Show a commit (REV, default HEAD): message, metrics, provenance and its components.

    \b
    Example:
      mvc show HEAD~1
    """
    repo = _repo()
    info = repo.show(rev)
    info["ci"] = ci_states(repo, [info["id"]]).get(info["id"])
    info["certificates"] = commit_certificates(repo, info["id"]) if info["ci"] else []
    if as_json:
        emit_json(info)
        return
    con = console()
    con.print(f"commit {short(info['id'])}")
    con.print(f"Author: {shown(info['author'])}\nDate:   {shown(info['time'])}")
    if info["parents"]:
        con.print("Parents: " + " ".join(short(p) for p in info["parents"]))
    if info["metrics"]:
        con.print("Metrics: " + _metrics_line(info["metrics"]))
    git = info["provenance"].get("git")
    if git:
        sha, branch, dirty, why = git.get("sha"), git.get("branch"), git.get("dirty"), git.get("error")
        if sha or branch:
            code = (shown(short(sha)) if sha else "(no commit yet)") + (f" on {shown(branch)}" if branch
                                                                       else " (detached HEAD)")
            code += {True: " (dirty)", False: ""}.get(dirty, f" (dirty: unknown{': ' + shown(why) if why else ''})")
        else:  # (sha and branch unknown: a record of an mvc that kept only the error)
            code = f"(unknown: {shown(why or 'not recorded')})"
        con.print(f"Code:   git {code}")
    paste = (info.get("extra") or {}).get("paste")
    if isinstance(paste, dict) and isinstance(paste.get("brick"), str):  # (recorded by mvc paste)
        brick, as_name = paste["brick"], paste.get("as") or paste["brick"]
        con.print(f"Pasted: brick {shown_name(brick)} from {shown(short(str(paste.get('source'))))}"
                  + (f" as brick/{shown_name(as_name)}" if as_name != brick else "")
                  + f" ({shown(paste.get('mode') or 'copy')})")
    if info["ci"]:
        certs = info["certificates"]
        con.print(f"CI:     {info['ci']}" + (f" (certificate{'s' if len(certs) > 1 else ''} "
                                             f"{', '.join(short(x) for x in certs)})" if certs else ""))
    con.print("\n" + "\n".join(message_body(info["message"])) + "\n")
    t = table("component", "kind", "tree", "tensors", "files", "bytes", "dtypes", "arch",
              names=("component", "arch"), ids=("tree",))
    for name, c in info["components"].items():
        t.add_row(shown_name(name), shown(c["kind"]), short(c["tree"]), str(c["tensors"]), str(c["files"]),
                  human_bytes(c["bytes"]), ", ".join(f"{k}x{v}" for k, v in sorted(c["dtypes"].items())),
                  shown(c["arch"] or "-"))
    print_table(con, t)


@cli.command()
@click.argument("rev_a")
@click.argument("rev_b", default="HEAD")
@click.option("--exit-code", is_flag=True,
              help="Exit 1 when the components differ (tensors, side files, metadata); metrics are not compared.")
@click.option("--all", "show_all", is_flag=True, help="Also list unchanged tensors.")
@json_opt
def diff(rev_a, rev_b, exit_code, show_all, as_json):
    """Compare two commits (REV_B: default HEAD) per component and per tensor, with side files and
    metric changes.

    Changed tensors report max |delta|, relative L2 change and the fraction of elements changed.
    With --exit-code the exit status is 1 when a component, tensor or side file differs; metric
    changes alone exit 0 (JSON: "identical" true, "metrics_changed" true). A changed metric is
    {"a": VALUE, "b": VALUE} in the JSON, with "only_in": "a" or "b" where one side lacks it (its
    VALUE null there; "-" in the text, where a null is `null`).

    \b
    Examples:
      mvc diff HEAD~1 HEAD
      mvc diff main experiment --json --exit-code
      mvc diff HEAD~1 | grep q_proj
    """
    repo = _repo()
    from ..diffs import compared_bytes
    ca, cb = (repo.read_commit(repo.resolve(r))["components"] for r in (rev_a, rev_b))
    total = sum(compared_bytes(repo.read_tree(ca[n], shared=True), repo.read_tree(cb[n], shared=True))
                for n in set(ca) & set(cb) if ca[n] != cb[n])
    with byte_progress(total, "comparing") as advance:
        d = repo.diff(rev_a, rev_b, progress=advance)
    d["metrics_changed"] = bool(d["metrics"])
    if exit_code and not d["identical"]:
        negative_result()
    if as_json:
        emit_json(d)
    else:
        _print_diff(d, show_all)
    if exit_code and not d["identical"]:
        sys.exit(1)


def _print_diff(d: dict, show_all: bool) -> None:
    con = console()
    con.print(f"diff {short(d['a'])} -> {short(d['b'])}")
    for name, c in d["components"].items():
        _print_component_diff(con, name, c, show_all)
    for k, v in d["metrics"].items():
        con.print(f"  metric {_metric_key(k)}: {_value(v, 'a')} -> {_value(v, 'b')}")
    if d["identical"]:
        con.print("  weights and files identical (metrics differ)" if d["metrics_changed"] else "  no differences")


def _print_component_diff(con, name: str, c: dict, show_all: bool) -> None:
    if c["status"] == "unchanged":
        con.print(f"  {shown_name(name)}: unchanged")
        return
    counts = Counter(t["status"] for t in c["tensors"].values())
    meta = c.get("meta_fields") or []
    parts = [f"{v} {k}" for k, v in sorted(counts.items())] + (
        [f"metadata changed: {', '.join(map(shown, meta))}"] if meta else [])
    con.print(f"  {shown_name(name)}: {c['status']}" + (f" ({', '.join(parts)})" if parts else ""))
    rows = [_tensor_row(n, t) for n, t in c["tensors"].items() if show_all or t["status"] != "unchanged" or t.get("note")]
    if rows:
        t = table("tensor", "status", "dtype", "shape", "max |delta|", "rel L2", "changed", names=("tensor",))
        for row in rows:
            t.add_row(*row)
        print_table(con, t)
    for rel, f in c["files"].items():
        side = {"added": lambda a, b: b, "removed": lambda a, b: a}.get(f["status"], change)
        size = side(*map(human_bytes, f["size"]))
        if "header" in f:  # (a safetensors file: its header's id, and how many of its tensors changed)
            what = f"header {side(*map(short, f['header']))}" if f["header"][0] != f["header"][1] else "same header"
            n = f["tensors_changed"]
            con.print(f"    file {shown_name(rel)}: {f['status']} ({size}, {what}"
                      + (f", {n} tensor{'' if n == 1 else 's'} changed)" if n else ")"))
        else:
            con.print(f"    file {shown_name(rel)}: {f['status']} ({size}, {side(*map(short, f['id']))})")


def _tensor_row(name: str, t: dict) -> list[str]:
    def sides(key):  # a changed tensor has [a, b] for dtype and shape, an added or removed one a value
        v = t.get(key)
        return "" if v is None else change(*v) if t["status"] == "changed" else str(v)

    def num(v):
        return "-" if v is None else f"{v:.3g}"
    frac = t.get("frac_changed")
    return [shown_name(name), t["status"] + (f" ({shown(t['note'])})" if t.get("note") else ""), sides("dtype"), sides("shape"),
            num(t.get("max_abs_delta")), num(t.get("rel_l2")), _fraction(frac)]


def _fraction(frac) -> str:
    """A changed fraction as a percentage that never rounds a change to 0.0% or all to 100.0%."""
    if frac is None:
        return "-"
    if 0 < frac < 0.001:
        return "<0.1%"
    if 0.999 < frac < 1:
        return ">99.9%"
    return f"{frac:.1%}"


def _value(entry: dict, side: str) -> str:
    """A metric of one side of a diff: "-" where that side has none (a null prints `null`)."""
    return "-" if entry.get("only_in", side) != side else _metric_shown(entry[side])


def _metric_shown(v) -> str:
    """A metric value as log, show and diff print it, so that two values never print alike:
    numbers, lists, dicts and true/false/null as compact JSON ([1.5,true]), its unsafe characters
    in JSON's own escapes (never quoted); text as a name is shown (see _metric_text), also quoted
    when it could read as one of those: reading as JSON, starting with [ or {, or "-" (diff's none)."""
    if not isinstance(v, str):  # (JSON ends where it ends)
        return json_shown(v)
    return _metric_text(v, (", ", " -> "), quote=v == "-" or v.startswith(("[", "{")) or _reads_as_json(v))


def _metric_key(k) -> str:
    """A metric's name as log, show and diff print it (see _metric_text)."""
    return _metric_text(str(k), ("=", ", ", ": ", " -> "))


def _metric_text(text: str, separators: tuple[str, ...], quote: bool = False) -> str:
    """Text of a metric (a name, or a text value) as `shown_name` shows names (quoted when it holds
    no-break spaces or is not in composed form: `é` two ways would print alike), and quoted when it
    holds one of the `separators` of the lines it goes in (`k=v, k=v`; `metric k: a -> b`)."""
    out = shown_name(text)
    return quoted(text) if not out.startswith('"') and (quote or any(s in text for s in separators)) else out


def _metrics_line(metrics: dict) -> str:
    """`k=v, k=v` (see _metric_key and _metric_shown): {"a=b, c": 1} and {"a": "b, c=1"} print
    `"a=b, c"=1` and `a="b, c=1"`."""
    return ", ".join(f"{_metric_key(k)}={_metric_shown(v)}" for k, v in sorted(metrics.items()))


def _reads_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("-o", "--output", "out", type=click.Path(), help="Directory to write into (required).")
@click.option("-c", "--component", "comps", multiple=True, help="Only this component (repeatable).")
@click.option("-f", "--force", is_flag=True, help="Overwrite files that exist there with other content.")
@json_opt
def checkout(rev, out, comps, force, as_json):
    """Write the components of REV (default HEAD) as their original files under DIR/<component>/
    (refs never move).

    Files already there with other content are refused (nothing is written) unless --force;
    files already holding the same bytes are left as they are.

    \b
    Examples:
      mvc checkout HEAD~2 -o restored/
      mvc checkout main -o restored/ --force    # overwrite an older checkout
    """
    if not out:
        raise click.UsageError("mvc checkout writes files: name the folder with -o DIR (to make a branch the "
                               "current one, as git checkout BRANCH does, run mvc switch BRANCH)")
    repo = _repo()
    cid = repo.resolve(rev)
    total = sum(f["size"] for name, tid in repo.read_commit(cid)["components"].items()
                if not comps or name in comps for f in repo.read_tree(tid, shared=True)["files"].values())
    same: list[str] = []
    with byte_progress(total, "checking out") as advance:
        files = repo.checkout(cid, out, comps or None, progress=advance, force=force, unchanged=same)
    if as_json:
        emit_json({"commit": cid, "files": files, "unchanged": same})
    elif same and len(same) == len(files):
        click.echo(f"nothing to write: the {plural(len(files), 'file')} of {short(cid)} under {shown(out)} already "
                   + ("holds" if len(files) == 1 else "hold") + " its bytes")
    else:
        click.echo(f"wrote {plural(len(files) - len(same), 'file')} of {short(cid)} under {shown(out)}"
                   + (f" ({len(same)} already up to date)" if same else ""))


@cli.command()
@click.argument("rev")
@click.argument("component")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write (- for standard output).")
@click.option("-f", "--force", is_flag=True, help="Overwrite the file if it exists with other content.")
@json_opt
def export(rev, component, out, force, as_json):
    """Write one single-file COMPONENT of REV to a file.

    An existing file with other content is refused unless --force. The file holds what was
    committed (for a model committed from Python, its tensors): an arch, config and ABI the commit
    records stay in the commit, so a file committed back with `mvc commit` records none (and
    load_model, semantic CI and paste need them): branch from the commit instead of re-importing.

    \b
    Examples:
      mvc export HEAD core -o core.safetensors
      mvc export HEAD core -o - | ssh host 'cat > core.safetensors'
    """
    if out == "-":
        if as_json:
            raise click.UsageError("--json cannot share stdout with the file (-o -)")
        stream_stdout(_repo().export_chunks(rev, component), f"component {component}")
        return
    repo = _repo()
    cid = repo.resolve(rev)
    repo.read_commit(cid, shared=True)  # (a commit object missing is said so, not "unknown revision ID")
    size = sum(f["size"] for f in repo.tree(cid, component)["files"].values())
    same: list[str] = []
    with byte_progress(size, "exporting") as advance:
        repo.export(cid, component, out, force=force, progress=advance, unchanged=same)
    if as_json:
        emit_json({"commit": cid, "component": component, "file": out, "bytes": os.path.getsize(out),
                   "unchanged": bool(same)})
    else:
        click.echo(f"{shown(out)} already holds these bytes: left as it was" if same else f"wrote {shown(out)}")


@cli.command()
@click.argument("rev", required=False)
@json_opt
def rollback(rev, as_json):
    """Move the current branch back to REV (default: its parent). Nothing is deleted.

    Every move is in the reflog, so a rollback can be undone with `mvc rollback <old id>`.

    \b
    Examples:
      mvc rollback            # back one commit
      mvc rollback HEAD~3
      mvc reflog              # find the id to go back to
    """
    r = _repo().rollback(rev)
    if as_json:
        emit_json(r)
    else:
        undo = f"undo with: mvc rollback {short(r['old'])}" if r["old"] else "it had no commit"
        click.echo(f"{shown(r['branch'])}: {short(r['old'])} -> {short(r['new'])} ({undo})")


@cli.command()
@click.argument("branch", required=False)
@click.option("-n", "--max-count", "n", type=click.IntRange(min=0), help="Show at most N moves (newest first).")
@json_opt
def reflog(branch, n, as_json):
    """List the moves of a branch's head (default, or HEAD: the current branch), newest first.

    BRANCH may be a remote-tracking branch (origin/main): its moves by fetch, pull and push.

    \b
    Examples:
      mvc reflog -n 5
      mvc reflog experiment --json
      mvc reflog origin/main
      mvc rollback @{2}       # the branch as it was two moves ago
    """
    repo = _repo()
    entries = repo.reflog(branch)[:n]
    if as_json:
        emit_json(entries)
        return
    label = "" if branch in (None, "HEAD", repo.head_branch) else branch  # what @{N} resolves against
    for i, e in enumerate(entries):
        click.echo(f"{short(e['new'])} {shown(label) if label else ''}@{{{i}}}: {shown(e['message'])} "
                   f"({shown(e['time'])}, was {short(e['old'])})")


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete branch NAME.")
@click.option("-r", "--remotes", "remotes", is_flag=True, help="List the remote-tracking branches (origin/NAME).")
@click.option("-a", "--all", "list_all", is_flag=True, help="List local and remote-tracking branches.")
@click.option("-f", "--force", is_flag=True, help="Move NAME to REV if it exists (not the current branch: see rollback).")
@json_opt
def branch(name, rev, delete, remotes, list_all, force, as_json):
    """List branches, create NAME at REV (default HEAD), or delete one with -d.

    Remote-tracking branches (what mvc fetch brought: origin/NAME) are listed with -r, or with
    the local ones with -a. With -f an existing branch moves to REV; the move is in its reflog.

    \b
    Examples:
      mvc branch
      mvc branch -a
      mvc branch experiment HEAD~2
      mvc branch -f experiment main     # move it (undo: mvc branch -f experiment <old id>)
      mvc branch -d experiment
    """
    repo = _repo()
    if (remotes or list_all) and (name is not None or delete or force):
        raise click.UsageError("-r and -a list branches: they take no NAME, -d or -f")
    if delete:
        if not name or force or rev is not None:  # (a second name was taken for REV and ignored)
            raise click.UsageError("mvc branch -d NAME (one branch, without -f)")
        return _deleted("branch", name, repo.delete_branch(name), as_json)
    if force and name is None:
        raise click.UsageError("mvc branch -f NAME [REV]")
    if name is not None:  # ("" is a bad name, not a listing)
        if force:
            moved = repo.force_branch(name, rev)
            old, oid = moved["old"], moved["new"]
        else:
            old, oid = None, repo.create_branch(name, rev)
        if as_json:
            emit_json({"branch": name, "commit": oid, "old": old})
        elif old:
            click.echo(f"Moved branch {shown_name(name)} from {short(old)} to {short(oid)} (undo with: mvc branch -f "
                       f"{shown_name(name)} {short(old)})")
        else:
            click.echo(f"Created branch {shown_name(name)} at {short(oid)}")
        return
    current = repo.head_branch
    branches = {} if remotes else repo.branches()
    tracking = {r[len("refs/remotes/"):]: oid for r, oid in repo.refs.list("refs/remotes/").items()} \
        if remotes or list_all else {}
    if as_json:
        emit_json({"current": current, "branches": branches, **({"remotes": tracking} if remotes or list_all else {})})
        return
    if current and current not in branches and not remotes:
        click.echo(f"* {shown_name(current)} (no commits yet)")
    for b, oid in branches.items():
        click.echo(f"{'*' if b == current else ' '} {shown_name(b)} {short(oid)}")
    for b, oid in tracking.items():  # (beside local ones, as git: a local branch may be named origin/main)
        click.echo(f"  {shown_name(b if remotes else 'remotes/' + b)} {short(oid)}")


def _deleted(kind: str, name: str, oid: str, as_json: bool) -> None:
    if as_json:
        emit_json({"deleted": name, "was": oid})
    else:
        click.echo(f"Deleted {kind} {shown_name(name)} (was {short(oid)})")


@cli.command()
@click.argument("name")
@json_opt
def switch(name, as_json):
    """Make branch NAME the current branch (mvc has no detached HEAD: to work from a commit,
    make a branch there). In a repository without commits, NAME is the branch the first commit
    creates; this also mends a damaged HEAD.

    \b
    Examples:
      mvc switch experiment
      mvc branch fix HEAD~1 && mvc switch fix
    """
    repo = _repo()
    moved = repo.switch(name)
    name = repo.head_branch or name  # (HEAD: the current branch)
    follows = _git_branch_ahead_of(repo)
    if follows:
        warn(f"git is on branch {follows}: inside a git work tree the next commit goes to the mvc branch "
             f"named like git's ({follows}), not to {name}; run git switch {name}, or commit with --branch {name}")
    if as_json:
        emit_json({"branch": name, "head": repo.head(), "next_commit_branch": follows or name})
    else:
        click.echo(f"Switched to branch {shown_name(name)}" if moved else f"Already on {shown_name(name)}")


def _git_branch_ahead_of(repo) -> str | None:
    """The branch the next commit goes to when it is not mvc's current branch: git's, inside a git
    work tree (DESIGN.md section 10); None when they agree or outside git."""
    from ..errors import BadName
    from ..objects import check_ref_name
    from ..provenance import git_current_branch
    gb, _detached = git_current_branch(repo.root)
    if not gb or gb == repo.head_branch:
        return None
    try:
        check_ref_name(gb)
    except BadName:  # such a git branch is not followed (the commit warns)
        return None
    return gb


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-f", "--force", is_flag=True, help="Move an existing tag.")
@click.option("-d", "--delete", is_flag=True, help="Delete tag NAME.")
@json_opt
def tag(name, rev, force, delete, as_json):
    """List tags, or tag REV (default HEAD) as NAME.

    \b
    Examples:
      mvc tag                      # list them
      mvc tag v1.0 HEAD
      mvc tag -f v1.0 HEAD~1       # move it
      mvc tag -d v1.0
    """
    repo = _repo()
    if delete:
        if not name or force or rev is not None:  # (a second name was taken for REV and ignored)
            raise click.UsageError("name the tag to delete: mvc tag -d NAME (one tag, without -f)")
        return _deleted("tag", name, repo.delete_tag(name), as_json)
    if force and name is None:  # (it listed the tags)
        raise click.UsageError("mvc tag -f NAME [REV]")
    if name is not None:  # ("" is a bad name, not a listing)
        oid = repo.tag(name, rev, force)
        if as_json:
            emit_json({"tag": name, "commit": oid})
        else:
            click.echo(f"Tagged {short(oid)} as {shown_name(name)}")
        return
    tags = repo.tags()
    if as_json:
        emit_json(tags)
    else:
        for t, oid in tags.items():
            click.echo(f"{shown_name(t)} {short(oid)}")


@cli.command()
@json_opt
def status(as_json):
    """Show the current branch, HEAD, the git link and the CI state of HEAD.

    \b
    Examples:
      mvc status
      mvc status --json
    """
    repo = _repo()
    from ..provenance import git_current_branch
    head = repo.head()
    gb, detached = git_current_branch(repo.root)
    follows = _git_branch_ahead_of(repo)
    info = {"branch": repo.head_branch, "head": head, "head_problem": repo.refs.head_problem(),
            "git_branch": gb, "git_detached": detached, "next_commit_branch": follows or repo.head_branch,
            "ci": ci_states(repo, [head]).get(head) if head else None, "root": repo.root}
    if as_json:
        emit_json(info)
        return
    if info["head_problem"]:  # (e.g. HEAD naming a tag: not a detached HEAD, a damaged one)
        click.echo(f"Not on a branch: {info['head_problem']}")
    else:
        click.echo(f"On branch {shown(info['branch']) if info['branch'] else '(detached)'}")
    elsewhere = None if head else repo.commits_elsewhere()
    click.echo(f"HEAD: {short(head)}" if head else "No commits yet" + (f" on it ({elsewhere})" if elsewhere else ""))
    if gb or detached:
        click.echo(f"git: {'detached HEAD' if detached else 'branch ' + shown(gb)}")
    if follows:
        click.echo(f"the next commit goes to branch {shown(follows)} (it follows git's branch; --branch overrides)")
    if info["ci"]:
        click.echo(f"CI of HEAD: {info['ci']}")


class _Seconds(click.FloatRange):
    """click.FloatRange, which lets NaN through (every comparison with it is false): refused as
    infinity is, a usage error (exit 2)."""

    def convert(self, value, param, ctx):
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be removed.")
@click.option("--grace", "grace", type=_Seconds(0, 10 * 365 * 24 * 3600), default=None,
              help="Keep unreachable objects younger than this many seconds (default 3600).")
@json_opt
def gc(dry_run, grace, as_json):
    """Remove objects unreachable from refs and reflogs; report bytes freed.

    \b
    Examples:
      mvc gc --dry-run
      mvc gc --grace 0      # also unreachable objects written in the last hour

    With a grace shorter than the default, gc first waits for commits and fetches in progress
    and holds new ones until it is done; with the default grace it waits for them (up to 60 s)
    only before deleting, and leaves the garbage for the next gc if they do not finish. Packs: the largest ones holding nothing to drop stay as
    they are (each at least twice the bytes of everything smaller); the rest, and reachable loose
    objects, go into one new pack (`mvc pack --all` rewrites everything into one); a pack
    holding chains deeper than pack.maxDepth is rewritten too. Bytes freed count the garbage and
    the extra copies removed (not what packing loose objects saves); a dry run's figure can differ
    where packed objects are encoded anew.
    """
    if not dry_run:
        resumes_when_interrupted("the same mvc gc finishes the work")
    r = _repo().gc(dry_run=dry_run, grace_s=grace, progress=BarProgress())
    if as_json:
        emit_json(r)
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {r['removed']} objects, {human_bytes(r['bytes_freed'])} "
                   f"({r['kept_recent']} recent unreachable objects kept)")
        if r["kept_by_reflogs"]:
            click.echo(f"kept {plural(r['kept_by_reflogs'], 'object')} ({human_bytes(r['kept_by_reflogs_bytes'])}) "
                       "that only reflog entries reach (rolled-back commits, deleted branches), so that "
                       "rollbacks can be undone; they go when the entries expire (gc.reflogExpire: 90d "
                       "unless set; mvc config gc.reflogExpire 0 expires them all at the next gc)")
        p = r.get("pack")
        if p and p.get("packed") and dry_run:  # sizes after packing are known only by packing
            click.echo(f"would pack {p['packed']} objects ({human_bytes(p['bytes_before'])})")
        elif p and p.get("packed"):
            click.echo(f"packed {p['packed']} objects: {human_bytes(p['bytes_before'])} -> "
                       f"{human_bytes(p['bytes_after'])} ({size_change(p['bytes_before'], p['bytes_after'])})")
        if p and not dry_run and (p.get("packs_removed") or (p.get("pack") and p.get("packs_kept"))):
            click.echo(f"packs: {p.get('packs_kept', 0)} kept as they were (large, nothing to drop), "
                       f"{p.get('packs_removed', 0)} rewritten or removed")
        if r.get("restamped_future_mtimes"):
            click.echo(f"{plural(r['restamped_future_mtimes'], 'file')} had modification times ahead of this "
                       "machine's clock (written under a clock ahead of it): their grace period now runs from now")
        if r.get("loose_left_why"):
            click.echo(f"no loose garbage deleted ({r['loose_left_why']}); the next gc deletes it")
        if p and p.get("packs_left"):
            click.echo(f"{p['packs_left']} old packs left in place ({p['packs_left_why']}); the next gc drops "
                       "their garbage")
        if r.get("stamps_removed"):
            click.echo(f"{verb} {r['stamps_removed']} verified stamps of objects no longer stored")
        if r.get("certificate_indexes_removed"):
            click.echo(f"{verb} {plural(r['certificate_indexes_removed'], 'certificate index', 'certificate indexes')} "
                       "(of commits no longer stored)")
        if r.get("not_fetched"):
            click.echo(f"{r['not_fetched']} reachable blobs are not fetched yet (lazy clone)")


@cli.command()
@json_opt
@click.option("--repair-from", "remote", metavar="REMOTE",
              help="Restore damaged or missing objects from this remote (name or URL), then check again.")
def fsck(as_json, remote):
    """Re-hash every object and check every reachable object; exit 1 on damage (3 when only objects
    of a newer format than this mvc reads stand in the way).

    With --repair-from, each damaged or missing object the remote has is downloaded, verified
    and stored again (packs are rewritten from the good copies); the exit status is that of the
    check after the repair. Damaged objects are named by their whole ids (64 hex digits).

    \b
    Examples:
      mvc fsck
      mvc fsck --json || echo damaged
      mvc fsck --repair-from origin
    """
    repo = _repo()
    if remote:
        from ..remote import repair
        resumes_when_interrupted("the same mvc fsck --repair-from finishes the repair")
        fixed = repair(repo, remote)
        r = fixed["after"]
        if not as_json:
            click.echo(f"restored {len(fixed['restored'])} objects from {fixed['remote']}"
                       + (f"; {len(fixed['failed'])} missing or damaged there too" if fixed["failed"] else ""))
        r = {**r, "repair": {k: fixed[k] for k in ("remote", "restored", "failed")}}
    else:
        total = sum(repo.store.size(o) for o in repo.store.ids()) if sys.stderr.isatty() else 0
        with byte_progress(total, "checking") as advance:
            r = repo.fsck(progress=advance)
    newer = r.get("newer_format", [])
    if r["problems"]:
        negative_result()
    if as_json:
        emit_json(r)
    else:
        for p in r["problems"]:
            click.echo(f"damaged: {shown(p['id'])}: {shown(p['problem'])}")
        for p in newer:
            click.echo(f"newer format: {shown(p['id'])}: {shown(p['problem'])}")
        click.echo(f"checked {r['checked']} objects: " + ("ok" if not r["problems"] else plural(len(r["problems"]), "problem"))
                   + (f", {len(newer)} of a newer format not checked" if newer else ""))
        if r.get("not_fetched"):
            click.echo(f"{r['not_fetched']} reachable blobs are not fetched yet (lazy clone): not damage")
    if r["problems"]:
        sys.exit(1)
    if newer:  # intact, unread: not damage, not a clean bill either
        raise MvcError(f"{plural(len(newer), 'reachable object')} of a newer format than this mvc reads, and what "
                       "they refer to, could not be checked", "upgrade mvc to check them")


@cli.command()
@json_opt
def du(as_json):
    """Stored bytes, logical bytes (all commits as plain files) and the dedup ratio.

    \b
    Examples:
      mvc du
      mvc du --json
    """
    r = _repo().du()
    if as_json:
        emit_json(r)
    else:
        ratio = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
        click.echo(f"{plural(r['commits'], 'commit')}, {plural(r['objects'], 'object')} "
                   f"({r.get('loose_objects', r['objects'])} loose, {r.get('packed_objects', 0)} packed)\n"
                   f"logical:     {human_bytes(r['logical_bytes'])} (every commit as plain files)\n"
                   f"after dedup: {human_bytes(r['object_bytes'] - r['unreachable_bytes'] + r.get('not_fetched_bytes', 0))} "
                   f"({ratio(r['dedup_ratio'])}, {_saved(r.get('dedup_saved_bytes'))})\n"
                   f"on disk:     {human_bytes(r['stored_bytes'])} "
                   f"(compression {ratio(r.get('compression_ratio'))}, saved {human_bytes(r.get('compression_saved_bytes'))})\n"
                   f"stamps:      {human_bytes(r.get('stamp_bytes', 0))} on disk for {r.get('stamps', 0)} "
                   f"verified stamps (not counted above)")
        if r["unreachable_objects"]:
            click.echo(f"garbage:     {human_bytes(r['unreachable_bytes'])} in {plural(r['unreachable_objects'], 'object')} "
                       "no commit reaches (in 'on disk', not in 'after dedup'; mvc gc removes them after the grace period)")
        if r.get("not_fetched"):
            click.echo(f"not fetched: {human_bytes(r['not_fetched_bytes'])} in {plural(r['not_fetched'], 'reachable blob')} "
                       "(lazy clone: in 'after dedup', from their trees' sizes; not in 'on disk')")
        if r.get("unfinished_files"):
            click.echo(f"unfinished:  {human_bytes(r['unfinished_bytes'])} in {r['unfinished_files']} temp files of "
                       "interrupted writes (not counted above; mvc gc removes them after the grace period)")


def _saved(n: int | None) -> str:
    """What dedup saved; negative when commit and tree objects outweigh the tensors deduplicated
    (a repository of a few tiny tensors)."""
    if n is None or n >= 0:
        return f"saved {human_bytes(n)}"
    return f"{human_bytes(-n)} more: commit and tree objects outweigh what dedup saved"


@cli.command("config")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Remove KEY.")
def config_cmd(key, value, unset):
    """Read or set a repository config value (section.name, e.g. core.fsync).

    Names are case-insensitive (a subsection, as in remote.NAME.url, is not). In mvc's own
    sections (core, gc, pack) an unknown key or a value mvc cannot use is refused; other
    sections are free-form. Exit 1 when reading a key that is not set. gc.reflogExpire is a
    duration: seconds, or with a unit (90d, 12h, 30m, 2w); 0 or less expires every entry (a
    negative VALUE follows --: mvc config gc.reflogExpire -- -1).

    \b
    Keys mvc reads (default):
      core.fsync          fsync what is written (true)
      gc.reflogExpire     reflog entries older than this are dropped by gc (90d)
      pack.autoEvery      pack after every K commits (0: never)
      pack.autoPackLimit  automatic packing merges packs past this many (50; 0: never)
      pack.maxDepth       longest delta chain in a pack (8)
      pack.level          zstd level of packed objects (1; -7 to 22)
      pack.cacheMB        decoded delta bases kept in memory while reading packs (256)
      pack.verify         read a written pack back before using it (true)

    \b
    Examples:
      mvc config core.fsync
      mvc config gc.reflogExpire 30d
      mvc config pack.autoEvery 50
      mvc config remote.origin.url ../moved-remote   # stored as an absolute path
      mvc config --unset pack.autoEvery
    """
    repo = _repo()
    if unset:
        if value is not None:
            raise click.UsageError("mvc config --unset KEY takes no VALUE")
        repo.set_config(key, None)
    elif value is None:
        v = repo.get_config(key)
        if v is None:
            sys.exit(1)
        click.echo(v)
    else:
        repo.set_config(key, value)


@cli.command("rev-parse")
@click.argument("revs", nargs=-1, required=True)
@json_opt
def rev_parse(revs, as_json):
    """Print the full commit id of each revision.

    \b
    Examples:
      mvc rev-parse HEAD
      mvc rev-parse main~2 v1.0 @{1}
      mvc rev-parse HEAD --json     # {"HEAD": "<64 hex>"}: one entry per distinct revision
    """
    repo = _repo()
    ids = {r: repo.resolve(r) for r in revs}
    if as_json:
        emit_json(ids)
    else:
        for r in revs:
            click.echo(ids[r])


@cli.command("cat-object")
@click.argument("oid")
def cat_object(oid):
    """Print a commit, tree or certificate object as JSON, or a blob's bytes (verified).

    \b
    Examples:
      mvc cat-object HEAD
      mvc cat-object $(mvc ls-tree HEAD --json | jq -r .core)
    """
    from ..objects import is_oid
    repo = _repo()
    if not is_oid(oid):  # (a 64-character branch name, or an id in capitals, is a revision too)
        oid = _any_object(repo, oid)
    stream_stdout([repo.store.get(oid)], f"object {oid[:12]}")


def _any_object(repo: Repo, rev: str) -> str:
    """A commit revision, or else a unique id prefix (>= 6 hex) of any object (tree, certificate, blob)."""
    from ..errors import AmbiguousRevision, UnknownRevision
    try:
        return repo.resolve(rev)
    except UnknownRevision:
        low = rev.lower()
        matches = repo.ids_with_prefix(low) if len(low) >= 6 and all(c in "0123456789abcdef" for c in low) else []
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise AmbiguousRevision(f"ambiguous object prefix {rev}: {len(matches)} objects match",
                                    "candidates: " + ", ".join(m[:12] for m in matches[:10])) from None
        raise


@cli.command("ls-tree")
@click.argument("rev")
@click.argument("component", required=False)
@json_opt
def ls_tree(rev, component, as_json):
    """List the components of REV, or the tensors and files of one COMPONENT.

    A file's id is its blob's; for a safetensors file, the id of its header blob (its tensors,
    listed above it, hold the values), which stays the same while only values change. Ids are
    printed whole (64 hex digits, for scripts and mvc cat-object), not cut to 12 as elsewhere.

    \b
    Examples:
      mvc ls-tree HEAD
      mvc ls-tree HEAD core | grep q_proj
    """
    repo = _repo()
    cid = repo.resolve(rev)
    if not component:
        comps = repo.read_commit(cid)["components"]
        if as_json:
            emit_json(comps)
        else:
            for name, tid in sorted(comps.items()):
                click.echo(f"{tid} {shown_name(name)}")
        return
    tree = repo.tree(cid, component)
    if as_json:
        emit_json(tree)
        return
    for name, t in tree["tensors"].items():
        click.echo(f"{t['id']} {t['dtype']:>5} {str(t['shape']):>16} {shown_name(name)}")
    for rel, f in tree["files"].items():
        click.echo(f"{f.get('id') or f.get('header')} {f['format']:>11} {f['size']:>12} {shown_name(rel)}")


@cli.command()
@click.argument("rev")
@message_opt()
@json_opt
def revert(rev, message, as_json):
    """Make a new commit on the current branch holding the components of REV.

    Unlike `git revert`, which undoes the changes of a commit, REV names the state to return to:
    `mvc revert HEAD~1` undoes the last commit; `mvc revert HEAD` is refused (exit 3: nothing to
    revert). The history in between stays on the branch (`mvc rollback` moves the branch back instead).

    \b
    Examples:
      mvc revert HEAD~1                       # undo the last commit, keeping it in the history
      mvc revert v1.0 -m "back to the v1.0 weights"
    """
    repo = _repo()
    restored = repo.resolve(rev)
    with json_when_ci_fails(as_json):
        new = repo.revert(rev, message)
    ci = on_commit_ci(repo, new)
    if as_json:
        emit_json({"commit": new, "restored": restored, **ci})
    else:
        c = repo.read_commit(new)
        click.echo(f"[{shown(repo.head_branch)} {short(new)}] {shown(c['message'].splitlines()[0])}")
        echo_on_commit_ci(ci)

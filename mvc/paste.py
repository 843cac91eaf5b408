"""Pasting a brick from one commit into a host branch: ABI contract check from the recorded specs,
fit checks, and a commit that reuses the brick's tree (no tensor blob is written)."""
from __future__ import annotations

from .errors import AbiMismatch, BadInput, BadName, MvcError, RefConflict, UnknownRevision
from .objects import (canonical_json, check_new_component_name, check_new_ref_name, check_no_nesting, commit_object,
                      hash_bytes)
from .quoting import short_repr, shown
from .refs import utc_now

ABI_FIELD_ORDER = ("version", "d_abi", "patch_bytes", "anchor_spec", "head_hash")


def first_abi_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first field where two recorded ABI spec dicts differ; inside a nested one (the anchor
    spec) its first differing key, version first (`anchor_spec.version`, `anchor_spec.n`), as
    cores.abi.first_mismatch names them."""
    keys = [k for k in ABI_FIELD_ORDER if k in a or k in b] + sorted((set(a) | set(b)) - set(ABI_FIELD_ORDER))
    for key in keys:
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):  # version first, then the first differing key
            for k in sorted(set(x) | set(y), key=lambda k: (k != "version", k)):
                if k not in x or k not in y or x[k] != y[k]:
                    return f"{prefix}{key}.{k}"
        return f"{prefix}{key}"
    return None


def check_abi(host_tree: dict, brick_tree: dict, built_hash=None) -> None:
    """AbiMismatch unless the brick's recorded ABI is the host's. Each record must be whole (its
    hash that of the spec beside it) and agree with what its config builds: the brick's config
    holds the spec it was trained under (an int8 brick's, in its base config); the host's is
    rebuilt by `built_hash(tree)` when given (None: cannot be told)."""
    host_abi, brick_abi = host_tree.get("abi") or {}, brick_tree.get("abi") or {}
    config = brick_tree.get("config")
    base = config.get("base_arch") if isinstance(config, dict) else None  # (an int8 brick: of what arch)
    if brick_tree.get("arch") == "portable-brick" or (brick_tree.get("arch") == "portable-brick-int8"
                                                       and base == "portable-brick"):
        return  # a portable decoder, trained on no core, attaches to any host (as bricks.fits says): the
        # arch it rebuilds through decides, not a config flag (bricks/portable.py, bricks/int8.py)
    if not host_abi.get("hash"):
        raise AbiMismatch("the host records no ABI spec: it is not a canonical-ABI core",
                          "paste bricks into cores built by cores.build(\"layercake\", ...)")
    if host_tree.get("kind") not in (None, "core"):  # (a brick committed as `core` records its host's ABI)
        raise AbiMismatch(f"the host component is a {shown(host_tree.get('kind'))}, not a core",
                          "paste into a commit whose core component is a core")
    if not brick_abi.get("hash"):
        how = "from a file" if set(brick_tree.get("files") or {}) != {"model.safetensors"} else \
            "from a state dict (or a model.safetensors file)"  # (a state dict's tree holds that one file)
        raise AbiMismatch(f"the brick records no ABI spec, arch or config: it was committed as plain tensors, {how}"
                          if not brick_tree.get("arch") else "the brick records no ABI spec",
                          "commit the brick module itself (the nn.Module bricks.build returns, not its state_dict()) "
                          "from Python, repo.commit({'brick/NAME': brick}), so that its arch, config and ABI are "
                          "recorded")
    _check_record(host_abi, "host")
    _check_record(brick_abi, "brick")
    built = _config_abi_spec(config)
    if built is not None and (built != brick_abi["spec"] if isinstance(brick_abi.get("spec"), dict)
                              else _spec_hash(built) != brick_abi["hash"]):
        raise AbiMismatch("the brick's config builds another ABI than the one its tree records",
                          "the tree was edited or written by another program: export the brick from its "
                          "training run again")
    host_built = built_hash(host_tree) if built_hash is not None else None
    if host_built is not None and host_built != host_abi["hash"]:
        raise AbiMismatch(f"the host's config builds ABI {host_built[:12]}, but its tree records ABI "
                          f"{str(host_abi['hash'])[:12]}", "the tree was edited, or the core's abi_spec was "
                          "changed before it was committed: commit the core again as built")
    if host_abi["hash"] == brick_abi["hash"]:
        return
    specs = [abi.get("spec") if isinstance(abi.get("spec"), dict) else {} for abi in (host_abi, brick_abi)]
    field = first_abi_difference(*specs) or "hash"
    hv, bv = (_field(spec, field) for spec in specs) if field != "hash" else \
        (str(host_abi["hash"])[:12], str(brick_abi["hash"])[:12])
    raise AbiMismatch(f"ABI mismatch in {field}: host has {short_repr(hv)}, brick has {short_repr(bv)}",
                      "the brick was trained under a different ABI contract; retrain it on a compatible core")


def _config_abi_spec(config) -> dict | None:
    """The ABI spec a brick's config records (an int8 brick's, in the config of its float base)."""
    if not isinstance(config, dict):
        return None
    spec = config.get("abi_spec")
    if spec is None and isinstance(config.get("base_config"), dict):
        spec = config["base_config"].get("abi_spec")
    return spec if isinstance(spec, dict) else None


def _spec_hash(spec: dict) -> str | None:
    try:
        return hash_bytes(canonical_json(spec))
    except MvcError:
        return None


def _check_record(abi: dict, who: str) -> None:
    """A recorded ABI's hash must be that of the spec recorded beside it (as cores.abi hashes a
    spec: BLAKE3 of its canonical JSON): paste compares hashes, and an edited record would let a
    brick that cannot fit land."""
    spec = abi.get("spec")
    if not isinstance(spec, dict):
        return  # (a record of the hash alone: nothing to check it against)
    if _spec_hash(spec) != abi["hash"]:
        raise AbiMismatch(f"the {who}'s recorded ABI hash {str(abi['hash'])[:12]} is not the hash of the spec "
                          "recorded beside it", "the tree was edited or written by another program: commit the "
                          f"{who} again from the model")


def _field(spec: dict, path: str):
    cur = spec
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def paste_brick(repo, name: str, source_rev: str, host_rev: str, as_name: str | None = None,
                message: str | None = None, force: bool = False, branch: str | None = None,
                host_component: str = "core", transform=None, gate=None, mode: str = "copy",
                extra: dict | None = None) -> dict:
    """Install `brick/<name>` of `source_rev` into the host branch as `brick/<as_name>`.

    `transform(tree) -> tree id` rewrites the brick (int8); `gate(commit id) -> (ok, info)` runs
    before the branch moves (semantic CI): on failure the branch stays where it was. `extra`: more
    of the commit's `extra` beside its `paste` record (a pipeline's own bookkeeping).
    """
    if as_name is not None and not as_name:
        raise BadName("--as names no brick (an empty name)")
    as_name = as_name or name
    src_comp, dst_comp = f"brick/{name}", f"brick/{as_name}"
    check_new_component_name(dst_comp)
    if branch is None and host_rev == "HEAD" and (git := repo.git_branch_elsewhere()) is not None:
        ours = repo.refs.head_target().removeprefix("refs/heads/")  # (commits go to git's branch: which is meant?)
        into = f"--into {git}" if git in repo.branches() else f"--into {ours} --branch {git}"
        raise MvcError(f"--into HEAD is mvc's current branch {ours}, but commits here go to {git}, git's "
                       "current branch", f"name the host branch: {into}, or --into {ours}")
    source = repo.resolve(source_rev)
    src_comps = repo.read_commit(source)["components"]
    if src_comp not in src_comps:
        have = sorted(c[6:] for c in src_comps if c.startswith("brick/"))
        raise BadName(f"commit {source[:12]} has no brick {name!r}", f"bricks there: {', '.join(have) or 'none'}")
    brick_tree_id = src_comps[src_comp]
    brick_tree = repo.read_tree(brick_tree_id)
    if brick_tree.get("kind") != "brick":
        raise BadInput(f"{src_comp} of {source[:12]} is a {brick_tree.get('kind')} component, not a brick")
    if branch is None and host_rev == "HEAD":  # the current branch
        host_rev = repo.refs.head_branch_ref("name the host branch", "e.g. --into main")[len("refs/heads/"):]
        if host_rev not in repo.branches():
            raise UnknownRevision(f"the current branch {host_rev} has no commits yet: there is no host to paste into",
                                  "commit a core first, or name a branch that has one: --into BRANCH")
    if branch is None:
        if host_rev not in repo.branches():
            raise UnknownRevision(f"{host_rev!r} is not a branch", "paste into a branch head, or pass --branch NAME")
        branch = host_rev
    host = repo.resolve(host_rev)
    ref = f"refs/heads/{branch}"
    current = repo.refs.read(ref)
    if current is None:
        check_new_ref_name(branch)  # (as mvc branch does: heads/x, tags/v1, x. cannot be named later)
        repo.refs.check_free(ref)  # (`host/x` beside `host`: refused before the commit object is written)
    if current is not None and current != host:
        raise MvcError(f"branch {branch} is at {current[:12]}, not at the host {host[:12]}",
                       "paste into the branch head, or name a new branch with --branch")
    host_comps = repo.read_commit(host)["components"]
    if host_component not in host_comps:
        raise BadName(f"host {host[:12]} has no {host_component!r} component")
    check_abi(repo.read_tree(host_comps[host_component]), brick_tree, repo.built_abi_hash)
    repo.check_rebuilds(brick_tree, f"{src_comp} of {source[:12]}")  # (the host never could attach it)
    if dst_comp in host_comps and not force:
        raise MvcError(f"the host already has {dst_comp}", "pass --force to replace it, or --as NEWNAME")
    check_no_nesting(set(host_comps) | {dst_comp}, new={dst_comp} - set(host_comps))
    repo.refs.wait_unlocked(ref)  # a branch held by another writer: fail before writing anything
    with repo.writing():  # from the first new object until the branch names it: a gc --grace 0 waits
        return _install(repo, name, as_name, source, brick_tree, brick_tree_id, host, host_comps, dst_comp,
                        branch, ref, current, message, transform, gate, mode, extra or {})


def _install(repo, name, as_name, source, brick_tree, brick_tree_id, host, host_comps, dst_comp, branch, ref,
             current, message, transform, gate, mode, extra) -> dict:
    """paste_brick's writing half: the (transformed) brick, the commit, the gate, the branch move."""
    tree_id = transform(brick_tree) if transform else brick_tree_id
    if host_comps.get(dst_comp) == tree_id:  # (--force of the same brick): no commit that changes nothing
        return {"commit": host, "branch": branch, "moved": False, "unchanged": True, "ci": None,
                "brick_tree": brick_tree_id, "installed_tree": tree_id,
                "tensors": len(repo.read_tree(tree_id)["tensors"])}
    comps = dict(host_comps)
    comps[dst_comp] = tree_id
    from .provenance import default_author, git_provenance
    author = default_author(repo.root)
    obj = commit_object(comps, [host], message or f"paste brick {name} from {source[:12]}" +
                        (f" as {as_name}" if as_name != name else ""), author, utc_now(), {},
                        git_provenance(repo.root),
                        {**extra, "paste": {"source": source, "brick": name, "as": as_name,
                                            "brick_tree": brick_tree_id, "installed_tree": tree_id, "mode": mode,
                                            "host": host}})
    cid = repo.write_object(obj)
    info = None
    if gate is not None:
        ok, info = gate(cid)
        if not ok:
            return {"commit": cid, "branch": branch, "moved": False, "ci": info, "brick_tree": brick_tree_id}
    try:
        repo.refs.update(ref, cid, expected=current, message=f"paste: brick {name} from {source[:12]}", author=author)
    except RefConflict:
        raise RefConflict(f"branch {branch} moved during the paste", "try again") from None
    return {"commit": cid, "branch": branch, "moved": True, "ci": info, "brick_tree": brick_tree_id,
            "installed_tree": tree_id, "tensors": len(repo.read_tree(tree_id)["tensors"])}

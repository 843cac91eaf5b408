"""Objects of a newer format than this mvc reads (DESIGN.md section 3): a clear error where they
must be read, and never a loss: what they name stays alive and travels, a clone leaves nothing."""
import json
import os

import pytest
import torch

import mvc
from mvc import certindex
from mvc import remote as rm
from mvc.transport import open_transport
from mvc.errors import CorruptObject, FormatTooNew
from mvc.objects import canonical_json, hash_bytes

from damage import forge


def _newer_certificate(repo, names: str) -> str:
    head = repo.resolve("HEAD")
    cert = {"type": "certificate", "format": 3, "commit": head, "passed": True,
            "checks": [{"name": "x", "status": "passed", "data": names}], "what_v2_adds": {"more": [names]}}
    data = canonical_json(cert)
    cid = repo.store.put(data, oid=hash_bytes(data))
    certindex.attach(repo.dir, head, [cid])
    return cid


def test_gc_keeps_and_push_sends_what_a_newer_certificate_names(tmp_path):
    """gc deleted the data a format-2 certificate names (it could not decode it, so rooted
    nothing), and push sent the certificate without that data."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    blob = repo.store.put(b"held-out data only the certificate names")
    cert = _newer_certificate(repo, blob)
    repo.gc(grace_s=0)
    assert repo.store.has(blob) and repo.store.has(cert)
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    rm.push(repo)
    remote = open_transport(str(tmp_path / "remote"))
    assert remote.has(blob) and remote.has(cert)


def test_hex_a_newer_certificate_holds_that_names_nothing_here_is_no_damage(tmp_path):
    """Every 64-hex text of a certificate this mvc cannot read was taken for an object id it
    needs: a checksum in a newer mvc's certificate made fsck report it missing and gc refuse."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    blob = repo.store.put(b"held-out data the newer certificate names")
    _newer_certificate(repo, blob)
    _newer_certificate(repo, "5" * 64)  # (a checksum, say: no object of this repository)
    assert mvc.Repo(repo.root).fsck()["ok"]
    repo.gc(grace_s=0)
    assert repo.store.has(blob)


def test_gc_keeps_and_push_sends_the_blobs_of_a_big_tree_only_a_certificate_names(tmp_path, monkeypatch):
    """A tree larger than SMALL_OBJECT (a component of ~25,000 tensors) was taken for a blob: gc
    kept the tree a certificate names and deleted its tensors, and push sent it without them."""
    from mvc import maintenance
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    gone = repo.commit({"model": {"a": torch.arange(3.0), "b": torch.ones(4)}}, message="two")
    tree = repo.read_commit(gone)["components"]["model"]
    blobs = [t["id"] for t in repo.read_tree(tree)["tensors"].values()]
    repo.rollback("HEAD~1")
    cert = _newer_certificate(repo, tree)  # attached to commit one, naming two's tree
    repo.set_config("gc.reflogExpire", "0")  # nothing but the certificate reaches the tree now
    monkeypatch.setattr(maintenance, "SMALL_OBJECT", 200)  # this tree counts as a big one
    assert repo.store.size(tree) > 200
    mvc.Repo(repo.root).gc(grace_s=0)
    assert not repo.store.has(gone)
    assert repo.store.has(cert) and repo.store.has(tree) and all(repo.store.has(b) for b in blobs)
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    rm.push(repo)
    remote = open_transport(str(tmp_path / "remote"))
    assert remote.has(tree) and all(remote.has(b) for b in blobs)


def _certified_data(tmp_path, data: bytes, big: bool, monkeypatch):
    """A repository whose only certificate names one data blob; with `big`, objects over 100 bytes
    count as larger than SMALL_OBJECT (as a 5 MiB held-out file would)."""
    from mvc import maintenance
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    blob = repo.store.put(data)
    cert = _newer_certificate(repo, blob)
    if big:
        monkeypatch.setattr(maintenance, "SMALL_OBJECT", 100)
    return repo, blob, cert


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize("data", [
    b'{"rows":[1,2,3],"type":"tree"}',  # JSON data that only says it is a tree
    b'{"format":1,"type":"commit","note":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past the parser's depth
    b'{"rows":[1],"type":["tree","commit"]}',  # a "type" that is no name at all
    b'{"rows":[1],"type":{"tree":"commit"}}',
], ids=["says-tree", "deep", "type-list", "type-dict"])
def test_json_data_a_certificate_names_stays_a_blob(tmp_path, monkeypatch, data, big):
    """A held-out JSON file that says "type": "tree" was read as a tree: gc and push stopped
    on a damaged tree, fsck named damage; one nested too deeply crashed them (RecursionError)."""
    repo, blob, cert = _certified_data(tmp_path, data, big, monkeypatch)
    assert repo.kind_of(blob) == "blob"
    assert repo.fsck()["ok"]
    mvc.Repo(repo.root).gc(grace_s=0)  # (packs: the data is read back from the pack as well)
    assert repo.store.get(blob) == data and mvc.Repo(repo.root).kind_of(blob) == "blob"
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    rm.push(repo)
    assert open_transport(str(tmp_path / "remote")).get(blob) == data


def test_a_big_tree_written_another_way_is_still_walked(tmp_path, monkeypatch):
    """A tree that hashes right but is not canonical (another tool's spacing) named only by a
    certificate: gc kept the tree and deleted its tensors."""
    from mvc import maintenance
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    gone = repo.commit({"model": {"a": torch.arange(3.0), "b": torch.ones(4)}}, message="two")
    tree = repo.read_tree(repo.read_commit(gone)["components"]["model"])
    repo.rollback("HEAD~1")
    spaced = repo.store.put(json.dumps(tree, indent=1).encode())
    _newer_certificate(repo, spaced)
    repo.set_config("gc.reflogExpire", "0")
    monkeypatch.setattr(maintenance, "SMALL_OBJECT", 100)
    mvc.Repo(repo.root).gc(grace_s=0)
    assert all(repo.store.has(t["id"]) for t in tree["tensors"].values())


def test_push_refuses_a_damaged_object_a_certificate_names(tmp_path, monkeypatch):
    """It was left out silently: the remote got the certificate without its data."""
    from damage import flip_byte
    repo, blob, cert = _certified_data(tmp_path, b"held-out text " * 20, False, monkeypatch)
    flip_byte(repo.loose.path(blob), 5)
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    with pytest.raises(CorruptObject, match=blob[:12]):
        rm.push(repo)


def test_gc_ranks_deeply_nested_json_with_the_blobs(tmp_path):
    """gc orders deletions commits, trees, then blobs: ranking JSON nested past the parser's depth
    that ends as a tree does crashed gc (RecursionError)."""
    repo = mvc.Repo.init(tmp_path / "r")
    deep = repo.store.put(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b',"type":"tree"}')
    assert repo._deletion_rank(deep) == 2


def test_push_repair_names_a_damaged_object_a_certificate_names_and_repairs_the_rest(tmp_path, monkeypatch):
    from damage import flip_byte
    repo, blob, cert = _certified_data(tmp_path, b"held-out text " * 20, False, monkeypatch)
    w = repo.tree("HEAD", "model")["tensors"]["w"]["id"]
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    rm.push(repo)
    remote = open_transport(str(tmp_path / "remote"))
    os.unlink(remote.objects.path(w))  # lost on the remote: push --repair sends it again
    os.unlink(remote.objects.path(blob))  # lost there too, and
    flip_byte(repo.loose.path(blob), 5)  # damaged here: named, not sent
    with pytest.raises(rm.RepairIncomplete) as e:
        rm.push(mvc.Repo(repo.root), repair=True)
    assert blob in e.value.result["repair"]["local_damaged"] and remote.has(w)


def test_du_counts_commits_only_a_certificate_keeps(tmp_path):
    """A baseline commit a certificate names, on a branch since deleted: du counted its objects
    in the bytes after dedup but not its commit nor its files in the logical bytes."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    base = repo.commit({"model": {"w": torch.ones(4096)}}, message="baseline", branch="b")
    _newer_certificate(repo, base)
    repo.delete_branch("b")
    repo.set_config("gc.reflogExpire", "0")
    mvc.Repo(repo.root).gc(grace_s=0)
    du = mvc.Repo(repo.root).du()
    files = sum(f["size"] for c in (repo.resolve("HEAD"), base)
                for f in repo.read_tree(repo.read_commit(c)["components"]["model"])["files"].values())
    assert du["commits"] == 2 and du["logical_bytes"] == files


def test_du_says_when_a_commit_it_cannot_read_hides_what_it_names(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    head = repo.read_commit(repo.resolve("HEAD"))
    newer = forge(repo, {**head, "format": 3, "parents": [repo.resolve("HEAD")]})
    repo.refs.update("refs/heads/main", newer, message="what a newer mvc committed")
    with pytest.warns(UserWarning, match="cannot be read .*has format 3.*garbage is not told apart"):
        r = mvc.Repo(repo.root).du()
    assert r["unreachable_objects"] == 0  # nothing called garbage that the newer commit may name


def test_a_clone_that_meets_a_newer_format_leaves_nothing_behind(tmp_path):
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"model": {"w": torch.zeros(2)}}, message="one")
    rm.add_remote(src, "origin", str(tmp_path / "remote"))
    rm.push(src)
    head = src.resolve("HEAD")
    data = canonical_json({**json.loads(src.store.get(head)), "format": 3, "parents": [head]})
    newer = hash_bytes(data)
    t = open_transport(str(tmp_path / "remote"))
    t.put(newer, data)
    t.flush()
    with open(tmp_path / "remote" / "refs" / "heads" / "main", "w") as f:
        f.write(newer + "\n")
    with pytest.raises(FormatTooNew) as e:
        rm.clone(str(tmp_path / "remote"), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() and "resume" not in (e.value.hint or "")
    (tmp_path / "empty").mkdir()  # a folder the user made: kept, without a repository in it
    with pytest.raises(FormatTooNew):
        rm.clone(str(tmp_path / "remote"), str(tmp_path / "empty"))
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.parametrize("packed", [False, True])
def test_a_certificate_does_not_keep_its_own_commit_once_nothing_else_does(tmp_path, packed):
    """Every index line was a gc root, and a certificate names its commit: a certified checkpoint on
    a deleted branch (CI runs on every commit) was kept for ever, reflogs expired or not."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    gone = repo.commit({"model": {"w": torch.randn(4096)}}, message="experiment", branch="exp")
    blob = repo.store.put(b"held-out data the experiment's certificate names")
    head = repo.resolve("HEAD")
    cert = {"type": "certificate", "format": 1, "commit": gone, "passed": True,
            "checks": [{"name": "x", "status": "passed", "data": blob, "baseline": head}]}
    data = canonical_json(cert)
    cert_id = repo.store.put(data, oid=hash_bytes(data))
    certindex.attach(repo.dir, gone, [cert_id])
    tensor = repo.read_tree(repo.read_commit(gone)["components"]["model"])["tensors"]["w"]["id"]
    repo.delete_branch("exp")
    kept = mvc.Repo(repo.root).gc(grace_s=0)  # the deleted branch's reflog still reaches it
    assert kept["removed"] == 0 and all(repo.store.has(o) for o in (gone, tensor, cert_id, blob))
    if packed:
        from mvc.pack_write import Packer
        with Packer(mvc.Repo(repo.root), full=True) as packer:  # (mvc pack --all)
            packer.run()
        assert not repo.loose.has(gone)
    assert mvc.Repo(repo.root).gc(grace_s=0, dry_run=True)["certificate_indexes_removed"] == 0  # (reflog)
    repo.set_config("gc.reflogExpire", "0")
    plan = mvc.Repo(repo.root).gc(grace_s=0, dry_run=True)  # a dry run counted no index (it left the key out)
    assert plan["certificate_indexes_removed"] == 1 and certindex.certified_commits(repo.dir) == [gone]
    freed = mvc.Repo(repo.root).gc(grace_s=0)
    fresh = mvc.Repo(repo.root)
    assert not any(fresh.store.has(o) for o in (gone, tensor, cert_id, blob))
    assert freed["certificate_indexes_removed"] == 1 and certindex.certified_commits(repo.dir) == []
    assert fresh.fsck()["ok"] and fresh.du()["commits"] == 1 and fresh.resolve("HEAD") == head


def test_a_certificate_a_reachable_commit_names_in_its_extra_keeps_what_it_names(tmp_path):
    """A pipeline's evaluate stage records its certificate in its result commit's extra; the
    certificate's own commit (an earlier stage's result) may lose its branch: the result commit
    keeps the certificate and what it names. Ids in extra that name nothing here are no damage."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    target = repo.commit({"model": {"w": torch.randn(64)}}, message="trained", branch="train")
    blob = repo.store.put(b"held-out data")
    data = canonical_json({"type": "certificate", "format": 1, "commit": target, "passed": True,
                           "checks": [{"name": "x", "status": "passed", "data": blob}]})
    cert_id = repo.store.put(data, oid=hash_bytes(data))
    certindex.attach(repo.dir, target, [cert_id])
    repo.commit({}, message="evaluated", branch="eval",
                extra={"pipeline": {"certificate": cert_id, "key": "ef" * 32}})  # (key: a hash, no object)
    repo.delete_branch("train")
    repo.set_config("gc.reflogExpire", "0")
    mvc.Repo(repo.root).gc(grace_s=0)
    fresh = mvc.Repo(repo.root)
    assert all(fresh.store.has(o) for o in (target, cert_id, blob)) and fresh.fsck()["ok"]


def _pushed(tmp_path):
    """(a repository of one commit pushed to a directory remote, that remote's transport)."""
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"model": {"w": torch.zeros(2)}}, message="one")
    rm.add_remote(src, "origin", str(tmp_path / "remote"))
    rm.push(src)
    return src, open_transport(str(tmp_path / "remote"))


def _put_on(t, obj) -> str:
    data = canonical_json(obj)
    oid = hash_bytes(data)
    t.put(oid, data)
    t.flush()
    return oid


def test_fetch_keeps_a_newer_certificate_and_skips_one_without_a_format(tmp_path):
    """A format-2 certificate was downloaded, left out of the index and its data not fetched (gc
    then deleted it, and a push from the clone dropped it); one with no integer format failed the
    whole clone, with the hint to run it again."""
    src, t = _pushed(tmp_path)
    head = src.resolve("HEAD")
    blob = src.store.put(b"held-out data only the newer certificate names")
    newer = _newer_certificate(src, blob)
    rm.push(src)
    bad = _put_on(t, {"type": "certificate", "format": "1", "commit": head, "passed": True, "checks": []})
    with open(tmp_path / "remote" / "certs" / head[:2] / head[2:], "a") as f:
        f.write(bad + "\n")
    with pytest.warns(UserWarning, match=f"{bad[:12]} among the certificates .* skipped"):
        clone = rm.clone(str(tmp_path / "remote"), str(tmp_path / "c"))[0]
    assert certindex.read_index(clone.dir, head) == [newer] and clone.store.has(blob)
    clone.gc(grace_s=0)
    assert clone.store.has(newer) and clone.store.has(blob)


def test_a_branch_of_a_newer_format_is_skipped_and_the_others_fetched(tmp_path):
    """One branch whose tip a newer mvc wrote failed every clone and fetch of the remote, naming
    neither the remote nor the branch."""
    src, t = _pushed(tmp_path)
    head = src.resolve("HEAD")
    newer = _put_on(t, {**json.loads(src.store.get(head)), "format": 3, "parents": [head], "message": "v2"})
    os.makedirs(tmp_path / "remote" / "refs" / "heads", exist_ok=True)
    (tmp_path / "remote" / "refs" / "heads" / "next").write_text(newer + "\n")
    with pytest.warns(UserWarning, match="skipped remote ref refs/heads/next on .*format 3.*upgrade mvc to fetch it"):
        clone, result = rm.clone(str(tmp_path / "remote"), str(tmp_path / "c"))
    assert clone.branches() == {"main": head} and result["fetch"]["skipped_newer"] == ["refs/heads/next"]
    assert set(clone.refs.list("refs/remotes/")) == {"refs/remotes/origin/main"} and clone.fsck()["ok"]


@pytest.mark.parametrize("where", ["tree", "parent"])
def test_a_branch_whose_history_holds_a_newer_object_is_skipped_and_the_others_fetched(tmp_path, where):
    """A format-1 commit naming a newer mvc's tree (or on top of a newer mvc's commit) failed the
    whole fetch: every branch of the remote, not only that one."""
    src, t = _pushed(tmp_path)
    head = src.resolve("HEAD")
    commit = json.loads(src.store.get(head))
    if where == "tree":
        tree = json.loads(src.store.get(commit["components"]["model"]))
        newer = _put_on(t, {**tree, "format": 3})
        tip = _put_on(t, {**commit, "parents": [head], "components": {"model": newer}, "message": "v2 tree"})
    else:
        newer = _put_on(t, {**commit, "format": 3, "parents": [head], "message": "v2"})
        tip = _put_on(t, {**commit, "parents": [newer], "message": "on top of v2"})
    os.makedirs(tmp_path / "remote" / "refs" / "heads", exist_ok=True)
    (tmp_path / "remote" / "refs" / "heads" / "next").write_text(tip + "\n")
    with pytest.warns(UserWarning, match=f"skipped remote ref refs/heads/next on .*{newer[:12]} has format 3.*"
                                         "upgrade mvc to fetch it"):
        clone, result = rm.clone(str(tmp_path / "remote"), str(tmp_path / "c"))
    assert clone.branches() == {"main": head} and result["fetch"]["skipped_newer"] == ["refs/heads/next"]
    assert not clone.store.has(tip) and not clone.store.has(newer) and clone.fsck()["ok"]
    src.commit({"model": {"w": torch.ones(2)}}, message="two")  # and the others go on being fetched
    rm.push(src)
    with pytest.warns(UserWarning, match="skipped remote ref refs/heads/next"):
        assert rm.fetch(clone)["refs"]["refs/remotes/origin/main"]["new"] == src.resolve("HEAD")


def test_fsck_and_gc_tell_a_newer_format_apart_from_damage(run, in_repo):
    """fsck called an intact format-2 commit damaged (exit 1, the tree twice), and gc's refusal
    hinted fsck --repair-from, which has nothing to repair."""
    repo = in_repo
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    head = repo.read_commit(repo.resolve("HEAD"))
    newer = forge(repo, {**head, "format": 3, "parents": [repo.resolve("HEAD")]})
    repo.refs.update("refs/heads/main", newer, message="what a newer mvc committed")
    r = mvc.Repo(repo.root).fsck()
    assert not r["ok"] and r["problems"] == [] and [p["id"] for p in r["newer_format"]] == [newer]
    out = run("fsck", code=3)
    assert out.stdout.count("newer format: ") == 1 and "damaged" not in out.stdout
    assert "could not be checked (upgrade mvc to check them)" in out.stderr
    with pytest.raises(FormatTooNew, match="gc stopped, deleting nothing: 1 reachable object is of a newer") as e:
        mvc.Repo(repo.root).gc(grace_s=0)
    assert e.value.hint == "upgrade mvc to collect garbage here"
    flip = forge(repo, {**head, "message": "a damaged one beside it"})
    os.chmod(repo.loose.path(flip), 0o644)
    with open(repo.loose.path(flip), "r+b") as f:
        f.seek(5)
        f.write(b"#")
    repo.refs.update("refs/heads/other", flip, message="x")
    assert run("fsck", code=1).stdout.count("newer format: ") == 1  # damage found: exit 1 still


def _certify(repo, commit, fmt, passed, partial=False):
    cert = {"type": "certificate", "format": fmt, "commit": commit, "base": None, "passed": passed,
            "checks": [{"name": "x", "kind": "exact-logits", "status": "passed" if passed else "failed",
                        "params": {}, "figures": {"max": 0.0}, "thresholds": {}, "inputs": {}}],
            "time": "2026-01-01T00:00:00Z", "config": None, "environment": {}, **({"partial": True} if partial else {})}
    data = canonical_json(cert)
    certindex.attach(repo.dir, commit, [repo.store.put(data, oid=hash_bytes(data))])


def test_ci_state_of_a_commit_a_newer_mvc_certified_last_is_unknown(tmp_path):
    """An older mvc showed the verdict of the last certificate it could read: a newer failed one
    after an older passed one read "passed" in status and log; a partial run's verdict stood
    although the newer certificate before it may be a full run, which outranks it; and a rollback
    target could be a commit a newer mvc had failed."""
    from semantic_ci.certificate import ci_state, last_passing_ancestor
    repo = mvc.Repo.init(tmp_path / "r")
    head = repo.resolve(repo.commit({"model": {"w": torch.zeros(2)}}, message="one"))
    _certify(repo, head, 1, True)
    assert ci_state(repo, head) == ("passed", [])
    _certify(repo, head, 3, False)
    state, problems = ci_state(repo, head)
    assert state.startswith("unknown") and "newer format" in problems[0]
    child = repo.commit({"model": {"w": torch.ones(2)}}, message="two")
    assert last_passing_ancestor(repo, child) is None  # (its only ancestor's verdict is not known)
    _certify(repo, head, 1, False)
    assert ci_state(repo, head)[0] == "failed"
    other = repo.resolve(repo.commit({"model": {"w": torch.full((2,), 2.0)}}, message="three"))
    _certify(repo, other, 3, False)
    _certify(repo, other, 1, True, partial=True)
    assert ci_state(repo, other)[0].startswith("unknown")


def test_verify_of_a_commit_only_a_newer_mvc_certified_asks_to_upgrade(run, in_repo):
    head = in_repo.resolve(in_repo.commit({"model": {"w": torch.zeros(2)}}, message="one"))
    _certify(in_repo, head, 3, True)
    err = run("verify", "HEAD", code=3).stderr
    assert "a certificate of a newer format" in err and "(upgrade mvc to read the certificates" in err


@pytest.mark.parametrize("fmt", [0, -1, True])
def test_a_format_no_mvc_writes_is_refused_not_read_as_format_1(tmp_path, fmt):
    """core.format 0 or -1, a remote's format 0, pack format 0 and commits of format 0 or true
    were all read as format 1."""
    from mvc import pack_format as pf
    from mvc.errors import ConfigError
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    odd = forge(repo, {**repo.read_commit(repo.resolve("HEAD")), "format": fmt})
    with pytest.raises(CorruptObject, match="has no format version|a format no mvc writes"):
        repo.read_commit(odd)
    if fmt is True:
        return
    if fmt == 0:  # (a pack's version is unsigned)
        header = bytearray(pf.encode_pack_header(0) + bytes(pf.TRAILER_BYTES))
        header[8:12] = bytes(4)
        with pytest.raises(CorruptObject, match="pack format 0, a format no mvc writes"):
            pf.check_pack_header(bytes(header), "x.pack")
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    rm.push(repo)
    for config in (tmp_path / "remote" / "config", tmp_path / "r" / ".mvc" / "config"):
        config.write_text(config.read_text().replace("format = 1", f"format = {fmt}"))
    with pytest.raises(ConfigError, match=f"core.format = {fmt}, a format no mvc writes"):
        mvc.Repo(tmp_path / "r")
    with pytest.raises(CorruptObject, match=f"sets format {fmt}, a format no mvc writes"):
        open_transport(str(tmp_path / "remote")).require_repository()


def test_an_extension_this_mvc_does_not_implement_is_refused_in_a_repository_and_a_remote(tmp_path, run, in_repo):
    """A newer mvc may mark a repository or remote with `[extensions]` (a feature an older mvc
    would misread, without bumping core.format): this mvc must refuse it, whatever its value and
    however the section is spelled, and `mvc config` must not set one."""
    repo = in_repo
    repo.commit({"model": {"w": torch.zeros(2)}}, message="one")
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    rm.push(repo)
    out = run("config", "extensions.bundles", "true", code=3)
    assert "cannot be set" in out.stderr and "[extensions]" not in (tmp_path / "remote" / "config").read_text()
    config = tmp_path / "remote" / "config"
    config.write_text(config.read_text() + "[Extensions]\nbundles = false\n")
    with pytest.raises(FormatTooNew, match="uses the extension bundles, which this mvc does not implement"):
        open_transport(str(tmp_path / "remote")).require_repository()
    with pytest.raises(FormatTooNew, match="uses the extension bundles"):  # (repair read from it regardless: h38)
        rm.repair(repo, "origin")
    own = os.path.join(repo.dir, "config")
    with open(own, "a") as f:
        f.write("[extensions]\nbundles = true\nzeta = 1\n")
    out = run("log", code=3)
    assert "uses the extensions bundles, zeta, which this mvc does not implement" in out.stderr
    assert "upgrade mvc" in out.stderr


@pytest.mark.parametrize("names", ["history", "tree", "commit"])
def test_a_certificate_naming_what_a_newer_mvc_wrote_is_skipped_not_attached_without_it(tmp_path, names):
    """A certificate naming a commit whose history holds a newer object (or a newer tree or commit)
    was attached although what it names was left out: fsck then called it missing, gc refused to
    run, and a fetch after upgrading never brought it (the index line was there) (probe h38)."""
    src, t = _pushed(tmp_path)
    head = src.resolve("HEAD")
    commit = json.loads(src.store.get(head))
    if names == "history":
        named = _put_on(t, {**commit, "parents": [_put_on(t, {**commit, "format": 3, "parents": [head]})]})
    elif names == "tree":
        named = _put_on(t, {**json.loads(src.store.get(commit["components"]["model"])), "format": 3})
    else:
        named = _put_on(t, {**commit, "format": 3, "parents": [head], "message": "v2"})
    cert = _put_on(t, {"type": "certificate", "format": 1, "commit": head, "passed": True,
                       "checks": [{"name": "x", "status": "passed", "baseline": named}]})
    os.makedirs(tmp_path / "remote" / "certs" / head[:2], exist_ok=True)
    with open(tmp_path / "remote" / "certs" / head[:2] / head[2:], "a") as f:
        f.write(cert + "\n")
    with pytest.warns(UserWarning, match=f"skipped certificate {cert[:12]} of commit {head[:12]} .* names "):
        clone = rm.clone(str(tmp_path / "remote"), str(tmp_path / "c"))[0]
    assert certindex.read_index(clone.dir, head) == [] and clone.fsck()["ok"]
    clone.gc(grace_s=0)


def test_pull_of_a_branch_fetch_skipped_says_so_instead_of_up_to_date(tmp_path):
    """origin's main moved onto a newer mvc's commit: pull said "main is up to date", exit 0 (h38)."""
    src, t = _pushed(tmp_path)
    head = src.resolve("HEAD")
    commit = json.loads(src.store.get(head))
    clone = rm.clone(str(tmp_path / "remote"), str(tmp_path / "c"))[0]
    tip = _put_on(t, {**commit, "parents": [_put_on(t, {**commit, "format": 3, "parents": [head]})]})
    (tmp_path / "remote" / "refs" / "heads" / "main").write_text(tip + "\n")
    with pytest.warns(UserWarning, match="skipped remote ref refs/heads/main"):
        with pytest.raises(FormatTooNew, match="remote origin's branch main was not fetched: its history holds"):
            rm.pull(clone)
    assert clone.branches() == {"main": head}

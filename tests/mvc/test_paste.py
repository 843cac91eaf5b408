"""Paste at the storage level: ABI contract from recorded specs, fit checks, tree reuse."""
import json
import os

import blake3
import pytest
import torch

from mvc.errors import AbiMismatch, MvcError, UnknownRevision


class Spec:
    def __init__(self, **over):
        self.d = {"version": 1, "d_abi": 64, "patch_bytes": 4, "anchor_spec": {"version": 1, "n": 3},
                  "head_hash": "h" * 8, **over}

    def to_dict(self):
        return self.d

    @property
    def hash(self):  # (as cores.abi hashes a spec: paste checks a record's hash against its spec)
        return blake3.blake3(json.dumps(self.d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Part(torch.nn.Module):
    def __init__(self, n, kind, spec, seed=0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
        self.mvc_kind, self.abi_spec = kind, spec


def test_paste_reuses_blobs_and_records_provenance(repo, monkeypatch):
    src = repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                      message="trained", branch="brick-run")
    host = repo.commit({"core": Part(4, "core", Spec(), 2)}, message="host b", branch="host-b")
    before = set(repo.store.ids())
    r = repo.paste_brick("python", "brick-run", "host-b")
    new = set(repo.store.ids()) - before
    assert r["moved"] and repo.branches()["host-b"] == r["commit"] and new == {r["commit"]}
    c = repo.read_commit(r["commit"])
    assert c["parents"] == [host]
    assert c["components"]["brick/python"] == repo.read_commit(src)["components"]["brick/python"]
    assert c["extra"]["paste"]["source"] == src and c["extra"]["paste"]["mode"] == "copy"
    with pytest.raises(MvcError, match="already has brick/python"):
        repo.paste_brick("python", "brick-run", "host-b")
    r2 = repo.paste_brick("python", "brick-run", "host-b", as_name="py2")
    assert "brick/py2" in repo.read_commit(r2["commit"])["components"]
    from click.testing import CliRunner
    from mvc.cli import cli
    monkeypatch.chdir(repo.root)  # (show's human output named no source: h85)
    out = CliRunner().invoke(cli, ["show", "host-b"]).stdout
    assert f"Pasted: brick python from {src[:12]} as brick/py2 (copy)" in out
    assert "Pasted:" not in CliRunner().invoke(cli, ["show", "brick-run"]).stdout


@pytest.mark.parametrize("over,field", [({"d_abi": 32}, "d_abi"), ({"patch_bytes": 8}, "patch_bytes"),
                                        ({"anchor_spec": {"version": 2, "n": 3}}, "anchor_spec.version"),
                                        ({"anchor_spec": {"version": 1, "n": 4}}, "anchor_spec.n"),
                                        ({"anchor_spec": {"version": 1, "n": 3, "m": 0}}, "anchor_spec.m"),
                                        ({"head_hash": "x" * 8}, "head_hash")])
def test_abi_mismatch_names_the_field_and_writes_nothing(repo, over, field):
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                message="trained", branch="brick-run")
    host = repo.commit({"core": Part(4, "core", Spec(**over), 2)}, message="other abi", branch="host-x")
    before = set(repo.store.ids())
    with pytest.raises(AbiMismatch, match=f"ABI mismatch in {field}"):
        repo.paste_brick("python", "brick-run", "host-x")
    assert set(repo.store.ids()) == before and repo.branches()["host-x"] == host


def test_paste_refusals(repo):
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1),
                 "notbrick": Part(2, "other", None)}, message="m", branch="src")
    repo.commit({"core": Part(4, "core", Spec())}, message="h", branch="host")
    with pytest.raises(UnknownRevision, match="not a branch"):
        repo.paste_brick("python", "src", repo.resolve("host"))
    with pytest.raises(MvcError, match="no brick 'java'"):
        repo.paste_brick("java", "src", "host")
    repo.commit({"core": {"w": torch.ones(2)}}, message="plain", branch="plain")
    with pytest.raises(AbiMismatch, match="records no ABI"):
        repo.paste_brick("python", "src", "plain")
    # a gate that fails leaves the branch where it was
    r = repo.paste_brick("python", "src", "host", gate=lambda cid: (False, {"why": "ci"}))
    assert not r["moved"] and repo.branches()["host"] != r["commit"]


def test_paste_into_head_is_into_the_current_branch(repo):
    """--into HEAD was refused ("'HEAD' is not a branch"), as revisions elsewhere take HEAD."""
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                message="trained", branch="brick-run")
    host = repo.commit({"core": Part(4, "core", Spec(), 2)}, message="host")
    r = repo.paste_brick("python", "brick-run", "HEAD")
    assert r["branch"] == repo.head_branch == "main" and repo.read_commit(repo.head())["parents"] == [host]
    with open(os.path.join(repo.dir, "HEAD"), "w") as f:
        f.write(host + "\n")  # detached: no branch to move
    with pytest.raises(MvcError, match="HEAD is detached: name the host branch"):
        repo.paste_brick("python", "brick-run", "HEAD", as_name="py2")


def test_paste_refuses_nesting_and_empty_names_before_writing(repo):
    from mvc.errors import BadName
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                message="trained", branch="brick-run")
    host = repo.commit({"core": Part(4, "core", Spec(), 2)}, message="host", branch="host-b")
    r = repo.paste_brick("python", "brick-run", "host-b", as_name="a")
    before = set(repo.store.ids())
    with pytest.raises(BadName, match="nest"):
        repo.paste_brick("python", "brick-run", "host-b", as_name="a/b")
    with pytest.raises(BadName, match="empty"):
        repo.paste_brick("python", "brick-run", "host-b", as_name="")
    assert set(repo.store.ids()) == before and repo.branches()["host-b"] == r["commit"] != host
    repo.commit({"core": Part(4, "core", Spec(), 3)}, message="still commits", branch="host-b")


def test_pasting_the_brick_a_host_already_holds_makes_no_commit(repo, monkeypatch, tmp_path):
    """paste --force of an identical brick made a commit that changed nothing."""
    from click.testing import CliRunner
    from mvc.cli import cli
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                message="trained", branch="brick-run")
    repo.commit({"core": Part(4, "core", Spec(), 2)}, message="host b", branch="host-b")
    first = repo.paste_brick("python", "brick-run", "host-b")["commit"]
    again = repo.paste_brick("python", "brick-run", "host-b", force=True)
    assert again["unchanged"] and again["commit"] == first and repo.branches()["host-b"] == first
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["paste", "brick", "python", "--from", "brick-run", "--into", "host-b", "--force",
                                 "--no-ci"])
    assert r.exit_code == 0 and "already holds these tensors" in r.stdout and repo.branches()["host-b"] == first


def _writers_lock_free(repo) -> bool:
    """Whether another process could take the writers lock exclusively now (what gc --grace 0 does)."""
    import os
    import subprocess
    import sys
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
            "except BlockingIOError:\n    print('held')")
    out = subprocess.run([sys.executable, "-c", code, os.path.join(repo.dir, "writers.lock")],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out == "free"


def test_paste_holds_the_writers_lock_from_its_first_object_to_the_branch_move(repo):
    """A gc --grace 0 between paste writing its commit and moving the branch deleted the commit and
    left the branch pointing at nothing: paste now holds the lock a short-grace gc waits for."""
    from mvc.refs import RefStore
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                message="trained", branch="brick-run")
    repo.commit({"core": Part(4, "core", Spec(), 2)}, message="host b", branch="host-b")
    seen = {}
    original = RefStore.update

    def update(self, ref, new, *a, **k):
        if ref == "refs/heads/host-b":
            seen["at_move"] = _writers_lock_free(repo)
        return original(self, ref, new, *a, **k)

    def transform(tree):
        seen["at_transform"] = _writers_lock_free(repo)
        return repo.write_object({**tree, "meta": {**tree.get("meta", {}), "t": 1}})

    def gate(cid):
        seen["at_gate"] = _writers_lock_free(repo)
        return True, None
    RefStore.update = update
    try:
        r = repo.paste_brick("python", "brick-run", "host-b", transform=transform, gate=gate)
    finally:
        RefStore.update = original
    assert r["moved"] and seen == {"at_transform": False, "at_gate": False, "at_move": False}
    assert _writers_lock_free(repo)  # and let go afterwards
    assert repo.gc(grace_s=0)["removed"] == 0 and repo.fsck()["ok"]


def test_a_recorded_abi_that_its_spec_or_config_does_not_back_is_refused(repo):
    """paste compared the recorded hashes only: an edited record (a d_abi=32 brick's abi replaced
    with the host's) landed, and only attaching later refused it (h58)."""
    from damage import forge
    src = repo.commit({"brick/python": Part(3, "brick", Spec(d_abi=32), 1)}, message="trained", branch="brick-run")
    repo.commit({"core": Part(4, "core", Spec(), 2)}, message="host b", branch="host-b")
    tree = repo.tree(src, "brick/python")
    host_abi = repo.tree("host-b", "core")["abi"]
    before = set(repo.store.ids())
    for edited, why in (({**tree, "abi": {**host_abi, "spec": tree["abi"]["spec"]}}, "is not the hash of the spec"),
                        ({**tree, "abi": host_abi, "config": {"abi_spec": tree["abi"]["spec"]}},
                         "config builds another ABI than the one its tree records")):
        tid = forge(repo, edited)
        repo.commit({}, trees={"brick/python": tid}, message="edited", branch="brick-run")
        with pytest.raises(AbiMismatch, match=why):
            repo.paste_brick("python", "brick-run", "host-b")
        assert repo.read_commit(repo.resolve("host-b"))["message"] == "host b"
    assert set(repo.store.ids()) - before <= {repo.resolve("brick-run"), repo.resolve("brick-run~1")} | {
        t for c in ("brick-run", "brick-run~1") for t in repo.read_commit(repo.resolve(c))["components"].values()}


def test_paste_refuses_hosts_and_branches_it_could_not_use_and_says_why(repo):
    """h73: a brick committed as `core` was taken for a host; `--branch heads/x` made a branch no
    revision could name; `--into HEAD` on an unborn branch said "'main' is not a branch"; a brick
    committed from a file was refused with no hint; two hash-only records said "host has None"."""
    from mvc.errors import BadName
    repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                message="trained", branch="brick-run")
    with pytest.raises(UnknownRevision, match="the current branch main has no commits yet"):  # (HEAD: main, unborn)
        repo.paste_brick("python", "brick-run", "HEAD")
    repo.commit({"core": Part(4, "brick", Spec(), 2)}, message="a brick as core", branch="host-brick")
    before = set(repo.store.ids())
    with pytest.raises(AbiMismatch, match="the host component is a brick, not a core"):
        repo.paste_brick("python", "brick-run", "host-brick")
    with pytest.raises(BadName):
        repo.paste_brick("python", "brick-run", "brick-run", branch="heads/x")
    with pytest.raises(BadName, match="conflicts with existing refs/heads/brick-run"):  # (h85: its commit
        repo.paste_brick("python", "brick-run", "brick-run", branch="brick-run/x")  # object was written first)
    with pytest.raises(BadName, match="conflicts with existing refs/heads/brick-run"):  # (repo.commit: 4 objects)
        repo.commit({"core": Part(4, "core", Spec(), 9)}, message="x", branch="brick-run/y")
    assert set(repo.store.ids()) == before and "heads/x" not in repo.branches()
    repo.commit({"core": Part(4, "core", Spec()), "brick/plain": {"w": torch.ones(3)}}, message="file brick",
                branch="plain")
    with pytest.raises(AbiMismatch, match="committed as plain tensors, from a state dict") as e:
        repo.paste_brick("plain", "plain", "brick-run")
    assert "repo.commit" in e.value.hint and "not its state_dict()" in e.value.hint  # (h82: it said "from a file")


@pytest.mark.parametrize("args", [["", "--as", "x"], [" "], ["x", "--as", ""], ["x", "--as", " "]])
def test_an_empty_or_blank_brick_name_is_a_usage_error(repo, args, monkeypatch):
    """An empty NAME was exit 3 ("invalid component name 'brick/'"), an empty --as exit 2 (h85)."""
    from click.testing import CliRunner
    from mvc.cli import cli
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["paste", "brick", *args, "--from", "main", "--into", "main"])
    assert r.exit_code == 2 and "an empty or blank name" in r.stderr, r.output


def test_an_abi_mismatch_of_hash_only_records_shows_the_hashes(repo):
    from mvc.objects import commit_object
    from mvc.refs import utc_now
    src = repo.commit({"core": Part(4, "core", Spec()), "brick/python": Part(3, "brick", Spec(), 1)},
                      message="trained", branch="brick-run")
    host = repo.commit({"core": Part(4, "core", Spec(d_abi=32), 2)}, message="other", branch="host-x")
    comps = {}
    for who, cid in (("core", host), ("brick/python", src)):
        t = repo.read_tree(repo.read_commit(cid)["components"][who])
        t["abi"] = {"hash": t["abi"]["hash"]}  # (a record of the hash alone)
        comps[who] = repo.write_object(t)
    cid = repo.write_object(commit_object(comps, [src], "hash-only", "x", utc_now()))
    repo.refs.update("refs/heads/h", cid, message="t", author="x")
    with pytest.raises(AbiMismatch) as e:
        repo.paste_brick("python", "h", "h", branch="h2")
    assert "ABI mismatch in hash" in e.value.message and "None" not in e.value.message

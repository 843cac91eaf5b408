"""The Python API under misuse: every wrong argument is a clear MvcError that writes nothing (a
commit no reader accepts used to land and wedge its branch), forked children, bounded caches."""
import os
import subprocess
import sys

import pytest
import torch

import mvc
from mvc.errors import BadInput, BadName, MvcError

from test_input_safety import snapshot


def refused(repo, fn, match):
    before = snapshot(repo)
    with pytest.raises(MvcError, match=match):
        fn()
    after = snapshot(repo)
    for lock in ("writers.lock", "writers-gate.lock"):  # (empty files flock locks: made on first use)
        after.pop(lock, None)
        before.pop(lock, None)
    assert after == before


def _self_containing():
    d = {"loss": 1.0}
    d["again"] = d
    return d


def _nested(depth):  # (a RecursionError before the depth limit)
    v = 1.0
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("kwargs,match", [
    ({"author": 5}, "author is a int"), ({"author": ["me"]}, "author is a list"),
    ({"extra": [1, 2]}, "extra is a list"), ({"extra": "note"}, "extra is a str"),
    ({"metrics": [1]}, "metrics is a list"), ({"metrics": "loss"}, "metrics is a str"),
    ({"branch": 5}, "branch is a int"), ({"branch": b"dev"}, "branch is a bytes"),
    ({"message": "x" * (5 << 20)}, "a commit holds at most"),
    ({"metrics": {"notes": "y" * (5 << 20)}}, "a commit holds at most"),
    ({"metrics": _self_containing()}, "metrics nest deeper than 32 levels"),
    ({"metrics": {"deep": _nested(600)}}, "metrics nest deeper than 32 levels"),
])
def test_wrong_commit_arguments_are_refused_before_anything_is_written(repo, kwargs, match):
    repo.commit({"m": {"w": torch.ones(3)}}, message="first")
    args = {"message": "second", **kwargs}
    refused(repo, lambda: repo.commit({"m": {"w": torch.zeros(3)}}, **args), match)
    assert repo.load("main", "m")["w"].tolist() == [1.0, 1.0, 1.0] and repo.fsck()["ok"]


def test_a_commit_or_tree_no_reader_accepts_is_refused_at_encoding():
    from mvc.objects import commit_object, encode
    good = commit_object({}, [], "m", "me", "2026-01-01T00:00:00Z")
    encode(good)
    with pytest.raises(BadInput, match="cannot write this commit: 'author' must be text"):
        encode({**good, "author": 5})
    with pytest.raises(BadInput, match="cannot write this tree"):
        encode({"type": "tree", "format": 1, "kind": 3, "arch": None, "config": None, "abi": None,
                "meta": {}, "tensors": {}, "files": {}})


class Tagged(torch.nn.Module):
    def __init__(self, **attrs):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        for k, v in attrs.items():
            setattr(self, k, v)


@pytest.mark.parametrize("attrs", [{"mvc_arch": 5}, {"mvc_config": "tiny"}, {"mvc_config": [1, 2]},
                                   {"mvc_kind": 3}, {"mvc_config": {1: 2}}])
def test_module_attributes_a_reader_would_refuse_are_refused_at_commit(repo, attrs):
    repo.commit({"m": {"w": torch.ones(3)}}, message="first")
    refused(repo, lambda: repo.commit({"core": Tagged(**attrs)}, message="x"), "must be")


def test_a_module_with_extra_state_is_refused_clearly(repo):
    class Extra(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def get_extra_state(self):
            return {"step": 3}

        def set_extra_state(self, state):
            pass
    refused(repo, lambda: repo.commit({"m": Extra()}, message="x"), "state dict of this Extra")


def test_trees_must_name_existing_trees(repo):
    first = repo.commit({"m": {"w": torch.ones(3)}}, message="first")
    tree = repo.read_commit(first)["components"]["m"]
    blob = next(iter(repo.read_tree(tree)["tensors"].values()))["id"]
    for bad, match in (("nothex", "not a tree id"), ("ab" * 32, "missing"), (blob, "blob"), (first, "commit")):
        refused(repo, lambda: repo.commit({}, message="x", trees={"n": bad}), match)
    second = repo.commit({}, message="reuse", trees={"n": tree})
    assert repo.read_commit(second)["components"]["n"] == tree


def test_log_takes_a_whole_number_of_commits(repo):
    repo.commit({"m": {"w": torch.ones(3)}}, message="first")
    for n in ("2", 2.5, -1, True):
        with pytest.raises(BadInput, match="whole number"):
            repo.log(n=n)
    assert len(repo.log(n=0)) == 0 and len(repo.log(n=1)) == 1


def test_remove_given_as_one_name_removes_that_component(repo):
    repo.commit({"core": {"w": torch.ones(3)}, "b": {"w": torch.zeros(2)}}, message="two")
    cid = repo.commit({}, message="drop core", remove="core")  # (was taken letter by letter)
    assert set(repo.read_commit(cid)["components"]) == {"b"}


def test_a_forked_child_hashes_large_buffers_without_hanging(repo):
    """blake3's thread pool does not survive fork: a child hashing >= 1 MiB waited on it forever."""
    repo.commit({"m": {"w": torch.randn(1 << 20)}}, message="parent hashes on all cores")
    code = ("import os, sys, torch, mvc\n"
            "r = mvc.Repo(sys.argv[1]); r.commit({'m': {'w': torch.randn(1 << 20)}}, message='warm')\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    r.commit({'m': {'w': torch.randn(1 << 19)}}, message='child'); os._exit(0)\n"
            "_, status = os.waitpid(pid, 0); print(os.waitstatus_to_exitcode(status))\n")
    out = subprocess.run([sys.executable, "-c", code, repo.root], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0", out.stderr
    assert [c["message"] for c in mvc.Repo(repo.root).log(n=1)] == ["child"]


def test_the_object_cache_of_a_long_lived_repo_is_bounded(repo, monkeypatch):
    from mvc import repo as repo_mod
    monkeypatch.setattr(repo_mod, "OBJECT_CACHE_BYTES", 64 << 10)
    r = mvc.Repo(repo.root)
    state = {f"layer{i}.weight": torch.zeros(2) for i in range(120)}  # (trees under half the budget)
    for i in range(30):
        state["layer0.weight"] = torch.full((2,), float(i))
        r.commit({"c": state}, message=f"step {i}")
        r.load("HEAD", "c", keys=["layer0.weight"])
    assert r._cache._bytes <= 64 << 10 and 0 < len(r._cache) < 30


def test_a_tree_larger_than_the_object_cache_is_read_once(repo, monkeypatch):
    """A tree above the cache's whole budget (~120,000 tensors at 16 MiB) was never cached: each
    load of one tensor read, hashed and decoded the whole tree again."""
    from mvc import repo as repo_mod
    monkeypatch.setattr(repo_mod, "OBJECT_CACHE_BYTES", 4 << 10)
    repo.commit({"c": {f"layer{i}.weight": torch.zeros(2) for i in range(300)}}, message="big tree")
    r = mvc.Repo(repo.root)
    reads = []
    real_get = type(r.store).get
    monkeypatch.setattr(type(r.store), "get", lambda self, oid: reads.append(oid) or real_get(self, oid))
    for _ in range(3):
        assert r.load("HEAD", "c", keys=["layer7.weight"])["layer7.weight"].tolist() == [0.0, 0.0]
    assert len(reads) == 2  # the commit and the tree, once


def test_a_repository_is_found_through_a_symlinked_directory(tmp_path):
    mvc.Repo.init(tmp_path / "proj")
    (tmp_path / "proj" / "runs" / "exp1").mkdir(parents=True)
    os.symlink(tmp_path / "proj" / "runs", tmp_path / "runs")
    assert os.path.realpath(mvc.Repo(tmp_path / "runs" / "exp1").root) == os.path.realpath(tmp_path / "proj")


def test_a_tree_no_remote_would_send_back_is_refused_at_commit(repo, monkeypatch):
    """A component of ~300k tensors made a 69 MB tree: commit and push passed, then every clone and
    fetch refused it (remotes send trees of at most 64 MiB) and called the remote damaged."""
    from mvc.remote import MAX_META_BYTES
    assert MAX_META_BYTES == mvc.objects.MAX_TREE_BYTES  # one limit on both sides
    monkeypatch.setattr(mvc.objects, "MAX_TREE_BYTES", 8 << 10)
    first = repo.commit({"core": {"w": torch.zeros(2)}}, message="small")
    many = {f"layers.{i}.weight": torch.full((1,), float(i)) for i in range(200)}
    with pytest.raises(BadInput, match=r"tree would take \d+ bytes for 201 tensors and files; a remote sends back .*split it"):
        repo.commit({"core": many}, message="too many")
    assert repo.resolve("HEAD") == first and len(repo.log()) == 1


def test_a_tensor_of_more_dimensions_than_any_reader_takes_is_refused_at_commit(repo):
    """A 65-dimension tensor committed, then every load called its blob corrupt and fsck failed."""
    repo.commit({"core": {"w": torch.zeros([2] + [1] * 63)}}, message="64 dimensions are fine")
    refused(repo, lambda: repo.commit({"core": {"w": torch.zeros([2] + [1] * 64)}}, message="65"),
            r"tensor 'w' has 65 dimensions, and mvc stores at most 64")
    assert repo.load("HEAD", "core")["w"].dim() == 64 and repo.fsck()["ok"]


def test_an_empty_revision_or_branch_is_refused_never_taken_for_the_default(repo):
    """rollback("") moved the branch back one commit, load("") read HEAD and commit(branch="")
    landed on the current branch, while resolve("") refused: "" is a bad revision everywhere."""
    c1 = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    c2 = repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    for call in (lambda: repo.rollback(""), lambda: repo.load("", "m"), lambda: repo.load_model("", "m"),
                 lambda: repo.commit({"m": {"w": torch.full((3,), 2.0)}}, message="x", branch="")):
        refused(repo, call, "empty revision|invalid branch or tag name ''")
    assert repo.resolve("HEAD") == c2 and repo.log("main")[-1]["id"] == c1


@pytest.mark.parametrize("rev", ["HEAD~\u0661", "HEAD^\u0661", "main@{\u0661}", "HEAD~" + "9" * 5000,
                                 "main@{" + "1" * 5000 + "}"])
def test_revision_counts_take_plain_ascii_digits_of_sane_length(repo, rev):
    """Arabic-Indic digits resolved (HEAD~١ was HEAD~1; git refuses them), and a count of more
    than 4300 digits escaped as a raw ValueError (exit 4, "a bug in mvc")."""
    repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    with pytest.raises(mvc.UnknownRevision):
        repo.resolve(rev)


def test_metrics_are_unwrapped_at_any_depth_and_huge_numbers_are_refused_clearly(repo):
    """`{"x": tensor(1.)}` was stored but `{"x": {"y": tensor(1.)}}` refused; a meta tensor's
    .item() and an integer of 5000 digits escaped as raw RuntimeError / ValueError."""
    import numpy as np
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one",
                      metrics={"a": {"b": torch.tensor(0.5)}, "c": [np.float32(2.0), torch.tensor([3])]})
    assert repo.read_commit(cid)["metrics"] == {"a": {"b": 0.5}, "c": [2.0, 3]}
    refused(repo, lambda: repo.commit({"m": {"w": torch.zeros(3)}}, message="x",
                                      metrics={"loss": {"x": torch.empty((), device="meta")}}),
            r"metrics.loss.x: Tensor holds no number")
    refused(repo, lambda: repo.commit({"m": {"w": torch.zeros(3)}}, message="x", metrics={"n": 10 ** 5000}),
            "cannot store this value")
    for value, kind in ((torch.ones(3), "Tensor of 3"), (np.ones((2, 2)), "ndarray of 4")):  # ("Object of type
        refused(repo, lambda: repo.commit({"m": {"w": torch.zeros(3)}}, message="x",  # Tensor is not JSON
                                          metrics={"loss": value}),                   # serializable", h99)
                rf"metrics.loss: a {kind} elements is no metric \(give metrics as Python numbers, e.g. loss.item\(\), "
                r"or lists of them, e.g. t.tolist\(\)")


def test_no_repository_is_made_inside_another_ones_dot_mvc(repo, tmp_path):
    """`cd .mvc/refs/tags && mvc init` made a repository whose .mvc folder then sat among the
    outer repository's tags: log, fsck, gc, tag and du of the outer one failed."""
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    for inner in (os.path.join(repo.dir, "refs", "tags"), os.path.join(repo.dir, "objects", "zz"),
                  repo.dir):
        refused(repo, lambda: mvc.Repo.init(inner), "inside the .mvc folder of another")
    assert repo.tags() == {} and repo.log()[0]["id"] == cid and repo.fsck()["ok"]


def test_a_deleted_branch_at_reflog_entry_zero_says_it_was_deleted(repo):
    repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    repo.create_branch("x")
    repo.delete_branch("x")
    with pytest.raises(mvc.UnknownRevision, match="entry 0 of the reflog of refs/heads/x is its deletion"):
        repo.resolve("x@{0}")


@pytest.mark.parametrize("call", ["create_branch", "tag", "switch", "init"])
def test_a_name_that_is_not_text_is_a_clear_error(repo, tmp_path, call):
    """A non-str name raised AttributeError ('int' object has no attribute 'startswith')."""
    repo.commit({"m": {"w": torch.zeros(2)}}, message="x")
    with pytest.raises(BadName, match="must be text, not int"):
        if call == "init":
            mvc.Repo.init(str(tmp_path / "other"), default_branch=5)
        else:
            getattr(repo, call)(5)


def test_what_the_api_returns_can_be_changed_without_changing_history(repo):
    """log(), show(), read_commit(), read_tree() and tree() handed out the Repo's cached objects:
    popping a component from a log entry made the next commit drop it from its parent."""
    first = repo.commit({"core": {"w": torch.ones(3)}, "optimizer": {"state.0.exp_avg": torch.zeros(3)}},
                        message="checkpoint", metrics={"loss": 2.0})
    entry = repo.log()[0]
    entry["components"].pop("optimizer")
    entry["metrics"]["loss"] = 99.0
    entry["parents"].append("x")
    shown = repo.show("HEAD")
    shown["metrics"]["loss"] = 98.0
    repo.read_commit(first)["components"].clear()
    repo.read_tree(repo.read_commit(first)["components"]["core"])["tensors"].clear()
    repo.tree("HEAD", "core")["tensors"].pop("w")
    second = repo.commit({"brick/x": {"b": torch.ones(2)}}, message="add brick")
    assert set(mvc.Repo(repo.root).read_commit(second)["components"]) == {"core", "optimizer", "brick/x"}
    assert repo.log(n=2)[1]["metrics"] == {"loss": 2.0} and repo.log(n=2)[1]["parents"] == []
    assert torch.equal(repo.load(first, "core")["w"], torch.ones(3))
    repo.diff(first, second)["components"]["brick/x"]["tensors"]["b"]["shape"].append(9)
    assert repo.tree(second, "brick/x")["tensors"]["b"]["shape"] == [2]


def test_diff_and_decode_pause_the_cyclic_collector_and_restore_its_state(repo):
    import gc

    from mvc.objects import gc_paused
    a = repo.commit({"m": {"w": torch.zeros(2)}}, message="a")
    b = repo.commit({"m": {"w": torch.ones(2)}}, message="b")
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        assert repo.diff(a, b)["components"]["m"]["tensors"]["w"]["status"] == "changed"
        assert not gc.isenabled()  # (a caller's choice stands)
    finally:
        gc.enable()
    repo.diff(a, b)
    assert gc.isenabled()


def test_a_diff_of_two_trees_each_over_half_the_object_cache_reads_each_once(repo, monkeypatch):
    """Two trees of ~60,000 tensors (9.8 MB each) did not fit the 16 MiB cache together: mvc diff read
    and decoded each twice (its progress pass, then the diff), a second of a five-second diff."""
    from mvc import repo as repo_mod
    monkeypatch.setattr(repo_mod, "OBJECT_CACHE_BYTES", 64 << 10)
    state = {f"layer{i}.weight": torch.zeros(2) for i in range(300)}
    a = repo.commit({"c": state}, message="a")
    state["layer0.weight"] = torch.ones(2)
    b = repo.commit({"c": state}, message="b")
    r = mvc.Repo(repo.root)
    trees = {r.read_commit(c)["components"]["c"] for c in (a, b)}
    assert all(r.store.size(t) > 32 << 10 for t in trees)
    reads = []
    real_get = type(r.store).get
    monkeypatch.setattr(type(r.store), "get", lambda self, oid: reads.append(oid) or real_get(self, oid))
    for _ in range(2):
        tensors = r.diff(a, b)["components"]["c"]["tensors"]
        assert [n for n, t in tensors.items() if t["status"] == "changed"] == ["layer0.weight"]
    assert sorted(o for o in reads if o in trees) == sorted(trees)


def test_wrongly_typed_names_are_refused_clearly_and_none_means_none(repo, tmp_path):
    """remove=None, load(rev, ["m"]), keys=5, keys=[["w"]] and a bytes path raised raw TypeErrors;
    keys=b"w" was read as the names 119 (h86)."""
    import numpy as np
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one", remove=None)
    for keys, match in ((5, "keys must be a list of names \\(str\\), not int"),
                        ([["w"]], "not list holding a list"), (b"w", "not bytes")):
        refused(repo, lambda: repo.load(cid, "m", keys=keys), match)
    refused(repo, lambda: repo.load(cid, ["m"]), "component must be a name \\(str\\), not a list")
    refused(repo, lambda: repo.commit({"m": {"w": torch.zeros(3)}}, message="x", remove=[1]), "remove must be")
    assert torch.equal(repo.load(cid, "m", keys=("w",))["w"], torch.ones(3))
    assert mvc.Repo(os.fsencode(repo.root)).root == repo.root
    assert mvc.Repo.init(os.fsencode(tmp_path / "other")).root == str(tmp_path / "other")
    two = repo.commit({"m": {"w": torch.zeros(3)}}, message="two", metrics={"loss": np.longdouble(0.5)})
    assert repo.read_commit(two)["metrics"] == {"loss": 0.5}

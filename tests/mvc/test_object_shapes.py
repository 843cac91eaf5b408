"""Commits and trees that hash right but were built wrongly (by a bug, a hand edit or a hostile
remote): every reader refuses them by name (CorruptObject, exit 3), `fsck` reports them (exit 1),
and a tree entry naming the wrong blob is caught even though every object hashes right."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

from mvc.cli import cli
from mvc.errors import CorruptObject
from mvc.objects import decode

from damage import forge


def _commit(repo, seed=0):
    g = torch.Generator().manual_seed(seed)
    return repo.commit({"m": {"w": torch.randn(2, generator=g), "i": torch.arange(3)}}, message=f"c{seed}")


def _point_main_at(repo, obj: dict) -> str:
    """Store `obj` as it is (no checks on the way in) and move main to it."""
    oid = forge(repo, obj)
    with open(os.path.join(repo.dir, "refs", "heads", "main"), "w") as f:
        f.write(oid + "\n")
    return oid


def _cli(repo, *args):
    cwd = os.getcwd()
    os.chdir(repo.root)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(cwd)


OID = "ab" * 32


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


COMMIT_BREAKS = {
    "components is a list": lambda c: c.update(components=[OID]),
    "no parents": lambda c: c.pop("parents"),
    "parents is one id": lambda c: c.update(parents=OID),
    "parent not an id": lambda c: c.update(parents=[5]),
    "parent is path-like": lambda c: c.update(parents=["../../etc/passwd"]),
    "component name escapes": lambda c: c.update(components={"../../evil": OID}),
    "component id uppercase": lambda c: c.update(components={"m": OID.upper()}),
    "message not text": lambda c: c.update(message=["x"]),
    "metrics not an object": lambda c: c.update(metrics=[1]),
    "no time": lambda c: c.pop("time"),
    "extra nests 600 deep": lambda c: c.update(extra=_nested(600)),  # (clone took it; then log, fsck: exit 4)
    "extra nests 300 deep": lambda c: c.update(extra=_nested(300)),
}
TREE_BREAKS = {
    "tensors is a string": lambda t: t.update(tensors="x"),
    "tensor lacks dtype": lambda t: next(iter(t["tensors"].values())).pop("dtype"),
    "unknown dtype": lambda t: next(iter(t["tensors"].values())).update(dtype="F128"),
    "shape is a string": lambda t: next(iter(t["tensors"].values())).update(shape="2"),
    "negative size": lambda t: next(iter(t["tensors"].values())).update(shape=[-1]),
    "tensor id is path-like": lambda t: next(iter(t["tensors"].values())).update(id="../../../../evil_payload"),
    "tensor of an unlisted file": lambda t: next(iter(t["tensors"].values())).update(file="other.safetensors"),
    "file path escapes": lambda t: t.update(files={"../x": {"format": "raw", "id": OID, "size": 1}}),
    "unknown file format": lambda t: t.update(files={"a": {"format": "pickle", "id": OID, "size": 1}}),
    "file without size": lambda t: t.update(files={"a": {"format": "raw", "id": OID}}),
    "no kind": lambda t: t.pop("kind"),
    "tensor without its file": lambda t: next(iter(t["tensors"].values())).pop("file"),
    "meta nests 600 deep": lambda t: t.update(meta=_nested(600)),
    "a file below a file": lambda t: t["files"].update({"a": {"format": "raw", "id": OID, "size": 1},
                                                        "a/b": {"format": "raw", "id": OID, "size": 1}}),
}


@pytest.mark.parametrize("depth", [65, 5000])
def test_values_nesting_too_deep_are_refused_before_anything_is_written(repo, depth):
    """Readers recurse through commits and trees: nesting past 64 levels is refused (5,000 levels
    raised a raw RecursionError from the API)."""
    from mvc.errors import BadInput
    before = sorted(repo.store.ids())
    with pytest.raises(BadInput, match="extra.* nests deeper than 6[34] levels"):
        repo.commit({"m": {"w": torch.ones(2)}}, message="x", extra={"deep": _nested(depth - 1)})
    assert sorted(repo.store.ids()) == before and repo.head() is None
    repo.commit({"m": {"w": torch.ones(2)}}, message="x", extra={"deep": _nested(61)})  # 64 levels in all: kept
    with pytest.raises(BadInput, match="extra nests deeper than 63 levels"):  # 65 in all: named, nothing written
        repo.commit({"m": {"w": torch.ones(3)}}, message="x", extra={"deep": _nested(62)})
    from mvc.objects import canonical_json
    assert canonical_json(5) == b"5" and canonical_json(None) == b"null"  # (a scalar nests nothing)


def test_history_an_older_mvc_wrote_nesting_past_the_write_limit_stays_readable(repo):
    """Readers take up to 256 levels: an older mvc wrote commits nesting 70 deep, which must not
    turn into damage (log, fsck and gc refused the repository)."""
    good = _commit(repo)
    deep = _point_main_at(repo, {**repo.read_commit(good), "parents": [good], "extra": {"d": _nested(70)}})
    repo._cache.clear()
    assert [c["id"] for c in repo.log()] == [deep, good] and repo.fsck()["ok"]
    assert _cli(repo, "log").exit_code == 0


@pytest.mark.parametrize("case", sorted(COMMIT_BREAKS))
def test_malformed_commit_is_refused_by_readers_and_reported_by_fsck(repo, case):
    good = _commit(repo)
    c = dict(repo.read_commit(good), parents=[good])
    c["components"] = dict(c["components"])
    COMMIT_BREAKS[case](c)
    bad = _point_main_at(repo, c)
    repo._cache.clear()
    with pytest.raises(CorruptObject, match="malformed"):
        decode(repo.store.get(bad), "commit", bad)
    for args in (["log"], ["show", "HEAD"], ["checkout", "HEAD", "-o", repo.root + "/out"]):
        r = _cli(repo, *args)
        assert r.exit_code == 3 and "malformed" in r.stderr and "Traceback" not in r.output, (args, r.output)
    r = _cli(repo, "fsck", "--json")
    assert r.exit_code == 1
    problems = json.loads(r.stdout)["problems"]
    assert [p["id"] for p in problems if "malformed" in p["problem"]] == [bad]
    assert not os.path.exists(os.path.join(repo.root, "out"))


@pytest.mark.parametrize("case", sorted(TREE_BREAKS))
def test_malformed_tree_is_refused_by_readers_and_reported_by_fsck(repo, case):
    good = _commit(repo)
    c = repo.read_commit(good)
    tree = json.loads(json.dumps(repo.read_tree(c["components"]["m"])))
    TREE_BREAKS[case](tree)
    tid = forge(repo, tree)
    cid = forge(repo, {**c, "parents": [good], "components": {"m": tid}, "message": "bad tree"})
    with open(os.path.join(repo.dir, "refs", "heads", "main"), "w") as f:
        f.write(cid + "\n")
    repo._cache.clear()
    with pytest.raises(CorruptObject, match="malformed"):
        repo.load("HEAD", "m")
    for args in (["show", "HEAD"], ["diff", "HEAD~1", "HEAD"], ["checkout", "HEAD", "-o", repo.root + "/out"]):
        r = _cli(repo, *args)
        assert r.exit_code == 3 and "malformed" in r.stderr and "Traceback" not in r.output, (args, r.output)
    r = _cli(repo, "fsck", "--json")
    assert r.exit_code == 1
    assert tid in {p["id"] for p in json.loads(r.stdout)["problems"]}
    assert not any(name.startswith("evil") for name in os.listdir(os.path.dirname(repo.root)))


@pytest.mark.parametrize("target", ["blob of another dtype", "a commit"])
def test_tree_entry_naming_the_wrong_object_is_caught(repo, target):
    """Every object hashes right; only the entry's dtype/shape against the blob's header shows it."""
    first = _commit(repo, 0)
    c = repo.read_commit(first)
    tree = json.loads(json.dumps(repo.read_tree(c["components"]["m"])))
    tree["tensors"]["w"]["id"] = tree["tensors"]["i"]["id"] if target != "a commit" else first
    tid = forge(repo, tree)
    cid = forge(repo, {**c, "parents": [first], "components": {"m": tid}, "message": "lies"})
    with open(os.path.join(repo.dir, "refs", "heads", "main"), "w") as f:
        f.write(cid + "\n")
    with pytest.raises(CorruptObject, match="'w'"):
        repo.load("HEAD", "m")  # before: an int64 tensor of shape (3,) came back as 'w'
    with pytest.raises(CorruptObject, match="'w'"):
        repo.diff("HEAD~1", "HEAD")  # before: a RuntimeError from torch (exit 4)
    r = _cli(repo, "fsck", "--json")
    assert r.exit_code == 1, r.output  # before: "ok"
    assert [p["id"] for p in json.loads(r.stdout)["problems"]] == [tid]
    r = _cli(repo, "checkout", "HEAD", "-o", repo.root + "/out")
    assert r.exit_code == 3 and "'w'" in r.stderr


def test_damaged_ref_file_is_reported_by_fsck_with_exit_1(repo):
    _commit(repo)
    with open(os.path.join(repo.dir, "refs", "heads", "main"), "w") as f:
        f.write("garbage\n")
    r = _cli(repo, "fsck", "--json")
    assert r.exit_code == 1, r.output  # before: exit 3, the error fsck itself pointed to
    assert [p["id"] for p in json.loads(r.stdout)["problems"]] == ["refs/heads/main"]
    assert _cli(repo, "log").exit_code == 3


def test_damaged_header_blob_is_named_alone(repo, tmp_path):
    """A flipped byte in a file's header blob is that blob's damage, not its trees'."""
    from damage import flip_byte
    from safetensors.torch import save_file
    p = tmp_path / "f.safetensors"
    save_file({"a": torch.ones(3), "b": torch.zeros(2)}, str(p))
    repo.commit({"m": str(p)}, message="one")
    save_file({"a": torch.ones(3), "b": torch.ones(2)}, str(p))
    repo.commit({"m": str(p)}, message="two")  # a second tree shares the header blob
    header = repo.read_tree(repo.read_commit(repo.resolve("HEAD"))["components"]["m"])["files"]["f.safetensors"]["header"]
    flip_byte(repo.loose.path(header), pos=12)
    r = _cli(repo, "fsck", "--json")
    assert r.exit_code == 1
    assert [p["id"] for p in json.loads(r.stdout)["problems"]] == [header]


def test_history_with_file_names_older_mvc_stored_stays_readable(repo):
    """mvc before 2026-11-22 stored a single file's name unchecked ('back\\slash.safetensors' is a
    legal Linux name): decode reads such trees; only a checkout, which cannot write the name
    portably, refuses them."""
    good = _commit(repo)
    c = repo.read_commit(good)
    tree = json.loads(json.dumps(repo.read_tree(c["components"]["m"])))
    (old_name, entry), = tree["files"].items()
    tree["files"] = {"back\\slash.safetensors": entry}
    for t in tree["tensors"].values():
        t["file"] = "back\\slash.safetensors"
    tid = forge(repo, tree)
    cid = forge(repo, {**c, "parents": [good], "components": {"m": tid}, "message": "old name"})
    with open(os.path.join(repo.dir, "refs", "heads", "main"), "w") as f:
        f.write(cid + "\n")
    assert set(repo.load("HEAD", "m")) == {"w", "i"}
    assert _cli(repo, "show", "HEAD").exit_code == 0 and _cli(repo, "fsck").exit_code == 0
    r = _cli(repo, "checkout", "HEAD", "-o", repo.root + "/out")
    assert r.exit_code == 3 and "unsafe file path" in r.stderr

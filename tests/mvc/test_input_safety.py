"""Hostile or inconsistent input to the Repo API: names that would escape or collide on checkout,
revisions naming non-commits, unreadable inputs, odd tensors, and checks that run before any write."""
import json
import os
import shutil
import struct
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import mvc
from mvc import components
from mvc.errors import BadInput, BadName, CorruptObject, UnknownRevision


def sd(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 3, generator=g), "b": torch.randn(3, generator=g)}


def snapshot(repo):
    """Every file under .mvc with its bytes: what 'writes nothing' compares."""
    out = {}
    for dirpath, _d, files in os.walk(repo.dir):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, repo.dir)] = f.read()
    return out


def raw_safetensors(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".git", ".GIT", "a/.git/hooks", ".mvc", "x/.Mvc", ".git.", "x" * 256,
                                  "a/\udcff"])
def test_component_names_that_checkout_could_not_write_safely_are_refused(repo, name):
    before = snapshot(repo)
    with pytest.raises(BadName):
        repo.commit({name: sd()}, message="x")
    assert snapshot(repo) == before


@pytest.mark.parametrize("name", ["HEAD", "b" * 201, "f/\udcff"])
def test_branch_names_head_overlong_or_not_utf8_are_refused(repo, name):
    repo.commit({"core": sd()}, message="one")
    with pytest.raises(BadName):
        repo.create_branch(name)
    with pytest.raises(BadName):
        repo.commit({"core": sd(1)}, message="two", branch=name)
    assert list(repo.branches()) == ["main"]


def test_nesting_component_names_are_refused_before_anything_is_written(repo):
    repo.commit({"a": sd()}, message="one")
    before = snapshot(repo)
    with pytest.raises(BadName, match="nest"):
        repo.commit({"a/b": sd(1)}, message="inside a")  # `a` carried over from the parent
    with pytest.raises(BadName, match="nest"):
        repo.commit({"x": sd(1), "x/y/z": sd(2)}, message="both new")
    assert snapshot(repo) == before
    repo.commit({"a-b": sd(1), "ab": sd(2)}, message="siblings that only share a prefix are fine")


def test_component_names_differing_only_in_case_or_unicode_form_are_refused(repo):
    """`core` beside `Core` (or `café` in NFC beside NFD) were committed: a checkout on macOS or
    Windows writes both into one folder, one component's files over the other's."""
    repo.commit({"core": sd()}, message="one")
    before = snapshot(repo)
    with pytest.raises(BadName, match="'Core' and 'core' differ only in case"):
        repo.commit({"Core": sd(1)}, message="case")
    with pytest.raises(BadName, match="differ only in case or Unicode form"):
        repo.commit({"caf\u00e9": sd(1), "cafe\u0301": sd(2)}, message="nfc and nfd")
    with pytest.raises(BadName, match="'core' and 'CORE/x' nest"):
        repo.commit({"CORE/x": sd(1)}, message="nests when folded")
    assert snapshot(repo) == before
    repo.commit({"core-2": sd(1), "Straße": sd(2), "STRASSE": sd(7)},  # (ß is not ss there: h63)
                message="names that differ in more than case are fine")
    # two already there (an older mvc took them): every commit was refused, now it is warned of (h57)
    from damage import forge
    head = repo.read_commit(repo.resolve("HEAD"))
    old = forge(repo, {**head, "components": {**head["components"], "CORE": head["components"]["core"]},
                       "parents": [repo.resolve("HEAD")]})
    repo.refs.update("refs/heads/main", old, message="an older mvc's commit")
    with pytest.warns(UserWarning, match="'CORE' and 'core' differ only in case.*mvc commit --remove core"):
        repo.commit({"optimizer": sd(3), "core": sd(4)}, message="adds another, rewrites one of the two")
    repo.commit({}, remove=["CORE"], message="drops one")
    assert set(repo.read_commit(repo.resolve("HEAD"))["components"]) == {"core", "core-2", "Straße", "STRASSE",
                                                                         "optimizer"}
    head = repo.read_commit(repo.resolve("HEAD"))  # `Optimizer/x` beside `optimizer` nests where case is ignored
    old = forge(repo, {**head, "components": {**head["components"], "Optimizer/x": head["components"]["core"]},
                       "parents": [repo.resolve("HEAD")]})
    repo.refs.update("refs/heads/main", old, expected=repo.resolve("HEAD"), message="an older mvc's commit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repo.commit({"more": sd(5)}, message="unrelated")
    assert [str(w.message).split(":")[0] for w in caught] == [  # (once: it was said twice)
        "components 'optimizer' and 'Optimizer/x' nest where case or Unicode form is ignored"]
    with pytest.raises(BadName, match="'core-2' and 'CORE-2/y' nest where case or Unicode form is ignored"):
        repo.commit({"CORE-2/y": sd(6)}, message="a new name that nests so")


def test_names_differing_only_in_trailing_dots_or_spaces_are_refused(repo, tmp_path):
    """h78: `core` beside `core.` (and files `b` beside `b `) were committed: Windows drops a trailing
    dot or space, so a checkout there writes one over the other (mvc refused `.git.` for that reason)."""
    repo.commit({"core": sd()}, message="one")
    before = snapshot(repo)
    with pytest.raises(BadName, match="'core' and 'core.' differ only in trailing dots or spaces") as e:
        repo.commit({"core.": sd(1)}, message="dot")
    assert e.value.hint == "pick names that differ in more than trailing dots or spaces"  # (h82: case, it said)
    with pytest.raises(BadName, match="'core' and 'core /x' nest where trailing dots or spaces are ignored"):
        repo.commit({"core /x": sd(1)}, message="space, nested")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "b").write_text("1")
    (folder / "b ").write_text("2")
    assert snapshot(repo) == before
    # files: said, not refused (h79: a folder an older mvc committed must commit again)
    with pytest.warns(UserWarning, match="files 'b' and 'b ' differ only in trailing dots or spaces.*on Windows"):
        repo.commit({"hf": str(folder)}, message="files")
    repo.commit({"core.v2": sd(2), "a..b": sd(3)}, message="dots inside a name are fine")
    clash = tmp_path / "clash"  # h81: a trailing-dot name sorting first hid a case clash behind it
    clash.mkdir()
    for n in ("AB.", "aB", "ab"):
        (clash / n).write_text(n)
    with pytest.raises(BadInput, match="files 'aB' and 'ab' differ only in case or Unicode form"):
        repo.commit({"clash": str(clash)}, message="case")


def test_checkout_refuses_components_writing_the_same_path():
    tree = {"files": {"b/c.safetensors": {}}}
    with pytest.raises(BadInput, match="both write"):
        components.checkout_paths({"a": tree, "a/b": {"files": {"c.safetensors": {}}}})
    with pytest.raises(BadInput, match="both write"):  # a file where the other needs a directory
        components.checkout_paths({"a": {"files": {"b": {}}}, "a/b": {"files": {"c": {}}}})
    paths = components.checkout_paths({"a": {"files": {"x": {}}}, "a/b": {"files": {"c": {}}}})
    assert [p for _n, _r, p in paths] == ["a/x", "a/b/c"]


def test_add_and_remove_of_one_component_and_removing_a_missing_one_write_nothing(repo):
    repo.commit({"core": sd()}, message="one")
    before = snapshot(repo)
    with pytest.raises(BadInput, match="both added and removed"):
        repo.commit({"core": sd(1)}, message="x", remove=["core"])
    with pytest.raises(BadName, match="cannot remove"):
        repo.commit({"other": sd(1)}, message="x", remove=["nope"])
    assert snapshot(repo) == before


@pytest.mark.parametrize("metrics,message", [({"loss": float("nan")}, "m"), ({"": 1.0}, "m"),
                                             ({"loss": float("inf")}, "m"), ({}, "bad \udcff text")])
def test_bad_metrics_or_message_are_refused_before_the_weights_are_stored(repo, metrics, message):
    before = snapshot(repo)
    with pytest.raises(BadInput):
        repo.commit({"core": sd()}, message=message, metrics=metrics)
    assert snapshot(repo) == before


@pytest.mark.parametrize("metrics,where", [({"loss": float("nan")}, "'loss' is nan"),
                                           ({"curve": [1.0, float("-inf")]}, "'curve'[1] is -inf")])
def test_a_metric_that_is_not_finite_is_named_with_what_to_do(repo, metrics, where):
    """The refusal said "metrics: value.loss is nan: ... (canonical JSON)", mvc's inner wording."""
    with pytest.raises(BadInput) as e:
        repo.commit({"core": sd()}, message="m", metrics=metrics)
    assert str(e.value) == (f"metric {where}: metrics are JSON numbers, which have no NaN or infinity "
                            '(record it as text instead, e.g. "diverged")')


# -- revisions --------------------------------------------------------------------------------
def test_revisions_must_name_commits(repo):
    cid = repo.commit({"core": sd()}, message="one")
    tree_id = repo.read_commit(cid)["components"]["core"]
    blob_id = repo.read_tree(tree_id)["tensors"]["w"]["id"]
    for oid, kind in ((tree_id, "tree"), (blob_id, "blob")):
        with pytest.raises(UnknownRevision, match=f"names a {kind}, not a commit"):
            repo.resolve(oid)
        with pytest.raises(UnknownRevision):
            repo.create_branch("br", oid)
        with pytest.raises(UnknownRevision):
            repo.tag("t", oid)
    with pytest.raises(UnknownRevision):  # prefixes only match commits
        repo.resolve(tree_id[:10])
    assert list(repo.branches()) == ["main"] and repo.tags() == {}


def test_fsck_reports_a_ref_that_points_at_a_tree(repo):
    cid = repo.commit({"core": sd()}, message="one")
    tree_id = repo.read_commit(cid)["components"]["core"]
    with open(os.path.join(repo.dir, "refs", "heads", "odd"), "w") as f:
        f.write(tree_id + "\n")
    report = repo.fsck()
    assert not report["ok"]
    assert any(p["id"] == tree_id and "names a tree, not a commit" in p["problem"] for p in report["problems"])


def test_a_prefix_of_a_damaged_commit_is_reported_as_damage(repo):
    cid = repo.commit({"core": sd()}, message="one")
    path = repo.loose.path(cid)
    data = bytearray(open(path, "rb").read())
    data[5] ^= 1
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)
    repo._cache.clear()
    with pytest.raises(CorruptObject, match="damaged"):
        repo.resolve(cid[:8])


def test_reflog_of_an_unknown_branch_is_an_error(repo):
    repo.commit({"core": sd()}, message="one")
    with pytest.raises(UnknownRevision, match="no branch 'nope'"):
        repo.reflog("nope")
    assert [e["message"] for e in repo.reflog("main")] == ["commit: one"]


# -- files and directories --------------------------------------------------------------------
def test_directory_tensor_names_cannot_collide_with_qualified_keys(repo, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": torch.ones(4)}, str(d / "a.safetensors"))
    save_file({"b.safetensors:a": torch.full((4,), 2.0), "a": torch.full((4,), 3.0)}, str(d / "b.safetensors"))
    originals = {p.name: p.read_bytes() for p in d.iterdir()}
    cid = repo.commit({"model": str(d)}, message="x")
    tree = repo.tree(cid, "model")
    assert len(tree["tensors"]) == 3
    out = tmp_path / "out"
    repo.checkout(cid, str(out))
    for name, data in originals.items():
        assert (out / "model" / name).read_bytes() == data
    assert repo.fsck()["ok"]


def test_fsck_reports_a_tree_missing_a_tensor_its_file_names(repo, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4), "b": torch.zeros(4)}, str(path))
    cid = repo.commit({"model": str(path)}, message="x")
    tree = dict(repo.tree(cid, "model"))
    tree["tensors"] = {k: v for k, v in tree["tensors"].items() if k != "b"}
    broken = repo.write_object(tree)
    repo.commit(message="drop b from the tree", trees={"model": broken})
    report = repo.fsck()
    assert not report["ok"]
    assert any(p["id"] == broken and "'b'" in p["problem"] for p in report["problems"])
    with pytest.raises(CorruptObject, match="lacks tensor 'b'"):
        repo.checkout("HEAD", str(tmp_path / "out"))


def test_unreadable_directory_fails_the_commit_instead_of_dropping_files(repo, tmp_path, monkeypatch):
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    save_file({"a": torch.ones(4)}, str(d / "a.safetensors"))
    save_file({"b": torch.ones(4)}, str(d / "sub" / "b.safetensors"))
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(BadInput, match="cannot read this directory"):
        repo.commit({"model": str(d)}, message="x")
    assert repo.head() is None and not list(repo.store.ids())


def test_unreadable_file_is_a_clear_error(repo, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(path))

    def denied(p, *a, **k):
        raise PermissionError(13, "Permission denied", os.fspath(p))

    monkeypatch.setattr(components, "open", denied, raising=False)
    with pytest.raises(BadInput, match="permission denied"):
        repo.commit({"model": str(path)}, message="x")
    assert repo.head() is None


def test_files_of_a_folder_differing_only_in_case_are_refused(repo, tmp_path):
    """A folder holding w.bin and W.bin (or a name in NFC and NFD) was committed: a checkout on
    macOS or Windows writes one over the other (h57)."""
    for a, b in (("w.bin", "W.bin"), ("sub/caf\u00e9.txt", "sub/cafe\u0301.txt"), ("a", "A/x")):
        d = tmp_path / f"m{len(a)}"
        for name in (a, b):
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(name.encode())
        with pytest.raises(BadInput, match="differ only in case or Unicode form"):
            repo.commit({"model": str(d)}, message="x")
        shutil.rmtree(d)
    assert repo.head() is None and not list(repo.store.ids())


def test_a_pipe_in_a_directory_is_skipped_with_a_warning(repo, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": torch.ones(4)}, str(d / "a.safetensors"))
    os.mkfifo(d / "pipe")
    with pytest.warns(UserWarning, match="not a regular file"):
        cid = repo.commit({"model": str(d)}, message="x")
    assert list(repo.tree(cid, "model")["files"]) == ["a.safetensors"]


def test_a_directory_of_pipes_only_is_refused_not_an_empty_component(repo, tmp_path):
    """It committed as a component of no files, replacing the component's earlier content."""
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": torch.ones(4)}, str(d / "a.safetensors"))
    first = repo.commit({"model": str(d)}, message="one")
    os.unlink(d / "a.safetensors")
    os.mkfifo(d / "pipe")
    with pytest.raises(BadInput, match="holds no files to commit: only pipes, sockets or devices"):
        repo.commit({"model": str(d)}, message="x")
    assert repo.head() == first


def test_upper_case_suffixes_are_read_as_what_they_name(repo, tmp_path):
    """MODEL.PT and Model.SAFETENSORS were stored as opaque files (no tensors, no weights_only
    import, no header check), while export took the same suffixes in any case."""
    torch.save({"w": torch.arange(4.0)}, tmp_path / "MODEL.PT")
    save_file({"v": torch.ones(3)}, str(tmp_path / "Model.SAFETENSORS"))
    cid = repo.commit({"pt": str(tmp_path / "MODEL.PT"), "st": str(tmp_path / "Model.SAFETENSORS")}, message="x")
    assert torch.equal(repo.load(cid, "pt")["w"], torch.arange(4.0))
    assert torch.equal(repo.load(cid, "st")["v"], torch.ones(3))
    (tmp_path / "BAD.SAFETENSORS").write_bytes(b"\x10" + bytes(7) + b"not json")
    with pytest.raises(BadInput):
        repo.commit({"bad": str(tmp_path / "BAD.SAFETENSORS")}, message="x")


def test_a_link_to_a_folder_is_refused_with_a_trailing_slash_too(repo, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": torch.ones(4)}, str(d / "a.safetensors"))
    os.symlink(d, tmp_path / "link")
    for path in (str(tmp_path / "link"), str(tmp_path / "link") + "/"):
        with pytest.raises(BadInput, match="is a symbolic link"):
            repo.commit({"model": path}, message="x")
    assert repo.head() is None


def test_committing_the_repository_directory_itself_is_refused(repo):
    repo.commit({"core": sd()}, message="one")
    before = snapshot(repo)
    for path in (repo.dir, os.path.join(repo.dir, "objects")):
        with pytest.raises(BadInput, match="own .mvc directory"):
            repo.commit({"x": path}, message="x")
    assert snapshot(repo) == before


_ENTRY = b'"dtype":"F32","shape":[1],"data_offsets":[0,4]'


@pytest.mark.parametrize("header", [
    b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}",
    # in the value a repeated key replaced (only the kept one was checked: h53)
    b'{"t":{' + _ENTRY + b',"x":' + b"[" * 200 + b"]" * 200 + b',"x":1}}',
    b'{"t":{' + _ENTRY + b',"x":"\\ud800","x":1}}',
    b'{"t":{' + _ENTRY + b',"x":{"\\udc00":1},"x":1}}',
    b'{"__metadata__":{"k":"\\ud800","k":"v"},"t":{' + _ENTRY + b'}}',
])
def test_headers_with_lone_surrogates_or_deep_nesting_are_refused(repo, tmp_path, header):
    from safetensors.torch import load
    path = tmp_path / "bad.safetensors"
    raw_safetensors(path, header, b"\0" * 4)
    with pytest.raises(Exception):
        load(path.read_bytes())  # (as the reference reader refuses it)
    with pytest.raises(BadInput, match="lone surrogate|nests"):
        repo.commit({"model": str(path)}, message="x")
    assert repo.head() is None and not list(repo.store.ids())


# -- .pt import -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: torch.ones(2).to_sparse(), lambda: torch.ones(2, device="meta")])
def test_sparse_and_meta_tensors_are_refused(repo, tmp_path, make):
    path = tmp_path / "m.pt"
    torch.save({"a": make()}, path)
    with pytest.raises(BadInput):
        repo.commit({"model": str(path)}, message="x")
    assert repo.head() is None


def test_truncated_pt_is_refused_without_torch_warnings(repo, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(sd(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torch UserWarning would surface as an extra CLI line
        with pytest.raises(BadInput, match="refusing to import"):
            repo.commit({"model": str(path)}, message="x")


def test_tied_tensors_are_written_out_under_every_name(repo, tmp_path):
    w = torch.randn(3, 4)
    torch.save({"emb": w, "head": w, "bias": torch.zeros(4)}, tmp_path / "m.pt")
    cid = repo.commit({"core": str(tmp_path / "m.pt")}, message="tied")
    out = tmp_path / "out.safetensors"
    repo.export(cid, "core", str(out))
    back = load_file(str(out))
    assert set(back) == {"emb", "head", "bias"}
    assert torch.equal(back["head"], w) and torch.equal(back["emb"], w)
    assert os.path.getsize(out) == repo.tree(cid, "core")["files"]["model.safetensors"]["size"]
    loaded = repo.load(cid, "core")
    assert loaded["head"].data_ptr() == loaded["emb"].data_ptr()  # still one blob, shared on load


# -- output paths and maintenance -------------------------------------------------------------
def test_output_paths_blocked_by_a_file_are_clear_errors(repo, tmp_path):
    cid = repo.commit({"core": sd()}, message="one")
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    with pytest.raises(BadInput, match="cannot check out into .*afile: it is a file"):
        repo.checkout(cid, str(blocker))
    with pytest.raises(BadInput, match="cannot check out into .*sub: .*afile is a file, not a folder"):
        repo.checkout(cid, str(blocker / "sub"))
    with pytest.raises(BadInput, match="cannot export to .*x.safetensors: .*afile is a file, not a folder"):
        repo.export(cid, "core", str(blocker / "x.safetensors"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(BadInput, match="cannot write"):
        repo.export(cid, "core", str(tmp_path / "adir"))
    assert blocker.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["adir", "afile", "repo"]


def test_gc_on_a_fresh_repository(tmp_path):
    repo = mvc.Repo.init(tmp_path / "fresh")
    result = repo.gc()
    assert result["removed"] == 0 and result["bytes_freed"] == 0


# -- second round: config, gc against writers, git branches, directory keys -------------------
@pytest.mark.parametrize("key,value", [("core.format", "2"), ("core.fsync", "maybe"),
                                       ("gc.reflogExpire", "abc"), ("pack.autoEvery", "-1"),
                                       ("DEFAULT.x", "1"), ("sec.na=me", "v"), ("nodot", "1"),
                                       ("user.note", "two\nlines"), ("pack.maxdepth", "abc"),
                                       ("Core.Format", "2"), ("core.fsnyc", "false"), ("pack.depth", "3")])
def test_config_refuses_what_mvc_could_not_use(repo, key, value):
    before = open(os.path.join(repo.dir, "config")).read()
    with pytest.raises(mvc.errors.ConfigError):
        repo.set_config(key, value)
    assert open(os.path.join(repo.dir, "config")).read() == before
    assert mvc.Repo(repo.root).head() is None  # the repository still opens


def test_config_values_are_stored_verbatim_and_bad_hand_edits_are_clear(repo):
    repo.set_config("user.note", "100%(x)s done")
    assert mvc.Repo(repo.root).get_config("user.note") == "100%(x)s done"
    text = open(os.path.join(repo.dir, "config")).read().replace("[core]\n", "[core]\nfsync = maybe\n", 1)
    with open(os.path.join(repo.dir, "config"), "w") as f:
        f.write(text)
    with pytest.warns(UserWarning, match="core.fsync"):
        r = mvc.Repo(repo.root)  # still opens (durable meanwhile), so `mvc config` can repair it
    assert r.loose.fsync is True
    r.set_config("core.fsync", "false")
    assert mvc.Repo(repo.root).loose.fsync is False


def test_setting_a_config_value_keeps_the_files_comments_and_layout(repo):
    """configparser rewrote the whole file: a hand-written comment or a blank line was lost on the
    next `mvc config KEY VALUE` (git keeps them)."""
    path = os.path.join(repo.dir, "config")
    with open(path, "w") as f:
        f.write("[core]\nformat = 1\n; fsync costs a little, keeps commits whole\nfsync = true\n\n# the team's remote\n"
                "[remote \"origin\"]\nurl = s3://team/models\n\n[notes]\nowner = ana\n")
    repo.set_config("core.fsync", "false")
    repo.set_config("pack.autoEvery", "7")
    repo.set_config("notes.owner", None)  # (its section goes, as before)
    repo.set_config("remote.origin.endpoint", "http://127.0.0.1:9000")
    with open(path) as f:
        text = f.read()
    assert text == ("[core]\nformat = 1\n; fsync costs a little, keeps commits whole\nfsync = false\n\n"
                    "# the team's remote\n[remote \"origin\"]\nurl = s3://team/models\nendpoint = http://127.0.0.1:9000\n\n"
                    "[pack]\nautoEvery = 7\n")
    again = mvc.Repo(repo.root)
    assert (again.loose.fsync, again.get_config("pack.autoEvery"), again.get_config("notes.owner")) == (False, "7", None)
    with open(path, "a") as f:
        f.write("[late]\nadded = by hand after the repository was opened\n")
    again.set_config("core.fsync", "true")  # (it wrote what it had read when opened: the hand edit was lost)
    assert mvc.Repo(repo.root).get_config("late.added") == "by hand after the repository was opened"
    assert mvc.Repo(repo.root).loose.fsync and again.get_config("late.added")


@pytest.mark.parametrize("before, key, value, after", [
    ("[core]\nformat = 1\n[user]\nnote = a\n  second line\n  third\nx = 1", "user.note", "b",
     "[core]\nformat = 1\n[user]\nnote = b\nx = 1\n"),  # continuation lines go with it; a last line without \n
    ("[core]\nformat = 1\n[user]\nName: ana\n", "user.name", "bo", "[core]\nformat = 1\n[user]\nname = bo\n"),
    ("[core]\nformat = 1\n\n[user]\n; who\nname = ana\n# end\n", "user.name", None, "[core]\nformat = 1\n\n"),
    ("[core]\nformat = 1\n# trailing\n", "core.fsync", "false", "[core]\nformat = 1\n# trailing\nfsync = false\n"),
    # a comment above a header is that section's: kept when the section before goes, not split from it
    ("[core]\nformat = 1\n[pack]\nautoEvery = 5\n\n# who\n[user]\nname = a\n", "pack.autoEvery", None,
     "[core]\nformat = 1\n\n# who\n[user]\nname = a\n"),
    ("[core]\nformat = 1\n[pack]\nautoEvery = 5\n\n# who\n[user]\nname = a\n", "pack.level", "3",
     "[core]\nformat = 1\n[pack]\nautoEvery = 5\nlevel = 3\n\n# who\n[user]\nname = a\n"),
])
def test_the_config_line_editor(repo, before, key, value, after):
    with open(os.path.join(repo.dir, "config"), "w") as f:
        f.write(before)
    repo.set_config(key, value)
    assert open(os.path.join(repo.dir, "config")).read() == after


def test_a_config_a_hand_edit_broke_since_the_repo_was_opened_is_not_overwritten(repo):
    from mvc.errors import ConfigError
    path = os.path.join(repo.dir, "config")
    broken = open(path).read() + "[user]\nname = a\nname = b\n# mine\n"  # (a duplicate option)
    with open(path, "w") as f:
        f.write(broken)
    with pytest.raises(ConfigError, match="config is unreadable"):
        repo.set_config("pack.autoEvery", "3")  # (it wrote what it had read at open over the edit)
    assert open(path).read() == broken


def test_a_config_edit_that_would_not_read_back_as_meant_rewrites_the_file(repo, monkeypatch):
    import mvc.config
    monkeypatch.setattr(mvc.config, "edited_text", lambda text, *a: text + "[core]\n")  # (a duplicate section)
    repo.set_config("pack.autoEvery", "3")
    assert mvc.Repo(repo.root).get_config("pack.autoEvery") == "3"


def test_a_config_without_core_format_is_named(repo):
    """A hand edit that dropped `format = 1` read as "has no readable config (is it an mvc
    repository?)": the file is there and readable; what it lacks is named."""
    from mvc.errors import ConfigError, NotARepository
    path = os.path.join(repo.dir, "config")
    with open(path, "w") as f:
        f.write("[core]\nfsync = true\n")
    with pytest.raises(ConfigError, match="config sets no core.format") as e:
        mvc.Repo(repo.root)
    assert "format = 1" in e.value.hint
    os.remove(path)
    with pytest.raises(NotARepository, match="has no readable config"):
        mvc.Repo(repo.root)


def test_short_grace_gc_waits_for_writers_and_default_gc_does_not(repo, monkeypatch):
    from mvc import files
    monkeypatch.setattr(files, "LOCK_NOTICE_AFTER_S", 0.0)  # (a wait is said after 2 s; this one is shorter)
    import threading
    repo.commit({"core": sd()}, message="one")
    with repo.writing(), pytest.warns(UserWarning, match="waiting for commits, fetches and pushes in progress"):
        fresh = repo.store.put(b"written, not referenced yet")
        quick = threading.Thread(target=repo.gc)  # default grace: the young object is safe anyway
        quick.start()
        quick.join(timeout=30)
        assert not quick.is_alive() and repo.store.has(fresh)
        eager = threading.Thread(target=lambda: repo.gc(grace_s=0))
        eager.start()
        eager.join(timeout=0.5)
        assert eager.is_alive() and repo.store.has(fresh)  # waits (and says so) while the writer is at work
    eager.join(timeout=30)
    assert not eager.is_alive() and not repo.store.has(fresh)  # then collects what nothing names


def _git(work, *args):
    import subprocess
    return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True, text=True)


def _git_repo_with_one_commit(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    repo = mvc.Repo.init(work)
    repo.commit({"core": sd()}, message="one")
    return work, repo


def test_a_failed_commit_inside_git_leaves_head_alone(tmp_path):
    work, repo = _git_repo_with_one_commit(tmp_path)
    repo.create_branch("feature")
    _git(work, "checkout", "-q", "-b", "feature/x")  # fine in git (no git branch 'feature')
    before = set(repo.store.ids())
    with pytest.raises(BadName, match="conflicts with existing refs/heads/feature"):
        repo.commit({"core": sd(1)}, message="two")
    assert repo.head_branch == "main" and len(repo.log()) == 1
    assert set(repo.store.ids()) == before  # (refused before its objects were written: h85)


def test_a_git_branch_mvc_cannot_use_warns_and_commits_to_the_current_branch(tmp_path):
    work, repo = _git_repo_with_one_commit(tmp_path)
    _git(work, "checkout", "-q", "-b", "abcdef12")  # looks like an object id to mvc
    with pytest.warns(UserWarning, match="'abcdef12' cannot be an mvc branch.*current mvc branch main"):
        cid = repo.commit({"core": sd(1)}, message="two")
    assert repo.branches() == {"main": cid}


def test_a_name_in_several_files_is_qualified_in_each_so_keys_never_move(repo, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"w": torch.ones(4), "b": torch.zeros(2)}, str(d / "y.safetensors"))
    first = repo.commit({"model": str(d)}, message="one file")
    assert sorted(repo.tree(first, "model")["tensors"]) == ["b", "w"]
    save_file({"w": torch.ones(7)}, str(d / "a.safetensors"))
    second = repo.commit({"model": str(d)}, message="another file with a w")
    tree = repo.tree(second, "model")
    assert sorted(tree["tensors"]) == ["a.safetensors:w", "b", "y.safetensors:w"]
    assert tree["tensors"]["y.safetensors:w"]["id"] == repo.tree(first, "model")["tensors"]["w"]["id"]
    changes = repo.diff(first, second)["components"]["model"]["tensors"]  # (y's w: the same tensor, keyed anew)
    assert changes["y.safetensors:w"] == {"status": "unchanged", "was": "w", "note": "was w"}
    assert changes["b"]["status"] == "unchanged" and changes["a.safetensors:w"]["status"] == "added"
    assert "w" not in changes


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "x/\x7f"])
def test_control_characters_in_names_are_refused(repo, name):
    with pytest.raises(BadName, match="control characters"):
        repo.commit({name: sd()}, message="x")
    with pytest.raises(BadName):
        repo.create_branch(name.replace("/", "-"))


def test_random_bytes_and_nested_tensors_as_pt_are_refused(repo, tmp_path):
    (tmp_path / "hw.pt").write_bytes(b"hello world")
    with pytest.raises(BadInput, match="refusing to import"):
        repo.commit({"x": str(tmp_path / "hw.pt")}, message="x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls nested tensors a prototype
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    torch.save({"n": nested}, tmp_path / "nested.pt")
    with pytest.raises(BadInput, match="nested"):
        repo.commit({"x": str(tmp_path / "nested.pt")}, message="x")
    assert repo.head() is None


def test_tensors_of_dtypes_safetensors_lacks_are_refused_with_a_way_to_store_them(repo):
    """A quantised or complex128 tensor was refused with no hint."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch calls its quantised tensors deprecated)
        q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    with pytest.raises(BadInput, match="torch.qint8 cannot be stored") as e:
        repo.commit({"m": {"q": q}}, message="q")
    assert "int_repr()" in e.value.hint and "dequantize()" in e.value.hint
    with pytest.raises(BadInput, match="torch.complex128 cannot be stored") as e:
        repo.commit({"m": {"c": torch.randn(3, dtype=torch.complex128)}}, message="c")
    assert "torch.view_as_real(t)" in e.value.hint
    assert repo.head() is None


def test_tag_delete_prints_json(in_repo):
    from click.testing import CliRunner
    from mvc.cli import cli
    cid = in_repo.commit({"core": sd()}, message="one")
    in_repo.tag("v1")
    r = CliRunner().invoke(cli, ["tag", "-d", "v1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"deleted": "v1", "was": cid}
    r = CliRunner().invoke(cli, ["tag", "-d", "v1"])
    assert r.exit_code == 3 and "no tag 'v1'" in r.stderr


def test_a_name_that_is_both_branch_and_tag_warns_and_tags_prefix_picks_the_tag(repo):
    first = repo.commit({"core": sd()}, message="one")
    second = repo.commit({"core": sd(1)}, message="two")
    repo.create_branch("amb", first)
    repo.tag("amb", second)
    with pytest.warns(UserWarning, match="both a branch and a tag"):
        assert repo.resolve("amb") == first
    assert repo.resolve("tags/amb") == second and repo.resolve("refs/heads/amb") == first


def test_two_threads_committing_through_one_repo_object(repo):
    import threading
    errors = []

    def work(branch, seed):
        g = torch.Generator().manual_seed(seed)
        try:
            for i in range(6):
                repo.commit({"c": {f"w{j}": torch.randn(32, 64, generator=g) for j in range(4)}},
                            message=f"{branch}{i}", branch=branch)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(b, s)) for b, s in (("a", 1), ("b", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = mvc.Repo(repo.root)
    assert len(fresh.log("a")) == 6 and len(fresh.log("b")) == 6 and fresh.fsck()["ok"]
    assert not os.listdir(os.path.join(repo.dir, "objects", "tmp"))


def test_threads_committing_to_one_branch_take_turns_and_none_is_refused(repo, monkeypatch):
    """Each thread read the head, wrote its commit and swapped the ref, retrying on a moved head
    20 times: among 16 threads some lost every retry (RefConflict, probe h7). They take turns now."""
    import threading
    from mvc.refs import RefStore
    real, inside, most, errors = RefStore.update, [0], [0], []
    guard = threading.Lock()

    def update(self, *a, **kw):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.002)  # (a slow disk: the window another thread's swap would fall into)
            return real(self, *a, **kw)
        finally:
            with guard:
                inside[0] -= 1
    monkeypatch.setattr(RefStore, "update", update)

    def work(k):
        try:
            for i in range(5):
                repo.commit({f"c{k}": {"w": torch.full((4,), float(i))}}, message=f"{k}.{i}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and most[0] == 1
    log = repo.log()
    assert len(log) == 40 and len(log[0]["components"]) == 8  # every commit, each on the one before


@pytest.mark.parametrize("a,b,expect", [
    ([float("nan"), 1.0, 2.0, 3.0], [float("nan"), 1.0, 2.0, 4.0], {"max_abs_delta": 1.0, "frac_changed": 0.25}),
    ([float("inf"), 2.0], [float("inf"), 3.0], {"max_abs_delta": 1.0, "frac_changed": 0.5}),
    ([1.0, 2.0], [float("inf"), 2.0], {"max_abs_delta": None, "frac_changed": 0.5}),
    ([0.0, 1.0], [-0.0, 1.0], {"max_abs_delta": 0.0, "frac_changed": 0.5}),
])
def test_diff_statistics_are_bitwise_and_json_safe(repo, a, b, expect):
    c1 = repo.commit({"c": {"t": torch.tensor(a)}}, message="a")
    c2 = repo.commit({"c": {"t": torch.tensor(b)}}, message="b")
    change = repo.diff(c1, c2)["components"]["c"]["tensors"]["t"]
    assert {k: change[k] for k in expect} == expect
    json.dumps(repo.diff(c1, c2), allow_nan=False)  # what mvc diff --json prints


def test_diff_of_large_integers_is_exact(repo):
    c1 = repo.commit({"c": {"t": torch.tensor([2**60], dtype=torch.int64)}}, message="a")
    c2 = repo.commit({"c": {"t": torch.tensor([2**60 + 1], dtype=torch.int64)}}, message="b")
    assert repo.diff(c1, c2)["components"]["c"]["tensors"]["t"]["max_abs_delta"] == 1.0


def test_api_mistakes_are_mvc_errors_or_accepted_sensibly(repo, tmp_path):
    import numpy as np
    c = repo.commit({"c": {"w": torch.ones(2)}}, message="m",
                    metrics={"loss": torch.tensor(1.5), "acc": np.float32(0.5)})  # .item() forgotten
    assert repo.read_commit(c)["metrics"] == {"loss": 1.5, "acc": 0.5}
    for bad, match in ((dict(message=123), "not a string"), (dict(message="x", metrics={"t": torch.ones(2)}),
                                                             "a Tensor of 2 elements is no metric")):
        with pytest.raises(BadInput, match=match):
            repo.commit({"c": {"w": torch.zeros(2)}}, **bad)
    with pytest.raises(BadName, match="is a int, not a string"):
        repo.commit({1: {"w": torch.zeros(2)}}, message="x")
    with pytest.raises(BadInput, match="key 1 is a int"):
        repo.commit({"c": {1: torch.zeros(2)}}, message="x")
    (tmp_path / "afile").write_text("x")
    for path in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(BadInput, match="is a file"):
            mvc.Repo.init(path)
    assert len(repo.log()) == 1


def test_load_dtype_casts_floats_only_and_keys_must_be_a_list(repo):
    c = repo.commit({"c": {"ids": torch.tensor([2049, 70000]), "mask": torch.tensor([True, False]),
                           "f": torch.ones(2)}}, message="m")
    got = repo.load(c, "c", dtype=torch.float16)
    assert (got["f"].dtype, got["ids"].dtype, got["mask"].dtype) == (torch.float16, torch.int64, torch.bool)
    assert got["ids"].tolist() == [2049, 70000]
    with pytest.raises(BadInput, match="pass a list"):
        repo.load(c, "c", keys="ids")


def test_a_strided_single_element_view_commits(repo):
    x = torch.randn(1, dtype=torch.cfloat, generator=torch.Generator().manual_seed(0)).conj().imag
    c = repo.commit({"c": {"w": x}}, message="view")
    assert torch.equal(repo.load(c, "c")["w"], x)


def test_commit_to_a_branch_another_writer_holds_writes_nothing(repo, monkeypatch):
    import functools

    from mvc import refs as refs_module
    from mvc.errors import LockHeld
    from mvc.files import LockFile
    repo.commit({"core": sd()}, message="one")
    lock = os.path.join(repo.dir, "refs", "heads", "main.lock")
    monkeypatch.setattr(refs_module, "LockFile", functools.partial(LockFile, timeout=0.2))
    with LockFile(lock):  # held by a live process (this one)
        before = snapshot(repo)
        with pytest.raises(LockHeld, match="refs/heads/main"):
            repo.commit({"core": sd(1)}, message="two")
        assert snapshot(repo) == before  # before: the blob, tree and commit were written first


def test_a_non_text_git_file_above_the_repository_does_not_break_commits(tmp_path):
    (tmp_path / ".git").write_bytes(b"\xff\xfe\x00 not a gitdir line")
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"core": sd()}, message="one")  # before: UnicodeDecodeError, exit 4
    assert repo.read_commit(cid)["provenance"] == {}


def test_a_saved_module_is_refused_naming_what_it_holds(repo, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(BadInput, match=r"whole model object \(torch\.nn\.modules\.linear\.Linear\)") as e:
        repo.commit({"core": str(path)}, message="x")
    assert "(1)" not in e.value.message  # before: torch's "(1) In PyTorch 2.6, we changed..." line


def test_a_linked_file_in_a_folder_says_how_to_commit_it(tmp_path):
    """A Hugging Face hub snapshot is links into ../../blobs: the refusal named no way forward."""
    import mvc
    from mvc.errors import BadInput
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_text("{}")
    snap = tmp_path / "snapshots" / "main"
    snap.mkdir(parents=True)
    os.symlink("../../blobs/abc", snap / "config.json")
    repo = mvc.Repo.init(tmp_path / "r")
    with pytest.raises(BadInput) as e:
        repo.commit({"model": str(snap)}, message="x")
    assert "config.json is a symbolic link" in e.value.message and "cp -rL" in e.value.hint


def test_a_folder_replaced_by_a_link_during_a_directory_commit_is_not_read_through(tmp_path, monkeypatch):
    """The folder is listed first and its files read afterwards, by path: a folder swapped meanwhile
    for a link to elsewhere was read through (probe h5: outside bytes committed, exit 0)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"SECRET from outside the committed folder\n")
    d = tmp_path / "model"
    (d / "zzz").mkdir(parents=True)
    (d / "aaa.bin").write_bytes(b"stored first")
    (d / "zzz" / "passwd").write_bytes(b"harmless\n")
    repo = mvc.Repo.init(tmp_path / "r")
    stored = components.Ingest.raw_file

    def raw_file(self, relpath, path, *args):
        if relpath == "aaa.bin":  # after the listing, before zzz/passwd is read
            os.rename(d / "zzz", tmp_path / "zzz.moved")
            os.symlink(outside, d / "zzz")
        return stored(self, relpath, path, *args)

    monkeypatch.setattr(components.Ingest, "raw_file", raw_file)
    with pytest.raises(BadInput, match="zzz/passwd was replaced while it was being committed"):
        repo.commit({"model": str(d)}, message="x")
    assert repo.head() is None


@pytest.mark.parametrize("folder", [".Git", ".MVC", ".git.", ".mvc "])
def test_a_folder_a_checkout_would_write_as_git_is_refused_not_dropped(tmp_path, folder):
    """Only .git and .mvc themselves are skipped; their case and trailing-dot twins are other folders
    here, whose files were dropped without a word (probe h5). Refused, as files so named are."""
    d = tmp_path / "model"
    (d / folder).mkdir(parents=True)
    (d / folder / "weights.bin").write_bytes(b"data")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (d / "ok.bin").write_bytes(b"kept")
    repo = mvc.Repo.init(tmp_path / "r")
    with pytest.raises(BadInput, match=f"a folder named {folder!r} cannot be committed"):
        repo.commit({"model": str(d)}, message="x")
    (d / folder / "weights.bin").unlink()
    (d / folder).rmdir()
    repo.commit({"model": str(d)}, message="x")  # .git itself: skipped, as DESIGN.md says
    assert set(repo.tree("HEAD", "model")["files"]) == {"ok.bin"}


def test_a_section_of_mvcs_own_in_another_case_is_named_not_silently_ignored(repo):
    """`[Core]` or `[Remote "x"]` written by hand is another INI section, which mvc never reads:
    its keys (fsync = false, a remote's url) were ignored without a word."""
    with open(os.path.join(repo.dir, "config"), "a") as f:
        f.write('\n[Core]\nfsync = false\n\n[Remote "x"]\nurl = /somewhere\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mvc.Repo(repo.root)
    said = [str(w.message) for w in caught]
    assert any("[Core] is not read (mvc reads [core])" in m for m in said), said
    assert any('[Remote "x"] is not read (mvc reads [remote "x"])' in m for m in said), said
    with open(os.path.join(repo.dir, "config"), "w") as f:
        f.write('[core]\nformat = 1\n[user-notes]\nX = 1\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mvc.Repo(repo.root).set_config("pack.level", "3")  # (sections mvc writes, and others: no warning)
        mvc.Repo(repo.root)


def test_a_nesting_refusal_names_the_names_that_nest_as_written():
    """Beside `A/x` and `a/x` (an older mvc's), a new `a` was refused as nesting `A/x` only where
    case is ignored, though it nests `a/x` as written; NFC beside NFD was called a case clash (h62)."""
    from mvc.objects import check_no_nesting
    with pytest.raises(BadName, match="components 'a' and 'a/x' nest: 'a/x' would be checked out inside 'a'"):
        check_no_nesting(["A/x", "a/x", "a"], new={"a"}, quiet=True)
    with pytest.raises(BadName, match="nest where case or Unicode form is ignored: a checkout on macOS"):
        check_no_nesting(["caf\u00e9", "cafe\u0301/x"], new={"cafe\u0301/x"})

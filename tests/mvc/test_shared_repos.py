"""Repositories other users share or may only read: folders and lock files we cannot read, modes
left to the umask, checkouts that fail half way, lazy clones read without write access. Tests run
as root in CI (which reads everything), so a denied read is simulated where it must be."""
import errno
import os
import shutil
import stat
import time
import warnings

import pytest
import torch

import mvc
import mvc.components
import mvc.files
import mvc.repo
import mvc.transport
from damage import at_path
from mvc.errors import LockHeld, MvcError
from mvc.files import LockFile
from mvc.objects import tree_blob_ids


def _sd(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(16, 16, generator=g), "b": torch.randn(16, generator=g)}


def _deny_listing(monkeypatch, *folders):
    """os.walk (os.scandir underneath) cannot list these folders, as for another user's 0700 folder."""
    real = os.scandir
    denied = {os.path.realpath(f) for f in folders}

    def scandir(path="."):
        if os.path.realpath(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


def test_gc_never_deletes_the_commits_of_a_branch_in_a_folder_it_cannot_list(tmp_path, monkeypatch):
    """os.walk skipped the folder in silence: gc deleted alice/exp's commit, tree and blobs."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd(0)}, message="main")
    kept = repo.commit({"model": _sd(1)}, message="alice's", branch="alice/exp")
    _deny_listing(monkeypatch, os.path.join(repo.dir, "refs", "heads", "alice"),
                  os.path.join(repo.dir, "logs", "refs", "heads", "alice"))
    with pytest.raises(PermissionError):
        repo.gc(grace_s=0)
    monkeypatch.undo()
    assert mvc.Repo(repo.root).resolve("alice/exp") == kept
    assert mvc.Repo(repo.root).fsck()["ok"]
    assert torch.equal(mvc.Repo(repo.root).load("alice/exp", "model")["w"], _sd(1)["w"])


def test_an_unreadable_reflog_folder_stops_gc_too(tmp_path, monkeypatch):
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd(0)}, message="one")
    old = repo.commit({"model": _sd(1)}, message="two")
    repo.rollback()  # `old` is kept by the reflog only
    _deny_listing(monkeypatch, os.path.join(repo.dir, "logs", "refs", "heads"))
    with pytest.raises(PermissionError):
        repo.gc(grace_s=0)
    monkeypatch.undo()
    assert mvc.Repo(repo.root).read_commit(old)["message"] == "two"


def test_files_a_group_shares_take_their_mode_from_the_umask(tmp_path):
    """writers.lock and reflogs were 0644 whatever the umask: in a group-shared repository (umask
    002) the second user could not commit, roll back or delete a branch."""
    old = os.umask(0o002)
    try:
        repo = mvc.Repo.init(tmp_path / "r")
        repo.commit({"model": _sd(0)}, message="one")
        repo.create_branch("feat")
    finally:
        os.umask(old)
    for rel in ("writers.lock", "writers-gate.lock", "logs/refs/heads/main", "logs/refs/heads/feat"):
        mode = stat.S_IMODE(os.stat(os.path.join(repo.dir, rel)).st_mode)
        assert mode == 0o664, (rel, oct(mode))


def test_pack_files_take_their_read_permissions_from_the_umask(tmp_path):
    """Packs and their indexes were 0444 whatever the umask (loose objects 0400 under umask 077):
    world-readable under umask 027."""
    from mvc.pack_write import Packer
    old = os.umask(0o077)
    try:
        repo = mvc.Repo.init(tmp_path / "r")
        repo.commit({"model": _sd(0)}, message="one")
        with Packer(mvc.Repo(repo.root), full=True) as packer:
            packer.run()
    finally:
        os.umask(old)
    packs = [n for n in os.listdir(os.path.join(repo.dir, "objects", "pack")) if n.endswith((".pack", ".idx"))]
    assert len(packs) == 2
    assert {stat.S_IMODE(os.stat(os.path.join(repo.dir, "objects", "pack", n)).st_mode) for n in packs} == {0o400}


def test_an_object_this_user_may_not_read_is_not_blamed_on_the_output_path(tmp_path, monkeypatch):
    """A blob another member stored with umask 077 made checkout and export say 'cannot write
    OUTPUT: permission denied (choose another output path)' of a writable output folder."""
    from mvc.store import LooseStore
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd(0)}, message="one")
    blob = tree_blob_ids(repo.tree("HEAD", "model"))[0]
    real = {name: getattr(LooseStore, name) for name in ("view", "pieces")}

    def denied(name):
        def read(self, oid, *a, **k):
            if oid == blob:
                raise PermissionError(errno.EACCES, "Permission denied", self.path(oid))
            return real[name](self, oid, *a, **k)
        return read
    for name in real:
        monkeypatch.setattr(LooseStore, name, denied(name))
    for write in (lambda: repo.checkout("HEAD", str(tmp_path / "out")),
                  lambda: repo.export("HEAD", "model", str(tmp_path / "m.safetensors"))):
        with pytest.raises(PermissionError) as e:
            write()
        assert e.value.filename == repo.loose.path(blob)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.safetensors").exists()


def test_a_repository_whose_config_this_user_may_not_read_says_so(tmp_path, monkeypatch):
    """Another user's private repository (.mvc 0700, or its config 0600) was answered 'has no
    readable config (is it an mvc repository?)'."""
    import builtins
    import configparser
    repo = mvc.Repo.init(tmp_path / "r")
    config = os.path.join(repo.dir, "config")

    def denied(file, *a, **k):
        if os.fspath(file) == config:
            raise PermissionError(errno.EACCES, "Permission denied", config)
        return builtins.open(file, *a, **k)
    monkeypatch.setattr(configparser, "open", denied, raising=False)
    monkeypatch.setattr(mvc.repo, "open", denied, raising=False)
    with pytest.raises(PermissionError) as e:
        mvc.Repo(repo.root)
    assert e.value.filename == config


def test_a_repository_this_user_may_not_write_is_not_called_bad_input(tmp_path, monkeypatch):
    """Committing a file into another user's repository raised BadInput('<.mvc temp file>:
    permission denied'), as if the input were unreadable; a state dict got the PermissionError."""
    from safetensors.torch import save_file

    from mvc.errors import BadInput
    from mvc.store import LooseStore
    repo = mvc.Repo.init(tmp_path / "r")
    save_file(_sd(1), str(tmp_path / "m.safetensors"))

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(self.tmp, "abc"))
    monkeypatch.setattr(LooseStore, "put", denied)
    with pytest.raises(PermissionError) as e:
        repo.commit({"model": str(tmp_path / "m.safetensors")}, message="x")
    assert not isinstance(e.value, BadInput) and e.value.filename.startswith(repo.loose.tmp)
    monkeypatch.undo()

    def unreadable(path, *a, **k):  # (the input's own refusal still is BadInput)
        if os.fspath(path) == str(tmp_path / "m.safetensors"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return open(path, *a, **k)
    monkeypatch.setattr(mvc.components, "open", unreadable, raising=False)
    with pytest.raises(BadInput, match="m.safetensors: permission denied"):
        mvc.Repo(repo.root).commit({"model": str(tmp_path / "m.safetensors")}, message="x")


def test_a_lock_file_another_user_may_not_let_us_read_is_never_broken_as_ownerless(tmp_path, monkeypatch):
    """An unreadable owner counted as 'no owner': after 5 s the live lock was broken and two
    processes held one ref."""
    path = tmp_path / "refs" / "heads" / "b.lock"
    path.parent.mkdir(parents=True)
    path.write_text('{"pid": 1, "host": "elsewhere"}')
    past = time.time() - 10 * mvc.files.STALE_OWNERLESS_LOCK_S
    os.utime(path, (past, past))
    real_open = open

    def denied(file, *a, **k):
        if os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(file, *a, **k)
    monkeypatch.setattr(mvc.files, "open", denied, raising=False)
    with pytest.raises(LockHeld, match="another user's process"):
        LockFile(str(path), timeout=0.3).acquire()
    assert path.exists()


def _two_component_checkout(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"a": _sd(0), "b": _sd(1)}, message="one")
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "model.safetensors").write_bytes(b"the user's own file")
    (out / "a").mkdir()
    (out / "a" / "model.safetensors").write_bytes(b"another file of the user's")
    return repo, out


def test_a_checkout_that_fails_while_renaming_puts_the_folder_back(tmp_path, monkeypatch):
    """The files renamed before the failure stayed: a folder half old, half new."""
    repo, out = _two_component_checkout(tmp_path)
    (out / "a" / "model.safetensors").unlink()  # a: new file; b: replaces the user's (with --force)
    real = os.replace

    def fails_on_b(src, dst, *a, **k):
        if at_path(dst, k.get("dst_dir_fd")).endswith(os.path.join("b", "model.safetensors")):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", fails_on_b)
    with pytest.raises(MvcError, match=r"cannot write .*b/model\.safetensors"):
        repo.checkout("HEAD", str(out), force=True)
    monkeypatch.undo()
    assert not (out / "a" / "model.safetensors").exists()
    assert (out / "b" / "model.safetensors").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.rglob("*")) == ["a", "b", "model.safetensors"]  # no temp files left


def _fail_the_second_replace(monkeypatch):
    """os.replace fails (EIO) on its second call: a checkout's second file cannot be put in place.
    Returns the real os.replace."""
    real, calls = os.replace, []

    def second_fails(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", second_fails)
    return real


def test_a_checkout_that_fails_after_replacing_a_file_restores_it(tmp_path, monkeypatch):
    repo, out = _two_component_checkout(tmp_path)
    _fail_the_second_replace(monkeypatch)
    with pytest.raises(MvcError):
        repo.checkout("HEAD", str(out), force=True)
    monkeypatch.undo()
    assert (out / "a" / "model.safetensors").read_bytes() == b"another file of the user's"
    assert (out / "b" / "model.safetensors").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.rglob("*")) == ["a", "b", "model.safetensors", "model.safetensors"]


def test_a_file_that_appears_while_a_checkout_writes_is_refused_not_replaced(tmp_path, monkeypatch):
    """Without --force a destination was checked once, before minutes of writing: a file the user
    (or a second checkout into the same folder) put there meanwhile was replaced, its bytes lost."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"a": _sd(0), "b": _sd(1)}, message="one")
    out = tmp_path / "out"
    real, calls = os.link, []

    def user_writes_b_first(src, dst, *a, **k):
        calls.append(dst)
        if at_path(dst, k.get("dst_dir_fd")).endswith(os.path.join("b", "model.safetensors")):
            with open(at_path(dst, k.get("dst_dir_fd")), "wb") as f:
                f.write(b"the user's file, written meanwhile")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "link", user_writes_b_first)
    with pytest.raises(MvcError, match=r"b/model\.safetensors appeared while this checkout was writing") as e:
        repo.checkout("HEAD", str(out))
    monkeypatch.undo()
    assert "--force" in e.value.hint and len(calls) == 2
    assert (out / "b" / "model.safetensors").read_bytes() == b"the user's file, written meanwhile"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["b", "b/model.safetensors"]
    repo.checkout("HEAD", str(tmp_path / "again"))  # (a folder of its own: written as before)
    assert mvc.components.stray_files([str(tmp_path / "again")], []) == sorted(
        str(tmp_path / "again" / c / "model.safetensors") for c in "ab")


def test_a_killed_checkout_s_temp_files_are_not_committed_with_its_folder(tmp_path):
    """A checkout killed (SIGKILL) left whole temp copies and backup links in the output, which a
    commit of that folder stored as the model's own files, and every later checkout wrote back."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"m": _sd(0)}, message="one")
    repo.checkout("HEAD", str(tmp_path / "out"))
    folder = tmp_path / "out" / "m"
    (folder / ".0123456789ab.mvc-tmp").write_bytes(b"half a file")
    (folder / ".not-ours.mvc-tmp").write_bytes(b"a user's file")  # (not a name mvc gives)
    with pytest.warns(UserWarning, match=r"skipped .*\.0123456789ab\.mvc-tmp: a temp file a killed mvc checkout"):
        cid = repo.commit({"m": str(folder)}, message="from the folder")
    assert sorted(repo.tree(cid, "m")["files"]) == [".not-ours.mvc-tmp", "model.safetensors"]


@pytest.mark.parametrize("suffix", ["mvc-bak", "mvc-old"])
def test_a_folder_holding_a_replaced_file_s_backup_is_not_committed(tmp_path, suffix):
    """A forced checkout killed while its files went into place leaves a folder mixing the shards of
    two revisions, and the backups of the files it replaced: a commit of that folder skipped the
    backups and stored the mixture as a model (h76)."""
    repo = mvc.Repo.init(tmp_path / "r")
    first = repo.commit({"m": _sd(0)}, message="one")
    repo.checkout("HEAD", str(tmp_path / "out"))
    folder = tmp_path / "out" / "m"
    (folder / f".ba9876543210.{suffix}").write_bytes(b"the file it replaced")
    with pytest.raises(mvc.errors.BadInput, match=r"mvc-(bak|old): the backup of a file a checkout was replacing; .* the "
                                           r"folder may mix the files of two revisions"):
        repo.commit({"m": str(folder)}, message="from the folder")
    assert repo.resolve("HEAD") == first


def test_a_checkout_names_the_temp_files_a_killed_one_left_in_its_folders(tmp_path):
    """A killed checkout's full-size temp copies stayed invisible (dot names), for an hour or for good,
    and the next checkout there said only "wrote N files"."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"m": _sd(0)}, message="one")
    folder = tmp_path / "out" / "m"
    folder.mkdir(parents=True)
    (folder / ".0123456789ab.mvc-tmp").write_bytes(b"x" * 1000)  # (young: a killed or a running checkout's)
    (folder / ".ba9876543210.mvc-old").write_bytes(b"kept aside")  # (a replaced file's only copy: not named)
    with pytest.warns(UserWarning, match=r"1 temp file\(s\) of another checkout or export \(1,000 bytes\) are under "
                                         r".*\.0123456789ab\.mvc-tmp: a killed one's, or one running now; "
                                         r"delete them when no mvc checkout or export writes there"):
        repo.checkout("HEAD", str(tmp_path / "out"))
    old = time.time() - 7200
    os.utime(folder / ".0123456789ab.mvc-tmp", (old, old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repo.checkout("HEAD", str(tmp_path / "out"), force=True)  # (removes it: over an hour old)
    assert sorted(os.listdir(folder)) == [".ba9876543210.mvc-old", "model.safetensors"]


def test_without_hard_links_a_file_that_appeared_is_still_refused(tmp_path, monkeypatch):
    """Where the file system makes no hard links the new file is renamed into place: it replaced a
    file that appeared meanwhile (no backup link either: its bytes were gone)."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"a": _sd(0)}, message="one")
    dest = tmp_path / "out" / "a" / "model.safetensors"

    def no_links_and_a_user(src, dst, *a, **k):
        with open(at_path(dst, k.get("dst_dir_fd")), "wb") as f:
            f.write(b"the user's file")
        raise PermissionError(errno.EPERM, "Operation not permitted", dst)
    monkeypatch.setattr(os, "link", no_links_and_a_user)
    with pytest.raises(MvcError, match="appeared while this checkout was writing"):
        repo.checkout("HEAD", str(tmp_path / "out"))
    assert dest.read_bytes() == b"the user's file"
    dest.unlink()
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no links")))
    repo.checkout("HEAD", str(tmp_path / "out"))  # no links, nothing in the way: renamed into place
    assert torch.equal(mvc.Repo(tmp_path / "r").load("HEAD", "a")["w"], _sd(0)["w"]) and dest.stat().st_size > 0


@pytest.mark.parametrize("when", ["renaming", "removing backups"])
def test_ctrl_c_amid_a_checkout_s_renames_leaves_the_whole_new_checkout(tmp_path, monkeypatch, when):
    """A Ctrl-C while the backups of replaced files were removed put back only those whose backup
    was still there: a folder half of one revision, half of the other, said to be interrupted."""
    import signal
    repo, out = _two_component_checkout(tmp_path)
    repo.commit({"a": _sd(2), "b": _sd(3)}, message="two")
    fresh = tmp_path / "fresh"
    repo.checkout("HEAD", str(fresh))
    name, real = ("replace", os.replace) if when == "renaming" else ("unlink", os.unlink)

    def ctrl_c_once(path, *a, **k):
        real(path, *a, **k)
        if (when == "renaming" or str(path).endswith(".mvc-bak")) and not hits:
            hits.append(path)
            signal.raise_signal(signal.SIGINT)
    hits = []
    monkeypatch.setattr(os, name, ctrl_c_once)
    with pytest.raises(KeyboardInterrupt) as e:
        repo.checkout("HEAD", str(out), force=True)
    monkeypatch.undo()
    assert hits and e.value.landed == "writing all 2 files" and "complete" in e.value.hint  # (not "interrupted")
    for c in "ab":  # the rename and clean-up steps ran whole, then the interrupt came
        assert (out / c / "model.safetensors").read_bytes() == (fresh / c / "model.safetensors").read_bytes()
    assert sorted(p.name for p in out.rglob("*")) == ["a", "b", "model.safetensors", "model.safetensors"]


def test_a_lazy_clone_this_user_may_only_read_still_loads(tmp_path, monkeypatch):
    """Caching a fetched blob failed with EACCES, and the read failed with it."""
    from mvc import remote as rm
    src = mvc.Repo.init(tmp_path / "src")
    src.set_config("remote.origin.url", str(tmp_path / "remote"))
    src.commit({"core": _sd(3)}, message="one")
    rm.push(src)
    lazy, _ = rm.clone(str(tmp_path / "remote"), str(tmp_path / "lazy"), lazy=True)
    def denied(tmp_dir, *_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", tmp_dir)
    monkeypatch.setattr(mvc.transport, "new_object_file", denied)
    state = lazy.load("HEAD", "core")
    assert torch.equal(state["w"], _sd(3)["w"])
    assert not any(lazy.loose.has(t["id"]) for t in lazy.tree("HEAD", "core")["tensors"].values())

    def broken(tmp_dir, *_a, **_k):
        raise OSError(errno.EIO, "Input/output error", tmp_dir)
    monkeypatch.setattr(mvc.transport, "new_object_file", broken)
    with pytest.raises(OSError):  # other failures still surface
        lazy.load("HEAD", "core")


def test_a_concurrent_checkout_never_sweeps_away_a_running_one_s_backup(tmp_path):
    """The backup link of a file older than an hour looked like a stale temp file (same name
    pattern, the old file's mtime): another checkout into the folder deleted it, and a failure of
    the first one could then not put the user's file back."""
    from mvc.components import _backup_beside, _remove_stale_temps
    old = tmp_path / "model.safetensors"
    old.write_bytes(b"the user's file")
    past = time.time() - 7200
    os.utime(old, (past, past))
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        backup = tmp_path / _backup_beside(old.name, folder)[0]
        _remove_stale_temps(folder)
    finally:
        os.close(folder)
    assert backup.read_bytes() == b"the user's file"


def test_du_reports_on_a_repository_with_a_damaged_ref(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd()}, message="one")
    with open(os.path.join(repo.dir, "refs", "heads", "broken"), "w") as f:
        f.write("not an id\n")
    r = mvc.Repo(repo.root).du()
    assert r["commits"] == 1 and r["unreachable_objects"] == 0


def test_readers_skip_a_ref_folder_they_cannot_list_with_a_warning(tmp_path, monkeypatch):
    """Making gc strict made every `mvc log` and `mvc branch` fail in a shared repository where one
    user's branch folder is private."""
    repo = mvc.Repo.init(tmp_path / "r")
    main = repo.commit({"model": _sd(0)}, message="main")
    repo.commit({"model": _sd(1)}, message="alice's", branch="alice/exp")
    _deny_listing(monkeypatch, os.path.join(repo.dir, "refs", "heads", "alice"))
    fresh = mvc.Repo(repo.root)
    with pytest.warns(UserWarning, match=r"skipped .*alice: cannot read it"):
        assert fresh.branches() == {"main": main}
    assert [c["id"] for c in fresh.log()] == [main]
    with pytest.raises(PermissionError):  # what gc keeps must count every ref
        fresh.gc(grace_s=0)


def test_the_writers_lock_is_opened_for_writing_where_it_can_be(tmp_path, monkeypatch):
    """NFS refuses an exclusive flock on a read-only descriptor (EBADF): opened read-only, a
    short-grace gc ran unlocked beside commits, and a default-grace gc deleted no garbage."""
    import fcntl
    real = fcntl.flock

    def nfs_flock(fd, op):
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, op)
    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd(0)}, message="one")
    garbage = repo.store.put(os.urandom(5000))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "cannot lock ...: commits are not kept from racing" would fail it
        repo.gc(grace_s=0)
    assert not repo.loose.has(garbage)


def test_a_lock_file_that_cannot_be_made_reports_why(tmp_path, monkeypatch):
    """In a repository the user may not write, with no writers.lock yet, the read-only fallback
    found no file: 'unexpected FileNotFoundError ... a bug in mvc' (exit 4) instead of EACCES."""
    from mvc.files import _open_lock_file
    real = os.open

    def denied(path, flags, *a):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, flags, *a)
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError):
        _open_lock_file(str(tmp_path / "writers.lock"))


@pytest.mark.parametrize("when", ["while writing", "before its folder is opened"])
def test_a_folder_replaced_by_a_link_during_a_checkout_is_never_written_through(tmp_path, monkeypatch, when):
    """The links on the way were checked once, before writing; then files were made by path: a
    folder swapped meanwhile for a link to elsewhere got the checkout's file (probe h5). Folders
    are now opened without following links and written relative to their descriptors."""
    from mvc import components, output_folders
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.ones(3)}, "model2": {"w": torch.zeros(3)}}, message="one")
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "model2").mkdir(parents=True)
    outside.mkdir()

    def swap():
        os.rename(out / "model2", tmp_path / "moved")
        os.symlink(outside, out / "model2")

    if when == "while writing":
        real = components._temp_copy

        def temp_copy(store, tree, relpath, dest, *a):
            if "model2" not in dest and not (out / "model2").is_symlink():
                swap()
            return real(store, tree, relpath, dest, *a)
        monkeypatch.setattr(components, "_temp_copy", temp_copy)
        repo.checkout("HEAD", str(out))  # (written into the folder it opened, wherever that went)
        assert (tmp_path / "moved" / "model.safetensors").exists()
    else:
        real = output_folders.OutputFolders.open

        def open_(self, folder, root):
            if folder.endswith("model2") and not (out / "model2").is_symlink():
                swap()
            return real(self, folder, root)
        monkeypatch.setattr(output_folders.OutputFolders, "open", open_)
        with pytest.raises(MvcError, match=r"model2 is a symbolic link; mvc does not write through"):
            repo.checkout("HEAD", str(out))
        assert sorted(os.listdir(out)) == ["model2"]  # (model/ made for the checkout, removed again)
    assert os.listdir(outside) == []


def test_a_checkout_of_many_folders_keeps_few_descriptors_open(tmp_path, monkeypatch):
    """Every output folder was held open to the end: a model of a few hundred folders failed with
    'Too many open files' (review). A few are kept; one opened again must be the same folder."""
    from mvc import output_folders
    monkeypatch.setattr(output_folders, "OPEN_MAX", 3)
    src = tmp_path / "model"
    for i in range(12):
        (src / f"layer{i}" / "sub").mkdir(parents=True)
        (src / f"layer{i}" / "sub" / "w.bin").write_bytes(bytes([i]) * 10)
        (src / f"layer{i}" / "cfg.json").write_text(str(i))
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"m": str(src)}, message="many folders")
    before = len(os.listdir("/proc/self/fd"))
    repo.checkout("HEAD", str(tmp_path / "out"))
    assert len(os.listdir("/proc/self/fd")) == before  # (none left open)
    for i in range(12):
        assert (tmp_path / "out" / "m" / f"layer{i}" / "sub" / "w.bin").read_bytes() == bytes([i]) * 10
    real = output_folders.OutputFolders._open_below

    def swapped(self, parent, folder):  # the second time layer0 is opened, it is another folder
        if folder.endswith("layer0") and folder in self._ids:
            os.rename(folder, folder + ".moved")
            os.mkdir(folder)
        return real(self, parent, folder)
    monkeypatch.setattr(output_folders.OutputFolders, "_open_below", swapped)
    with pytest.raises(MvcError, match="layer0 was replaced by another folder while the checkout wrote"):
        repo.checkout("HEAD", str(tmp_path / "out2"))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop the override of file modes")
def test_an_export_into_a_folder_that_may_be_written_but_not_listed(tmp_path):
    """A drop box (mode 0333): files are made by name, which needs write and search only; opening
    the folder to write relative to it needed read permission too (review)."""
    import subprocess
    import sys
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd(0)}, message="one")
    box = tmp_path / "box"
    box.mkdir(mode=0o333)
    os.chmod(box, 0o333)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    r = subprocess.run(drop + [sys.executable, "-m", "mvc", "export", "HEAD", "model", "-o", str(box / "m.safetensors")],
                       cwd=repo.root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    os.chmod(box, 0o755)
    assert torch.equal(mvc.Repo(repo.root).load("HEAD", "model")["w"], _sd(0)["w"])
    assert (box / "m.safetensors").stat().st_size > 0


def test_a_signal_handled_just_after_a_temp_file_is_written_leaves_nothing(tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM arriving while a temp file was written is handled at the next bytecode,
    just after _temp_copy returned and before its name was recorded for the cleanup: one hidden
    .mvc-tmp file (and its folder) stayed in the output (probe h8: 6 of 10 interrupted checkouts)."""
    from mvc import components
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"a": _sd(0), "b": _sd(1)}, message="one")
    real, calls = components._temp_copy, []

    def temp_copy(*a, **kw):
        real(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # (the signal, handled as the write returns)
    monkeypatch.setattr(components, "_temp_copy", temp_copy)
    with pytest.raises(KeyboardInterrupt):
        repo.checkout("HEAD", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # no temp file, no folder made for it


def test_a_forced_checkout_without_hard_links_that_fails_puts_the_old_files_back(tmp_path, monkeypatch):
    """Where the file system makes no hard links (vfat, exFAT) a replaced file had no backup: a
    forced checkout failing at its second rename left the folder half old, half new (probe h11).
    The old file is renamed aside instead, and put back."""
    repo = mvc.Repo.init(tmp_path / "r")
    c1 = repo.commit({"a": _sd(0), "b": _sd(1)}, message="one")
    c2 = repo.commit({"a": _sd(2), "b": _sd(3)}, message="two")
    out = tmp_path / "out"
    repo.checkout(c1, str(out))
    before = {n: (out / n / "model.safetensors").read_bytes() for n in "ab"}
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no links")))
    real = _fail_the_second_replace(monkeypatch)
    with pytest.raises(MvcError):
        repo.checkout(c2, str(out), force=True)
    monkeypatch.setattr(os, "replace", real)
    assert {n: (out / n / "model.safetensors").read_bytes() for n in "ab"} == before
    assert sorted(p.name for p in out.rglob("*")) == ["a", "b", "model.safetensors", "model.safetensors"]
    repo.checkout(c2, str(out), force=True)  # (and with no failure: replaced, no backup left)
    assert sorted(p.name for p in out.rglob("*")) == ["a", "b", "model.safetensors", "model.safetensors"]
    assert torch.equal(mvc.Repo(repo.root).load(c2, "a")["w"], _sd(2)["w"])


def test_checkout_output_paths_empty_bytes_and_a_working_directory_that_changes(tmp_path, monkeypatch):
    """'' skipped the check that keeps a checkout out of .mvc; bytes paths were a bare TypeError;
    a relative path made absolute at each use split a checkout whose callback changed the working
    directory (temp files in one place, renames in another) (probe h11)."""
    from mvc.errors import BadInput
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"a": _sd(0), "b": _sd(1)}, message="one")
    monkeypatch.chdir(os.path.join(repo.dir, "refs"))
    before = sorted(os.listdir("."))
    with pytest.raises(BadInput, match="the output folder is an empty path"):
        repo.checkout("HEAD", "")
    assert sorted(os.listdir(".")) == before and "a" not in before
    monkeypatch.chdir(tmp_path)
    repo.checkout("HEAD", os.fsencode("bytes-out"))
    repo.export("HEAD", "a", os.fsencode(str(tmp_path / "a.safetensors")))
    assert (tmp_path / "bytes-out" / "b" / "model.safetensors").exists() and (tmp_path / "a.safetensors").exists()
    with pytest.raises(BadInput, match="the output path is a int, not a path"):
        repo.checkout("HEAD", 5)
    (tmp_path / "elsewhere").mkdir()
    moved = []

    def progress(n):
        if not moved:
            moved.append(os.getcwd())
            os.chdir(tmp_path / "elsewhere")
    repo.checkout("HEAD", "rel-out", progress=progress)
    assert sorted(os.listdir(tmp_path / "rel-out")) == ["a", "b"] and os.listdir(tmp_path / "elsewhere") == []


def test_stale_backup_links_are_swept_and_files_renamed_aside_are_kept(tmp_path, monkeypatch):
    """A killed forced checkout's backup link outlives the name it linked (one link left): it was
    kept for ever, taken for a file renamed aside (review). Those now have their own suffix."""
    from mvc import components
    for name in (".0123456789ab.mvc-bak", ".0123456789ab.mvc-old", ".0123456789ab.mvc-tmp"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(components, "STALE_TEMP_S", -1.0)  # (all of them old enough)
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        components._remove_stale_temps(folder)
    finally:
        os.close(folder)
    assert sorted(os.listdir(tmp_path)) == [".0123456789ab.mvc-old"]


def test_a_linked_component_folder_holding_another_file_is_named_as_a_link_first(tmp_path):
    """The size check that spares a lazy clone its downloads ran before the link check: the user was
    told to pass --force, which then failed on the link."""
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.safetensors").write_bytes(b"other")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "core")
    for force in (False, True):
        with pytest.raises(MvcError, match="core is a symbolic link; mvc does not write through"):
            repo.checkout(cid, str(tmp_path / "out"), force=force)
    assert (tmp_path / "elsewhere" / "model.safetensors").read_bytes() == b"other"

"""The machine's state as the cause of an error: a full disk after something already moved, no write
permission, the open-file limit, SIGTERM. Each is a clear error (exit 3, or 143 for SIGTERM) that
says truthfully what moved; gc can free space on a full disk; reports run on read-only
repositories."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

import mvc
from mvc.cli import cli
from mvc.files import LockFile
from mvc.refs import RefStore


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _sd(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(64, 64, generator=g) for i in range(n)}


def test_a_commit_that_landed_is_not_reported_failed_when_autopacking_hits_a_full_disk(in_repo, monkeypatch):
    """The commit landed, the CLI said 'nothing was moved' (exit 3): a retry made a second commit."""
    import mvc.pack_write
    in_repo.set_config("pack.autoEvery", "1")
    monkeypatch.setattr(mvc.pack_write, "pack", _enospc)
    from safetensors.torch import save_file
    save_file(_sd(), "m.safetensors")
    r = CliRunner().invoke(cli, ["commit", "m.safetensors", "-m", "one"])
    assert r.exit_code == 0, r.output
    assert "automatic packing after commit" in r.stderr and "no space left on device" in r.stderr
    assert len(in_repo.log()) == 1


def test_ci_on_commit_that_cannot_store_its_certificate_says_the_commit_landed(repo, monkeypatch):
    import semantic_ci.hooks
    with open(os.path.join(repo.root, "mvc.toml"), "w") as f:
        f.write('[ci]\non_commit = true\n[[ci.checks]]\nname = "f"\nkind = "exact-logits"\n'
                'component = "model"\nbaseline = "HEAD~1"\n')
    monkeypatch.setattr(semantic_ci.hooks, "run_ci", _enospc)
    with pytest.raises(mvc.MvcError, match=r"committed [0-9a-f]{12} \(the branch moved\), but semantic CI could "
                                           r"not run on it: no space left on device"):
        repo.commit({"model": _sd()}, message="one")
    assert len(repo.log()) == 1


def _denied(*_a, **_k):
    raise PermissionError(errno.EACCES, "Permission denied", "refs/remotes/origin/main")


@pytest.mark.parametrize("fails,what", [(_enospc, "no space left on device"), (_denied, "permission denied")])
def test_a_full_disk_after_a_ref_moved_names_the_move_instead_of_saying_nothing_moved(tmp_path, monkeypatch,
                                                                                      fails, what):
    """push moved the remote branch, then its local tracking ref hit ENOSPC (or EACCES): it said
    'nothing was moved'. The push stands (its tags and certificates go too): a warning says the
    tracking ref did not move, and why."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"model": _sd()}, message="one")
    monkeypatch.chdir(repo.root)
    assert CliRunner().invoke(cli, ["remote", "add", "origin", str(tmp_path / "remote")]).exit_code == 0
    real = RefStore.update

    def tracking_fails(self, ref, *a, **k):
        if ref.startswith("refs/remotes/"):
            fails()
        return real(self, ref, *a, **k)
    monkeypatch.setattr(RefStore, "update", tracking_fails)
    r = CliRunner().invoke(cli, ["push", "origin", "main"])
    assert r.exit_code == 0, r.output
    assert "nothing was moved" not in r.stderr
    assert "pushed, but refs/remotes/origin/main was not moved" in r.stderr and what in r.stderr, r.stderr
    # a later command of the same process does not inherit the move
    monkeypatch.setattr(RefStore, "update", lambda *a, **k: _enospc())
    r = CliRunner().invoke(cli, ["branch", "other"])
    assert r.exit_code == 3 and "nothing was moved" in r.stderr, r.output


@pytest.mark.parametrize("err,what,fix", [
    (errno.EACCES, "permission denied at /x/refs/heads/b.lock", "owner and mode"),
    (errno.EROFS, "read-only file system at /x/refs/heads/b.lock", "writable file system"),
    (errno.EMFILE, "too many open files", "ulimit -n"),
])
def test_environment_errors_are_exit_3_with_what_to_do(in_repo, monkeypatch, err, what, fix):
    """A write command on a read-only repository (or at the open-file limit) was exit 4, 'a bug
    in mvc', with a traceback."""
    in_repo.commit({"model": _sd()}, message="one")

    def fails(*_a, **_k):
        raise OSError(err, os.strerror(err), "/x/refs/heads/b.lock")
    monkeypatch.setattr(RefStore, "update", fails)
    r = CliRunner().invoke(cli, ["branch", "b"])
    assert r.exit_code == 3, r.output
    assert what in r.stderr and fix in r.stderr and "Traceback" not in r.stderr


def test_a_gc_stopped_by_the_file_system_says_what_it_had_deleted(in_repo, monkeypatch):
    """A gc that had expired reflog entries and deleted garbage, then failed writing its pack
    (another member's objects/pack folder), said 'nothing was moved'."""
    from mvc.pack_write import Packer
    in_repo.commit({"model": _sd(0)}, message="one")
    in_repo.commit({"model": _sd(1)}, message="two")
    in_repo.rollback("HEAD~1")
    in_repo.set_config("gc.reflogExpire", "0")
    monkeypatch.setattr(Packer, "run", lambda *a, **k: _denied())
    r = CliRunner().invoke(cli, ["gc", "--grace", "0"])
    assert r.exit_code == 3, r.output
    assert "nothing was moved" not in r.stderr and "expired 3 reflog entries" in r.stderr, r.stderr
    assert "deleted 6 unreachable loose objects" in r.stderr, r.stderr


def test_a_refused_rename_names_both_paths():
    """A rename refused by the destination's folder (another member's objects/xx on a shared
    repository) named only the temp file, whose folder was writable."""
    from mvc.errors import environment_error
    e = PermissionError(errno.EACCES, "Permission denied", "/r/.mvc/objects/tmp/abc", None, "/r/.mvc/objects/ab/cd")
    assert environment_error(e) == ("permission denied moving /r/.mvc/objects/tmp/abc to /r/.mvc/objects/ab/cd",
                                    "check the owner and mode of both folders")


def test_a_file_size_limit_is_exit_3_with_what_to_do_and_leaves_nothing(in_repo, tmp_path):
    """EFBIG (`ulimit -f`, a file system's largest file) was exit 4, 'a bug in mvc', with a
    traceback. Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing mvc."""
    in_repo.commit({"model": _sd(n=1)}, message="one")
    from safetensors.torch import save_file
    save_file({"w": torch.randn(256, 256)}, str(tmp_path / "big.safetensors"))
    import resource
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100 << 10, 100 << 10))  # noqa: E731
    r = subprocess.run([sys.executable, "-m", "mvc", "commit", str(tmp_path / "big.safetensors"), "-m", "big"],
                       cwd=in_repo.root, capture_output=True, text=True, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 3, r.stderr
    tmp = os.path.join(in_repo.dir, "objects", "tmp")
    assert r.stderr.startswith(f"error: file too large at {tmp}{os.sep}") and "ulimit -f" in r.stderr  # (its path)
    assert "(nothing was moved;" in r.stderr
    assert "Traceback" not in r.stderr and len(in_repo.log()) == 1 and in_repo.fsck()["ok"]
    assert os.listdir(os.path.join(in_repo.dir, "objects", "tmp")) == []


@pytest.mark.parametrize("where,err,code", [("objects", errno.EIO, 3), ("refs", errno.EIO, 3),
                                            ("objects", errno.EINVAL, 0), ("refs", errno.ENOTSUP, 0)])
def test_a_failed_directory_fsync_is_an_error_unless_the_file_system_cannot_sync_directories(
        in_repo, monkeypatch, where, err, code):
    """An EIO from the fsync of a directory that a commit's objects or its ref were renamed into was
    ignored (exit 0): after a crash the ref could name objects that never reached the disk. A file
    system that cannot sync directories (EINVAL, ENOTSUP) is still no error."""
    first = in_repo.commit({"model": _sd(n=1)}, message="one")
    real = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}") and f"/.mvc/{where}/" in os.readlink(f"/proc/self/fd/{fd}") + "/":
            raise OSError(err, os.strerror(err))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    from safetensors.torch import save_file
    save_file(_sd(seed=1, n=1), "m.safetensors")
    r = CliRunner().invoke(cli, ["commit", "m.safetensors", "-m", "two"])
    monkeypatch.setattr(os, "fsync", real)
    assert r.exit_code == code, r.output
    if code == 0:
        return
    assert r.stderr.startswith(f"error: input/output error at {in_repo.dir}/{where}") and "dmesg" in r.stderr
    if where == "objects":  # before the ref moved: it did not
        assert "nothing was moved" in r.stderr and in_repo.head() == first
    else:  # the ref moved, then its directory's sync failed: the error says so
        assert f"it had moved refs/heads/main to {in_repo.head()[:12]}" in r.stderr and in_repo.head() != first


@pytest.mark.parametrize("args, said, done", [
    (["switch", "other"], "it had pointed HEAD at refs/heads/other, which stays; the rest stopped",
     lambda r: r.head_branch == "other"),
    (["config", "pack.autoEvery", "5"], "it had set pack.autoEvery in .mvc/config, which stays; the rest stopped",
     lambda r: r.get_config("pack.autoEvery") == "5"),
])
def test_a_failed_sync_after_head_or_the_config_was_replaced_says_that_it_was(in_repo, monkeypatch, args, said, done):
    """switch and config said "nothing was moved" when the sync of .mvc failed after the new HEAD or
    config file was in place (they stand, and are in no reflog)."""
    in_repo.commit({"model": _sd(n=1)}, message="one")
    in_repo.create_branch("other")
    real = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}") == in_repo.dir:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    r = CliRunner().invoke(cli, args)
    monkeypatch.setattr(os, "fsync", real)
    assert r.exit_code == 3 and said in r.stderr and "nothing was moved" not in r.stderr, r.stderr
    assert done(mvc.Repo(in_repo.root))


@pytest.mark.parametrize("exc,what,fix", [
    (OSError(errno.ENOMEM, "Cannot allocate memory"), "not enough memory", "ulimit -v"),
    (MemoryError(), "not enough memory", "ulimit -v"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 4000000000 bytes. Error code 12 (Cannot allocate memory)"), "not enough memory", "ulimit -v"),
    (RuntimeError("can't start new thread"), "cannot start a thread", "ulimit -u"),
])
def test_running_out_of_memory_or_threads_is_exit_3_not_a_bug(in_repo, monkeypatch, exc, what, fix):
    """A commit under `ulimit -v` (an mmap's ENOMEM) was 'unexpected OSError ... this is a bug in mvc', exit 4."""
    def fails(*_a, **_k):
        raise exc
    monkeypatch.setattr(mvc.Repo, "commit", fails)
    from safetensors.torch import save_file
    save_file(_sd(), "m.safetensors")
    r = CliRunner().invoke(cli, ["commit", "m.safetensors", "-m", "one"])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith(f"error: {what}") and fix in r.stderr and "nothing was moved" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_other_runtime_errors_are_still_bugs(in_repo, monkeypatch):
    def fails(*_a, **_k):
        raise RuntimeError("some internal state went wrong")
    monkeypatch.setattr(mvc.Repo, "commit", fails)
    from safetensors.torch import save_file
    save_file(_sd(), "m.safetensors")
    r = CliRunner().invoke(cli, ["commit", "m.safetensors", "-m", "one"])
    assert r.exit_code == 4 and "Traceback" in r.stderr and "this is a bug in mvc" in r.stderr


def test_gc_frees_space_on_a_full_disk_with_the_reserve(repo, monkeypatch):
    """On a 100% full disk gc could not take its locks (their owner files need a block) and freed
    nothing: exactly when a user runs it."""
    import mvc.maintenance
    reserve = os.path.join(repo.dir, mvc.maintenance.RESERVE)
    assert os.path.getsize(reserve) == mvc.maintenance.RESERVE_BYTES  # written by init
    repo.commit({"model": _sd(0)}, message="one")
    garbage = [repo.store.put(os.urandom(5000)) for _ in range(3)]  # unreachable
    real_try = LockFile._try

    def full_until_reserve_freed(self):
        if os.path.exists(reserve):
            _enospc()
        return real_try(self)
    monkeypatch.setattr(LockFile, "_try", full_until_reserve_freed)
    with pytest.warns(UserWarning, match="space mvc keeps in reserve"):
        result = repo.gc(grace_s=0)
    assert result["removed"] == 3 and not any(repo.store.has(o) for o in garbage)
    assert os.path.getsize(reserve) == mvc.maintenance.RESERVE_BYTES  # written again after


def test_gc_dry_run_reports_on_a_read_only_repository(repo, monkeypatch):
    repo.commit({"model": _sd()}, message="one")
    real = LockFile.acquire

    def read_only(self, *a, **k):
        if self.path.endswith("pack.lock"):
            raise OSError(errno.EROFS, "Read-only file system", self.path)
        return real(self, *a, **k)
    monkeypatch.setattr(LockFile, "acquire", read_only)
    assert repo.gc(dry_run=True)["dry_run"] is True
    with pytest.raises(OSError):
        repo.gc(grace_s=0)


def test_packing_keeps_at_most_a_quarter_of_the_open_file_limit_at_hand(tmp_path):
    """160 blobs of 1 MiB under `ulimit -n 128`: pack and gc ran out of descriptors (each cached
    loose object is a map holding one)."""
    repo = mvc.Repo.init(tmp_path / "r")
    g = torch.Generator().manual_seed(0)
    repo.commit({"model": {f"w{i}": torch.randn(256, 1024, generator=g) for i in range(60)}}, message="one")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)); "
            "from mvc.cli import main; sys.argv = ['mvc', 'pack', '--json']; main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=repo.root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["packed"] >= 60


@pytest.mark.parametrize("sig,status,said", [(signal.SIGTERM, 143, "error: terminated"),
                                             (signal.SIGHUP, 129, "error: hung up (the terminal closed)")])
def test_sigterm_stops_a_command_like_ctrl_c(in_repo, sig, status, said):
    """SIGTERM killed mvc without running its cleanup (a checkout's temp files stayed); so did
    SIGHUP, a closed terminal or ssh session (probe h8: temp files in the output, .mvc and packs)."""
    in_repo.commit({"model": _sd()}, message="one")
    lock = os.path.join(in_repo.dir, "refs", "heads", "b.lock")  # another writer holds the ref
    with open(lock, "w") as f:
        json.dump({"pid": os.getpid(), "host": __import__("socket").gethostname(), "time": time.time()}, f)
    p = subprocess.Popen([sys.executable, "-m", "mvc", "branch", "b"], cwd=in_repo.root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # waiting for the lock
    p.send_signal(sig)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == status and said in err, (p.returncode, err)
    assert "Traceback" not in err


def test_gc_on_a_full_disk_says_how_much_room_a_repack_needs(repo, monkeypatch):
    """Packed garbage goes only once the live objects beside it are rewritten: on a full disk gc
    said 'no space left on device (nothing was moved)' and nothing about what it needs."""
    import mvc.pack_write
    keep = repo.commit({"model": _sd(0)}, message="one")
    repo.commit({"model": {"big": torch.randn(300, 300)}}, message="to drop", branch="tmp")
    mvc.pack_write.pack(repo)
    repo.delete_branch("tmp")
    repo.set_config("gc.reflogExpire", "0")  # the deleted branch's commit is garbage now, in a pack
    loose_garbage = repo.store.put(os.urandom(200_000))
    monkeypatch.setattr(mvc.pack_write.Packer, "run", lambda *a, **k: _enospc())
    with pytest.raises(mvc.MvcError, match=r"no space left on device to repack: .* need up to 0\.[1-9]\d* MB") as e:
        repo.gc(grace_s=0)
    assert "0.2 MB of loose garbage was freed and nothing was lost" in e.value.hint
    monkeypatch.undo()
    fresh = mvc.Repo(repo.root)
    assert not fresh.loose.has(loose_garbage) and fresh.resolve("HEAD") == keep and fresh.fsck()["ok"]
    assert fresh.gc(grace_s=0)["bytes_freed"] > 250_000  # with room, the packed garbage goes


def test_nohup_keeps_mvc_running_through_a_hangup(in_repo):
    """`nohup mvc ...` ignores SIGHUP; a handler installed over that would end the command."""
    in_repo.commit({"model": _sd()}, message="one")
    lock = os.path.join(in_repo.dir, "refs", "heads", "b.lock")  # another writer holds the ref a while
    with open(lock, "w") as f:
        json.dump({"pid": os.getpid(), "host": __import__("socket").gethostname(), "time": time.time()}, f)
    code = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); sys.argv = ['mvc', 'branch', 'b']; "
            "from mvc.cli import main; main()")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=in_repo.root, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # waiting for the lock
    p.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    os.unlink(lock)  # the other writer is done: the branch is made
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (p.returncode, err)
    assert "b" in mvc.Repo(in_repo.root).branches()


def test_the_python_api_raises_the_file_systems_oserror_with_its_path_and_leaves_nothing(repo, tmp_path):
    """README's contract for Python callers: a refusal of the file system is the OSError open() would
    raise, naming the path, and no half-written file stays."""
    cid = repo.commit({"model": _sd(n=2)}, message="m")
    outside = tmp_path / "out"
    outside.mkdir()
    with pytest.raises(OSError) as e:
        repo.checkout(cid, outside / ("x" * 300))
    assert e.value.errno == errno.ENAMETOOLONG and "x" * 300 in str(e.value.filename)
    assert not isinstance(e.value, mvc.MvcError)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_full_disk_while_an_object_is_written_is_an_oserror_with_its_path(repo, monkeypatch, err):
    """os.write names no file: repo.commit raised OSError(28) with no path, though the README says
    the file system's refusals come with their path (an I/O error writing it too)."""
    import mvc.store
    real = os.write

    def full(fd, data):
        if len(data) > 4096:
            raise OSError(err, os.strerror(err))
        return real(fd, data)
    monkeypatch.setattr(mvc.store.os, "write", full)
    with pytest.raises(OSError) as e:
        repo.commit({"model": {"w": torch.zeros(1 << 20)}}, message="big")
    assert e.value.errno == err and e.value.filename.startswith(repo.loose.tmp)
    assert not os.listdir(repo.loose.tmp) and repo.head() is None


def test_a_full_disk_while_a_small_object_or_a_lock_is_written_names_the_file(repo, monkeypatch):
    """A small object is written through the file's buffer: its flush failed (named), then the
    close flushed again and its nameless error replaced the named one, so a commit of small
    tensors, a lock or a pack on a full disk said 'no space left on device' with no path (h59)."""
    import io

    import mvc.store

    class FullDisk(io.BufferedWriter):  # a file whose buffered bytes never reach a full disk
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            try:
                self.flush()
            finally:
                self.raw.close()

    def full_open(path, mode="r", *a, opener=None, **k):
        fd = opener(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL) if opener else os.open(path, os.O_WRONLY | os.O_CREAT)
        return FullDisk(io.FileIO(fd, "wb"))
    monkeypatch.setattr(mvc.store, "open", full_open, raising=False)
    with pytest.raises(OSError) as e:
        repo.commit({"model": {"w": torch.zeros(4)}}, message="small")
    assert e.value.errno == errno.ENOSPC and str(e.value.filename).startswith(repo.loose.tmp)
    assert not os.listdir(repo.loose.tmp) and repo.head() is None
    monkeypatch.undo()
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(io.FileIO(fd, "wb")))
    lock = os.path.join(repo.dir, "x.lock")
    with pytest.raises(OSError) as e:
        LockFile(lock).acquire()
    assert e.value.errno == errno.ENOSPC and e.value.filename == lock and not os.path.exists(lock)


def test_an_init_that_fails_half_way_leaves_no_temp_folder(tmp_path, monkeypatch):
    """`mvc init` on a full disk left DIR/.mvc-init-<pid> beside a later repository for good: the
    folder was removed only when the final rename failed (h59)."""
    import mvc.repo
    monkeypatch.setattr(mvc.repo, "keep_reserve", _enospc)
    with pytest.raises(OSError):
        mvc.Repo.init(tmp_path / "r")
    assert os.listdir(tmp_path / "r") == []
    monkeypatch.undo()
    mvc.Repo.init(tmp_path / "r")
    assert os.listdir(tmp_path / "r") == [".mvc"]


def test_a_full_disk_while_a_ref_or_config_file_is_written_names_it(repo, monkeypatch):
    """atomic_write (refs, reflogs, HEAD, the config) let a full disk's nameless error through:
    `mvc config` and `mvc branch` said "no space left on device" with no path (h60)."""
    from mvc.files import atomic_write
    monkeypatch.setattr(os, "fsync", _enospc)
    target = os.path.join(repo.dir, "somefile")
    with pytest.raises(OSError) as e:
        atomic_write(target, b"x")
    assert e.value.errno == errno.ENOSPC and e.value.filename == target
    assert [n for n in os.listdir(repo.dir) if n.startswith(".somefile")] == []
    with pytest.raises(OSError) as e:
        repo.set_config("pack.level", "3")
    assert e.value.filename == os.path.join(repo.dir, "config")
    monkeypatch.undo()  # a refused replace names the file written, not the temp file (gone by then: h62)
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Permission denied", a, None, b)))
    with pytest.raises(OSError) as e:
        atomic_write(target, b"x")
    assert e.value.filename == repo.dir and e.value.filename2 is None  # (permission: the folder refuses: h63)


def test_a_full_disk_while_copying_to_a_directory_remote_names_the_file_there(repo, tmp_path, monkeypatch):
    """h76: a push to a full remote said only 'no space left on device': the user freed space on the
    local disk. The copy's error (sendfile, then copyfileobj) names the file it wrote."""
    from mvc import remote as rm
    from mvc import transport
    repo.commit({"m": _sd()}, message="one")
    rm.add_remote(repo, "origin", str(tmp_path / "remote.mvc"))
    monkeypatch.setattr(transport.os, "sendfile", _enospc)
    monkeypatch.setattr(transport.shutil, "copyfileobj", _enospc)
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["push"])
    assert r.exit_code == 3 and f"no space left on device at {tmp_path / 'remote.mvc'}" in r.stderr, r.output


def test_a_reflog_append_on_a_full_disk_names_the_reflog(repo, monkeypatch):
    """h76: mvc tag / branch failing on the reflog append named no path."""
    from mvc import refs
    repo.commit({"m": _sd()}, message="one")
    monkeypatch.setattr(refs, "_write_all", _enospc)
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["tag", "v1"])
    assert r.exit_code == 3 and "no space left on device at " + os.path.join(repo.dir, "logs") in r.stderr, r.output
    assert "v1" not in repo.tags()


def test_no_usable_temporary_directory_is_an_environment_error(in_repo, monkeypatch):
    """h76: with /tmp full, importing torch (tempfile.gettempdir, via dill) failed every tensor
    command with exit 4, 'this is a bug in mvc'."""
    from mvc.errors import environment_error
    err = FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp', '/var/tmp']")
    assert environment_error(err)[1] == "free some space there, or set TMPDIR to a writable folder with room"
    in_repo.commit({"m": _sd()}, message="one")
    in_repo.commit({"m": _sd(1)}, message="two")

    def no_tmp(*a, **k):
        raise err
    monkeypatch.setattr(mvc.Repo, "diff", no_tmp)
    r = CliRunner().invoke(cli, ["diff", "HEAD~1", "HEAD"])
    assert r.exit_code == 3 and "no usable temporary directory" in r.stderr and "bug" not in r.stderr, r.output


def test_a_read_error_of_a_copy_s_source_is_not_named_as_its_destination(tmp_path):
    """h81: every OSError of a copy was given the destination's name, a failing source disk too."""
    from mvc.transport import _name_destination
    with open(tmp_path / "dst", "wb") as dst:
        full, failing = OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "Input/output error")
        _name_destination(full, dst)
        _name_destination(failing, dst)
    assert full.filename == str(tmp_path / "dst") and failing.filename is None


def test_a_short_grace_gc_on_the_reserve_s_space_keeps_its_pack_lock_while_it_waits(repo, monkeypatch):
    """h83: on a full disk gc frees the reserve to take its locks; its wait then let the pack lock go
    between tries, and the lock file made again found the disk full (the freed block taken back):
    gc failed 'no space left' instead of waiting for the push in flight."""
    import threading
    from mvc import files, maintenance
    import mvc.pack_write as pw
    monkeypatch.setattr(files, "GATE_WAIT_S", 0.3)
    monkeypatch.setattr(files, "GATE_PAUSE_S", 0.05)
    repo.commit({"m": _sd()}, message="one")
    maintenance.keep_reserve(repo.dir)
    state = {"full": True}
    real_try, real_release = files.LockFile._try, maintenance._release_reserve

    def try_(self):
        if self.path.endswith("pack.lock") and state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_try(self)

    def release_reserve(d):
        ok = real_release(d)
        state["full"] = False
        return ok

    class TakenBack(files.LockFile):  # what a released pack lock frees, another writer takes
        def release(self):
            held = self.held
            super().release()
            if held and self.path.endswith("pack.lock"):
                state["full"] = True
    monkeypatch.setattr(files.LockFile, "_try", try_)
    monkeypatch.setattr(maintenance, "_release_reserve", release_reserve)
    monkeypatch.setattr(pw, "LockFile", TakenBack)
    holding, done = threading.Event(), threading.Event()

    def push():  # in flight for 1 s
        with mvc.Repo(repo.root).writing():
            holding.set()
            done.wait(1.0)
    t = threading.Thread(target=push)
    t.start()
    try:
        assert holding.wait(10)
        with pytest.warns(UserWarning, match="freed the space mvc keeps in reserve"):
            mvc.Repo(repo.root).gc(grace_s=0)
    finally:
        done.set()
        t.join()

"""Refs under adverse conditions: name/folder conflicts, deleted refs' reflogs, a full disk between
the reflog and the ref, torn reflog lines, lock files without an owner."""
import contextlib
import errno
import json
import os
import time
import warnings

import pytest
import torch
from click.testing import CliRunner

import mvc
import mvc.refs
from mvc.cli import cli
from mvc.errors import BadName, LockHeld
from mvc.files import STALE_OWNERLESS_LOCK_S, LockFile, atomic_write
from mvc.refs import RefStore

A, B, C = "a" * 64, "b" * 64, "c" * 64


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _files(top):
    return sorted(os.path.relpath(os.path.join(d, f), top) for d, _s, fs in os.walk(top) for f in fs)


# -- 1. a ref is never both a name and a folder of names -----------------------------------------
def test_name_that_is_a_folder_of_refs_is_refused_cleanly(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/feature/x", A, expected=None)
    with pytest.raises(BadName, match="cannot create refs/heads/feature: it conflicts with existing "
                                      "refs/heads/feature/x"):
        refs.update("refs/heads/feature", B, expected=None)
    with pytest.raises(BadName, match=r"feature/x/y: it conflicts with existing refs/heads/feature/x \("):
        refs.update("refs/heads/feature/x/y", B, expected=None)
    # nothing written: no temp, lock or log files, the existing ref untouched
    assert _files(tmp_path / "refs") == [os.path.join("heads", "feature", "x")]
    assert _files(tmp_path / "logs") == [os.path.join("refs", "heads", "feature", "x")]
    assert refs.list() == {"refs/heads/feature/x": A}


def test_folder_under_an_existing_name_is_refused_cleanly(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/tags/v1", A, expected=None)
    with pytest.raises(BadName, match="create refs/tags/v1/rc: it conflicts with existing refs/tags/v1"):
        refs.update("refs/tags/v1/rc", B)
    assert _files(tmp_path / "refs") == [os.path.join("tags", "v1")] and refs.read("refs/tags/v1") == A


def test_cli_branch_conflict_is_one_error_line_exit_3(in_repo):
    in_repo.commit({"core": {"w": torch.ones(3)}}, message="x")
    runner = CliRunner()
    assert runner.invoke(cli, ["branch", "feature/x"]).exit_code == 0
    r = runner.invoke(cli, ["branch", "feature"])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith("error: cannot create refs/heads/feature: it conflicts with existing "
                               "refs/heads/feature/x") and len(r.stderr.splitlines()) == 1
    assert sorted(in_repo.branches()) == ["feature/x", "main"]


def test_clash_made_after_the_check_is_still_a_clear_error(tmp_path, monkeypatch):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/feature/x", A, expected=None)
    real, calls = refs.check_free, []
    monkeypatch.setattr(refs, "check_free", lambda ref: calls.append(ref) if not calls else real(ref))
    with pytest.raises(BadName, match="conflicts with existing refs/heads/feature/x"):
        refs.update("refs/heads/feature", B, expected=None)  # as if feature/x was made just now
    assert len(calls) == 1 and refs.list() == {"refs/heads/feature/x": A}
    assert [e["new"] for e in refs.reflog("refs/heads/feature/x")] == [A]
    assert _files(tmp_path / "refs") == [os.path.join("heads", "feature", "x")]


def test_empty_folders_and_crash_leftovers_do_not_block_a_name(tmp_path):
    refs = RefStore(str(tmp_path))
    os.makedirs(tmp_path / "refs" / "heads" / "feature" / "x" / "y")
    (tmp_path / "refs" / "heads" / "feature" / ".z.0123abcd.tmp").write_text(A)  # killed mid-write
    refs.update("refs/heads/feature", A, expected=None)
    assert refs.list() == {"refs/heads/feature": A}
    assert _files(tmp_path / "refs") == [os.path.join("heads", "feature")]


def test_a_ref_being_written_below_a_name_blocks_it(tmp_path):
    refs = RefStore(str(tmp_path))
    with LockFile(str(tmp_path / "refs" / "heads" / "feature" / "x.lock")):
        with pytest.raises(BadName, match="conflicts with existing refs/heads/feature/x"):
            refs.update("refs/heads/feature", A, expected=None)


def test_deleting_a_ref_removes_its_empty_folders(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/a/b/c", A, expected=None)
    refs.update("refs/heads/a/d", A, expected=None)
    refs.update("refs/heads/a/b/c", None, expected=A)
    assert not (tmp_path / "refs" / "heads" / "a" / "b").exists()
    assert not (tmp_path / "logs" / "refs" / "heads" / "a" / "b").exists()
    refs.update("refs/heads/a/d", None, expected=A)
    assert os.listdir(tmp_path / "refs" / "heads") == []
    refs.update("refs/heads/a", B, expected=None)
    assert refs.list() == {"refs/heads/a": B}


def test_atomic_write_leaves_no_temp_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError, match="No space"):
        atomic_write(str(target), b"new")
    monkeypatch.undo()
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write(str(tmp_path / "d"), b"new")
    assert sorted(os.listdir(tmp_path)) == ["d", "f"] and target.read_bytes() == b"old"


# -- 2. reflogs of deleted refs: retired, still protecting their commits -------------------------
def test_deleted_refs_log_is_retired_and_frees_the_name(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/feature/x", A, expected=None, message="made")
    refs.update("refs/heads/feature/x", None, expected=A, message="gone")
    assert not (tmp_path / "logs" / "refs" / "heads" / "feature").exists()
    [retired] = _files(tmp_path / "logs" / "deleted")
    assert retired.startswith(os.path.join("refs", "heads", "feature", "x@"))
    refs.update("refs/heads/feature", B, expected=None, message="parent name")
    refs.update("refs/heads/feature", None, expected=B)
    refs.update("refs/heads/feature/x", C, expected=None, message="again")
    # a live ref shows its own log only; a deleted one its retired history, newest first
    assert [e["message"] for e in refs.reflog("refs/heads/feature/x")] == ["again"]
    assert [e["new"] for e in refs.reflog("refs/heads/feature")] == [None, B]
    assert refs.list() == {"refs/heads/feature/x": C}
    assert refs.all_reflog_ids() == {A, B, C}



def test_deleting_many_refs_lists_the_retired_logs_once_and_keeps_their_order(tmp_path, monkeypatch):
    """Each deletion listed (and sorted) every retired log of its folder to find the ref's newest:
    deleting N refs (mvc remote remove, fetch pruning) took N^2 / 2 (h67: 30 s for 10k refs)."""
    refs = RefStore(str(tmp_path), fsync=False)
    for i in range(50):
        refs.update(f"refs/heads/b{i}", A, expected=None, message="made")
    refs.update("refs/heads/b0", None, expected=A, message="first life")
    refs.update("refs/heads/b0", B, expected=None, message="second life")
    listed, real = [], os.listdir
    monkeypatch.setattr(os, "listdir", lambda d=".": listed.append(d) or real(d))
    again = RefStore(str(tmp_path), fsync=False)
    for i in range(50):
        again.update(f"refs/heads/b{i}", None, expected=B if i == 0 else A, message="gone")
    deleted = os.path.join(str(tmp_path), "logs", "deleted", "refs", "heads")
    assert listed.count(deleted) == 1
    monkeypatch.setattr(os, "listdir", real)
    lives = again._retired_logs("refs/heads/b0")  # (oldest first: the second life's log after the first's)
    assert len(lives) == 2 and lives[0] < lives[1]
    assert [e["new"] for e in again.reflog("refs/heads/b0")] == [None, B, None, A]


@pytest.mark.parametrize("deleted_before", [True, False])
def test_a_log_retired_while_the_reflogs_are_read_still_keeps_its_ids(tmp_path, monkeypatch, deleted_before):
    """gc's roots: a branch deleted while all_reflog_ids walks logs/ moves its log from the live
    folders to logs/deleted; whatever order the file system lists them in, the log is read in one
    place or the other (deleted/ is walked last, also when the deletion made it), never missed."""
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/old", A, expected=None)
    if deleted_before:
        refs.update("refs/heads/old", None, expected=A)  # logs/deleted exists already
    refs.update("refs/heads/exp", B, expected=None)
    real_walk, real_read = mvc.refs.walk, mvc.refs._read_log
    retired = []

    def deleted_listed_first(top, strict=True):
        for dirpath, dirs, files in real_walk(top, strict):
            dirs.sort(key=lambda d: d != "deleted")
            yield dirpath, dirs, files

    def read_log(path, **kw):
        if not retired and os.path.basename(path) == "exp":  # the deletion lands as its log is reached
            retired.append(refs.update("refs/heads/exp", None, expected=B))
        return real_read(path, **kw)

    monkeypatch.setattr(mvc.refs, "walk", deleted_listed_first)
    monkeypatch.setattr(mvc.refs, "_read_log", read_log)
    assert refs.all_reflog_ids() == {A, B} and retired and set(refs.list()) == ({"refs/heads/old"} - (
        {"refs/heads/old"} if deleted_before else set()))

def test_stale_logs_left_by_older_mvc_are_retired_not_crashed_on(tmp_path):
    refs = RefStore(str(tmp_path))
    entry = json.dumps({"old": None, "new": A, "time": "2024-01-01T00:00:00Z", "message": "old"}) + "\n"
    stale = tmp_path / "logs" / "refs" / "heads" / "feature" / "x"
    os.makedirs(stale.parent)
    stale.write_text(entry)
    refs.update("refs/heads/feature", B, expected=None, message="new")
    assert [e["message"] for e in refs.reflog("refs/heads/feature")] == ["new"]
    assert [e["message"] for e in refs.reflog("refs/heads/feature/x")] == ["old"]
    refs.update("refs/heads/feature", None, expected=B)
    (tmp_path / "logs" / "refs" / "heads" / "feature").write_text(entry)  # a stale file log above
    refs.update("refs/heads/feature/y", C, expected=None)
    assert refs.all_reflog_ids() == {A, B, C} and refs.list() == {"refs/heads/feature/y": C}


def test_gc_keeps_commits_only_a_deleted_nested_branchs_reflog_holds(repo):
    repo.commit({"core": {"w": torch.ones(4)}}, message="keep")
    cid = repo.commit({"core": {"w": torch.arange(4.0)}}, message="only on exp/a", branch="exp/a")
    repo.delete_branch("exp/a")
    repo.create_branch("exp")
    assert repo.gc(grace_s=0)["removed"] == 0
    assert repo.read_commit(cid)["message"] == "only on exp/a"
    assert torch.equal(repo.load(cid, "core")["w"], torch.arange(4.0)) and repo.fsck()["ok"]
    repo.set_config("gc.reflogExpire", "-1")
    dry = repo.gc(grace_s=0, dry_run=True)  # counts on the reflog entries that would expire
    assert _files(os.path.join(repo.dir, "logs", "deleted")) != []  # ... without expiring them
    real = repo.gc(grace_s=0)
    assert real["removed"] > 0 and dry["removed"] == real["removed"]
    assert dry["reflog_entries_expired"] == real["reflog_entries_expired"] > 0
    assert _files(os.path.join(repo.dir, "logs", "deleted")) == []



def test_gc_dry_run_counts_a_killed_reflog_rewrites_temp_as_gc_does(repo):
    """expire_reflogs leaves a killed rewrite's temp file as it is (gc deletes it once old): its
    entries keep their commits through this gc, in the dry run's count too."""
    repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    cid = repo.commit({"core": {"w": torch.arange(4.0)}}, message="two")
    repo.rollback()
    log = os.path.join(repo.dir, "logs", "refs", "heads", "main")
    os.rename(log, os.path.join(os.path.dirname(log), ".main.0123456789abcdef.tmp"))  # a killed rewrite's
    repo.set_config("gc.reflogExpire", "-1")
    dry = repo.gc(grace_s=0, dry_run=True)
    real = repo.gc(grace_s=0)
    assert repo.read_commit(cid)["message"] == "two"  # the temp's entries kept it ...
    assert dry["removed"] == real["removed"] == 0  # ... and the dry run said so


# -- 3. the reflog and the ref move together -----------------------------------------------------
def test_failed_reflog_append_moves_nothing_and_tears_nothing(tmp_path, monkeypatch):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    log = tmp_path / "logs" / "refs" / "heads" / "main"
    before = log.read_bytes()
    real_write, calls = os.write, []

    def half_then_full(fd, data):  # the disk fills up in the middle of the entry
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, data[:len(data) // 2])
        _enospc()
    monkeypatch.setattr(mvc.refs.os, "write", half_then_full)
    with pytest.raises(OSError, match="No space"):
        refs.update("refs/heads/main", B, expected=A, message="two")
    monkeypatch.undo()
    assert refs.read("refs/heads/main") == A and log.read_bytes() == before
    refs.update("refs/heads/main", C, expected=A, message="three")
    assert [e["message"] for e in refs.reflog("refs/heads/main")] == ["three", "one"]


def test_failed_ref_write_takes_back_the_reflog_entry(tmp_path, monkeypatch):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    log = tmp_path / "logs" / "refs" / "heads" / "main"
    before = log.read_bytes()
    monkeypatch.setattr(mvc.refs, "atomic_write", _enospc)
    with pytest.raises(OSError, match="No space"):
        refs.update("refs/heads/main", B, expected=A, message="two")
    with pytest.raises(OSError, match="No space"):
        refs.update("refs/heads/new/branch", B, expected=None)
    assert refs.read("refs/heads/main") == A and log.read_bytes() == before
    assert _files(tmp_path / "logs") == [os.path.join("refs", "heads", "main")]
    assert _files(tmp_path / "refs") == [os.path.join("heads", "main")]


def test_entry_after_a_torn_line_survives(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    with open(tmp_path / "logs" / "refs" / "heads" / "main", "a") as f:
        f.write('{"old": "trunc')  # killed mid-append
    refs.update("refs/heads/main", B, expected=A, message="two")
    assert [e["message"] for e in refs.reflog("refs/heads/main")] == ["two", "one"]


# -- 4. lock files always have an owner, or get broken -------------------------------------------
def test_failed_owner_write_removes_the_lock_file(tmp_path, monkeypatch):
    path = tmp_path / "x.lock"

    def fdopen_full_disk(fd, *a, **k):
        os.close(fd)
        _enospc()
    monkeypatch.setattr(os, "fdopen", fdopen_full_disk)
    with pytest.raises(OSError, match="No space"):
        LockFile(str(path), timeout=0.1).acquire()
    monkeypatch.undo()
    assert not path.exists()


def test_a_ctrl_c_as_the_lock_file_is_made_leaves_no_lock(tmp_path, monkeypatch):
    """A Ctrl-C landing as os.open made the lock file (before its owner's line was written) left an
    empty lock: the next writer waited STALE_OWNERLESS_LOCK_S and broke it with a warning (h97)."""
    import signal
    path = tmp_path / "x.lock"
    real_open = os.open

    def open_then_ctrl_c(p, flags, *a, **k):
        fd = real_open(p, flags, *a, **k)
        if str(p) == str(path):
            signal.raise_signal(signal.SIGINT)
        return fd
    monkeypatch.setattr(os, "open", open_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        LockFile(str(path), timeout=0.1).acquire()
    monkeypatch.undo()
    assert not path.exists()
    with LockFile(str(path), timeout=0.1):  # (taken at once, no warning)
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_signal_held_back_while_a_block_fails_is_still_delivered():
    """interrupts_deferred re-sent held signals only when the block ended normally: a SIGTERM that
    came while a lock's creation failed (a full disk) never reached the program's handler (h105)."""
    import signal

    from mvc.interrupts import interrupts_deferred
    got = []
    old = signal.signal(signal.SIGTERM, lambda *_: got.append("term"))
    try:
        with pytest.raises(OSError, match="disk full"):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGTERM)
                assert got == []  # (held back)
                raise OSError("disk full")
        assert got == ["term"]
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("content", ["", '{"pid": 12', "[]"])
def test_old_lock_without_owner_is_broken(tmp_path, content):
    path = tmp_path / "x.lock"
    path.write_text(content)
    old = time.time() - STALE_OWNERLESS_LOCK_S - 1
    os.utime(path, (old, old))
    with pytest.warns(UserWarning, match="stale lock .* with no owner"):
        with LockFile(str(path), timeout=1.0):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_fresh_lock_without_owner_is_respected(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("")  # a writer between creating the file and writing its owner
    with pytest.raises(LockHeld, match="locked by another process"):
        LockFile(str(path), timeout=0.1).acquire()
    assert path.exists()


def test_reflog_expiry_waits_for_the_refs_lock(tmp_path):
    import threading
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None)
    held = LockFile(str(tmp_path / "refs" / "heads" / "main.lock"), what="test")
    held.acquire()  # a move of main in progress
    done = threading.Event()
    t = threading.Thread(target=lambda: (refs.expire_reflogs(-1), done.set()))
    t.start()
    assert not done.wait(0.3)  # the log is not rewritten under the move's feet
    held.release()
    t.join(timeout=10)
    assert done.is_set() and refs.reflog("refs/heads/main") == []


def test_expiring_reflogs_drops_what_count_expiring_counted(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    log = tmp_path / "logs" / "refs" / "heads" / "main"
    old = '{"old": null, "new": "%s", "time": "2001-01-01T00:00:00Z", "message": "old"}\n' % B
    log.write_text(old + "[1, 2]\n" + '"text"\n' + log.read_text() + '{"new": "%s"}\n' % C + "{torn")
    counted = refs.count_expiring(3600)
    assert counted == 2  # the old entry and the one without a time; lines that are no entry do not count
    assert refs.expire_reflogs(3600) == counted
    assert [e["message"] for e in refs.reflog("refs/heads/main")] == ["one"]


def _log_at(refs, tmp_path, times):
    """refs/heads/main's reflog made of entries A, B, C... at the given epoch seconds, in order
    (and, when the branch is new, the entry of its creation after them)."""
    ids = [A, B, C][:len(times)]
    log = tmp_path / "logs" / "refs" / "heads" / "main"
    created = ""
    if refs.read("refs/heads/main") is None:  # (first: a creation retires a log found in its place)
        refs.update("refs/heads/main", ids[-1], expected=None, message="x")
        created = log.read_text()
    log.write_text("".join(json.dumps({"old": None, "new": oid, "message": f"m{i}", "time": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))}) + "\n" for i, (oid, t) in enumerate(zip(ids, times))) + created)


def test_a_reflog_entry_dated_ahead_of_the_clock_expires_like_the_others(tmp_path):
    """An entry written under a clock 10 years ahead survived gc.reflogExpire 0 while the entries
    after it went (main@{0} then named it), and with the default expiry would have stayed ten years."""
    refs = RefStore(str(tmp_path))
    now = time.time()
    _log_at(refs, tmp_path, [now - 60, now + 10 * 365 * 86400])
    assert refs.count_expiring(90 * 86400) == 0 and refs.expire_reflogs(90 * 86400) == 0
    entry = refs.reflog("refs/heads/main")[1]  # (newest first)
    assert entry["message"] == "m1" and abs(mvc.refs._entry_time(entry) - now) < 600  # restamped: ages from now
    assert refs.count_expiring(0) == 3 and refs.expire_reflogs(0) == 3 and refs.reflog("refs/heads/main") == []


def test_reflog_entries_written_while_the_clock_was_behind_are_not_older_than_those_before(tmp_path):
    """A commit rolled back minutes ago, while the clock was two years behind, was expired by the
    next default gc (its entries looked two years old) and deleted."""
    refs = RefStore(str(tmp_path))
    now = time.time()
    behind = now - 2 * 365 * 86400
    _log_at(refs, tmp_path, [now - 60, behind, behind])
    assert refs.count_expiring(90 * 86400) == 0 and {A, B, C} <= refs.all_reflog_ids(90 * 86400)
    assert refs.expire_reflogs(90 * 86400) == 0 and len(refs.reflog("refs/heads/main")) == 4
    _log_at(refs, tmp_path, [behind, now - 60, behind])  # only a prefix goes
    assert refs.count_expiring(90 * 86400) == 1 and refs.expire_reflogs(90 * 86400) == 1
    assert [e["message"] for e in refs.reflog("refs/heads/main")][::-1] == ["m1", "m2"]


def test_reflog_entries_of_another_shape_are_skipped_with_a_warning_and_still_keep_their_ids(tmp_path, monkeypatch):
    """A reflog line that is JSON but not an entry ("new": 5, no "message", a list) made `mvc
    reflog` and `mvc rollback @{0}` crash (exit 4). They are skipped with a warning, as torn lines
    are; an id such an entry names still keeps its commit from gc."""
    import mvc
    repo = mvc.Repo.init(tmp_path / "r")
    first = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    second = repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    log = tmp_path / "r" / ".mvc" / "logs" / "refs" / "heads" / "main"
    odd = [{"old": None, "new": 5, "time": "2026-01-01T00:00:00Z", "message": "m", "author": ""},
           {"old": None, "new": C, "time": "2026-01-01T00:00:00Z"}, [1, 2]]
    with open(log, "a") as f:
        f.writelines(json.dumps(e) + "\n" for e in odd)
    with pytest.warns(UserWarning, match="skipped 3 malformed entries of reflog .*main"):
        assert [e["message"] for e in repo.reflog("main")] == ["commit: two", "commit: one"]
    assert C in repo.refs.all_reflog_ids()
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["reflog"])
    assert r.exit_code == 0 and f"{second[:12]} @{{0}}: commit: two" in r.stdout, r.output
    r = CliRunner().invoke(cli, ["rollback", "@{1}"])
    assert r.exit_code == 0 and repo.head() == first, r.output


# -- Ctrl-C while a ref moves, or after a commit has landed -------------------------------------
def _interrupt_self(*_a, **_k):
    os.kill(os.getpid(), __import__("signal").SIGINT)


def test_ctrl_c_while_a_ref_moves_finishes_the_move_and_says_the_commit_landed(tmp_path, monkeypatch):
    """SIGINT in the directory fsync after the ref file was renamed used to cut the reflog entry
    back (the ref moved, its log did not say so) and reported the landed commit as interrupted."""
    import mvc
    from mvc.errors import InterruptedAfterLanding
    repo = mvc.Repo.init(tmp_path)
    first = repo.commit({"core": {"w": torch.zeros(3)}}, message="one")
    real = mvc.files.fsync_dir
    ref_dir = os.path.join(repo.dir, "refs", "heads")
    monkeypatch.setattr(mvc.files, "fsync_dir", lambda d: (_interrupt_self(), real(d)) if d == ref_dir else real(d))
    with pytest.raises(InterruptedAfterLanding) as e:
        repo.commit({"core": {"w": torch.ones(3)}}, message="two")
    monkeypatch.setattr(mvc.files, "fsync_dir", real)
    head = repo.head()
    assert head != first and head in e.value.landed and "main" in e.value.landed
    assert [x["new"] for x in repo.reflog("main")][:2] == [head, first]  # the move is logged
    assert repo.fsck()["ok"]


def test_ctrl_c_after_landing_or_before_it(tmp_path, monkeypatch):
    import mvc
    from mvc.errors import InterruptedAfterLanding
    repo = mvc.Repo.init(tmp_path)
    first = repo.commit({"core": {"w": torch.zeros(3)}}, message="one")
    monkeypatch.setattr(mvc.Repo, "_run_commit_hooks", lambda *a: _interrupt_self())  # checks after landing
    with pytest.raises(InterruptedAfterLanding):
        repo.commit({"core": {"w": torch.ones(3)}}, message="two")
    second = repo.head()
    assert second != first
    monkeypatch.setattr(mvc.Repo, "_run_commit_hooks", lambda *a: None)
    monkeypatch.setattr(mvc.refs.RefStore, "wait_unlocked", lambda *a: _interrupt_self())  # before writing
    with pytest.raises(KeyboardInterrupt) as e:
        repo.commit({"core": {"w": torch.full((3,), 2.0)}}, message="three")
    assert not isinstance(e.value, InterruptedAfterLanding) and repo.head() == second


def test_cli_names_the_commit_that_landed_before_ctrl_c(tmp_path, monkeypatch):
    import mvc
    from safetensors.torch import save_file
    mvc.Repo.init(tmp_path)
    save_file({"w": torch.ones(3)}, str(tmp_path / "m.safetensors"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mvc.Repo, "_run_commit_hooks", lambda *a: _interrupt_self())
    r = CliRunner().invoke(cli, ["commit", "m.safetensors", "-m", "x"])
    head = mvc.Repo(tmp_path).head()
    assert r.exit_code == 130 and head
    assert f"interrupted after commit {head} landed on main" in r.stderr and "do not commit it again" in r.stderr


def test_a_long_wait_for_a_lock_held_by_a_live_process_is_announced(tmp_path, monkeypatch):
    """A pack.lock whose recorded pid is a live unrelated process made gc wait 10 minutes in silence."""
    import subprocess
    import sys
    from mvc import files
    monkeypatch.setattr(files, "LOCK_NOTICE_AFTER_S", 0.05)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path = tmp_path / "pack.lock"
        path.write_text(json.dumps({"pid": live.pid, "host": files.hostname()}))
        with pytest.warns(UserWarning, match=f"waiting for packing: locked by process {live.pid}"):
            with pytest.raises(LockHeld):
                LockFile(str(path), timeout=0.4, what="packing").acquire()
        with warnings_as_list() as caught:  # a short wait passes without a word
            with pytest.raises(LockHeld):
                LockFile(str(path), timeout=0.08, what="packing").acquire()
        assert not caught
    finally:
        live.kill()
        live.wait()


def test_a_lock_taken_again_in_rounds_says_its_wait_once_and_keeps_one_deadline(tmp_path, monkeypatch):
    """A gc waiting in rounds (pack lock, then the writers lock a gate period, then letting the pack
    lock go) made a new pack LockFile each round: its notice repeated and its timeout restarted."""
    import subprocess
    import sys
    import threading
    from mvc import files
    monkeypatch.setattr(files, "LOCK_NOTICE_AFTER_S", 0.05)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    path = tmp_path / "pack.lock"
    owner = json.dumps({"pid": live.pid, "host": files.hostname()})
    lock = LockFile(str(path), timeout=0.6, what="packing")
    try:
        with warnings_as_list() as caught:
            for _ in range(2):  # two rounds, each waiting ~0.25 s for the other holder
                path.write_text(owner)
                threading.Timer(0.25, path.unlink).start()
                with lock:
                    pass
            path.write_text(owner)  # a third: ~0.5 s of the 0.6 s are spent, so it gives up soon
            began = time.monotonic()
            with pytest.raises(LockHeld):
                lock.acquire()
            third = time.monotonic() - began
        assert sum("waiting for packing" in str(w.message) for w in caught) == 1
        assert third < 0.4, third
    finally:
        live.kill()
        live.wait()


@pytest.fixture
def notice_at_once(monkeypatch):
    """Waits for the writers lock are said after LOCK_NOTICE_AFTER_S (2 s); these tests wait less."""
    from mvc import files
    monkeypatch.setattr(files, "LOCK_NOTICE_AFTER_S", 0.0)


def test_an_exclusive_hold_of_the_writers_lock_says_what_it_waits_for(tmp_path, notice_at_once):
    import threading
    from mvc.files import shared_or_exclusive
    path = str(tmp_path / "writers.lock")
    holding, release = threading.Event(), threading.Event()

    def writer():
        with shared_or_exclusive(path, exclusive=False):
            holding.set()
            release.wait(5)
    t = threading.Thread(target=writer)
    t.start()
    holding.wait(5)
    threading.Timer(0.3, release.set).start()
    with pytest.warns(UserWarning, match="waiting for commits in progress"):
        with shared_or_exclusive(path, exclusive=True, waiting_for="commits in progress"):
            assert release.is_set()  # taken only once the writer let go
    t.join()
    with warnings_as_list() as caught:  # free: no word
        with shared_or_exclusive(path, exclusive=True, waiting_for="commits in progress"):
            pass
    assert not caught


def test_shared_holds_of_one_process_share_one_descriptor_held_until_the_last_lets_go(tmp_path, monkeypatch):
    """Each hold opened and closed a descriptor of its own: where flock is emulated by POSIX locks
    (NFS), closing a nested or another thread's one dropped every hold of the process."""
    import fcntl
    import threading
    import mvc.files
    from mvc.files import shared_or_exclusive
    path = str(tmp_path / "writers.lock")
    opened, real_open = [], mvc.files._open_lock_file
    monkeypatch.setattr(mvc.files, "_open_lock_file",  # (the lock's own descriptors; not its gate's)
                        lambda p: (opened.append(p) if p == path else None) or real_open(p))

    def exclusive_is_free() -> bool:  # what a gc in another process would find
        with open(path, "a") as other:
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
    inner_done, outer_may_end = threading.Event(), threading.Event()

    def other_thread():
        with shared_or_exclusive(path, exclusive=False):
            inner_done.set()
            outer_may_end.wait(5)
    with shared_or_exclusive(path, exclusive=False):
        with shared_or_exclusive(path, exclusive=False):  # nested
            pass
        t = threading.Thread(target=other_thread)
        t.start()
        inner_done.wait(5)
        assert not exclusive_is_free()
    assert not exclusive_is_free()  # the other thread still holds it
    outer_may_end.set()
    t.join()
    assert exclusive_is_free() and len(opened) == 1
    with shared_or_exclusive(path, exclusive=False):  # a new first hold: a new descriptor
        assert not exclusive_is_free()
    assert len(opened) == 2


_SHARED_HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
import mvc.files
mvc.files.GATE_WAIT_S = {gate_wait}
path, hold_s, until = sys.argv[1], float(sys.argv[2]), time.time() + float(sys.argv[3])
while True:
    with mvc.files.shared_or_exclusive(path, exclusive=False):
        print("in", time.time(), flush=True)
        time.sleep(hold_s)
    if time.time() > until:
        break
print("done", time.time(), flush=True)
"""


def _shared_holder(path, hold_s, run_s, gate_wait=30.0):
    """A process that holds `path` shared for `hold_s` at a time, again and again for `run_s`
    (commits one after another); prints "in TIME" each time it has it."""
    import subprocess
    import sys
    src = os.path.dirname(os.path.dirname(mvc.__file__))
    return subprocess.Popen([sys.executable, "-c", _SHARED_HOLDER.format(src=src, gate_wait=gate_wait), path,
                             str(hold_s), str(run_s)], stdout=subprocess.PIPE, text=True)


def test_a_stream_of_overlapping_shared_holds_does_not_starve_an_exclusive_one(tmp_path, notice_at_once):
    """flock gives a waiting exclusive locker no priority: while two committers' holds overlapped,
    a gc --grace 0 waited until the stream ended (h54: 12 s beside 2,547 commits). New shared
    holders now wait behind it."""
    from mvc.files import shared_or_exclusive
    path = str(tmp_path / "writers.lock")
    first = _shared_holder(path, 0.3, 8)
    assert first.stdout.readline().startswith("in")
    time.sleep(0.15)  # (the second's holds start in the middle of the first's: always one holds it)
    second = _shared_holder(path, 0.3, 8)
    assert second.stdout.readline().startswith("in")
    try:
        start = time.time()
        with pytest.warns(UserWarning, match="waiting for commits"):
            with shared_or_exclusive(path, exclusive=True, waiting_for="commits"):
                waited = time.time() - start
                assert first.poll() is None and second.poll() is None  # the stream goes on
                time.sleep(0.5)
                released = time.time()
        assert waited < 4, f"the exclusive hold waited {waited:.1f} s"
        for p in (first, second):  # and nobody held it shared meanwhile
            p.wait(30)
            times = [float(line.split()[1]) for line in p.stdout.read().splitlines() if line.startswith("in")]
            assert not [t for t in times if start + waited < t < released]
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
            p.stdout.close()


def test_a_shared_holder_waits_behind_a_waiting_exclusive_one_only_so_long(tmp_path):
    """A process holding the lock shared may run another that wants it (a user's script around
    `mvc commit`): the exclusive waiter waits on the first, the second on the exclusive one. The
    second goes in after GATE_WAIT_S, as it would have without the gate."""
    import threading
    from mvc.files import shared_or_exclusive
    path = str(tmp_path / "writers.lock")
    got_exclusive = threading.Event()

    def gc():
        with shared_or_exclusive(path, exclusive=True):
            got_exclusive.set()
    with shared_or_exclusive(path, exclusive=False):  # the parent's hold
        t = threading.Thread(target=gc)
        t.start()
        time.sleep(0.3)  # the exclusive one is waiting, holding the gate
        child = _shared_holder(path, 0.05, 0, gate_wait=1.0)
        try:
            assert child.wait(15) == 0
            lines = child.stdout.read().splitlines()
        finally:
            child.kill()
            child.stdout.close()
        assert lines[0].startswith("in") and not got_exclusive.is_set()
    t.join(10)
    assert got_exclusive.is_set()


def test_an_exclusive_waiter_holds_new_shared_holders_back_for_gate_wait_s_at_most(tmp_path, monkeypatch):
    """Behind one long holder, a gc held every new commit back for the whole GATE_WAIT_S, one commit
    after another (h68): the bound is now the waiter's, once; new holders then go in again."""
    import threading
    import mvc.files
    from mvc.files import shared_or_exclusive
    monkeypatch.setattr(mvc.files, "GATE_WAIT_S", 1.0)
    monkeypatch.setattr(mvc.files, "GATE_PAUSE_S", 1.0)
    path = str(tmp_path / "writers.lock")
    got = threading.Event()

    def gc():
        with shared_or_exclusive(path, exclusive=True):
            got.set()
    with shared_or_exclusive(path, exclusive=False):  # the long holder (this process)
        t = threading.Thread(target=gc)
        t.start()
        time.sleep(0.2)
        started = time.time()
        commits = _shared_holder(path, 0.05, 2.0)  # (its own wait at the gate would be 30 s)
        try:
            ins = [float(line.split()[1]) for line in iter(commits.stdout.readline, "") if line.startswith("in")]
            assert commits.wait(30) == 0
        finally:
            commits.kill()
            commits.wait()
            commits.stdout.close()
        assert not got.is_set()  # the gc still waits for the long holder
    t.join(10)
    assert got.is_set()
    assert ins[0] - started < 2.5, ins[0] - started  # behind the gc's 1 s (less the 0.2 s it waited first)
    assert len(ins) > 10 and max(b - a for a, b in zip(ins, ins[1:])) < 1.6  # then 1 s at most at a time


def test_an_exclusive_waiter_past_a_long_holder_is_not_starved_by_the_stream_after_it(tmp_path, monkeypatch):
    """Once its gate time had run out behind a long holder, the waiter let the gate go for good: the
    overlapping commits after the long holder starved it again (h69). It takes the gate again."""
    import threading
    import mvc.files
    from mvc.files import shared_or_exclusive
    monkeypatch.setattr(mvc.files, "GATE_WAIT_S", 0.5)
    monkeypatch.setattr(mvc.files, "GATE_PAUSE_S", 0.3)
    path = str(tmp_path / "writers.lock")
    had = []

    def gc():
        with shared_or_exclusive(path, exclusive=True):
            had.append(time.time())
    streams = []
    try:
        with shared_or_exclusive(path, exclusive=False):  # the long holder: 2 s
            t = threading.Thread(target=gc)
            t.start()
            for offset in (0, 0.15):  # overlapping commits in two processes, for 10 s
                time.sleep(offset)
                streams.append(_shared_holder(path, 0.3, 10))
            time.sleep(2)
            left = time.time()
        t.join(30)
        assert had and had[0] - left < 4, had and had[0] - left  # (not when the streams end, 10 s on)
        assert all(p.poll() is None for p in streams)
    finally:
        for p in streams:
            p.kill()
            p.wait()
            p.stdout.close()


def test_a_second_exclusive_waiter_and_a_shared_one_say_what_they_wait_for_once(tmp_path, notice_at_once):
    """A second gc waited at the gate without a word; a commit that waited at the gate and then at
    the lock said "waiting for ..." twice (h68)."""
    import threading
    from mvc.files import shared_or_exclusive
    path = str(tmp_path / "writers.lock")
    holder = _shared_holder(path, 1.0, 0)  # another process's commit, 1 s
    assert holder.stdout.readline().startswith("in")
    first_waits = threading.Event()

    def first_gc():
        first_waits.set()
        with shared_or_exclusive(path, exclusive=True):
            time.sleep(0.5)
    try:
        t = threading.Thread(target=first_gc)
        with warnings_as_list() as caught:
            t.start()
            first_waits.wait(5)
            time.sleep(0.2)  # (the first holds the gate now)
            with shared_or_exclusive(path, exclusive=True, waiting_for="the first gc"):
                pass
        assert [str(w.message) for w in caught] == ["waiting for the first gc"]
        t.join(10)
        t = threading.Thread(target=first_gc)
        again = _shared_holder(path, 1.0, 0)
        assert again.stdout.readline().startswith("in")
        with warnings_as_list() as caught:
            t.start()
            first_waits.wait(5)
            time.sleep(0.2)
            with shared_or_exclusive(path, exclusive=False, waiting_for="a gc"):  # gate, then the lock
                pass
        assert [str(w.message) for w in caught] == ["waiting for a gc"]
        t.join(10)
        assert again.wait(10) == 0
        again.stdout.close()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_bounded_exclusive_wait_says_what_it_waits_for(tmp_path, notice_at_once):
    """A default-grace gc (and pack's drops) waited up to 60 s without a word, holding back commits
    that each said "waiting for a gc or pack ..." (h69)."""
    from mvc.files import exclusive_within
    path = str(tmp_path / "writers.lock")
    holder = _shared_holder(path, 0.6, 0)
    try:
        assert holder.stdout.readline().startswith("in")
        with warnings_as_list() as caught:
            with exclusive_within(path, 10, "the commits") as got:
                assert got
        assert [str(w.message) for w in caught] == ["waiting for the commits"]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@contextlib.contextmanager
def warnings_as_list():
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def test_a_stray_file_under_refs_is_skipped_by_readers_reported_by_fsck_and_stops_gc(tmp_path, monkeypatch):
    """A file mvc never writes (`refs/heads/old name`: a branch renamed by hand) made log, branch,
    fsck, gc and du fail with "invalid branch or tag name". Readers skip it with a warning; fsck
    names it; gc stops (it may hold the only ref to commits) and says what to do."""
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    repo.create_branch("gone")
    repo.commit({"m": {"w": torch.zeros(3)}}, message="only 'old name' will hold this", branch="gone")
    os.rename(os.path.join(repo.dir, "refs", "heads", "gone"), os.path.join(repo.dir, "refs", "heads", "old name"))
    with pytest.warns(UserWarning, match="skipped .*old name: a file whose name no ref may have"):
        assert repo.branches() == {"main": cid}
    monkeypatch.chdir(repo.root)
    out = CliRunner().invoke(cli, ["log"])
    assert out.exit_code == 0 and f"commit {cid[:12]} (main)" in out.stdout
    assert "warning: skipped" in out.stderr and "old name" in out.stderr
    report = repo.fsck()
    assert not report["ok"] and [p["id"] for p in report["problems"]] == ["refs/heads/old name"]
    before = sorted(repo.store.ids())
    with pytest.raises(mvc.CorruptObject, match="old name: a file whose name no ref may have.*rename it"):
        repo.gc(grace_s=0)
    assert sorted(repo.store.ids()) == before


def test_gc_deletes_the_temp_files_of_killed_ref_reflog_and_head_writes_once_they_are_old(tmp_path):
    """A gc, rollback, branch -d or clone killed between writing a temp file and renaming it left
    `.NAME.<16 hex>.tmp` under logs/, refs/, remote-listing/ or .mvc for good (reflog expiry even rewrote such a
    file as if it were a reflog). gc deletes them once older than an hour (and its grace); a
    younger one may belong to a write in progress (stalled, or dated by a file server's clock), and stays."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    log_line = (tmp_path / "r" / ".mvc" / "logs" / "refs" / "heads" / "main").read_bytes()
    old = [os.path.join(repo.dir, "logs", "refs", "heads", ".main.0123456789abcdef.tmp"),
           os.path.join(repo.dir, "refs", "heads", ".main.fedcba9876543210.tmp"),
           os.path.join(repo.dir, ".HEAD.00112233445566ff.tmp"),
           os.path.join(repo.dir, "remote-listing", ".0123456789abcdef0123456789abcdef.json.0123456789abcdef.tmp")]
    os.makedirs(os.path.join(repo.dir, "remote-listing"))
    young = os.path.join(repo.dir, "refs", "tags", ".v1.aaaaaaaaaaaaaaaa.tmp")
    for p in old + [young]:
        with open(p, "wb") as f:
            f.write(log_line)
    hours_ago = time.time() - 2 * 3600
    for p in old:
        os.utime(p, (hours_ago, hours_ago))
    assert repo.gc(grace_s=0, expire_reflogs=True)["bytes_freed"] >= 3 * len(log_line)
    assert not any(os.path.exists(p) for p in old) and os.path.exists(young)
    assert not [f for f in os.listdir(os.path.dirname(old[0])) if f.startswith("..")]  # never rewritten
    assert repo.fsck()["ok"] and repo.log()[0]["message"] == "one"


@pytest.mark.parametrize("ref", ["refs/../config", "refs/../HEAD", "refs/.x/main", "refs/x y/main"])
def test_a_full_ref_name_cannot_leave_the_refs_folder(tmp_path, ref):
    """refs/../config read .mvc/config as a ref (and quoted its text in the error)."""
    refs = RefStore(str(tmp_path))
    (tmp_path / "config").write_text("[core]\nformat = 1\n")
    (tmp_path / "HEAD").write_text("ref: refs/heads/main\n")
    with pytest.raises(BadName, match="not a ref name"):
        refs.read(ref)
    with pytest.raises(BadName):
        refs.update(ref, A, None)


def test_a_ref_file_holding_no_id_is_skipped_by_listings_deleted_by_branch_d_and_stops_gc(tmp_path, monkeypatch):
    """`deadbeef` in refs/heads/exp (a script's short id) made log, branch, tag and pack of every
    branch fail, and `mvc branch -d exp` could not remove it. Listings skip it with a warning;
    branch -d and tag -d delete it (logged); gc still stops, deleting nothing, until then."""
    repo = mvc.Repo.init(tmp_path / "r")
    first = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    cid = repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    repo.create_branch("exp", "HEAD~1")
    repo.tag("v1")
    (tmp_path / "r" / ".mvc" / "refs" / "heads" / "exp").write_text("deadbeef\n")
    (tmp_path / "r" / ".mvc" / "refs" / "tags" / "v1").write_text("junk\n")
    monkeypatch.chdir(repo.root)
    runner = CliRunner()
    for args, shows, skipped in (
            (["log", "main", "--oneline"], f"{cid[:12]} (main) two", "holds 'junk', not an object id; mvc tag -d v1"),
            (["branch"], "* main", "holds 'deadbeef', not an object id; mvc branch -d exp"),
            (["tag"], "", "; mvc tag -d v1 deletes it"), (["pack"], "packed", "; mvc branch -d exp deletes it")):
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # (each command of this process warns again)
            r = runner.invoke(cli, args)
        assert r.exit_code == 0 and shows in r.stdout, (args, r.output)
        assert "warning: skipped" in r.stderr and skipped in r.stderr, (args, r.stderr)
    assert [p["id"] for p in repo.fsck()["problems"]] == ["refs/heads/exp", "refs/tags/v1"]
    before = sorted(repo.store.ids())
    with pytest.raises(mvc.CorruptObject, match="gc stopped, deleting nothing: .*exp: ref refs/heads/exp holds 'deadbeef'"):
        repo.gc(grace_s=0)
    assert sorted(repo.store.ids()) == before
    r = runner.invoke(cli, ["branch", "-d", "exp"])
    assert r.exit_code == 0 and "Deleted branch exp (was -)" in r.stdout, r.output
    assert "held 'deadbeef', not a commit id" in r.stderr
    assert runner.invoke(cli, ["tag", "-d", "v1"]).exit_code == 0
    assert not os.path.exists(tmp_path / "r" / ".mvc" / "refs" / "heads" / "exp")
    assert [e["message"] for e in repo.refs.reflog("refs/heads/exp")] == [
        "branch: deleted (it held 'deadbeef', not an id)", "branch: created from HEAD~1"]
    assert repo.fsck()["ok"] and repo.gc(grace_s=0)["removed"] == 0
    assert repo.refs.all_reflog_ids() >= {first, cid}
    with pytest.raises(mvc.UnknownRevision):
        repo.delete_branch("exp")


@pytest.mark.parametrize("head,problem", [
    ("", "HEAD holds '', neither a branch nor a commit id"),
    ("ref: refs/heads/../../../evil\n", "HEAD names 'refs/heads/../../../evil', not a branch"),
    ("ref: refs/tags/v1\n", "HEAD names 'refs/tags/v1', not a branch"),
    (None, "HEAD is missing")])
def test_fsck_names_a_damaged_head_and_switch_repairs_it(tmp_path, monkeypatch, head, problem):
    """An empty HEAD (log then said 'no commits yet') or one naming `refs/heads/../../../evil`
    passed fsck (exit 0). fsck names it (exit 1) and says that `mvc switch BRANCH` repairs it."""
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    path = tmp_path / "r" / ".mvc" / "HEAD"
    path.unlink() if head is None else path.write_text(head)
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["fsck"])
    assert r.exit_code == 1 and f"damaged: HEAD: {problem} (mvc switch BRANCH repairs it)" in r.stdout, r.output
    assert CliRunner().invoke(cli, ["switch", "main"]).exit_code == 0
    assert repo.fsck()["ok"] and repo.head() == cid
    path.write_text(cid + "\n")  # a detached HEAD is no damage
    assert repo.fsck()["ok"]


def test_gc_removes_ref_lock_files_of_dead_writers_older_than_its_grace_and_fsck_names_them(tmp_path):
    """`mvc branch -d exp` killed after the ref was gone but before its lock was removed left
    refs/heads/exp.lock for good: no later command touches that ref, and neither gc nor fsck
    looked. fsck names it (a warning, no damage); gc removes it once older than its grace, never
    a lock a live process holds."""
    import subprocess
    import sys
    from mvc.files import hostname
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    heads = tmp_path / "r" / ".mvc" / "refs" / "heads"
    (heads / "exp.lock").write_text(json.dumps({"pid": dead.pid, "host": hostname(), "time": time.time()}))
    (heads / "live.lock").write_text(json.dumps({"pid": os.getpid(), "host": hostname(), "time": time.time()}))
    with pytest.warns(UserWarning, match=f"stale lock file .*exp.lock \\(left by dead process {dead.pid}\\)"):
        assert repo.fsck()["ok"]
    assert "stale_locks_removed" not in repo.gc() and (heads / "exp.lock").exists()  # younger than the grace
    with pytest.warns(UserWarning, match="broke stale lock .*exp.lock"):
        assert repo.gc(grace_s=0)["stale_locks_removed"] == 1
    assert sorted(os.listdir(heads)) == ["live.lock", "main"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repo.fsck()["ok"]


@pytest.mark.parametrize("loop", [{"heads/loop": "heads/loop"}, {"heads/a": "heads/b", "heads/b": "heads/a"}])
def test_a_loop_of_symbolic_refs_is_named_damage_not_a_recursion_error(tmp_path, monkeypatch, loop):
    """`ref: refs/heads/loop` in refs/heads/loop (or two refs naming each other) made every command
    list refs, fsck included, fail with RecursionError (exit 4): it is damage that fsck names,
    listings skip and branch -d removes."""
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    for ref, target in loop.items():
        (tmp_path / "r" / ".mvc" / "refs" / ref).write_text(f"ref: refs/{target}\n")
    monkeypatch.chdir(repo.root)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        r = CliRunner().invoke(cli, ["branch"])
    assert r.exit_code == 0 and f"* main {cid[:12]}" in r.stdout and "is a loop of symbolic refs" in r.stderr
    problems = {p["id"]: p["problem"] for p in repo.fsck()["problems"]}
    assert set(problems) == {f"refs/{ref}" for ref in loop}
    for ref, said in problems.items():
        assert f"ref {ref} is a loop of symbolic refs: {ref} -> " in said and f"mvc branch -d {ref[11:]} deletes" in said
    for ref in loop:
        assert CliRunner().invoke(cli, ["branch", "-d", ref[6:]]).exit_code == 0
    assert repo.fsck()["ok"]


def test_a_head_naming_itself_is_named_with_the_repair(tmp_path, monkeypatch):
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    (tmp_path / "r" / ".mvc" / "HEAD").write_text("ref: HEAD\n")
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["log"])
    assert r.exit_code == 3 and "HEAD" in r.stderr and "mvc switch BRANCH repairs it" in r.stderr, r.output
    assert CliRunner().invoke(cli, ["switch", "main"]).exit_code == 0 and repo.head() == cid


def test_a_chain_of_symbolic_refs_deeper_than_git_follows_is_named_as_such(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r")
    cid = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    heads = tmp_path / "r" / ".mvc" / "refs" / "heads"
    for i in range(7):
        (heads / f"s{i}").write_text(f"ref: refs/heads/s{i + 1}\n" if i < 6 else cid + "\n")
    assert repo.refs.read("refs/heads/s2") == cid  # 4 deep: followed
    with pytest.raises(mvc.CorruptObject, match="ref refs/heads/s0 follows more than 5 symbolic refs: refs/heads/s0 -> "):
        repo.refs.read("refs/heads/s0")


def test_a_branch_deleted_under_a_clock_ahead_does_not_pass_for_its_later_incarnation(tmp_path, monkeypatch):
    """Retired reflogs were named by the clock: one retired while it ran 10 years ahead sorted after
    a later deletion, so `mvc reflog feat` and feat@{N} showed the older incarnation as the newer."""
    refs = RefStore(str(tmp_path))
    real_ns = time.time_ns
    monkeypatch.setattr(mvc.refs.time, "time_ns", lambda: real_ns() + 10 * 365 * 86400 * 10**9)
    refs.update("refs/heads/feat", A, expected=None, message="first")
    refs.update("refs/heads/feat", None, expected=A, message="deleted")
    monkeypatch.setattr(mvc.refs.time, "time_ns", real_ns)
    refs.update("refs/heads/feat", B, expected=None, message="second")
    refs.update("refs/heads/feat", None, expected=B, message="deleted")
    assert [e["message"] for e in refs.reflog("refs/heads/feat")][:2] == ["deleted", "second"]
    assert [e["new"] for e in refs.reflog("refs/heads/feat")][:2] == [None, B]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from Linux's /proc")
def test_a_lock_whose_pid_another_process_took_since_is_stale(tmp_path):
    """A lock left by a killed process whose pid a live process has now (a restarted container's
    job is pid 1 again) was never judged stale: every command waited and failed with LockHeld."""
    from mvc.files import hostname, process_start
    path = str(tmp_path / "main.lock")
    lock = LockFile(path)
    with lock:
        assert json.loads(open(path).read())["start"] == process_start(os.getpid())
        assert lock.stale() is None  # held by this very process
    boot, _ticks = process_start(os.getpid()).split(":")
    for start, stale in ((process_start(os.getpid()), False), (f"{boot}:1", True), ("another-boot:5", True)):
        with open(path, "w") as f:
            json.dump({"pid": os.getpid(), "host": hostname(), "time": time.time(), "start": start}, f)
        assert bool(LockFile(path).stale()) is stale, start
    refs = RefStore(str(tmp_path / "r"))
    os.makedirs(tmp_path / "r" / "refs" / "heads")
    with open(tmp_path / "r" / "refs" / "heads" / "main.lock", "w") as f:
        json.dump({"pid": os.getpid(), "host": hostname(), "time": time.time(), "start": f"{boot}:1"}, f)
    with pytest.warns(UserWarning, match="its pid is another process's now"):
        refs.update("refs/heads/main", A, expected=None, message="one")
    assert refs.read("refs/heads/main") == A


def test_a_ref_this_user_may_not_read_is_skipped_by_listings_and_stops_gc(tmp_path, monkeypatch):
    """On a shared repository, a branch another member made with umask 077 stopped `mvc log` and
    `mvc branch` for everyone (permission denied); an unreadable ref folder was already skipped."""
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    refs.update("refs/heads/private", B, expected=None, message="two")
    real = RefStore.read

    def read(self, ref, *a, **kw):
        if ref == "refs/heads/private":
            raise PermissionError(13, "Permission denied", str(tmp_path / "refs" / "heads" / "private"))
        return real(self, ref, *a, **kw)
    monkeypatch.setattr(RefStore, "read", read)
    with pytest.warns(UserWarning, match="skipped .*private: permission denied"):
        assert refs.list() == {"refs/heads/main": A}
    bad = {}
    assert refs.list(bad=bad) == {"refs/heads/main": A} and "permission denied" in bad["refs/heads/private"]
    with pytest.raises(PermissionError):  # what gc keeps counts every ref: it stops
        refs.list(strict=True)


def test_a_deleted_branchs_reflog_that_cannot_be_moved_is_said(tmp_path, monkeypatch):
    """When the log could not be moved to logs/deleted (a sticky folder holding another user's file),
    branch -d said nothing, and a branch made again under that name listed the old entries."""
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/feat", A, expected=None, message="one")
    real = os.rename

    def refused(src, dst, *a, **k):
        if "deleted" in str(dst):
            raise PermissionError(13, "Permission denied", src, None, dst)
        return real(src, dst, *a, **k)
    monkeypatch.setattr(mvc.refs.os, "rename", refused)
    with pytest.warns(UserWarning, match="the reflog of deleted refs/heads/feat stays at .*permission denied"):
        refs.update("refs/heads/feat", None, expected=A, message="deleted")
    assert refs.read("refs/heads/feat") is None


@pytest.mark.parametrize("text", ["", "\n", "  \n"])
def test_an_empty_ref_file_is_damage_not_an_unborn_branch(tmp_path, text):
    """An empty refs/heads/main (a write a crash cut short where data is not journalled) read as a
    branch with no commits: fsck ok, and the next commit a root commit cutting main off its history
    (probe h41)."""
    repo = mvc.Repo.init(tmp_path / "r")
    first = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    (tmp_path / "r" / ".mvc" / "refs" / "heads" / "main").write_text(text)
    assert [p["id"] for p in repo.fsck()["problems"]] == ["refs/heads/main"]
    with pytest.raises(mvc.CorruptObject, match="ref refs/heads/main is an empty file"):
        repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    assert repo.refs.read_raw("refs/heads/main") == "" and repo.store.has(first)


def test_a_branch_made_again_after_a_delete_killed_before_its_log_was_retired_starts_a_new_reflog(tmp_path,
                                                                                                  monkeypatch):
    """branch -d removes the ref file, then retires its log: a kill in between left the log in
    place, and a branch made again under that name went on with it (exp@{2} named a commit the new
    branch never held) (probe h41)."""
    repo = mvc.Repo.init(tmp_path / "r")
    one = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    two = repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    repo.create_branch("exp", one)
    repo.refs.update("refs/heads/exp", two, expected=one, message="moved")
    monkeypatch.setattr(RefStore, "_retire_log", lambda self, ref: None)  # (the kill)
    repo.delete_branch("exp")
    monkeypatch.undo()
    assert os.path.isfile(tmp_path / "r" / ".mvc" / "logs" / "refs" / "heads" / "exp")
    repo.create_branch("exp", two)
    assert [e["new"] for e in repo.reflog("exp")] == [two]
    retired = list((tmp_path / "r" / ".mvc" / "logs" / "deleted" / "refs" / "heads").glob("exp@*"))
    assert len(retired) == 1 and one in retired[0].read_text()  # (kept, as a deleted branch's log is)


def test_reflog_selectors_take_qualified_names(tmp_path):
    """heads/main and refs/heads/main resolve, but heads/main@{1} was an unknown branch (h41)."""
    repo = mvc.Repo.init(tmp_path / "r")
    one = repo.commit({"m": {"w": torch.ones(3)}}, message="one")
    repo.commit({"m": {"w": torch.zeros(3)}}, message="two")
    repo.tag("v1", one)
    for name in ("main@{1}", "heads/main@{1}", "refs/heads/main@{1}"):
        assert repo.resolve(name) == one, name
    assert repo.resolve("tags/v1@{0}") == one
    with pytest.raises(mvc.errors.UnknownRevision, match="unknown branch 'heads/nope'"):
        repo.resolve("heads/nope@{1}")


def test_a_reserve_write_interrupted_leaves_no_temp_file_and_gc_sweeps_a_killed_ones(tmp_path, monkeypatch):
    """keep_reserve removed its temp copy only on OSError: a Ctrl-C left 256 KiB that nothing ever
    removed, not even gc --grace 0 (probe h41)."""
    from mvc import maintenance
    repo = mvc.Repo.init(tmp_path / "r")
    os.unlink(os.path.join(repo.dir, maintenance.RESERVE))

    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        maintenance.keep_reserve(repo.dir)
    monkeypatch.undo()
    assert not [n for n in os.listdir(repo.dir) if n.startswith("reserve")]
    killed = os.path.join(repo.dir, "reserve.12345.tmp")  # (what a kill -9 leaves)
    with open(killed, "wb") as f:
        f.write(bytes(1000))
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    repo.gc(grace_s=0)
    assert not os.path.exists(killed) and os.path.exists(os.path.join(repo.dir, maintenance.RESERVE))


KILLED_IN_REF_WRITE = """
import os, sys
import mvc, mvc.refs
repo = mvc.Repo(sys.argv[1])
die = lambda *a, **k: os.kill(os.getpid(), 9)  # killed after the reflog entry, before the ref file changes
mvc.refs.atomic_write = die
real_unlink = os.unlink
os.unlink = lambda p, *a, **k: die() if str(p).endswith(os.path.join("refs", "heads", "exp")) else real_unlink(p, *a, **k)
repo.{call}
"""


@pytest.mark.parametrize("call,kept", [("rollback()", 2), ("delete_branch('exp')", 1)])
def test_a_move_killed_between_its_reflog_entry_and_its_ref_is_not_in_the_reflog(repo, call, kept):
    """The entry is written first: a kill -9 before the ref file moved left an entry for a move that
    never happened. main@{0} named the commit main was not at, and after the next move @{1} was the
    phantom's target, so `mvc rollback @{1}` did not go back to where main had been."""
    import subprocess
    import sys
    c1 = repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    c2 = repo.commit({"core": {"w": torch.arange(4.0)}}, message="two")
    repo.create_branch("exp")
    ref = "refs/heads/main" if "rollback" in call else "refs/heads/exp"
    log = os.path.join(repo.dir, "logs", *ref.split("/"))
    before = open(log, "rb").read()
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_REF_WRITE.format(call=call), repo.root])
    assert proc.returncode == -9 and repo.refs.read(ref) == c2
    assert len(open(log, "rb").read()) > len(before)  # the killed move's entry is there
    assert repo.refs.reflog(ref)[0]["new"] == c2  # ... and not shown
    assert repo.resolve(ref[len("refs/heads/"):] + "@{0}") == c2
    assert len(repo.refs.reflog(ref)) == kept
    if "rollback" in call:
        assert repo.resolve("main@{1}") == c1
        c3 = repo.commit({"core": {"w": torch.zeros(4)}}, message="three")  # (it breaks the dead owner's lock)
        assert open(log, "rb").read().startswith(before) and [e["new"] for e in repo.refs.reflog(ref)] == [c3, c2, c1]
        assert repo.resolve("main@{1}") == c2
    else:
        repo.delete_branch("exp")
        assert [(e["old"], e["new"]) for e in repo.refs.reflog(ref)] == [(c2, None), (None, c2)]
    assert repo.fsck()["ok"]


def _killed_entry(tmp_path, ref, old, new, message="killed"):
    """What a move killed between its reflog entry and its ref file leaves: the entry alone."""
    log = tmp_path / "logs" / ref
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(json.dumps({"old": old, "new": new, "time": "2026-01-01T00:00:00Z", "author": "",
                            "message": message}) + "\n")


def test_a_killed_creation_s_entry_is_cut_not_retired_with_the_log(tmp_path):
    """A creation killed before its ref file existed: the next creation retired the whole log, the
    phantom with it, and once the branch was deleted `reflog` listed a commit it never held."""
    refs = RefStore(str(tmp_path))
    _killed_entry(tmp_path, "refs/heads/x", None, A)
    assert refs.reflog("refs/heads/x") == []
    refs.update("refs/heads/x", B, expected=None, message="made")
    assert [(e["old"], e["new"]) for e in refs.reflog("refs/heads/x")] == [(None, B)]
    refs.update("refs/heads/x", None, expected=B, message="gone")
    assert A not in refs.all_reflog_ids() and [e["new"] for e in refs.reflog("refs/heads/x")] == [None, B]


def test_a_killed_move_with_a_long_message_is_cut_too(tmp_path):
    """A 70,000-character message made an entry longer than the tail read: it was not cut."""
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    _killed_entry(tmp_path, "refs/heads/main", A, B, message="m" * 70_000)
    refs.update("refs/heads/main", C, expected=A, message="two")
    assert [(e["old"], e["new"]) for e in refs.reflog("refs/heads/main")] == [(A, C), (None, A)]
    assert B not in refs.all_reflog_ids()


def test_a_killed_move_is_cut_from_a_reflog_that_is_a_link(tmp_path):
    """The cut refused to open a linked log while the append went through the link: the entry stayed."""
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    log = tmp_path / "logs" / "refs" / "heads" / "main"
    os.rename(log, tmp_path / "elsewhere.log")
    os.symlink(tmp_path / "elsewhere.log", log)
    _killed_entry(tmp_path, "refs/heads/main", A, B)
    refs.update("refs/heads/main", C, expected=A, message="two")
    assert [(e["old"], e["new"]) for e in refs.reflog("refs/heads/main")] == [(A, C), (None, A)]
    assert B not in refs.all_reflog_ids()

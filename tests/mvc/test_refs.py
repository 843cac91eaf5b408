"""Refs: compare-and-swap updates, reflogs, symbolic HEAD, lock files."""
import json
import os
import socket
import subprocess
import sys

import pytest

from mvc.errors import BadName, LockHeld, RefConflict
from mvc.files import LockFile
from mvc.refs import RefStore

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_cas_update_and_reflog(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    refs.update("refs/heads/main", B, expected=A, message="two")
    with pytest.raises(RefConflict):
        refs.update("refs/heads/main", C, expected=A, message="stale")
    assert refs.read("refs/heads/main") == B
    log = refs.reflog("refs/heads/main")
    assert [(e["old"], e["new"], e["message"]) for e in log] == [(A, B, "two"), (None, A, "one")]


def test_symbolic_head_follows_branch(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.set_symbolic("HEAD", "refs/heads/main")
    assert refs.read("HEAD") is None and refs.head_target() == "refs/heads/main"
    refs.update("HEAD", A, expected=None)
    assert refs.read("refs/heads/main") == A and refs.read("HEAD") == A


def test_bad_names_refused(tmp_path):
    refs = RefStore(str(tmp_path))
    for bad in ("refs/heads/../x", "refs/heads/a b", "refs/heads/x.lock", "refs/heads/" + "a" * 64):
        with pytest.raises(BadName):
            refs.update(bad, A)


def test_lock_held_by_live_process_times_out(tmp_path):
    path = str(tmp_path / "x.lock")
    with LockFile(path):
        with pytest.raises(LockHeld, match="locked by process"):
            LockFile(path, timeout=0.1).acquire()


def test_stale_lock_of_dead_process_is_broken(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "time": 0}))
    with pytest.warns(UserWarning, match="stale lock"):
        with LockFile(str(path), timeout=0.5):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_torn_reflog_line_is_skipped(tmp_path):
    refs = RefStore(str(tmp_path))
    refs.update("refs/heads/main", A, expected=None, message="one")
    with open(tmp_path / "logs" / "refs" / "heads" / "main", "a") as f:
        f.write('{"old": "trunc')
    assert [e["new"] for e in refs.reflog("refs/heads/main")] == [A]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_waiter_that_judged_a_lock_stale_never_removes_the_one_taken_since(tmp_path):
    """Two waiters on a stale lock: B judged it stale, A broke it and took the lock, then B's
    check-then-unlink removed A's live lock and both held it (two pushes 'succeeded', one was lost)."""
    path = str(tmp_path / "main.lock")
    with open(path, "w") as f:
        json.dump({"pid": _dead_pid(), "host": socket.gethostname(), "time": 0}, f)
    b = LockFile(path, timeout=0.2)
    assert b._stale_reason(b._owner(), os.stat(path))  # B's judgement, then B is preempted
    with pytest.warns(UserWarning, match="stale lock"):
        a = LockFile(path).acquire()
    b._break()  # B resumes
    assert os.path.exists(path) and json.loads(open(path).read())["pid"] == os.getpid()
    with pytest.raises(LockHeld):
        b.acquire()
    a.release()
    assert not os.listdir(tmp_path)  # no guard file left


def test_a_guard_left_by_a_killed_breaker_does_not_block_the_lock(tmp_path):
    path = tmp_path / "main.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "time": 0}))
    (tmp_path / ".main.lock.break").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="stale lock"):
        with LockFile(str(path), timeout=2):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not os.listdir(tmp_path)


def test_a_stale_lock_removed_by_hand_while_it_is_broken_is_no_error(tmp_path, monkeypatch):
    path = tmp_path / "main.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "time": 0}))
    real = LockFile._stale_reason

    def judged_then_removed(self, owner, st):  # the user follows the LockHeld hint meanwhile
        reason = real(self, owner, st)
        if reason and path.exists():
            path.unlink()
        return reason
    monkeypatch.setattr(LockFile, "_stale_reason", judged_then_removed)
    with LockFile(str(path), timeout=2):
        assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.skipif(not os.path.exists("/usr/share/zoneinfo/Australia/Sydney"), reason="no time zone data")
def test_reflog_times_read_the_same_in_a_zone_on_summer_time(monkeypatch):
    """Entries read an hour old in a zone on daylight saving time (mktime applies DST, the
    correction by time.timezone did not), so gc.reflogExpire let gc delete commits an hour early."""
    import time
    from mvc.refs import _entry_time
    entry = {"time": "2026-01-15T00:00:00Z"}  # January: summer time in Sydney
    monkeypatch.setenv("TZ", "Australia/Sydney")
    time.tzset()
    try:
        assert _entry_time(entry) == 1768435200
    finally:
        monkeypatch.undo()
        time.tzset()

"""A process forked while other threads of its parent are inside mvc (DataLoader workers beside a
background checkpoint thread): the child must not wait forever on a lock no thread of it will
release, nor keep the parent's flocks (a gc waited as long as the child lived) (h99)."""
import os
import threading
import time

import pytest
import torch

from mvc.files import exclusive_within, shared_or_exclusive

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_TIMEOUT_S = 20


def _in_child(work) -> int:
    """Fork; the child runs `work()` and exits 0 (1 on an exception, 2 when it hangs past
    CHILD_TIMEOUT_S); returns the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import signal
            signal.signal(signal.SIGALRM, lambda *_: os._exit(2))
            signal.alarm(CHILD_TIMEOUT_S)
            work()
            code = 0
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _holding(lock_cm):
    """A thread inside `lock_cm` (a context manager) until the returned event is set."""
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with lock_cm:
            inside.set()
            leave.wait(CHILD_TIMEOUT_S)
    th = threading.Thread(target=hold, daemon=True)
    th.start()
    assert inside.wait(5)
    return th, leave


@pytest.mark.parametrize("held", ["pack store", "object cache", "branch turn", "pack cache"])
def test_a_child_forked_while_another_thread_holds_a_lock_can_commit_and_load(repo, held):
    from mvc import repo as repo_mod
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    first = repo.commit({"m": {"w": torch.zeros(8)}}, message="root")
    pack(repo)  # (loads go through the pack store)
    packs = pack_store_of(repo.store)
    lock = {"pack store": packs._lock, "pack cache": packs.cache._lock, "object cache": repo._cache._lock,
            "branch turn": repo_mod._branch_turn(repo.dir, "refs/heads/main")}[held]
    th, leave = _holding(lock)

    def work():
        assert torch.equal(repo.load(first, "m")["w"], torch.zeros(8))
        repo.commit({"m": {"w": torch.ones(8)}}, message="from the child")
    try:
        assert _in_child(work) == 0
    finally:
        leave.set()
        th.join()
    assert repo.log()[0]["message"] == "from the child"


def test_a_child_does_not_keep_the_parents_write_lock(repo):
    lock = os.path.join(repo.dir, "writers.lock")
    th, leave = _holding(repo.writing())  # (a commit in flight in another thread)
    pid = os.fork()
    if pid == 0:  # a worker that never uses mvc and lives on
        time.sleep(CHILD_TIMEOUT_S)
        os._exit(0)
    try:
        leave.set()
        th.join()  # the parent's commit is over
        start = time.monotonic()
        with exclusive_within(lock, 5.0) as got:  # (a gc --grace 0 waited for the child)
            assert got is True and time.monotonic() - start < 4
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_the_forking_threads_own_hold_goes_on_in_the_child(repo):
    """A fork inside Repo.writing() (e.g. from a hook): the child holds it on until it leaves the
    block, and leaves it without error; another thread's hold is not the child's."""
    from mvc import files
    lock = os.path.abspath(os.path.join(repo.dir, "writers.lock"))
    th, leave = _holding(repo.writing())
    try:
        with repo.writing():
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    assert files._shared_holds[lock][1] == 1  # (its own; the other thread's is gone)
                    with shared_or_exclusive(lock, exclusive=False):
                        assert files._shared_holds[lock][1] == 2
                    code = 0
                finally:
                    if code:
                        os._exit(code)
            else:
                assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        if pid == 0:
            os._exit(0 if lock not in files._shared_holds else 3)
    finally:
        if pid != 0:
            leave.set()
            th.join()
    with exclusive_within(lock, 2.0) as got:
        assert got is True

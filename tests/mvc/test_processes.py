"""Real processes: kill -9 during commits leaves a consistent repository; concurrent committers lose
nothing; commands that do not compute on tensors never import torch."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import mvc

COMMIT_LOOP = textwrap.dedent("""
    import sys, torch, mvc
    repo = mvc.Repo(sys.argv[1])
    tag, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        g = torch.Generator().manual_seed(hash((tag, i)) % 2**31)
        repo.commit({"core": {"w": torch.randn(256, 256, generator=g), "i": torch.tensor(i)}},
                    message=f"{tag} {i}", metrics={"i": i})
        print(i, flush=True)
""")


def _spawn(repo_root, tag, n):
    return subprocess.Popen([sys.executable, "-c", COMMIT_LOOP, str(repo_root), tag, str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_9_during_commits_leaves_a_consistent_repository(repo):
    rng = random.Random(1234)
    for run in range(4):
        proc = _spawn(repo.root, f"run{run}", 1000)
        proc.stdout.readline()  # it has started committing
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fresh = mvc.Repo(repo.root)
        report = fresh.fsck()
        assert report["ok"], report["problems"]
        head = fresh.head()
        state = fresh.load(head, "core")
        assert state["w"].shape == (256, 256)
        assert fresh.read_commit(head)["metrics"]["i"] == int(state["i"])
    assert len(mvc.Repo(repo.root).log()) >= 4


@pytest.mark.slow
def test_two_processes_committing_to_one_branch_lose_nothing(repo):
    procs = [_spawn(repo.root, tag, 15) for tag in ("alpha", "beta")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    log = mvc.Repo(repo.root).log()
    messages = sorted(c["message"] for c in log)
    assert messages == sorted([f"alpha {i}" for i in range(15)] + [f"beta {i}" for i in range(15)])
    # a single linear history: every commit has exactly one parent except the root
    assert sum(1 for c in log if not c["parents"]) == 1


def test_non_tensor_commands_do_not_import_torch(repo):
    import torch
    repo.commit({"core": {"w": torch.ones(3)}}, message="x")
    script = textwrap.dedent(f"""
        import os, sys
        os.chdir({repo.root!r})
        from click.testing import CliRunner
        from mvc.cli import cli
        for args in (["log"], ["show"], ["branch"], ["tag"], ["reflog"], ["du"], ["status"], ["fsck"],
                     ["gc", "--dry-run"], ["branch", "b2"], ["switch", "b2"], ["rollback", "HEAD"]):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 0, (args, r.output)
        print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
    """).replace("import os, sys", "import os, sys, json")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_package_runs_nothing_before_the_commands_ctrl_c_guard():
    """`import mvc` imported mvc.errors: a Ctrl-C in those first milliseconds of `mvc log` printed a
    traceback instead of "error: interrupted" (h97). Its names still load on first use."""
    script = ("import sys, mvc; loaded = sorted(m for m in sys.modules if m.startswith('mvc.')); "
              "from mvc import MvcError, CorruptObject; import mvc.errors as e; "
              "print(loaded, MvcError is e.MvcError, issubclass(CorruptObject, MvcError), mvc.LockHeld is e.LockHeld, "
              "mvc.NonFastForward is e.NonFastForward, {'Repo', 'MvcError', 'BadName'} <= set(dir(mvc)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True True True True True"


@pytest.mark.parametrize("args,status", [(["diff", "HEAD~1", "HEAD", "--all"], 0), (["show"], 0), (["log"], 0),
                                         (["diff", "HEAD~1", "HEAD", "--all", "--exit-code"], 1)])
def test_a_reader_closing_the_pipe_early_is_not_a_failure(tmp_path, args, status):
    """`mvc diff A B | head -1` must exit 0 like `mvc log | head -1`: rich's own broken-pipe
    handling exited 1, which in mvc means "differs" (a `set -o pipefail` script misread it);
    and a result decided before printing (diff --exit-code finding changes) stays 1."""
    import torch
    repo = mvc.Repo.init(tmp_path)
    g = torch.Generator().manual_seed(0)
    for msg in ("a", "b"):  # output far larger than a pipe's buffer
        repo.commit({"model": {f"layer.{i}.weight": torch.randn(4, generator=g) for i in range(3000)}}, message=msg)
    proc = subprocess.Popen([sys.executable, "-m", "mvc", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    assert proc.wait(timeout=60) == status, proc.stderr.read().decode()
    assert first.strip() and not proc.stderr.read().strip()


@pytest.mark.parametrize("args", [["--help"], ["--version"], [], ["log", "--help"]])
def test_help_to_a_reader_that_closed_the_pipe_exits_0(tmp_path, args):
    """h77: `mvc --help | true` exited 1 (click's broken-pipe exit; in mvc a negative result) while
    `mvc log --help | true` exited 0: the top level's help is printed before mvc's own handling."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "mvc", *args], cwd=tmp_path, stdout=write,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr.decode()


@pytest.mark.parametrize("args", [["--bogus"], ["log", "--bogus"], ["commit", "--nope"]])
def test_a_usage_error_whose_line_cannot_be_written_still_exits_2(tmp_path, args):
    """h79: with stderr a closed pipe (`mvc --bogus 2>&1 | true`), the help rule above made a usage
    error exit 0; h81: a subcommand's exited 1 (click's broken-pipe exit)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "mvc", *args], cwd=tmp_path, stdout=write, stderr=write,
                              timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 2


@pytest.mark.parametrize("args", [["export", "HEAD", "model", "-o", "-"], ["cat-object", "BLOB"]])
def test_a_reader_closing_the_pipe_before_a_data_stream_ends_is_a_failure(tmp_path, args):
    """`mvc export -o - | ssh ...` whose reader went away exited 0: a file cut short is not a
    listing whose reader had all it wanted (probe h8). A large write cut short by the closed pipe
    was also taken as whole (BufferedWriter.write returns a short count instead of raising)."""
    import torch
    repo = mvc.Repo.init(tmp_path)
    repo.commit({"model": {"w": torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))}}, message="a")
    args = [repo.tree("HEAD", "model")["tensors"]["w"]["id"] if a == "BLOB" else a for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "mvc", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert len(proc.stdout.read(1000)) == 1000
    proc.stdout.close()  # what `head -c 1000` does
    assert proc.wait(timeout=60) == 3
    assert proc.stderr.read().decode().startswith("error: cannot write to standard output: its reader closed it")


def test_ctrl_c_while_the_command_starts_is_one_line_not_a_traceback():
    """A SIGINT in the first ~0.1 s of any command (while it imports) printed a traceback."""
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Interrupt(importlib.abc.MetaPathFinder):  # Ctrl-C arrives while click is imported
            def find_spec(self, name, path, target=None):
                if name == "click":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["mvc", "log"]
        from mvc.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip() == "error: interrupted", proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_device_is_not_called_a_full_repository_disk(tmp_path):
    """`mvc commit ... > /dev/full` landed, then said "no space left on device (...; free some
    space and retry)", inviting a second commit of the same checkpoint."""
    import torch
    from safetensors.torch import save_file
    repo = mvc.Repo.init(tmp_path)
    save_file({"w": torch.ones(4)}, str(tmp_path / "m.safetensors"))
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "mvc", "commit", "m.safetensors", "-m", "one"], cwd=tmp_path,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    head = mvc.Repo(tmp_path).resolve("HEAD")
    assert proc.returncode == 3 and proc.stderr.strip() == (
        f"error: cannot write to standard output: No space left on device (it had moved refs/heads/main to {head[:12]}, "
        "which stays: see mvc reflog; the rest stopped; what it printed is lost)"), proc.stderr
    assert repo.log()[0]["message"] == "one"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["cat-object", "HEAD"], ["export", "HEAD", "m", "-o", "-"], ["log"]])
def test_binary_output_to_a_full_device_is_said_as_text_output_is(tmp_path, args):
    """cat-object and export -o - write bytes past click.echo: `> /dev/full` said "no space left on
    device (...; free some space and retry)", as if the repository's disk were full."""
    import torch
    repo = mvc.Repo.init(tmp_path)
    repo.commit({"m": {"w": torch.ones(4)}}, message="one")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "mvc", *args], cwd=tmp_path, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stderr == ("error: cannot write to standard output: No space left on "
                                                    "device (nothing was moved; what it printed is lost)\n")


def test_text_the_terminal_cannot_encode_is_escaped_and_unspellable_names_are_bad_input(tmp_path):
    """Under PYTHONIOENCODING=ascii, `mvc show` of a message holding "\u2713" crashed (exit 4, a
    traceback); under a C locale without UTF-8 mode, checking out a file named with "\u00e8" did too."""
    import os as _os

    import torch
    repo = mvc.Repo.init(tmp_path)
    repo.commit({"model": {"w": torch.ones(2)}}, message="ok \u2713")
    env = {**_os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "mvc", "show"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "ok \\u2713" in proc.stdout, proc.stderr
    env = {**_os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("LANG", None)
    from safetensors.torch import save_file
    (tmp_path / "d").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "d" / "mod\u00e8le.safetensors"))
    repo.commit({"dir": str(tmp_path / "d")}, message="a name in UTF-8")
    proc = subprocess.run([sys.executable, "-m", "mvc", "checkout", "HEAD", "-o", "out"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 3 and b"cannot be written in this locale's encoding" in proc.stderr, proc.stderr


def test_main_called_in_process_leaves_ctrl_c_working():
    """main() ignored SIGINT and SIGTERM once it returned (meant for the exiting `mvc` command):
    a notebook or wrapper calling it could no longer be stopped, nor could its children."""
    code = textwrap.dedent("""
        import signal
        from mvc.cli import main
        before = signal.getsignal(signal.SIGINT)
        try:
            main(["--version"])
        except SystemExit:
            pass
        print(signal.getsignal(signal.SIGINT) is before)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stderr


def test_a_branch_made_at_an_unreachable_commit_while_gc_deletes_it_waits_and_is_refused(repo, monkeypatch):
    """`mvc branch rescue <id>` run while a gc decided what is live and deleted the rest made a
    branch naming a deleted commit (fsck: missing, referenced by a ref; h54). Ref moves now hold
    the writers lock shared, as commits do: the branch waits for the gc and is refused after it."""
    import torch

    from mvc.maintenance import Maintenance
    repo.commit({"m": {"w": torch.zeros(4)}}, message="root")
    gone = repo.commit({"m": {"w": torch.ones(4)}}, message="garbage", branch="x")
    repo.delete_branch("x")
    repo.set_config("gc.reflogExpire", "0")  # (its reflog entries expire at this gc)
    real, procs = Maintenance.recently_referenced, []

    def branch_meanwhile(self, live, grace):  # gc has walked refs and reflogs; it deletes next
        if gone not in live and not procs:
            procs.append(subprocess.Popen([sys.executable, "-m", "mvc", "branch", "rescue", gone], cwd=repo.root,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            time.sleep(2.0)  # (before: the branch landed meanwhile)
        return real(self, live, grace)
    monkeypatch.setattr(Maintenance, "recently_referenced", branch_meanwhile)
    repo.gc(grace_s=0)
    _out, err = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 3 and gone[:12] in err, err
    assert "rescue" not in mvc.Repo(repo.root).branches()
    assert mvc.Repo(repo.root).fsck()["ok"]


SAVE_ON_SIGTERM = textwrap.dedent("""
    import os, signal, sys, time, torch, mvc
    from mvc import refs as R
    import mvc.pack_write as pw
    repo = mvc.Repo(sys.argv[1])
    case = sys.argv[2]
    repo.commit({"core": {"w": torch.ones(4)}}, message="start")
    def on_sigterm(signum, frame):  # a training loop's save-on-preemption
        cid = repo.commit({"core": {"w": torch.zeros(4)}}, message="preempted")
        print("handler committed", cid, flush=True)
        if case in ("blobs", "lazy"):
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_sigterm)
    sent = []
    def send():
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
    if case == "blobs":  # while the periodic commit stores its blobs
        repo.commit({"core": {f"w{i}": torch.randn(100_000) for i in range(6)}}, message="periodic",
                    progress=lambda n: send())
    elif case == "ref":  # while its branch moves (signals held back there)
        move = R.RefStore._logged_move
        R.RefStore._logged_move = lambda self, *a: (send(), move(self, *a))[1]
        repo.commit({"core": {"w": torch.full((4,), 2.0)}}, message="periodic")
        print("periodic commit returned", flush=True)
    elif case == "gc":  # while gc holds the writers lock exclusively (with garbage to pack)
        repo.commit({"core": {"w": torch.randn(1000)}}, message="garbage")
        repo.rollback()
        real = pw.hash_bytes
        pw.hash_bytes = lambda data: (send(), real(data))[1]
        repo.gc(grace_s=0)
        print("gc returned", flush=True)
    elif case == "lazy":  # while a lazy clone's load holds its batch of fetched blobs open
        from mvc import remote as rm
        from mvc.store import LooseStore
        repo.commit({"core": {f"w{i}": torch.randn(64) for i in range(4)}}, message="four")
        rm.push(repo, sys.argv[1] + "-remote")
        lazy, _ = rm.clone(sys.argv[1] + "-remote", sys.argv[1] + "-lazy", lazy=True)
        repo = lazy  # (the handler commits here)
        real = LooseStore.batch_slots
        LooseStore.batch_slots = lambda self: (send(), real(self))[1]
        lazy.load("HEAD", "core")
        print("load returned", flush=True)
    else:  # a commit inside a commit without a signal (a progress callback that commits): refused inside gc
        repo.commit({"core": {"w": torch.randn(1000)}}, message="garbage")
        repo.rollback()
        real = pw.hash_bytes
        def commits_inside(data):
            try:
                repo.commit({"core": {"w": torch.zeros(4)}}, message="inside gc")
            except mvc.LockHeld as e:
                print("refused:", e, flush=True)
                pw.hash_bytes = real
            return real(data)
        pw.hash_bytes = commits_inside
        repo.gc(grace_s=0)
""")


@pytest.mark.parametrize("case", ["blobs", "ref", "gc", "lazy", "callback"])
def test_a_signal_handler_that_commits_inside_a_commit_or_gc_neither_damages_nor_hangs(tmp_path, case):
    """A SIGTERM handler that commits (save on preemption) ran inside the mvc call its thread was in:
    inside a commit its objects joined that commit's batch and were deleted with it when the handler
    ended the process, the branch naming a missing commit (h114 03); inside a ref move, its commit
    waited 10 s for the ref's lock and failed (h114 04), or forever for the branch's turn; inside gc,
    forever for its own process's exclusive lock (h114 07); inside a lazy load, a lock wait or a
    pack lookup, it joined the load's batch or hung (h115 01-04). A program's own handlers now run
    once the call returns; a commit from a callback inside gc is refused at once."""
    repo = mvc.Repo.init(tmp_path / "r")
    p = subprocess.run([sys.executable, "-c", SAVE_ON_SIGTERM, str(repo.root), case], capture_output=True,
                       text=True, timeout=60)
    fresh = mvc.Repo(repo.root)
    assert fresh.fsck()["ok"]
    messages = [c["message"] for c in fresh.log()]
    if case == "blobs":  # (the periodic commit lands, then the handler's, which ends the process)
        assert p.returncode == 0 and "handler committed" in p.stdout and messages == ["preempted", "periodic", "start"]
    elif case == "ref":
        assert p.returncode == 0 and "periodic commit returned" in p.stdout, p.stderr
        assert messages == ["preempted", "periodic", "start"]
    elif case == "gc":
        assert p.returncode == 0 and "handler committed" in p.stdout and "gc returned" in p.stdout, p.stdout
        assert messages == ["preempted", "start"]
    elif case == "lazy":  # (the load returns to the handler, which commits in the lazy clone and ends it)
        lazy = mvc.Repo(str(repo.root) + "-lazy")
        assert p.returncode == 0 and "handler committed" in p.stdout and lazy.fsck()["ok"], p.stdout + p.stderr
        assert [c["message"] for c in lazy.log()] == ["preempted", "four", "start"] and messages == ["four", "start"]
    else:
        assert p.returncode == 0 and "refused: this thread holds" in p.stdout and messages == ["start"], p.stdout


def test_a_program_s_handlers_wait_for_the_call_but_ctrl_c_and_handlers_installed_meanwhile_do_not(tmp_path):
    """Held: SIGTERM and SIGUSR1 (SLURM's --signal=USR1@90: it ran inside the call, h116 01/02). Not
    held: SIGINT, whose program handler (asyncio's) must stop a long call (h116 03). A handler the
    call itself installs stays (it was put back to the one seen before, h116 04)."""
    from mvc.interrupts import call_holding_user_handlers
    ran = []
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, lambda signum, frame: ran.append(signum))

        def call():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGUSR1)
            ran.append("call ends")
            return "result"
        assert call_holding_user_handlers(call) == "result"
        assert ran == ["call ends", signal.SIGTERM, signal.SIGUSR1]

        class Stop(Exception):
            pass

        def stop(signum, frame):
            raise Stop()
        signal.signal(signal.SIGINT, stop)
        with pytest.raises(Stop):
            call_holding_user_handlers(lambda: (signal.raise_signal(signal.SIGINT), ran.append("went on")))
        assert "went on" not in ran

        def installs():
            signal.signal(signal.SIGTERM, stop)
        call_holding_user_handlers(installs)
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_a_ctrl_c_while_handlers_are_put_back_leaves_none_replaced(monkeypatch):
    """A Ctrl-C between putting back SIGINT's handler and SIGTERM's (interrupts_deferred, around a
    ref move) raised KeyboardInterrupt out of the loop: SIGTERM's handler stayed the one that only
    collects, for good (h116 05). The swap runs with the signals blocked: the Ctrl-C comes after."""
    from mvc import interrupts
    term = signal.getsignal(signal.SIGTERM)
    mine = lambda signum, frame: None  # noqa: E731 (a program's SIGTERM handler)
    signal.signal(signal.SIGTERM, mine)
    real, calls = signal.signal, []

    def swapping(s, h):  # a Ctrl-C right after the first handler is put back
        out = real(s, h)
        calls.append(s)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    try:
        monkeypatch.setattr(interrupts.signal, "signal", swapping)
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interrupts_deferred():
                pass
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, term)

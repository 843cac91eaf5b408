"""mvc inside git work trees (DESIGN.md 10): `mvc init` makes git ignore .mvc/ in every layout git
has (worktrees, submodules, --separate-git-dir, odd folder names, odd exclude files), the work tree
is found as git finds it (GIT_CEILING_DIRECTORIES, file-system boundaries, GIT_DIR ignored), and
provenance and authors stay true when git cannot run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import mvc
from mvc import provenance
from mvc.cli import cli
from mvc.errors import BadInput

ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture(autouse=True)
def plain_env(monkeypatch):
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CEILING_DIRECTORIES", "MVC_AUTHOR",
                "GIT_DISCOVERY_ACROSS_FILESYSTEM"):
        monkeypatch.delenv(var, raising=False)
    for k, v in ID.items():
        monkeypatch.setenv(k, v)


def git(cwd, *args, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=check, env=env)


def new_git(path, branch="main", commit=True):
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    if commit:
        git(path, "commit", "-q", "--allow-empty", "-m", "i")
    return path


def ignored(work, rel) -> bool:
    return git(work, "check-ignore", "-q", rel, check=False).returncode == 0


def model(path, n=4):
    save_file({"w": np.arange(n, dtype=np.float32)}, str(path))
    return str(path)


def exclude_of(work) -> bytes:
    return (work / ".git" / "info" / "exclude").read_bytes()


# -- the exclude ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["worktree", "submodule", "separate-git-dir"])
def test_init_ignores_mvc_where_dot_git_is_a_file(tmp_path, layout):
    """Before: the entry was made relative to the folder holding the git dir (`/../wt/.mvc/`, never
    written) so .mvc/ showed up as untracked in every gitfile layout."""
    if layout == "worktree":
        git(new_git(tmp_path / "main"), "worktree", "add", "-q", "-b", "feat", str(tmp_path / "w"))
    elif layout == "submodule":
        new_git(tmp_path / "sub0")
        git(new_git(tmp_path / "sup"), "-c", "protocol.file.allow=always", "submodule", "add", "-q",
            str(tmp_path / "sub0"), "w")
        (tmp_path / "w").symlink_to(tmp_path / "sup" / "w")
    else:
        (tmp_path / "w").mkdir()
        git(tmp_path / "w", "init", "-q", "-b", "main", f"--separate-git-dir={tmp_path / 'sep.git'}")
    work = tmp_path / "w"
    mvc.Repo.init(work / "models")
    assert ignored(work, "models/.mvc/HEAD")
    assert b"/models/.mvc/\n" in (tmp_path / {"worktree": "main/.git", "submodule": "sup/.git/modules/w",
                                              "separate-git-dir": "sep.git"}[layout] / "info" / "exclude").read_bytes()


def test_a_stale_gitfile_makes_init_create_nothing_outside(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".git").write_text(f"gitdir: {tmp_path}/gone/.git/worktrees/p\n")
    repo = mvc.Repo.init(tmp_path / "p")
    assert not (tmp_path / "gone").exists()  # before: gone/.git/worktrees/p/info/ was made
    assert provenance.git_work_tree(repo.root) is None  # git says: not a git repository


@pytest.mark.parametrize("name", ["model [v2]", "a\\b", "x*", "x?y", "#x", "!x", "trail  ", " lead", "a]b"])
def test_the_exclude_line_is_escaped_for_gitignore(tmp_path, name):
    work = new_git(tmp_path / "g", commit=False)
    (work / "other").mkdir()
    (work / "other" / ".mvc").mkdir()  # a look-alike the pattern must not match
    mvc.Repo.init(work / name)
    assert ignored(work, f"{name}/.mvc/HEAD"), exclude_of(work)
    assert not ignored(work, "other/.mvc/x")


def test_init_copes_with_non_utf8_exclude_and_folder_names(tmp_path):
    work = new_git(tmp_path / "g", commit=False)
    (work / ".git" / "info" / "exclude").write_bytes(b"# caf\xe9\n*.o")  # no final newline either
    mvc.Repo.init(work / "a")  # before: UnicodeDecodeError after .mvc was made (exit 4)
    assert exclude_of(work) == b"# caf\xe9\n*.o\n/a/.mvc/\n"
    odd = os.path.join(os.fsencode(work), b"caf\xe9")
    mvc.Repo.init(os.fsdecode(odd))  # before: UnicodeEncodeError
    assert exclude_of(work).endswith(b"\n/caf\xe9/.mvc/\n")
    assert git(work, "status", "--porcelain", "--ignored=no").stdout == b""


def test_an_exclude_that_cannot_be_updated_is_a_warning_not_a_failed_init(tmp_path):
    work = new_git(tmp_path / "g", commit=False)
    (work / ".git" / "info" / "exclude").unlink()
    (work / ".git" / "info" / "exclude").mkdir()  # unreadable as a file, even for root
    with pytest.warns(UserWarning, match="could not add /r/.mvc/ to .*exclude"):
        repo = mvc.Repo.init(work / "r")
    assert os.path.isdir(repo.dir)
    r = CliRunner().invoke(cli, ["init", str(work / "s")], catch_exceptions=False)
    assert r.exit_code == 0 and "warning: could not add /s/.mvc/" in r.output  # before: exit 3


def test_reinit_adds_the_exclude_once_without_blank_lines(tmp_path):
    work = tmp_path / "p"
    work.mkdir()
    mvc.Repo.init(work)  # before git init: nothing to exclude yet
    new_git(work, commit=False)
    (work / ".git" / "info" / "exclude").write_bytes(b"*.o\n")
    mvc.Repo.init(work)  # before: "Reinitialized" and nothing added
    mvc.Repo.init(work)
    assert exclude_of(work) == b"*.o\n/.mvc/\n"
    assert ignored(work, ".mvc/HEAD")


# -- finding the work tree as git does ------------------------------------------------------------
def test_git_ceiling_directories_are_honoured(tmp_path, monkeypatch):
    home = new_git(tmp_path / "home", branch="dotfiles")
    proj = home / "proj"
    proj.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", f"/nonexistent:relative:{home}")
    repo = mvc.Repo.init(proj)
    cid = repo.commit({"m": model(proj / "m.safetensors")}, message="x")
    assert repo.refs.head_target() == "refs/heads/main"  # before: mvc branch "dotfiles"
    assert repo.read_commit(cid)["provenance"] == {}
    assert b"/proj/" not in exclude_of(home)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(proj))  # a ceiling does not hide the start itself
    assert provenance.git_work_tree(proj) == (str(home), str(home / ".git"))
    (proj / ".git").mkdir()  # not a git dir (no HEAD, objects, refs): git looks further up, as here
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", "")
    assert provenance.git_work_tree(proj) == (str(home), str(home / ".git"))


def test_discovery_stops_at_a_file_system_boundary(tmp_path, monkeypatch):
    outer = new_git(tmp_path / "outer", commit=False)
    inner = outer / "mnt" / "proj"
    inner.mkdir(parents=True)
    real_stat = os.stat

    def stat(path, *a, **k):  # outer/mnt is a mount point: what is below it is another device
        st = real_stat(path, *a, **k)
        if not os.fspath(path).startswith(str(outer / "mnt")):
            return st
        fields = list(st)
        fields[2] += 1  # st_dev
        return os.stat_result(fields)

    monkeypatch.setattr(provenance.os, "stat", stat)
    assert provenance.git_work_tree(inner) is None
    monkeypatch.setenv("GIT_DISCOVERY_ACROSS_FILESYSTEM", "true")
    assert provenance.git_work_tree(inner) == (str(outer), str(outer / ".git"))


def test_git_dir_in_the_environment_does_not_mix_two_repositories(tmp_path, monkeypatch):
    a, b = new_git(tmp_path / "A"), new_git(tmp_path / "B", branch="other")
    (b / "f").write_text("1")
    git(b, "add", "f")
    git(b, "commit", "-qm", "f")
    (b / "f").write_text("dirty")
    repo = mvc.Repo.init(a)
    monkeypatch.setenv("GIT_DIR", str(b / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(b))
    monkeypatch.setenv("GIT_INDEX_FILE", str(b / ".git" / "index"))
    cid = repo.commit({"m": model(a / "m.safetensors")}, message="x")
    sha_a = git(a, "rev-parse", "HEAD").stdout.decode().strip()
    assert repo.read_commit(cid)["provenance"]["git"] == {"sha": sha_a, "branch": "main", "dirty": False}
    assert os.environ["GIT_DIR"] == str(b / ".git")  # (the caller's environment is left as it was)


def test_provenance_never_changes_the_process_environment_meanwhile(tmp_path, monkeypatch):
    """GIT_DIR & co. were popped from os.environ for the length of every commit's git call: other
    threads (and the processes they start) saw them missing."""
    import threading
    a = new_git(tmp_path / "A")
    monkeypatch.setenv("GIT_DIR", str(a / ".git"))
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add(os.environ.get("GIT_DIR"))
    t = threading.Thread(target=watch)
    t.start()
    try:
        for _ in range(5):
            assert provenance.git_provenance(str(a))["git"]["dirty"] is False
            provenance.default_author(str(a))
    finally:
        stop.set()
        t.join()
    assert seen == {str(a / ".git")}


def test_sha_and_branch_are_read_from_packed_refs_and_worktrees(tmp_path):
    main = new_git(tmp_path / "main")
    git(main, "pack-refs", "--all")
    git(main, "worktree", "add", "-q", "-b", "feat", str(tmp_path / "wt"))
    sha = git(main, "rev-parse", "HEAD").stdout.decode().strip()
    assert provenance._head(str(main / ".git")) == (sha, "main", False)
    assert provenance.git_current_branch(str(tmp_path / "wt")) == ("feat", False)
    assert provenance.git_provenance(str(tmp_path / "wt"))["git"] == {"sha": sha, "branch": "feat", "dirty": False}


def test_a_reftable_repository_s_head_is_asked_of_git_not_read_as_its_placeholder(tmp_path, monkeypatch):
    """A reftable repository (git >= 2.45 --ref-format=reftable) keeps `ref: refs/heads/.invalid`
    in .git/HEAD: provenance recorded branch '.invalid' and commit warned that it cannot be an mvc
    branch. The placeholder is recognised and git is asked; a git too old to read the repository
    (this machine's) gives no sha or branch, not the placeholder's."""
    work = new_git(tmp_path / "g")
    git(work, "config", "core.repositoryformatversion", "1")
    git(work, "config", "extensions.refStorage", "reftable")
    (work / ".git" / "HEAD").write_text("ref: refs/heads/.invalid\n")
    got = provenance.git_provenance(str(work))["git"]
    assert (got["sha"], got["branch"]) == (None, None)
    assert got["error"] == "unknown repository extension found: refstorage"  # (git's next line was cut off)
    assert provenance.git_current_branch(str(work)) == (None, False)
    sha = "ab" * 20

    class Git:  # git that reads reftable
        def __init__(self, top):
            pass

        def symbolic_ref(self, *args, **kw):
            return 0, "refs/heads/feature", ""

        def rev_parse(self, *args, **kw):
            return 0, sha + "\n", ""

    monkeypatch.setattr(provenance, "import_git", lambda: type("git", (), {"Git": Git}))
    assert provenance.git_current_branch(str(work)) == ("feature", False)
    assert provenance._head(str(work / ".git"), str(work)) == (sha, "feature", False)
    Git.symbolic_ref = lambda self, *a, **kw: (1, "", "") if kw.get("with_exceptions") is False else 1 / 0
    assert provenance._head(str(work / ".git"), str(work)) == (sha, None, True)  # detached (git exits 1)


# -- git that cannot run ---------------------------------------------------------------------------
def test_without_git_provenance_keeps_sha_branch_and_says_why_dirty_is_unknown(tmp_path, monkeypatch):
    work = new_git(tmp_path / "g")
    sha = git(work, "rev-parse", "HEAD").stdout.decode().strip()
    repo = mvc.Repo.init(work)
    empty = tmp_path / "nogit"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.chdir(work)
    cid = repo.commit({"m": model(work / "m.safetensors")}, message="x")
    prov = repo.read_commit(cid)["provenance"]["git"]  # before: {"error": "GitCommandNotFound"}
    assert prov == {"sha": sha, "branch": "main", "dirty": None, "error": "git not found on PATH"}
    out = CliRunner().invoke(cli, ["show", "HEAD"], catch_exceptions=False).output
    assert f"Code:   git {sha[:12]} on main (dirty: unknown: git not found on PATH)" in out  # before: "git - on None"


def test_show_says_detached_head_and_unknown_records_truly(tmp_path, monkeypatch):
    work = new_git(tmp_path / "g")
    git(work, "checkout", "-q", "--detach")
    sha = git(work, "rev-parse", "HEAD").stdout.decode().strip()
    repo = mvc.Repo.init(work)
    monkeypatch.chdir(work)
    with pytest.warns(UserWarning, match="detached"):
        repo.commit({"m": model(work / "m.safetensors")}, message="x")
    out = CliRunner().invoke(cli, ["show", "HEAD"], catch_exceptions=False).output
    assert f"Code:   git {sha[:12]} (detached HEAD)\n" in out  # before: "on None"


def test_git_python_import_without_a_git_binary_still_records_provenance_and_author(tmp_path):
    """A fresh interpreter: GitPython raised ImportError at import when no git could be found, so
    provenance was {"git": {"error": "ImportError"}} and the author fell back to user@host."""
    work = new_git(tmp_path / "g")
    git(work, "config", "user.name", "Alice")
    git(work, "config", "user.email", "a@x")
    sha = git(work, "rev-parse", "HEAD").stdout.decode().strip()
    mvc.Repo.init(work)
    empty = tmp_path / "nogit"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "GIT_PYTHON_GIT_EXECUTABLE": str(empty / "git"),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("GIT_PYTHON_REFRESH", None)
    code = ("import json, sys; from mvc import provenance as p; "
            "print(json.dumps([p.git_provenance(sys.argv[1]), p.default_author(sys.argv[1])]))")
    r = subprocess.run([sys.executable, "-c", code, str(work)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    prov, author = json.loads(r.stdout)
    assert prov["git"]["sha"] == sha and prov["git"]["branch"] == "main" and prov["git"]["dirty"] is None
    assert "git not found" in prov["git"]["error"]
    assert author == "Alice <a@x>"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_repository_git_refuses_is_recorded_with_git_s_reason(tmp_path):
    work = new_git(tmp_path / "g")
    repo = mvc.Repo.init(work)
    os.chown(work, 12345, 12345)
    try:
        prov = provenance.git_provenance(repo.root)["git"]
        with pytest.warns(UserWarning, match="git could not say whether the work tree is dirty .*dubious ownership"):
            cid = repo.commit({"m": model(tmp_path / "m.safetensors")}, message="x")  # (it was recorded silently)
    finally:
        os.chown(work, 0, 0)
    assert prov["dirty"] is None and "dubious ownership" in prov["error"] and prov["sha"]
    assert repo.read_commit(cid)["provenance"]["git"]["dirty"] is None


# -- authors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["eve\ncommit 0000000000aa (main)", "a\rb"])
def test_an_author_with_a_line_break_is_refused_before_anything_is_written(tmp_path, monkeypatch, bad):
    repo = mvc.Repo.init(tmp_path / "r")
    path = model(tmp_path / "m.safetensors")
    objects = lambda: sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repo.dir, "objects")) for f in fs)
    before = objects()
    with pytest.raises(BadInput, match="author argument"):
        repo.commit({"m": path}, message="x", author=bad)
    monkeypatch.setenv("MVC_AUTHOR", bad)
    with pytest.raises(BadInput, match="MVC_AUTHOR holds a line break or NUL"):
        repo.commit({"m": path}, message="x")
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["commit", path, "-m", "x"], env={"MVC_AUTHOR": bad})
    assert r.exit_code == 3 and r.output.count("\n") == 1 and "error: the author from MVC_AUTHOR" in r.output
    assert objects() == before and repo.head() is None


def test_authors_git_accepts_are_kept_and_shown_escaped(tmp_path, monkeypatch):
    """The author check refused every C0/C1 control: a double-encoded UTF-8 user.name (U+0085
    inside) or a tab stopped every commit and rollback, though git commits them."""
    work = new_git(tmp_path / "g", commit=False)
    git(work, "config", "user.name", "\u00c3\u0085sa B")
    repo = mvc.Repo.init(work)
    repo.commit({"m": model(work / "m.safetensors")}, message="x")
    assert repo.log()[0]["author"] == "\u00c3\u0085sa B"
    monkeypatch.chdir(work)
    out = CliRunner().invoke(cli, ["log"]).output
    assert 'Author: "\u00c3\\x85sa B"' in out and "\x85" not in out


# -- output to a closed stdout ----------------------------------------------------------------------
@pytest.mark.parametrize("args", [["cat-object", "HEAD"], ["export", "HEAD", "m", "-o", "-"], ["log"],
                                  ["rev-parse", "HEAD"], ["log", "--json"]])
def test_output_to_a_closed_stdout_is_a_clean_error(tmp_path, monkeypatch, capsys, args):
    """Binary output to a closed stdout was exit 4 once; text output (click.echo prints nothing
    when sys.stdout is None) exited 0 with the output lost."""
    repo = mvc.Repo.init(tmp_path)
    repo.commit({"m": model(tmp_path / "m.safetensors")}, message="x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdout", None)  # what Python sets when started with fd 1 closed (>&-)
    code = cli.main(args, standalone_mode=False)
    err = capsys.readouterr().err
    assert code == 3 and err == ("error: cannot write to standard output: it is closed (nothing was moved; "
                                 "what it printed is lost)\n"), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_an_exported_git_dir_never_runs_another_user_s_repository_config(tmp_path, monkeypatch):
    """Pointing GIT_DIR back at the work tree made git skip its ownership check: `git status` ran
    the core.fsmonitor command of a repository another user owns."""
    work = new_git(tmp_path / "g")
    marker = tmp_path / "ran"
    hook = tmp_path / "fsmonitor.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git(work, "config", "core.fsmonitor", str(hook))
    repo = mvc.Repo.init(work)
    os.chown(work, 12345, 12345)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere" / ".git"))
    try:
        prov = provenance.git_provenance(repo.root)["git"]
        assert provenance.default_author(repo.root).endswith("@" + mvc.files.hostname())  # no config read
    finally:
        os.chown(work, 0, 0)
    assert not marker.exists() and prov["dirty"] is None and "dubious ownership" in prov["error"]


def test_the_author_is_read_through_includes_when_git_cannot_run(tmp_path, monkeypatch):
    work = new_git(tmp_path / "g")
    (tmp_path / "who.inc").write_text("[user]\n\tname = Included\n\temail = inc@x\n")
    git(work, "config", f"includeIf.gitdir:{work}/.path", str(tmp_path / "who.inc"))  # (needs the repository)
    empty = tmp_path / "nogit"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("MVC_AUTHOR", raising=False)
    assert provenance.default_author(str(work)) == "Included <inc@x>"


def test_a_git_branch_that_would_hide_an_id_prefix_is_not_made_an_mvc_branch(tmp_path):
    """Git branch `5F5A965A` (hex in capitals) became mvc branch 5F5A965A, and resolve() then took
    that branch for what mvc documents as an id prefix; lower-case hex was already refused."""
    work = new_git(tmp_path / "w")
    repo = mvc.Repo.init(work)
    first = repo.commit({"m": model(tmp_path / "a.safetensors")}, message="one")
    prefix = first[:8].upper()
    git(work, "switch", "-q", "-c", prefix)
    with pytest.warns(UserWarning, match="cannot be an mvc branch"):
        repo.commit({"m": model(tmp_path / "b.safetensors", 8)}, message="two")
    assert list(repo.branches()) == ["main"] and repo.resolve(prefix) == first


def test_a_git_branch_and_user_name_that_are_not_utf8_are_recorded_escaped(tmp_path):
    """git takes any bytes in a branch name or user.name (made in a Latin-1 terminal): every mvc
    commit there failed (exit 3, 'names, messages and metadata must be UTF-8'), blaming the user."""
    work = new_git(tmp_path / "g")
    git(work, "checkout", "-q", "-b", b"caf\xe9")
    git(work, "config", "user.name", b"J\xf6rg")
    repo = mvc.Repo.init(work)
    repo.commit({"m": model(work / "m.safetensors")}, message="x")
    entry = repo.log()[0]
    assert entry["author"].startswith("J\\xf6rg")
    assert mvc.Repo(work).show("HEAD")["provenance"]["git"]["branch"] == "caf\\xe9"


def test_rollback_and_revert_refuse_while_git_and_mvc_name_other_branches(tmp_path):
    """After `git checkout main` (no mvc commit since), mvc's HEAD still named feat: `mvc revert HEAD~1`
    gave main a feature model (HEAD~1 was feat's) and `mvc rollback` moved feat, not main."""
    work = new_git(tmp_path / "w")
    repo = mvc.Repo.init(work)
    main1 = repo.commit({"m": model(tmp_path / "a.safetensors", 4)}, message="main 1")
    git(work, "switch", "-q", "-c", "feat")
    repo.commit({"m": model(tmp_path / "b.safetensors", 5)}, message="feat 1")
    feat2 = repo.commit({"m": model(tmp_path / "c.safetensors", 6)}, message="feat 2")
    git(work, "switch", "-q", "main")
    before = repo.branches()
    for call, what in ((lambda: repo.rollback(), "roll back"), (lambda: repo.revert("HEAD~1"), "revert")):
        with pytest.raises(mvc.MvcError, match=f"cannot {what}: mvc's current branch is feat, but commits here go "
                                               "to main") as e:
            call()
        assert e.value.hint == "mvc switch main first, or git checkout feat"
    assert repo.branches() == before == {"main": main1, "feat": feat2}
    repo.switch("main")
    assert repo.rollback(main1)["branch"] == "main"  # (they agree again)
    assert repo.revert(feat2) and repo.branches()["main"] != main1 and repo.branches()["feat"] == feat2


def test_a_new_git_branch_s_first_commit_says_which_mvc_branch_it_starts_from(tmp_path):
    """mvc's HEAD (feat) was the start of feat2, which git forked from main: its commit said nothing."""
    work = new_git(tmp_path / "w")
    repo = mvc.Repo.init(work)
    repo.commit({"m": model(tmp_path / "a.safetensors", 4)}, message="main 1")
    git(work, "switch", "-q", "-c", "feat")
    feat = repo.commit({"m": model(tmp_path / "b.safetensors", 5)}, message="feat 1")
    git(work, "switch", "-q", "main")
    git(work, "switch", "-q", "-c", "feat2")
    with pytest.warns(UserWarning, match=f"mvc branch feat2 is new: it starts from feat \\({feat[:12]}\\), mvc's current"):
        repo.commit({"x": model(tmp_path / "c.safetensors", 6)}, message="feat2 1")
    assert repo.read_commit(repo.branches()["feat2"])["parents"] == [feat]


def test_in_a_linked_work_tree_the_error_names_the_main_work_tree_s_repository(tmp_path, monkeypatch):
    """`mvc log` in a `git worktree add` tree said "(run mvc init)": following it split the model
    history into a second repository."""
    work = new_git(tmp_path / "w")
    (work / "models").mkdir()
    mvc.Repo.init(work / "models")
    git(work, "worktree", "add", "-q", str(tmp_path / "linked"), "-b", "side")
    (tmp_path / "linked" / "models").mkdir()
    monkeypatch.chdir(tmp_path / "linked" / "models")
    r = CliRunner().invoke(cli, ["log"])
    assert r.exit_code == 3 and "not an mvc repository" in r.stderr
    assert f"linked git work tree (git worktree add) of the one holding the mvc repository {work / 'models'}" in r.stderr
    plain = new_git(tmp_path / "plain")
    monkeypatch.chdir(plain)
    assert CliRunner().invoke(cli, ["log"]).stderr.endswith("(run mvc init)\n")


def test_on_a_git_branch_mvc_has_not_yet_rollback_says_how_to_make_it_and_revert_starts_it(tmp_path):
    work = new_git(tmp_path / "w")
    repo = mvc.Repo.init(work)
    first = repo.commit({"m": model(tmp_path / "a.safetensors", 4)}, message="main 1")
    repo.commit({"m": model(tmp_path / "b.safetensors", 5)}, message="main 2")
    git(work, "switch", "-q", "-c", "exp")
    with pytest.raises(mvc.MvcError, match="commits here go to exp") as e:
        repo.rollback()
    assert e.value.hint == "mvc branch exp; mvc switch exp first, or git checkout main"
    with pytest.raises(mvc.MvcError, match="--into HEAD is mvc's current branch main, but commits here go to exp") as e:
        repo.paste_brick("python", "main", "HEAD")
    assert e.value.hint == "name the host branch: --into main --branch exp, or --into main"  # (no mvc branch exp)
    with pytest.warns(UserWarning, match="mvc branch exp is new: it starts from main"):
        cid = repo.revert("HEAD~1")  # (exp starts from main, whose HEAD~1 REV names: coherent)
    assert repo.branches()["exp"] == cid and repo.read_commit(cid)["components"] == repo.read_commit(first)["components"]

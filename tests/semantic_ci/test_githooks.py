"""Real git, real `git merge`: the pre-merge-commit hook blocks a merge whose model fails semantic CI
(even when the feature branch relaxes its own mvc.toml) and allows one that passes. Installing and
uninstalling: chained hooks (symbolic links too), nothing half installed, one gated mvc repository
per work tree, git that cannot run."""
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

import mvc
from semantic_ci.probe import builtin_probe

from ci_helpers import HELD_OUT, HOOK_CONFIG as CONFIG, trained_table


def git(work, *args, check=True):
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True, check=check)


def _work_tree(tmp_path, monkeypatch, **files):
    """A git work tree (the current folder) whose first commit holds mvc.toml, heldout.txt and
    `files`, with an mvc repository in it."""
    work = tmp_path / "proj"
    work.mkdir()
    monkeypatch.chdir(work)
    git(work, "init", "-q", "-b", "main")
    (work / "mvc.toml").write_text(CONFIG)
    (work / "heldout.txt").write_bytes(HELD_OUT)
    for name, text in files.items():
        (work / name).write_text(text)
    git(work, "add", ".")
    git(work, "commit", "-qm", "project")
    return work, mvc.Repo.init(work)


@pytest.mark.slow
def test_pre_merge_hook_blocks_failing_model_and_allows_passing(tmp_path, monkeypatch):
    work, repo = _work_tree(tmp_path, monkeypatch, **{"train.py": "v = 1\n"})
    good = trained_table(builtin_probe(3000))
    main_model = repo.commit({"core": {"table": good}}, message="main model")

    git(work, "checkout", "-qb", "feat-good")
    repo.commit({"core": {"table": trained_table(builtin_probe(3000), smoothing=0.55)}}, message="tweak")
    (work / "train.py").write_text("v = 2\n")
    git(work, "commit", "-qam", "good change")

    git(work, "checkout", "-q", "main")
    git(work, "checkout", "-qb", "feat-bad")
    damaged = good[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    repo.commit({"core": {"table": damaged}}, message="broken")
    (work / "mvc.toml").write_text(CONFIG.replace("max_ratio = 1.05", "max_ratio = 1000.0"))  # relax own gate
    git(work, "commit", "-qam", "bad change")

    git(work, "checkout", "-q", "main")
    r = subprocess.run([sys.executable, "-m", "mvc", "hooks", "install"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert git(work, "config", "merge.ff").stdout.strip() == "false"
    assert mvc.Repo(work).branches()["main"] == main_model

    before = git(work, "rev-parse", "HEAD").stdout.strip()
    bad = git(work, "merge", "--no-edit", "feat-bad", check=False)
    assert bad.returncode != 0, bad.stdout + bad.stderr
    assert "merge blocked" in bad.stderr and "FAIL" in bad.stderr
    assert git(work, "rev-parse", "HEAD").stdout.strip() == before
    # finishing the blocked merge by hand runs no pre-merge-commit: pre-commit gates it
    cont = subprocess.run(["git", "commit", "--no-edit"], cwd=work, capture_output=True, text=True)
    assert cont.returncode != 0 and "merge blocked" in cont.stderr, cont.stdout + cont.stderr
    cont = subprocess.run(["git", "merge", "--continue"], cwd=work, capture_output=True, text=True,
                          env={**__import__("os").environ, "GIT_EDITOR": "true"})
    assert cont.returncode != 0 and git(work, "rev-parse", "HEAD").stdout.strip() == before
    git(work, "merge", "--abort")
    (work / "notes.txt").write_text("x\n")  # an ordinary commit passes pre-commit untouched
    git(work, "add", "notes.txt")
    git(work, "commit", "-qm", "notes")

    ok = git(work, "merge", "--no-edit", "feat-good", check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    head = git(work, "rev-parse", "HEAD^@").stdout.split()
    assert len(head) == 2  # a real merge commit (merge.ff=false)

    r = subprocess.run([sys.executable, "-m", "mvc", "hooks", "uninstall"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0 and not (work / ".git" / "hooks" / "pre-merge-commit").exists()
    assert git(work, "config", "merge.ff", check=False).returncode == 1  # unset again


@pytest.mark.slow
def test_install_chains_existing_hook(tmp_path, monkeypatch):
    work = tmp_path / "proj"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    mvc.Repo.init(work)
    hook = work / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho mine\n")
    hook.chmod(0o755)
    monkeypatch.chdir(work)
    from semantic_ci.githooks import install, uninstall
    r = install(str(work))
    assert r["chained"] == ["pre-push"] and (work / ".git" / "hooks" / "pre-push.mvc-chained").exists()
    assert "semantic_ci.git_hook pre-push" in hook.read_text()
    uninstall(str(work))
    assert hook.read_text() == "#!/bin/sh\necho mine\n"


@pytest.mark.parametrize("pushed", [b"", b"refs/heads/main 1111 refs/heads/main 2222\nrefs/tags/v1 3333 refs/tags/v1 0000\n"])
def test_a_chained_pre_push_hook_gets_exactly_what_git_sent(tmp_path, pushed):
    """git sends no line for an up-to-date push; mvc's wrapper sent the chained hook an empty one,
    which a hook checking each line refused (probe h100)."""
    from semantic_ci.githooks import install
    work = tmp_path / "proj"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    mvc.Repo.init(work)
    hooks = work / ".git" / "hooks"
    seen = tmp_path / "seen"
    (hooks / "pre-push").write_text(f"#!/bin/sh\ncat > '{seen}'\nexit 7\n")  # (7: mvc's gate is not run)
    (hooks / "pre-push").chmod(0o755)
    install(str(work))
    r = subprocess.run([str(hooks / "pre-push"), "origin", "url"], cwd=work, input=pushed, capture_output=True)
    assert r.returncode == 7, r.stderr
    assert seen.read_bytes() == pushed


def test_a_chained_hook_is_never_overwritten(tmp_path, monkeypatch):
    work = tmp_path / "proj"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    mvc.Repo.init(work)
    hooks = work / ".git" / "hooks"
    (hooks / "pre-push").write_text("#!/bin/sh\necho original\n")
    monkeypatch.chdir(work)
    from semantic_ci.githooks import install, uninstall
    install(str(work))
    (hooks / "pre-push").write_text("#!/bin/sh\necho another tool\n")  # replaces mvc's hook
    assert uninstall(str(work))["kept"] == ["pre-push.mvc-chained"]
    with pytest.raises(mvc.errors.MvcError, match="never overwrites"):
        install(str(work))
    assert (hooks / "pre-push.mvc-chained").read_text() == "#!/bin/sh\necho original\n"
    assert (hooks / "pre-push").read_text() == "#!/bin/sh\necho another tool\n"
    assert not (hooks / "pre-merge-commit").exists()  # nothing half installed


def _gated_project(tmp_path, sub=""):
    """A git work tree with an mvc repository at its top (or in folder `sub`): main's model passes,
    feat-bad's fails; mvc's hooks installed. Returns (work tree, mvc repository)."""
    work = tmp_path / "proj"
    root = work / sub if sub else work
    root.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    (root / "mvc.toml").write_text(CONFIG)
    (root / "heldout.txt").write_bytes(HELD_OUT)
    git(work, "add", ".")
    git(work, "commit", "-qm", "project")
    repo = mvc.Repo.init(root)
    good = trained_table(builtin_probe(3000))
    repo.commit({"core": {"table": good}}, message="main model")
    git(work, "checkout", "-qb", "feat-bad")
    repo.commit({"core": {"table": good[torch.randperm(256, generator=torch.Generator().manual_seed(0))]}},
                message="broken")
    (work / "a.txt").write_text("1\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "bad change")
    git(work, "checkout", "-q", "main")
    r = subprocess.run([sys.executable, "-m", "mvc", "hooks", "install"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return work, repo


@pytest.mark.slow
@pytest.mark.parametrize("sub", ["", "models"])
def test_merges_by_commit_id_or_of_a_repository_in_a_subfolder_are_gated(tmp_path, monkeypatch, sub):
    """Before: `git merge <sha>` was 'no model branch; nothing to check', and with the mvc
    repository in a subfolder the hook (run at the work tree's top) found none and allowed all."""
    work, _repo = _gated_project(tmp_path, sub)
    for target in ("feat-bad", git(work, "rev-parse", "feat-bad").stdout.strip()):  # a branch, its head's id
        attempt = git(work, "merge", "--no-edit", target, check=False)
        assert attempt.returncode != 0 and "merge blocked" in attempt.stderr, (target, attempt.stderr)
        git(work, "merge", "--abort", check=False)


@pytest.mark.slow
def test_the_gate_is_not_bypassed_by_how_a_merge_or_push_is_written_or_where_it_runs(tmp_path):
    """Each of these let feat-bad's failing model through: a merge of `feat-bad^0` (taken for a
    branch name, which has no model branch), `git push origin HEAD:main` (the hook skipped local
    ref HEAD), a merge in a linked work tree (no .mvc there: nothing to gate), and a feature branch
    bringing its own semantic_ci/git_hook.py (python -m put the work tree's top first on sys.path)."""
    work, repo = _gated_project(tmp_path)
    before = git(work, "rev-parse", "main").stdout.strip()
    attempt = git(work, "merge", "--no-edit", "feat-bad^0", check=False)
    assert attempt.returncode != 0 and "merge blocked" in attempt.stderr, attempt.stdout + attempt.stderr
    git(work, "merge", "--abort", check=False)

    git(tmp_path, "init", "-q", "--bare", "remote.git")
    git(work, "remote", "add", "origin", str(tmp_path / "remote.git"))
    git(work, "push", "-q", "origin", "main")
    git(work, "checkout", "-q", "feat-bad")
    for spec in ("HEAD:main", "feat-bad:main"):
        pushed = git(work, "push", "origin", spec, check=False)
        assert pushed.returncode != 0 and "push blocked" in pushed.stderr, (spec, pushed.stderr)
    assert git(tmp_path / "remote.git", "rev-parse", "main").stdout.strip() == before
    git(work, "checkout", "-q", "main")

    git(work, "worktree", "add", "-q", str(tmp_path / "linked"), "-b", "side", "main")
    attempt = git(tmp_path / "linked", "merge", "--no-edit", "feat-bad", check=False)
    assert attempt.returncode != 0 and "merge blocked" in attempt.stderr, attempt.stdout + attempt.stderr
    git(tmp_path / "linked", "merge", "--abort", check=False)

    git(work, "checkout", "-q", "feat-bad")
    (work / "semantic_ci").mkdir()
    (work / "semantic_ci" / "__init__.py").write_text("")
    (work / "semantic_ci" / "git_hook.py").write_text("raise SystemExit(0)\n")  # "the gate passed"
    git(work, "add", ".")
    git(work, "commit", "-qm", "bring a gate of its own")
    git(work, "checkout", "-q", "main")
    attempt = git(work, "merge", "--no-edit", "feat-bad", check=False)
    assert attempt.returncode != 0 and "merge blocked" in attempt.stderr, attempt.stdout + attempt.stderr
    assert git(work, "rev-parse", "main").stdout.strip() == before


def test_a_repository_the_hook_cannot_open_blocks_rather_than_opens_the_gate(tmp_path, monkeypatch, capsys):
    """Any error opening the mvc repository (here a format newer than this mvc reads) was taken for
    "not an mvc repository: nothing to gate", and every merge went through."""
    from semantic_ci.git_hook import main
    work, _hooks = _project(tmp_path)
    monkeypatch.chdir(work)
    config = work / ".mvc" / "config"
    config.write_text(config.read_text().replace("format = 1", "format = 99"))
    assert main(["pre-merge-commit", "--mvc-root", "."]) == 1
    assert "merge blocked" in capsys.readouterr().err
    assert main(["pre-merge-commit", "--mvc-root", "../elsewhere"]) == 0  # no repository there: nothing to gate
    assert "no mvc repository" in capsys.readouterr().err


@pytest.mark.parametrize("extra", ["", "[merge]\n\tff = only\n", "[merge]\n\tlog = true\n"])
def test_hooks_uninstall_restores_the_git_config_exactly(tmp_path, extra):
    from semantic_ci.githooks import install, uninstall
    work = tmp_path / "proj"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    config = work / ".git" / "config"
    config.write_text(config.read_text() + "# my notes: keep these\n[user]\n\tname = Me  ; inline comment\n" + extra)
    before = config.read_bytes()
    mvc.Repo.init(work)
    install(str(work))
    assert git(work, "config", "merge.ff").stdout.strip() == "false"
    uninstall(str(work))
    assert config.read_bytes() == before  # before: comments dropped, an empty [merge] left


def test_a_merged_commit_heading_no_local_branch_is_not_taken_for_one(tmp_path, monkeypatch):
    """`git pull` passes the fetched commit's id as GITHEAD_<sha>=<sha>: it heads no local branch and
    must not block the merge (the first fix of merges-by-id blocked every such pull)."""
    from semantic_ci.git_hook import merged_branches
    work = tmp_path / "w"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "a").write_text("1")
    git(work, "add", ".")
    git(work, "commit", "-qm", "one")
    git(work, "branch", "feature")
    (work / "a").write_text("2")
    git(work, "commit", "-qam", "two")
    monkeypatch.chdir(work)
    head, older = (git(work, "rev-parse", r).stdout.strip() for r in ("main", "main~1"))
    monkeypatch.setenv(f"GITHEAD_{older}", older)  # by id: the head of 'feature' (and of main~1)
    assert merged_branches() == ["feature"]
    monkeypatch.delenv(f"GITHEAD_{older}")
    git(work, "update-ref", "refs/remotes/origin/next", head)
    git(work, "commit", "--allow-empty", "-qm", "three")
    fetched = git(work, "rev-parse", "refs/remotes/origin/next").stdout.strip()
    git(work, "update-ref", "refs/remotes/origin/next", git(work, "rev-parse", "HEAD").stdout.strip())
    monkeypatch.setenv(f"GITHEAD_{fetched}", fetched)
    assert merged_branches() == []  # heads no local branch now: not gated, as before


def _project(tmp_path, *subs):
    work = tmp_path / "proj"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    for sub in subs or ("",):
        mvc.Repo.init(work / sub)
    return work, work / ".git" / "hooks"


@pytest.mark.parametrize("target", ["../../scripts/pre-commit", "../../nowhere/pre-commit"])
def test_a_symlinked_hook_is_chained_by_renaming_the_link_never_written_through(tmp_path, target):
    """Before: install wrote mvc's hook through the link into the work tree (scripts/pre-commit),
    or crashed half installed when the link's folder was missing; uninstall deleted the link."""
    from semantic_ci.githooks import install, uninstall
    work, hooks = _project(tmp_path)
    (work / "scripts").mkdir()
    (hooks / "pre-commit").symlink_to(target)
    r = install(str(work))
    assert r["chained"] == ["pre-commit"]
    assert not (work / "scripts" / "pre-commit").exists() and not (work / "nowhere").exists()
    assert os.readlink(hooks / "pre-commit.mvc-chained") == target
    assert not (hooks / "pre-commit").is_symlink() and "semantic_ci.git_hook" in (hooks / "pre-commit").read_text()
    assert install(str(work))["chained"] == []  # a second install rewrites only its own hooks
    uninstall(str(work))
    assert os.readlink(hooks / "pre-commit") == target and not (hooks / "pre-merge-commit").exists()
    assert not os.path.lexists(hooks / "pre-commit.mvc-chained")


def test_a_failed_install_changes_nothing(tmp_path):
    from semantic_ci.githooks import install
    work, hooks = _project(tmp_path)
    (hooks / "pre-commit").write_text("#!/bin/sh\necho mine\n")
    (hooks / "pre-push.mvc-new").mkdir()  # the last hook's new file cannot be made
    (hooks / "pre-push.mvc-new" / "x").write_text("")
    before = sorted(p.name for p in hooks.iterdir())
    with pytest.raises(mvc.errors.MvcError, match="could not install the git hooks"):
        install(str(work))
    assert sorted(p.name for p in hooks.iterdir()) == before
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\necho mine\n"
    assert git(work, "config", "merge.ff", check=False).returncode == 1


def test_one_work_tree_s_hooks_gate_one_mvc_repository(tmp_path, monkeypatch):
    """Before: installing for b/ silently replaced the hooks gating a/, and uninstalling in a/
    removed b/'s."""
    from click.testing import CliRunner

    from mvc.cli import cli
    from semantic_ci.githooks import install, uninstall
    work, hooks = _project(tmp_path, "a", "b")
    install(str(work / "a"))
    monkeypatch.chdir(work / "b")
    r = CliRunner().invoke(cli, ["hooks", "install"])
    assert r.exit_code == 3 and "already gate the mvc repository a " in r.output, r.output
    assert "uninstall in " + str(work / "a") in r.output
    assert "--mvc-root a " in (hooks / "pre-merge-commit").read_text()
    with pytest.raises(mvc.errors.MvcError, match="gate the mvc repository a of this work tree, not this one"):
        uninstall(str(work / "b"))
    assert "--mvc-root a " in (hooks / "pre-push").read_text()
    assert uninstall(str(work / "a"))["removed"] == ["pre-merge-commit", "pre-commit", "pre-push"]
    assert install(str(work / "b"))["installed"]  # now b/ may have them


def test_hooks_without_a_usable_git_are_an_mvc_error(tmp_path, monkeypatch):
    """Before: GitCommandNotFound (or ImportError at GitPython's import) escaped: exit 4, a traceback."""
    from click.testing import CliRunner

    from mvc.cli import cli
    work, hooks = _project(tmp_path)
    (tmp_path / "nogit").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "nogit"))
    monkeypatch.chdir(work)
    for cmd in ("install", "uninstall"):
        r = CliRunner().invoke(cli, ["hooks", cmd])
        assert r.exit_code == 3 and r.output == ("error: cannot use git here: git not found on PATH "
                                                 "(install git, put it on PATH or set GIT_PYTHON_GIT_EXECUTABLE)\n")
    assert not (hooks / "pre-push").exists()


def test_an_install_that_cannot_set_merge_ff_fails_and_changes_nothing(tmp_path):
    """Before: every failure of git config counted as 'nothing there': a stale config.lock left
    merge.ff unset while install said it was set, so fast-forward merges skipped the gate."""
    from semantic_ci.githooks import install
    work, hooks = _project(tmp_path)
    (work / ".git" / "config.lock").write_text("")
    with pytest.raises(mvc.errors.MvcError, match=r"git config .*failed: could not lock config file") as e:
        install(str(work))
    assert e.value.hint.startswith("a stale .git/config.lock")
    assert not any((hooks / name).exists() for name in ("pre-commit", "pre-merge-commit", "pre-push"))
    (work / ".git" / "config.lock").unlink()
    import semantic_ci.githooks as gh  # a full disk: git says only that it failed to write (h59)
    git_module = gh.import_git()
    real = git_module.cmd.Git._call_process

    def full_disk(self, method, *args, **kwargs):
        if method == "config" and "--get" not in args:
            raise git_module.GitCommandError(["git", "config"], 255,
                                             b"error: failed to write new configuration file .git/config.lock")
        return real(self, method, *args, **kwargs)
    with mock.patch.object(gh, "_disk_full", lambda g: True), \
            mock.patch.object(git_module.cmd.Git, "_call_process", full_disk):
        with pytest.raises(mvc.errors.MvcError) as e:
            install(str(work))
    assert e.value.hint == "free some space on the disk and run it again"
    assert not any((hooks / name).exists() for name in ("pre-commit", "pre-merge-commit", "pre-push"))
    install(str(work))
    assert git(work, "config", "merge.ff").stdout.strip() == "false"


@pytest.mark.slow
def test_merging_a_code_only_branch_whose_model_is_mains_passes(tmp_path, monkeypatch):
    """An mvc branch heading the same commit as the target (a code-only git branch, or `mvc branch
    feature main`) blocked the merge with run_ci's error about a --base the user never gave (h36)."""
    work, repo = _work_tree(tmp_path, monkeypatch)
    repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="main model")
    repo.create_branch("code-only", "main")
    git(work, "checkout", "-qb", "code-only")
    (work / "train.py").write_text("v = 2\n")
    git(work, "add", "train.py")
    git(work, "commit", "-qm", "code change")
    git(work, "checkout", "-q", "main")
    r = subprocess.run([sys.executable, "-m", "mvc", "hooks", "install"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged = git(work, "merge", "--no-edit", "code-only", check=False)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "hold the same commit; nothing to check" in merged.stdout + merged.stderr


@pytest.mark.slow
def test_a_merge_of_a_teammate_s_branch_is_gated_on_its_remote_tracking_model(tmp_path):
    """`git merge origin/feat-bad` (after git fetch and mvc fetch), or of a local branch tracking it,
    found no mvc branch feat-bad here ("no model branch; nothing to check") and merged a failing model,
    which mvc held all along as origin/feat-bad."""
    work, repo = _gated_project(tmp_path)
    bad = repo.branches()["feat-bad"]
    repo.refs.update("refs/remotes/origin/feat-bad", bad)  # (as mvc fetch leaves it)
    repo.switch("main")
    repo.delete_branch("feat-bad")
    git(work, "remote", "add", "origin", str(tmp_path / "teammates.git"))
    git(work, "update-ref", "refs/remotes/origin/feat-bad", "feat-bad")  # (as git fetch leaves it)
    git(work, "branch", "-q", "-D", "feat-bad")
    before = git(work, "rev-parse", "main").stdout.strip()
    git(work, "branch", "-q", "--track", "feat-bad", "origin/feat-bad")  # (a local twin tracking it)
    git(work, "branch", "-q", "--track", "review", "origin/feat-bad")  # (and a review branch)
    for name in ("origin/feat-bad", "feat-bad", "review"):
        attempt = git(work, "merge", "-m", "my own words", name, check=False)
        assert attempt.returncode != 0 and "merge blocked" in attempt.stderr, (name, attempt.stdout + attempt.stderr)
        assert "is mvc's origin/feat-bad" in attempt.stderr or name == "origin/feat-bad"
        concluded = git(work, "commit", "--no-edit", check=False)  # (pre-commit: only MERGE_HEAD's commit)
        assert concluded.returncode != 0 and "merge blocked" in concluded.stderr, (name, concluded.stderr)
        git(work, "merge", "--abort", check=False)
    assert git(work, "rev-parse", "main").stdout.strip() == before
    # a branch started from origin/main tracks it: that is no model of the branch's own
    repo.refs.update("refs/remotes/origin/main", bad)
    git(work, "update-ref", "refs/remotes/origin/main", "main")
    git(work, "checkout", "-q", "-b", "code-only", "origin/main")
    (work / "b.txt").write_text("code\n")
    git(work, "add", "b.txt")
    git(work, "commit", "-qm", "code only")
    git(work, "checkout", "-q", "main")
    merged = git(work, "merge", "--no-edit", "code-only", check=False)
    assert merged.returncode == 0 and "no model branch; nothing to check" in merged.stderr, merged.stderr


def test_the_hook_run_in_a_bare_repository_allows_and_does_not_crash(tmp_path):
    """A pre-push from a bare repository (mvc's hooks in a hooks folder it shares) raised AttributeError
    (no work tree: `git rev-parse --show-toplevel` failed) and blocked the push."""
    git(tmp_path, "init", "-q", "--bare", "mirror.git")
    repo = mvc.Repo.init(tmp_path / "proj")
    r = subprocess.run([sys.executable, "-m", "semantic_ci.git_hook", "pre-push", "--mvc-path", repo.root],
                       cwd=tmp_path / "mirror.git", input="refs/heads/main " + "1" * 40 + " refs/heads/main " + "0" * 40,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "a bare git repository has no models to gate; push allowed" in r.stderr


@pytest.mark.parametrize("where", ["shared", "tracked"])
def test_install_refuses_a_hooks_folder_outside_the_repository_s_git_folder(tmp_path, monkeypatch, where):
    """A user-wide core.hooksPath made every repository of the user run this one's gate (and a second
    project's install re-pointed it, its uninstall removed it); a tracked one (.githooks) got hooks
    naming this machine's paths, ready to be committed."""
    work, repo = _work_tree(tmp_path, monkeypatch)
    hooks = tmp_path / "shared-hooks" if where == "shared" else work / ".githooks"
    hooks.mkdir()
    (hooks / "pre-push").write_text("#!/bin/sh\nexit 0\n")
    git(work, "config", "core.hooksPath", str(hooks))
    r = subprocess.run([sys.executable, "-m", "mvc", "hooks", "install"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 3 and "outside this repository's git folder" in r.stderr, r.stderr
    assert sorted(os.listdir(hooks)) == ["pre-push"] and git(work, "config", "merge.ff", check=False).returncode == 1


def test_uninstall_leaves_a_merge_ff_the_user_set_since_install(tmp_path, monkeypatch):
    work, repo = _work_tree(tmp_path, monkeypatch)
    run = lambda *a: subprocess.run([sys.executable, "-m", "mvc", "hooks", *a], cwd=work, capture_output=True, text=True)
    assert run("install").returncode == 0 and git(work, "config", "merge.ff").stdout.strip() == "false"
    git(work, "config", "merge.ff", "only")
    assert run("uninstall").returncode == 0
    assert git(work, "config", "merge.ff").stdout.strip() == "only"  # (it was unset before install: restored to that)
    assert git(work, "config", "--get-regexp", "^mvc\\.", check=False).returncode == 1

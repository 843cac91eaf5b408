"""Real git, real `git merge`: the pre-merge-commit hook blocks a merge whose model fails semantic CI
(even when the feature branch relaxes its own mvc.toml) and allows one that passes."""
import subprocess
import sys

import pytest
import torch

import mvc
from semantic_ci.probe import builtin_probe

from ci_helpers import HELD_OUT, HOOK_CONFIG as CONFIG, trained_table


def git(work, *args, check=True):
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True, check=check)


@pytest.mark.slow
def test_pre_merge_hook_blocks_failing_model_and_allows_passing(tmp_path, monkeypatch):
    work = tmp_path / "proj"
    work.mkdir()
    monkeypatch.chdir(work)
    git(work, "init", "-q", "-b", "main")
    (work / "mvc.toml").write_text(CONFIG)
    (work / "heldout.txt").write_bytes(HELD_OUT)
    (work / "train.py").write_text("v = 1\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "project")
    repo = mvc.Repo.init(work)
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


@pytest.mark.slow
@pytest.mark.parametrize("sub", ["", "models"])
def test_merges_by_commit_id_or_of_a_repository_in_a_subfolder_are_gated(tmp_path, monkeypatch, sub):
    """Before: `git merge <sha>` was 'no model branch; nothing to check', and with the mvc
    repository in a subfolder the hook (run at the work tree's top) found none and allowed all."""
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
    (work / "a.txt").write_text("2\n")
    git(work, "commit", "-qam", "more")
    git(work, "checkout", "-q", "main")
    r = subprocess.run([sys.executable, "-m", "mvc", "hooks", "install"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for target in ("feat-bad", git(work, "rev-parse", "feat-bad").stdout.strip()):  # a branch, its head's id
        attempt = git(work, "merge", "--no-edit", target, check=False)
        assert attempt.returncode != 0 and "merge blocked" in attempt.stderr, (target, attempt.stderr)
        git(work, "merge", "--abort", check=False)


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

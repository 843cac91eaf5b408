"""CI on every commit when it cannot run: an unreadable mvc.toml refuses the commit before anything
is written; a revision in mvc.toml that does not resolve says the commit landed (and, with
on_fail = "rollback", moves the branch back, as a failing check would)."""
import os

import pytest

from mvc.errors import ConfigError, MvcError
from semantic_ci.probe import builtin_probe

from ci_helpers import BASIC, trained_table, write_config


def _objects(repo):
    return sorted(repo.store.ids())


def test_an_unreadable_mvc_toml_refuses_the_commit_before_writing(ci_repo):
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, "[ci\n")  # invalid TOML
    before = _objects(ci_repo)
    with pytest.raises(ConfigError, match="invalid TOML"):
        ci_repo.commit({"core": {"table": t + 1}}, message="second")
    assert ci_repo.head() == first and _objects(ci_repo) == before


@pytest.mark.parametrize("on_fail", ["report", "rollback"])
def test_ci_that_cannot_run_says_the_commit_landed(ci_repo, on_fail):
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, BASIC.replace("[ci]\n", f"[ci]\non_commit = true\non_fail = \"{on_fail}\"\n")
                 .replace('baseline = "HEAD~1"', 'baseline = "nosuch"', 1))
    with pytest.raises(MvcError, match="committed [0-9a-f]{12}.*could not run") as info:
        ci_repo.commit({"core": {"table": t + 1}}, message="second")
    assert "nosuch" in str(info.value)
    if on_fail == "rollback":
        assert ci_repo.head() == first and "rolled back" in str(info.value)
    else:  # the commit stands, as the message says
        assert ci_repo.head() != first and ci_repo.read_commit(ci_repo.head())["parents"] == [first]


def test_an_mvc_toml_directory_is_a_config_error_before_writing(ci_repo):
    os.unlink(os.path.join(ci_repo.root, "mvc.toml"))
    os.mkdir(os.path.join(ci_repo.root, "mvc.toml"))
    t = trained_table(builtin_probe(3000))
    with pytest.raises(ConfigError, match="cannot read it"):
        ci_repo.commit({"core": {"table": t}}, message="first")
    assert ci_repo.head() is None and not _objects(ci_repo)


def test_a_failing_commit_whose_branch_moved_on_still_reports_the_failure(ci_repo, monkeypatch):
    from mvc.errors import CheckFailed
    from semantic_ci import certificate
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n"))
    real = certificate.last_passing_ancestor
    other = []

    def another_commit_lands_first(repo, commit):  # a second writer moves the branch during CI
        head = repo.head()
        other.append(repo.write_object({**repo.read_commit(head), "parents": [head], "message": "other"}))
        repo.refs.update("refs/heads/main", other[0], expected=head)
        return real(repo, commit)

    monkeypatch.setattr(certificate, "last_passing_ancestor", another_commit_lands_first)
    with pytest.raises(CheckFailed, match="was not rolled back") as info:  # before: a bare RefConflict
        ci_repo.commit({"core": {"table": t.flip(0)}}, message="broken")
    assert info.value.certificate and ci_repo.head() == other[0]


def test_a_paste_runs_the_on_commit_checks_as_a_commit_does(tmp_path):
    """`mvc paste` landed its commit with no certificate and no rollback under on_commit = true."""
    import bricks
    import cores
    import mvc
    from mvc.errors import CheckFailed
    from semantic_ci import certificate
    repo = mvc.Repo.init(tmp_path)
    a = cores.build("layercake", config="tiny", seed=0)
    repo.commit({"core": a}, message="host a")
    repo.commit({"brick/python": bricks.build("sparse", host=a, seed=0)}, message="brick", branch="brick-run")
    host_b = repo.commit({"core": cores.build("layercake", config="tiny", seed=1)}, message="host b",
                         branch="host-b", root=True)
    write_config(repo, '[ci]\non_commit = true\non_fail = "rollback"\nprobe_bytes = 256\nwindow = 64\n\n'
                       '[[ci.checks]]\nname = "same-core-as-main"\nkind = "exact-logits"\ncomponent = "core"\n'
                       'baseline = "main"\n')  # fails on every host-b commit: its core is not main's
    with pytest.raises(CheckFailed, match="rolled back"):
        repo.paste_brick("python", "brick-run", "host-b")
    pasted = {e["new"] for e in repo.reflog("host-b")} - {host_b}  # (the paste, then the rollback)
    assert repo.branches()["host-b"] == host_b and len(pasted) == 1 and certificate.of_commit(repo, pasted.pop())
    r = repo.paste_brick("python", "brick-run", "host-b", run_hooks=False)  # (--no-ci)
    assert r["moved"] and repo.branches()["host-b"] == r["commit"]


@pytest.mark.parametrize("command", ["commit", "revert"])
def test_json_commands_print_a_document_when_the_on_commit_checks_fail(ci_repo, monkeypatch, tmp_path, command):
    """`mvc commit --json` / `mvc revert --json` printed nothing when CI failed and rolled back."""
    import json

    from click.testing import CliRunner
    from safetensors.torch import save_file

    from mvc.cli import cli
    from semantic_ci import certificate
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    broken = ci_repo.commit({"core": {"table": t.flip(0)}}, message="broken")  # (no CI yet)
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n"))
    ci_repo.rollback(first)
    monkeypatch.chdir(ci_repo.root)
    save_file({"table": t.flip(0).contiguous()}, str(tmp_path / "core.safetensors"))
    args = (["commit", "-c", f"core={tmp_path / 'core.safetensors'}", "-m", "again"] if command == "commit"
            else ["revert", broken])
    r = CliRunner().invoke(cli, args + ["--json"])
    assert r.exit_code == 1 and "rolled back" in r.stderr, r.output
    doc = json.loads(r.stdout)
    assert doc["rolled_back"] and doc["branch_head"] == first == ci_repo.head() and not doc["ci_passed"]
    assert certificate.read(ci_repo, doc["certificate"])["commit"] == doc["commit"] != first


def test_commit_json_prints_a_document_when_the_on_commit_checks_cannot_run(ci_repo, monkeypatch, tmp_path):
    import json

    from click.testing import CliRunner
    from safetensors.torch import save_file

    from mvc.cli import cli
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n")
                 .replace('baseline = "HEAD~1"', 'baseline = "nosuch"', 1))
    monkeypatch.chdir(ci_repo.root)
    save_file({"table": (t + 1).contiguous()}, str(tmp_path / "core.safetensors"))
    r = CliRunner().invoke(cli, ["commit", "-c", f"core={tmp_path / 'core.safetensors'}", "-m", "x", "--json"])
    assert r.exit_code == 3 and "could not run" in r.stderr, r.output
    doc = json.loads(r.stdout)
    assert not doc["ci_ran"] and doc["certificate"] is None and doc["rolled_back"] and doc["branch_head"] == first
    assert ci_repo.read_commit(doc["commit"])["parents"] == [first] and ci_repo.head() == first


def test_a_branch_ci_emptied_goes_back_with_rollback_rev_as_the_error_says(ci_repo):
    """After on_fail = "rollback" emptied a branch (CI failed on its first commit), `mvc rollback <id>`
    said "the current branch has no commits to roll back": every move could be undone but this one."""
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n")
                 .replace('baseline = "HEAD~1"', 'baseline = "nosuch"', 1))
    with pytest.raises(MvcError, match="rolled back to no commit: none of its commits passed") as info:
        ci_repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="first")
    commit = info.value.commit
    assert ci_repo.head() is None and f"; to keep the commit anyway: mvc rollback {commit[:12]}" in info.value.message
    with pytest.raises(MvcError, match="no commits to roll back"):
        ci_repo.rollback()  # (no REV: nothing to go back from)
    assert ci_repo.rollback(commit[:12]) == {"branch": "main", "old": None, "new": commit}
    assert ci_repo.head() == commit and ci_repo.reflog()[0]["message"] == f"rollback: to {commit[:12]}"


def test_rollback_of_an_empty_branch_to_a_commit_prints_no_undo_to_nothing(ci_repo, monkeypatch):
    from click.testing import CliRunner
    from mvc.cli import cli
    cid = ci_repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="kept", branch="other")
    monkeypatch.chdir(ci_repo.root)
    r = CliRunner().invoke(cli, ["rollback", cid[:12]])
    assert r.exit_code == 0 and r.stdout == f"main: - -> {cid[:12]} (it had no commit)\n"


def test_on_commit_a_baseline_naming_the_branch_committed_to_is_that_branch_before_the_commit(ci_repo):
    """The README's mvc.toml (baseline = "main", on_commit = true): on-commit CI runs once main has
    moved, so a commit to main was compared with itself (ratio 1.0) and a far worse model passed."""
    from mvc.errors import CheckFailed
    from semantic_ci import certificate
    from semantic_ci.runner import run_ci, verify
    from ci_helpers import HOOK_CONFIG, write_held_out
    write_held_out(ci_repo)
    good = ci_repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="good")
    write_config(ci_repo, HOOK_CONFIG.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n"))
    worse = trained_table(builtin_probe(3000)).flip(0)  # every row another byte's: far worse
    with pytest.raises(CheckFailed, match="general-ppl") as info:
        ci_repo.commit({"core": {"table": worse}}, message="worse")
    assert ci_repo.head() == good
    cert = certificate.read(ci_repo, info.value.certificate)
    (check,) = cert["checks"]
    assert check["inputs"]["baseline"]["commit"] == good and check["figures"]["ratio"] > 1.05
    assert check["params"]["baseline"] == "main" and "note" not in check
    assert verify(ci_repo, info.value.certificate)["verified"]
    # run by hand on main's tip, `main` is the commit itself: the result says so
    write_config(ci_repo, HOOK_CONFIG)
    report = run_ci(ci_repo, "main")
    assert "'main' is the checked commit" in report["checks"][0]["note"] and report["passed"]
    assert verify(ci_repo, report["certificate"])["verified"]


@pytest.mark.parametrize("on_fail,passes", [("rollback", True), ("report", False)])
def test_commit_says_what_the_on_commit_checks_made_of_it_when_they_do_not_stop_it(ci_repo, monkeypatch, tmp_path,
                                                                                  on_fail, passes):
    """A passing on-commit run (or a failing one under on_fail = "report") left no trace in `mvc commit`
    (--json had no ci keys) nor in `mvc show`: the certificate's id was nowhere to be seen."""
    import json

    from click.testing import CliRunner
    from safetensors.torch import save_file

    from mvc.cli import cli
    from semantic_ci import certificate
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, BASIC.replace("[ci]\n", f"[ci]\non_commit = true\non_fail = \"{on_fail}\"\n"))
    monkeypatch.chdir(ci_repo.root)
    save_file({"table": (t if passes else t.flip(0)).contiguous()}, str(tmp_path / "core.safetensors"))
    r = CliRunner().invoke(cli, ["commit", "-c", f"core={tmp_path / 'core.safetensors'}", "-m", "x", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ci_ran"] and doc["ci_passed"] is passes and certificate.of_commit(ci_repo, doc["commit"]) == [doc["certificate"]]
    shown = json.loads(CliRunner().invoke(cli, ["show", "--json"]).stdout)
    assert shown["certificates"] == [doc["certificate"]] and shown["ci"] == ("passed" if passes else "failed")
    text = CliRunner().invoke(cli, ["show"]).stdout
    assert f"CI:     {shown['ci']} (certificate {doc['certificate'][:12]})" in text
    r = CliRunner().invoke(cli, ["commit", "-c", f"core={tmp_path / 'core.safetensors'}", "-m", "y"])  # (= x)
    cert = certificate.of_commit(ci_repo, ci_repo.head())[0]
    assert r.stdout.splitlines()[1] == f"semantic CI passed: certificate {cert[:12]} (mvc verify {cert[:12]} re-runs it)"
    if not passes:  # (report: a revert to the first state fails the frozen check, and lands)
        r = CliRunner().invoke(cli, ["revert", first, "--json"])
        doc = json.loads(r.stdout)
        assert r.exit_code == 0 and doc["ci_ran"] and doc["ci_passed"] is False and doc["restored"] == first
        assert certificate.of_commit(ci_repo, doc["commit"]) == [doc["certificate"]]


def test_only_a_bare_baseline_name_means_the_branch_before_the_commit(ci_repo):
    """`main~1` stays the candidate's parent on a commit to main (it became the grandparent, and on
    main's second commit a skip), and a migration's source or hosts naming main stay main as it is."""
    from semantic_ci.checks import Context, resolve_check_rev
    from semantic_ci.config import Check, CiConfig
    from semantic_ci.models import ModelCache
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    second = ci_repo.commit({"core": {"table": t + 1}}, message="second")
    ctx = Context(ci_repo, second, CiConfig(source="mvc.toml"), ModelCache(ci_repo), None, ("main", first))
    check = Check(name="c", kind="migration", params={})
    assert resolve_check_rev(ctx, check, "baseline", "main") == first
    assert resolve_check_rev(ctx, check, "baseline", "main~1") == first  # (from main as it is: the parent)
    assert resolve_check_rev(ctx, check, "source", "main") == second
    assert resolve_check_rev(ctx, check, "hosts[0]", "refs/heads/main") == second


def test_the_rollback_hint_works_while_git_s_branch_is_another(ci_repo):
    """The hint said `mvc rollback C`, which refuses while git's branch is not mvc's current one."""
    import subprocess
    from mvc.errors import CheckFailed
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "i"], ["branch", "feat"]):
        subprocess.run(["git", *args], cwd=ci_repo.root, check=True, capture_output=True, env=env)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="first")
    ci_repo.create_branch("feat")
    ci_repo.switch("feat")  # (mvc's HEAD: feat; git's branch: main)
    assert ci_repo.git_branch_elsewhere() == "main"
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n"))
    with pytest.raises(CheckFailed) as info:
        ci_repo.commit({"core": {"table": t.flip(0)}}, message="bad", branch="feat")
    assert info.value.hint == f"to keep the commit anyway: mvc switch main; mvc branch -f feat {info.value.commit[:12]}"
    ci_repo.switch("main")  # (the hint, followed)
    ci_repo.force_branch("feat", info.value.commit[:12])
    assert ci_repo.branches()["feat"] == info.value.commit


@pytest.mark.parametrize("on_fail", ["report", "rollback"])
def test_ctrl_c_during_on_commit_ci_rolls_the_branch_back_only_under_rollback(ci_repo, monkeypatch, on_fail):
    """h73: Ctrl-C while on-commit CI ran left the branch on the unjudged commit under on_fail =
    "rollback" (a branch that should hold only commits CI passed); as when CI cannot run, it goes back."""
    from click.testing import CliRunner
    from mvc.cli import cli
    from mvc.errors import InterruptedAfterLanding
    from semantic_ci import hooks
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, BASIC.replace("[ci]\n", f"[ci]\non_commit = true\non_fail = \"{on_fail}\"\n"))

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(hooks, "run_ci", interrupted)
    with pytest.raises(InterruptedAfterLanding) as info:
        ci_repo.commit({"core": {"table": t + 1}}, message="second")
    second = next(e["new"] for e in ci_repo.reflog() if e["message"] == "commit: second")
    assert ci_repo.read_commit(second)["parents"] == [first]
    if on_fail == "rollback":
        assert ci_repo.head() == first
        assert info.value.landed == (f"commit {second} landed on main, before semantic CI judged it: main rolled "
                                     f"back to {first[:12]}")
        assert info.value.hint == f"to keep the commit anyway: mvc rollback {second[:12]}"
    else:
        assert ci_repo.head() == second and info.value.landed == f"commit {second} landed on main"
    from safetensors.torch import save_file
    save_file({"table": t + 2}, os.path.join(ci_repo.root, "third.safetensors"))
    monkeypatch.chdir(ci_repo.root)
    r = CliRunner().invoke(cli, ["commit", "--component", "core=third.safetensors", "-m", "third"])
    assert r.exit_code == 130, r.output
    third = next(e["new"] for e in ci_repo.reflog() if e["message"] == "commit: third")
    if on_fail == "rollback":
        assert ci_repo.head() == first and f"landed on main, before semantic CI judged it: main rolled back to " \
            f"{first[:12]}" in r.stderr and f"mvc rollback {third[:12]}" in r.stderr
    else:
        assert ci_repo.head() == third and r.stderr.startswith(f"error: interrupted after commit {third} landed on main")


@pytest.mark.parametrize("trouble", ["rollback fails", "second ctrl-c"])
def test_an_interrupted_on_commit_ci_says_what_happened_to_the_branch(ci_repo, monkeypatch, trouble):
    """h79: a rollback failing after Ctrl-C (a held ref lock) replaced the interrupt with an exit-3
    error that said neither; a second Ctrl-C while the message was made said the commit stood on
    a branch already moved back off it."""
    from mvc.errors import InterruptedAfterLanding, LockHeld
    from semantic_ci import hooks
    t = trained_table(builtin_probe(3000))
    first = ci_repo.commit({"core": {"table": t}}, message="first")
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n"))

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(hooks, "run_ci", interrupted)
    if trouble == "rollback fails":
        def busy(*a, **k):
            raise LockHeld("refs/heads/main is locked by another mvc process")
        monkeypatch.setattr(hooks, "_roll_back", busy)
    else:
        monkeypatch.setattr(hooks, "_undo_hint", interrupted)
    with pytest.raises(InterruptedAfterLanding) as info:
        ci_repo.commit({"core": {"table": t + 1}}, message="second")
    second = next(e["new"] for e in ci_repo.reflog() if e["message"] == "commit: second")
    if trouble == "rollback fails":
        assert ci_repo.head() == second and info.value.landed.endswith(
            "before semantic CI judged it (main could not be rolled back: refs/heads/main is locked by another "
            "mvc process)") and f"mvc rollback {first[:12]} moves main back" in info.value.hint
    else:
        assert ci_repo.head() == first and info.value.landed.endswith(f"main rolled back to {first[:12]}")

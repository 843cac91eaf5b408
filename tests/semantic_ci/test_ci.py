"""Semantic CI on a tiny adapter-built model family: exact logits, PPL ratio, certificates,
verify, tampering, on-commit rollback and the CLI."""
import json
import os
import types

import pytest
import torch
from click.testing import CliRunner

import mvc
from mvc.cli import cli
from mvc.errors import ConfigError, CorruptObject
from semantic_ci import certificate, config as cfgmod
from semantic_ci.probe import builtin_probe
from semantic_ci.runner import run_ci, verify

from ci_helpers import BASIC, HELD_OUT, trained_table, write_config


def test_identical_commit_passes_and_perturbed_ulp_fails(ci_repo):
    table = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": table}}, message="base")
    ci_repo.commit({"core": {"table": table.clone()}}, message="same", metrics={"x": 1})
    r = run_ci(ci_repo)
    frozen = next(c for c in r["checks"] if c["name"] == "frozen")
    assert r["passed"] and frozen["figures"]["differing_positions"] == 0 and frozen["figures"]["max_abs_delta"] == 0
    # one element, one ulp
    bumped = table.clone()
    a, b = 101, 32  # byte 'e' followed by ' '
    bumped[a, b] = torch.nextafter(bumped[a, b], torch.tensor(float("inf")))
    ci_repo.commit({"core": {"table": bumped}}, message="one ulp")
    r = run_ci(ci_repo)
    frozen = next(c for c in r["checks"] if c["name"] == "frozen")
    probe = builtin_probe(2048)
    expected_first = probe.index(bytes([a]))
    assert not r["passed"] and frozen["status"] == "failed"
    assert frozen["figures"]["first_differing_offset"] == expected_first
    assert frozen["figures"]["differing_positions"] == probe[:-1].count(bytes([a]))
    assert 0 < frozen["figures"]["max_abs_delta"] < 1e-6
    ppl = next(c for c in r["checks"] if c["name"] == "ppl")
    assert ppl["status"] == "passed" and ppl["figures"]["ratio"] == pytest.approx(1.0, abs=1e-6)


def test_negative_zero_is_a_difference(ci_repo):
    t = trained_table(builtin_probe(3000))
    t[:, 7] = 0.0
    ci_repo.commit({"core": {"table": t}}, message="+0")
    t2 = t.clone()
    t2[:, 7] = -0.0
    ci_repo.commit({"core": {"table": t2}}, message="-0")
    frozen = run_ci(ci_repo, names=["frozen"])["checks"][0]
    assert frozen["status"] == "failed" and frozen["figures"]["max_abs_delta"] == 0.0


def test_ppl_ratio_passes_small_change_fails_damage(ci_repo):
    good = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": good}}, message="good")
    slightly = trained_table(builtin_probe(3000), smoothing=0.55)
    ci_repo.commit({"core": {"table": slightly}}, message="slightly different")
    ppl = run_ci(ci_repo, names=["ppl"])["checks"][0]
    assert ppl["status"] == "passed" and 0.95 < ppl["figures"]["ratio"] < 1.05
    lo, hi = ppl["figures"]["ratio_ci95"]
    assert lo <= ppl["figures"]["ratio"] <= hi
    damaged = slightly.clone()
    damaged[:, :] = damaged[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    ci_repo.commit({"core": {"table": damaged}}, message="damaged")
    ppl = run_ci(ci_repo, names=["ppl"])["checks"][0]
    assert ppl["status"] == "failed" and ppl["figures"]["ratio"] > 1.5
    # PPL is aggregated over bytes: recompute by hand
    logp = torch.log_softmax(damaged.double(), -1)
    ids = torch.tensor(list(HELD_OUT))
    by_hand = float(torch.exp(-logp[ids[:-1], ids[1:]].mean()))
    # windows drop no byte: every byte after the first is predicted exactly once
    assert ppl["figures"]["ppl"] == pytest.approx(by_hand, rel=1e-9)


def test_a_ppl_ratio_over_too_few_windows_says_its_interval_means_little(ci_repo):
    """A window as long as the held-out data gave one window and a "95% interval" of zero width,
    [0.985398, 0.985398], which looked more certain than any (h55)."""
    ci_repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="good")
    ci_repo.commit({"core": {"table": trained_table(builtin_probe(3000), smoothing=0.55)}}, message="other")
    ppl = run_ci(ci_repo, names=["ppl"])["checks"][0]
    assert ppl["figures"]["windows"] >= 10 and not (ppl.get("note") or "").startswith("only")
    write_config(ci_repo, BASIC.replace("window = 128", f"window = {len(HELD_OUT)}"))
    ppl = run_ci(ci_repo, names=["ppl"])["checks"][0]
    assert ppl["figures"]["windows"] == 1 and ppl["note"].startswith(
        f"only 1 window of {len(HELD_OUT)} bytes: the 95% interval resamples too few")


def test_first_commit_baseline_is_skipped_not_failed(ci_repo):
    ci_repo.commit({"core": {"table": trained_table(b"abc" * 100)}}, message="first")
    r = run_ci(ci_repo)
    assert r["passed"] and {c["status"] for c in r["checks"]} == {"skipped"}


def test_certificate_verifies_and_tampering_is_rejected(ci_repo, monkeypatch):
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 1.01}}, message="b")
    r = run_ci(ci_repo)
    v = verify(ci_repo, "HEAD")
    assert v["verified"] and v["certificate"] == r["certificate"]
    assert certificate.read(ci_repo, r["certificate"])["config"] == "mvc.toml"  # no local paths in it
    # the logits digests inside the certificate are not object ids: fsck finds nothing missing
    assert any(c.get("figures", {}).get("logits_digest") for c in certificate.read(ci_repo, r["certificate"])["checks"])
    assert ci_repo.fsck()["problems"] == []
    # a forged certificate: one figure edited, re-stored under a new id and attached
    cert = certificate.read(ci_repo, r["certificate"])
    ppl = next(c for c in cert["checks"] if c["name"] == "ppl")
    ppl["figures"]["ratio"] *= 0.9
    forged = certificate.store(ci_repo, cert)
    v = verify(ci_repo, forged)
    assert not v["verified"]
    assert any("ratio" in d for c in v["checks"] for d in c["diffs"])
    monkeypatch.chdir(ci_repo.root)
    res = CliRunner().invoke(cli, ["verify", forged], catch_exceptions=False)
    assert res.exit_code == 3 and "ratio: certificate says" in res.output and "does not verify" in res.output  # DESIGN 4: tampered
    # an in-place edit of the stored object breaks its hash
    path = ci_repo.loose.path(r["certificate"])
    os.chmod(path, 0o644)
    data = open(path, "rb").read().replace(b'"passed":true', b'"passed":fals', 1)
    open(path, "wb").write(data)
    with pytest.raises(CorruptObject):
        verify(ci_repo, r["certificate"])


def test_a_certificate_whose_figures_break_its_own_bounds_does_not_count_as_passed(ci_repo):
    """h72 06: a certificate edited to call a check passed while its own ratio is above its own
    max_ratio read as "CI: passed" in mvc status / log, and on-commit rollback took it so."""
    import copy
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t.clone()}}, message="b", metrics={"x": 1})
    cert = certificate.read(ci_repo, run_ci(ci_repo)["certificate"])
    assert certificate.passed(cert)
    for kind, edit in (("ppl-ratio", lambda c: c["figures"].update(ratio=c["thresholds"]["max_ratio"] * 1.1)),
                       ("ppl-ratio", lambda c: c["figures"].update(ratio=float("nan"))),
                       ("exact-logits", lambda c: c["figures"].update(differing_positions=3))):
        forged = copy.deepcopy(cert)
        edit(next(c for c in forged["checks"] if c["kind"] == kind and c["status"] == "passed"))
        assert not certificate.passed(forged), kind


def test_verify_notes_a_data_file_that_no_longer_holds_what_the_check_measured(ci_repo):
    """h72 01: a certificate whose check had measured other bytes than mvc.toml's data file holds
    verified without a word ("its checks passed"); it still reproduces on its recorded bytes."""
    from ci_helpers import write_held_out
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t.clone()}}, message="b", metrics={"x": 1})
    run_ci(ci_repo)
    assert not any("now holds other bytes" in (c.get("note") or "") for c in verify(ci_repo, "HEAD")["checks"])
    write_held_out(ci_repo, HELD_OUT[::-1])
    v = verify(ci_repo, "HEAD")
    ppl = next(c for c in v["checks"] if c["name"] == "ppl")
    assert v["verified"] and "heldout.txt now holds other bytes" in ppl["note"]


def test_on_commit_rollback_moves_branch_back(ci_repo):
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\non_fail = \"rollback\"\n"))
    t = trained_table(builtin_probe(3000))
    c1 = ci_repo.commit({"core": {"table": t}}, message="first")
    c2 = ci_repo.commit({"core": {"table": t.clone()}}, message="same")
    bad = t.clone()
    bad[101, 32] += 1.0
    with pytest.raises(mvc.CheckFailed) as info:
        ci_repo.commit({"core": {"table": bad}}, message="bad")
    assert ci_repo.head() == c2 and info.value.commit != c2
    assert ci_repo.read_commit(info.value.commit)["parents"] == [c2]  # kept in history
    assert ci_repo.reflog()[0]["message"].startswith("ci rollback")
    assert certificate.read(ci_repo, info.value.certificate)["passed"] is False
    assert ci_repo.resolve("HEAD~1") == c1
    assert info.value.hint == f"to keep the commit anyway: mvc rollback {info.value.commit[:12]}"


def test_on_commit_report_mode_warns_and_keeps_commit(ci_repo):
    write_config(ci_repo, BASIC.replace("[ci]\n", "[ci]\non_commit = true\n"))
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="first")
    bad = t.clone()
    bad[101, 32] += 1.0
    with pytest.warns(UserWarning, match="semantic CI failed"):
        cid = ci_repo.commit({"core": {"table": bad}}, message="bad")
    assert ci_repo.head() == cid


@pytest.mark.parametrize("text,match", [
    ("[ci]\nbogus = 1\n", r"ci\.bogus: unknown key"),
    ("[ci]\n[[ci.checks]]\nname='x'\nkind='nope'\n", r"ci\.checks\[x\]\.kind: unknown kind"),
    ("[ci]\n[[ci.checks]]\nname='x'\nkind='ppl-ratio'\nbaseline='main'\nmax_rato=1.1\n", r"max_rato: unknown key"),
    ("[ci]\non_fail='explode'\n", r"ci\.on_fail"),
    ("[ci]\n[[ci.checks]]\nname='x'\nkind='ppl-ratio'\n", r"needs a baseline"),
    ("[ci\n", "invalid TOML"),
])
def test_config_errors_name_file_and_key(tmp_path, text, match):
    (tmp_path / "mvc.toml").write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        cfgmod.load(str(tmp_path))
    assert str(tmp_path / "mvc.toml") in str(info.value)


def test_cli_ci_json_exit_codes_and_junit(ci_repo, monkeypatch, tmp_path):
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    runner = CliRunner()
    r = runner.invoke(cli, ["ci", "--json", "--junit", str(tmp_path / "j.xml")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) >= {"commit", "passed", "certificate", "checks"} and doc["passed"]
    assert all(set(c) >= {"name", "kind", "passed", "figures", "thresholds"} for c in doc["checks"])
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()
    r = runner.invoke(cli, ["ci", "--json", "--junit", str(tmp_path / "j.xml")])  # (its own report: replaced)
    assert r.exit_code == 0, r.output
    # h113 04: --junit .mvc/config replaced the repository's config, --junit mvc.toml the run's input
    config, toml_text = open(os.path.join(ci_repo.dir, "config"), "rb").read(), open("mvc.toml", "rb").read()
    for target, why in ((".mvc/config", "inside a repository's .mvc directory"),
                        (".mvc/refs/heads/x", "inside a repository's .mvc directory"),
                        ("mvc.toml", "exists and is not a JUnit report")):
        r = runner.invoke(cli, ["ci", "--junit", target])
        assert r.exit_code == 2 and why in r.stderr, r.output
    assert open(os.path.join(ci_repo.dir, "config"), "rb").read() == config and open("mvc.toml", "rb").read() == toml_text
    assert not os.path.exists(os.path.join(ci_repo.dir, "refs", "heads", "x"))
    bad = t.clone()
    bad[101] = 0
    ci_repo.commit({"core": {"table": bad}}, message="c")
    r = runner.invoke(cli, ["ci", "--check", "frozen"])
    assert r.exit_code == 1 and "FAIL" in r.stdout
    r = runner.invoke(cli, ["verify", "HEAD", "--json"])  # authentic, and a failure: exit 1 (verify && deploy)
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["verified"] and doc["passed"] is False and doc["failed"] == ["frozen"]
    assert "error" not in doc
    toml = os.path.join(ci_repo.root, "mvc.toml")
    os.rename(toml, toml + ".away")  # h77: a document printed with exit 3 had no "error" key
    r = runner.invoke(cli, ["verify", "HEAD", "--json"])
    os.rename(toml + ".away", toml)
    doc = json.loads(r.stdout)
    assert r.exit_code == 3 and doc["verified"] is False and doc["error"] == r.stderr.split("error: ", 1)[1].split(" (")[0]
    r = runner.invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 1 and "verified: it records a FAILED run (frozen)" in r.stdout
    r = runner.invoke(cli, ["verify", "HEAD~1"])
    assert r.exit_code == 0 and "verified: its checks passed" in r.stdout
    log = json.loads(runner.invoke(cli, ["log", "--json"]).stdout)
    assert [c["ci"] for c in log] == ["failed (partial run)", "passed", None]  # only --check frozen ran on c
    r = runner.invoke(cli, ["ci", "--check", "nope"])
    assert r.exit_code == 3 and "no check named nope" in r.stderr


def test_the_readme_ci_system_steps_work_in_a_fresh_checkout(ci_repo, monkeypatch, tmp_path):
    """README's CI-system snippet: a git checkout holds mvc.toml and the data, not .mvc; it ran
    `mvc fetch origin` there (not an mvc repository) and named local branches fetch never makes."""
    from mvc import remote as rm
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="main")
    ci_repo.create_branch("feature")
    ci_repo.commit({"core": {"table": t}, "extra": {"x": torch.ones(2)}}, message="feature work", branch="feature")
    rm.add_remote(ci_repo, "origin", str(tmp_path / "shared"))
    rm.push(ci_repo, "origin", "main")
    rm.push(ci_repo, "origin", "feature")
    checkout = tmp_path / "runner"
    checkout.mkdir()
    for name in ("mvc.toml", "heldout.txt"):  # what the git checkout brings
        (checkout / name).write_bytes(open(os.path.join(ci_repo.root, name), "rb").read())
    monkeypatch.chdir(checkout)
    runner = CliRunner()
    steps = [["init", "."], ["remote", "add", "origin", str(tmp_path / "shared")], ["fetch", "origin"],
             ["ci", "origin/feature", "--base", "origin/main", "--junit", "reports/mvc-ci.xml"]]
    for step in steps:  # the README's steps, with GITHUB_HEAD_REF = feature
        r = runner.invoke(cli, step)
        assert r.exit_code == 0, (step, r.output)
    assert "PASS" in r.stdout and 'failures="0"' in (checkout / "reports" / "mvc-ci.xml").read_text()
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    assert 'mvc ci "origin/$GITHUB_HEAD_REF" --base origin/main --junit reports/mvc-ci.xml' in readme
    assert "mvc init ." in readme and 'mvc remote add origin "$MVC_REMOTE"' in readme


def test_a_branch_mvc_toml_names_is_the_fetched_one_in_a_repository_without_it(ci_repo, monkeypatch, tmp_path):
    """The README's CI-system steps with mvc.toml naming a branch (a migration check's hosts =
    ["host-b"], a baseline = "release"): the fresh repository holds only origin/release, and every
    check stopped with "revision 'release' does not resolve". A branch of the repository's own wins."""
    from mvc import remote as rm
    t = trained_table(builtin_probe(3000))
    root = ci_repo.commit({"core": {"table": t}}, message="root")
    first = ci_repo.commit({"core": {"table": t}}, message="release")
    ci_repo.create_branch("release")
    ci_repo.commit({"core": {"table": t.clone()}}, message="main")
    ci_repo.create_branch("feature")
    feature = ci_repo.commit({"core": {"table": t}, "x": {"x": torch.ones(2)}}, message="feature", branch="feature")
    rm.add_remote(ci_repo, "origin", str(tmp_path / "shared"))
    for b in ("main", "feature", "release"):
        rm.push(ci_repo, "origin", b)
    runner_dir = tmp_path / "runner"
    runner_dir.mkdir()
    config = BASIC.replace('baseline = "HEAD~1"\n\n', 'baseline = "release"\n\n', 1).replace(
        'baseline = "HEAD~1"\nmax', 'baseline = "release~1"\nmax', 1)
    assert config.count('"release') == 2
    (runner_dir / "mvc.toml").write_text(config)
    (runner_dir / "heldout.txt").write_bytes(open(os.path.join(ci_repo.root, "heldout.txt"), "rb").read())
    monkeypatch.chdir(runner_dir)
    runner = CliRunner()
    for step in (["init", "."], ["remote", "add", "origin", str(tmp_path / "shared")], ["fetch", "origin"]):
        assert runner.invoke(cli, step).exit_code == 0
    r = runner.invoke(cli, ["ci", "origin/feature", "--json"])
    assert r.exit_code == 0, r.output
    here = mvc.Repo(".")

    def baselines(doc):
        return {c["inputs"]["baseline"]["commit"] for c in certificate.read(here, doc["certificate"])["checks"]}
    doc = json.loads(r.stdout)
    assert doc["commit"] == feature and baselines(doc) == {first, root}  # (release~1: below origin's release)
    from semantic_ci.checks import resolve_relative
    from semantic_ci.pipeline import _check_revisions
    stage = types.SimpleNamespace(name="s", checks=cfgmod.load(here.root).checks, get=lambda key: None)
    _check_revisions(types.SimpleNamespace(repo=here, branches=lambda s: {}),  # a pipeline's pre-flight agrees
                     types.SimpleNamespace(stages=[stage], path="p.toml"), None)
    rm.add_remote(here, "upstream", str(tmp_path / "shared"))
    rm.fetch(here, "upstream")  # origin's is taken of two; of two others, neither
    assert resolve_relative(here, "release", feature) == first
    here.refs.update("refs/remotes/origin/release", None)
    rm.add_remote(here, "third", str(tmp_path / "shared"))
    rm.fetch(here, "third")
    with pytest.raises(mvc.errors.UnknownRevision, match="several remotes' were fetched: third/release, "
                                                         "upstream/release"):
        resolve_relative(here, "release", feature)
    here.create_branch("release", first)
    other = here.commit({"core": {"table": t * 2}}, message="a release of this repository's own", branch="release")
    r = runner.invoke(cli, ["ci", "origin/feature", "--json"])
    assert r.exit_code in (0, 1), r.output
    assert baselines(json.loads(r.stdout)) == {other, first}  # (a branch of its own wins)
    with pytest.raises(mvc.errors.UnknownRevision, match="no parent"):  # past its root: not a fetched one's ~3
        resolve_relative(here, "release~3", feature)


@pytest.mark.parametrize("terminal", [True, False])
def test_ci_and_verify_say_which_check_runs_on_a_terminal(ci_repo, monkeypatch, terminal):
    """`mvc verify` printed nothing until every check had re-run (31-47 s of silence for the README's
    checks), where `mvc ci` names each check as it starts."""
    import types

    from mvc.cli import ci_cmds
    write_config(ci_repo, BASIC)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t.clone()}}, message="b")
    monkeypatch.setattr(ci_cmds, "sys", types.SimpleNamespace(stderr=types.SimpleNamespace(isatty=lambda: terminal),
                                                              exit=__import__("sys").exit))
    monkeypatch.chdir(ci_repo.root)
    ran = CliRunner().invoke(cli, ["ci"])
    checked = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert ran.exit_code == checked.exit_code == 0, ran.output + checked.output
    lines = ["running frozen ...", "running ppl ..."] if terminal else []
    assert ran.stderr.splitlines() == lines
    assert checked.stderr.splitlines() == [x.replace("running", "re-running") for x in lines]
    assert json.loads(CliRunner().invoke(cli, ["verify", "HEAD", "--json"]).stdout)["verified"]

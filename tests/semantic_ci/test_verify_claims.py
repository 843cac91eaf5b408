"""What `mvc verify` accepts as a claim: the run it picks for a commit, what a check measured against
what mvc.toml defines now, the baseline a certificate pinned, logits whose bits another CPU code
path changes, and check data the git hooks read from the target branch."""
import json
import os
import subprocess

import pytest
from click.testing import CliRunner

import mvc
from mvc.cli import cli
from mvc.errors import ConfigError, UnknownRevision
from semantic_ci import certificate
from semantic_ci.git_hook import pre_push
from semantic_ci.probe import builtin_probe
from semantic_ci.runner import envelope_changes, run_ci, verify

from ci_helpers import BASIC, HELD_OUT, HOOK_CONFIG, trained_table, write_config


@pytest.fixture
def failing(ci_repo, monkeypatch):
    """ci_repo with two commits whose frozen check fails (the core moved a little) and whose ppl
    check passes; its full run is certified."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 1.0001}}, message="b")
    summary = run_ci(ci_repo)
    assert not summary["passed"] and [c["status"] for c in summary["checks"]] == ["failed", "passed"]
    return ci_repo, summary["certificate"]


def forged(repo, cert_id, edit) -> str:
    cert = json.loads(json.dumps(certificate.read(repo, cert_id)))
    edit(cert)
    for c in cert["checks"]:
        c.update(status="passed", passed=True)
    cert["passed"] = True
    return certificate.store(repo, cert)


def frozen_of(cert):
    return next(c for c in cert["checks"] if c["name"] == "frozen")


def test_verify_of_a_commit_judges_its_latest_full_run_not_a_later_partial_one(failing):
    """A passing `mvc ci --check ppl` after the full run failed made `mvc verify HEAD` exit 0."""
    repo, _ = failing
    assert run_ci(repo, names=["ppl"])["passed"]
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 1 and "FAILED run (frozen)" in r.stdout, r.output
    only_partial = certificate.of_commit(repo, repo.resolve("HEAD"))[-1]
    r = CliRunner().invoke(cli, ["verify", only_partial])  # asked for by id: said to be partial
    assert r.exit_code == 0 and "a partial run: ppl only)" in r.stdout, r.output  # (it said "no full run
    doc = json.loads(CliRunner().invoke(cli, ["verify", only_partial, "--json"]).stdout)  # is recorded")
    assert doc["partial"] is True and doc["full_run_recorded"] is True


def test_every_check_in_another_order_is_a_full_run(failing):
    repo, _ = failing
    cert = certificate.read(repo, run_ci(repo, names=["ppl", "frozen"])["certificate"])
    assert not cert.get("partial")


def test_a_full_run_that_leaves_out_a_failing_check_does_not_verify(failing):
    """A certificate with its failing check deleted (or a partial run with 'partial' removed)
    verified: verify re-ran only the checks it lists."""
    repo, cert_id = failing

    def drop_frozen(cert):
        cert["checks"] = [c for c in cert["checks"] if c["name"] != "frozen"]
    v = verify(repo, forged(repo, cert_id, drop_frozen))
    assert not v["verified"] and [c["name"] for c in v["checks"] if not c["reproduced"]] == ["(coverage)"]
    assert "defines 'frozen', which this full run does not record" in v["checks"][-1]["diffs"][0]
    partial = certificate.read(repo, run_ci(repo, names=["ppl"])["certificate"])
    assert verify(repo, certificate.store(repo, partial))["verified"]  # said to be partial: fine
    del partial["partial"]
    r = CliRunner().invoke(cli, ["verify", certificate.store(repo, partial)])
    assert r.exit_code == 3 and "(coverage): NOT reproduced" in r.stdout, r.output


def test_a_training_gate_in_a_certificate_of_mvc_ci_certifies_nothing(failing):
    """A certificate whose only check was a made-up gate verified (gates were checked against the
    commit's metrics only, whatever certificate held them)."""
    repo, cert_id = failing

    def gate_only(cert):
        cert["checks"] = [{"name": name, "kind": "gate", "params": {"gate": {"divergence": True}},
                           "status": "passed", "figures": {}, "inputs": {}} for name in ("frozen", "ppl")]
    v = verify(repo, forged(repo, cert_id, gate_only))
    assert not v["verified"]
    assert all("certifies nothing" in c["diffs"][0] for c in v["checks"] if c["name"] in ("frozen", "ppl"))


def test_a_check_mvc_toml_no_longer_defines_does_not_verify(failing):
    """A renamed failing check with a loosened bound verified (judged by its own bound)."""
    repo, cert_id = failing

    def rename(cert):
        frozen_of(cert).update(name="frozen (legacy)")
        cert["checks"][0]["params"]["tolerance"] = 1.0
    v = verify(repo, forged(repo, cert_id, rename))
    assert not v["verified"]
    legacy = next(c for c in v["checks"] if c["name"] == "frozen (legacy)")
    assert any("does not define a check named 'frozen (legacy)'" in d for d in legacy["diffs"])
    # an honest certificate whose check mvc.toml renamed since: said to be mvc.toml's change
    write_config(repo, BASIC.replace('name = "ppl"', 'name = "general-ppl"'))
    r = CliRunner().invoke(cli, ["verify", cert_id])
    assert r.exit_code == 3 and "mvc.toml's checks or bounds are not those" in r.stderr, r.output


def test_a_check_recorded_under_another_kind_does_not_verify(failing):
    """frozen (exact-logits, failing) re-measured honestly as a ppl-ratio check verified."""
    repo, cert_id = failing
    ppl = next(c for c in certificate.read(repo, cert_id)["checks"] if c["name"] == "ppl")

    def relabel(cert):
        cert["checks"][0] = dict(json.loads(json.dumps(ppl)), name="frozen")
    v = verify(repo, forged(repo, cert_id, relabel))
    assert not v["verified"]
    assert any("kind 'exact-logits' there, 'ppl-ratio' in the certificate" in d for d in frozen_of(v)["diffs"])


def test_a_baseline_that_is_not_what_head_1_gives_does_not_verify(failing):
    """A certificate whose HEAD~1 check compared the candidate with itself verified."""
    repo, cert_id = failing
    head = repo.resolve("HEAD")

    def self_baseline(cert):
        frozen = frozen_of(cert)
        frozen["inputs"]["baseline"]["commit"] = head
        frozen["figures"].update(max_abs_delta=0.0, differing_positions=0, first_differing_offset=None,
                                 baseline_digest=frozen["figures"]["logits_digest"])
    v = verify(repo, forged(repo, cert_id, self_baseline))
    assert not v["verified"]
    diffs = frozen_of(v)["diffs"]
    assert any("baseline = 'HEAD~1' is" in d and "does not certify what its check names" in d for d in diffs)
    assert not frozen_of(v)["config_changed"]  # not mvc.toml's doing


@pytest.mark.parametrize("adapter", [True, False])
def test_an_unreadable_mvc_toml_is_an_error_not_a_silent_pass(repo, monkeypatch, adapter):
    """With no adapter (a registry core), verify judged by the certificate's own bounds silently."""
    import cores
    monkeypatch.chdir(repo.root)
    config = BASIC.replace("probe_bytes = 2048", "probe_bytes = 256")
    if adapter:
        repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="a")
        repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="b")
    else:
        config = config.replace('adapter = "semantic_ci.adapters:bigram"', "")
        core = cores.build("layercake", config="tiny", seed=0)
        repo.commit({"core": core}, message="a")
        repo.commit({"core": core}, message="b")
    write_config(repo, config)
    with open(os.path.join(repo.root, "heldout.txt"), "wb") as f:
        f.write(HELD_OUT[:600])
    cert_id = run_ci(repo)["certificate"]
    write_config(repo, config.replace("max_ratio = 1.05", "max_ratio = 0.5") + "\n<<<<<<< HEAD\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        verify(repo, cert_id)
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and "mvc.toml" in r.stderr, r.output


def test_logits_whose_bits_differ_while_the_comparison_reproduces_verify_with_a_note(ci_repo, monkeypatch):
    """Another CPU code path (AVX2 against AVX-512, another BLAS) changes the logits' last bits: the
    digests differed and verify called the certificate tampered with."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    cert_id = run_ci(ci_repo)["certificate"]
    other_bits = json.loads(json.dumps(certificate.read(ci_repo, cert_id)))
    frozen = frozen_of(other_bits)
    frozen["figures"].update(logits_digest="0" * 64, baseline_digest="1" * 64)
    frozen["envelope"]["cpu_capability"] = "NO AVX"  # (the machine that made it)
    v = verify(ci_repo, certificate.store(ci_repo, other_bits))
    assert v["verified"], v
    assert "logits differ bit for bit" in frozen_of(v)["note"] and "cpu_capability" in frozen_of(v)["note"]
    # the figures comparing the two models must still reproduce
    frozen["figures"]["differing_positions"] = 3
    v = verify(ci_repo, certificate.store(ci_repo, other_bits))
    assert not v["verified"] and any("differing_positions" in d for d in frozen_of(v)["diffs"])
    r = CliRunner().invoke(cli, ["verify", certificate.store(ci_repo, other_bits)])
    assert r.exit_code == 3 and "another execution envelope" in r.stderr, r.output


def test_envelope_changes_name_the_fields():
    assert envelope_changes({"threads": 1, "torch": "2"}, {"threads": 2, "torch": "2"}) == \
        ["threads 2 here, 1 in the certificate"]
    assert envelope_changes(None, {"threads": 2}) == []
    # the batch is the check's window, not the machine's
    assert envelope_changes({"batch": "1 sequence of <= 32 bytes"}, {"batch": "1 sequence of <= 64 bytes"}) == []


def test_an_edited_window_is_said_to_be_a_definition_not_this_machine(ci_repo, monkeypatch):
    """The envelope's batch follows the recorded window: an edited window made verify blame this
    machine ('computes in another execution envelope: verify where it was made'), probe h84."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    t = t.clone()
    t[101, 32] += 1.0
    ci_repo.commit({"core": {"table": t}}, message="b")
    cert_id = run_ci(ci_repo, names=["ppl"])["certificate"]
    edited = json.loads(json.dumps(certificate.read(ci_repo, cert_id)))
    edited["checks"][0]["inputs"]["window"] = 64
    r = CliRunner().invoke(cli, ["verify", certificate.store(ci_repo, edited)])
    assert r.exit_code == 3, r.output
    assert "window 128 there, 64 in the certificate" in r.stdout + r.stderr, r.output
    assert "another execution envelope" not in r.stderr and "mvc.toml defines now" in r.stderr, r.stderr


def git(work, *args):
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True, check=True).stdout


def _feature_project(tmp_path, monkeypatch):
    """A git project whose main tracks mvc.toml and heldout.txt; the mvc branch `feature` holds a
    model trained on other text than main's held-out text (it fails main's gate)."""
    work = tmp_path / "proj"
    work.mkdir()
    monkeypatch.chdir(work)
    git(work, "init", "-q", "-b", "main")
    git(work, "config", "user.email", "t@example.com")
    git(work, "config", "user.name", "t")
    (work / "mvc.toml").write_text(HOOK_CONFIG)
    (work / "heldout.txt").write_bytes(HELD_OUT)
    git(work, "add", ".")
    git(work, "commit", "-qm", "project")
    repo = mvc.Repo.init(work)
    repo.commit({"core": {"table": trained_table(builtin_probe(3000))}}, message="main model")
    git(work, "checkout", "-qb", "feature")
    digits = bytes(b"0123456789 \n"[i % 12] for i in range(3000))
    repo.commit({"core": {"table": trained_table(digits)}}, message="feature model")
    return work, repo, digits


def _push_line(work):
    return f"refs/heads/feature {git(work, 'rev-parse', 'HEAD').strip()} refs/heads/main {'0' * 40}\n"


def test_pre_push_measures_on_the_target_branchs_data_not_the_branchs_own(tmp_path, monkeypatch):
    """The feature branch replaced heldout.txt with text of its own domain and its push passed."""
    work, repo, digits = _feature_project(tmp_path, monkeypatch)
    (work / "heldout.txt").write_bytes(digits[:1500])
    git(work, "commit", "-qam", "our own held-out text")
    assert pre_push(mvc.Repo(work), _push_line(work)) == 1
    cert = certificate.read(repo, certificate.of_commit(repo, repo.resolve("feature"))[-1])
    assert cert["checks"][0]["inputs"]["data_desc"] == "heldout.txt at main"
    assert repo.store.get(cert["checks"][0]["inputs"]["data"]) == HELD_OUT


def test_pre_push_refuses_gate_data_only_the_branch_tracks(tmp_path, monkeypatch, capsys):
    work, repo, digits = _feature_project(tmp_path, monkeypatch)
    git(work, "checkout", "-q", "main")
    (work / "mvc.toml").write_text(HOOK_CONFIG.replace('"heldout.txt"', '"data/eval.txt"'))
    git(work, "commit", "-qam", "gate on data/eval.txt (not committed here)")
    git(work, "checkout", "-q", "feature")
    (work / "data").mkdir()
    (work / "data" / "eval.txt").write_bytes(digits[:1500])
    git(work, "add", "data/eval.txt")
    git(work, "commit", "-qm", "bring our own eval text")
    from semantic_ci.git_hook import main
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(_push_line(work)))
    assert main(["pre-push"]) == 1
    err = capsys.readouterr().err
    assert "data/eval.txt is not tracked at main" in err and "commit data/eval.txt there" in err
    git(work, "rm", "-q", "--cached", "data/eval.txt")  # untracked: a local file, read as before
    git(work, "commit", "-qm", "untrack")
    assert pre_push(mvc.Repo(work), _push_line(work)) == 0  # the developer's own file: used as before
    cert = certificate.read(repo, certificate.of_commit(repo, repo.resolve("feature"))[-1])
    assert cert["checks"][0]["inputs"]["data_desc"] == "data/eval.txt"


def test_pre_push_is_gated_by_the_remote_s_commit_of_the_target_not_a_local_branch(tmp_path, monkeypatch, capsys):
    """`git push origin feature:main` read mvc.toml from the local branch main, else (no local main)
    from the pushed commit: a feature branch relaxing its own gate went through, and so did one
    judged by a stale local main. The remote's commit (the push line's 4th field) gates it now."""
    work, repo, _digits = _feature_project(tmp_path, monkeypatch)
    strict = git(work, "rev-parse", "main").strip()
    (work / "mvc.toml").write_text(HOOK_CONFIG.replace("max_ratio = 1.05", "max_ratio = 1000.0"))
    git(work, "commit", "-qam", "relax our own gate")
    head = git(work, "rev-parse", "HEAD").strip()
    line = f"refs/heads/feature {head} refs/heads/main {strict}\n"
    git(work, "branch", "-D", "main")  # no local main: the pushed commit's mvc.toml was read
    assert pre_push(mvc.Repo(work), line, "origin") == 1
    git(work, "branch", "main", head)  # a stale local main, relaxed: it was read
    assert pre_push(mvc.Repo(work), line, "origin") == 1
    git(work, "branch", "-D", "main")  # a branch new to the remote: its remote-tracking one, if any
    git(work, "update-ref", "refs/remotes/origin/main", strict)
    assert pre_push(mvc.Repo(work), line.replace(strict, "0" * 40), "origin") == 1
    from semantic_ci.git_hook import main  # the remote's commit not fetched: refused, not guessed
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(line.replace(strict, "1" * 40)))
    assert main(["pre-push", "origin", str(tmp_path / "remote.git")]) == 1
    assert "git fetch origin, then push again" in capsys.readouterr().err


def test_the_hooks_follow_symbolic_links_the_target_tracks_never_reading_their_text(tmp_path, monkeypatch):
    """The hooks read a tracked link's text for its data: a data file tracked as a link was
    measured on its path ("ratio 1 PASS"), and a linked mvc.toml was "invalid TOML" (probe h100)."""
    from semantic_ci.git_hook import _config_at
    work, repo, _digits = _feature_project(tmp_path, monkeypatch)
    feature = git(work, "rev-parse", "HEAD").strip()
    git(work, "checkout", "-q", "main")
    (work / "data").mkdir()
    git(work, "mv", "heldout.txt", "data/heldout-v2.txt")
    os.symlink("data/heldout-v2.txt", work / "heldout.txt")
    (work / "settings").mkdir()
    git(work, "mv", "mvc.toml", "settings/mvc.toml")
    os.symlink("settings", work / "conf")
    os.symlink("conf/../conf/mvc.toml", work / "mvc.toml")  # (a link through a linked folder)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "linked data and config")
    cfg = _config_at(repo, "main")
    assert [c.name for c in cfg.checks] == ["general-ppl"]
    assert cfg.files["heldout.txt"] == (HELD_OUT, "heldout.txt at main (data/heldout-v2.txt)")
    assert pre_push(mvc.Repo(work), f"refs/heads/feature {feature} refs/heads/main {'0' * 40}\n") == 1
    (tmp_path / "shared.txt").write_bytes(HELD_OUT[:1000])
    for link, read in (("../shared.txt", HELD_OUT[:1000]), ("heldout.txt", None)):  # out of the tree; a loop
        os.remove(work / "heldout.txt")
        os.symlink(link, work / "heldout.txt")
        git(work, "commit", "-qam", f"heldout.txt -> {link}")
        if read is None:
            with pytest.raises(ConfigError, match="more than 40 symbolic links"):
                _config_at(repo, "main")
        else:  # read from disk wherever it points, as `mvc ci` reads it
            assert _config_at(repo, "main").files["heldout.txt"][0] == read
    # a link into the work tree by its absolute path is resolved in the commit: the checked-out
    # branch's copy of that file is not the gate's (h105)
    os.remove(work / "heldout.txt")
    os.symlink(str(work / "data" / "heldout-v2.txt"), work / "heldout.txt")
    git(work, "commit", "-qam", "heldout.txt -> its absolute path")
    git(work, "checkout", "-q", "-b", "swap")
    (work / "data" / "heldout-v2.txt").write_bytes(b"the branch's own text\n")
    git(work, "commit", "-qam", "swapped data")
    assert _config_at(repo, "main").files["heldout.txt"][0] == HELD_OUT


def test_a_pipeline_stages_check_is_not_compared_with_a_same_named_check_of_mvc_toml(ci_repo, monkeypatch):
    """A pipeline stage's checks live in its pipeline file; mvc.toml's check of the same name is
    another check (comparing them failed the verify of `mvc run`'s certificates)."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    write_config(ci_repo, AS_A_STAGE_RUNS)  # (a stage's checks take no [ci] defaults)
    cert = json.loads(json.dumps(certificate.read(ci_repo, run_ci(ci_repo)["certificate"])))
    write_config(ci_repo, BASIC.replace('name = "frozen"\nkind = "exact-logits"',  # mvc.toml's own frozen
                                        'name = "frozen"\nkind = "ppl-ratio"\ndata = "heldout.txt"'))
    plain = certificate.store(ci_repo, cert)
    staged = certificate.store(ci_repo, dict(cert, config="pipeline.toml: stage train"))
    write_file(ci_repo, "pipeline.toml", STAGE_PIPELINE.format(max_ratio=1.05))
    assert not verify(ci_repo, plain)["verified"]  # a mvc.toml certificate: its definition changed
    v = verify(ci_repo, staged)
    assert v["verified"], v["checks"]


ADAPTER_LINE = 'adapter = "semantic_ci.adapters:bigram"\n'
# a stage's checks take nothing from [ci]: each names its adapter, and the window and probe are the defaults
AS_A_STAGE_RUNS = BASIC.replace("probe_bytes = 2048\nwindow = 128\n", "").replace(ADAPTER_LINE, "").replace(
    'component = "core"\n', 'component = "core"\n' + ADAPTER_LINE)


def write_file(repo, name: str, text: str) -> None:
    with open(os.path.join(repo.root, name), "w") as f:
        f.write(text)


STAGE_PIPELINE = """
[pipeline]
name = "p"

[[stages]]
name = "train"
kind = "evaluate"

[[stages.checks]]
name = "frozen"
kind = "exact-logits"
component = "core"
adapter = "semantic_ci.adapters:bigram"
baseline = "HEAD~1"

[[stages.checks]]
name = "ppl"
kind = "ppl-ratio"
component = "core"
adapter = "semantic_ci.adapters:bigram"
data = "heldout.txt"
baseline = "HEAD~1"
max_ratio = {max_ratio}
"""


def test_a_certificate_labelled_a_pipeline_stages_is_judged_by_that_stage_in_its_pipeline_file(ci_repo, monkeypatch):
    """A stage's certificate verified by its own bounds: relabelling a failing mvc ci certificate as
    a stage's ("pipeline.toml: stage train"), its bound loosened and its verdict flipped, verified
    (probe h36). Now the stage's pipeline file, read from the repository root, sets the bounds; one
    that cannot be read there confirms nothing."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 0.9}}, message="b")
    frozen = 'name = "frozen"\nkind = "exact-logits"\ncomponent = "core"\n' + ADAPTER_LINE + 'baseline = "HEAD~1"\n'
    ppl0 = 'name = "ppl0"\nkind = "ppl-ratio"\ncomponent = "core"\n' + ADAPTER_LINE + \
        'baseline = "HEAD~1"\nmax_ratio = 100.0\n'
    assert frozen in AS_A_STAGE_RUNS and frozen in STAGE_PIPELINE
    write_config(ci_repo, AS_A_STAGE_RUNS.replace(frozen, ppl0).replace("max_ratio = 1.05", "max_ratio = 0.5"))
    honest = certificate.read(ci_repo, run_ci(ci_repo)["certificate"])
    assert not honest["passed"] and [c["status"] for c in honest["checks"]] == ["passed", "failed"]
    forged = json.loads(json.dumps(honest))
    forged.update(config="pipeline.toml: stage train", passed=True)
    forged["checks"][1].update(status="passed", passed=True, thresholds={"max_ratio": 100.0})
    forged["checks"][1]["params"]["max_ratio"] = 100.0
    cid = certificate.store(ci_repo, forged)
    r = verify(ci_repo, cid)
    assert not r["verified"] and any("cannot be read here" in d for c in r["checks"] for d in c["diffs"])
    stage = STAGE_PIPELINE.replace(frozen, ppl0)
    write_file(ci_repo, "pipeline.toml", stage.format(max_ratio=0.5))
    r = verify(ci_repo, cid)
    ppl = next(c for c in r["checks"] if c["name"] == "ppl")
    assert not r["verified"] and not ppl["reproduced"], r
    assert any("re-derived with the pipeline file's bounds" in d for d in ppl["diffs"] + [ppl.get("note", "")])
    write_file(ci_repo, "pipeline.toml", stage.format(max_ratio=100.0))
    assert verify(ci_repo, cid)["verified"]  # (what the file says is what judges it)
    os.mkfifo(os.path.join(ci_repo.root, "pipe.toml"))  # what a certificate names is never blocked on or
    for named in ("/dev/zero", "pipe.toml"):              # read without end
        r = verify(ci_repo, certificate.store(ci_repo, dict(forged, config=f"{named}: stage train")))
        assert not r["verified"] and any("not a pipeline file" in d for c in r["checks"] for d in c["diffs"])


def test_a_head_relative_base_means_the_candidates_parent(ci_repo):
    """`mvc ci <two> --base HEAD~1` compared <two> with the repository's HEAD~1 (its own child)."""
    t = trained_table(builtin_probe(3000))
    one = ci_repo.commit({"core": {"table": t}}, message="one")
    two = ci_repo.commit({"core": {"table": t * 0.9}}, message="two")
    ci_repo.commit({"core": {"table": t * 0.8}}, message="three")
    cert = certificate.read(ci_repo, run_ci(ci_repo, two, base="HEAD~1")["certificate"])
    assert cert["base"] == one
    assert certificate.read(ci_repo, run_ci(ci_repo, two, base="main")["certificate"])["base"] == ci_repo.resolve("main")
    # only HEAD~N / HEAD^N are the candidate's: a reflog entry and a branch named HEADS stay names
    assert certificate.read(ci_repo, run_ci(ci_repo, two, base="HEAD@{2}")["certificate"])["base"] == one
    ci_repo.create_branch("HEADS", one)
    assert certificate.read(ci_repo, run_ci(ci_repo, two, base="HEADS")["certificate"])["base"] == one
    with pytest.raises(ConfigError, match="every check would compare it with itself"):
        run_ci(ci_repo, two, base="HEAD")  # HEAD means REV: a vacuous pass before
    with pytest.raises(UnknownRevision, match=f"^--base HEAD~5: commit {one[:12]} has no parent") as e:
        run_ci(ci_repo, two, base="HEAD~5")  # (it named "<the candidate's id>~5")
    assert two not in str(e.value)


def test_verify_names_the_checks_of_its_verdict_quoted(ci_repo, monkeypatch):
    """A check name from mvc.toml holding ESC/CR/BEL reached the terminal raw in verify's last line
    (it could erase that line and print its own); every other line shows it quoted."""
    name = "b\x1b[2K\rforged\x07"
    write_config(ci_repo, BASIC.replace('name = "frozen"', 'name = "b\\u001b[2K\\rforged\\u0007"'))
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 1.0001}}, message="b")
    for args in ([], ["--check", name]):
        assert CliRunner().invoke(cli, ["ci", *args]).exit_code == 1
        r = CliRunner().invoke(cli, ["verify", "HEAD" if not args else certificate.of_commit(
            ci_repo, ci_repo.resolve("HEAD"))[-1]])
        assert r.exit_code == 1 and '"b\\x1b[2K\\rforged\\x07"' in r.stdout, r.output
        assert not set(r.stdout) & set("\x1b\r\x07"), r.stdout


def test_a_stage_certificate_must_record_what_its_stage_defines_as_the_stage_defines_it(ci_repo, monkeypatch):
    """Judged by its stage, a certificate was only compared by bounds: one with its failing check
    left out verified, as did one whose check measured other data than the stage names; and a
    failed one under a bound loosened since crashed verify where there is no mvc.toml (probe h37)."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 0.9}}, message="b")
    with open(os.path.join(ci_repo.root, "other.txt"), "wb") as f:
        f.write(HELD_OUT[::-1])
    write_config(ci_repo, AS_A_STAGE_RUNS.replace("max_ratio = 1.05", "max_ratio = 100.0"))
    cert = json.loads(json.dumps(certificate.read(ci_repo, run_ci(ci_repo)["certificate"])))
    assert [c["status"] for c in cert["checks"]] == ["failed", "passed"]  # frozen fails: the core changed
    write_file(ci_repo, "pipeline.toml", STAGE_PIPELINE.format(max_ratio=100.0))
    os.remove(os.path.join(ci_repo.root, "mvc.toml"))
    staged = dict(cert, config="pipeline.toml: stage train")
    r = verify(ci_repo, certificate.store(ci_repo, staged))
    assert r["verified"] and not r["passed"], r["checks"]  # the authentic one
    dropped = dict(staged, checks=cert["checks"][1:], passed=True)
    r = verify(ci_repo, certificate.store(ci_repo, dropped))
    coverage = next(c for c in r["checks"] if c["name"] == "(coverage)")
    assert not r["verified"] and "defines 'frozen' for stage train, which this certificate does not record" in \
        coverage["diffs"][0]
    measured_elsewhere = json.loads(json.dumps(staged))
    measured_elsewhere["checks"][1]["params"]["data"] = "other.txt"
    r = verify(ci_repo, certificate.store(ci_repo, measured_elsewhere))
    ppl = next(c for c in r["checks"] if c["name"] == "ppl")
    assert not r["verified"] and "data 'heldout.txt' there, 'other.txt' in the certificate" in ppl["diffs"][0]
    write_file(ci_repo, "pipeline.toml", STAGE_PIPELINE.format(max_ratio=100.0).replace(
        'baseline = "HEAD~1"\n\n', 'baseline = "HEAD~1"\ntolerance = 1e9\n\n', 1))
    assert "tolerance = 1e9" in open(os.path.join(ci_repo.root, "pipeline.toml")).read()
    r = verify(ci_repo, certificate.store(ci_repo, staged))  # (there is no mvc.toml: it crashed)
    frozen = next(c for c in r["checks"] if c["name"] == "frozen")
    assert "it would pass under the bounds pipeline.toml sets now" in frozen["note"], frozen

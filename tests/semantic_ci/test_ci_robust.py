"""Semantic CI against hostile inputs: diverged (NaN/inf) models, misspelt revisions, empty
configurations, non-finite thresholds, unusable --junit paths and an edited certificate index."""
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mvc.cli import cli
from mvc.errors import ConfigError, MvcError
from semantic_ci import certificate, config as cfgmod
from semantic_ci.probe import builtin_probe
from semantic_ci.runner import run_ci, verify

from ci_helpers import BASIC, trained_table, write_config, write_held_out

HELD_OUT = builtin_probe(3000)[1500:]

# BASIC with a smaller probe, the frozen check's baseline a placeholder, and a quick bootstrap
CONFIG = (BASIC.replace("probe_bytes = 2048", "probe_bytes = 512")
          .replace('baseline = "HEAD~1"', 'baseline = "{baseline}"', 1) + "bootstrap = 50\n")


def table(seed=0) -> torch.Tensor:
    return trained_table(builtin_probe(1500 + seed))


@pytest.fixture
def ci_repo(repo, monkeypatch):
    write_config(repo, CONFIG.replace("{baseline}", "HEAD~1"))
    write_held_out(repo, HELD_OUT)
    monkeypatch.chdir(repo.root)
    return repo


def two_commits(repo, second=None):
    t = table()
    c1 = repo.commit({"core": {"table": t}}, message="a")
    c2 = repo.commit({"core": {"table": t.clone() if second is None else second}}, message="b")
    return c1, c2


def cert_index_lines(repo, commit):
    path = os.path.join(repo.dir, "certs", commit[:2], commit[2:])
    return open(path).read().split() if os.path.exists(path) else []


# -- 1. a diverged model fails its checks; the certificate is stored and verifies -------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_fail_checks_and_certificate_is_stored(ci_repo, bad):
    t = table()
    t[101, :] = bad  # every logit after an 'e' is NaN (or inf: its log-softmax is NaN)
    _, c2 = two_commits(ci_repo, t)
    r = CliRunner().invoke(cli, ["ci", "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    frozen, ppl = doc["checks"]
    assert frozen["status"] == ppl["status"] == "failed"
    assert frozen["figures"]["max_abs_delta"] == "inf" and "max_abs_delta is inf" in frozen["note"]
    assert ppl["figures"]["ppl"] == "nan" and "ppl is nan" in ppl["note"]
    assert certificate.of_commit(ci_repo, c2) == [doc["certificate"]]
    stored = certificate.read(ci_repo, doc["certificate"])
    assert stored["passed"] is False and stored["checks"][1]["figures"]["ratio_ci95"] == ["nan", "nan"]
    # the human table renders the strings; verify re-derives them the same way
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 1 and "not finite" in r.stdout
    v = verify(ci_repo, doc["certificate"])
    assert v["verified"], v


def test_finite_figures_is_idempotent_and_only_fails_passed_checks():
    res = {"name": "x", "status": "passed", "passed": True, "figures": {"a": [1.0, float("-inf")], "b": 2}}
    once = certificate.finite_figures(res)
    assert once["status"] == "failed" and once["figures"] == {"a": [1.0, "-inf"], "b": 2}
    assert "a[1] is -inf" in once["note"]
    assert certificate.finite_figures(once) == once
    clean = {"name": "y", "status": "passed", "passed": True, "figures": {"a": 1.0}}
    assert certificate.finite_figures(clean) is clean


# -- 2. an unknown revision in mvc.toml is an error; only a walk past the root is skipped ----------
def test_misspelt_baseline_is_an_error_naming_key_and_revision(ci_repo):
    c1, c2 = two_commits(ci_repo)
    tree = ci_repo.read_commit(c2)["components"]["core"]
    for rev in ("nosuch", "nosuch~1", tree, "HEAD^2", "HEADS"):  # (HEADS was read as "<candidate id>S")
        write_config(ci_repo, CONFIG.replace("{baseline}", rev))
        with pytest.raises(ConfigError, match=r"ci\.checks\[frozen\]\.baseline: revision") as info:
            run_ci(ci_repo)
        assert repr(rev) in str(info.value)
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "ci.checks[frozen].baseline" in r.stderr
    assert cert_index_lines(ci_repo, c2) == []  # nothing certified


@pytest.mark.parametrize("key,value", [("hosts", '["host-bb"]'), ("source", '"nosuch"')])
def test_misspelt_migration_host_or_source_is_an_error(ci_repo, key, value):
    ci_repo.commit({"core": {"table": table()}}, message="a")
    ci_repo.commit({"core": {"table": table()}}, message="host-b", branch="host-b")
    extra = {"hosts": 'hosts = ["host-b"]\n', "source": 'source = "HEAD"\n'}
    text = f'[ci]\n[[ci.checks]]\nname = "m"\nkind = "L0"\nbrick = "python"\n{key} = {value}\n'
    text += "".join(v for k, v in extra.items() if k != key)
    write_config(ci_repo, text)
    with pytest.raises(ConfigError, match=rf"ci\.checks\[m\]\.{key}(\[0\])?: revision '(host-bb|nosuch)'"):
        run_ci(ci_repo)


@pytest.mark.parametrize("rev", ["HEAD~1", "HEAD^", "main~3", "HEAD~0~1"])
def test_relative_revision_past_root_is_skipped_and_verifies(ci_repo, rev):
    write_config(ci_repo, CONFIG.replace("{baseline}", rev))
    c1 = ci_repo.commit({"core": {"table": table()}}, message="first")
    r = run_ci(ci_repo, names=["frozen"])
    assert r["passed"] and r["checks"][0]["status"] == "skipped"
    assert "past the root commit" in r["checks"][0]["note"]
    rec = certificate.read(ci_repo, r["certificate"])["checks"][0]["inputs"]["skipped"]
    assert rec["from"] == c1 and rec["revision"] == rev
    assert verify(ci_repo, "HEAD")["verified"]


def test_migration_host_past_root_is_skipped(ci_repo):
    ci_repo.commit({"core": {"table": table()}}, message="first")
    write_config(ci_repo, '[ci]\n[[ci.checks]]\nname = "m"\nkind = "L0"\nbrick = "python"\nhosts = ["HEAD~1"]\n')
    r = run_ci(ci_repo)
    assert r["passed"] and r["checks"][0]["status"] == "skipped"
    assert verify(ci_repo, "HEAD")["verified"]


def test_verify_rechecks_the_reason_of_a_skipped_check(ci_repo):
    c1 = ci_repo.commit({"core": {"table": table()}}, message="first")
    skipped_id = run_ci(ci_repo)["certificate"]
    t = table()
    t[101, 32] += 1.0
    c2 = ci_repo.commit({"core": {"table": t}}, message="second")
    failed = certificate.read(ci_repo, run_ci(ci_repo)["certificate"])
    assert failed["passed"] is False
    # forged: the first commit's skipped certificate re-attached to the second commit
    forged = certificate.read(ci_repo, skipped_id)
    forged["commit"] = c2
    v = verify(ci_repo, certificate.store(ci_repo, forged))
    assert not v["verified"]
    assert any("resolves to" in d or "not at the certified commit" in d for c in v["checks"] for d in c["diffs"])
    # forged: a failed check turned into a skip (no record, as an older mvc wrote them)
    for c in failed["checks"]:
        c.update(status="skipped", passed=None, figures={}, inputs={}, note="baseline does not resolve")
    failed["passed"] = True
    v = verify(ci_repo, certificate.store(ci_repo, failed))
    assert not v["verified"] and any("should have run" in d for c in v["checks"] for d in c["diffs"])
    # an older certificate whose skip did hold still verifies
    old = certificate.read(ci_repo, skipped_id)
    for c in old["checks"]:
        c["inputs"] = {}
    assert verify(ci_repo, certificate.store(ci_repo, old))["verified"]
    assert c1 != c2


# -- 3. no checks is an error, not "all checks passed" ---------------------------------------------
@pytest.mark.parametrize("text,match", [
    ("", "defines no checks"),
    ("[ci]\non_commit = false\n", "defines no checks"),
    ("[cii]\n[[cii.checks]]\nname = 'x'\nkind = 'ppl-ratio'\n", r"cii: unknown section"),
])
def test_no_checks_is_an_error(ci_repo, text, match):
    c1 = ci_repo.commit({"core": {"table": table()}}, message="a")
    write_config(ci_repo, text)
    with pytest.raises(ConfigError, match=match):
        run_ci(ci_repo)
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "all checks passed" not in r.output
    assert match.replace("\\", "").split(":")[-1].strip() in r.stderr
    assert cert_index_lines(ci_repo, c1) == []


# -- 4. non-finite thresholds are refused when mvc.toml is read ------------------------------------
@pytest.mark.parametrize("line,key", [
    ("tolerance = nan", "tolerance"), ("tolerance = inf", "tolerance"), ("probe_bytes = inf", "probe_bytes"),
    ("window = nan", "window"),
])
def test_nonfinite_exact_settings_refused(tmp_path, line, key):
    (tmp_path / "mvc.toml").write_text(f"[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'exact-logits'\nbaseline = 'HEAD~1'\n{line}\n")
    with pytest.raises(ConfigError, match=rf"ci\.checks\[x\]\.{key}: must be a finite number"):
        cfgmod.load(str(tmp_path))


@pytest.mark.parametrize("text,key", [
    ("[ci]\nprobe_bytes = inf\n", r"ci\.probe_bytes"),
    ("[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'ppl-ratio'\nbaseline = 'main'\nmax_ratio = inf\n", r"ci\.checks\[x\]\.max_ratio"),
    ("[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'L3'\nbrick = 'b'\nhosts = ['h']\ndomain_data = 'd'\n"
     "max_domain_ratio = nan\n", r"ci\.checks\[x\]\.max_domain_ratio"),
])
def test_nonfinite_bounds_refused(tmp_path, text, key):
    (tmp_path / "mvc.toml").write_text(text)
    with pytest.raises(ConfigError, match=key + ": must be a finite number"):
        cfgmod.load(str(tmp_path))


def test_exact_logits_without_baseline_is_refused(tmp_path):
    (tmp_path / "mvc.toml").write_text("[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'exact-logits'\n")
    with pytest.raises(ConfigError, match=r"ci\.checks\[x\]\.baseline: .*needs a baseline"):
        cfgmod.load(str(tmp_path))


def test_a_ppl_ratio_check_setting_data_and_probe_is_refused_and_names_are_not_split(tmp_path):
    """With `data` set, a ppl-ratio check never read its `probe`: one naming no file passed (h113 06);
    select("frozen") (a name, not a list) looked for checks f, r, o, z, e, n (h113 07)."""
    (tmp_path / "mvc.toml").write_text("[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'ppl-ratio'\nbaseline = 'main'\n"
                                       "data = 'held.txt'\nprobe = 'no-such-probe.bin'\n")
    with pytest.raises(ConfigError, match=r"ci\.checks\[x\]\.probe: a ppl-ratio check reads its data file"):
        cfgmod.load(str(tmp_path))
    (tmp_path / "mvc.toml").write_text("[ci]\n[[ci.checks]]\nname = 'frozen'\nkind = 'exact-logits'\n"
                                       "baseline = 'main'\n[[ci.checks]]\nname = 'other'\nkind = 'exact-logits'\n"
                                       "baseline = 'main'\n")
    assert [c.name for c in cfgmod.load(str(tmp_path)).select("frozen")] == ["frozen"]
    os.remove(tmp_path / "mvc.toml")
    os.symlink("mvc.toml", tmp_path / "mvc.toml")  # (a loop: it was "no mvc.toml", no check run, h113)
    with pytest.raises(ConfigError, match="mvc.toml: a symbolic link to mvc.toml, which leads to no file"):
        cfgmod.load(str(tmp_path))


# -- 5. --junit ----------------------------------------------------------------------------------
def test_junit_bad_paths_refused_before_any_check_runs(ci_repo, tmp_path):
    _, c2 = two_commits(ci_repo)
    (tmp_path / "adir").mkdir()
    bad = ["", "mvc.toml/x.xml", str(tmp_path / "adir")]
    if os.path.exists("/proc/version"):
        bad.append("/proc/version")
    for path in bad:
        r = CliRunner().invoke(cli, ["ci", "--junit", path])
        assert r.exit_code == 2, (path, r.output)
        assert "--junit" in r.output
    r = CliRunner().invoke(cli, ["ci", "--json", "--junit", "-"])
    assert r.exit_code == 2
    assert cert_index_lines(ci_repo, c2) == []  # no check ran


def test_junit_to_stdout_and_atomic_file(ci_repo, tmp_path):
    two_commits(ci_repo)
    r = CliRunner().invoke(cli, ["ci", "--junit", "-"])
    assert r.exit_code == 0, r.output
    suite = ET.fromstring(r.stdout)
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    out = tmp_path / "reports" / "sub" / "ci.xml"  # missing parents are created
    r = CliRunner().invoke(cli, ["ci", "--junit", str(out)])
    assert r.exit_code == 0 and ET.parse(out).getroot().get("tests") == "2"
    assert os.listdir(out.parent) == ["ci.xml"]  # no temp file left behind


def test_junit_late_write_error_prints_result_and_exits_3(ci_repo, tmp_path, monkeypatch):
    _, c2 = two_commits(ci_repo)
    import semantic_ci.report as report

    def boom(summary, path):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(report, "write_junit", boom)
    r = CliRunner().invoke(cli, ["ci", "--junit", str(tmp_path / "x.xml")])
    assert r.exit_code == 3, r.output
    assert "all checks passed" in r.stdout
    assert "cannot write the JUnit report" in r.stderr and "Traceback" not in r.output
    assert len(cert_index_lines(ci_repo, c2)) == 1


# -- 6. the certificate index is not trusted -------------------------------------------------------
def _append(repo, commit, line):
    path = os.path.join(repo.dir, "certs", commit[:2], commit[2:])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def test_parent_certificate_appended_to_head_index_is_ignored_and_reported(ci_repo):
    c1 = ci_repo.commit({"core": {"table": table()}}, message="a")
    parent_cert = run_ci(ci_repo)["certificate"]  # passed (skipped checks)
    t = table()
    t[101, 32] += 1.0
    c2 = ci_repo.commit({"core": {"table": t}}, message="b")
    _append(ci_repo, c2, parent_cert)
    assert certificate.of_commit(ci_repo, c2) == []
    assert certificate.ci_state(ci_repo, c2)[0] is None
    with pytest.raises(MvcError, match="no valid certificate.*certifies " + c1[:12]):
        verify(ci_repo, "HEAD")
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and "verified" not in r.stdout
    # with a genuine (failed) certificate first, the foreign line still never wins
    own = run_ci(ci_repo)["certificate"]
    _append(ci_repo, c2, parent_cert)
    assert certificate.of_commit(ci_repo, c2) == [own]
    state, problems = certificate.ci_state(ci_repo, c2)
    assert state == "failed" and problems and parent_cert[:12] in problems[0]
    assert certificate.find(ci_repo, "HEAD")[0] == own
    v = verify(ci_repo, "HEAD")
    assert v["certificate"] == own and not v["verified"] and v["index_problems"]
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and "certifies" in r.stderr
    # the rollback target ignores it too: c2's own certificate failed
    assert certificate.last_passing_ancestor(ci_repo, ci_repo.commit({"core": {"table": t}}, message="c")) == c1


def test_index_line_naming_a_missing_object_is_reported(ci_repo):
    _, c2 = two_commits(ci_repo)
    own = run_ci(ci_repo)["certificate"]
    ghost = "ab" * 32
    _append(ci_repo, c2, ghost)
    assert certificate.of_commit(ci_repo, c2) == [own]
    state, problems = certificate.ci_state(ci_repo, c2)
    assert state == "passed" and ghost in problems[0] and "missing" in problems[0]
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and ghost in r.stderr


# -- 7. an error while preparing or running a check aborts mvc ci (exit 3, no certificate) ----------
def corrupt_object(repo, oid):
    """Flip the last 4 bytes of a loose object (what a failing disk does)."""
    path = os.path.join(repo.dir, "objects", oid[:2], oid[2:])
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        tail = f.read(4)
        f.seek(-4, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in tail))


def test_corrupt_candidate_blob_aborts_ci_and_verify(ci_repo):
    t = table()
    t[101, 32] += 1.0
    _, c2 = two_commits(ci_repo, t)
    good = run_ci(ci_repo)["certificate"]  # a genuine (failed) certificate from before the damage
    corrupt_object(ci_repo, ci_repo.tree(c2, "core")["tensors"]["table"]["id"])
    with pytest.raises(MvcError, match="corrupt"):
        run_ci(ci_repo)
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3, r.output
    assert "corrupt" in r.stderr and "Traceback" not in r.output and "FAIL" not in r.stdout
    assert cert_index_lines(ci_repo, c2) == [good]  # no certificate of the error
    # verify cannot reproduce a measurement from a damaged object: an error, not "verified"
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and "corrupt" in r.stdout and "could not be re-run" in r.stderr
    # a certificate recording an error instead of figures (as an older mvc stored) never verifies
    cert = certificate.read(ci_repo, good)
    for c in cert["checks"]:
        c.update(status="failed", passed=False, figures={}, inputs={}, note="error: object abc is corrupt")
    v = verify(ci_repo, certificate.store(ci_repo, cert))
    assert not v["verified"] and all(not c["reproduced"] for c in v["checks"])
    assert any("not a measurement" in d for c in v["checks"] for d in c["diffs"])


def test_lazy_clone_whose_origin_is_gone_aborts_ci(ci_repo, tmp_path, monkeypatch):
    from mvc import remote as rm
    t = table()
    t[101, 32] += 1.0
    two_commits(ci_repo, t)
    url = str(tmp_path / "origin.mvc")
    rm.add_remote(ci_repo, "origin", url)
    rm.push(ci_repo)
    lazy, _ = rm.clone(url, str(tmp_path / "lazy"), lazy=True)
    for name in ("mvc.toml", "heldout.txt"):
        with open(os.path.join(ci_repo.root, name), "rb") as src, open(os.path.join(lazy.root, name), "wb") as dst:
            dst.write(src.read())
    lazy.set_config("remote.origin.url", str(tmp_path / "gone"))
    monkeypatch.chdir(lazy.root)
    r = CliRunner().invoke(cli, ["ci", "--json"])
    assert r.exit_code == 3, r.output
    assert "is gone" in r.stderr and r.stdout == ""
    assert cert_index_lines(lazy, lazy.resolve("HEAD")) == []


@pytest.fixture
def adapter_module(monkeypatch):
    """A user's adapter module: one that raises, one whose model raises, one of the wrong shape."""
    import sys
    import types
    mod = types.ModuleType("user_adapters")

    def raising(state, tree):
        raise RuntimeError("no GPU here")

    def model_raises(state, tree):
        def model(ids):
            raise ValueError("bad input")
        return model

    def wrong_shape(state, tree):
        return lambda ids: torch.zeros(ids.shape[0], ids.shape[1], 10)
    def exits(state, tree):  # (argparse in a helper, a library's init: SystemExit passed through, exit 0, h113 05)
        sys.exit(0)

    def model_exits(state, tree):
        return lambda ids: sys.exit(0)
    mod.raising, mod.model_raises, mod.wrong_shape = raising, model_raises, wrong_shape
    mod.exits, mod.model_exits = exits, model_exits
    monkeypatch.setitem(sys.modules, "user_adapters", mod)


FROZEN_LINES = 'component = "core"\nbaseline = "HEAD~1"\n'


@pytest.mark.parametrize("lines,key,match", [
    ('component = "core"\nbaseline = "HEAD~1"\nprobe = "missing.txt"\n', r"ci\.checks\[frozen\]\.probe", "missing.txt"),
    ('component = "nosuch"\nbaseline = "HEAD~1"\n', r"ci\.checks\[frozen\]\.component", "no component 'nosuch'"),
    ('component = "core"\nbricks = ["nosuch"]\nbaseline = "HEAD~1"\n', r"ci\.checks\[frozen\]\.bricks", "brick/nosuch"),
    ('component = "core"\nadapter = "nosuch_module:f"\nbaseline = "HEAD~1"\n', r"ci\.checks\[frozen\]\.adapter",
     "cannot import"),
    ('component = "core"\nadapter = "os:getcwd"\nbaseline = "HEAD~1"\n', r"ci\.checks\[frozen\]\.adapter",
     "adapter 'os:getcwd' failed: TypeError"),
    ('component = "core"\nadapter = "builtins:print"\nbaseline = "HEAD~1"\n', r"ci\.checks\[frozen\]\.adapter",
     "returned None"),
    ('component = "core"\nadapter = "user_adapters:raising"\nbaseline = "HEAD~1"\n', r"ci\.checks\[frozen\]\.adapter",
     "failed: RuntimeError: no GPU here"),
    ('component = "core"\nadapter = "user_adapters:model_raises"\nbaseline = "HEAD~1"\n',
     r"ci\.checks\[frozen\]\.adapter", "failed: ValueError: bad input"),
    ('component = "core"\nadapter = "user_adapters:wrong_shape"\nbaseline = "HEAD~1"\n',
     r"ci\.checks\[frozen\]\.adapter", r"\(1, 128, 10\)"),
    ('component = "core"\nadapter = "user_adapters:exits"\nbaseline = "HEAD~1"\n',
     r"ci\.checks\[frozen\]\.adapter", r"failed: it called sys\.exit\(0\)"),
    ('component = "core"\nadapter = "user_adapters:model_exits"\nbaseline = "HEAD~1"\n',
     r"ci\.checks\[frozen\]\.adapter", r"failed: it called sys\.exit\(0\)"),
])
def test_config_mistakes_found_at_run_time_abort_ci(ci_repo, adapter_module, lines, key, match):
    _, c2 = two_commits(ci_repo)
    write_config(ci_repo, CONFIG.replace("{baseline}", "HEAD~1").replace(FROZEN_LINES, lines, 1))
    with pytest.raises(MvcError, match=key) as info:
        run_ci(ci_repo)
    assert info.value.exit_code == 3
    import re
    assert re.search(match, str(info.value)), str(info.value)
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3, r.output
    assert re.search(key, r.stderr) and "Traceback" not in r.output and "FAIL" not in r.stdout
    assert cert_index_lines(ci_repo, c2) == []


def test_missing_held_out_data_aborts_ci(ci_repo):
    _, c2 = two_commits(ci_repo)
    os.remove(os.path.join(ci_repo.root, "heldout.txt"))
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "ci.checks[ppl].data" in r.stderr and "heldout.txt" in r.stderr
    assert cert_index_lines(ci_repo, c2) == []


def test_bigram_adapter_on_a_layercake_core_is_an_error(ci_repo):
    import cores
    core = cores.build("layercake", config="tiny", seed=0)
    ci_repo.commit({"core": core}, message="a")
    c2 = ci_repo.commit({"core": core}, message="b", metrics={"x": 1})
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3, r.output
    assert "ci.adapter" in r.stderr and "table" in r.stderr and "Traceback" not in r.output
    assert cert_index_lines(ci_repo, c2) == []


def test_migration_of_a_brick_the_source_lacks_is_an_error(ci_repo):
    ci_repo.commit({"core": {"table": table()}}, message="a")
    c2 = ci_repo.commit({"core": {"table": table()}}, message="host-b", branch="host-b")
    write_config(ci_repo, '[ci]\n[[ci.checks]]\nname = "m"\nkind = "L0"\nbrick = "nosuch"\nhosts = ["host-b"]\n')
    with pytest.raises(ConfigError, match=r"ci\.checks\[m\]\.brick: .*brick/nosuch"):
        run_ci(ci_repo)
    assert cert_index_lines(ci_repo, ci_repo.resolve("HEAD")) == [] and c2


# -- 8. probe_bytes is bounded when mvc.toml is read -----------------------------------------------
@pytest.mark.parametrize("text,key", [
    ("[ci]\nprobe_bytes = 100000000000\n", r"ci\.probe_bytes"),
    ("[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'exact-logits'\nbaseline = 'HEAD~1'\nprobe_bytes = 100000000000\n",
     r"ci\.checks\[x\]\.probe_bytes"),
    ("[ci]\n[[ci.checks]]\nname = 'x'\nkind = 'ppl-ratio'\nbaseline = 'HEAD~1'\nbootstrap = 100000000000\n",
     r"ci\.checks\[x\]\.bootstrap"),
])
def test_huge_probe_bytes_refused(tmp_path, text, key):
    (tmp_path / "mvc.toml").write_text(text)
    with pytest.raises(ConfigError, match=key + ": must be <= "):
        cfgmod.load(str(tmp_path))


def test_huge_probe_bytes_in_ci_is_exit_3(ci_repo):
    _, c2 = two_commits(ci_repo)
    huge = CONFIG.replace("{baseline}", "HEAD~1").replace("probe_bytes = 512", "probe_bytes = 100000000000")
    write_config(ci_repo, huge)
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "ci.probe_bytes" in r.stderr
    assert cert_index_lines(ci_repo, c2) == []


# -- 9. forged certificates ------------------------------------------------------------------------
def _failed_certificate(repo):
    t = table()
    t[101, 32] += 1.0
    c1, c2 = two_commits(repo, t)
    cert = certificate.read(repo, run_ci(repo)["certificate"])
    assert cert["checks"][0]["status"] == "failed"
    return c1, c2, cert


def test_skip_forged_by_editing_params_is_refused(ci_repo):
    c1, c2, cert = _failed_certificate(ci_repo)
    rec = {"key": "baseline", "revision": "HEAD~50", "from": c2, "path": "~50", "root": c1}
    for c in cert["checks"]:
        c.update(status="skipped", passed=None, figures={}, thresholds={}, inputs={"skipped": rec},
                 note="baseline = 'HEAD~50' goes past the root commit")
        c["params"] = dict(c["params"], baseline="HEAD~50")
    cert["passed"] = True
    forged = certificate.store(ci_repo, cert)
    v = verify(ci_repo, forged)
    assert not v["verified"]
    diffs = [d for c in v["checks"] for d in c["diffs"]]
    assert any("mvc.toml" in d and "'HEAD~1'" in d and "'HEAD~50'" in d for d in diffs), diffs
    r = CliRunner().invoke(cli, ["verify", forged[:12]])
    assert r.exit_code == 3 and "does not verify" in r.stderr
    # the same forgery without a skip record (as an older mvc wrote them)
    for c in cert["checks"]:
        c["inputs"] = {}
    assert not verify(ci_repo, certificate.store(ci_repo, cert))["verified"]
    # a skip record that disagrees with the check's own parameters
    cert = certificate.read(ci_repo, forged)
    for c in cert["checks"]:
        c["params"] = dict(c["params"], baseline="HEAD~1")
    v = verify(ci_repo, certificate.store(ci_repo, cert))
    assert not v["verified"] and any("HEAD~50" in d for c in v["checks"] for d in c["diffs"])
    # a renamed check that mvc.toml does not define cannot have its skip confirmed
    cert = certificate.read(ci_repo, forged)
    for c in cert["checks"]:
        c["name"] += "-old"
    v = verify(ci_repo, certificate.store(ci_repo, cert))
    assert not v["verified"] and any("does not define" in d for c in v["checks"] for d in c["diffs"])


def test_genuine_skip_verifies_and_a_changed_check_is_reported(ci_repo):
    ci_repo.commit({"core": {"table": table()}}, message="first")
    cid = run_ci(ci_repo)["certificate"]
    assert verify(ci_repo, cid)["verified"]
    write_config(ci_repo, CONFIG.replace("{baseline}", "HEAD~2"))  # the check changed since
    v = verify(ci_repo, cid)
    assert not v["verified"]
    frozen = next(c for c in v["checks"] if c["name"] == "frozen")
    assert any("mvc.toml now defines" in d for d in frozen["diffs"])
    os.remove(os.path.join(ci_repo.root, "mvc.toml"))  # a clone without mvc.toml: the figures
    v = verify(ci_repo, cid)                             # reproduce, but its bounds are its own claim
    assert not v["verified"] and all(c["reproduced"] for c in v["checks"] if c["name"] != "(bounds)")
    assert [c["name"] for c in v["checks"] if not c["reproduced"]] == ["(bounds)"]
    # a check that ran: new bounds in mvc.toml are reported, the figures still reproduce
    write_config(ci_repo, CONFIG.replace("{baseline}", "HEAD~1"))
    ci_repo.commit({"core": {"table": table()}}, message="second", metrics={"x": 2})
    ran = run_ci(ci_repo)["certificate"]
    write_config(ci_repo, CONFIG.replace("{baseline}", "HEAD~1").replace("max_ratio = 1.05", "max_ratio = 1.01"))
    v = verify(ci_repo, ran)
    ppl = next(c for c in v["checks"] if c["name"] == "ppl")
    assert v["verified"] and "now sets max_ratio = 1.01 (certificate: 1.05)" in ppl["note"]


def test_certificate_without_checks_is_refused(ci_repo):
    _, c2 = two_commits(ci_repo)
    cert = certificate.read(ci_repo, run_ci(ci_repo)["certificate"])
    assert certificate.ci_state(ci_repo, c2)[0] == "passed"
    c3 = ci_repo.commit({"core": {"table": table()}}, message="c", metrics={"x": 3})
    eid = certificate.store(ci_repo, dict(cert, commit=c3, checks=[], passed=True))
    state, problems = certificate.ci_state(ci_repo, c3)
    assert state is None and any(eid[:12] in p and "no checks" in p for p in problems)
    assert certificate.of_commit(ci_repo, c3) == []
    v = verify(ci_repo, eid)
    assert not v["verified"] and any("no checks" in d for c in v["checks"] for d in c["diffs"])
    r = CliRunner().invoke(cli, ["verify", eid])
    assert r.exit_code == 3 and "does not verify" in r.stderr
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and "no checks" in r.stderr
    r = CliRunner().invoke(cli, ["status", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ci"] != "passed" and eid[:12] in r.stderr
    # a certificate that says passed although a check failed does not count as passed either
    c4 = ci_repo.commit({"core": {"table": table()}}, message="d", metrics={"x": 4})
    lie = dict(cert, commit=c4, passed=True)
    lie["checks"] = [dict(lie["checks"][0], status="failed", passed=False)] + lie["checks"][1:]
    certificate.store(ci_repo, lie)
    assert certificate.ci_state(ci_repo, c4)[0] == "failed"
    assert certificate.last_passing_ancestor(ci_repo, ci_repo.commit({"core": {"table": table()}}, message="e")) != c4


# -- 10. certificate ids may be abbreviated ---------------------------------------------------------
def test_abbreviated_certificate_id(ci_repo):
    from mvc.errors import AmbiguousRevision, UnknownRevision
    from mvc.objects import encode
    _, c2 = two_commits(ci_repo)
    cid = run_ci(ci_repo)["certificate"]
    for n in (6, 12, 40):
        assert certificate.find(ci_repo, cid[:n])[0] == cid
    r = CliRunner().invoke(cli, ["verify", cid[:12]])
    assert r.exit_code == 0 and "verified" in r.stdout, r.output
    assert certificate.find(ci_repo, c2[:12])[0] == cid  # a commit prefix still means the commit
    with pytest.raises(UnknownRevision):
        certificate.find(ci_repo, cid[:5])
    # two certificates sharing a 6-hex prefix: ambiguous, both listed
    cert = certificate.read(ci_repo, cid)
    seen = {}
    for i in range(200000):
        oid, _ = encode(dict(cert, time=f"t{i}"))
        if oid[:6] in seen and not oid.startswith(c2[:6]):
            other = seen[oid[:6]]
            break
        seen[oid[:6]] = (oid, i)
    a = certificate.store(ci_repo, dict(cert, time=f"t{other[1]}"))
    b = certificate.store(ci_repo, dict(cert, time=f"t{i}"))
    assert a[:6] == b[:6] and a != b
    with pytest.raises(AmbiguousRevision) as info:
        certificate.find(ci_repo, a[:6])
    assert a[:12] in str(info.value) and b[:12] in str(info.value)


# -- 11. every check skipped is not "all checks passed" ---------------------------------------------
def test_all_skipped_says_no_check_ran(ci_repo):
    ci_repo.commit({"core": {"table": table()}}, message="first")
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 0, r.output
    assert "no check ran (all skipped)" in r.stdout and "all checks passed" not in r.stdout


def test_a_line_cut_short_in_the_index_stays_apart_from_the_next_certificate(ci_repo):
    from mvc import certindex
    _, c2 = two_commits(ci_repo)
    path = certindex.index_path(ci_repo.dir, c2)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("9f3c")  # a crash in the middle of an append
    cert = run_ci(ci_repo)["certificate"]
    assert open(path).read().splitlines() == ["9f3c", cert]
    assert certificate.of_commit(ci_repo, c2) == [cert]


# -- certificates as untrusted input (they travel with pushes and fetches) ----------------------------
def _certified(ci_repo):
    two_commits(ci_repo)
    cid = run_ci(ci_repo)["certificate"]
    return cid, certificate.read(ci_repo, cid)


@pytest.mark.parametrize("edit", [
    lambda c: c.update(checks=["x"]),
    lambda c: c["checks"][0].pop("status"),
    lambda c: c["checks"][0].update(figures=None),
    lambda c: c.update(commit=123),
    lambda c: c["checks"][0].update(params="x"),
])
def test_malformed_certificates_are_refused_by_name(ci_repo, edit):
    _cid, cert = _certified(ci_repo)
    cert = json.loads(json.dumps(cert))
    edit(cert)
    bad = ci_repo.write_object(cert)
    r = CliRunner().invoke(cli, ["verify", bad])
    assert r.exit_code == 3 and "is malformed" in r.stderr, r.output  # before: exit 4 tracebacks


@pytest.mark.parametrize("edit", [
    lambda c: c.update(kind="bogus"),
    lambda c: c["inputs"].update(window="abc"),
    lambda c: c["inputs"].update(baseline="HEAD"),
])
def test_certificates_with_unusable_inputs_do_not_verify(ci_repo, edit):
    _cid, cert = _certified(ci_repo)
    cert = json.loads(json.dumps(cert))
    edit(cert["checks"][0])
    v = verify(ci_repo, ci_repo.write_object(cert))
    assert not v["verified"]


def test_a_forged_gate_or_looser_bound_does_not_verify(ci_repo):
    c1, c2 = two_commits(ci_repo, table(1))  # the frozen check fails: the core changed
    assert not run_ci(ci_repo)["passed"]
    cert = certificate.read(ci_repo, certificate.of_commit(ci_repo, c2)[-1])
    gate = {"name": "g", "kind": "gate", "status": "passed", "passed": True, "params": {}, "figures": {},
            "thresholds": {}}
    forged = dict(cert, checks=[gate], passed=True)
    assert not verify(ci_repo, certificate.store(ci_repo, forged))["verified"]  # before: "verified"
    looser = json.loads(json.dumps(cert))
    frozen = next(c for c in looser["checks"] if c["name"] == "frozen")
    frozen["params"]["tolerance"] = 1e9
    frozen.update(status="passed", passed=True)
    for c in looser["checks"]:
        c.update(status="passed", passed=True)
    looser["passed"] = True
    v = verify(ci_repo, certificate.store(ci_repo, looser))
    assert not v["verified"]  # before: verified, with a note
    frozen_v = next(c for c in v["checks"] if c["name"] == "frozen")
    assert any(d.endswith("under the bounds " + os.path.join(ci_repo.root, "mvc.toml") + " sets now")
               for d in frozen_v["diffs"]), frozen_v


def test_verify_runs_no_adapter_a_certificate_names(ci_repo, tmp_path, monkeypatch):
    _cid, cert = _certified(ci_repo)
    cert = json.loads(json.dumps(cert))
    for c in cert["checks"]:
        c["inputs"]["adapter"] = "builtins:print"
    called = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: called.append(a))
    v = verify(ci_repo, ci_repo.write_object(cert))
    assert not v["verified"] and not called  # before: print(state_dict, tree) ran
    assert all("verify runs only adapters mvc.toml names" in c["diffs"][0] for c in v["checks"])
    assert all("which mvc.toml here does not set for this check" in c["diffs"][0] for c in v["checks"])
    os.remove(os.path.join(ci_repo.root, "mvc.toml"))  # (it said mvc.toml "does not set" it: there is none)
    v = verify(ci_repo, ci_repo.write_object(cert))
    assert not called and all("which no mvc.toml here names" in c["diffs"][0] for c in v["checks"] if c["name"] != "(bounds)")


@pytest.mark.parametrize("where", ["outside", "dotdot", "mvc", "fifo"])
def test_check_data_must_be_a_regular_file_inside_the_repository(ci_repo, tmp_path, where):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for the certificate" * 10)
    spec = {"outside": str(secret), "dotdot": os.path.relpath(secret, ci_repo.root), "mvc": ".mvc/HEAD",
            "fifo": "pipe"}[where]
    if where == "fifo":
        os.mkfifo(os.path.join(ci_repo.root, "pipe"))
    write_config(ci_repo, CONFIG.replace("{baseline}", "HEAD~1").replace('data = "heldout.txt"', f'data = "{spec}"'))
    two_commits(ci_repo)
    r = CliRunner().invoke(cli, ["ci", "--check", "ppl"])
    assert r.exit_code == 3, r.output  # before: read and stored (outside, dotdot, .mvc) or hung (fifo)
    assert ("outside the repository" in r.stderr or ".mvc folder" in r.stderr or "not a regular file" in r.stderr)


def test_a_certificate_index_that_is_a_folder_is_named_not_a_crash(ci_repo):
    _c1, c2 = two_commits(ci_repo)
    os.makedirs(os.path.join(ci_repo.dir, "certs", c2[:2], c2[2:]))
    r = CliRunner().invoke(cli, ["status"])
    assert r.exit_code == 0 and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "is a folder" in r.stderr  # before: IsADirectoryError, exit 4
    assert CliRunner().invoke(cli, ["fsck"]).exit_code == 0


@pytest.mark.parametrize("write, match", [
    (lambda p: p.write_text(CONFIG.replace("{baseline}", "HEAD~1").replace("probe_bytes = 512", "probe_bytes = 16.9")),
     "must be a whole number"),  # before: truncated to 16
    (lambda p: p.write_bytes(CONFIG.replace("{baseline}", "HEAD~1").encode() + b"# \xff\xfe\n"), "not UTF-8"),
    (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), "not a regular file"),  # before: MemoryError, exit 4
])
def test_an_mvc_toml_that_cannot_be_meant_is_refused(ci_repo, write, match):
    write(Path(ci_repo.root) / "mvc.toml")
    with pytest.raises(ConfigError, match=match):
        cfgmod.load(ci_repo.root)


def test_check_data_through_a_linked_folder_inside_the_repository_is_read(ci_repo, tmp_path):
    outside = tmp_path / "shared-data"
    outside.mkdir()
    (outside / "heldout.txt").write_bytes(HELD_OUT)
    os.symlink(outside, os.path.join(ci_repo.root, "data"))  # e.g. a linked dataset folder
    write_config(ci_repo, CONFIG.replace("{baseline}", "HEAD~1").replace('data = "heldout.txt"', 'data = "data/heldout.txt"'))
    two_commits(ci_repo)
    assert run_ci(ci_repo)["passed"]


def _record_puts_and_lock(repo, monkeypatch):
    """[(id, whether this thread held the writers lock)] of every object stored from now on."""
    import threading
    import mvc.files
    from mvc.store import ChainStore
    lock = os.path.abspath(os.path.join(repo.dir, "writers.lock"))
    puts = []
    real = ChainStore.put

    def put(self, data, *a, **k):
        oid = real(self, data, *a, **k)
        puts.append((oid, bool(mvc.files._held_here.get((lock, threading.get_ident())))))
        return oid
    monkeypatch.setattr(ChainStore, "put", put)
    return puts


def test_check_data_is_stored_under_the_writers_lock(ci_repo, monkeypatch):
    """mvc ci stored its data blobs before taking the writers lock: a gc --grace 0 meanwhile
    deleted them, the certificate named a missing object, and every later gc stopped (exit 3)."""
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    puts = _record_puts_and_lock(ci_repo, monkeypatch)
    from mvc.objects import named_ids
    cert_id = run_ci(ci_repo)["certificate"]
    named = set(named_ids(certificate.read(ci_repo, cert_id)))
    data_blobs = {oid for oid, _held in puts} & named
    assert data_blobs and all(held for oid, held in puts if oid in data_blobs), puts


def test_a_missing_certificate_is_named_by_fsck_repaired_from_a_remote_and_does_not_stop_gc(ci_repo, tmp_path,
                                                                                         monkeypatch):
    """fsck said ok while the certificate index named a missing certificate, and gc (checking
    reachable blobs) then stopped blaming 'a reachable tree' with fsck's ok as a dead end."""
    from mvc import remote as rm
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    cert_id = run_ci(ci_repo)["certificate"]
    rm.add_remote(ci_repo, "origin", str(tmp_path / "backup"))
    rm.push(ci_repo, "origin", "main")
    ci_repo.loose.delete(cert_id)
    r = ci_repo.fsck()
    assert not r["ok"] and [p["id"] for p in r["problems"]] == [cert_id]
    assert "certificate index" in r["problems"][0]["problem"]
    ci_repo.gc(grace_s=0)  # its data is unverifiable without it: no reason to stop
    monkeypatch.chdir(ci_repo.root)
    out = CliRunner().invoke(cli, ["fsck", "--repair-from", "origin"])
    assert out.exit_code == 0, out.output
    assert ci_repo.store.has(cert_id) and mvc_repo(ci_repo).fsck()["ok"]


def mvc_repo(repo):
    import mvc
    return mvc.Repo(repo.root)


def test_a_check_on_a_brick_component_is_a_config_error_not_a_crash(ci_repo, monkeypatch):
    """exact-logits on `brick/python` crashed with exit 4 (a brick needs its host's ABI states)."""
    import cores
    import bricks
    core = cores.build("layercake", config="tiny", seed=0)
    brick = bricks.build("sparse", host=core)
    ci_repo.commit({"core": core, "brick/python": brick}, message="with brick")
    write_config(ci_repo, '[ci]\n[[ci.checks]]\nname = "b"\nkind = "exact-logits"\ncomponent = "brick/python"\n'
                          'baseline = "HEAD"\n')
    monkeypatch.chdir(ci_repo.root)
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "is a brick, which runs inside a host" in r.stderr and 'bricks = ["<name>"]' \
        in r.stderr, r.output


def test_a_check_named_twice_runs_once(ci_repo, monkeypatch):
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    cert = certificate.read(ci_repo, run_ci(ci_repo, names=["frozen", "frozen"])["certificate"])
    assert [c["name"] for c in cert["checks"]] == ["frozen"]


def test_verify_says_when_only_mvc_toml_changed(ci_repo, monkeypatch):
    """A tightened bound made verify blame tampering ('its figures do not reproduce')."""
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 1.01}}, message="b")
    run_ci(ci_repo, names=["ppl"])
    write_config(ci_repo, BASIC.replace("max_ratio = 1.05", "max_ratio = 0.5"))
    monkeypatch.chdir(ci_repo.root)
    r = CliRunner().invoke(cli, ["verify", "HEAD"])
    assert r.exit_code == 3 and "figures reproduce, but mvc.toml's checks or bounds are not those" in r.stderr, r.output
    assert "re-derived with mvc.toml's bounds" in r.stdout


def test_the_rollback_message_names_a_branch_with_a_slash_whole(ci_repo):
    import mvc
    write_config(ci_repo, BASIC.replace("[ci]", '[ci]\non_commit = true\non_fail = "rollback"'))
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a", branch="team/exp")
    bad = t.clone()
    bad[101] = 0
    with pytest.raises(mvc.CheckFailed, match="team/exp rolled back to") as info:
        ci_repo.commit({"core": {"table": bad}}, message="b", branch="team/exp")
    assert info.value.hint == f"to keep the commit anyway: mvc branch -f team/exp {info.value.commit[:12]}"
    # the hint works, also where the rollback deleted the branch (none of its commits passed)
    ci_repo.force_branch("team/exp", info.value.commit[:12])
    assert ci_repo.branches()["team/exp"] == info.value.commit
    write_config(ci_repo, BASIC.replace("[ci]", '[ci]\non_commit = true\non_fail = "rollback"')
                 .replace('baseline = "HEAD~1"', 'baseline = "main"', 1))
    ci_repo.commit({"core": {"table": t}}, message="main's")
    with pytest.raises(mvc.CheckFailed, match="other rolled back to no commit: none of its commits passed") as info:
        ci_repo.commit({"core": {"table": bad}}, message="other's", branch="other", root=True)
    assert "other" not in ci_repo.branches()
    assert info.value.hint == f"to keep the commit anyway: mvc branch -f other {info.value.commit[:12]}"
    ci_repo.force_branch("other", info.value.commit[:12])
    assert ci_repo.branches()["other"] == info.value.commit


def test_a_partial_run_neither_changes_a_commits_ci_state_nor_rollback_targets(ci_repo):
    """`mvc ci --check frozen` passing after the full suite failed made status/log say passed; a
    diagnostic `--base` run that failed moved the next rollback past that commit."""
    from semantic_ci.certificate import ci_state, last_passing_ancestor
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    p = ci_repo.commit({"core": {"table": t}}, message="b")
    assert run_ci(ci_repo)["passed"]
    other = t * 1.0001  # logits change (frozen fails), perplexity hardly (ppl passes)
    c = ci_repo.commit({"core": {"table": other}}, message="c")
    assert not run_ci(ci_repo)["passed"]  # frozen fails
    assert run_ci(ci_repo, names=["ppl"])["passed"]  # a part of the suite passes
    assert ci_state(ci_repo, c)[0] == "failed"
    assert not run_ci(ci_repo, p, base=c, names=["frozen"])["passed"]  # a diagnostic run on p fails
    assert ci_state(ci_repo, p)[0] == "passed" and last_passing_ancestor(ci_repo, c) == p


@pytest.mark.parametrize("edit,match", [("probe_bytes = 2.5", "must be a whole number, got 2.5"),
                                        ("", "every check needs a kind")])
def test_config_messages_name_the_real_problem(tmp_path, edit, match):
    text = '[ci]\n' + (edit + "\n" if edit else "") + '[[ci.checks]]\nname = "x"\n' + \
        ('kind = "exact-logits"\ncomponent = "core"\n' if edit else 'component = "core"\n')
    (tmp_path / "mvc.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        cfgmod.load(str(tmp_path))


def test_verify_of_a_pipeline_result_commit_uses_the_certificate_it_records(ci_repo):
    """`mvc verify mini/host` said 'no certificate (run mvc ci first)' for a stage that passed its
    gates: the certificate sits on the checkpoint before the stage's result commit."""
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t}}, message="b")
    cert_id = run_ci(ci_repo)["certificate"]
    done = ci_repo.commit({}, message="stage: done", extra={"pipeline": {"status": "done", "certificate": cert_id}})
    assert certificate.locate(ci_repo, done)[0] == cert_id and verify(ci_repo, done)["verified"]
    plain = ci_repo.commit({}, message="no certificate")
    with pytest.raises(MvcError, match="has no certificate"):
        certificate.locate(ci_repo, plain)


def test_verify_in_a_repository_without_commits_says_so(repo, monkeypatch):
    """`mvc verify` of an empty repository said "'HEAD' is neither a commit nor a certificate"."""
    monkeypatch.chdir(repo.root)
    for args in (["verify"], ["verify", "HEAD~1"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 3 and r.stderr.startswith("error: HEAD has no commits yet"), r.stderr


def test_a_junit_report_parses_whatever_characters_a_check_name_holds():
    """An ESC in a check name (or a note) made a report that XML parsers reject."""
    import xml.etree.ElementTree as ET

    from semantic_ci.report import junit_xml
    check = {"name": "ppl\x1b[1m & <b>", "kind": "ppl-ratio", "status": "skipped", "note": "past \x00 root\ud800",
             "figures": {"ratio": 1.0}, "thresholds": {"max_ratio": 1.05}}
    root = ET.fromstring(junit_xml({"certificate": "c" * 64, "checks": [check]}).encode("utf-8", "surrogatepass"))
    case = root.find("testcase")
    assert case.get("name") == "ppl\ufffd[1m & <b>" and case.find("skipped").get("message") == "past \ufffd root\ufffd"


@pytest.mark.parametrize("value", ["128.7", "0", "nan"])
def test_a_top_level_window_is_a_whole_count_as_a_checks_own_is(tmp_path, value):
    """[ci] window = 128.7 was truncated to 128 where a check's window = 128.7 is refused."""
    (tmp_path / "mvc.toml").write_text(f"[ci]\nwindow = {value}\n[[ci.checks]]\nname = 'x'\nkind = 'exact-logits'\n"
                                       "baseline = 'HEAD~1'\n")
    with pytest.raises(ConfigError, match=r"ci\.window: must be"):
        cfgmod.load(str(tmp_path))
    (tmp_path / "mvc.toml").write_text("[ci]\nwindow = 4\n[[ci.checks]]\nname = 'x'\nkind = 'exact-logits'\n"
                                       "baseline = 'HEAD~1'\n")
    assert cfgmod.load(str(tmp_path)).window == 4


def test_an_mvc_toml_saved_with_a_byte_order_mark_is_read(tmp_path):
    """'Invalid statement (at line 1, column 1)' for a file an editor saved with a BOM."""
    (tmp_path / "mvc.toml").write_bytes(b"\xef\xbb\xbf[ci]\nwindow = 64\n[[ci.checks]]\nname = 'x'\n"
                                        b"kind = 'exact-logits'\nbaseline = 'HEAD~1'\n")
    assert cfgmod.load(str(tmp_path)).window == 64


def test_a_core_is_checked_in_the_dtype_it_was_committed_in(ci_repo):
    """exact-logits between a float32 commit and a bfloat16 commit of the same (bfloat16-exact)
    weights: the bfloat16 core is evaluated in bfloat16, as repo.load_model rebuilds it (it was
    evaluated upcast into float32, and the check reported identical logits). The certificate
    verifies (figures and digests reproduce)."""
    import cores
    f32 = cores.build("layercake", config="tiny", seed=0).to(torch.bfloat16).to(torch.float32)
    ci_repo.commit({"core": f32}, message="float32")
    ci_repo.commit({"core": f32.to(torch.bfloat16)}, message="bfloat16")
    write_config(ci_repo, '[ci]\nprobe_bytes = 256\nwindow = 128\n[[ci.checks]]\nname = "frozen"\n'
                          'kind = "exact-logits"\ncomponent = "core"\nbaseline = "HEAD~1"\n')
    r = run_ci(ci_repo)
    [check] = certificate.read(ci_repo, r["certificate"])["checks"]
    assert check["status"] == "failed" and check["figures"]["dtype"] == "bfloat16"
    assert check["figures"]["note"].startswith("logit shapes/dtypes differ")
    assert verify(ci_repo, "HEAD")["verified"]
    ci_repo.commit({"core": f32.to(torch.bfloat16)}, message="bfloat16 again")  # bfloat16 against bfloat16
    [check] = certificate.read(ci_repo, run_ci(ci_repo)["certificate"])["checks"]
    figures = check["figures"]
    assert check["status"] == "passed" and figures["dtype"] == "bfloat16" and figures["differing_positions"] == 0
    assert figures["logits_digest"] == figures["baseline_digest"] and verify(ci_repo, "HEAD")["verified"]


def test_check_data_of_one_byte_is_refused_however_it_is_named(ci_repo, monkeypatch):
    """A `blob:` probe of one byte skipped the two-byte check a file gets: exact-logits compared no
    window and passed two different models, L1 crashed (exit 4) (probe h36)."""
    monkeypatch.chdir(ci_repo.root)
    t = trained_table(builtin_probe(3000))
    ci_repo.commit({"core": {"table": t}}, message="a")
    ci_repo.commit({"core": {"table": t * 0.5}}, message="b")
    one = ci_repo.store.put(b"x")
    write_config(ci_repo, BASIC.replace('baseline = "HEAD~1"\n', f'baseline = "HEAD~1"\nprobe = "blob:{one}"\n', 1))
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3 and "holds fewer than 2 bytes" in r.stderr, r.output
    assert certificate.index(ci_repo, ci_repo.resolve("HEAD"))[0] == []


@pytest.mark.parametrize("change", ["probe_bytes = 512\nwindow = 128", "probe_bytes = 512\nwindow = 64",
                                    "probe_bytes = 1024\nwindow = 128"])
def test_verify_compares_what_a_check_takes_from_the_ci_table(ci_repo, change):
    """[ci] probe_bytes and window decide the probe a check measures and its windows, but only the
    check's own table was compared: a certificate made under other [ci] defaults verified (h36)."""
    config = CONFIG.replace("{baseline}", "HEAD~1")
    assert "probe_bytes = 512\nwindow = 128" in config
    ci_repo.commit({"core": {"table": table()}}, message="a")
    ci_repo.commit({"core": {"table": table() * 1.01}}, message="b")
    run_ci(ci_repo, names=["frozen", "ppl"])
    write_config(ci_repo, config.replace("probe_bytes = 512\nwindow = 128", change))
    r = verify(ci_repo, "HEAD")
    frozen = next(c for c in r["checks"] if c["name"] == "frozen")
    assert r["verified"] == (change == "probe_bytes = 512\nwindow = 128"), r["checks"]
    if not r["verified"]:
        assert "now defines check 'frozen' differently" in frozen["diffs"][0] and frozen["config_changed"]


@pytest.mark.parametrize("kind, figures, thresholds, shown", [
    ("ppl-ratio", {"ratio": 1.0500004, "ratio_ci95": [1.0, 1.1], "bpb": 2.0, "baseline_bpb": 1.9},
     {"max_ratio": 1.05}, "ratio 1.0500004 "),
    ("exact-logits", {"max_abs_delta": 1.0000001e-6, "differing_positions": 3}, {"tolerance": 1e-6}, "max|d|=1.0000001e-06"),
    ("gate", {"value": 2.3000001}, {"max": 2.3}, "2.3000001"),
    ("migration", {"worst_domain_ratio": 0.75004, "hosts": {"a": {}}}, {"max_domain_ratio": 0.75}, "domain ratio 0.75004"),
    ("ppl-ratio", {"ratio": 1.2, "ratio_ci95": [1.1, 1.3], "bpb": 2.0, "baseline_bpb": 1.9},
     {"max_ratio": 1.05}, "ratio 1.2 "),
])
def test_a_failing_figure_is_never_shown_equal_to_its_bound(kind, figures, thresholds, shown):
    """Rounded to 6 digits (4 for migration ratios) as its bound is, a ratio of 1.0500004 failing
    `<= 1.05` was shown as "ratio 1.05 ... <= 1.05 FAIL" (probe h34)."""
    from semantic_ci.report import figure_text
    text, _bound = figure_text({"kind": kind, "figures": figures, "thresholds": thresholds})
    assert shown in text, text


# -- a ratio of two perplexities that both overflow float64 still has its value ----------------------
def test_ppl_ratio_of_two_overflowing_perplexities_is_finite():
    from semantic_ci.checks import ppl_figures

    def scaled(scale):  # a bigram model whose logits put every wrong byte far below the right one
        t = table() * scale
        return lambda ids: t[ids]
    figs = ppl_figures(scaled(1001.0), scaled(1000.0), HELD_OUT[:600], 128, 20)
    assert figs["bpb"] * 0.6931 > 709 and figs["baseline_bpb"] * 0.6931 > 709  # both PPLs overflow
    assert figs["ppl"] == figs["baseline_ppl"] == float("inf")
    per_byte = (figs["bpb"] - figs["baseline_bpb"]) * 0.6931471805599453
    assert figs["ratio"] == pytest.approx(2.718281828459045 ** per_byte, rel=1e-9) and figs["ratio"] > 1

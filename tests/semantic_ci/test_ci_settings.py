"""Semantic CI settings taken as the README states them (probe h84): the probe a ppl-ratio or PX
check reads, bricks that do not attach, a general bound without general data, roundtrip without a
baseline, a bounded bootstrap, a first commit's missing component and its unborn branch."""
import json
import tomllib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvc.cli import cli
from mvc.errors import ConfigError, MvcError
from semantic_ci import certificate, evaluate
from semantic_ci import config as cfgmod
from semantic_ci.probe import builtin_probe
from semantic_ci.runner import run_ci, verify

from ci_helpers import ADAPTER, trained_table, write_config


def table(seed=0) -> torch.Tensor:
    return trained_table(builtin_probe(1500 + seed))


@pytest.fixture
def ci_repo(repo, monkeypatch):
    monkeypatch.chdir(repo.root)
    return repo


def two_commits(repo):
    t = table()
    repo.commit({"core": {"table": t}}, message="a")
    t = t.clone()
    t[101, 32] += 1.0
    return repo.commit({"core": {"table": t}}, message="b")


# -- the bootstrap resamples in batches: bounded memory, the same interval for a seed ----------------
def test_bootstrap_draws_in_batches_and_gives_the_one_matrix_interval(monkeypatch):
    rng = np.random.default_rng(3)
    nll_c, nll_b = rng.random(101) * 90, rng.random(101) * 90
    count = rng.integers(60, 65, 101)
    idx = np.random.default_rng(0).integers(0, 101, size=(500, 101))  # the interval as one matrix gave it
    ratios = np.exp((nll_c[idx].sum(1) - nll_b[idx].sum(1)) / count[idx].sum(1))
    want = (float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)))
    sizes, real = [], np.random.default_rng

    class Recording:
        def __init__(self, seed):
            self.rng = real(seed)

        def integers(self, low, high, size):
            sizes.append(int(np.prod(size)))
            return self.rng.integers(low, high, size=size)
    monkeypatch.setattr(evaluate, "BOOTSTRAP_BATCH_DRAWS", 1000)
    monkeypatch.setattr(evaluate.np.random, "default_rng", Recording)
    assert evaluate.bootstrap_ratio(nll_c, nll_b, count, 500) == want
    assert sum(sizes) == 500 * 101 and max(sizes) <= 1000


# -- `probe` is the data of a ppl-ratio check without `data`, and of a PX check without domain_data ---
PPL = f"""
[ci]
adapter = "{ADAPTER}"
window = 64

[[ci.checks]]
name = "p"
kind = "ppl-ratio"
baseline = "HEAD~1"
max_ratio = 100.0
bootstrap = 20
probe = "{{probe}}"
"""


def test_ppl_ratio_without_data_measures_its_probe_file(ci_repo):
    from mvc.objects import hash_bytes
    two_commits(ci_repo)
    probe = builtin_probe(3000)[2000:]
    open("probe.txt", "wb").write(probe)
    write_config(ci_repo, PPL.replace("{probe}", "probe.txt"))
    r = run_ci(ci_repo)
    inputs = certificate.read(ci_repo, r["certificate"])["checks"][0]["inputs"]
    assert inputs["data"] == hash_bytes(probe) and inputs["data_desc"] == "probe.txt"
    assert verify(ci_repo, "HEAD")["verified"]
    write_config(ci_repo, PPL.replace("{probe}", "missing.txt"))  # (it was ignored: the built-in probe passed)
    with pytest.raises(ConfigError, match=r"ci\.checks\[p\]\.probe: .*missing\.txt"):
        run_ci(ci_repo)


def test_px_without_domain_data_measures_its_probe_file(ci_repo):
    import bricks
    import cores
    from mvc.objects import hash_bytes
    ci_repo.commit({"core": cores.build("layercake", config="tiny", seed=1)}, message="b", branch="host-b")
    ci_repo.commit({"core": cores.build("layercake", config="tiny", seed=0),
                    "brick/px": bricks.build("portable", seed=0)}, message="a")
    probe = builtin_probe(200)[100:]
    open("probe.txt", "wb").write(probe)
    write_config(ci_repo, '[ci]\nwindow = 32\n[[ci.checks]]\nname = "px"\nkind = "PX"\nbrick = "px"\n'
                          'hosts = ["host-b"]\nprobe = "probe.txt"\n')
    r = run_ci(ci_repo)
    inputs = certificate.read(ci_repo, r["certificate"])["checks"][0]["inputs"]
    assert inputs["data"] == hash_bytes(probe) and "domain_data" not in inputs, inputs
    assert r["checks"][0]["status"] == "passed"
    assert verify(ci_repo, "HEAD")["verified"]


# -- a brick that does not attach is an error naming its key (exit 3), not a crash (exit 4) -----------
def brick_repo(repo, core_arch="layercake"):
    import bricks
    import cores
    lc = cores.build("layercake", config="tiny", seed=0)
    return repo.commit({"core": cores.build(core_arch, config="tiny", seed=0),
                        "brick/a": bricks.build("sparse", host=lc, seed=0),
                        "brick/b": bricks.build("sparse", host=lc, seed=1)}, message="a")


def test_a_brick_that_does_not_fit_its_core_is_an_error_naming_its_key(ci_repo):
    brick_repo(ci_repo, "byte-transformer")  # (no ABI: a sparse brick cannot attach to it)
    write_config(ci_repo, '[ci]\nprobe_bytes = 64\nwindow = 32\n[[ci.checks]]\nname = "x"\nkind = "exact-logits"\n'
                          'baseline = "HEAD"\nbricks = ["a"]\n')
    r = CliRunner().invoke(cli, ["ci"])
    assert r.exit_code == 3, r.output
    assert "ci.checks[x].bricks[0]: brick/a of" in r.stderr and "does not attach" in r.stderr
    assert "bug in mvc" not in r.stderr and "Traceback" not in r.output


def test_two_bricks_are_refused_when_read_and_when_a_certificate_names_them(ci_repo):
    with pytest.raises(ConfigError, match=r"ci\.checks\[x\]\.bricks: one brick at most"):
        cfgmod.parse({"ci": {"checks": [{"name": "x", "kind": "exact-logits", "baseline": "HEAD",
                                         "bricks": ["a", "b"]}]}})
    brick_repo(ci_repo)  # (verify re-runs a certificate's recorded parameters, which are not parsed)
    cfg = cfgmod.CiConfig(checks=[cfgmod.Check("x", "exact-logits", {"baseline": "HEAD", "bricks": ["a", "b"]})],
                          probe_bytes=64, window=32)
    with pytest.raises(MvcError, match=r"ci\.checks\[x\]\.bricks\[1\]: brick/b of .* does not attach") as info:
        run_ci(ci_repo, config=cfg)
    assert info.value.exit_code == 3


# -- roundtrip = true needs no baseline (mvc.toml accepts it so) -------------------------------------
def test_roundtrip_without_baseline_runs_and_verifies(ci_repo):
    c2 = two_commits(ci_repo)
    write_config(ci_repo, f'[ci]\nadapter = "{ADAPTER}"\nprobe_bytes = 256\nwindow = 64\n[[ci.checks]]\nname = "rt"\n'
                          'kind = "exact-logits"\nroundtrip = true\n')
    r = run_ci(ci_repo)
    assert r["passed"] and r["checks"][0]["status"] == "passed"
    inputs = certificate.read(ci_repo, r["certificate"])["checks"][0]["inputs"]
    assert inputs["baseline"]["commit"] == c2 and not r["checks"][0]["note"]
    assert verify(ci_repo, "HEAD")["verified"]


# -- a component the candidate lacks is an error on a first commit too (not skipped) -----------------
@pytest.mark.parametrize("setting, key", [('component = "coer"', "component"), ('bricks = ["nosuch"]', r"bricks\[0\]")])
def test_a_component_a_first_commit_lacks_is_an_error_not_a_skip(ci_repo, setting, key):
    ci_repo.commit({"core": {"table": table()}}, message="first")
    write_config(ci_repo, f'[ci]\nadapter = "{ADAPTER}"\nprobe_bytes = 64\nwindow = 32\n[[ci.checks]]\nname = "x"\n'
                          f'kind = "exact-logits"\nbaseline = "HEAD~1"\n{setting}\n')
    with pytest.raises(ConfigError, match=rf"ci\.checks\[x\]\.{key}: commit .* has no component"):
        run_ci(ci_repo)


# -- a general bound needs general data: without it, the bound was never checked ---------------------
@pytest.mark.parametrize("kind, extra, said", [
    ("migration", "max_general_ratio = 0.01\n", r"max_general_ratio = 0\.01 bounds"),
    ("L4", "", r"max_general_ratio = 1\.05 \(the L4 preset's\) bounds"),
    ("L5", "max_general_ratio = 2.0\n", r"max_general_ratio = 2\.0 bounds"),
])
def test_a_general_bound_without_general_data_is_refused(kind, extra, said):
    text = f'[ci]\n[[ci.checks]]\nname = "m"\nkind = "{kind}"\nbrick = "py"\nhosts = ["h"]\ndomain_data = "d"\n{extra}'
    with pytest.raises(ConfigError, match=r"ci\.checks\[m\]\.general_data: " + said):
        cfgmod.parse(tomllib.loads(text))
    cfgmod.parse(tomllib.loads(text + 'general_data = "g"\n'))
    if kind == "migration":  # (no general bound set: the domain ratio alone is checked)
        cfgmod.parse(tomllib.loads(text.replace(extra, "")))


@pytest.mark.parametrize("mode", ["exact", "copy", "function"])
def test_a_bound_only_bounded_checks_read_is_refused_in_another_mode(mode):
    """mode = "exact" with max_general_ratio = 1.2 and no general_data ran and passed: no other mode
    reads either bound (h95)."""
    text = f'[ci]\n[[ci.checks]]\nname = "m"\nkind = "migration"\nbrick = "py"\nhosts = ["h"]\nmode = "{mode}"\n'
    for bound in ("max_general_ratio", "max_domain_ratio"):
        with pytest.raises(ConfigError, match=rf"ci\.checks\[m\]\.{bound}: only a bounded migration check reads it"):
            cfgmod.parse(tomllib.loads(text + f"{bound} = 1.2\n"))
    cfgmod.parse(tomllib.loads(text))


@pytest.mark.parametrize("kind", ["L3", "L5"])
def test_a_presets_bounds_go_with_its_mode(kind):
    """L3 with mode = "exact" kept the preset's 0.75 / 1.05 bounds, which no exact check reads (h95 02)."""
    text = f'[ci]\n[[ci.checks]]\nname = "m"\nkind = "{kind}"\nbrick = "py"\nhosts = ["h"]\nmode = "exact"\n'
    params = cfgmod.parse(tomllib.loads(text)).checks[0].params
    assert params["mode"] == "exact" and not {"max_domain_ratio", "max_general_ratio"} & set(params)
    assert params.get("int8") is (kind == "L5" or None)  # (what other modes read stays)
    bounded = text.replace('mode = "exact"', 'domain_data = "d"\ngeneral_data = "g"')
    assert cfgmod.parse(tomllib.loads(bounded)).checks[0].params["max_domain_ratio"] == 0.75


# -- on-commit CI of a branch's first commit: a baseline naming that branch had no commit -------------
def test_a_first_commit_is_not_compared_with_itself_by_its_unborn_branch(ci_repo):
    write_config(ci_repo, f'[ci]\non_commit = true\nadapter = "{ADAPTER}"\nprobe_bytes = 128\nwindow = 32\n'
                          '[[ci.checks]]\nname = "p"\nkind = "ppl-ratio"\nbaseline = "main"\nbootstrap = 20\n')
    c1 = ci_repo.commit({"core": {"table": table()}}, message="first")
    cert_id, cert = certificate.find(ci_repo, c1)
    check = cert["checks"][0]
    assert check["status"] == "skipped" and "main as it was before its first commit" in check["note"]
    assert check["inputs"]["skipped"]["unborn"] == "main"
    assert verify(ci_repo, cert_id)["verified"]
    c2 = ci_repo.commit({"core": {"table": table(1)}}, message="second")  # (then main as it was: c1)
    assert certificate.find(ci_repo, c2)[1]["checks"][0]["inputs"]["baseline"]["commit"] == c1
    forged = json.loads(json.dumps(cert))  # the skip claimed of a commit with a parent
    forged["commit"] = c2
    v = verify(ci_repo, certificate.store(ci_repo, forged))
    assert not v["verified"] and any("it has the parent" in d for c in v["checks"] for d in c["diffs"]), v

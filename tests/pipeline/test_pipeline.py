"""The pipeline driver: checkpoints committed at every interval, gates, rollback + fallback with a
retry limit, bit-exact resume after SIGKILL, re-runs that do no work, and config errors."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import mvc
from mvc.cli import cli
from mvc.errors import ConfigError
from semantic_ci import certificate
from semantic_ci.pipeline import run_pipeline
from semantic_ci.pipeline_config import load
from semantic_ci.runner import verify

TEXT_WORDS = "the cat sat on a mat and the dog ran to it while a bird sang".split()

PIPELINE = """
[pipeline]
name = "demo"

[streams.text]
file = "data.txt"
holdout = 0.1

[[stages]]
name = "core"
kind = "train-core"
arch = "layercake"
config = "tiny"
stream = "text"
steps = {steps}
checkpoint_every = 4
batch_size = 4
seq_len = 32
lr = 0.004
eval_bytes = 512
gates = [{{ metric = "heldout_bpb", max = {max_bpb} }}]
fallback = {{ lr_scale = 0.5, extra_steps = 4, retries = {retries} }}

[[stages]]
name = "certify"
kind = "evaluate"
source = "stage:core"

[[stages.checks]]
name = "roundtrip"
kind = "L2"
component = "core"
probe_bytes = 256
window = 64
"""


def make_project(tmp_path, steps=8, max_bpb=8.0, retries=1):
    root = tmp_path / "proj"
    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(TEXT_WORDS), (6000,), generator=g)
    (root / "data.txt").write_text(" ".join(TEXT_WORDS[i] for i in idx))
    (root / "p.toml").write_text(PIPELINE.format(steps=steps, max_bpb=max_bpb, retries=retries))
    repo = mvc.Repo.init(root)
    return root, repo


def checkpoints(repo, branch):
    return [c for c in repo.log(branch) if c["extra"].get("pipeline", {}).get("status") == "checkpoint"]


def test_two_stage_pipeline_commits_every_interval_and_certifies(tmp_path):
    root, repo = make_project(tmp_path)
    events = []
    summary = run_pipeline(repo, load(str(root / "p.toml")), emit=events.append)
    assert summary["passed"], summary
    cps = checkpoints(repo, "demo/core")
    assert [c["extra"]["pipeline"]["step"] for c in cps] == [8, 4]
    assert set(repo.read_commit(cps[0]["id"])["components"]) == {"core", "optimizer", "train_state"}
    assert int(repo.load(cps[0]["id"], "train_state")["step"]) == 8
    assert "heldout_bpb" in cps[0]["metrics"]
    # the evaluate stage certified the core's result and the certificate verifies
    cert_id, cert = certificate.find(repo, summary["results"]["core"])
    assert cert["passed"] and [c["name"] for c in cert["checks"]] == ["roundtrip"]
    assert verify(repo, cert_id)["verified"]
    assert [e["event"] for e in events].count("checkpoint") == 2
    # a re-run does no work
    before = set(repo.store.ids())
    again = []
    summary2 = run_pipeline(repo, load(str(root / "p.toml")), emit=again.append)
    assert summary2["passed"] and [s["status"] for s in summary2["stages"]] == ["unchanged", "unchanged"]
    assert "checkpoint" not in [e["event"] for e in again] and set(repo.store.ids()) == before


def test_failing_gate_rolls_back_applies_fallback_then_stops(tmp_path, monkeypatch):
    root, repo = make_project(tmp_path, steps=8, max_bpb=0.01, retries=1)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 1, r.output
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("rollback") == 2 and kinds.count("fallback") == 1
    fb = next(e for e in events if e["event"] == "fallback")
    assert fb["changes"]["steps"] == 12 and fb["changes"]["lr"] == pytest.approx(0.002)
    assert events[-1]["event"] == "summary" and not events[-1]["passed"]
    # the branch sits at the last passing commit: the checkpoint before the one whose gate failed
    head = repo.branches()["demo/core"]
    failed = [e["commit"] for e in events if e["event"] == "gate" and not e["passed"]]
    assert len(failed) == 2 and head not in failed
    assert repo.read_commit(failed[-1])["parents"] == [head]  # failing commits stay in history
    info = repo.read_commit(head)["extra"]["pipeline"]
    assert (info["attempt"], info["step"]) == (1, 8)
    assert repo.read_commit(failed[-1])["metrics"]["steps"] == 12
    assert [e["message"].split(":")[0] for e in repo.reflog("demo/core")[:3]].count("pipeline rollback") == 1


def test_malformed_pipeline_names_file_stage_and_key(tmp_path):
    root, repo = make_project(tmp_path)
    text = (root / "p.toml").read_text()
    for bad, match in [(text.replace("batch_size = 4", "batch_sise = 4"), r"stage core\.batch_sise: unknown key"),
                       (text.replace('stream = "text"', 'stream = "nope"'), r"stage core\.stream: no stream"),
                       (text.replace('kind = "evaluate"', 'kind = "bake"'), r"stage certify\.kind"),
                       (text.replace("steps = 8", "steps = -3"), r"stage core\.steps"),
                       (text.replace('source = "stage:core"', 'source = "stage:later"'), r"stage certify\.source")]:
        (root / "bad.toml").write_text(bad)
        with pytest.raises(ConfigError, match=match) as info:
            load(str(root / "bad.toml"))
        assert str(root / "bad.toml") in str(info.value)
    assert repo.head() is None and not repo.branches()  # nothing trained
    with pytest.raises(ConfigError, match="no profile"):
        load(str(root / "p.toml"), profile="huge")


@pytest.mark.slow
def test_sigkill_and_resume_gives_bit_identical_weights(tmp_path):
    env = dict(os.environ, MVC_AUTHOR="t")
    ref_root, ref_repo = make_project(tmp_path / "ref", steps=16)
    r = subprocess.run([sys.executable, "-m", "mvc", "run", "p.toml", "--json"], cwd=ref_root, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root, repo = make_project(tmp_path / "killed", steps=16)
    proc = subprocess.Popen([sys.executable, "-m", "mvc", "run", "p.toml", "--json"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stdout:
        if json.loads(line)["event"] == "checkpoint":
            seen += 1
            if seen == 2:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    r = subprocess.run([sys.executable, "-m", "mvc", "run", "p.toml", "--json"], cwd=root, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[1]["event"] == "resume" or any(e["event"] == "resume" for e in events)
    a = mvc.Repo(ref_root).load("demo/core", "core")
    b = mvc.Repo(root).load("demo/core", "core")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    for component in ("optimizer", "train_state"):  # train_state: step, data position and RNG states
        oa = mvc.Repo(ref_root).load("demo/core", component)
        ob = mvc.Repo(root).load("demo/core", component)
        assert set(oa) == set(ob) and all(torch.equal(oa[k], ob[k]) for k in oa), component

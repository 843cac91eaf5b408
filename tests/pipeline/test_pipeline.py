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

import cores
import mvc
from mvc.cli import cli
from mvc.errors import ConfigError, MvcError
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
    opt = repo.load_optimizer(cps[0]["id"])  # its param groups are recorded with its tensors
    assert opt["param_groups"] and all("lr" in g and isinstance(g["betas"], tuple) for g in opt["param_groups"])
    assert set(repo.load(cps[0]["id"], "optimizer")) == {f"state.{i}.{k}" for i, per in opt["state"].items() for k in per}
    assert "heldout_bpb" in cps[0]["metrics"]
    # the evaluate stage certified the core's result and the certificate verifies
    cert_id, cert = certificate.find(repo, summary["results"]["core"])
    assert cert["passed"] and [c["name"] for c in cert["checks"]] == ["roundtrip"]
    assert verify(repo, cert_id)["verified"]
    assert [e["event"] for e in events].count("checkpoint") == 2
    gates = [e for e in events if e["event"] == "gate" and e["stage"] == "core"]
    assert [g["passed"] for g in gates] == [None, True]  # step 4: no gate due (it said passed)
    done = repo.read_commit(repo.branches()["demo/core"])  # a stage's result records what its gates certified
    assert done["extra"]["pipeline"]["certificate"] == gates[-1]["certificate"]
    # a re-run does no work
    before = set(repo.store.ids())
    again = []
    summary2 = run_pipeline(repo, load(str(root / "p.toml")), emit=again.append)
    assert summary2["passed"] and [s["status"] for s in summary2["stages"]] == ["unchanged", "unchanged"]
    assert "checkpoint" not in [e["event"] for e in again] and set(repo.store.ids()) == before


def test_a_rerun_keeps_a_users_commit_on_a_stage_branch_and_never_drops_it_unasked(tmp_path):
    """A commit made on a finished stage's branch (a paste into a host branch) made the re-run take the
    stage for unfinished: it reset the branch (the commit left only in a retired reflog) and retrained,
    saying nothing."""
    root, repo = make_project(tmp_path)
    summary = run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    done = summary["results"]["core"]
    mine = repo.commit({"notes": {"w": torch.ones(2)}}, message="my own work on the stage branch", branch="demo/core")
    again = []
    summary2 = run_pipeline(repo, load(str(root / "p.toml")), emit=again.append)
    assert [s["status"] for s in summary2["stages"]] == ["unchanged", "unchanged"]
    assert summary2["results"]["core"] == done and repo.branches()["demo/core"] == mine
    assert {"event": "skip", "stage": "core", "branch": "demo/core", "commit": done, "reason": "inputs unchanged",
            "kept": mine} in again  # (the branch names the host of a paste stage's skip)
    (root / "p2.toml").write_text((root / "p.toml").read_text().replace("steps = 8", "steps = 4"))
    with pytest.raises(MvcError, match=f"stage core: branch demo/core ends in commits the pipeline did not make "
                                       f".* above the stage's own {done[:12]}; the stage starts over") as e:
        run_pipeline(repo, load(str(root / "p2.toml")), emit=lambda e: None)
    assert f"mvc branch NAME {mine[:12]}" in e.value.hint and repo.branches()["demo/core"] == mine
    repo.create_branch("mine", mine)  # as the hint says: keep them, move the stage branch back
    repo.switch("demo/core")
    repo.rollback(done)
    events = []
    assert run_pipeline(repo, load(str(root / "p2.toml")), emit=events.append)["passed"]  # only its own
    assert {"event": "restart", "stage": "core", "branch": "demo/core", "old": done,     # commits on it:
            "reason": "its inputs or settings changed"} in events                       # it starts over
    assert repo.branches()["mine"] == mine


def test_an_evaluate_stage_never_drops_a_users_commit_either(tmp_path):
    """Paste, int8 and evaluate stages moved their branch to start over whatever sat on it."""
    root, repo = make_project(tmp_path)
    run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    mine = repo.commit({"notes": {"w": torch.ones(2)}}, message="mine", branch="demo/certify")
    (root / "p2.toml").write_text((root / "p.toml").read_text().replace("steps = 8", "steps = 4"))
    with pytest.raises(MvcError, match="stage certify: branch demo/certify ends in commits the pipeline did not "
                                       "make"):
        run_pipeline(repo, load(str(root / "p2.toml")), emit=lambda e: None)
    assert repo.branches()["demo/certify"] == mine


def test_a_users_branch_under_a_stage_branchs_name_is_never_taken_over(tmp_path):
    """A branch that holds only a user's commits (made under the stage's branch name, or a stage
    renamed onto it) was deleted and remade by the run: its commits left the branch."""
    root, repo = make_project(tmp_path)
    mine = repo.commit({"notes": {"w": torch.ones(2)}}, message="mine", branch="demo/core")
    with pytest.raises(MvcError, match="stage core: branch demo/core holds commits the pipeline did not make"):
        run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    assert repo.branches()["demo/core"] == mine


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
    failed = [e["commit"] for e in events if e["event"] == "gate" and e["passed"] is False]
    assert len(failed) == 2 and head not in failed
    assert repo.read_commit(failed[-1])["parents"] == [head]  # failing commits stay in history
    info = repo.read_commit(head)["extra"]["pipeline"]
    assert (info["attempt"], info["step"]) == (1, 8)
    assert repo.read_commit(failed[-1])["metrics"]["steps"] == 12
    assert [e["message"].split(":")[0] for e in repo.reflog("demo/core")[:3]].count("pipeline rollback") == 1


def test_a_fallback_that_sets_checkpoint_every_checkpoints_its_retry_at_that_interval(tmp_path):
    """The interval was read once, before the first attempt: the retry recorded checkpoint_every = 1
    and committed every 4 steps (a resumed retry, reading its settings back, every step) (h36)."""
    root, repo = make_project(tmp_path, steps=4)
    text = (root / "p.toml").read_text().replace('metric = "heldout_bpb", max = 8.0', 'metric = "attempt", min = 1')
    (root / "p.toml").write_text(text.replace("retries = 1 }", "retries = 1, set = { checkpoint_every = 1 } }"))
    assert run_pipeline(repo, load(str(root / "p.toml")))["passed"]
    steps = [(c["extra"]["pipeline"]["attempt"], c["extra"]["pipeline"]["step"]) for c in checkpoints(repo, "demo/core")]
    assert sorted(steps) == [(1, n) for n in range(1, 9)], steps  # (attempt 0's step 4: rolled back)


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
    for component in ("optimizer", "train_state"):  # train_state: step, data position, RNG states, losses
        oa = mvc.Repo(ref_root).load("demo/core", component)
        ob = mvc.Repo(root).load("demo/core", component)
        assert set(oa) == set(ob) and all(torch.equal(oa[k], ob[k]) for k in oa if k != "wall_seconds"), component


# -- robustness: divergence, bad files, stage errors, --from-stage, the evaluate stage's certificate --------
def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_divergence_is_a_failed_gate_rolled_back_and_retried(tmp_path, monkeypatch):
    root, repo = make_project(tmp_path, steps=8, retries=1)
    text = (root / "p.toml").read_text().replace("lr = 0.004", "lr = 100000.0")
    (root / "p.toml").write_text(text)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 1, r.output  # a failed gate, not an mvc error
    events = _events(r.stdout)
    kinds = [e["event"] for e in events]
    assert kinds.count("rollback") == 2 and kinds.count("fallback") == 1
    cps = [e for e in events if e["event"] == "checkpoint"]
    assert cps and all(e["diverged"] and e["loss"] is None for e in cps)
    summary = events[-1]
    assert summary["event"] == "summary" and not summary["passed"] and "diverged" in summary["error"]
    assert summary["stages"][0]["status"] == "failed" and summary["stages"][0]["certificate"]
    failed = [e for e in events if e["event"] == "gate" and e["passed"] is False]
    assert len(failed) == 2 and all("divergence gate" in e["failed"][0] for e in failed)
    m = repo.read_commit(failed[-1]["commit"])["metrics"]  # stored canonically: null, flagged
    assert m["diverged"] is True and m["loss"] is None and "loss" in m["nonfinite"]
    assert "demo/core" not in repo.branches()  # rolled back to the start: no checkpoint ever passed
    cert_id, cert = certificate.find(repo, failed[-1]["commit"])
    assert not cert["passed"] and verify(repo, cert_id)["verified"]
    # a fallback that fixes the learning rate recovers: the diverged attempt stays in history
    (root / "p.toml").write_text(text.replace("fallback = { lr_scale = 0.5, extra_steps = 4, retries = 1 }",
                                              "fallback = { set = { lr = 0.004 }, retries = 1 }"))
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 0, r.output
    events = _events(r.stdout)
    assert events[-1]["event"] == "summary" and events[-1]["passed"]
    assert [e["event"] for e in events].count("rollback") == 1
    assert repo.read_commit(events[-1]["results"]["core"])["metrics"].get("diverged") is None


BAD_FILES = [  # (what to change in the pipeline text, the key the error must name)
    # steps + extra_steps overflowed int64 when a gate failed: exit 4 after training (h72 05)
    (lambda t: t.replace("extra_steps = 4", "extra_steps = 9223372036854775000"),
     "stage core.fallback.extra_steps: must be at most 1,099,511,627,776"),
    (lambda t: t.replace("steps = 8", "steps = 9223372036854775000", 1), "stage core.steps: must be at most"),
    # found after the earlier stages had trained, leaving the stage's branch behind (h72 03)
    (lambda t: t + '\n[[stages]]\nname = "b"\nkind = "train-brick"\nhost = "stage:core"\nbrick = "sparse"\n'
                   'brick_name = "x"\nstream = "text"\nsteps = 2\n\n[[stages]]\nname = "q"\nkind = "int8"\n'
                   'source = "stage:b"\nbrick_name = "y"\n', "stage q.brick_name: stage:b makes brick 'x', not 'y'"),
    # a check naming a component or brick its commits cannot hold (h72 03): found after the core trained
    (lambda t: t.replace('component = "core"\nprobe_bytes', 'component = "corr"\nprobe_bytes'),
     "stage certify.checks.roundtrip.component: the commits of stage:core hold no component 'corr'"),
    (lambda t: t.replace('component = "core"\nprobe_bytes', 'component = "core"\nbricks = ["python"]\nprobe_bytes'),
     "stage certify.checks.roundtrip.bricks[0]: the commits of stage:core hold no component 'brick/python'"),
    (lambda t: t + '\n[[stages]]\nname = "b"\nkind = "train-brick"\nhost = "stage:core"\nbrick = "sparse"\n'
                   'brick_name = "x"\nstream = "text"\nsteps = 2\n\n[[stages]]\nname = "m"\nkind = "evaluate"\n'
                   'source = "stage:b"\n\n[[stages.checks]]\nname = "mig"\nkind = "migration"\nbrick = "y"\n'
                   'hosts = ["stage:core"]\ndomain_data = "data.txt"\ngeneral_data = "data.txt"\n',
     "stage m.checks.mig.brick: the commits of stage:b hold no component 'brick/y'"),
    (lambda t: t.replace('probe_bytes = 256\n', 'probe_bytes = 256\nprobe = "../outside.txt"\n'),
     "stage certify.checks.roundtrip.probe: check data ../outside.txt is outside the repository"),
    # accepted and never read: every value trained the same brick (h72 04)
    (lambda t: t + '\n[[stages]]\nname = "b"\nkind = "train-brick"\nhost = "stage:core"\nbrick = "sparse"\n'
                   'brick_name = "x"\nstream = "text"\nsteps = 2\ngeneral_mix = 0.5\n', "stage b.general_mix"),
    (lambda t: t.replace('[pipeline]\nname = "demo"', "pipeline = 3"), "pipeline: must be a table"),
    (lambda t: "streams = 3\n" + t.replace('[streams.text]\nfile = "data.txt"\nholdout = 0.1', ""),
     "streams: must be a table"),
    (lambda t: t + "\n[profile.x]\nstages = 3\n", "profile.x.stages: must be a table"),
    (lambda t: t.replace("max = 8.0", 'max = "abc"'), "stage core.gates[0].max: must be a finite number"),
    (lambda t: t.replace('arch = "layercake"', 'arch = "nosuch"'), "stage core.arch: unknown architecture 'nosuch'"),
    (lambda t: t.replace('config = "tiny"', 'config = "huge"'), "stage core.config: unknown layercake config 'huge'"),
    (lambda t: t.replace('config = "tiny"', 'config = "tiny"\noverrides = { d_modle = 8 }'), "stage core.overrides"),
    (lambda t: t.replace('file = "data.txt"', 'file = "nope.txt"'), "streams.text.file: no such file 'nope.txt'"),
    (lambda t: t.replace('file = "data.txt"', 'builder = "nosuchmodule_xyz:build"'), "streams.text.builder"),
    (lambda t: t + '\n[[stages]]\nname = "b"\nkind = "train-brick"\nhost = "stage:core"\nbrick = "bogus"\n'
                   'brick_name = "x"\nstream = "text"\nsteps = 2\n', "stage b.brick: unknown brick kind 'bogus'"),
    (lambda t: t + '\n[[stages]]\nname = "p"\nkind = "paste"\nsource = "stage:core"\nbrick_name = "x"\n'
                   'into = ["stage:nosuch"]\n', "stage p.into[0]: stage:nosuch must name an earlier stage"),
    (lambda t: t + '\n[[stages]]\nname = "p"\nkind = "paste"\nsource = "stage:core"\nbrick_name = "x"\n'
                   'into = ["stage:core", "core"]\n', "stage p.into: names a host twice"),
    (lambda t: t + '\n[[stages]]\nname = "p"\nkind = "paste"\nsource = "stage:core"\nbrick_name = "x"\n'
                   'into = ["core~1"]\n', "stage p.into[0]: 'core~1' cannot name a branch ('demo/p/core~1')"),
    (lambda t: t.replace("retries = 1 }", "retries = 1, set = { lr = \"fast\" } }"), "stage core.fallback.set.lr"),
    # a gate of two kinds ran one of them, and the check it named then ran nowhere (probe h36)
    (lambda t: t.replace('max = 8.0 }', 'max = 8.0, plateau = 2.0 }'),
     "stage core.gates[0]: a gate is one of metric, plateau or check, not metric and plateau"),
    (lambda t: t.replace('max = 8.0 }', 'max = 8.0 }, { plateau = 2.0, min = 1.0 }'),
     "stage core.gates[1].min: belongs to a metric gate, not a plateau gate"),
    (lambda t: t.replace('max = 8.0 }', 'max = 8.0, min = 9.0 }'), "stage core.gates[0]: min 9.0 is above max 8.0"),
    (lambda t: t[:t.index("[[stages.checks]]")],  # it passed, certifying its target by no checks
     "stage certify.checks: an evaluate stage needs at least one check"),
    # accepted and never evaluated (probe h37)
    (lambda t: t + '\n[[stages]]\nname = "p"\nkind = "paste"\nsource = "stage:core"\nbrick_name = "x"\n'
                   'into = ["stage:core"]\ngates = [{ metric = "loss", max = 1.0 }]\n',
     "stage p.gates: a paste stage does not evaluate gates: they would never run"),
    (lambda t: t.replace('source = "stage:core"\n', 'source = "stage:core"\nfallback = { retries = 2 }\n'),
     "stage certify.fallback: an evaluate stage does not evaluate fallback"),
    (lambda t: t.replace('name = "roundtrip"', 'name = "loss gate"'),  # (a gate result's name: verify
     "stage certify.checks.loss gate: a check's name may not end in ' gate'"),  # told them apart by name, h42)
]


def test_a_paste_of_an_int8_stage_s_artifact_is_accepted_before_training(tmp_path):
    """h81: an int8 stage without as_name commits brick/<name>-int8, but the pre-flight took it to
    make <name>: pasting the artifact was refused, pasting the float brick it carries accepted."""
    root, _repo = make_project(tmp_path)
    text = (root / "p.toml").read_text() + (
        '\n[[stages]]\nname = "b"\nkind = "train-brick"\nhost = "stage:core"\nbrick = "sparse"\nbrick_name = "x"\n'
        'stream = "text"\nsteps = 2\n\n[[stages]]\nname = "q"\nkind = "int8"\nsource = "stage:b"\nbrick_name = "x"\n'
        '\n[[stages]]\nname = "p"\nkind = "paste"\nsource = "stage:q"\nbrick_name = "NAME"\ninto = ["stage:core"]\n')
    (root / "ok.toml").write_text(text.replace("NAME", "x-int8"))
    assert [s.name for s in load(str(root / "ok.toml")).stages][-1] == "p"
    (root / "bad.toml").write_text(text.replace("NAME", "x"))
    with pytest.raises(ConfigError, match="stage:q makes brick 'x-int8', not 'x'"):
        load(str(root / "bad.toml"))


def test_bad_pipeline_files_exit_3_naming_file_and_key_before_training(tmp_path, monkeypatch):
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    text = (root / "p.toml").read_text()
    for change, key in BAD_FILES:
        (root / "bad.toml").write_text(change(text))
        for args in (["run", "bad.toml"], ["run", "bad.toml", "--profile", "x"]):
            r = CliRunner().invoke(cli, args)
            if args[-1] == "x" and "profile.x" not in key:
                continue  # the profile case only matters where the file has one
            assert r.exit_code == 3, (key, r.output)
            err = r.stderr.strip()
            assert err.startswith("error: bad.toml: ") and key in err and "\n" not in err, (key, err)
    assert not repo.branches() and repo.head() is None  # nothing trained


def test_a_stage_out_of_memory_names_the_stage_and_its_sizes(tmp_path, monkeypatch):
    """h72 08: the error gave the generic hint about -j of push, fetch or clone."""
    import importlib
    train = importlib.import_module("cores.train")
    root, repo = make_project(tmp_path, steps=2)
    monkeypatch.chdir(root)

    def too_big(self, step):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 52000000000 bytes")
    monkeypatch.setattr(train.Trainer, "step_loss", too_big)
    r = CliRunner().invoke(cli, ["run", "p.toml"])
    assert r.exit_code == 3 and "stage core: out of memory with batch_size = 4, seq_len = 32" in r.stderr
    assert "push, fetch" not in r.stderr and "lower its batch_size" in r.stderr


@pytest.mark.parametrize("body, said", [("raise RuntimeError('disk on fire')", "RuntimeError: disk on fire"),
                                        ("import sys; sys.exit(0)", "it called sys.exit(0)")])  # (exit 0: h113 05)
def test_stream_builder_that_raises_is_a_stage_error(tmp_path, monkeypatch, body, said):
    root, repo = make_project(tmp_path)
    module = "mvc_test_boom_" + body.split()[0]  # (one module per case: the first stays imported)
    (root / f"{module}.py").write_text(f"def build(size=1):\n    {body}\n")
    text = (root / "p.toml").read_text().replace('file = "data.txt"', f'builder = "{module}:build"')
    (root / "p.toml").write_text(text)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 3, r.output
    err = r.stderr.strip()
    assert err.startswith(f"error: stage core: p.toml: streams.text: builder {module}:build failed: " + said)
    assert "bug" not in err and "Traceback" not in r.output
    summary = _events(r.stdout)[-1]  # the summary is still the last line
    assert summary["event"] == "summary" and not summary["passed"]
    assert summary["stages"][0]["status"] == "error" and said in summary["error"]


def test_evaluate_certificate_verifies_on_its_branch_and_from_stage_is_checked(tmp_path, monkeypatch):
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "nosuch"])  # fresh repository
    assert r.exit_code == 3 and "no stage named 'nosuch'" in r.stderr and "core, certify" in r.stderr, r.output
    import threading
    import mvc.files
    from mvc.store import ChainStore
    from mvc.objects import named_ids
    from semantic_ci import certificate
    lock, real_put, held_puts = os.path.abspath(os.path.join(repo.dir, "writers.lock")), ChainStore.put, set()

    def put(self, data, *a, **k):  # which blobs were stored while the writers lock was held
        oid = real_put(self, data, *a, **k)
        if mvc.files._held_here.get((lock, threading.get_ident())):
            held_puts.add(oid)
        return oid
    monkeypatch.setattr(ChainStore, "put", put)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 0, r.output
    summary = _events(r.stdout)[-1]
    certify = summary["stages"][1]
    cert_id = repo.read_commit(certify["commit"])["extra"]["pipeline"]["certificate"]
    assert certify["certificate"] == cert_id and summary["stages"][0]["certificate"]
    for stage in summary["stages"]:  # check data a certificate names was stored under the lock
        blobs = {o for o in named_ids(certificate.read(repo, stage["certificate"])) if repo.kind_of(o) == "blob"}
        assert blobs <= held_puts, stage["name"]  # (a gc --grace 0 meanwhile deleted them)
    r = CliRunner().invoke(cli, ["verify", "demo/certify~1", "--json"])  # what examples/layercake.toml documents
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["certificate"] == cert_id and json.loads(r.stdout)["verified"]
    # on a finished pipeline an unknown stage still runs nothing and says so
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "nosuch", "--json"])
    assert r.exit_code == 3 and "no stage named 'nosuch'" in r.stderr and r.stdout == "", r.output
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "certify", "--json"])
    assert r.exit_code == 0, r.output
    again = _events(r.stdout)[-1]
    assert [s["status"] for s in again["stages"]] == ["unchanged"] and again["stages"][0]["certificate"] == cert_id


def test_a_stage_whose_check_data_or_baseline_changed_runs_its_checks_again(tmp_path):
    """The stage key hashed a check's data path and revision as written: after the file's bytes
    changed (or the baseline branch moved) a re-run said "unchanged" and kept a certificate of
    other data (probe h36)."""
    root, repo = make_project(tmp_path)
    text = (root / "p.toml").read_text().replace(
        'name = "roundtrip"\nkind = "L2"\ncomponent = "core"\nprobe_bytes = 256',
        'name = "ratio"\nkind = "ppl-ratio"\ncomponent = "core"\nbaseline = "ref"\ndata = "held.txt"\n'
        "max_ratio = 100.0\nbootstrap = 10")
    assert 'baseline = "ref"' in text
    (root / "p.toml").write_text(text)
    (root / "held.txt").write_text("the cat sat on a mat " * 20)
    for seed in (0, 1):
        repo.commit({"core": cores.build("layercake", config="tiny", seed=seed)}, message=f"ref {seed}", branch="ref")

    def certify():
        summary = run_pipeline(repo, load(str(root / "p.toml")))
        stage = summary["stages"][1]
        check = certificate.read(repo, stage["certificate"])["checks"][0]
        return stage["status"], check["inputs"]["data"], check["inputs"]["baseline"]

    status, data, baseline = certify()
    assert status == "passed" and certify() == ("unchanged", data, baseline)
    (root / "held.txt").write_text("a bird sang while the dog ran " * 20)
    status, new_data, same_baseline = certify()
    assert status == "passed" and new_data != data and same_baseline == baseline
    repo.refs.update("refs/heads/ref", repo.resolve("ref~1"), message="the baseline moves")
    status, _, moved = certify()
    assert status == "passed" and moved != baseline


def test_a_stages_gate_certificate_is_judged_by_the_gates_its_pipeline_file_sets(tmp_path, monkeypatch):
    """A gate recorded in a stage's certificate was checked against its own recorded bounds: a gate
    edited looser (and its verdict flipped) verified, and so did one the pipeline file no longer sets."""
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    summary = run_pipeline(repo, load("p.toml"))
    cert_id = summary["stages"][0]["certificate"]
    cert = certificate.read(repo, cert_id)
    assert cert["config"] == "p.toml (no profile): stage core" and verify(repo, cert_id)["verified"]
    bpb = next(c for c in cert["checks"] if c["name"] == "heldout_bpb gate")["figures"]["value"]
    text = (root / "p.toml").read_text()
    (root / "p.toml").write_text(text.replace("max = 8.0", f"max = {bpb / 2}"))  # the file's bound now fails it
    r = verify(repo, cert_id)
    gate = next(c for c in r["checks"] if c["name"] == "heldout_bpb gate")
    assert not r["verified"] and "re-derived with the pipeline file's bounds" in gate["note"], gate
    (root / "p.toml").write_text(text.replace('metric = "heldout_bpb", max = 8.0', 'metric = "loss", max = 8.0'))
    gate = next(c for c in verify(repo, cert_id)["checks"] if c["name"] == "heldout_bpb gate")
    assert not gate["reproduced"] and "defines no such gate for stage core now" in gate["diffs"][0]
    (root / "p.toml").write_text(text)
    os.makedirs(root / "sub")
    monkeypatch.chdir(root / "sub")  # (read from the repository root, wherever verify runs)
    assert verify(repo, cert_id)["verified"]


def test_a_check_reading_a_stream_whose_held_out_part_is_one_byte_is_refused(tmp_path):
    """A check's `stream:NAME` data is the stream's held-out part, max(1, n * holdout) bytes: one
    byte made exact-logits compare nothing and pass (probe h36)."""
    root, repo = make_project(tmp_path)
    text = (root / "p.toml").read_text()
    (root / "tiny.txt").write_text("the cat sat on the mat")
    text = text.replace("[[stages]]", '[streams.tiny]\nfile = "tiny.txt"\nholdout = 0.05\n\n[[stages]]', 1)
    (root / "p.toml").write_text(text.replace("probe_bytes = 256", 'probe = "stream:tiny"'))
    with pytest.raises(MvcError, match="stream:tiny: the stream's held-out part, which checks read, is 1 byte"):
        run_pipeline(repo, load(str(root / "p.toml")))
    assert "demo/certify" not in repo.branches()


def test_a_gate_certificate_missing_a_gate_or_holding_one_twice_does_not_verify(tmp_path, monkeypatch):
    """Only bounds were compared: a stage's final gate certificate with a gate left out verified, as did
    one whose failing gate was edited into a copy of another on the same metric (probe h37)."""
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    text = (root / "p.toml").read_text().replace('max = 8.0 }', 'max = 8.0 }, { metric = "heldout_bpb", max = 9.0 }')
    (root / "p.toml").write_text(text)
    cert_id = run_pipeline(repo, load("p.toml"))["stages"][0]["certificate"]
    cert = certificate.read(repo, cert_id)
    assert [c["name"] for c in cert["checks"]] == ["heldout_bpb gate"] * 2 and verify(repo, cert_id)["verified"]
    dropped = json.loads(json.dumps(cert))
    del dropped["checks"][0]
    r = verify(repo, certificate.store(repo, dropped))
    assert not r["verified"] and "defines 'heldout_bpb gate' for stage core, which this certificate does not " \
        "record" in next(c for c in r["checks"] if c["name"] == "(coverage)")["diffs"][0]
    copied = json.loads(json.dumps(cert))
    copied["checks"][0] = copied["checks"][1]
    r = verify(repo, certificate.store(repo, copied))
    assert not r["verified"] and "more often than stage core sets it" in str(r["checks"])
    step4 = checkpoints(repo, "demo/core")[-1]["id"]  # (mid-training: no gate was due, no certificate)
    assert certificate.of_commit(repo, step4) == []


def test_a_certificate_an_older_mvc_labelled_without_its_profile_is_judged_by_that_profile(tmp_path, monkeypatch):
    """Labels of an older mvc ("p.toml: stage core") do not say which profile the run used: verify
    judged such a certificate by the stage without one, and a run with --profile no longer verified
    (a re-run kept it: the stage was unchanged) (review h37)."""
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    text = (root / "p.toml").read_text().replace("max = 8.0", "max = 0.01")
    (root / "p.toml").write_text(text + '\n[profile.loose.stages.core]\ngates = [{ metric = "heldout_bpb", max = 100.0 }]\n')
    cert_id = run_pipeline(repo, load("p.toml", "loose"))["stages"][0]["certificate"]
    cert = certificate.read(repo, cert_id)
    assert cert["config"] == "p.toml (profile loose): stage core" and verify(repo, cert_id)["verified"]
    older = certificate.store(repo, dict(cert, config="p.toml: stage core"))
    assert verify(repo, older)["verified"]
    no_profile = certificate.store(repo, dict(cert, config="p.toml (no profile): stage core"))
    assert not verify(repo, no_profile)["verified"]  # (judged by the stage without a profile: max 0.01)
    # a profile that changes a check's other settings (not a bound) is the one picked for its certificate
    (root / "p.toml").write_text(text + '\n[profile.fast.stages.core]\ngates = [{ metric = "heldout_bpb", max = 100.0 }]\n'
                                 '\n[[profile.fast.stages.certify.checks]]\nname = "roundtrip"\nprobe_bytes = 128\n')
    summary = run_pipeline(repo, load("p.toml", "fast"))
    certify = certificate.read(repo, summary["stages"][1]["certificate"])
    older = certificate.store(repo, dict(certify, config="p.toml: stage certify"))
    assert verify(repo, older)["verified"]
    # a broken profile is skipped for an older label, and refused (no traceback) when named (h39)
    (root / "p.toml").write_text((root / "p.toml").read_text() +
                                 '\n[[profile.big.stages.certify.checks]]\nname = ["x"]\n[profile.old.stages.gone]\n'
                                 'steps = 3\n')
    assert verify(repo, older)["verified"]
    r = verify(repo, certificate.store(repo, dict(certify, config="p.toml (profile big): stage certify")))
    assert not r["verified"] and "cannot be read here" in str(r["checks"])


def test_forged_stage_certificates_that_coverage_by_name_let_through_do_not_verify(tmp_path, monkeypatch):
    """Coverage counted entries by name and took "diverged" and "ended" from the certificate itself:
    a passing divergence gate in place of checks, a gate entry under a check's name, a final
    certificate of a wall_seconds stage cut to its every-checkpoint gates, and a plateau gate whose
    recorded losses were edited all verified (review h39)."""
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    text = (root / "p.toml").read_text().replace(
        'max = 8.0 }]', 'max = 8.0 }, { plateau = 100.0, patience = 1 }]\nwall_seconds = 1000.0').replace(
        'fallback = {', '[[stages.checks]]\nname = "rt"\nkind = "L2"\ncomponent = "core"\nprobe_bytes = 256\n'
                        'window = 64\n\n[stages.fallback]\n#', 1)
    text = text.replace("#lr_scale = 0.5, extra_steps = 4, retries = 1 }", "lr_scale = 0.5\nextra_steps = 4\nretries = 1")
    (root / "p.toml").write_text(text)
    summary = run_pipeline(repo, load("p.toml"))
    assert summary["passed"], summary
    core_id, certify_id = summary["stages"][0]["certificate"], summary["stages"][1]["certificate"]
    core, certify = certificate.read(repo, core_id), certificate.read(repo, certify_id)
    assert [c["name"] for c in core["checks"]] == ["heldout_bpb gate", "plateau gate", "rt"]
    assert verify(repo, core_id)["verified"] and verify(repo, certify_id)["verified"]

    def forged(cert, checks):
        return verify(repo, certificate.store(repo, dict(json.loads(json.dumps(cert)), checks=checks)))
    divergence = {**core["checks"][0], "name": "roundtrip", "params": {"gate": {"divergence": True}},
                  "figures": {"value": "diverged", "nonfinite": []}, "thresholds": {"metrics": "finite"}}
    assert not forged(certify, [divergence])["verified"]  # (a gate entry under an evaluate stage's check)
    assert not forged(core, [core["checks"][1]])["verified"]  # (a final certificate cut to its plateau gate)
    assert not forged(core, [{**core["checks"][0], "name": "rt"}, *core["checks"][1:2]])["verified"]
    plateau = json.loads(json.dumps(core["checks"][1]))
    plateau["figures"]["recent_losses"] = [0.01]
    r = forged(core, [core["checks"][0], plateau, core["checks"][2]])
    assert not r["verified"] and "the checkpoints record" in str(r["checks"])


def test_a_wall_clock_stage_killed_before_its_done_commit_resumes(tmp_path, monkeypatch):
    """A stage stopped by its wall_seconds budget records the step reached as its total; resumed
    after a kill before its done commit, the trainer refused that state (exit 4) (review h42)."""
    root, repo = make_project(tmp_path, steps=100000)
    text = (root / "p.toml").read_text().replace("checkpoint_every = 4", "checkpoint_every = 2\nwall_seconds = 0.3")
    (root / "p.toml").write_text(text)
    real = repo.commit

    def killed_at_done(*a, **k):  # (the done commit of the core stage: the kill)
        if "done (gates passed)" in k.get("message", ""):
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(repo, "commit", killed_at_done)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(repo, load(str(root / "p.toml")))
    monkeypatch.undo()
    step = repo.read_commit(repo.branches()["demo/core"])["extra"]["pipeline"]["step"]
    assert step < 100000
    summary = run_pipeline(repo, load(str(root / "p.toml")))
    assert summary["passed"], summary
    done = repo.read_commit(repo.branches()["demo/core"])
    assert done["extra"]["pipeline"]["status"] == "done" and done["metrics"]["steps"] == step


def test_a_fallback_ending_where_it_rolls_back_to_gates_that_checkpoint_as_the_stages_end(tmp_path):
    """A retry whose total steps the rollback had already reached trained nothing and wrote "done
    (gates passed)" on a checkpoint whose end gates never ran (they would fail), naming the failed
    certificate of the commit rolled back from (review h42)."""
    root, repo = make_project(tmp_path, steps=8, max_bpb=0.01)
    text = (root / "p.toml").read_text().replace("fallback = { lr_scale = 0.5, extra_steps = 4, retries = 1 }",
                                                 "fallback = { retries = 1, set = { steps = 4 } }")
    assert "set = { steps = 4 }" in text
    (root / "p.toml").write_text(text)
    summary = run_pipeline(repo, load(str(root / "p.toml")))
    assert not summary["passed"] and summary["stages"][0]["status"] == "failed", summary
    kept = repo.log("demo/core") if "demo/core" in repo.branches() else []  # (rolled back past its first)
    assert all(c["extra"]["pipeline"]["status"] != "done" for c in kept)


def test_a_stage_certificate_relabelled_to_another_stage_does_not_verify(tmp_path, monkeypatch):
    """The label chose the judge: a certificate moved to another stage (or put on a commit no stage
    made) was judged by that stage's bounds (review h42)."""
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    summary = run_pipeline(repo, load("p.toml"))
    core, certify = (certificate.read(repo, s["certificate"]) for s in summary["stages"])
    r = verify(repo, certificate.store(repo, dict(core, config="p.toml (no profile): stage certify")))
    assert not r["verified"] and "records 'heldout_bpb gate' as a gate, which stage certify does not" in str(r)
    r = verify(repo, certificate.store(repo, dict(certify, config="p.toml (no profile): stage core")))
    assert not r["verified"] and "is no checkpoint of stage core of pipeline demo" in str(r["checks"])
    text = (root / "p.toml").read_text()
    (root / "p.toml").write_text(text.replace("max = 8.0", "max = 0.001"))  # (its hint named mvc.toml: h42)
    out = CliRunner().invoke(cli, ["verify", summary["stages"][0]["certificate"]])
    assert out.exit_code == 3 and "the pipeline stage it names (p.toml (no profile): stage core)" in out.stderr
    assert "mvc.toml" not in out.stderr, out.output
    (root / "p.toml").write_text(text)
    assert verify(repo, summary["stages"][0]["certificate"])["verified"]
    assert verify(repo, summary["stages"][1]["certificate"])["verified"]


PASTE_STAGES = """
[[stages]]
name = "brick"
kind = "train-brick"
host = "stage:core"
brick_name = "x"
stream = "text"
steps = 2
checkpoint_every = 2
batch_size = 2
seq_len = 32
eval_bytes = 256

[[stages]]
name = "paste"
kind = "paste"
source = "stage:brick"
brick_name = "x"
into = ["stage:core"]

[[stages]]
name = "int8"
kind = "int8"
source = "stage:brick"
brick_name = "x"
"""


def test_from_stage_after_a_paste_stage_reuses_its_host_branches(tmp_path, monkeypatch):
    """A paste stage commits to <pipeline>/<stage>/<host>, not <pipeline>/<stage>: --from-stage on a
    later stage finds it finished there, and redoes none of the earlier stages."""
    root, repo = make_project(tmp_path, steps=4)
    certify = '[[stages]]\nname = "certify"\nkind = "evaluate"\nsource = "stage:core"'
    text = (root / "p.toml").read_text()
    assert certify in text
    (root / "p.toml").write_text(text.replace(certify, PASTE_STAGES + "\n" + certify.replace("stage:core", "stage:paste/core")))
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 0, r.output
    first = _events(r.stdout)[-1]
    assert [s["stage"] for s in first["stages"]] == ["core", "brick", "paste", "int8", "certify"]
    assert "demo/paste/core" in repo.branches() and "demo/paste" not in repo.branches()
    assert first["stages"][2]["branch"] == "demo/paste/core"
    # the earlier stages' results are found on their branches, in a full run's order (certify's
    # key covers them all, so it too is unchanged)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "int8", "--json"])
    assert r.exit_code == 0, r.output
    again = _events(r.stdout)[-1]
    assert [(s["stage"], s["status"]) for s in again["stages"]] == [("int8", "unchanged"), ("certify", "unchanged")]
    assert again["results"] == first["results"] and "finished with other" not in r.stderr, r.stderr
    # the int8 stage's branch lost: --from-stage int8 redoes it and none of the earlier stages
    repo.refs.update("refs/heads/demo/int8", None, message="test: drop int8")
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "int8", "--json"])
    assert r.exit_code == 0, r.output
    events = _events(r.stdout)
    assert [(s["stage"], s["status"]) for s in events[-1]["stages"]][0] == ("int8", "passed")
    assert not {"checkpoint", "paste"} & {e["event"] for e in events}
    assert events[-1]["results"]["paste/core"] == first["results"]["paste/core"] == repo.branches()["demo/paste/core"]
    assert events[-1]["results"]["int8"] == repo.branches()["demo/int8"]


def test_a_run_killed_between_a_paste_or_int8_commit_and_its_done_commit_resumes(tmp_path, monkeypatch):
    """The paste and int8 commits carried no pipeline record: a run killed just after one found it
    on the stage's branch as a user's commit and refused to go on (probe h36)."""
    from semantic_ci import stages
    root, repo = make_project(tmp_path, steps=2)
    text = (root / "p.toml").read_text()
    (root / "p.toml").write_text(text[:text.index("[[stages]]\nname = \"certify\"")] + PASTE_STAGES)
    real, killed = stages._done, []

    def kill_once(run, stage, *a, **k):
        if stage.kind in ("paste", "int8") and stage.kind not in killed:
            killed.append(stage.kind)
            raise KeyboardInterrupt
        return real(run, stage, *a, **k)
    monkeypatch.setattr(stages, "_done", kill_once)
    events = []
    for kind in ("paste", "int8"):  # (the second run resumes the paste, then is killed in int8)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(repo, load(str(root / "p.toml")), emit=events.append)
        assert killed[-1] == kind
    summary = run_pipeline(repo, load(str(root / "p.toml")), emit=events.append)
    # nothing changed: a restart says the stage was left unfinished (h72: "its inputs or settings changed")
    assert not [e for e in events if e["event"] == "restart" and "changed" in e["reason"]]
    assert summary["passed"] and [s["status"] for s in summary["stages"]] == ["unchanged", "unchanged",
                                                                               "unchanged", "passed"]
    assert "brick/x-int8" in repo.read_commit(repo.branches()["demo/int8"])["components"]


@pytest.mark.parametrize("stage_seed,expected", [(None, 3), (5, 5)])
def test_a_config_tables_seed_is_used_unless_the_stage_sets_one(tmp_path, stage_seed, expected):
    root, repo = make_project(tmp_path, steps=2)
    text = (root / "p.toml").read_text().replace('config = "tiny"', 'config = { preset = "tiny", seed = 3 }')
    if stage_seed is not None:
        text = text.replace("steps = 2\n", f"steps = 2\nseed = {stage_seed}\n", 1)
    (root / "p.toml").write_text(text)
    pipeline = load(str(root / "p.toml"))
    core = next(s for s in pipeline.stages if s.name == "core")
    assert core.settings.get("seed") == stage_seed
    summary = run_pipeline(repo, pipeline, emit=lambda e: None)
    assert summary["passed"], summary
    assert repo.tree("demo/core", "core")["config"]["seed"] == expected


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace('brick_name = "x"', 'brick_name = "x"\noptions = { experts = "8" }', 1),
     r"stage brick\.options: .*experts must be an integer"),
    (lambda t: t.replace('brick_name = "x"', 'brick_name = "x"\noptions = { foo = 1 }', 1),
     r"stage brick\.options: unknown sparse brick options"),
    (lambda t: t.replace('brick_name = "x"', 'brick_name = "a/../.."', 1), r"stage brick\.brick_name: invalid"),
    (lambda t: t.replace("retries = 1 }", 'retries = 1, set = { overrides = { d_model = "x" } } }'),
     r"stage core\.fallback\.set\.overrides: .*d_model must be an integer"),
])
def test_settings_are_validated_before_any_stage_trains(tmp_path, edit, match):
    """Before: these failed only once the stages before them had trained and committed (exit 4
    for the wrong types)."""
    root, repo = make_project(tmp_path)
    (root / "bad.toml").write_text(edit((root / "p.toml").read_text() + PASTE_STAGES))
    with pytest.raises(ConfigError, match=match):
        load(str(root / "bad.toml"))
    assert repo.head() is None and not repo.branches()


@pytest.mark.parametrize("host, error", [("mian", "stage brick.host: revision 'mian' does not resolve"),
                                         ("demo/core", None),  # (a branch an earlier stage makes)
                                         ("demo/brick", "stage brick.host: 'demo/brick' is the stage's own branch"),
                                         ("refs/heads/demo/brick", "stage brick.host: 'refs/heads/demo/brick' is "
                                                                   "the stage's own branch"),  # (h94: it slipped past)
                                         ("demo/brick@{1}", r"stage brick.host: 'demo/brick@\{1\}' is the "
                                                            "stage's own branch"),  # (h95: so did this)
                                         ("demo/paste/core~1", "stage brick.host: 'demo/paste/core~1' is the branch "
                                                               "of stage paste, which runs after it")])
def test_revisions_are_resolved_before_any_stage_trains(tmp_path, host, error):
    """A misspelt host of a later stage was found only after the stages before it had trained (h36);
    so was one naming its own branch or a later stage's, not made yet (h91: on a re-run, one of
    another run's results, its own moving the stage's key at every run)."""
    root, repo = make_project(tmp_path, steps=2)
    text = (root / "p.toml").read_text()
    text = text[:text.index('[[stages]]\nname = "certify"')] + PASTE_STAGES.replace('host = "stage:core"',
                                                                                    f'host = "{host}"')
    (root / "p.toml").write_text(text)
    if error is None:
        assert run_pipeline(repo, load(str(root / "p.toml")))["passed"]
        return
    with pytest.raises(ConfigError, match=error) as e:
        run_pipeline(repo, load(str(root / "p.toml")))
    assert repo.head() is None and not repo.branches()
    assert "stage:" in (e.value.hint or "") or "does not resolve" in error


def test_a_users_folder_named_like_an_installed_package_does_not_replace_it(tmp_path):
    root, _repo = make_project(tmp_path)
    (root / "kernels").mkdir()
    (root / "kernels" / "__init__.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    (root / "mydata.py").write_text("def make(n_bytes=6000, seed=0):\n    return b'the cat sat ' * 600\n")
    text = (root / "p.toml").read_text().replace('file = "data.txt"', 'builder = "mydata:make"')
    (root / "p.toml").write_text(text)
    code = ("import sys; from semantic_ci.pipeline_config import load; load(sys.argv[1]); "
            "import kernels; print(kernels.__file__)")
    r = subprocess.run([sys.executable, "-c", code, str(root / "p.toml")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (root / "kernels" / "__init__.py.ran").exists()  # before: the user's kernels was imported
    assert not r.stdout.strip().startswith(str(root))


def test_a_fallback_is_validated_as_it_will_run_replacing_the_stages_overrides(tmp_path):
    root, _repo = make_project(tmp_path)
    text = (root / "p.toml").read_text().replace('config = "tiny"', 'config = "tiny"\noverrides = { n_head = 3, d_model = 96 }')
    text = text.replace("retries = 1 }", "retries = 1, set = { overrides = { d_model = 128 } } }")
    (root / "ok.toml").write_text(text)
    load(str(root / "ok.toml"))  # d_model 128 with the preset's heads: valid (128 is not a multiple of 3)


def test_an_on_commit_rollback_is_not_rolled_back_again_by_the_pipeline(tmp_path):
    """mvc.toml's on-commit CI (on_fail = rollback) already moved the branch back to the passing
    checkpoint; the pipeline rolled back again from there, to nothing, and every retry restarted."""
    root, repo = make_project(tmp_path, steps=8, retries=1)
    (root / "mvc.toml").write_text('[ci]\non_commit = true\non_fail = "rollback"\n[[ci.checks]]\nname = "frozen"\n'
                                   'kind = "exact-logits"\ncomponent = "core"\nbaseline = "HEAD~1"\n')
    events = []
    summary = run_pipeline(repo, load(str(root / "p.toml")), emit=events.append)
    assert not summary["passed"] and "gates still failing" in str(summary.get("error"))
    first = [e for e in events if e["event"] == "checkpoint"][0]["commit"]  # its HEAD~1 is past the root
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert rollbacks and all(e["to"] == first for e in rollbacks), rollbacks
    assert repo.branches()["demo/core"] == first
    reflog = [e["message"] for e in repo.reflog("demo/core")]
    assert not any(m.startswith("pipeline rollback") for m in reflog), reflog


def test_ctrl_c_during_a_run_says_how_to_resume(tmp_path, monkeypatch):
    """It said only 'interrupted' (or, after a checkpoint, 'do not commit it again'), and --json
    ended without a last line saying what happened."""
    import semantic_ci.pipeline as sp
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)

    def interrupted(repo, pipeline, from_stage, emit):
        emit({"event": "stage", "stage": "core"})
        raise mvc.errors.InterruptedAfterLanding("commit x landed on demo/core")
    monkeypatch.setattr(sp, "run_pipeline", interrupted)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 130 and "resumes from the last checkpoint" in r.stderr and "commit it again" not in r.stderr
    assert _events(r.stdout)[-1]["event"] == "interrupted"


def test_a_scheduler_s_sigterm_during_a_run_exits_143_not_as_ctrl_c(tmp_path, monkeypatch):
    """`mvc run` took every KeyboardInterrupt, SIGTERM's Terminated too, for a Ctrl-C: exit 130,
    'interrupted', where every other command exits 143, 'terminated' (probe h8): a wrapper that
    requeues preempted jobs on 143 could not tell a scheduler's stop from a user's Ctrl-C."""
    import semantic_ci.pipeline as sp
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)

    def terminated(repo, pipeline, from_stage, emit):
        emit({"event": "stage", "stage": "core"})
        raise mvc.errors.Terminated(15)
    monkeypatch.setattr(sp, "run_pipeline", terminated)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 143 and r.stderr.startswith("error: terminated (") and "resumes" in r.stderr
    assert _events(r.stdout)[-1] == {"event": "interrupted", "how": "terminated", "resume": "run the same command again"}


def test_a_misspelt_gate_metric_is_refused_before_anything_trains(tmp_path, monkeypatch):
    """A typo in a gate's metric trained every attempt of the stage before failing (exit 1), then
    stopped the stage at its first checkpoint; now the file is refused as it is read."""
    root, repo = make_project(tmp_path, retries=2)
    (root / "p.toml").write_text((root / "p.toml").read_text().replace('metric = "heldout_bpb"', 'metric = "heldout_bp"'))
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml"])
    assert r.exit_code == 3 and "gates[0].metric: 'heldout_bp' is not a metric a train-core stage" in r.stderr, r.output
    assert "heldout_bpb" in r.stderr and repo.head() is None and not repo.branches()


@pytest.mark.parametrize("edit, match", [
    (None, r"cannot create refs/heads/demo/certify: it conflicts with existing refs/heads/demo/certify/old"),
    (lambda t: t.replace('source = "stage:core"', 'source = "stage:core"\nbranch = "demo/core/eval"'),
     r"stage branches 'demo/core' and 'demo/core/eval' clash"),
    (lambda t: t.replace('source = "stage:core"', 'source = "stage:core"\nbranch = "demo/core"'),
     r"two stages commit to branch 'demo/core'"),  # (every re-run trained the core stage again)
])
def test_stage_branches_that_clash_are_refused_before_anything_trains(tmp_path, edit, match):
    """A stage branch clashing with an existing branch (or another stage's) was found when that stage
    committed, after the stages before it had trained."""
    root, repo = make_project(tmp_path)
    if edit is None:
        repo.commit({"x": {"t": torch.ones(2)}}, message="a user's branch", branch="demo/certify/old")
    else:
        (root / "p.toml").write_text(edit((root / "p.toml").read_text()))
    before = repo.branches()
    with pytest.raises(MvcError, match=match):
        run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    assert repo.branches() == before  # (the core stage trained and committed first)


def test_a_second_run_while_one_runs_is_refused_and_a_killed_runs_lock_is_broken(tmp_path):
    """Two runs of one pipeline at once (the same command in two terminals) both committed onto its
    stage branches, each taking the other's checkpoints for its parents; with changed settings
    the second started the stage over under the first, and both reported "passed" (h55)."""
    from mvc.errors import LockHeld
    from mvc.files import hostname, process_start
    root, repo = make_project(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = os.path.join(repo.dir, "locks", "run", "demo", "certify.lock")
        os.makedirs(os.path.dirname(lock))
        with open(lock, "w") as f:  # as a running `mvc run` of the pipeline holds it
            json.dump({"pid": other.pid, "host": hostname(), "time": 0, "start": process_start(other.pid)}, f)
        with pytest.raises(LockHeld, match=f"branch demo/certify .* is locked by process {other.pid}"):
            run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
        assert repo.branches() == {}  # refused before anything trained
    finally:
        other.kill()
        other.wait()
    with pytest.warns(UserWarning, match="broke stale lock .*certify.lock left by dead process"):
        summary = run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    assert summary["passed"] and set(repo.branches()) >= {"demo/core", "demo/certify"}
    assert not [f for _d, _s, files in os.walk(os.path.join(repo.dir, "locks")) for f in files]  # released


def test_a_paste_into_a_host_stage_of_another_abi_is_refused_before_training(tmp_path):
    """The mismatch surfaced only at the paste stage, after every earlier stage had trained."""
    root, repo = make_project(tmp_path)
    legacy = ('\n[[stages]]\nname = "legacy"\nkind = "train-core"\narch = "layercake"\nconfig = "tiny"\n'
              'stream = "text"\nsteps = 4\ncheckpoint_every = 4\nbatch_size = 4\nseq_len = 32\neval_bytes = 512\n'
              'overrides = { canonical = false, d_abi = 32 }\n')
    text = (root / "p.toml").read_text() + legacy + PASTE_STAGES.replace('into = ["stage:core"]', 'into = ["stage:legacy"]')
    (root / "bad.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"stage paste\.into\[0\] \(stage:legacy\): ABI mismatch in d_abi"):
        load(str(root / "bad.toml"))
    (root / "good.toml").write_text((root / "p.toml").read_text() + PASTE_STAGES)
    load(str(root / "good.toml"))  # the same ABI: accepted
    assert repo.head() is None


def test_from_stage_says_when_it_reuses_an_earlier_stage_whose_settings_changed(tmp_path, monkeypatch):
    root, repo = make_project(tmp_path)
    monkeypatch.chdir(root)
    assert CliRunner().invoke(cli, ["run", "p.toml"]).exit_code == 0
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "certify"])
    assert r.exit_code == 0 and "finished with other settings" not in r.stderr, r.output
    (root / "p.toml").write_text((root / "p.toml").read_text().replace("lr = 0.004", "lr = 0.002"))
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "certify"])
    assert r.exit_code == 0, r.output
    assert "stage core finished with other settings than the file sets now (lr)" in r.stderr, r.stderr


def test_the_metrics_gates_may_name_are_those_a_core_trainer_records():
    from cores.train import Trainer
    from semantic_ci.pipeline_config import CORE_METRICS, METRIC_PREFIXES
    data = " ".join(TEXT_WORDS * 40).encode()
    t = Trainer(cores.build("layercake", config="tiny"), data, steps=1, batch_size=2, seq_len=32, eval_bytes=256,
                progress=False)
    t.run()
    recorded = set(t.metrics(evaluate=True)) | {"attempt"}
    assert {m for m in recorded if not m.startswith(METRIC_PREFIXES["train-core"])} == CORE_METRICS


def test_a_paste_stage_leaves_mvc_tomls_on_commit_checks_to_its_own_checks(tmp_path, monkeypatch):
    """`Repo.paste_brick` runs the on-commit hooks as a commit does; the pipeline's paste stage must
    not (its own checks judge it; a failing hook aborted the run outside the stage machinery)."""
    import mvc.repo
    from mvc.errors import CheckFailed
    root, repo = make_project(tmp_path, steps=4)
    (root / "p.toml").write_text((root / "p.toml").read_text() + PASTE_STAGES)
    (root / "mvc.toml").write_text('[ci]\n[[ci.checks]]\nname = "x"\nkind = "exact-logits"\nbaseline = "HEAD~1"\n')
    refs = []

    def failing_on_paste(repo_, commit, ref):
        refs.append(ref)
        if "/paste/" in ref:
            raise CheckFailed(commit, None, "semantic CI failed (simulated)")
    real = mvc.repo._registered_hooks
    monkeypatch.setattr(mvc.repo, "_registered_hooks",
                        lambda group: [failing_on_paste] if group == "mvc.post_commit" else real(group))
    summary = run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    assert summary["passed"], summary
    assert refs and not any("/paste/" in r for r in refs)  # (the checkpoints' commits still ran them)


@pytest.mark.parametrize("edit, stage, branch", [
    (lambda t: t.replace("holdout = 0.1", "holdout = 0.00001", 1), "core", "demo/core"),
])
def test_held_out_data_too_short_to_measure_is_refused_before_the_stage_trains(tmp_path, edit, stage, branch):
    """A held-out tail of one byte (a tiny holdout fraction; eval_bytes = 1) was found out only when
    the stage's first checkpoint was measured, after it had trained (bricks.train and cores.train
    refuse it up front; the pipeline builds its trainers itself)."""
    root, repo = make_project(tmp_path)
    (root / "short.toml").write_text(edit((root / "p.toml").read_text()))
    with pytest.raises(MvcError, match=rf"short.toml: stage {stage}: its held-out data has 1 byte\(s\) to measure, "
                                       r"need at least 2 \(") as e:
        run_pipeline(repo, load(str(root / "short.toml")), emit=lambda e: None)
    assert not e.value.message.startswith(f"stage {stage}: ") and "eval_bytes" in e.value.hint  # (named once)
    assert branch not in repo.branches()


def test_a_run_killed_between_a_failed_gate_and_its_rollback_fails_the_stage_on_resume(tmp_path, monkeypatch):
    """The resume took 'the head has a certificate' for 'its gates passed': it marked the stage
    '(gates passed)' on the failing checkpoint and exit 0, and later stages trained on it."""
    root, repo = make_project(tmp_path, steps=4, max_bpb=0.5, retries=0)  # (no model this small gets there)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 1, r.output
    failed_at = next(e["from"] for e in _events(r.stdout) if e.get("event") == "rollback")
    repo.refs.update("refs/heads/demo/core", failed_at, message="as a kill before the rollback leaves it")
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 1, r.output
    core = next(s for s in _events(r.stdout)[-1]["stages"] if s["stage"] == "core")
    assert core["status"] != "passed"
    head = mvc.Repo(root).branches().get("demo/core")  # (rolled back past its first checkpoint: gone)
    assert head is None or "(gates passed)" not in mvc.Repo(root).read_commit(head)["message"]


@pytest.mark.parametrize("again", ["p.toml", "./p.toml"])
def test_a_run_killed_after_its_last_gates_passed_resumes_to_a_verifiable_result(tmp_path, monkeypatch, again):
    """Resumed after the last checkpoint's gates passed but before the done commit, the stage's
    result named no certificate: mvc verify of the stage branch exited 3 (an unbroken run: 0).
    The pipeline file named another way on the re-run made the resume run the gates again."""
    from semantic_ci import certificate
    root, repo = make_project(tmp_path, steps=4)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["run", "p.toml", "--json"])
    assert r.exit_code == 0, r.output
    done = repo.resolve("demo/core")
    last = repo.read_commit(done)["parents"][0]  # the gated checkpoint below the done commit
    repo.refs.update("refs/heads/demo/core", last, message="as a kill before the done commit leaves it")
    r = CliRunner().invoke(cli, ["run", again, "--json"])
    assert r.exit_code == 0, r.output
    assert len(certificate.of_commit(repo, last)) == 1  # its gates ran once
    r = CliRunner().invoke(cli, ["verify", "demo/core"])
    assert r.exit_code == 0 and "verified: its checks passed" in r.stdout, r.output


def test_a_retry_after_a_resumed_rollback_gates_on_the_history_an_unbroken_run_has(tmp_path, monkeypatch):
    """The resume's rollback kept the failing checkpoint's metrics in the retry's history: its gates
    (a plateau gate reads the history) saw what an uninterrupted run had dropped."""
    from semantic_ci import pipeline as pl
    calls = []
    real = pl._evaluate_gates

    def spy(run, stage, commit, history, at_end):
        info = run.repo.read_commit(commit)["extra"]["pipeline"]
        calls.append((info["attempt"], info["step"], len(history)))
        return real(run, stage, commit, history, at_end)
    monkeypatch.setattr(pl, "_evaluate_gates", spy)
    root, repo = make_project(tmp_path, steps=8, max_bpb=0.01, retries=1)
    monkeypatch.chdir(root)
    assert CliRunner().invoke(cli, ["run", "p.toml", "--json"]).exit_code == 1
    unbroken = [c for c in calls if c[0] == 1]
    failed_at = next(cid for e in repo.reflog("demo/core") for cid in (e.get("new"), e.get("old"))
                     if cid and repo.read_commit(cid)["extra"].get("pipeline", {}).get("attempt") == 0
                     and repo.read_commit(cid)["extra"]["pipeline"].get("step") == 8)  # attempt 0's failing end
    repo.refs.update("refs/heads/demo/core", failed_at, message="as a kill before the rollback leaves it")
    calls.clear()
    assert CliRunner().invoke(cli, ["run", "p.toml", "--json"]).exit_code == 1
    assert unbroken and [c for c in calls if c[0] == 1] == unbroken


def test_the_event_lines_cut_object_ids_but_not_other_text_of_64_characters():
    """Without a terminal `mvc run` prints one line per event: any value of 64 characters was taken
    for an object id and cut to 12 ("reason=stage rubric", h91)."""
    from mvc.cli.run_cmds import _line
    reason = "stage rubric: checks failed (transfer); certificate c395e2f757e2"
    oid = "ab" * 32
    assert len(reason) == len(oid) == 64
    line = _line({"event": "stage_failed", "stage": "rubric", "reason": reason, "commit": oid})
    assert f"reason={reason}," in line and f"commit={oid[:12]}" in line and oid not in line


@pytest.mark.parametrize("edit, where", [
    (lambda t: t.replace("eval_bytes = 256", "eval_bytes = 1", 1), "stage brick.eval_bytes"),
    (lambda t: t.replace("seq_len = 32\neval_bytes = 256", "seq_len = 1\neval_bytes = 256", 1), "stage brick.seq_len"),
    (lambda t: t.replace("retries = 1 }", "retries = 1, set = { seq_len = 1 } }", 1), "stage core.fallback.set.seq_len"),
])
def test_a_window_or_held_out_part_of_one_byte_is_refused_when_the_file_is_read(tmp_path, edit, where):
    """A later stage's `eval_bytes = 1` or `seq_len = 1` was refused by its trainer only once the stages
    before it had trained (h91); eval_bytes = 1 held out a byte, which measures nothing."""
    root, repo = make_project(tmp_path)
    (root / "bad.toml").write_text(edit((root / "p.toml").read_text() + PASTE_STAGES))
    with pytest.raises(ConfigError, match=rf"bad.toml: {where}: must be at least 2, got 1"):
        load(str(root / "bad.toml"))
    (root / "bad.toml").write_text((root / "p.toml").read_text() + PASTE_STAGES.replace(
        "seq_len = 32\neval_bytes = 256", "seq_len = 2\neval_bytes = 256", 1))  # (h94: a sparse brick's patch)
    with pytest.raises(ConfigError, match=r"stage brick.seq_len: must be at least 4 for a sparse brick"):
        load(str(root / "bad.toml"))


@pytest.mark.parametrize("fallback, error", [  # (h96: a retry's brick was checked as the stage's, or not at all)
    ('{ retries = 1, set = { brick = "portable", seq_len = 2 } }', None),
    ('{ retries = 1, set = { brick = "sparse" } }', r"stage brick.fallback.set.seq_len: must be at least 4"),
    ('{ retries = 1, set = { brick = "nonsense" } }', r"stage brick.fallback.set.brick: unknown brick kind"),
    ('{ retries = 1, set = { options = { bogus = 1 } } }', r"stage brick.fallback.set.options: "),
])
def test_a_fallback_brick_is_checked_as_the_retry_builds_it(tmp_path, fallback, error):
    root, repo = make_project(tmp_path)
    stages = PASTE_STAGES.replace("seq_len = 32\neval_bytes = 256", "eval_bytes = 256\nbrick = \"portable\"\n"
                                  "seq_len = 2\n" if "sparse" in fallback else "seq_len = 8\neval_bytes = 256", 1)
    stages = stages.replace('brick_name = "x"\nstream = "text"', f'brick_name = "x"\nstream = "text"\n'
                            f'gates = [{{ metric = "loss", max = 99.0 }}]\nfallback = {fallback}', 1)
    (root / "f.toml").write_text((root / "p.toml").read_text() + stages)
    if error is None:
        load(str(root / "f.toml"))
        return
    with pytest.raises(ConfigError, match=error):
        load(str(root / "f.toml"))


def test_a_streams_new_holdout_runs_the_stages_reading_it_again(tmp_path):
    """The key named a stream by the id of all its bytes, which a new holdout leaves as it was: the
    stage was skipped ("inputs unchanged"), its result trained and measured on another split (h91)."""
    root, repo = make_project(tmp_path, steps=2)
    statuses = lambda: [s["status"] for s in run_pipeline(repo, load(str(root / "p.toml")))["stages"]]  # noqa: E731
    assert statuses() == ["passed", "passed"] and statuses() == ["unchanged", "unchanged"]
    (root / "p.toml").write_text((root / "p.toml").read_text().replace("holdout = 0.1", "holdout = 0.2"))
    assert statuses() == ["passed", "passed"]


def _key_before_h93(run, stage, inputs):
    """Run.key as mvc computed it before the holdout and check presets were keyed (h93)."""
    from mvc.objects import canonical_json, hash_bytes
    read = run._checks_read(stage)
    return hash_bytes(canonical_json({"kind": stage.kind, "settings": stage.settings, "gates": stage.gates,
                                      "fallback": stage.fallback, "inputs": inputs,
                                      "checks": [[c.name, c.kind, c.params] for c in stage.checks],
                                      **({"checks_read": read} if read else {})}))


@pytest.mark.parametrize("holdout", ["", "holdout = 0.05\n"])
def test_stages_at_the_default_holdout_without_check_presets_keep_the_keys_they_finished_with(tmp_path, holdout):
    """Keying a stream's holdout and a check's preset left the key of every other stage as it was: a
    stage finished by an earlier mvc is still recognised (not trained again)."""
    from semantic_ci.pipeline import Run
    root, repo = make_project(tmp_path)
    (root / "p.toml").write_text((root / "p.toml").read_text().replace("holdout = 0.1\n", holdout).replace(
        'kind = "L2"', 'kind = "exact-logits"\nbaseline = "HEAD"\ntolerance = 0.0\nroundtrip = true'))
    run = Run(repo, load(str(root / "p.toml")))
    for stage in run.pipeline.stages:
        assert run.key(stage, {"stream": "x"}) == _key_before_h93(run, stage, {"stream": "x"})


def test_a_checks_new_preset_certifies_the_stage_again(tmp_path):
    """Presets that expand alike (L3 and L4; L2 and its exact-logits expansion) left the key as it was:
    the stage kept a certificate of the old preset, which verify refuses for the check the file now
    names (h91)."""
    root, repo = make_project(tmp_path, steps=2)
    run = lambda: run_pipeline(repo, load(str(root / "p.toml")))["stages"][1]  # noqa: E731
    first = run()
    assert first["status"] == "passed" and certificate.read(repo, first["certificate"])["checks"][0]["preset"] == "L2"
    (root / "p.toml").write_text((root / "p.toml").read_text().replace(
        'kind = "L2"', 'kind = "exact-logits"\nbaseline = "HEAD"\ntolerance = 0.0\nroundtrip = true'))
    again = run()
    assert again["status"] == "passed" and again["certificate"] != first["certificate"]
    assert certificate.read(repo, again["certificate"])["checks"][0]["preset"] is None
    assert verify(repo, again["certificate"])["verified"]


def test_from_stage_says_when_it_reuses_an_earlier_stage_whose_data_changed(tmp_path, monkeypatch):
    """--from-stage compared an earlier stage's settings only: after its stream's bytes changed it was
    reused saying nothing (h91). Its key is computed as the stage computes it and compared."""
    root, repo = make_project(tmp_path, steps=2)
    (root / "p.toml").write_text((root / "p.toml").read_text() + PASTE_STAGES)
    monkeypatch.chdir(root)
    assert CliRunner().invoke(cli, ["run", "p.toml"]).exit_code == 0
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "int8"])  # (skips every other kind of stage)
    assert r.exit_code == 0 and "finished with other" not in r.stderr, r.output
    with open(root / "data.txt", "a") as f:
        f.write(" a bird sang")
    r = CliRunner().invoke(cli, ["run", "p.toml", "--from-stage", "int8"])
    assert r.exit_code == 0, r.output
    for stage in ("core", "brick"):  # (both train on the stream; certify and paste read their results)
        assert f"stage {stage} finished with other inputs than it has now" in r.stderr, r.stderr


def test_the_report_of_a_failed_evaluate_stage_shows_this_runs_certificate_not_the_earlier_passing_one(tmp_path):
    """The report read the certificate of the stage branch's tip, the result an earlier run had
    finished with: a failed stage was shown beside a passing certificate table (h91)."""
    import io
    from rich.console import Console
    from semantic_ci.pipeline_report import certificate_rows, render_summary
    root, repo = make_project(tmp_path, steps=2)
    text = (root / "p.toml").read_text().replace(
        'name = "roundtrip"\nkind = "L2"\ncomponent = "core"\nprobe_bytes = 256\nwindow = 64',
        'name = "ppl"\nkind = "ppl-ratio"\ncomponent = "core"\nbaseline = "stage:core"\ndata = "stream:text"\n'
        "max_ratio = BOUND\nwindow = 64")
    (root / "p.toml").write_text(text.replace("BOUND", "2.0"))
    first = run_pipeline(repo, load(str(root / "p.toml")))
    assert first["passed"] and [r["verdict"] for r in certificate_rows(repo, first)] == ["passed", "passed"]
    (root / "p.toml").write_text(text.replace("BOUND", "0.5"))
    summary = run_pipeline(repo, load(str(root / "p.toml")))
    failed = summary["stages"][1]
    assert not summary["passed"] and failed["status"] == "failed" and failed["previous"]
    assert failed["commit"] == first["results"]["certify"] and "previous" not in summary["stages"][0]
    rows = certificate_rows(repo, summary)
    assert [(r["claim"], r["evidence"], r["verdict"]) for r in rows if r["stage"] == "certify"] == [
        ("ppl", failed["certificate"], "failed")]
    out = io.StringIO()
    render_summary(repo, summary, Console(file=out, width=200))
    assert "failed (commit: an earlier run's)" in out.getvalue()


@pytest.mark.parametrize("move", ["commit", "rollback", "commit, then the gate fails"])
def test_a_stage_branch_moved_by_another_process_mid_run_stops_the_run(tmp_path, monkeypatch, move):
    """The run committed each checkpoint (and its "done" commit) on whatever head the stage branch
    had: another process's commit after the last gate became the stage's result, carrying the gate
    certificate of weights it did not hold (`mvc verify` passed them); a user's rollback mid-run was
    built upon and undone unseen (h113 01, 03); a failing gate's rollback dropped such a commit from
    the branch (h115 07). Now the run stops, the branch as the other left it."""
    import semantic_ci.pipeline as sp
    root, repo = make_project(tmp_path, steps=8)
    real = sp._gates_ok
    moved = {}

    def gates_then_another_process(run, stage, commit, history, job):
        ok = real(run, stage, commit, history, job)
        if stage.name == "core" and not moved and job.trainer.step == 8:  # (after the last gate)
            other = mvc.Repo(str(root))
            if move.startswith("commit"):
                core = {k: torch.zeros_like(v) for k, v in other.load(commit, "core").items()}
                moved["to"] = other.commit({"core": core}, message="someone else's core", branch="demo/core")
            else:
                moved["to"] = other.read_commit(commit)["parents"][0]
                other.refs.update("refs/heads/demo/core", moved["to"], message="rollback")
            return ok and move != "commit, then the gate fails"
        return ok
    monkeypatch.setattr(sp, "_gates_ok", gates_then_another_process)
    with pytest.raises(sp.StageError, match="stage core: branch demo/core is at .*another process committed to it or "
                                            "moved it; the run stopped"):
        run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    assert repo.branches()["demo/core"] == moved["to"]  # (left as the other process left it)
    assert [c["message"] for c in repo.log("demo/core") if "done" in c["message"]] == []
    monkeypatch.setattr(sp, "_gates_ok", real)
    if move.startswith("commit"):  # run again: the commit it did not make is named, as at rest
        with pytest.raises(MvcError, match="ends in commits the pipeline did not make"):
            run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    else:  # run again: it goes on from the checkpoint the user went back to
        events = []
        assert run_pipeline(repo, load(str(root / "p.toml")), emit=events.append)["passed"]
        assert [(e["step"], e["commit"]) for e in events if e["event"] == "resume"] == [(4, moved["to"])]
        assert [c["extra"]["pipeline"]["step"] for c in checkpoints(repo, "demo/core")] == [8, 4]


def test_an_evaluate_stage_whose_branch_moves_while_its_checks_run_stops(tmp_path, monkeypatch):
    """The evaluate stage moved its branch to its target after its checks (minutes on a real model)
    without looking: a commit another process made there meanwhile was dropped (h115 09)."""
    import semantic_ci.pipeline as sp
    import semantic_ci.stages as ss
    root, repo = make_project(tmp_path, steps=4)
    assert run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)["passed"]
    (root / "p.toml").write_text((root / "p.toml").read_text().replace("probe_bytes = 256", "probe_bytes = 128"))
    real, moved = ss.run_check, {}

    def check_while_another_process_commits(ctx, c):
        if not moved:
            other = mvc.Repo(str(root))
            moved["to"] = other.commit({"extra": {"w": torch.ones(2)}}, message="someone else's", branch="demo/certify")
        return real(ctx, c)
    monkeypatch.setattr(ss, "run_check", check_while_another_process_commits)
    with pytest.raises(sp.StageError, match="stage certify: branch demo/certify is at .* the run stopped"):
        run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    assert repo.branches()["demo/certify"] == moved["to"]


def test_verify_refuses_a_certificate_a_commit_borrows_for_other_weights(tmp_path):
    """`mvc verify REV` of a commit without a certificate took the one its `extra.pipeline.certificate`
    names, whatever commit that certificate certified: any commit could borrow a passing one (h113 02)."""
    root, repo = make_project(tmp_path)
    summary = run_pipeline(repo, load(str(root / "p.toml")), emit=lambda e: None)
    done = repo.read_commit(repo.branches()["demo/core"])
    assert verify(repo, "demo/core")["verified"]  # (the stage's own result: the checkpoint's weights)
    core = {k: torch.zeros_like(v) for k, v in repo.load("demo/core", "core").items()}
    bad = repo.commit({"core": core}, message="untrained core", branch="release", extra=done["extra"])
    with pytest.raises(MvcError, match=f"commit {bad[:12]} has no certificate: the one it records "
                                       f"\\({done['extra']['pipeline']['certificate'][:12]}\\) certifies"):
        verify(repo, bad)
    assert summary["passed"]

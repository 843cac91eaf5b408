"""Issue 9 through the pipeline: a compression stage at a tiny budget fails its PPL-ratio gate,
rolls back and applies the fallback (here: the low-rank reference at a mild ratio), which passes;
the compressed core is committed with its arch so it can be rebuilt."""
import pytest
import torch

import mvc
from mvc.errors import ConfigError
from semantic_ci.models import build_from_tree
from semantic_ci.pipeline import run_pipeline
from semantic_ci.pipeline_config import parse, validate_environment

WORDS = "the cat sat on a mat and the dog ran to it while a bird sang".split()

DOC = {
    "pipeline": {"name": "cmp"},
    "streams": {"text": {"file": "data.txt", "holdout": 0.1}},
    "stages": [
        {"name": "dense", "kind": "train-core", "arch": "layercake", "config": "tiny", "stream": "text",
         "steps": 6, "checkpoint_every": 6, "batch_size": 4, "seq_len": 32, "eval_bytes": 256},
        {"name": "l1", "kind": "compress", "source": "stage:dense", "stream": "text", "method": "harmonic",
         "layers": ["out", "blocks.*.mlp.*"], "components": 2, "recovery_steps": 1, "batch_size": 2, "seq_len": 32,
         "eval_bytes": 256, "lr": 1e-5, "gates": [{"check": "degradation"}],
         "fallback": {"retries": 1, "set": {"method": "lowrank", "ratio": 1.05}},
         "checks": [{"name": "degradation", "kind": "ppl-ratio", "component": "core", "baseline": "stage:dense",
                     "data": "stream:text", "max_ratio": 1.05, "window": 64}]},
    ],
}


def test_compression_gate_fails_then_fallback_passes(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    (root / "data.txt").write_text(" ".join(WORDS[i] for i in torch.randint(len(WORDS), (3000,), generator=g)))
    repo = mvc.Repo.init(root)
    events = []
    summary = run_pipeline(repo, parse(DOC, str(root / "p.toml")), emit=events.append)
    assert summary["passed"], summary.get("error")
    gates = [e for e in events if e["event"] == "gate" and e["stage"] == "l1"]
    assert [g["passed"] for g in gates] == [False, True]
    assert [e["event"] for e in events].count("rollback") == 1
    fb = next(e for e in events if e["event"] == "fallback")
    assert fb["changes"]["method"] == "lowrank" and fb["changes"]["ratio"] == 1.05
    # the tiny-budget L1 attempt measured a large degradation; the fallback stayed within 1.05
    from semantic_ci import certificate
    failed = certificate.read(repo, gates[0]["certificate"])["checks"][0]["figures"]["ratio"]
    passed = certificate.read(repo, gates[1]["certificate"])["checks"][0]["figures"]["ratio"]
    assert failed > 1.05 >= passed
    tree = repo.tree(summary["results"]["l1"], "core")
    assert tree["arch"] == "compressed"
    model = build_from_tree(tree, repo.load(summary["results"]["l1"], "core"))
    x = torch.randint(0, 256, (1, 16))
    assert model(x).shape == (1, 16, 256)
    m = repo.read_commit(summary["results"]["l1"])["metrics"]
    assert m["compression_dense_params"] > m["compression_params"] > 0


def _with(stage_edit=None, extra_stage=None):
    import copy
    doc = copy.deepcopy(DOC)
    if stage_edit:
        stage_edit(doc["stages"][1])
    if extra_stage:
        doc["stages"].append(extra_stage)
    return doc


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update(method="svd"), r"stage l1\.method: unknown method 'svd'"),
    (lambda s: s.pop("components"), r"stage l1\.components: a harmonic compression needs a budget"),
    (lambda s: s.update(layers=5), r"stage l1\.layers: must be a layer name or pattern"),
    (lambda s: s.update(layers=["out", "nope"]), r"stage l1\.layers: 'nope' names no linear layer"),
    (lambda s: s["fallback"]["set"].pop("ratio"), r"stage l1\.fallback\.set\.rank: a lowrank compression needs"),
    (lambda s: (s.update(method="meta"), s.pop("components")), r"stage l1\.components: a meta compression of "
                                                                r"stage:dense's dense core needs a budget"),
    (lambda s: s["fallback"]["set"].update(layers=["nope.*"]), r"stage l1\.fallback\.set\.layers: 'nope\.\*' names"),
])
def test_compress_settings_are_validated_before_any_stage_trains(tmp_path, edit, match):
    """These failed once the dense stage had trained (layers = 5: exit 4, a TypeError in fnmatch)."""
    (tmp_path / "data.txt").write_text(" ".join(WORDS * 50))
    with pytest.raises(ConfigError, match=match):
        validate_environment(parse(_with(edit), str(tmp_path / "p.toml")))


@pytest.mark.parametrize("arch, match", [("layercake", None), ("byte-transformer", r"k0\.source: .*no byte embedding")])
def test_a_k0_stage_on_a_core_without_a_byte_embedding_is_refused_before_training(tmp_path, arch, match):
    (tmp_path / "data.txt").write_text(" ".join(WORDS * 50))
    doc = _with(lambda s: s.pop("layers"),  # (every linear layer: whatever the arch names them)
                {"name": "k0", "kind": "k0", "source": "stage:l1", "stream": "text", "steps": 1, "blend": 0.3})
    doc["stages"][0]["arch"] = arch
    pipeline = parse(doc, str(tmp_path / "p.toml"))
    if match is None:
        validate_environment(pipeline)
    else:
        with pytest.raises(ConfigError, match=match):
            validate_environment(pipeline)
    doc["stages"][2]["blend"] = 2.0
    with pytest.raises(ConfigError, match=r"k0\.blend: must lie in \[0, 1\]"):
        parse(doc, str(tmp_path / "p.toml"))


def test_a_compress_retry_adds_its_extra_steps_to_the_recovery_steps_it_trains(tmp_path):
    """A fallback's extra_steps raised `steps`, which a compress stage with recovery_steps does not
    train: its retry ran the same single step again (h91)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "data.txt").write_text(" ".join(WORDS * 60))
    repo = mvc.Repo.init(root)

    def never_passes(s):  # (a gate no checkpoint passes: one retry, then the stage fails)
        s.update(gates=[{"metric": "heldout_bpb", "max": 0.0}], fallback={"retries": 1, "extra_steps": 2})
        s.pop("checks")
    events = []
    summary = run_pipeline(repo, parse(_with(never_passes), str(root / "p.toml")), emit=events.append)
    assert not summary["passed"]
    fb = next(e for e in events if e["event"] == "fallback")
    assert fb["changes"] == {"recovery_steps": 3}
    assert [e["step"] for e in events if e["event"] == "checkpoint" and e["stage"] == "l1"] == [1, 3]

    def set_and_extra(s):  # (h94: set's recovery_steps, then the extra steps: they were added to steps;
        never_passes(s)    # h96: each later retry trained what the first did)
        s["fallback"].update(set={"recovery_steps": 2}, retries=2)
    events = []
    run_pipeline(mvc.Repo.init(tmp_path / "again"), parse(_with(set_and_extra), str(root / "p.toml")),
                 emit=events.append)
    assert [e["changes"]["recovery_steps"] for e in events if e["event"] == "fallback"] == [4, 6]


@pytest.mark.parametrize("stage", [
    {"name": "timed", "kind": "train-core", "arch": "layercake", "stream": "text", "wall_seconds": 1.0},
    {"name": "timed", "kind": "k0", "source": "stage:dense", "stream": "text", "wall_seconds": 1.0},
])
def test_extra_steps_of_a_stage_budgeted_by_wall_seconds_alone_is_refused(tmp_path, stage):
    """Such a stage has no step count to add to: the retry ran as before, the extra steps ignored (h91)."""
    stage = dict(stage, gates=[{"metric": "heldout_bpb", "max": 9.0}], fallback={"retries": 1, "extra_steps": 4})
    with pytest.raises(ConfigError, match=r"stage timed\.fallback\.extra_steps: the stage is budgeted by "
                                          r"wall_seconds alone"):
        parse(_with(extra_stage=stage), str(tmp_path / "p.toml"))
    stage["steps"] = 3
    parse(_with(extra_stage=stage), str(tmp_path / "p.toml"))
    del stage["steps"]  # (steps the retry sets: extra_steps adds to those, h94)
    stage["fallback"] = dict(stage["fallback"], set={"steps": 3})
    parse(_with(extra_stage=stage), str(tmp_path / "p.toml"))

"""Issue 9 through the pipeline: a compression stage at a tiny budget fails its PPL-ratio gate,
rolls back and applies the fallback (here: the low-rank reference at a mild ratio), which passes;
the compressed core is committed with its arch so it can be rebuilt."""
import torch

import mvc
from semantic_ci.models import build_from_tree
from semantic_ci.pipeline import run_pipeline
from semantic_ci.pipeline_config import parse

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

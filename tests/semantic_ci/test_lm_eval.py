"""The lm-evaluation-harness adapter: byte scoring, rolling log-likelihood, and a local bits_per_byte task."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from semantic_ci import evaluate

lm_eval = pytest.importorskip("lm_eval")

from semantic_ci.lm_eval import LOG_UNIFORM, MvcLM  # noqa: E402

ADAPTER = "semantic_ci.adapters:bigram"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bundled_docs() -> list[str]:
    """A few documents of bundled text: pydoc's topic prose (ships with CPython), plus non-ASCII."""
    from pydoc_data.topics import topics
    keys = sorted(topics)[:3]
    docs = [topics[k].strip()[:1500] for k in keys]
    docs.append("Déjà vu: naïve café, Straße, Ελληνικά, 数据 — bytes, not characters.")
    return docs


def bigram_table(text: bytes) -> torch.Tensor:
    counts = torch.ones(256, 256, dtype=torch.float64)
    x = torch.tensor(list(text))
    counts.index_put_((x[:-1], x[1:]), torch.ones(len(x) - 1, dtype=torch.float64), accumulate=True)
    return torch.log(counts / counts.sum(1, keepdim=True)).to(torch.float32)


@pytest.fixture
def bigram_repo(tmp_path, monkeypatch):
    import mvc
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = mvc.Repo.init(tmp_path / "repo")
    table = bigram_table("\n".join(bundled_docs()).encode())
    repo.commit({"core": {"table": table}}, message="bigram")
    return repo, table


class Req:
    def __init__(self, *args):
        self.args = args


def manual_logprob(table: torch.Tensor, data: bytes, start: int) -> float:
    logp = torch.log_softmax(table.double(), dim=-1)
    total = LOG_UNIFORM if start == 0 else 0.0
    for t in range(max(start, 1), len(data)):
        total += float(logp[data[t - 1], data[t]])
    return total


def test_loglikelihood_and_generation_over_bytes(bigram_repo):
    repo, table = bigram_repo
    lm = MvcLM(repo=str(repo.root), rev="HEAD", component="core", adapter=ADAPTER, window=8)
    ctx, cont = "The café", " serves naïve coffee"
    (ll, greedy), (ll0, _) = lm.loglikelihood([Req(ctx, cont), Req("", cont)])
    full = (ctx + cont).encode()
    assert math.isclose(ll, manual_logprob(table, full, len(ctx.encode())), rel_tol=1e-12)
    assert math.isclose(ll0, manual_logprob(table, cont.encode(), 0), rel_tol=1e-12)
    assert greedy is False
    # a continuation that is the greedy chain is reported as greedy
    logp = torch.log_softmax(table.double(), dim=-1)
    chain, b = bytearray(), ord("e")
    for _ in range(5):
        b = int(logp[b].argmax())
        chain.append(b)
    assert lm.loglikelihood([Req("e", chain.decode("latin-1"))])[0][1] is (max(chain) < 128)
    gen = lm.generate_until([Req("e", {"until": [], "max_gen_toks": 5})])[0]
    assert gen.encode("utf-8", errors="replace")[:1] == bytes(chain[:1]) or max(chain) >= 128
    stop = bytes(chain[2:3]).decode("latin-1")
    cut = lm.generate_until([Req("e", {"until": [stop], "max_gen_toks": 5})])[0]
    assert len(cut.encode()) <= 2 and stop not in cut


def test_unknown_model_args_are_refused(bigram_repo):
    repo, _ = bigram_repo
    with pytest.raises(TypeError, match="revv"):
        MvcLM(repo=str(repo.root), revv="HEAD", adapter=ADAPTER)
    MvcLM(repo=str(repo.root), adapter=ADAPTER, batch_size=4, device="cpu")  # the harness's own keys pass


def test_rolling_loglikelihood_equals_the_models_summed_logprobs():
    import cores
    core = cores.build("layercake", config="tiny", seed=3).eval()
    text = bundled_docs()[0][:300].encode()
    lm = MvcLM(model=core, window=64)
    (rolling,) = lm.loglikelihood_rolling([Req(text.decode())])
    expect = 0.0
    with torch.no_grad():
        for start in range(0, len(text) - 1, 64):  # fixed windows: 64 inputs predict the next 64 bytes
            chunk = torch.tensor(list(text[start:start + 65]))
            logits = core(chunk[None, :-1])[0].double()
            expect += float(torch.log_softmax(logits, -1).gather(1, chunk[1:, None]).sum())
    assert math.isclose(rolling, expect, rel_tol=1e-12)
    nll, count = evaluate.model_nll(core, text, 64)
    assert int(count.sum()) == len(text) - 1 and math.isclose(-rolling, float(nll.sum()), rel_tol=1e-12)


def write_task(tmp_path, docs: list[str]) -> str:
    tdir = tmp_path / "tasks"
    tdir.mkdir()
    data = tdir / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    (tdir / "mvc_bytes.yaml").write_text(textwrap.dedent(f"""\
        task: mvc_bytes
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        output_type: loglikelihood_rolling
        test_split: test
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: bits_per_byte
            aggregation: bits_per_byte
            higher_is_better: false
        metadata:
          version: 1.0
        """))
    return str(tdir)


def our_bpb(model, docs: list[str], window: int) -> tuple[float, float]:
    """(mvc's BPB over the scored bytes, the same NLL over every byte as lm-eval counts them)."""
    nll, count, total_bytes = 0.0, 0, 0
    for d in docs:
        n, c = evaluate.model_nll(model, d.encode(), window)
        nll, count, total_bytes = nll + float(n.sum()), count + int(c.sum()), total_bytes + len(d.encode())
    return nll / count / math.log(2), nll / total_bytes / math.log(2)


@pytest.mark.slow
def test_lm_eval_bits_per_byte_matches_ours_on_a_local_task(bigram_repo, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    repo, table = bigram_repo
    docs = bundled_docs()
    tm = TaskManager(include_path=write_task(tmp_path, docs))
    res = simple_evaluate(model="mvc", model_args=f"repo={repo.root},rev=HEAD,component=core,adapter={ADAPTER}",
                          tasks=["mvc_bytes"], task_manager=tm)
    got = res["results"]["mvc_bytes"]["bits_per_byte,none"]
    from semantic_ci.adapters import bigram
    model = bigram({"table": table}, {})
    bpb_scored, bpb_all = our_bpb(model, docs, 256)
    assert abs(got - bpb_all) <= 1e-6 * bpb_all
    # the harness divides by every byte of a document; mvc's BPB by the bytes it predicts
    n_all = sum(len(d.encode()) for d in docs)
    assert math.isclose(bpb_all, bpb_scored * (n_all - len(docs)) / n_all, rel_tol=1e-12)


@pytest.mark.slow
def test_python_dash_m_runs_the_harness_with_the_model_registered(bigram_repo, tmp_path):
    repo, table = bigram_repo
    docs = bundled_docs()[:2]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "semantic_ci.lm_eval", "--model", "mvc", "--model_args",
                           f"repo={repo.root},rev=HEAD,component=core,adapter={ADAPTER},window=128",
                           "--tasks", "mvc_bytes", "--include_path", write_task(tmp_path, docs),
                           "--output_path", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out.rglob("results*.json")]
    assert results, proc.stdout[-2000:]
    got = results[0]["results"]["mvc_bytes"]["bits_per_byte,none"]
    from semantic_ci.adapters import bigram
    _, bpb_all = our_bpb(bigram({"table": table}, {}), docs, 128)
    assert abs(got - bpb_all) <= 1e-6 * bpb_all

"""Benchmark: LayerCake vs a byte transformer vs a BPE transformer at one parameter tier.

Same data (the general stream's training part), same step budget, batch and window in bytes for
every model; then, on the general stream's held-out tail: BPB; and on one CPU thread: batch-1
prefill latency on a 1 KB prompt and greedy generation throughput. Latency repeats are interleaved
across models so background load hits all of them alike. Prints a table and writes JSON.

    python benchmarks/bench_cores.py --tier small --steps 120 --out benchmarks/results/bench_cores.json
    # a variant of one model (the sweep in cores/layercake.py and cores/baselines.py was run so):
    python benchmarks/bench_cores.py --archs layercake,bpe-transformer --set layercake.n_layer=3 \
        --set layercake.d_local=128 --set layercake.n_local=1 --set layercake.ngram_buckets=2189 --out /tmp/x.json

Targets (seed note, ours to meet or report): LayerCake BPB <= 1.02x BPE, prefill >= 1.5x faster
and one-thread generation >= 2x faster than BPE. Generation is reported twice: measured bytes/s of
greedy output, and the "text rate" (decoding steps/s x bytes per step on held-out text), because a
briefly trained BPE model greedily emits mostly one-byte tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import cores  # noqa: E402
from cores.base import bytes_to_tensor  # noqa: E402
from examples.data import general_stream, split_holdout  # noqa: E402
from results_io import write_report  # noqa: E402  (benchmarks/ is sys.path[0] when run)

ARCHS = ["layercake", "byte-transformer", "bpe-transformer"]
LABELS = {"layercake": "LayerCake", "byte-transformer": "byte transformer", "bpe-transformer": "BPE transformer"}


def prefill_fn(core, prompt: bytes):
    """A zero-argument callable doing one batch-1 forward over the prompt (BPE: tokenisation included)."""
    if core.mvc_arch == "bpe-transformer":
        return lambda: core(torch.tensor([core.codec.encode(prompt)]))
    x = bytes_to_tensor(prompt)[None]
    return lambda: core(x)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """["layercake.n_layer=3", "bpe-transformer.lr=0.004"] -> {arch: {field: value}} (numbers parsed)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        arch, dot, field = key.partition(".")
        if not (sep and dot and field):
            raise SystemExit(f"--set {item!r}: expected ARCH.FIELD=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a plain string, e.g. local_act=tanh
        out.setdefault(arch, {})[field] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="small")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=None, help="window in bytes (default: the tier's block_bytes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--general-size", type=int, default=8_000_000)
    ap.add_argument("--eval-bytes", type=int, default=100_000, help="held-out bytes evaluated (0: all)")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="intra-op threads for training (1 is robust on a shared CPU)")
    ap.add_argument("--latency-threads", type=int, default=1)
    ap.add_argument("--prompt-bytes", type=int, default=1024)
    ap.add_argument("--gen-bytes", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--wall-seconds", type=float, default=None, help="per-model training cap (benchmarks only)")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--set", action="append", default=[], metavar="ARCH.FIELD=VALUE",
                    help="override one config field of one model (repeatable), e.g. bpe-transformer.lr=0.004")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_cores.json"))
    args = ap.parse_args(argv)
    archs = args.archs.split(",")
    overrides = parse_overrides(args.set)

    data = general_stream(size=args.general_size)
    train_bytes, heldout = split_holdout(data, 0.05)
    results: dict[str, dict] = {}
    models = {}
    for arch in archs:
        torch.set_num_threads(args.train_threads)
        core = cores.build(arch, args.tier, seed=args.seed, **overrides.get(arch, {}))
        seq_len = args.seq_len or core.block_bytes
        print(f"training {arch} ({core.num_params():,} params, {args.steps} steps x {args.batch_size} x {seq_len} B)",
              file=sys.stderr)
        trainer = cores.Trainer(core, train_bytes, eval_data=heldout, steps=args.steps, seed=args.seed,
                                batch_size=args.batch_size, seq_len=seq_len, eval_bytes=args.eval_bytes or None,
                                wall_seconds=args.wall_seconds, progress=True)
        trainer.run()
        m = trainer.metrics()
        results[arch] = {"params": m["params"], "heldout_bpb": m["heldout_bpb"], "train_wall_s": m["wall_seconds"],
                         "steps": m["steps"], "bytes_seen": m["bytes_seen"], "final_loss": m["loss_last10"],
                         "config": core.mvc_config}
        models[arch] = core.eval()
        print(f"  bpb {m['heldout_bpb']:.4f}  wall {m['wall_seconds']:.1f}s", file=sys.stderr)

    # latency, one thread, repeats interleaved across models
    torch.set_num_threads(args.latency_threads)
    prompt = heldout[: args.prompt_bytes]
    gen_prompt = heldout[args.prompt_bytes: args.prompt_bytes + 64]
    pre = {a: [] for a in archs}
    gen = {a: [] for a in archs}
    gen_steps = {a: [] for a in archs}
    with torch.inference_mode():
        fns = {a: prefill_fn(models[a], prompt) for a in archs}
        for a in archs:  # warm-up
            fns[a]()
            models[a].generate(gen_prompt, 16)
        for _ in range(args.repeats):
            for a in archs:
                t = time.perf_counter()
                fns[a]()
                pre[a].append(time.perf_counter() - t)
            for a in archs:
                stats: dict = {}
                t = time.perf_counter()
                out = models[a].generate(gen_prompt, args.gen_bytes, stats=stats)
                dt = time.perf_counter() - t
                gen[a].append(len(out) / dt)
                gen_steps[a].append(stats["steps"] / dt)
    for a in archs:
        # bytes per decoding step on real text: 1 for byte models, held-out bytes/token for BPE. A
        # briefly trained BPE model's greedy output is mostly 1-byte tokens, so its measured bytes/s
        # understates what it does on text; "text rate" = steps/s x this figure is the fairer speed.
        bpt = 1.0
        if a == "bpe-transformer":
            sample = heldout[: args.eval_bytes or len(heldout)]
            bpt = len(sample) / len(models[a].codec.encode(sample))
        results[a]["bytes_per_step_on_text"] = bpt
        results[a]["generate_text_rate_bytes_per_s"] = statistics.median(gen_steps[a]) * bpt
        results[a]["prefill_ms"] = 1000 * statistics.median(pre[a])
        results[a]["generate_bytes_per_s"] = statistics.median(gen[a])
        results[a]["generate_steps_per_s"] = statistics.median(gen_steps[a])  # bytes or BPE tokens

    ref = results.get("bpe-transformer")
    lc = results.get("layercake")
    targets = {}
    if ref and lc:
        targets = {
            "bpb_ratio_vs_bpe": lc["heldout_bpb"] / ref["heldout_bpb"],
            "prefill_speedup_vs_bpe": ref["prefill_ms"] / lc["prefill_ms"],
            "generation_speedup_vs_bpe": lc["generate_bytes_per_s"] / ref["generate_bytes_per_s"],
            "generation_text_rate_speedup_vs_bpe": lc["generate_text_rate_bytes_per_s"]
            / ref["generate_text_rate_bytes_per_s"],
        }
        targets["met"] = {"bpb<=1.02x": targets["bpb_ratio_vs_bpe"] <= 1.02,
                          "prefill>=1.5x": targets["prefill_speedup_vs_bpe"] >= 1.5,
                          "generation>=2x": targets["generation_speedup_vs_bpe"] >= 2.0,
                          "generation(text rate)>=2x": targets["generation_text_rate_speedup_vs_bpe"] >= 2.0}
    report = {
        "command": "python benchmarks/bench_cores.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tier": args.tier, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "data": {"general_bytes": len(data), "train_bytes": len(train_bytes), "heldout_bytes": len(heldout),
                 "eval_bytes": min(len(heldout), args.eval_bytes or len(heldout))},
        "latency": {"threads": args.latency_threads, "prompt_bytes": len(prompt), "gen_bytes": args.gen_bytes,
                    "repeats": args.repeats, "statistic": "median"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "train_threads": args.train_threads},
        "results": results, "targets": targets,
    }
    out = write_report(report, args.out, sort_keys=True)
    print_table(report)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    res, ref = report["results"], report["results"].get("bpe-transformer")
    t = Table(title=f"cores at tier {report['tier']}: {report['steps']} steps x {report['batch_size']} windows "
                    f"(prefill/generation: {report['latency']['threads']} thread)")
    for col in ("model", "params", "held-out BPB", "BPB / BPE", "train s", "prefill 1KB ms", "prefill x BPE",
                "gen B/s", "gen x BPE", "gen steps/s", "text-rate B/s", "text-rate x BPE"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for arch, r in res.items():
        t.add_row(LABELS.get(arch, arch), f"{r['params']:,}", f"{r['heldout_bpb']:.4f}",
                  f"{r['heldout_bpb'] / ref['heldout_bpb']:.3f}" if ref else "-", f"{r['train_wall_s']:.0f}",
                  f"{r['prefill_ms']:.2f}", f"{ref['prefill_ms'] / r['prefill_ms']:.2f}x" if ref else "-",
                  f"{r['generate_bytes_per_s']:,.0f}",
                  f"{r['generate_bytes_per_s'] / ref['generate_bytes_per_s']:.2f}x" if ref else "-",
                  f"{r['generate_steps_per_s']:,.0f}", f"{r['generate_text_rate_bytes_per_s']:,.0f}",
                  f"{r['generate_text_rate_bytes_per_s'] / ref['generate_text_rate_bytes_per_s']:.2f}x" if ref else "-")
    console = Console() if sys.stdout.isatty() else Console(width=180)
    console.print(t)
    if report["targets"]:
        met = report["targets"]["met"]
        console.print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))


if __name__ == "__main__":
    sys.exit(main())

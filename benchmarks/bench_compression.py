"""Benchmark: harmonic compression (L1, L2) against truncated SVD at equal parameter counts.

A small LayerCake core is trained briefly on the general stream (pydoc prose by default); the chosen
linear layers (default: the patch model's MLPs) are then converted, with no recovery fine-tune, to
- L1 (``HarmonicLinear``) at several compression ratios of those layers' weights,
- low-rank (truncated SVD) with, per layer, the rank whose parameter count is closest to each L1's,
- L2 (``MetaHarmonicLinear``, N = 8, 16, 32) fitted to the largest-K L1, next to rank-1 SVD (the
  smallest low-rank layer, which still holds more parameters than the L2 layers),
- and a low-rank sweep at a few low ratios, to find where SVD meets the gate.
For each: the compression ratio of the converted layers, the relative squared weight error against
the dense layers, held-out PPL ratio against the dense core (gate: <= 1.05; a row with the layers
zeroed shows how much they matter at all), and forward latency of one converted layer (default ``blocks.0.mlp.fc``) against the
dense nn.Linear at 1 and 64 input rows (one thread, median of ``--repeats``). PPL is evaluated through the materialised weights
(``cores.convert.materialise``: the same function) because the structured forward of a large-K L1
layer is slower than the dense one; the latency columns time the structured forward itself.

    python benchmarks/bench_compression.py --steps 150 --out benchmarks/results/bench_compression.json
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import cores  # noqa: E402
from cores import convert as cv  # noqa: E402
from examples.data import general_stream, split_holdout  # noqa: E402
from kernels import batch_invariant as bi  # noqa: E402
from results_io import write_report  # noqa: E402  (benchmarks/ is sys.path[0] when run)

GATE = 1.05


def parse_floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


LATENCY_THREADS = 1


@torch.inference_mode()
def latency(layer: nn.Module, in_features: int, repeats: int) -> dict:
    """Median forward time (us) of ``layer`` on 1 and on 64 input rows, on ``LATENCY_THREADS`` threads."""
    res, old = {}, torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        for rows in (1, 64):
            x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))
            res[f"b{rows}_us"] = timed(lambda: layer(x), repeats) * 1e6
    finally:
        torch.set_num_threads(old)
    return res


def held_out_bpb(model: nn.Module, data: bytes, window: int) -> float:
    with bi.enabled(False):  # batched evaluation: throughput only (exactness is not at stake here)
        return float(model.bpb(data, window_bytes=window, batch_size=8))


def weight_error(dense: nn.Module, model: nn.Module, names: list[str]) -> float:
    """Relative squared error ||W - W_hat||^2 / ||W||^2 over all converted layers together."""
    num = den = 0.0
    with torch.no_grad():
        for n in names:
            W = dense.get_submodule(n).weight.double()
            num += float(((W - model.get_submodule(n).weight.double()) ** 2).sum())
            den += float((W ** 2).sum())
    return num / den


def evaluate_variant(label: str, family: str, model: nn.Module, core: nn.Module, names: list[str], dense_bpb: float,
                     held: bytes, window: int, probe: str, dense_lat: dict, repeats: int, fit_s: float) -> dict:
    tot = cv.report_totals(model)
    rows = cv.compression_report(model)
    t0 = time.perf_counter()
    bpb = held_out_bpb(cv.materialise(model), held, window)
    eval_s = time.perf_counter() - t0
    layer = model.get_submodule(probe)
    lat = latency(layer, layer.in_features, repeats)
    ppl_ratio = 2.0 ** (bpb - dense_bpb)
    return {"variant": label, "family": family, "size": rows[0]["size"] if rows else "",
            "params": tot["params"], "dense_params": tot["dense_params"], "ratio": tot["ratio"],
            "model_params": tot["model_params"], "model_ratio": tot["model_ratio"],
            "bpb": bpb, "ppl_ratio": ppl_ratio, "gate": ppl_ratio <= GATE,
            "weight_error": weight_error(core, model, names),
            "lat_b1_us": lat["b1_us"], "lat_b64_us": lat["b64_us"],
            "lat_b1_vs_dense": lat["b1_us"] / dense_lat["b1_us"], "lat_b64_vs_dense": lat["b64_us"] / dense_lat["b64_us"],
            "fit_seconds": fit_s, "eval_seconds": eval_s, "layers": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="small", help="LayerCake preset")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="pydoc", help="general stream source (pydoc, auto, python-doc, man)")
    ap.add_argument("--data-bytes", type=int, default=600_000)
    ap.add_argument("--eval-bytes", type=int, default=16_384)
    ap.add_argument("--layers", default="blocks.*.mlp.*", help="glob(s) of the layers to convert, comma-separated")
    ap.add_argument("--l1-ratios", default="16,64,256", help="compression ratios for L1 (K per layer)")
    ap.add_argument("--l2-meta", default="8,16,32")
    ap.add_argument("--svd-ratios", default="1.5,2,4", help="extra low-rank ratios (gate sweep)")
    ap.add_argument("--fit-steps", type=int, default=10, help="Adam steps refining each L1 fit")
    ap.add_argument("--probe", default="blocks.0.mlp.fc", help="layer timed for latency")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="threads for training, fitting and evaluation")
    ap.add_argument("--latency-threads", type=int, default=1)
    ap.add_argument("--core-cache", default=None, help="load the trained core from / save it to this file")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_compression.json"))
    args = ap.parse_args(argv)
    global LATENCY_THREADS
    LATENCY_THREADS = args.latency_threads
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    data = general_stream(size=args.data_bytes, source=args.source, allow_short=True)[: args.data_bytes]
    train, held = split_holdout(data)
    held = held[: args.eval_bytes] if args.eval_bytes else held
    core = cores.build("layercake", config=args.config, seed=args.seed)
    cache = Path(args.core_cache) if args.core_cache else None
    t0 = time.perf_counter()
    if cache and cache.exists():
        core.load_state_dict(torch.load(cache))
        train_metrics = {"loaded": str(cache)}
    else:
        train_metrics = cores.train(core, train, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                                    seq_len=args.seq_len, evaluate=False, progress=False)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(core.state_dict(), cache)
    train_s = time.perf_counter() - t0
    core.eval()
    window = args.seq_len
    dense_bpb = held_out_bpb(core, held, window)
    patterns = [p for p in args.layers.split(",") if p]
    names = cv.linear_names(core, include=patterns, structured=False)
    probe = core.get_submodule(args.probe)
    dense_lat = latency(probe, probe.in_features, args.repeats)
    shapes = {n: tuple(core.get_submodule(n).weight.shape) for n in names}  # (out, in)
    dense_params = sum(o * i for o, i in shapes.values())
    print(f"trained {args.config} core ({core.num_params():,} params) in {train_s:.0f}s; dense held-out BPB "
          f"{dense_bpb:.4f}; converting {len(names)} layers ({dense_params:,} weights)", file=sys.stderr)

    rows = [{"variant": "dense", "family": "dense", "size": "", "params": dense_params, "dense_params": dense_params,
             "ratio": 1.0, "model_params": core.num_params(), "model_ratio": 1.0, "bpb": dense_bpb, "ppl_ratio": 1.0,
             "gate": True, "weight_error": 0.0, "lat_b1_us": dense_lat["b1_us"], "lat_b64_us": dense_lat["b64_us"],
             "lat_b1_vs_dense": 1.0, "lat_b64_vs_dense": 1.0, "fit_seconds": 0.0, "eval_seconds": 0.0, "layers": []}]

    def run(label, family, build):
        t0 = time.perf_counter()
        model = build()
        fit_s = time.perf_counter() - t0
        row = evaluate_variant(label, family, model, core, names, dense_bpb, held, window, args.probe, dense_lat,
                               args.repeats, fit_s)
        rows.append(row)
        print(f"  {label:<22} ratio {row['ratio']:8.1f}  PPL ratio {row['ppl_ratio']:8.3f}  "
              f"fit {fit_s:5.0f}s  eval {row['eval_seconds']:4.0f}s", file=sys.stderr)
        return model

    zeroed = copy.deepcopy(core)  # reference: how much the converted layers matter at all
    with torch.no_grad():
        for n in names:
            zeroed.get_submodule(n).weight.zero_()
    zero_bpb = held_out_bpb(zeroed, held, window)
    rows.append({**rows[0], "variant": "layers zeroed", "family": "reference", "params": 0, "ratio": None,
                 "bpb": zero_bpb, "ppl_ratio": 2.0 ** (zero_bpb - dense_bpb), "gate": 2.0 ** (zero_bpb - dense_bpb) <= GATE,
                 "weight_error": 1.0, "lat_b1_us": None, "lat_b64_us": None,
                 "lat_b1_vs_dense": None, "lat_b64_vs_dense": None})
    print(f"  layers zeroed: PPL ratio {rows[-1]['ppl_ratio']:.3f}", file=sys.stderr)

    l1_models = {}
    for r in sorted(parse_floats(args.l1_ratios)):
        K = {n: cv.components_for_ratio(i, o, r) for n, (o, i) in shapes.items()}
        l1_models[r] = run(f"L1 x{r:g}", "L1", lambda K=K: cv.convert(core, "harmonic", names, n_components=K,
                                                                       steps=args.fit_steps, seed=args.seed))
        rank = {n: cv.rank_matching(i, o, 5 * K[n]) for n, (o, i) in shapes.items()}
        run(f"SVD = L1 x{r:g}", "lowrank", lambda rank=rank: cv.convert(core, "lowrank", names, rank=rank))
    if l1_models:
        src_ratio = min(l1_models)
        for N in [int(x) for x in parse_floats(args.l2_meta)]:
            run(f"L2 N={N} (L1 x{src_ratio:g})", "L2",
                lambda N=N: cv.convert(l1_models[src_ratio], "meta", names, n_meta=N))
        if not any(r["family"] == "lowrank" and r["size"] == "r=1" for r in rows):
            run("SVD rank 1", "lowrank", lambda: cv.convert(core, "lowrank", names, rank=1))
    for r in sorted(parse_floats(args.svd_ratios)):
        run(f"SVD x{r:g}", "lowrank", lambda r=r: cv.convert(core, "lowrank", names, ratio=r))

    passing = [r for r in rows if r["family"] in ("L1", "L2", "lowrank") and r["gate"]]
    verdict = {fam: max((r["ratio"] for r in passing if r["family"] == fam), default=None)
               for fam in ("L1", "L2", "lowrank")}
    report = {"benchmark": "bench_compression", "config": args.config, "steps": args.steps,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed, "source": args.source,
              "train_bytes": len(train), "eval_bytes": len(held), "layers": names, "probe": args.probe,
              "fit_steps": args.fit_steps, "gate": GATE, "dense_bpb": dense_bpb, "train_seconds": train_s,
              "train_metrics": train_metrics, "best_passing_ratio": verdict, "rows": rows,
              "total_seconds": time.perf_counter() - t_start,
              "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "latency_threads": args.latency_threads,
                              "machine": platform.machine(), "python": platform.python_version()},
              "command": "python benchmarks/bench_compression.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_report(report, args.out, allow_nan=False)
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"compression of {len(report['layers'])} layers of a {report['config']} LayerCake core "
                    f"({report['steps']} steps; dense BPB {report['dense_bpb']:.4f}; gate PPL ratio <= {report['gate']})")
    for col in ("variant", "size", "params", "dense-equiv", "ratio", "W rel err", "PPL ratio", "gate",
                "b1 us (x dense)", "b64 us (x dense)"):
        t.add_column(col, justify="left" if col in ("variant", "size") else "right")

    def lat(us, x):
        return "" if us is None else f"{us:.0f} ({x:.1f})"

    for r in report["rows"]:
        t.add_row(r["variant"], r["size"], f"{r['params']:,}", f"{r['dense_params']:,}",
                  "-" if r["ratio"] is None else f"{r['ratio']:.1f}",
                  f"{r['weight_error']:.3f}", f"{r['ppl_ratio']:.3f}", "pass" if r["gate"] else "FAIL",
                  lat(r["lat_b1_us"], r["lat_b1_vs_dense"]), lat(r["lat_b64_us"], r["lat_b64_vs_dense"]))
    console = Console(width=170)
    console.print(t)
    v = report["best_passing_ratio"]
    lines = [f"{fam}: " + (f"meets the gate up to ratio {x:.2f}" if x else "never meets the gate here")
             for fam, x in v.items()]
    console.print("; ".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())

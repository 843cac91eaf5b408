"""Benchmark of semantic CI (issue 5): wall time of each check kind on the small and 15m LayerCake
cores with a 64 KB probe, and of a full default CI run (exact + ppl + one migration) on the small
tier. Models are freshly initialised (timing does not depend on training). The reference, timed
in the same run on the same probe and windows, is one plain forward pass of the core (torch, no mvc):
each check's time is also given as a number of such passes (a check comparing two models needs at
least 2). The first check of the process also pays torch's one-time lazy imports (about 1 s here),
as `mvc ci` does. Prints a table and writes JSON.

    python benchmarks/bench_ci.py                 # small and 15m
    python benchmarks/bench_ci.py --tiers small --probe-bytes 16384
Targets: exact-logits on a 15m core over 64 KB <= 10 s; the full default run on small <= 60 s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench_args import positive_int  # (benchmarks/ is sys.path[0] when a script runs)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bricks  # noqa: E402
import cores  # noqa: E402
import mvc  # noqa: E402
from semantic_ci import config as cfgmod  # noqa: E402
from semantic_ci.evaluate import window_logits, windows  # noqa: E402
from semantic_ci.probe import builtin_probe  # noqa: E402
from semantic_ci.runner import run_ci  # noqa: E402
from results_io import write_report  # noqa: E402  (benchmarks/ is sys.path[0] when run)


def timed_check(repo, commit, check: dict, window: int) -> tuple[float, dict]:
    cfg = cfgmod.parse({"ci": {"window": window, "checks": [check]}}, "bench")
    t = time.perf_counter()
    summary = run_ci(repo, commit, config=cfg)
    return time.perf_counter() - t, summary["checks"][0]


def forward_seconds(model, data: bytes, window: int, rounds: int = 3) -> float:
    """Best of `rounds` plain forward passes of `model` over `data` in CI's windows (the reference)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _off, chunk in windows(data, window):
            window_logits(model, chunk)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="small,15m")
    ap.add_argument("--probe-bytes", type=positive_int, default=65536)
    ap.add_argument("--window", type=positive_int, default=1024)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_ci.json"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench_ci_")
    repo = mvc.Repo.init(root)
    probe = builtin_probe(args.probe_bytes)
    with open(os.path.join(root, "probe.bin"), "wb") as f:
        f.write(probe)
    results = {"probe_bytes": args.probe_bytes, "window": args.window, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "rows": []}
    for tier in args.tiers.split(","):
        a = cores.build("layercake", config=tier, seed=0).eval()
        b = cores.build("layercake", config=tier, seed=1).eval()
        brick = bricks.build("sparse", host=a, seed=0).eval()
        repo.commit({"core": a}, message=f"{tier} a", branch=f"{tier}-a")
        repo.commit({"core": a, "brick/python": brick}, message=f"{tier} a + brick", branch=f"{tier}-a")
        repo.commit({"core": b}, message=f"{tier} b", branch=f"{tier}-b")
        head = repo.resolve(f"{tier}-a")
        checks = {
            "exact-logits": {"name": "exact", "kind": "exact-logits", "component": "core", "baseline": "HEAD~1",
                             "probe": "probe.bin", "probe_bytes": args.probe_bytes},
            "ppl-ratio": {"name": "ppl", "kind": "ppl-ratio", "component": "core", "baseline": "HEAD~1",
                          "data": "probe.bin"},
            "migration": {"name": "migration", "kind": "migration", "brick": "python", "source": "HEAD",
                          "hosts": [f"{tier}-b"], "domain_data": "probe.bin", "general_data": "probe.bin",
                          "max_domain_ratio": 100.0},
        }
        forward = forward_seconds(a, probe, args.window)
        results["rows"].append({"tier": tier, "check": "reference: one plain forward pass", "seconds": forward,
                                "forwards": 1.0, "status": "-"})
        total = 0.0
        for kind, check in checks.items():
            seconds, res = timed_check(repo, head, check, args.window)
            total += seconds
            results["rows"].append({"tier": tier, "check": kind, "seconds": seconds,
                                    "forwards": seconds / forward, "status": res["status"]})
        results["rows"].append({"tier": tier, "check": "full default run (exact + ppl + migration)",
                                "seconds": total, "forwards": total / forward, "status": "-"})
    print_table(results)
    print(f"wrote {write_report(results, args.out)}")


def print_table(results):
    from rich.console import Console
    from rich.table import Table
    targets = {("15m", "exact-logits"): 10.0, ("small", "full default run (exact + ppl + migration)"): 60.0}
    t = Table(title=f"semantic CI wall time, {results['probe_bytes'] // 1024} KB probe, "
                    f"{results['threads']} threads")
    for col in ("tier", "check", "seconds", "x one forward pass", "status", "target", "met"):
        t.add_column(col)
    for r in results["rows"]:
        target = targets.get((r["tier"], r["check"]))
        t.add_row(r["tier"], r["check"], f"{r['seconds']:.2f}", f"{r['forwards']:.2f}", r["status"],
                  f"<= {target:.0f} s" if target else "",
                  ("yes" if r["seconds"] <= target else "NO") if target else "")
    Console().print(t)


if __name__ == "__main__":
    main()

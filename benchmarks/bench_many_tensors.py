"""Benchmark of committing a component of many small tensors (e.g. a mixture-of-experts model with
one tensor per expert, or optimizer state): per-object costs, not bandwidth, set the time.

Compares, on the same state dicts in the same run, `repo.commit` (durable, the default; and with
`core.fsync false`) against `safetensors.torch.save_file` of one file + fsync (the reference: one
file, one fsync; mvc writes one content-addressed blob per tensor, which is what dedups them).
Each case runs `--rounds` times, interleaved; the table gives medians. Prints a table, writes JSON.

    python benchmarks/bench_many_tensors.py                  # 20,000 x 16 B and 2,000 x 64 KiB
    python benchmarks/bench_many_tensors.py --rounds 3 --cases 20000x4
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
from results_io import write_report  # benchmarks/ is sys.path[0] when a script runs

import mvc

HERE = os.path.dirname(os.path.abspath(__file__))


def state(n: int, numel: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i // 64}.experts.{i % 64}.w": torch.randn(numel, generator=g) for i in range(n)}


def run_save_file(work: str, sd: dict) -> float:
    from safetensors.torch import save_file
    path = os.path.join(work, "model.safetensors")
    t = time.perf_counter()
    save_file(sd, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


def run_mvc(work: str, sd: dict, fsync: bool) -> float:
    repo = mvc.Repo.init(os.path.join(work, "repo"))
    if not fsync:
        repo.set_config("core.fsync", "false")
        repo = mvc.Repo(repo.root)
    t = time.perf_counter()
    repo.commit({"model": sd}, message="many tensors")
    return time.perf_counter() - t


TOOLS = {"safetensors save_file + fsync (one file)": lambda w, sd: run_save_file(w, sd),
         "mvc repo.commit (durable)": lambda w, sd: run_mvc(w, sd, True),
         "mvc repo.commit, core.fsync false": lambda w, sd: run_mvc(w, sd, False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="20000x4,2000x16384", help="comma-separated COUNTxNUMEL (float32)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_many_tensors.json"))
    args = ap.parse_args()
    results = []
    for case in args.cases.split(","):
        n, numel = (int(x) for x in case.split("x"))
        sd = state(n, numel, seed=0)
        times = {tool: [] for tool in TOOLS}
        for _ in range(args.rounds):
            for tool, fn in TOOLS.items():
                work = tempfile.mkdtemp(prefix="mvc-bench-many-")
                try:
                    times[tool].append(fn(work, sd))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        ref = statistics.median(times[next(iter(TOOLS))])
        for tool, ts in times.items():
            med = statistics.median(ts)
            results.append({"tensors": n, "bytes_each": numel * 4, "tool": tool, "median_s": med,
                            "runs_s": ts, "vs_reference": med / ref, "per_tensor_us": med / n * 1e6})
    print("| tensors x bytes | tool | median | per tensor | vs one-file save_file |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['tensors']} x {r['bytes_each']} B | {r['tool']} | {r['median_s']:.2f} s | "
              f"{r['per_tensor_us']:.0f} us | {r['vs_reference']:.1f}x |")
    print("wrote", write_report({"results": results, "rounds": args.rounds}, args.out))


if __name__ == "__main__":
    main()

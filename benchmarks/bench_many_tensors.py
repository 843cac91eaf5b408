"""Benchmark of committing a component of many small tensors (e.g. a mixture-of-experts model with
one tensor per expert, or optimizer state): per-object costs, not bandwidth, set the time.

Compares, on the same state dicts in the same run, `repo.commit` (durable, the default; and with
`core.fsync false`) against `safetensors.torch.save_file` of one file + fsync (the reference: one
file, one fsync; mvc writes one content-addressed blob per tensor, which is what dedups them).
Each case runs `--rounds` times, interleaved; the table gives medians. Prints a table, writes JSON.

A second table loads each case back: `repo.load` (one mapped or read blob per tensor) against
`safetensors.torch.load_file` of one file holding the same tensors, touching one element of each
tensor; "same Repo" reuses a Repo that loaded it before (its tree decoded, its blobs' verified
stamps known), "new Repo" opens the repository again (decodes the tree, re-hashes blobs under 1 MiB),
"first" is a new Repo with no verified stamps yet, as the first load after a commit (re-hashes
every blob and writes the stamps of blobs of 1 MiB or more).

    python benchmarks/bench_many_tensors.py                  # 20,000 x 16 B and 2,000 x 64 KiB
    python benchmarks/bench_many_tensors.py --rounds 3 --cases 20000x4
    python benchmarks/bench_many_tensors.py --cases 100x500000     # 100 x 2 MB: loads at bandwidth
    python benchmarks/bench_many_tensors.py --loads-only --cases 20000x4,2000x16384,100x500000
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
from bench_args import cases, positive_int  # benchmarks/ is sys.path[0] when a script runs
from results_io import write_report

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


def touch(tensors: dict) -> float:
    return sum(float(t.view(-1)[0]) for t in tensors.values() if t.numel())


def load_times(work: str, sd: dict, rounds: int) -> dict:
    """Median seconds of each way of loading `sd` back, interleaved, after one untimed warm-up."""
    from safetensors.torch import load_file, save_file
    path = os.path.join(work, "model.safetensors")
    save_file(sd, path)
    repo = mvc.Repo.init(os.path.join(work, "repo"))
    repo.commit({"model": sd}, message="many tensors")
    time.sleep(2.5)  # files changed less than 2 s before they are hashed get no verified stamp
    new_repo = lambda: touch(mvc.Repo(repo.root).load("HEAD", "model"))  # noqa: E731
    ways = {"load_file (one file)": lambda: touch(load_file(path)),
            "repo.load, same Repo": lambda: touch(repo.load("HEAD", "model")),
            "repo.load, new Repo": new_repo,
            "repo.load, first (no stamps yet)": new_repo}
    stamps = os.path.join(repo.dir, "verified")
    untimed = {"repo.load, first (no stamps yet)": lambda: shutil.rmtree(stamps, ignore_errors=True)}
    times = {way: [] for way in ways}
    for fn in ways.values():
        fn()
    got = repo.load("HEAD", "model")  # (untimed) what is timed must be what was stored
    if set(got) != set(sd) or not all(torch.equal(got[k], sd[k]) for k in sd):
        raise SystemExit("repo.load did not give back the tensors committed: the timings would mean nothing")
    for _ in range(rounds):
        for way, fn in ways.items():
            untimed.get(way, lambda: None)()  # (the first load after a commit re-hashes and stamps)
            t = time.perf_counter()
            fn()
            times[way].append(time.perf_counter() - t)
    return {way: statistics.median(ts) for way, ts in times.items()}


TOOLS = {"safetensors save_file + fsync (one file)": lambda w, sd: run_save_file(w, sd),
         "mvc repo.commit (durable)": lambda w, sd: run_mvc(w, sd, True),
         "mvc repo.commit, core.fsync false": lambda w, sd: run_mvc(w, sd, False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=cases, default="20000x4,2000x16384", help="comma-separated COUNTxNUMEL (float32)")
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_many_tensors.json"))
    ap.add_argument("--loads-only", action="store_true", help="skip the commit table")
    args = ap.parse_args()
    results = []
    for n, numel in ([] if args.loads_only else args.cases):
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
    if results:
        print("| tensors x bytes | tool | median | per tensor | vs one-file save_file |")
        print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['tensors']} x {r['bytes_each']} B | {r['tool']} | {r['median_s']:.2f} s | "
              f"{r['per_tensor_us']:.0f} us | {r['vs_reference']:.1f}x |")
    loads = []
    for n, numel in args.cases:
        work = tempfile.mkdtemp(prefix="mvc-bench-many-")
        try:
            got = load_times(work, state(n, numel, seed=0), args.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ref = got["load_file (one file)"]
        loads += [{"tensors": n, "bytes_each": numel * 4, "way": way, "median_s": t, "vs_load_file": t / ref}
                  for way, t in got.items()]
    print("\n| tensors x bytes | load | median | vs load_file |")
    print("|---|---|---|---|")
    for r in loads:
        print(f"| {r['tensors']} x {r['bytes_each']} B | {r['way']} | {r['median_s'] * 1e3:.1f} ms | "
              f"{r['vs_load_file']:.2f}x |")
    print("wrote", write_report({"results": results, "loads": loads, "rounds": args.rounds}, args.out))


if __name__ == "__main__":
    main()

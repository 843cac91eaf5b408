"""Cost of automatic packing (`pack.autoEvery 1`) as the history grows: the median time of a commit
that packs itself beside a plain commit (`pack.autoEvery 0`, the reference) on the same repository,
and the merge past `pack.autoPackLimit` (`Packer(merge_only="young")`, which reads no history) beside
the same merge done as a geometric gc repack that walks the history to find what is reachable
(what automatic packing ran before). Each history: N commits of 8 float32 64x64 tensors, one
drifting per commit, packed, then --commits timed commits of each kind (Python API, one process).

    python benchmarks/bench_autopack.py                     # 1,000 and 3,000 commits of history
    python benchmarks/bench_autopack.py --history 500 --commits 10
"""
import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench_args import positive_int  # (benchmarks/ is sys.path[0] when a script runs)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from results_io import write_report  # noqa: E402


def drift(repo, state: dict, n: int, tag: str) -> list[float]:
    """n commits, each changing one tensor; the seconds each took."""
    times = []
    for k in range(n):
        name = f"w{k % len(state)}"
        state[name] = state[name] + 0.01
        t = time.perf_counter()
        repo.commit({"model": dict(state)}, message=f"{tag} {k}")
        times.append(time.perf_counter() - t)
    return times


def small_packs(repo, state: dict, count: int) -> None:
    """`count` more packs of one commit each (what automatic packing leaves between merges)."""
    from mvc.pack_write import pack
    for k in range(count):
        drift(repo, state, 1, f"pack {k}")
        pack(repo)


def one_history(path: str, n: int, commits: int) -> dict:
    import torch

    import mvc
    from mvc.pack_write import pack
    repo = mvc.Repo.init(path)
    g = torch.Generator().manual_seed(0)
    state = {f"w{i}": torch.randn(64, 64, generator=g) for i in range(8)}
    drift(repo, state, n, "history")
    pack(repo)
    repo.set_config("pack.autoEvery", "0")
    plain = drift(mvc.Repo(path), state, commits, "plain")
    pack(repo)
    repo.set_config("pack.autoEvery", "1")
    repo.set_config("pack.autoPackLimit", "0")  # (the merges are timed apart, below)
    auto = drift(mvc.Repo(path), state, commits, "auto")
    merges = {}
    for how in ("merge_only", "walking"):
        small_packs(repo, state, 10)
        t = time.perf_counter()
        if how == "merge_only":
            pack(mvc.Repo(path), merge_only="young")
        else:
            pack(mvc.Repo(path), full=True, geometric=True, grace_s=math.inf, protect=set())
        merges[how] = time.perf_counter() - t
    assert mvc.Repo(path).fsck()["ok"]
    return {"history": n, "plain_commit_s": statistics.median(plain), "auto_commit_s": statistics.median(auto),
            "merge_s": merges["merge_only"], "walking_merge_s": merges["walking"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=positive_int, nargs="+", default=[1000, 3000])
    ap.add_argument("--commits", type=positive_int, default=20, help="timed commits of each kind")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_autopack.json"))
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench_autopack_")
    rows = []
    try:
        for n in args.history:
            rows.append(one_history(os.path.join(base, str(n)), n, args.commits))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'history':>8} {'plain commit':>13} {'autopacked':>11} {'ratio':>6}   "
          f"{'merge (no walk)':>15} {'merge (walk)':>13} {'ratio':>6}")
    for r in rows:
        print(f"{r['history']:>8} {r['plain_commit_s'] * 1e3:>10.1f} ms {r['auto_commit_s'] * 1e3:>8.1f} ms "
              f"{r['auto_commit_s'] / r['plain_commit_s']:>5.2f}x   {r['merge_s'] * 1e3:>12.1f} ms "
              f"{r['walking_merge_s'] * 1e3:>10.1f} ms {r['walking_merge_s'] / r['merge_s']:>5.1f}x")
    print("ratios: autopacked / plain commit (lower is better); walking merge / merge without walk")
    print("wrote", write_report({"rows": rows, "commits": args.commits, "load_average_start": os.getloadavg()[0]},
                                args.out))


if __name__ == "__main__":
    main()

"""Startup cost of a packed repository: `mvc.Repo()` + `log(n=1)` (reads one commit) and
`mvc.Repo()` + `resolve(short id)`, each in a fresh process, on one commit of N tiny tensors, packed
(`mvc gc`) beside the same repository loose (the reference). Medians of --runs processes, time
from the first mvc call (interpreter and import excluded) and peak RSS (VmHWM: it includes the
mapped index pages the process touched).

    python benchmarks/bench_pack_index.py                       # 10k and 100k objects
    python benchmarks/bench_pack_index.py --objects 10000 --runs 5
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench_args import positive_int  # (benchmarks/ is sys.path[0] when a script runs)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
from results_io import write_report  # noqa: E402

PROBE = ("import sys,time; sys.path.insert(0, {root!r}); import mvc; s=time.perf_counter(); r=mvc.Repo(sys.argv[1]); "
         "x = r.log(n=1) if sys.argv[2] == 'log' else r.resolve(sys.argv[2]); t=time.perf_counter()-s; "
         "print(t, int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)")


def build(path: str, n: int, packed: bool) -> str:
    import mvc
    import torch
    r = mvc.Repo.init(path)
    cid = r.commit({"m": {f"t{i}": torch.full((2,), float(i)) for i in range(n)}}, message="x")
    if packed:
        subprocess.run([sys.executable, "-m", "mvc", "gc", "--grace", "0"], cwd=path, check=True,
                       capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
    return cid


def measure(path: str, what: str, runs: int) -> tuple[float, float]:
    out = [subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT), path, what], check=True,
                          capture_output=True, text=True).stdout.split() for _ in range(runs)]
    return statistics.median(float(o[0]) for o in out) * 1e3, statistics.median(float(o[1]) for o in out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=positive_int, nargs="+", default=[10000, 100000])
    ap.add_argument("--runs", type=positive_int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_pack_index.json"))
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench_pack_index_")
    results = {"runs": args.runs, "rows": [], "load_average_start": os.getloadavg()[0]}
    try:
        for n in args.objects:
            for packed in (False, True):
                path = os.path.join(base, f"{n}-{'packed' if packed else 'loose'}")
                cid = build(path, n, packed)
                for what, arg in (("log -n 1", "log"), ("resolve short id", cid[:12])):
                    ms, mb = measure(path, arg, args.runs)
                    row = {"objects": n, "storage": "packed" if packed else "loose (reference)",
                           "command": what, "ms": round(ms, 1), "peak_rss_mb": round(mb, 1)}
                    results["rows"].append(row)
                    print(f"{n:8d} objects {row['storage']:18s} {what:17s} {ms:7.1f} ms {mb:6.1f} MB")
                shutil.rmtree(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    print(f"  1-minute load average {results['load_average_start']:.1f} at start, "
          f"{results['load_average_end']:.1f} at end (other work shares these cores)")
    print(f"wrote {write_report(results, args.out)}")


if __name__ == "__main__":
    main()

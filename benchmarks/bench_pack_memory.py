"""Peak private memory of packing, fsck, export, push and diff with one large tensor, next to what
reading the same file into memory holds (the reference: one copy).

Each command runs as its own `python -m mvc` process; its resident anonymous memory (RssAnon,
children included) is sampled every 20 ms, so mapped file pages, which the kernel can drop, do not
count. The tensor is pseudo-random BF16 (nearly incompressible); each command runs after its first
commit, then again after a second commit in which it drifts (stored as an XOR delta: reading it
decodes its base too).

    python benchmarks/bench_pack_memory.py              # a 400 MB tensor
    python benchmarks/bench_pack_memory.py --mb 2000
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_args import positive_int  # benchmarks/ is sys.path[0] when a script runs
from results_io import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _pids(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [q for c in f.read().split() for q in _pids(int(c))]
    except OSError:
        pass
    return out


def peak_anon_mb(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(seconds, peak RssAnon MB) of a command and its children."""
    t0, peak = time.perf_counter(), 0
    p = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while p.poll() is None:
        kb = 0
        for pid in _pids(p.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    kb += sum(int(line.split()[1]) for line in f if line.startswith("RssAnon"))
            except OSError:
                pass
        peak = max(peak, kb)
        time.sleep(0.02)
    out = p.stdout.read().decode()
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{out}")
    return time.perf_counter() - t0, peak / 1024


def write_tensor(path: str, mb: int, drift: int) -> int:
    """A [rows, 4096] BF16 tensor of pseudo-random bits as a .safetensors file (written in blocks,
    without torch); `drift` flips a few low bits per block (the next checkpoint)."""
    import json
    import struct
    rows = mb * 1_000_000 // (2 * 4096)
    nbytes = rows * 4096 * 2
    hdr = json.dumps({"w": {"dtype": "BF16", "shape": [rows, 4096], "data_offsets": [0, nbytes]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    rng = np.random.default_rng(0)
    block = rng.integers(0, 2**16, size=(16 << 20) // 2, dtype=np.uint16)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr)
        left, i = nbytes, 0
        while left:
            b = block ^ np.uint16((i * 40503) % 65536)
            if drift:
                b = b ^ (rng.integers(0, 2, size=b.size, dtype=np.uint16) * drift)
            data = b.tobytes()[:left]
            f.write(data)
            left -= len(data)
            i += 1
    return nbytes


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=positive_int, default=400)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pack_memory.json"))
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="mvc-packmem-")
    try:
        repo, src = os.path.join(work, "repo"), os.path.join(work, "t.safetensors")
        mvc = [sys.executable, "-m", "mvc"]
        subprocess.run(mvc + ["init", repo], env=ENV, check=True, capture_output=True)
        size_mb = write_tensor(src, args.mb, 0) / 1e6
        ref_s, ref_mb = peak_anon_mb([sys.executable, "-c", "import sys, time; data = open(sys.argv[1], 'rb').read(); "
                                      "time.sleep(0.2)", src], work)  # (held a moment: sampled every 20 ms)
        rows = [("reference: read the file (one copy)", ref_s, ref_mb)]
        for step in (0, 1):
            write_tensor(src, args.mb, step)
            subprocess.run(mvc + ["commit", src, "-m", f"step {step}"], cwd=repo, env=ENV, check=True,
                           capture_output=True)
            what = "" if step == 0 else ", 2nd commit (XOR delta)"
            commands = [("mvc pack", ["pack"]), ("mvc fsck (packed)", ["fsck"]),
                        ("mvc export (packed)", ["export", "HEAD", "model", "-o", os.path.join(work, f"e{step}.st")]),
                        ("mvc push (packed, dir remote)", ["push", os.path.join(work, "remote"), "main"])]
            if step:
                commands.append(("mvc diff HEAD~1 HEAD (both packed)", ["diff", "HEAD~1", "HEAD"]))
            for label, cmd in commands:
                seconds, mb = peak_anon_mb(mvc + cmd, repo)
                rows.append((label + what, seconds, mb))
        os.remove(src)
        print(f"one BF16 tensor of {size_mb:.0f} MB; then a second commit in which it drifts")
        print(f"{'command':48s} {'seconds':>8s} {'peak anon MB':>13s} {'x reference':>12s}")
        for label, seconds, mb in rows:
            print(f"{label:48s} {seconds:8.2f} {mb:13.0f} {mb / ref_mb:12.2f}")
        report = {"tensor_mb": size_mb, "rows": [{"command": lbl, "seconds": s, "peak_anon_mb": mb}
                                                 for lbl, s, mb in rows]}
        print("wrote", write_report(report, args.out))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

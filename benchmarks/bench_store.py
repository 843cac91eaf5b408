"""Benchmark of the store (issue 2): 10 checkpoints of a ~22M-parameter float32 model committed with
mvc, copied with cp, and stored with git-lfs and dvc, on the same files in the same run.

Scenarios (DESIGN.md section 10): "full" (weights of scale 0.02, every tensor gets N(0, 2e-4) added
per checkpoint) and "frozen" (only small adapter tensors change). Prints a table and writes JSON.

    python benchmarks/bench_store.py                       # full size
    python benchmarks/bench_store.py --params 2e6 --checkpoints 3   # quick
git-lfs comes from Debian (`apt-get install git-lfs`); dvc from PyPI in its own venv
(`python3 -m venv /tmp/dvcenv && /tmp/dvcenv/bin/pip install dvc`, then pass --dvc /tmp/dvcenv/bin/dvc).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from results_io import write_report  # benchmarks/ is sys.path[0] when a script runs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MVC = [sys.executable, "-m", "mvc"]


def model_shapes(params: float) -> dict[str, tuple[int, ...]]:
    """A transformer-like set of shapes with about `params` parameters (d=768, 3 layers at 22M)."""
    d = 768
    per_layer = d * (3 * d) + d * d + d * 4 * d + 4 * d * d + 4 * d
    layers = max(1, int(round((params - 1000 * d) / per_layer)))
    shapes = {"embed.weight": (1000, d)}
    for i in range(layers):
        shapes |= {f"layers.{i}.qkv.weight": (3 * d, d), f"layers.{i}.proj.weight": (d, d),
                   f"layers.{i}.fc1.weight": (4 * d, d), f"layers.{i}.fc2.weight": (d, 4 * d),
                   f"layers.{i}.norm1.weight": (d,), f"layers.{i}.norm2.weight": (d,),
                   f"layers.{i}.norm1.bias": (d,), f"layers.{i}.norm2.bias": (d,)}
    if params < per_layer:  # quick runs: scale the width instead
        scale = params / (sum(int(np.prod(s)) for s in shapes.values()))
        shapes = {k: tuple(max(1, int(x * scale ** 0.5)) for x in v) for k, v in shapes.items()}
    return shapes


def make_checkpoints(out: str, scenario: str, params: float, n: int, dtype=np.float32) -> list[str]:
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    shapes = model_shapes(params)
    state = {k: (rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()}
    d = shapes["embed.weight"][1]
    adapters = [k for k in shapes if k.endswith("qkv.weight")]
    paths = []
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        if i:
            if scenario == "full":
                for k in state:
                    state[k] = state[k] + rng.standard_normal(state[k].shape, dtype=np.float32) * 2e-4
            else:
                for k in adapters:
                    state[k.replace("qkv.weight", "adapter.a")] = rng.standard_normal((8, d), dtype=np.float32) * 0.02
                    state[k.replace("qkv.weight", "adapter.b")] = rng.standard_normal((d, 8), dtype=np.float32) * 0.02
        elif scenario == "frozen":
            for k in adapters:
                state[k.replace("qkv.weight", "adapter.a")] = np.zeros((8, d), np.float32)
                state[k.replace("qkv.weight", "adapter.b")] = np.zeros((d, 8), np.float32)
        p = os.path.join(out, f"ckpt_{i:02d}.safetensors")
        save_file({k: v.astype(dtype) for k, v in state.items()}, p)
        paths.append(p)
    return paths


def du(path: str) -> int:
    total = 0
    for dirpath, _d, files in os.walk(path):
        for f in files:
            fp = os.path.join(dirpath, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def sh(cmd, cwd=None, env=None):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{cmd} failed: {r.stderr[-2000:]}")
    return r.stdout


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_cp(work, ckpts, sync):
    store = os.path.join(work, "store")
    os.makedirs(store)
    def go():
        for p in ckpts:
            sh(["cp", p, store])
            if sync:
                sh(["sync", "-f", store])
    t = timed(go)
    restore = timed(lambda: sh(["cp", os.path.join(store, os.path.basename(ckpts[0])), os.path.join(work, "r")]))
    return {"commit_s": t, "stored_bytes": du(store), "restore_s": restore}


def git_env():
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    return env


def run_git_lfs(work, ckpts):
    env = git_env()
    sh(["git", "init", "-q", work], env=env)
    sh(["git", "lfs", "install", "--local"], cwd=work, env=env)
    sh(["git", "lfs", "track", "*.safetensors"], cwd=work, env=env)
    sh(["git", "add", ".gitattributes"], cwd=work, env=env)
    sh(["git", "commit", "-qm", "init"], cwd=work, env=env)
    target = os.path.join(work, "model.safetensors")
    total = 0.0
    for i, p in enumerate(ckpts):
        shutil.copyfile(p, target)  # the training run writes its checkpoint into the work tree
        total += timed(lambda: (sh(["git", "add", "model.safetensors"], cwd=work, env=env),
                                sh(["git", "commit", "-qm", f"ckpt {i}"], cwd=work, env=env)))
    first = sh(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=work).split()[0]
    first_ckpt = sh(["git", "rev-list", "--reverse", "HEAD"], cwd=work).split()[1]
    os.unlink(target)
    restore = timed(lambda: sh(["git", "checkout", first_ckpt, "--", "model.safetensors"], cwd=work, env=env))
    return {"commit_s": total, "stored_bytes": du(os.path.join(work, ".git", "lfs", "objects")),
            "restore_s": restore, "_first": first}


def run_dvc(work, ckpts, dvc):
    env = git_env()
    sh(["git", "init", "-q", work], env=env)
    sh([dvc, "init", "-q"], cwd=work, env=env)
    sh([dvc, "config", "core.analytics", "false"], cwd=work, env=env)
    sh(["git", "add", "-A"], cwd=work, env=env)
    sh(["git", "commit", "-qm", "init"], cwd=work, env=env)
    target = os.path.join(work, "model.safetensors")
    total = 0.0
    for i, p in enumerate(ckpts):
        shutil.copyfile(p, target)
        total += timed(lambda: (sh([dvc, "add", "-q", "model.safetensors"], cwd=work, env=env),
                                sh(["git", "add", "model.safetensors.dvc", ".gitignore"], cwd=work, env=env),
                                sh(["git", "commit", "-qm", f"ckpt {i}"], cwd=work, env=env)))
    first_ckpt = sh(["git", "rev-list", "--reverse", "HEAD"], cwd=work).split()[1]
    def restore():
        sh(["git", "checkout", first_ckpt, "--", "model.safetensors.dvc"], cwd=work, env=env)
        sh([dvc, "checkout", "-q", "model.safetensors"], cwd=work, env=env)
    return {"commit_s": total, "stored_bytes": du(os.path.join(work, ".dvc", "cache")), "restore_s": timed(restore)}


def run_mvc(work, ckpts, fsync=True):
    env = dict(os.environ, MVC_AUTHOR="bench")
    sh(MVC + ["init", work], env=env)
    if not fsync:  # like cp, git-lfs and dvc, which leave flushing to the kernel
        sh(MVC + ["config", "core.fsync", "false"], cwd=work, env=env)
    total = 0.0
    for i, p in enumerate(ckpts):
        total += timed(lambda: sh(MVC + ["commit", p, "-m", f"ckpt {i}"], cwd=work, env=env))
    out = os.path.join(work, "restored")
    restore = timed(lambda: sh(MVC + ["checkout", f"HEAD~{len(ckpts) - 1}", "-o", out], cwd=work, env=env))
    got = os.path.join(out, "model", os.path.basename(ckpts[0]))
    assert open(got, "rb").read() == open(ckpts[0], "rb").read(), "mvc restore is not byte-identical"
    return {"commit_s": total, "stored_bytes": du(os.path.join(work, ".mvc", "objects")), "restore_s": restore}


def run_mvc_api(work, ckpts):
    """The same commits through the Python API in one process, as a training loop or `mvc run`
    makes them (no interpreter start-up per commit)."""
    sys.path.insert(0, ROOT)
    import mvc
    repo = mvc.Repo.init(work)
    total = sum(timed(lambda: repo.commit({"model": p}, message=f"ckpt {i}", author="bench"))
                for i, p in enumerate(ckpts))
    return {"commit_s": total, "stored_bytes": du(os.path.join(work, ".mvc", "objects")),
            "restore_s": timed(lambda: repo.checkout(f"HEAD~{len(ckpts) - 1}", os.path.join(work, "restored")))}


def hashing_rate(nbytes: int) -> dict:
    import blake3
    import hashlib
    buf = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8).tobytes()
    def rate(fn):
        best = min(timed(fn) for _ in range(3))
        return nbytes / best / 1e9
    return {"blake3_mt_GBps": rate(lambda: blake3.blake3(buf, max_threads=blake3.blake3.AUTO).digest()),
            "blake3_1t_GBps": rate(lambda: blake3.blake3(buf).digest()),
            "sha256_GBps": rate(lambda: hashlib.sha256(buf).digest())}


def load_rate(work, ckpt) -> dict:
    """repo.load of a component vs safetensors.torch.load_file of the same file (best of 5)."""
    sys.path.insert(0, ROOT)
    import torch  # noqa: F401
    from safetensors.torch import load_file
    import mvc
    repo = mvc.Repo(work)
    rev = f"HEAD~{len(repo.log()) - 1}"
    def touch_all(d):
        return sum(float(t.sum()) for t in d.values())  # reads every byte
    t_mvc = min(timed(lambda: touch_all(repo.load(rev, "model"))) for _ in range(5))
    t_fast = min(timed(lambda: touch_all(repo.load(rev, "model", verify=False))) for _ in range(5))
    t_st = min(timed(lambda: touch_all(load_file(ckpt))) for _ in range(5))
    return {"mvc_load_s": t_mvc, "mvc_load_unverified_s": t_fast, "safetensors_load_file_s": t_st}


def log_speed(work, n=1000) -> dict:
    """`mvc log` on an n-commit repository vs `git log` on an n-commit git repository."""
    sys.path.insert(0, ROOT)
    import torch
    import mvc
    repo = mvc.Repo.init(os.path.join(work, "logrepo"))
    repo.config.set("core", "fsync", "false")
    repo.loose.fsync = repo.refs.fsync = False
    for i in range(n):
        repo.commit({"core": {"w": torch.full((4,), float(i))}}, message=f"c{i}", metrics={"i": i})
    env = git_env()
    g = os.path.join(work, "gitlog")
    sh(["git", "init", "-q", g], env=env)
    sh(["git", "commit", "-q", "--allow-empty", "-m", "c"], cwd=g, env=env)
    sh(["bash", "-c", f"for i in $(seq {n - 1}); do git commit -q --allow-empty -m c$i; done"], cwd=g, env=env)
    t_mvc = statistics.median(timed(lambda: sh(MVC + ["log"], cwd=repo.root)) for _ in range(3))
    t_git = statistics.median(timed(lambda: sh(["git", "--no-pager", "log"], cwd=g)) for _ in range(3))
    return {"commits": n, "mvc_log_s": t_mvc, "git_log_s": t_git}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=22e6)
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--tools", default="cp,cp+sync,git-lfs,dvc,mvc,mvc (no fsync),mvc (python api)")
    ap.add_argument("--dvc", default=shutil.which("dvc") or "/tmp/dvcenv/bin/dvc")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_store.json"))
    args = ap.parse_args()
    tools = args.tools.split(",")
    base = args.workdir or tempfile.mkdtemp(prefix="bench_store_")
    results = {"params": args.params, "checkpoints": args.checkpoints, "scenarios": {}}
    for scenario in ("full", "frozen"):
        ckpts = make_checkpoints(os.path.join(base, scenario, "ckpts"), scenario, args.params, args.checkpoints)
        one = os.path.getsize(ckpts[0])
        rows = {}
        for tool in tools:
            work = os.path.join(base, scenario, tool)
            os.sync()  # untimed: no tool pays for the write-back of the files an earlier tool left dirty
            try:
                if tool == "cp":
                    rows[tool] = run_cp(work, ckpts, sync=False)
                elif tool == "cp+sync":
                    rows[tool] = run_cp(work, ckpts, sync=True)
                elif tool == "git-lfs":
                    if not shutil.which("git-lfs"):
                        raise RuntimeError("git-lfs not installed (apt-get install git-lfs)")
                    rows[tool] = run_git_lfs(work, ckpts)
                elif tool == "dvc":
                    if not os.path.exists(args.dvc) and not shutil.which(args.dvc):
                        raise RuntimeError(f"dvc not found at {args.dvc}")
                    rows[tool] = run_dvc(work, ckpts, args.dvc)
                elif tool == "mvc":
                    rows[tool] = run_mvc(work, ckpts)
                    rows[tool].update(load_rate(work, ckpts[0]))
                elif tool == "mvc (no fsync)":
                    rows[tool] = run_mvc(work, ckpts, fsync=False)
                elif tool == "mvc (python api)":
                    rows[tool] = run_mvc_api(work, ckpts)
            except Exception as e:  # a missing reference tool is reported, not fatal
                rows[tool] = {"error": str(e)[:300]}
            rows[tool].pop("_first", None)
            if "stored_bytes" in rows[tool]:
                rows[tool]["stored_vs_one_ckpt"] = rows[tool]["stored_bytes"] / one
            # every tool starts from the same state: only the checkpoints on disk. (Left in place, the
            # gigabytes of earlier tools' stores made later tools up to 3x slower on this VM.)
            shutil.rmtree(work, ignore_errors=True)
        results["scenarios"][scenario] = {"one_checkpoint_bytes": one, "rows": rows}
    results["hashing"] = hashing_rate(int(min(88e6, args.params * 4)))
    results["log"] = log_speed(base)
    print_table(results)
    print(f"wrote {write_report(results, args.out)}")
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


def print_table(results):
    from rich.console import Console
    from rich.table import Table
    con = Console()
    for scenario, data in results["scenarios"].items():
        rows = data["rows"]
        cp = rows.get("cp", {}).get("commit_s")
        lfs = rows.get("git-lfs", {}).get("commit_s")
        t = Table(title=f"{scenario}: {results['checkpoints']} checkpoints of "
                        f"{data['one_checkpoint_bytes'] / 1e6:.1f} MB")
        for col in ("tool", "commit time (all)", "vs cp", "vs git-lfs", "stored MB", "stored / 1 ckpt",
                    "restore first (s)"):
            t.add_column(col)
        for tool, r in rows.items():
            if "error" in r:
                t.add_row(tool, "error: " + r["error"][:60], "", "", "", "", "")
                continue
            t.add_row(tool, f"{r['commit_s']:.2f} s", f"{r['commit_s'] / cp:.2f}x" if cp else "-",
                      f"{lfs / r['commit_s']:.2f}x faster" if lfs else "-", f"{r['stored_bytes'] / 1e6:.1f}",
                      f"{r['stored_vs_one_ckpt']:.2f}", f"{r['restore_s']:.3f}")
        con.print(t)
        m = rows.get("mvc", {})
        if "mvc_load_s" in m:
            st = m['safetensors_load_file_s']
            con.print(f"  repo.load {m['mvc_load_s']:.3f} s (verified) / {m['mvc_load_unverified_s']:.3f} s "
                      f"(verify=False) vs safetensors load_file {st:.3f} s "
                      f"(ratios {m['mvc_load_s'] / st:.2f} / {m['mvc_load_unverified_s'] / st:.2f})")
    h = results["hashing"]
    con.print(f"hashing in memory: BLAKE3 all cores {h['blake3_mt_GBps']:.2f} GB/s, one core "
              f"{h['blake3_1t_GBps']:.2f} GB/s, sha256 {h['sha256_GBps']:.2f} GB/s")
    lg = results["log"]
    con.print(f"log of {lg['commits']} commits: mvc {lg['mvc_log_s']:.3f} s, git {lg['git_log_s']:.3f} s")


if __name__ == "__main__":
    main()

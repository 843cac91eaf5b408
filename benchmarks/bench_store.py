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
from bench_args import positive_int  # benchmarks/ is sys.path[0] when a script runs
from results_io import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the `mvc` command a user types (the console script installed beside this Python), else `python -m mvc`
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "mvc")
MVC = [_SCRIPT] if os.access(_SCRIPT, os.X_OK) else [sys.executable, "-m", "mvc"]


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


def warm(paths) -> None:
    """Read files into the page cache (this VM's proactive reclaim evicts idle pages within
    seconds, which made `cp` of the same 880 MB take 0.25-2.3 s depending on what it found cached)."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 24):
                pass


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
    if not shutil.which("git-lfs"):
        raise RuntimeError("git-lfs not installed (apt-get install git-lfs)")
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
    first_ckpt = sh(["git", "rev-list", "--reverse", "HEAD"], cwd=work).split()[1]
    os.unlink(target)
    restore = timed(lambda: sh(["git", "checkout", first_ckpt, "--", "model.safetensors"], cwd=work, env=env))
    return {"commit_s": total, "stored_bytes": du(os.path.join(work, ".git", "lfs", "objects")),
            "restore_s": restore}


def run_dvc(work, ckpts, dvc):
    if not os.path.exists(dvc) and not shutil.which(dvc):
        raise RuntimeError(f"dvc not found at {dvc}")
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
    env = dict(os.environ, MVC_AUTHOR="bench", PYTHONPATH=ROOT)  # (this checkout's mvc, as the API rows use)
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


def run_mvc_api(work, ckpts, fsync=True, in_memory=False):
    """The same commits through the Python API in one process, as a training loop or `mvc run`
    makes them (no interpreter start-up per commit): of the checkpoint files, or, `in_memory`, of
    their state dicts, read untimed before each commit (a training loop's `model.state_dict()`)."""
    sys.path.insert(0, ROOT)
    import mvc
    repo = mvc.Repo.init(work)
    if not fsync:
        repo.set_config("core.fsync", "false")
        repo = mvc.Repo(work)
        assert not repo.loose.fsync
    if in_memory:
        from safetensors.torch import load_file
    total = 0.0
    for i, p in enumerate(ckpts):
        value = {k: v.clone() for k, v in load_file(p).items()} if in_memory else p  # (not mapped: in memory)
        total += timed(lambda: repo.commit({"model": value}, message=f"ckpt {i}", author="bench"))
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


def drop_cached(paths) -> None:
    """Evict files from the page cache (clean pages only), so the next read comes from disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load_rate(work, ckpt, rounds=7) -> dict:
    """repo.load of a component vs safetensors.torch.load_file of the same file, each followed by a
    sum over every tensor (the time to tensors a program has used, not just mapped), with the
    page faults the process took for it.

    The first verified load re-hashes every blob and records its verified stamp; later loads check
    the stamps (see mvc/store.py). "warm": files in the page cache, as the writer or the last reader
    left them; "cold": evicted first (posix_fadvise DONTNEED on the blobs and on the checkpoint).
    Medians of `rounds` interleaved runs."""
    import resource
    sys.path.insert(0, ROOT)
    import torch
    from safetensors.torch import load_file
    import mvc
    from mvc import store
    repo = mvc.Repo(work)
    rev = f"HEAD~{len(repo.log()) - 1}"
    blobs = [repo.loose.path(t["id"]) for t in repo.tree(rev, "model")["tensors"].values()]

    def touch_all(d):
        return sum(float(t.sum()) for t in d.values())  # reads every byte

    def run(load) -> tuple[float, int]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = timed(lambda: touch_all(load()))
        return t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    time.sleep(store.STAMP_SETTLE_NS / 1e9)  # files written moments ago are not stamped
    if repo.loose.stamps:  # (the restore before may have stamped them)
        shutil.rmtree(repo.loose.stamps, ignore_errors=True)
    out = {"mvc_load_first_s": run(lambda: repo.load(rev, "model"))[0]}
    got, want = repo.load(rev, "model"), load_file(ckpt)  # (untimed) both ways give the same tensors
    if set(got) != set(want) or not all(torch.equal(got[k], want[k]) for k in want):
        raise SystemExit("repo.load and load_file disagree: the timings would mean nothing")
    del got, want  # (their mapped pages would stay in memory: the "cold" rounds would read no disk)
    ways = {"mvc_load_s": lambda: repo.load(rev, "model"),
            "mvc_load_rehash_s": lambda: repo.load(rev, "model", rehash=True),
            "mvc_load_unverified_s": lambda: repo.load(rev, "model", verify=False),
            "safetensors_load_file_s": lambda: load_file(ckpt)}
    cold = {"mvc_load_cold_s": ways["mvc_load_s"], "safetensors_load_file_cold_s": ways["safetensors_load_file_s"]}
    runs = {k: [] for k in [*ways, *cold]}
    for _ in range(rounds):  # interleaved, so that a slow moment of the machine hits every way alike
        for k, load in ways.items():
            runs[k].append(run(load))
    for _ in range(rounds):  # after the warm rounds: reading files back with read() (warm()) left
        for k, load in cold.items():  # them in other page-cache folios than either reader makes
            drop_cached(blobs + [ckpt])
            runs[k].append(run(load))
    for k, v in runs.items():
        out[k] = statistics.median(t for t, _ in v)
        out[k.replace("_s", "_faults")] = statistics.median(f for _, f in v)
        out[k.replace("_s", "_runs")] = [t for t, _ in v]
    return out


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


SLOW_TOOLS = {"git-lfs", "dvc"}
RUNNERS = {  # tool -> runner(work, ckpts, args); durable mvc rows fsync, as DESIGN.md asks
    "cp": lambda w, c, a: run_cp(w, c, sync=False),
    "cp+sync": lambda w, c, a: run_cp(w, c, sync=True),
    "git-lfs": lambda w, c, a: run_git_lfs(w, c),
    "dvc": lambda w, c, a: run_dvc(w, c, a.dvc),
    "mvc": lambda w, c, a: run_mvc(w, c),
    "mvc (no fsync)": lambda w, c, a: run_mvc(w, c, fsync=False),
    "mvc (python api)": lambda w, c, a: run_mvc_api(w, c),
    "mvc (python api) no fsync": lambda w, c, a: run_mvc_api(w, c, fsync=False),
    "mvc (python api) state dict": lambda w, c, a: run_mvc_api(w, c, in_memory=True),
    "mvc (python api) state dict no fsync": lambda w, c, a: run_mvc_api(w, c, fsync=False, in_memory=True),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=22e6)
    ap.add_argument("--checkpoints", type=positive_int, default=10)
    ap.add_argument("--tools", default=",".join(RUNNERS))
    ap.add_argument("--rounds", type=positive_int, default=5, help="runs of each quick tool (median reported)")
    ap.add_argument("--dvc", default=shutil.which("dvc") or "/tmp/dvcenv/bin/dvc")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_store.json"))
    args = ap.parse_args()
    tools = args.tools.split(",")
    unknown = set(tools) - set(RUNNERS)
    if unknown:
        ap.error(f"unknown tools {sorted(unknown)}; known: {', '.join(RUNNERS)}")
    base = args.workdir or tempfile.mkdtemp(prefix="bench_store_")
    results = {"params": args.params, "checkpoints": args.checkpoints, "rounds": args.rounds, "scenarios": {}}
    for scenario in ("full", "frozen"):
        ckpts = make_checkpoints(os.path.join(base, scenario, "ckpts"), scenario, args.params, args.checkpoints)
        one = os.path.getsize(ckpts[0])
        runs: dict[str, list[dict]] = {tool: [] for tool in tools}
        # The quick tools run `rounds` times, interleaved, and report their median: single runs of
        # `cp` here varied several-fold for the same 880 MB. git-lfs and dvc run once.
        for rnd in range(args.rounds):
            for tool in tools:
                if rnd and tool in SLOW_TOOLS:
                    continue
                work = os.path.join(base, scenario, f"{tool}-{rnd}")
                os.sync()  # untimed: no tool pays for the write-back of the files an earlier tool left dirty
                warm(ckpts)  # ... and every tool reads the checkpoints from memory, as just written
                try:
                    r = RUNNERS[tool](work, ckpts, args)
                    if tool == "mvc" and rnd == 0:
                        r.update(load_rate(work, ckpts[0]))
                except Exception as e:  # a missing reference tool is reported, not fatal
                    r = {"error": str(e)[:300]}
                runs[tool].append(r)
                # every tool starts from the same state: only the checkpoints on disk. (Left in place, the
                # gigabytes of earlier tools' stores made later tools up to 3x slower on this VM.)
                shutil.rmtree(work, ignore_errors=True)
        rows = {}
        for tool, rs in runs.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                rows[tool] = rs[0]
                continue
            row = dict(ok[0])
            row["commit_s_runs"] = [r["commit_s"] for r in ok]
            row["commit_s"] = statistics.median(row["commit_s_runs"])
            row["restore_s"] = statistics.median(r["restore_s"] for r in ok)
            row["stored_vs_one_ckpt"] = row["stored_bytes"] / one
            rows[tool] = row
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
    con = Console(width=max(Console().width, 150))  # the tables are wide: do not fold them
    for scenario, data in results["scenarios"].items():
        rows = data["rows"]
        cp = rows.get("cp", {}).get("commit_s")
        cp_best = min(rows.get("cp", {}).get("commit_s_runs") or [0]) or None
        cps = rows.get("cp+sync", {}).get("commit_s")
        lfs = rows.get("git-lfs", {}).get("commit_s")
        t = Table(title=f"{scenario}: {results['checkpoints']} checkpoints of "
                        f"{data['one_checkpoint_bytes'] / 1e6:.1f} MB (median of {results['rounds']} "
                        f"runs; git-lfs, dvc: one)")
        for col in ("tool", "commit time (all)", "runs", "vs cp", "vs fastest cp", "vs cp+sync", "vs git-lfs",
                    "stored MB", "stored / 1 ckpt", "restore first (s)"):
            t.add_column(col)
        for tool, r in rows.items():
            if "error" in r:
                t.add_row(tool, "error: " + r["error"][:60], *[""] * 8)
                continue
            t.add_row(tool, f"{r['commit_s']:.2f} s", " ".join(f"{x:.2f}" for x in r["commit_s_runs"]),
                      f"{r['commit_s'] / cp:.2f}x" if cp else "-",
                      f"{r['commit_s'] / cp_best:.2f}x" if cp_best else "-",
                      f"{r['commit_s'] / cps:.2f}x" if cps else "-",
                      f"{lfs / r['commit_s']:.2f}x faster" if lfs else "-", f"{r['stored_bytes'] / 1e6:.1f}",
                      f"{r['stored_vs_one_ckpt']:.2f}", f"{r['restore_s']:.3f}")
        con.print(t)
        m = rows.get("mvc", {})
        if "mvc_load_s" in m:
            st, cold = m["safetensors_load_file_s"], m["safetensors_load_file_cold_s"]
            con.print(f"  load + sum of every tensor (medians): safetensors load_file {st * 1e3:.1f} ms "
                      f"({m['safetensors_load_file_faults']:.0f} page faults); repo.load "
                      + ", ".join(f"{label} {m[k] * 1e3:.1f} ms ({m[k] / st:.2f}x)" for label, k in (
                          ("stamped", "mvc_load_s"), ("first (re-hash + stamp)", "mvc_load_first_s"),
                          ("re-hash", "mvc_load_rehash_s"), ("verify=False", "mvc_load_unverified_s")))
                      + f" ({m['mvc_load_faults']:.0f} page faults stamped)")
            con.print(f"  from disk (evicted first): load_file {cold * 1e3:.1f} ms "
                      f"({m['safetensors_load_file_cold_faults']:.0f} faults), repo.load stamped "
                      f"{m['mvc_load_cold_s'] * 1e3:.1f} ms ({m['mvc_load_cold_s'] / cold:.2f}x, "
                      f"{m['mvc_load_cold_faults']:.0f} faults)")
    h = results["hashing"]
    con.print(f"hashing in memory: BLAKE3 all cores {h['blake3_mt_GBps']:.2f} GB/s, one core "
              f"{h['blake3_1t_GBps']:.2f} GB/s, sha256 {h['sha256_GBps']:.2f} GB/s")
    lg = results["log"]
    con.print(f"log of {lg['commits']} commits: mvc {lg['mvc_log_s']:.3f} s, git {lg['git_log_s']:.3f} s")


if __name__ == "__main__":
    main()

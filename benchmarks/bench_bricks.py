"""Benchmark: sparse ABI bricks, their int8 artifacts and the portable exact decoder across hosts.

Protocol (small tier by default): three LayerCake hosts trained on the general stream (pydoc prose,
always available): A and B of the tier with seeds 0 and 1, C of another size (``--other-tier``)
with seed 2. A sparse brick is trained on host A (frozen) on the Python stream (stdlib source) with
a KL term to the host on general text; the portable decoder is trained on the Python stream alone.
Then, on the held-out tails (exact, batch-invariant evaluation): domain (Python) and general PPL of
every host without and with the brick, its int8 artifact and the portable decoder; ratios
PPL(with) / PPL(without); for the portable decoder the cross-host PPL ratio and the max logit
difference between hosts; artifact sizes; and training time of the brick against fine-tuning a
parameter-matched bottleneck adapter inside a byte transformer of the same tier (trained on the same
general stream, frozen), same steps, batch and window.

    python benchmarks/bench_bricks.py --host-steps 600 --brick-steps 600 --cache /tmp/bench-bricks

Targets (ours, DESIGN.md section 10): bounded transfer domain ratio <= 0.75 with general ratio <= 1.05
cross-seed (host B) and cross-size (host C), also for int8; exact mode PPL ratio exactly 1.0 and max
logit diff 0. Seed-note anchors are printed beside ours (their protocol: 8 MB general / 2 MB Python,
longer training; ours is a reduced budget on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import bricks  # noqa: E402
import cores  # noqa: E402
from cores.base import bytes_to_tensor  # noqa: E402
from examples.data import general_stream, python_stream, split_holdout  # noqa: E402
from results_io import write_report  # noqa: E402  (benchmarks/ is sys.path[0] when run)

SEED_NOTE = {
    "domain_ppl_host_to_brick": "213.70 -> 55.59",
    "cross_seed": {"domain_ratio": 0.708, "general_ratio": 1.044},
    "cross_size": {"domain_ratio": 0.484, "general_ratio": 1.049},
    "int8_cross_seed": {"domain_ratio": 0.703, "general_ratio": 1.045},
    "portable": {"ppl_ratio": 1.0, "max_logit_diff": 0.0, "int8_bytes": 148_808, "params": 148_736},
    "adapter": "brick 3.57x faster isolated training, 2.57x smaller artifact (mobile certificate)",
}
TARGETS = {"domain_ratio": 0.75, "general_ratio": 1.05}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


class AdapterBlock(nn.Module):
    """A frozen transformer block followed by a zero-initialised bottleneck adapter (d -> r -> d)."""

    def __init__(self, block: nn.Module, d: int, r: int, g: torch.Generator):
        super().__init__()
        self.block = block
        self.norm = nn.RMSNorm(d)
        self.down = nn.Linear(d, r, bias=False)
        self.up = nn.Linear(r, d, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(torch.randn(self.down.weight.shape, generator=g) * d ** -0.5)
            self.up.weight.zero_()

    def forward(self, x, cache=None):
        x = self.block(x, cache)
        return x + self.up(F.gelu(self.down(self.norm(x)), approximate="tanh"))


def adapter_baseline(base, python_train: bytes, python_eval: bytes, general_eval: bytes, target_params: int,
                     st: dict) -> dict:
    """Insert parameter-matched adapters into a frozen byte transformer, fine-tune them on Python."""
    gpt = base.gpt
    d, n = gpt.wte.weight.shape[1], len(gpt.blocks)
    r = max(1, round(target_params / (n * (2 * d + 1))))
    seq_len, steps, lr0, batch = st["seq_len"], st["adapter_steps"], st["adapter_lr"], st["batch_size"]
    before = {"domain": base.bpb(python_eval, window_bytes=seq_len),
              "general": base.bpb(general_eval, window_bytes=seq_len)}
    for p in base.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        gpt.blocks[i] = AdapterBlock(gpt.blocks[i], d, r, g)
    params = [p for p in base.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr0, betas=(0.9, 0.95), weight_decay=0.0)
    stream = bytes_to_tensor(python_train)
    gen = torch.Generator().manual_seed(0)
    base.train()
    t0 = time.perf_counter()
    for step in range(steps):
        offs = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)
        w = stream[offs[:, None] + torch.arange(seq_len + 1)]
        lr = lr0 * min(1.0, (step + 1) / max(1, steps // 20))
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for grp in opt.param_groups:
            grp["lr"] = lr
        loss = F.cross_entropy(base(w[:, :-1]).reshape(-1, 256), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    wall = time.perf_counter() - t0
    base.eval()
    after = {"domain": base.bpb(python_eval, window_bytes=seq_len),
             "general": base.bpb(general_eval, window_bytes=seq_len)}
    return {"rank": r, "params": n_params, "artifact_bytes": 4 * n_params, "train_wall_s": wall, "steps": steps,
            "domain_bpb_base": before["domain"], "domain_bpb": after["domain"],
            "general_bpb_base": before["general"], "general_bpb": after["general"],
            "domain_ratio": 2 ** (after["domain"] - before["domain"]),
            "general_ratio": 2 ** (after["general"] - before["general"])}


# ---- jobs (each runs in a worker process on one thread; artifacts pass through files) -----------

def load_data(st: dict) -> tuple[bytes, bytes, bytes, bytes]:
    """(general train, general held-out, python train, python held-out), deterministic."""
    general = general_stream(source="pydoc", allow_short=True)
    python = python_stream(size=st["python_size"], allow_short=True)
    g_train, g_eval = split_holdout(general, 0.05)
    p_train, p_eval = split_holdout(python, 0.05)
    if st["eval_bytes"]:
        g_eval, p_eval = g_eval[: st["eval_bytes"]], p_eval[: st["eval_bytes"]]
    return g_train, g_eval, p_train, p_eval


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def host_path(st: dict, arch: str, tier: str, seed: int, data: bytes) -> Path:
    key = digest(arch, tier, seed, st["host_steps"], st["batch_size"], st["seq_len"], st["host_lr"], data)
    return Path(st["workdir"]) / f"host-{arch}-{tier}-{seed}-{key}.pt"


def load_host(path: str, arch: str, tier: str, seed: int):
    core = cores.build(arch, tier, seed=seed)
    core.load_state_dict(torch.load(path)["state"])
    return core.eval()


def job_host(st: dict, arch: str, tier: str, seed: int) -> dict:
    """Train a host on the general stream (or find it in the cache) -> {"path", "info"}."""
    g_train = load_data(st)[0]
    path = host_path(st, arch, tier, seed, g_train)
    if path.exists():
        return {"path": str(path), "info": {**torch.load(path)["info"], "cached": True}}
    core = cores.build(arch, tier, seed=seed)
    t = cores.Trainer(core, g_train, steps=st["host_steps"], seed=seed, batch_size=st["batch_size"],
                      seq_len=st["seq_len"], lr=st["host_lr"], progress=False)
    t.run()
    info = {"arch": arch, "tier": tier, "seed": seed, "params": core.num_params(), "train_wall_s": t.wall,
            "steps": t.step, "final_loss": t.metrics(False)["loss_last10"], "cached": False}
    torch.save({"state": core.state_dict(), "info": info}, path)
    return {"path": str(path), "info": info}


def job_sparse(st: dict, host: dict) -> dict:
    """Train the sparse brick on host A (frozen) -> {"path", "train"}."""
    g_train, g_eval, p_train, p_eval = load_data(st)
    a = load_host(host["path"], "layercake", st["tier"], 0)
    brick = bricks.build("sparse", host=a, seed=0, experts=st["experts"], top_k=st["top_k"], rank=st["rank"])
    t = bricks.BrickTrainer(brick, a, p_train, steps=st["brick_steps"], seed=0, general=g_train,
                            batch_size=st["batch_size"], general_batch=st["general_batch"], seq_len=st["seq_len"],
                            lr=st["brick_lr"], general_weight=st["general_weight"], eval_data=p_eval,
                            general_eval=g_eval)
    t.run()
    path = Path(st["workdir"]) / "sparse-brick.pt"
    torch.save({"state": brick.state_dict(), "arch": brick.mvc_arch, "config": brick.mvc_config}, path)
    return {"path": str(path), "train": t.metrics(evaluate=False)}


def job_portable(st: dict) -> dict:
    """Train the portable decoder on the Python stream alone -> {"path", "train"}."""
    _, _, p_train, p_eval = load_data(st)
    dec = bricks.build("portable", seed=0)
    t = bricks.BrickTrainer(dec, None, p_train, steps=st["portable_steps"], seed=0, batch_size=st["batch_size"],
                            seq_len=st["seq_len"], lr=st["portable_lr"], eval_data=p_eval)
    t.run()
    path = Path(st["workdir"]) / "portable-brick.pt"
    torch.save({"state": dec.state_dict(), "arch": dec.mvc_arch, "config": dec.mvc_config}, path)
    return {"path": str(path), "train": t.metrics(evaluate=False)}


def load_brick(path: str):
    blob = torch.load(path)
    return bricks.rebuild({"arch": blob["arch"], "config": blob["config"]}, blob["state"])


def job_adapter(st: dict, base: dict, target_params: int) -> dict:
    _, g_eval, p_train, p_eval = load_data(st)
    core = load_host(base["path"], "byte-transformer", st["tier"], 0)
    out = adapter_baseline(core, p_train, p_eval, g_eval, target_params, st)
    out["base"] = base["info"]
    return out


def job_eval(st: dict, name: str, tier: str, seed: int, host: dict, sparse: dict, portable: dict) -> dict:
    """Exact held-out figures of one host alone and with each brick (float and int8)."""
    _, g_eval, _, p_eval = load_data(st)
    h = load_host(host["path"], "layercake", tier, seed)
    brick, dec = load_brick(sparse["path"]), load_brick(portable["path"])
    row = {"host_params": h.num_params()}
    for label, b in (("sparse", brick), ("sparse_int8", bricks.quantize(brick)), ("portable", dec),
                     ("portable_int8", bricks.quantize(dec))):
        row[label] = bricks.measure(h, b, p_eval, g_eval, window_bytes=st["seq_len"])
    return row


def schedule(tasks: dict, jobs: int, threads: int) -> dict:
    """Run ``tasks`` {name: (priority, deps, fn(results) -> (callable, args))} on ``jobs`` worker processes,
    highest priority first among those whose dependencies are done -> {name: result}."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results: dict = {}
    running: dict = {}
    started: dict = {}
    todo = dict(tasks)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        while todo or running:
            ready = sorted((n for n, (_, deps, _) in todo.items() if all(d in results for d in deps)),
                           key=lambda n: todo[n][0])
            while ready and len(running) < jobs:
                name = ready.pop(0)
                fn, args = todo.pop(name)[2](results)
                running[pool.submit(fn, *args)] = name
                started[name] = time.perf_counter()
                log(f"  started {name}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                results[name] = fut.result()
                log(f"  finished {name} ({time.perf_counter() - started[name]:.0f} s)")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="small")
    ap.add_argument("--other-tier", default="tiny", help="size of the third host (cross-size transfer)")
    ap.add_argument("--host-steps", type=int, default=500)
    ap.add_argument("--brick-steps", type=int, default=600)
    ap.add_argument("--portable-steps", type=int, default=None, help="default: --brick-steps")
    ap.add_argument("--adapter-steps", type=int, default=None, help="default: --brick-steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256, help="window in bytes (training and evaluation)")
    ap.add_argument("--host-lr", type=float, default=None, help="default: the tier's")
    ap.add_argument("--brick-lr", type=float, default=None, help="default: bricks' default for sparse bricks")
    ap.add_argument("--portable-lr", type=float, default=None)
    ap.add_argument("--adapter-lr", type=float, default=3e-3)
    ap.add_argument("--general-weight", type=float, default=1.0, help="KL weight on general text")
    ap.add_argument("--general-batch", type=int, default=None, help="general windows per step (default batch/4)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--python-size", type=int, default=2_000_000)
    ap.add_argument("--eval-bytes", type=int, default=32_768, help="held-out bytes evaluated per stream (0: all)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (each on --threads threads)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 is fastest on a shared box)")
    ap.add_argument("--cache", default=None, help="directory keeping trained hosts between runs (default: none)")
    ap.add_argument("--skip-adapter", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_bricks.json"))
    ap.add_argument("--table-from", default=None, metavar="JSON", help="only print the tables of a saved report")
    args = ap.parse_args(argv)
    if args.table_from:
        print_table(json.loads(Path(args.table_from).read_text()))
        return 0
    args.portable_steps = args.portable_steps or args.brick_steps
    args.adapter_steps = args.adapter_steps or args.brick_steps
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bench-bricks-")
    workdir = Path(args.cache) if args.cache else Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    st = {**vars(args), "workdir": str(workdir)}
    hosts_spec = {"A": (args.tier, 0), "B": (args.tier, 1), "C": (args.other_tier, 2)}

    tasks = {
        "host A": (0, [], lambda r: (job_host, (st, "layercake", args.tier, 0))),
        "sparse": (2, ["host A"], lambda r: (job_sparse, (st, r["host A"]))),
        "host B": (3, [], lambda r: (job_host, (st, "layercake", args.tier, 1))),
        "portable": (5, [], lambda r: (job_portable, (st,))),
        "host C": (6, [], lambda r: (job_host, (st, "layercake", args.other_tier, 2))),
    }
    if not args.skip_adapter:
        tasks["host transformer"] = (1, [], lambda r: (job_host, (st, "byte-transformer", args.tier, 0)))
        tasks["adapter"] = (4, ["host transformer", "sparse"],
                            lambda r: (job_adapter, (st, r["host transformer"], r["sparse"]["train"]["params"])))
    for i, (name, (tier, seed)) in enumerate(hosts_spec.items()):
        tasks[f"eval {name}"] = (7 + i, [f"host {name}", "sparse", "portable"],
                                 lambda r, name=name, tier=tier, seed=seed:
                                 (job_eval, (st, name, tier, seed, r[f"host {name}"], r["sparse"], r["portable"])))
    log(f"bench_bricks: {len(tasks)} jobs on {args.jobs} workers x {args.threads} thread(s); work dir {workdir}")
    res = schedule(tasks, args.jobs, args.threads)

    per_host = {n: res[f"eval {n}"] for n in hosts_spec}
    host_info = {n: {**res[f"host {n}"]["info"], "tier": t, "seed": s} for n, (t, s) in hosts_spec.items()}
    brick, dec = load_brick(res["sparse"]["path"]), load_brick(res["portable"]["path"])
    q, dq = bricks.quantize(brick), bricks.quantize(dec)
    p_eval = load_data(st)[3]
    hosts = {n: load_host(res[f"host {n}"]["path"], "layercake", t, s) for n, (t, s) in hosts_spec.items()}
    portable_diff = bricks.max_logit_diff([bricks.attach(h, dec) for h in hosts.values()], p_eval, args.seq_len)
    portable_int8_diff = bricks.max_logit_diff([bricks.attach(h, dq) for h in hosts.values()], p_eval, args.seq_len)
    pa = per_host["A"]["portable"]["domain_bpb"]
    portable_ratios = {n: 2.0 ** (per_host[n]["portable"]["domain_bpb"] - pa) for n in ("B", "C")}
    adapter = res.get("adapter")

    def target_check(figs: dict) -> bool:
        return figs["domain_ratio"] <= TARGETS["domain_ratio"] and figs["general_ratio"] <= TARGETS["general_ratio"]

    met = {
        "cross_seed (B)": target_check(per_host["B"]["sparse"]),
        "cross_size (C)": target_check(per_host["C"]["sparse"]),
        "int8 cross_seed (B)": target_check(per_host["B"]["sparse_int8"]),
        "int8 cross_size (C)": target_check(per_host["C"]["sparse_int8"]),
        "portable ratio 1.0": all(r == 1.0 for r in portable_ratios.values()),
        "portable max diff 0": portable_diff == 0.0,
        "portable int8 max diff 0": portable_int8_diff == 0.0,
    }
    data = load_data(st)
    report = {
        "command": "python benchmarks/bench_bricks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items()},
        "data": {"general_source": "pydoc", "general_train_bytes": len(data[0]), "general_eval_bytes": len(data[1]),
                 "python_train_bytes": len(data[2]), "python_eval_bytes": len(data[3])},
        "hosts": host_info,
        "sparse": {"params": bricks.num_params(brick), "config": brick.mvc_config, "train": res["sparse"]["train"],
                   "artifact_bytes": bricks.artifact_bytes(brick), "int8_artifact_bytes": bricks.artifact_bytes(q)},
        "portable": {"params": bricks.num_params(dec), "train": res["portable"]["train"],
                     "artifact_bytes": bricks.artifact_bytes(dec), "int8_artifact_bytes": bricks.artifact_bytes(dq),
                     "max_logit_diff_across_hosts": portable_diff,
                     "int8_max_logit_diff_across_hosts": portable_int8_diff, "ppl_ratio_vs_A": portable_ratios},
        "per_host": per_host,
        "adapter": adapter,
        "targets": {"thresholds": TARGETS, "met": met},
        "seed_note": SEED_NOTE,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                        "jobs": args.jobs, "threads_per_job": args.threads},
        "total_wall_s": time.perf_counter() - t_start,
    }
    out = write_report(report, args.out, sort_keys=True)
    print_table(report)
    log(f"wrote {out} ({report['total_wall_s']:.0f} s)")
    tmp.cleanup()
    return 0


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)
    ph, hosts = report["per_host"], report["hosts"]
    t = Table(title=f"bricks across hosts (held-out Python / general; brick trained on host A; "
                    f"{report['settings']['brick_steps']} brick steps)")
    for col in ("host", "mode", "domain PPL host", "domain PPL +brick", "domain ratio", "general ratio",
                "target (<=0.75, <=1.05)", "seed note"):
        t.add_column(col, justify="left" if col in ("host", "mode", "seed note") else "right")
    notes = {("A", "sparse"): "213.70 -> 55.59", ("B", "sparse"): "0.708 / 1.044", ("C", "sparse"): "0.484 / 1.049",
             ("B", "sparse_int8"): "0.703 / 1.045", ("A", "portable"): "PPL 2.71-2.86, ratio 1.0"}
    for name in ("A", "B", "C"):
        h = hosts[name]
        label = f"{name} ({h['tier']}, seed {h['seed']}, {ph[name]['host_params']:,})"
        for mode in ("sparse", "sparse_int8", "portable", "portable_int8"):
            f = ph[name][mode]
            ok = f["domain_ratio"] <= 0.75 and f["general_ratio"] <= 1.05
            t.add_row(label if mode == "sparse" else "", mode, f"{f['domain_ppl_host']:.2f}", f"{f['domain_ppl']:.2f}",
                      f"{f['domain_ratio']:.3f}", f"{f['general_ratio']:.3f}",
                      ("met" if ok else "not met") if mode.startswith("sparse") and name != "A" else "-",
                      notes.get((name, mode), ""))
    console.print(t)
    p, s, a = report["portable"], report["sparse"], report["adapter"]
    t2 = Table(title="exact mode, artifacts and training cost")
    t2.add_column("item")
    t2.add_column("ours", justify="right")
    t2.add_column("seed note", justify="right")
    t2.add_row("portable PPL ratio B/A, C/A", ", ".join(f"{v:.6f}" for v in p["ppl_ratio_vs_A"].values()), "1.0")
    t2.add_row("portable max logit diff across hosts (float / int8)",
               f"{p['max_logit_diff_across_hosts']} / {p['int8_max_logit_diff_across_hosts']}", "0")
    t2.add_row("portable params / int8 artifact bytes", f"{p['params']:,} / {p['int8_artifact_bytes']:,}",
               "148,736 / 148,808")
    t2.add_row("sparse brick params / float bytes / int8 bytes",
               f"{s['params']:,} / {s['artifact_bytes']:,} / {s['int8_artifact_bytes']:,}", "-")
    t2.add_row("sparse brick training s", f"{s['train']['wall_seconds']:.1f}", "-")
    t2.add_row("portable training s", f"{p['train']['wall_seconds']:.1f}", "-")
    if a:
        t2.add_row("adapter (byte transformer) params / training s",
                   f"{a['params']:,} / {a['train_wall_s']:.1f}", "-")
        t2.add_row("adapter domain ratio (vs its base)", f"{a['domain_ratio']:.3f}", "-")
        t2.add_row("domain BPB: adapter (on its base) / sparse brick on A / portable",
                   " / ".join(f"{v:.3f}" for v in (a["domain_bpb"], ph["A"]["sparse"]["domain_bpb"],
                                                      ph["A"]["portable"]["domain_bpb"])),
                   "2.11 / - / 1.44")
        t2.add_row("general ratio: adapter / sparse brick on A",
                   f"{a['general_ratio']:.3f} / {ph['A']['sparse']['general_ratio']:.3f}", "-")
        t2.add_row("brick training speed-up vs adapter", f"{a['train_wall_s'] / s['train']['wall_seconds']:.2f}x",
                   "3.57x")
    console.print(t2)
    met = report["targets"]["met"]
    console.print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of remotes (issue 7): push and clone of a 10-checkpoint frozen-core run to a directory
remote and to a loopback S3 server (moto's server mode, in its own process), beside plain parallel
copies / boto3 uploads of the checkpoint files with the same number of threads, in the same run.

The run comes from bench_store.py's "frozen" scenario: a ~22M-parameter float32 model, weights of
scale 0.02, where only small adapter tensors change between checkpoints. Targets: mvc sends
<= 1.1x one checkpoint's bytes for the whole run, at a throughput within 1.5x of a plain parallel
upload of the same bytes (the first checkpoint file).

    python benchmarks/bench_remote.py                                  # full size
    python benchmarks/bench_remote.py --params 2e6 --checkpoints 3     # quick
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from bench_store import make_checkpoints  # noqa: E402  (the same synthetic run as the store benchmark)
from bench_args import positive_int  # noqa: E402
from results_io import write_report  # noqa: E402

MOTO = """
import sys, time, logging
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
s.start()
print("ready", flush=True)
time.sleep(10 ** 9)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_unavailable() -> str | None:
    """Why the loopback S3 rows cannot run here (boto3 or moto missing), or None."""
    import importlib.util
    missing = [m for m in ("boto3", "moto") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install boto3 'moto[server]')" if missing else None


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", MOTO, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        said = (proc.stderr.read() or "").strip().splitlines()
        raise SystemExit("the moto S3 server did not start" + (f": {said[-1]}" if said else ""))
    return proc, f"http://127.0.0.1:{port}"


def best(fn, repeat: int):
    """(best seconds, last result) of `repeat` runs of fn(i)."""
    times, out = [], None
    for i in range(repeat):
        t = time.perf_counter()
        out = fn(i)
        times.append(time.perf_counter() - t)
    return min(times), out


def copy_files(paths, dest, jobs, fsync=True):
    os.makedirs(dest, exist_ok=True)

    def one(p):
        target = os.path.join(dest, os.path.basename(p))
        shutil.copyfile(p, target)
        if fsync:
            fd = os.open(target, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(one, paths))


def boto3_client(endpoint, jobs):
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(max_pool_connections=max(10, 2 * jobs), s3={"addressing_style": "path"}))


def upload_files(client, bucket, prefix, paths, jobs):
    """Plain parallel upload: one file per thread when there are several, multipart parts of one
    file on `jobs` threads when there is one."""
    from boto3.s3.transfer import TransferConfig
    if len(paths) == 1:
        cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=jobs)
        client.upload_file(paths[0], bucket, f"{prefix}/{os.path.basename(paths[0])}", Config=cfg)
        return
    cfg = TransferConfig(multipart_threshold=1 << 40, max_concurrency=1)  # one request per file
    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(lambda p: client.upload_file(p, bucket, f"{prefix}/{os.path.basename(p)}", Config=cfg), paths))


def download_files(client, bucket, prefix, names, dest, jobs):
    from boto3.s3.transfer import TransferConfig
    os.makedirs(dest, exist_ok=True)
    if len(names) == 1:
        cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=jobs)
        client.download_file(bucket, f"{prefix}/{names[0]}", os.path.join(dest, names[0]), Config=cfg)
        return
    cfg = TransferConfig(multipart_threshold=1 << 40, max_concurrency=1)
    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(lambda n: client.download_file(bucket, f"{prefix}/{n}", os.path.join(dest, n), Config=cfg),
                    names))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=22e6)
    ap.add_argument("--checkpoints", type=positive_int, default=10)
    ap.add_argument("--jobs", type=positive_int, default=8, help="threads for mvc and for the plain baselines")
    ap.add_argument("--repeat", type=positive_int, default=2, help="best of N for every timing")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_remote.json"))
    args = ap.parse_args()
    for var, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("MVC_AUTHOR", "bench")):
        os.environ.setdefault(var, value)
    import mvc
    from mvc import remote as rm

    base = args.workdir or tempfile.mkdtemp(prefix="bench_remote_")
    ckpts = make_checkpoints(os.path.join(base, "ckpts"), "frozen", args.params, args.checkpoints)
    one, total = os.path.getsize(ckpts[0]), sum(os.path.getsize(p) for p in ckpts)
    repo = mvc.Repo.init(os.path.join(base, "repo"))
    for i, p in enumerate(ckpts):
        repo.commit({"model": p}, message=f"ckpt {i}")
    last = ckpts[-1]
    rows = []

    def add(target, op, nbytes, seconds, baseline=None):
        rows.append({"target": target, "operation": op, "bytes": nbytes, "seconds": seconds,
                     "MBps": nbytes / seconds / 1e6 if seconds else None, "vs_one_ckpt": nbytes / one,
                     "vs_all_files": nbytes / total, "baseline": baseline})

    def check_clone(clone_repo, where):
        out = os.path.join(base, f"verify-{uuid.uuid4().hex[:6]}")
        clone_repo.checkout("HEAD", out)
        got = os.path.join(out, "model", os.path.basename(last))
        assert open(got, "rb").read() == open(last, "rb").read(), f"{where}: clone is not byte-identical"
        assert len(clone_repo.log()) == args.checkpoints
        shutil.rmtree(out)

    # -- directory remote ---------------------------------------------------------------------
    def dir_push(i):
        url = os.path.join(base, f"dir-remote-{i}")
        r = rm.push(repo, url, "main", jobs=args.jobs)
        return url, r
    t, (dir_url, r) = best(dir_push, args.repeat)
    add("directory", "mvc push (whole run)", r["bytes_sent"], t)
    t, _ = best(lambda i: copy_files(ckpts[:1], os.path.join(base, f"dir-plain1-{i}"), args.jobs), args.repeat)
    add("directory", "copy 1st checkpoint (same bytes)", one, t, baseline=True)
    t, _ = best(lambda i: copy_files(ckpts, os.path.join(base, f"dir-plain-{i}"), args.jobs), args.repeat)
    add("directory", f"copy all {len(ckpts)} files", total, t, baseline=True)
    t, clone = best(lambda i: rm.clone(dir_url, os.path.join(base, f"dir-clone-{i}"), jobs=args.jobs), args.repeat)
    check_clone(clone[0], "directory")
    add("directory", "mvc clone (whole run)", clone[1]["fetch"]["bytes_received"], t)

    # -- loopback S3 --------------------------------------------------------------------------
    skipped = s3_unavailable()
    if skipped:
        print(f"S3 rows skipped: {skipped}")
    else:
        s3_rows(args, repo, ckpts, one, total, base, add, check_clone)

    results = {"params": args.params, "checkpoints": args.checkpoints, "jobs": args.jobs, "repeat": args.repeat,
               "one_checkpoint_bytes": one, "all_files_bytes": total, "rows": rows,
               "targets": summarize(rows), **({"s3_skipped": skipped} if skipped else {})}
    print_table(results)
    print(f"wrote {write_report(results, args.out)}")
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


def s3_rows(args, repo, ckpts, one, total, base, add, check_clone) -> None:
    """mvc push/clone against boto3 upload/download of the same bytes, on a loopback moto server."""
    from mvc import remote as rm
    from mvc.transport import open_transport
    server, endpoint = start_moto()
    try:
        client = boto3_client(endpoint, args.jobs)
        bucket = "bench"
        client.create_bucket(Bucket=bucket)

        def s3_push(i):
            url = f"s3://{bucket}/mvc-{i}"
            transport = open_transport(url, endpoint, args.jobs)
            return url, rm.push(repo, url, "main", jobs=args.jobs, transport=transport)
        t, (s3_url, r) = best(s3_push, args.repeat)
        add("s3 (moto, loopback)", "mvc push (whole run)", r["bytes_sent"], t)
        t, _ = best(lambda i: upload_files(client, bucket, f"plain1-{i}", ckpts[:1], args.jobs), args.repeat)
        add("s3 (moto, loopback)", "boto3 upload 1st checkpoint (same bytes)", one, t, baseline=True)
        t, _ = best(lambda i: upload_files(client, bucket, f"plain-{i}", ckpts, args.jobs), args.repeat)
        add("s3 (moto, loopback)", f"boto3 upload all {len(ckpts)} files", total, t, baseline=True)

        def s3_clone(i):
            return rm.clone(s3_url, os.path.join(base, f"s3-clone-{i}"), endpoint=endpoint, jobs=args.jobs)
        t, clone = best(s3_clone, args.repeat)
        check_clone(clone[0], "s3")
        add("s3 (moto, loopback)", "mvc clone (whole run)", clone[1]["fetch"]["bytes_received"], t)
        names = [os.path.basename(p) for p in ckpts]
        t, _ = best(lambda i: download_files(client, bucket, "plain1-0", names[:1], os.path.join(base, f"dl1-{i}"),
                                             args.jobs), args.repeat)
        add("s3 (moto, loopback)", "boto3 download 1st checkpoint (same bytes)", one, t, baseline=True)
        t, _ = best(lambda i: download_files(client, bucket, "plain-0", names, os.path.join(base, f"dl-{i}"),
                                             args.jobs), args.repeat)
        add("s3 (moto, loopback)", f"boto3 download all {len(ckpts)} files", total, t, baseline=True)
    finally:
        server.terminate()
        server.wait()


def summarize(rows) -> dict:
    """Bytes target and throughput ratio (mvc MB/s vs the same-bytes plain transfer) per target."""
    out = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = {r["operation"].split(" (")[0]: r for r in rows if r["target"] == target and not r["baseline"]}
        same = [r for r in rows if r["target"] == target and r["baseline"] and "same bytes" in r["operation"]]
        push = mine.get("mvc push")
        out[target] = {"push_bytes_vs_one_ckpt": push["vs_one_ckpt"],
                       "push_bytes_target_met": push["vs_one_ckpt"] <= 1.1,
                       "push_slowdown_vs_plain_same_bytes": same[0]["MBps"] / push["MBps"],
                       "push_throughput_target_met": same[0]["MBps"] / push["MBps"] <= 1.5}
        if "mvc clone" in mine:  # vs the same-bytes download (a copy is its own reverse)
            out[target]["clone_slowdown_vs_plain_same_bytes"] = same[-1]["MBps"] / mine["mvc clone"]["MBps"]
    return out


def print_table(results):
    from rich.console import Console
    from rich.table import Table
    con = Console(width=150)
    t = Table(title=f"remotes: {results['checkpoints']} frozen-core checkpoints of "
                    f"{results['one_checkpoint_bytes'] / 1e6:.1f} MB ({results['all_files_bytes'] / 1e6:.1f} MB "
                    f"of files), {results['jobs']} threads, best of {results['repeat']}")
    for col in ("target", "operation", "MB moved", "/ 1 ckpt", "/ all files", "time (s)", "MB/s"):
        t.add_column(col, justify="left" if col in ("target", "operation") else "right")
    for r in results["rows"]:
        t.add_row(r["target"], r["operation"] + (" [baseline]" if r["baseline"] else ""), f"{r['bytes'] / 1e6:.1f}",
                  f"{r['vs_one_ckpt']:.3f}", f"{r['vs_all_files']:.3f}", f"{r['seconds']:.2f}", f"{r['MBps']:.0f}")
    con.print(t)
    for target, s in results["targets"].items():
        clone = (f"; clone {s['clone_slowdown_vs_plain_same_bytes']:.2f}x slower per byte"
                 if "clone_slowdown_vs_plain_same_bytes" in s else "")
        con.print(f"{target}: push sends {s['push_bytes_vs_one_ckpt']:.3f}x one checkpoint "
                  f"(target <= 1.1: {'met' if s['push_bytes_target_met'] else 'MISSED'}); "
                  f"{s['push_slowdown_vs_plain_same_bytes']:.2f}x slower per byte than the plain transfer "
                  f"(target <= 1.5: {'met' if s['push_throughput_target_met'] else 'MISSED'}){clone}")


if __name__ == "__main__":
    main()

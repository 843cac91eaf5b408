"""Remote contract suite: every case runs against a directory remote and an S3 remote (moto's server
on loopback). Push/clone fidelity, minimal transfers, resume after an interrupted push (a raising
transport and a process killed mid-transfer), corruption on fetch, concurrent pushes, fast-forward
rules, lazy clones and push --repair."""
import collections
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings

import pytest
import torch
from click.testing import CliRunner

import mvc
from mvc import certindex, remote as rm
from mvc.cli import cli
from mvc.errors import BadInput, BadName, CorruptObject, NonFastForward
from mvc.objects import canonical_json, hash_bytes, tree_blob_ids
from mvc.transport import DirectoryTransport, open_transport

from damage import flip_byte


# -- the two transports ------------------------------------------------------------------------
class DirRemote:
    kind = "dir"
    endpoint = None

    def __init__(self, tmp_path):
        self.url = str(tmp_path / "remote.mvc")

    def transport(self):
        return DirectoryTransport(self.url)

    def object_ids(self):
        return set(DirectoryTransport(self.url).objects.ids())

    def corrupt(self, oid):
        path = DirectoryTransport(self.url).objects.path(oid)
        os.chmod(path, 0o644)
        with open(path, "wb") as f:
            f.write(b"not the right bytes")

    def options(self):
        return []


class S3Remote:
    kind = "s3"

    def __init__(self, endpoint):
        import boto3
        self.endpoint = endpoint
        self.bucket = f"mvc-{uuid.uuid4().hex[:12]}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=self.bucket)
        self.url = f"s3://{self.bucket}/team/models"

    def transport(self):
        return open_transport(self.url, self.endpoint)

    def object_ids(self):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="team/models/objects/")
        return {o["Key"].split("/")[-2] + o["Key"].split("/")[-1] for p in pages for o in p.get("Contents", [])}

    def corrupt(self, oid):
        self.client.put_object(Bucket=self.bucket, Key=f"team/models/objects/{oid[:2]}/{oid[2:]}",
                               Body=b"not the right bytes")

    def options(self):
        return ["--endpoint", self.endpoint]


@pytest.fixture(params=["dir", "s3"])
def remote(request, tmp_path):
    if request.param == "dir":
        return DirRemote(tmp_path)
    request.getfixturevalue("aws_env")
    return S3Remote(request.getfixturevalue("s3_endpoint"))


class Counting:
    """Wraps a transport: records the ids it puts; raises after `fail_after` puts; can hold ref
    updates at a barrier (to line two pushers up)."""

    def __init__(self, inner, fail_after=None, barrier=None):
        self.inner, self.fail_after, self.barrier = inner, fail_after, barrier
        self.put_ids = []
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, oid, data, **kw):
        with self.lock:
            if self.fail_after is not None and len(self.put_ids) >= self.fail_after:
                raise ConnectionError("simulated network failure")
            self.put_ids.append(oid)
        self.inner.put(oid, data, **kw)

    def put_file(self, oid, path, **kw):
        with open(path, "rb") as f:
            self.put(oid, f.read(), **kw)

    def update_ref(self, ref, new, expected, replace_damaged=False, **kw):
        if self.barrier is not None and ref.startswith("refs/heads/"):
            self.barrier.wait(timeout=30)
        return self.inner.update_ref(ref, new, expected, replace_damaged, **kw)


# -- helpers -----------------------------------------------------------------------------------
def weights(seed, n=6, shape=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(*shape, generator=g) for i in range(n)}


def new_repo(path, remote=None):
    repo = mvc.Repo.init(path)
    if remote is not None:
        rm.add_remote(repo, "origin", remote.url, remote.endpoint)
    return repo


def invoke(monkeypatch, cwd, *args):
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(cli, [str(a) for a in args])


def checkout_bytes(repo, rev, out):
    repo.checkout(rev, str(out))
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(out) for f in files}


def blob_closure(repo, cid, component):
    tid = repo.read_commit(cid)["components"][component]
    return {tid, *tree_blob_ids(repo.read_tree(tid))}


# -- contract cases ----------------------------------------------------------------------------
def test_push_then_clone_reproduces_commits_tags_and_checkouts(remote, tmp_path, monkeypatch):
    src = new_repo(tmp_path / "src", remote)
    c1 = src.commit({"core": weights(1)}, message="core")
    c2 = src.commit({"brick/python": weights(2, n=2, shape=(4, 16))}, message="brick")
    src.tag("v1", c1)
    c3 = src.commit({"core": weights(3)}, message="core again", metrics={"loss": 1.5})
    r = invoke(monkeypatch, src.root, "push", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["status"] == "new branch" and doc["new"] == c3 and doc["tags"] == ["v1"]
    assert src.refs.read("refs/remotes/origin/main") == c3

    r = invoke(monkeypatch, tmp_path, "clone", remote.url, "copy", *remote.options())
    assert r.exit_code == 0, r.output
    dst = mvc.Repo(tmp_path / "copy")
    assert [c["id"] for c in dst.log()] == [c3, c2, c1]
    assert [c for c in dst.log()] == [c for c in src.log()]
    assert dst.tags() == {"v1": c1} and dst.head_branch == "main"
    assert dst.get_config("remote.origin.url") == remote.url
    for rev in (c1, c2, c3):
        assert checkout_bytes(dst, rev, tmp_path / f"d{rev[:6]}") == checkout_bytes(src, rev, tmp_path / f"s{rev[:6]}")
    assert dst.fsck()["ok"]
    assert "AWS" not in open(os.path.join(dst.dir, "config")).read()


def test_second_push_of_a_brick_commit_sends_only_the_brick(remote, tmp_path, monkeypatch):
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1, n=8)}, message="core")
    first = rm.push(repo)
    assert first["objects_sent"] == 8 + 1 + 1 + 1  # tensors + header blob + tree + commit
    cid = repo.commit({"brick/python": weights(2, n=3, shape=(4, 16))}, message="brick")
    brick = blob_closure(repo, cid, "brick/python")  # 3 tensor blobs + 1 header + the tree
    assert len(brick) == 5

    r = invoke(monkeypatch, repo.root, "push", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    dry = json.loads(r.stdout)
    assert dry["objects_sent"] == len(brick) + 1 and dry["dry_run"]
    assert rm.push(repo, dry_run=True)["bytes_sent"] == sum(repo.store.size(o) for o in brick | {cid})
    assert remote.transport().read_ref("refs/heads/main") != cid  # a dry run moves nothing

    counting = Counting(remote.transport())
    result = rm.push(repo, transport=counting)
    assert sorted(counting.put_ids) == sorted(brick | {cid})
    assert result["objects_sent"] == 6 and result["status"] == "fast-forward"
    assert rm.push(repo)["objects_sent"] == 0  # up to date


def test_interrupted_push_resumes_without_resending(remote, tmp_path):
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1, n=10)}, message="one")
    cid = repo.commit({"core": weights(2, n=10)}, message="two")
    total = rm.push(repo, dry_run=True)["objects_sent"]
    broken = Counting(remote.transport(), fail_after=7)
    with pytest.raises(ConnectionError):
        rm.push(repo, transport=broken, jobs=3)
    arrived = set(broken.put_ids)
    assert 1 <= len(arrived) <= 7
    assert remote.transport().read_ref("refs/heads/main") is None  # the ref moves last

    counting = Counting(remote.transport())
    result = rm.push(repo, transport=counting)
    assert not arrived & set(counting.put_ids)  # nothing re-sent
    assert len(arrived) + len(counting.put_ids) == total
    assert result["objects_present"] >= len(arrived) and result["new"] == cid
    clone, _ = rm.clone(remote.url, str(tmp_path / "copy"), endpoint=remote.endpoint)
    assert clone.fsck()["ok"] and clone.head() == cid


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading
    from mvc import Repo, remote as rm
    repo = Repo(sys.argv[1])
    limit = int(sys.argv[2])
    _, t = rm.open_remote(repo, "origin")
    lock, count = threading.Lock(), [0]
    def killing(inner):
        def put(oid, data_or_path):
            with lock:
                count[0] += 1
                if count[0] > limit:
                    os.kill(os.getpid(), signal.SIGKILL)  # die mid-transfer, no cleanup
            inner(oid, data_or_path)
        return put
    t.put, t.put_file = killing(t.put), killing(t.put_file)
    rm.push(repo, "origin", transport=t, jobs=2)
""")


def test_push_killed_mid_transfer_resumes(remote, tmp_path):
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1, n=12)}, message="one")
    total = rm.push(repo, dry_run=True)["objects_sent"]
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, repo.root, "6"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9, proc.stderr
    there = remote.object_ids()  # (a directory remote makes small objects durable a batch at a time: a kill
    assert (0 if remote.kind == "dir" else 1) <= len(there) <= 6  # -9 drops the batch it was writing)
    counting = Counting(remote.transport())
    rm.push(repo, transport=counting)
    assert not there & set(counting.put_ids)
    assert len(there) + len(counting.put_ids) == total
    clone, _ = rm.clone(remote.url, str(tmp_path / "copy"), endpoint=remote.endpoint)
    assert clone.fsck()["ok"] and clone.head() == repo.head()


def test_corrupt_object_on_the_remote_is_detected_on_fetch_and_not_stored(remote, tmp_path, monkeypatch):
    src = new_repo(tmp_path / "src", remote)
    src.commit({"core": weights(1)}, message="one")
    rm.push(src)
    dst, _ = rm.clone(remote.url, str(tmp_path / "copy"), endpoint=remote.endpoint)
    before = dst.refs.read("refs/remotes/origin/main")
    cid = src.commit({"core": weights(2)}, message="two")
    rm.push(src)
    bad = src.read_tree(src.read_commit(cid)["components"]["core"])["tensors"]["w3"]["id"]
    remote.corrupt(bad)

    r = invoke(monkeypatch, dst.root, "fetch")
    assert r.exit_code == 3
    assert bad in r.stderr and "corrupt" in r.stderr and "Traceback" not in r.stderr
    dst = mvc.Repo(dst.root)
    assert not dst.store.has(bad)  # rejected, never stored
    assert dst.refs.read("refs/remotes/origin/main") == before
    assert dst.fsck()["ok"]

    r = invoke(monkeypatch, tmp_path, "clone", remote.url, "fresh", *remote.options())
    assert r.exit_code == 3 and bad in r.stderr
    assert not mvc.Repo(tmp_path / "fresh").loose.has(bad)


def test_concurrent_pushes_to_one_branch_lose_nothing(remote, tmp_path, monkeypatch):
    base = new_repo(tmp_path / "base", remote)
    c0 = base.commit({"core": weights(0)}, message="base")
    rm.push(base)
    a, _ = rm.clone(remote.url, str(tmp_path / "a"), endpoint=remote.endpoint)
    b, _ = rm.clone(remote.url, str(tmp_path / "b"), endpoint=remote.endpoint)
    ca = a.commit({"brick/a": weights(1, n=2)}, message="from a")
    cb = b.commit({"brick/b": weights(2, n=2)}, message="from b")
    barrier = threading.Barrier(2)  # both have planned and uploaded before either moves the ref
    results = {}

    def go(repo, key):
        try:
            results[key] = rm.push(repo, transport=Counting(remote.transport(), barrier=barrier))
        except NonFastForward as e:
            results[key] = e

    threads = [threading.Thread(target=go, args=(r, k)) for r, k in ((a, "a"), (b, "b"))]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    losers = [k for k, v in results.items() if isinstance(v, NonFastForward)]
    winners = [k for k, v in results.items() if isinstance(v, dict)]
    assert len(losers) == 1 and len(winners) == 1, results
    err = results[losers[0]]
    assert "another push won" in err.message and "fetch" in err.hint
    won = {"a": ca, "b": cb}[winners[0]]
    assert remote.transport().read_ref("refs/heads/main") == won
    loser_repo = {"a": a, "b": b}[losers[0]]
    lost = {"a": ca, "b": cb}[losers[0]]
    assert loser_repo.head() == lost  # the loser still has its commit
    # the loser is told to fetch: pull refuses the divergence and says what to do
    r = invoke(monkeypatch, loser_repo.root, "pull")
    assert r.exit_code == 3 and "diverged" in r.stderr and "--force" in r.stderr
    assert mvc.Repo(loser_repo.root).refs.read("refs/remotes/origin/main") == won
    assert mvc.Repo(loser_repo.root).read_commit(won)["parents"] == [c0]


def test_non_fast_forward_push_is_refused_without_force(remote, tmp_path, monkeypatch):
    repo = new_repo(tmp_path / "src", remote)
    c1 = repo.commit({"core": weights(1)}, message="one")
    c2 = repo.commit({"core": weights(2)}, message="two")
    rm.push(repo)
    repo.rollback(c1)
    c3 = repo.commit({"core": weights(3)}, message="rewritten")
    r = invoke(monkeypatch, repo.root, "push")
    assert r.exit_code == 3
    assert "rejected" in r.stderr and "--force" in r.stderr and "rollback origin/main" in r.stderr
    assert remote.transport().read_ref("refs/heads/main") == c2
    r = invoke(monkeypatch, repo.root, "push", "--force", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["forced"] and remote.transport().read_ref("refs/heads/main") == c3

    other, _ = rm.clone(remote.url, str(tmp_path / "other"), endpoint=remote.endpoint)
    c4 = repo.commit({"core": weights(4)}, message="ahead")
    rm.push(repo)
    other.commit({"core": weights(5)}, message="stale base")
    with pytest.raises(NonFastForward):
        rm.push(other)  # the remote's commit is unknown here: fetch first
    assert remote.transport().read_ref("refs/heads/main") == c4


def test_lazy_clone_loads_a_component_on_demand(remote, tmp_path, monkeypatch):
    src = new_repo(tmp_path / "src", remote)
    core = weights(1, n=4)
    src.commit({"core": core, "brick/python": weights(2, n=2)}, message="one")
    rm.push(src)
    r = invoke(monkeypatch, tmp_path, "clone", "--lazy", remote.url, "lazy", *remote.options())
    assert r.exit_code == 0, r.output
    lazy = mvc.Repo(tmp_path / "lazy")
    core_blobs = set(tree_blob_ids(lazy.tree("HEAD", "core")))
    assert not any(lazy.loose.has(b) for b in core_blobs)  # commits and trees only
    report = lazy.fsck()
    assert report["ok"] and report["not_fetched"] == len(core_blobs) + 3  # + the brick's blobs + header
    assert lazy.gc(grace_s=0)["not_fetched"] == report["not_fetched"]

    state = lazy.load("HEAD", "core")
    assert set(state) == set(core) and all(torch.equal(state[k], core[k]) for k in core)
    tensor_blobs = {t["id"] for t in lazy.tree("HEAD", "core")["tensors"].values()}
    assert all(lazy.loose.has(b) for b in tensor_blobs)  # cached
    assert lazy.fsck()["not_fetched"] == report["not_fetched"] - len(tensor_blobs)
    # cached blobs need no remote; the rest come on demand (checkout is byte-identical)
    assert checkout_bytes(mvc.Repo(lazy.root), "HEAD", tmp_path / "lo") == checkout_bytes(src, "HEAD", tmp_path / "so")
    lazy.set_config("remote.origin.endpoint", None)  # (an endpoint is S3's: it goes first)
    lazy.set_config("remote.origin.url", str(tmp_path / "gone"))
    assert torch.equal(mvc.Repo(lazy.root).load("HEAD", "core")["w0"], core["w0"])


def test_lazy_clone_fetches_the_blobs_of_a_load_in_parallel(remote, tmp_path, monkeypatch):
    import time
    src = new_repo(tmp_path / "src", remote)
    core = weights(3, n=8)
    src.commit({"core": core}, message="one")
    rm.push(src)
    lazy, _ = rm.clone(remote.url, str(tmp_path / "lazy"), lazy=True, endpoint=remote.endpoint)
    transport = next(s for s in lazy.store.stores if s.fetches).transport()
    real_get, lock, inflight = transport.get_into, threading.Lock(), {"now": 0, "most": 0, "calls": 0}

    def slow_get(oid, f, **kw):  # a remote with latency: each download takes 50 ms
        with lock:
            inflight["now"] += 1
            inflight["calls"] += 1
            inflight["most"] = max(inflight["most"], inflight["now"])
        try:
            time.sleep(0.05)
            return real_get(oid, f, **kw)
        finally:
            with lock:
                inflight["now"] -= 1

    monkeypatch.setattr(transport, "get_into", slow_get)
    monkeypatch.setattr(transport, "get", lambda *a, **k: pytest.fail("a blob read whole into memory"))
    state = lazy.load("HEAD", "core", keys=["w1", "w2", "w3", "w4", "w5"])
    assert all(torch.equal(state[k], core[k]) for k in state)
    assert inflight["most"] > 1 and inflight["calls"] == 5  # in parallel, each wanted blob once
    assert not lazy.loose.has(lazy.tree("HEAD", "core")["tensors"]["w0"]["id"])  # not wanted: not fetched


def test_lazy_clone_rejects_a_corrupt_blob_on_first_use(remote, tmp_path):
    src = new_repo(tmp_path / "src", remote)
    cid = src.commit({"core": weights(1, n=2)}, message="one")
    rm.push(src)
    lazy, _ = rm.clone(remote.url, str(tmp_path / "lazy"), lazy=True, endpoint=remote.endpoint)
    bad = src.read_tree(src.read_commit(cid)["components"]["core"])["tensors"]["w1"]["id"]
    remote.corrupt(bad)
    with pytest.raises(CorruptObject, match=bad):
        lazy.load("HEAD", "core")
    assert not lazy.loose.has(bad)


def _lazy_clone(tmp_path, core: dict):
    """(source repository, its bare directory remote, a lazy clone of it) of one commit of `core`."""
    src = new_repo(tmp_path / "src")
    src.commit({"core": core}, message="one")
    bare = DirRemote(tmp_path)
    rm.push(src, bare.url)
    lazy, _ = rm.clone(bare.url, str(tmp_path / "lazy"), lazy=True)
    return src, bare, lazy


def test_lazy_clone_names_the_remote_when_it_lacks_a_blob(tmp_path):
    src, bare, lazy = _lazy_clone(tmp_path, weights(1, n=2))
    cid = src.head()
    gone = src.read_tree(src.read_commit(cid)["components"]["core"])["tensors"]["w1"]["id"]
    os.unlink(DirectoryTransport(bare.url).objects.path(gone))
    with pytest.raises(mvc.errors.ObjectMissing, match="remote origin does not have it") as e:
        lazy.load("HEAD", "core")
    assert "gc may have collected a branch deleted or rewritten there, or it is damaged" in e.value.message
    assert e.value.hint.startswith("fetch from another copy that has it")  # (not "the remote is damaged")


def test_a_lazy_clone_whose_remote_moved_says_how_to_repoint_it(tmp_path):
    """The hint was `mvc remote remove/add origin`, which drops the lazy mark (fsck then calls
    every unfetched blob damage); pointing the remote's url elsewhere keeps the clone working."""
    core = weights(1, n=2)
    _src, bare, lazy = _lazy_clone(tmp_path, core)
    os.rename(bare.url, str(tmp_path / "moved.mvc"))
    with pytest.raises(mvc.errors.ObjectMissing, match="is gone or is no mvc repository") as e:
        lazy.load("HEAD", "core")
    assert e.value.hint == "if it moved: mvc config remote.origin.url NEW_URL"
    lazy.set_config("remote.origin.url", str(tmp_path / "moved.mvc"))  # (mvc config remote.origin.url ...)
    state = mvc.Repo(lazy.root).load("HEAD", "core")
    assert all(torch.equal(state[k], core[k]) for k in core)


def test_cloning_a_lazy_clone_names_the_blobs_it_has_not_fetched_not_damage(tmp_path):
    _src, bare, lazy = _lazy_clone(tmp_path, weights(1, n=2))
    assert lazy.fsck()["ok"]
    with pytest.raises(mvc.errors.ObjectMissing, match="a lazy clone that has not fetched it") as e:
        rm.clone(lazy.root, str(tmp_path / "again"))
    assert e.value.hint == f"clone from its origin, {bare.url}"  # (no "damaged", no "run it again to resume")


def test_a_lazy_download_holds_the_writers_lock_shared_so_a_short_grace_gc_waits(tmp_path, monkeypatch):
    """gc --grace 0 (writers lock exclusive) deleted the temp file of a blob a lazy load was
    downloading, and the load failed with a raw FileNotFoundError (exit 4 from checkout)."""
    import fcntl
    core = weights(1, n=3)
    _src, bare, lazy = _lazy_clone(tmp_path, core)
    lock_path = [os.path.join(lazy.dir, "writers.lock")]
    seen = []
    real = DirectoryTransport.get_into

    def get_into(self, oid, f, max_size=None):
        with open(lock_path[0], "a") as other:  # what gc would try: the lock exclusively
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        return real(self, oid, f, max_size)
    monkeypatch.setattr(DirectoryTransport, "get_into", get_into)
    state = mvc.Repo(lazy.root).load("HEAD", "core")
    assert all(torch.equal(state[k], core[k]) for k in core)
    assert seen and set(seen) == {"held"}
    # inside a hold of this process's (a paste, a gate) no second descriptor is opened: where flock
    # is emulated by POSIX locks (NFS), closing it would have dropped the outer hold
    again, _ = rm.clone(bare.url, str(tmp_path / "lazy2"), lazy=True)
    opened, seen[:], lock_path[0] = [], [], os.path.join(again.dir, "writers.lock")
    real_open = mvc.files._open_lock_file
    monkeypatch.setattr(mvc.files, "_open_lock_file",  # (the lock's own descriptors; not its gate's)
                        lambda p: (opened.append(p) if p == lock_path[0] else None) or real_open(p))
    with again.writing():
        state = again.load("HEAD", "core")
    assert len(opened) == 1 and set(seen) == {"held"} and all(torch.equal(state[k], core[k]) for k in core)


def test_du_in_a_lazy_clone_counts_unfetched_blobs_by_their_trees_sizes(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    src = new_repo(tmp_path / "src")
    (tmp_path / "hf").mkdir()
    save_file({"a": torch.ones(5, 3), "b": torch.arange(7)}, str(tmp_path / "hf" / "model.safetensors"),
              metadata={"k": "v"})
    (tmp_path / "hf" / "config.json").write_text('{"n": 1}')
    for i in range(3):
        src.commit({"core": weights(i % 2, n=3), "hf": str(tmp_path / "hf")}, message=f"c{i}")
    bare = DirRemote(tmp_path)
    rm.push(src, bare.url)
    lazy, _ = rm.clone(bare.url, str(tmp_path / "lazy"), lazy=True)
    want, du = src.du(), lazy.du()
    held = lambda r: r["object_bytes"] - r["unreachable_bytes"] + r.get("not_fetched_bytes", 0)  # noqa: E731
    assert du["not_fetched"] == lazy.fsck()["not_fetched"] > 0 and "not_fetched" not in want
    assert du["logical_bytes"] == want["logical_bytes"] and held(du) == held(want)  # (it was 8x off)
    assert du["dedup_ratio"] == want["dedup_ratio"] and du["dedup_saved_bytes"] == want["dedup_saved_bytes"]
    lazy.load("HEAD", "core")
    after = mvc.Repo(lazy.root).du()
    assert 0 < after["not_fetched"] < du["not_fetched"] and held(after) == held(want)
    r = invoke(monkeypatch, lazy.root, "du")
    assert r.exit_code == 0 and f"in {after['not_fetched']} reachable blobs (lazy clone" in r.stdout


def test_delete_branch_and_fetch_prunes_it(remote, tmp_path, monkeypatch):
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1)}, message="one")
    repo.create_branch("experiment")
    rm.push(repo)
    rm.push(repo, branch="experiment")
    other, _ = rm.clone(remote.url, str(tmp_path / "other"), endpoint=remote.endpoint)
    assert other.refs.read("refs/remotes/origin/experiment")
    r = invoke(monkeypatch, repo.root, "push", "--delete", "experiment")
    assert r.exit_code == 0, r.output
    assert remote.transport().read_ref("refs/heads/experiment") is None
    assert repo.refs.read("refs/remotes/origin/experiment") is None
    fetched = rm.fetch(other)
    assert fetched["refs"] == {"refs/remotes/origin/experiment": {"old": repo.head(), "new": None}}
    assert other.refs.read("refs/remotes/origin/experiment") is None


def test_pull_fast_forwards_and_certificates_travel(remote, tmp_path, monkeypatch):
    src = new_repo(tmp_path / "src", remote)
    src.commit({"core": weights(1)}, message="one")
    rm.push(src)
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    c2 = src.commit({"core": weights(2)}, message="two")
    data_blob = src.store.put(b"held-out text\n")
    cert = json.dumps({"type": "certificate", "format": 1, "commit": c2, "passed": True,
                       "inputs": {"data": data_blob}}, sort_keys=True).encode()
    cert_id = src.store.put(cert)
    os.makedirs(os.path.join(src.dir, "certs", c2[:2]), exist_ok=True)
    with open(os.path.join(src.dir, "certs", c2[:2], c2[2:]), "w") as f:
        f.write(cert_id + "\n")
    assert rm.push(src)["certificates"] == 1
    assert rm.push(src)["certificates"] == 0  # already there

    r = invoke(monkeypatch, dst.root, "pull", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["status"] == "fast-forward" and doc["new"] == c2 and doc["fetch"]["certificates"] == 1
    dst = mvc.Repo(dst.root)
    assert dst.head() == c2
    assert certindex.read_index(dst.dir, c2) == [cert_id]
    assert dst.store.get(cert_id) == cert and dst.store.get(data_blob) == b"held-out text\n"
    r = invoke(monkeypatch, dst.root, "pull")
    assert r.exit_code == 0 and "up to date" in r.stdout


def test_fetch_completes_history_left_partial_by_an_interrupted_fetch(remote, tmp_path):
    src = new_repo(tmp_path / "src", remote)
    c1 = src.commit({"core": weights(1)}, message="one")
    c2 = src.commit({"core": weights(2)}, message="two")
    rm.push(src)
    dst = new_repo(tmp_path / "dst", remote)
    # an interrupted fetch left the newest commit with its tree and blobs, but not its parent
    tid = src.read_commit(c2)["components"]["core"]
    for oid in [*tree_blob_ids(src.read_tree(tid)), tid, c2]:
        dst.loose.put(src.store.get(oid), oid=oid)
    result = rm.fetch(dst)
    assert result["commits"] == 1 and dst.loose.has(c1)
    assert dst.refs.read("refs/remotes/origin/main") == c2
    assert [c["id"] for c in dst.log("origin/main")] == [c2, c1] and dst.fsck()["ok"]


def test_s3_init_refuses_a_server_that_ignores_conditional_writes(s3_endpoint, aws_env, monkeypatch):
    from mvc.errors import MvcError
    honest = S3Remote(s3_endpoint).transport()
    honest.init("main")
    assert honest.is_repository() and honest.head_target() == "refs/heads/main"
    lax = S3Remote(s3_endpoint).transport()
    real = lax.client.put_object
    monkeypatch.setattr(lax.client, "put_object",  # a server that drops If-None-Match
                        lambda **kw: real(**{k: v for k, v in kw.items() if k != "IfNoneMatch"}))
    with pytest.raises(MvcError, match="ignores conditional writes"):
        lax.init("main")
    assert lax.head_target() is None  # refused before HEAD was written
    with pytest.raises(MvcError, match="ignores conditional writes"):  # the next push checked nothing (the
        lax.init("main")                                               # config was there), and moved refs
    assert lax.head_target() is None
    lax2 = S3Remote(s3_endpoint).transport()  # honours If-None-Match, drops If-Match: two concurrent
    real2 = lax2.client.put_object  # pushes both "succeeded" and one commit was lost
    monkeypatch.setattr(lax2.client, "put_object",
                        lambda **kw: real2(**{k: v for k, v in kw.items() if k != "IfMatch"}))
    with pytest.raises(MvcError, match=r"ignores conditional writes: If-Match"):
        lax2.init("main")
    assert lax2.head_target() is None


@pytest.mark.parametrize("inner", ["refs/tags", "objects/ab", "refs/heads/x"])
def test_no_remote_is_made_inside_another_remotes_layout(remote, tmp_path, inner):
    """A push to OUTER/refs/tags made a remote there: OUTER then listed a tag refs/heads/main whose
    commit it lacked, and every clone of OUTER failed as "damaged"."""
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1)}, message="one")
    rm.push(repo)
    rm.add_remote(repo, "nested", f"{remote.url}/{inner}", remote.endpoint)
    with pytest.raises(mvc.errors.BadInput, match="lies inside the mvc repository at"):
        rm.push(repo, "nested")
    rm.add_remote(repo, "beside", f"{remote.url}/project", remote.endpoint)  # beside the layout: fine
    rm.push(repo, "beside")
    for url in (remote.url, f"{remote.url}/project"):
        clone, _ = rm.clone(url, str(tmp_path / f"copy{len(url)}"), endpoint=remote.endpoint)
        assert clone.head() == repo.head() and clone.fsck()["ok"]
    assert set(remote.transport().list_refs()) == {"refs/heads/main"}


def test_s3_credentials_that_are_incomplete_are_a_clear_error(tmp_path, aws_env, s3_endpoint, monkeypatch):
    """Half a key pair or a missing profile crashed (exit 4) while the S3 client was made."""
    remote = S3Remote(s3_endpoint)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(mvc.MvcError, match="credentials for .* are incomplete"):
        open_transport(remote.url, remote.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(mvc.MvcError, match="credentials for .* are incomplete"):
        open_transport(remote.url, remote.endpoint)


def test_s3_credentials_changed_in_a_running_process_are_used(aws_env, s3_endpoint, monkeypatch):
    """One boto3 session per process kept the credentials it first read: a training process pushing
    after each checkpoint failed once its keys were rotated, until it restarted (h104)."""
    import mvc.transport_s3 as s3mod
    remote = S3Remote(s3_endpoint)
    first = open_transport(remote.url, remote.endpoint).client._request_signer._credentials.access_key
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
    t = open_transport(remote.url, remote.endpoint)
    assert first != "rotated" and t.client._request_signer._credentials.access_key == "rotated"
    assert t.client.meta.service_model is not None and s3mod._LOADER is not None  # (the shared loader,
    for _ in range(3):                                                                # whose search paths
        open_transport(remote.url, remote.endpoint)                                   # each session grew)
    assert len(s3mod._LOADER.search_paths) == len(set(s3mod._LOADER.search_paths))
    from botocore.exceptions import ClientError
    expired = ClientError({"Error": {"Code": "ExpiredToken", "Message": "x"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetObject")
    with pytest.raises(mvc.CredentialsRefused, match="the AWS credentials were refused while reading on .*: "
                                                     "ExpiredToken") as e:
        t._fail(expired, "reading")
    assert "renew them" in e.value.hint


def test_a_lazy_clone_in_a_long_process_signs_with_credentials_renewed_since_its_first_load(tmp_path, aws_env,
                                                                                             s3_endpoint, monkeypatch):
    """A lazy clone's transport was kept for the Repo's life: a training process lazy-loading after
    its credentials rotated failed with the refused ones until it restarted. The retry starts the
    download afresh (what arrived before the refusal is dropped: h109 05), and new credentials that
    are refused too are said, not renewed again for every blob (h109 04)."""
    from botocore.exceptions import ClientError
    import mvc.transport as tmod
    from mvc.transport_s3 import S3Transport
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    first = src.commit({"a": weights(1, n=2)}, message="one")
    second = src.commit({"a": weights(2, n=2)}, message="two")
    rm.push(src)
    lazy, _ = rm.clone(remote.url, str(tmp_path / "lazy"), endpoint=remote.endpoint, lazy=True)
    assert torch.equal(lazy.load(first, "a")["w0"], weights(1, n=2)["w0"])  # (the transport is open now)
    get_into = S3Transport.get_into
    reads = []
    opened = []
    open_configured_remote = tmod.open_configured_remote
    monkeypatch.setattr(tmod, "open_configured_remote", lambda *a, **k: opened.append(1) or open_configured_remote(*a, **k))

    def refusing_old_keys(t, oid, f, max_size=None):
        reads.append(oid)
        if t.client._request_signer._credentials.access_key != "rotated":
            f.write(b"part of a body")  # (a read that broke off, resumed after the token expired)
            t._fail(ClientError({"Error": {"Code": "ExpiredToken", "Message": "x"},
                                 "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetObject"), f"reading {oid[:12]}")
        return get_into(t, oid, f, max_size)
    monkeypatch.setattr(S3Transport, "get_into", refusing_old_keys)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
    assert torch.equal(lazy.load(second, "a")["w1"], weights(2, n=2)["w1"])
    assert len(opened) == 1 and max(collections.Counter(reads).values()) == 2  # (refused, then read whole once)
    third = src.commit({"a": weights(3, n=2)}, message="three")
    rm.push(src)
    rm.fetch(lazy)
    reads.clear()
    opened.clear()

    def denied(t, oid, f, max_size=None):  # (refused again with new ones: said, not retried forever)
        reads.append(oid)
        t._fail(ClientError({"Error": {"Code": "AccessDenied", "Message": "x"},
                             "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject"), "reading")
    monkeypatch.setattr(S3Transport, "get_into", denied)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # (the rotation has not reached this process yet)
    with pytest.raises(mvc.MvcError, match="not fetched yet .* failed: access denied"):
        lazy.load(third, "a")
    assert len(opened) == 1 and len(reads) <= 6
    monkeypatch.setattr(S3Transport, "get_into", refusing_old_keys)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")  # (now it has: read again, but not at once (h110 04))
    with pytest.raises(mvc.MvcError, match="not fetched yet .* failed: the AWS credentials were refused"):
        lazy.load(third, "a")
    monkeypatch.setattr(tmod, "RENEW_AGAIN_S", 0.0)  # (as if that long had passed)
    assert torch.equal(lazy.load(third, "a")["w0"], weights(3, n=2)["w0"]) and len(opened) == 2

def test_an_invalid_s3_bucket_name_is_not_called_worth_a_retry(tmp_path, aws_env, s3_endpoint):
    """botocore refuses the name before sending anything; mvc hinted "run the command again to resume"."""
    with pytest.raises(mvc.MvcError, match="names no valid bucket: 'Bad_Bucket!'") as e:
        open_transport("s3://Bad_Bucket!/models", s3_endpoint).require_repository()
    assert "resume" not in e.value.hint and "3-63 lower-case letters" in e.value.hint


def test_a_failed_multipart_upload_is_an_s3_error_not_a_bug(tmp_path, aws_env, s3_endpoint, monkeypatch):
    """boto3 wraps a multipart upload's failure in S3UploadFailedError, which was not caught:
    pushing a loose object of 64 MiB or more to a failing S3 was exit 4 with a traceback."""
    import mvc.transport_s3 as s3mod
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError
    t = S3Remote(s3_endpoint).transport()
    big = tmp_path / "big"
    big.write_bytes(b"x" * 10)
    monkeypatch.setattr(s3mod, "MULTIPART_BYTES", 5)

    def fails(code, status):
        def upload(*_a, **_k):
            try:
                raise ClientError({"Error": {"Code": code, "Message": code},
                                   "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart")
            except ClientError as e:  # (boto3 raises it without `from`: the ClientError is its context)
                raise S3UploadFailedError(f"Failed to upload: {e}")
        return upload
    monkeypatch.setattr(t.client, "upload_file", fails("SlowDown", 503))
    with pytest.raises(mvc.MvcError, match="S3 error while writing object") as e:
        t.put_file("a" * 64, str(big))
    assert "run the command again to resume" in e.value.hint
    monkeypatch.setattr(t.client, "upload_file", fails("AccessDenied", 403))
    with pytest.raises(mvc.MvcError, match="access denied while writing object") as e:  # (mapped as the
        t.put_file("a" * 64, str(big))                                                   # ClientError is)
    assert "credentials" in e.value.hint


class LostAnswers(Counting):
    """A transport whose ref updates land but answer as conflicts (a 500 or a reset after the write,
    retried by the client with the same condition, which then fails against its own result)."""

    def update_ref(self, ref, new, expected, replace_damaged=False, **kw):
        from mvc.errors import RefConflict
        self.inner.update_ref(ref, new, expected, replace_damaged, **kw)
        raise RefConflict(f"{ref} on the remote changed meanwhile", "fetch and try again")


def test_a_push_whose_ref_writes_landed_but_answered_as_conflicts_is_pushed(tmp_path, remote):
    """The branch held the pushed commit, yet push said 'rejected: another push won' (exit 3), moved
    no tracking ref and pushed no tag; push --delete said the branch moved; a tag that landed was
    reported as differing (with our own id)."""
    repo = new_repo(tmp_path / "r", remote)
    head = repo.commit({"m": weights(0)}, message="one")
    repo.tag("v1")
    result = rm.push(repo, transport=LostAnswers(remote.transport()))
    assert result["status"] == "new branch" and result["tags"] == ["v1"] and not result["tags_skipped"]
    assert repo.refs.read("refs/remotes/origin/main") == head
    assert remote.transport().list_refs() == {"refs/heads/main": head, "refs/tags/v1": head}
    repo.create_branch("side")
    rm.push(repo, branch="side")
    assert rm.push(repo, branch="side", delete=True, transport=LostAnswers(remote.transport()))["status"] == "deleted"
    assert "refs/heads/side" not in remote.transport().list_refs()


def test_a_push_that_cannot_read_back_a_ref_after_a_lost_answer_says_it_cannot_tell(tmp_path, remote):
    """When the read back failed too (the same network fault), push said another push won and the
    branch did not move, though it held our commit."""
    class Unreadable(LostAnswers):
        def read_ref(self, ref):
            raise mvc.MvcError("cannot reach the remote", "run the command again to resume")
    repo = new_repo(tmp_path / "r", remote)
    repo.commit({"m": weights(0)}, message="one")
    with pytest.raises(mvc.MvcError, match="cannot tell whether the write of refs/heads/main on origin landed") as e:
        rm.push(repo, transport=Unreadable(remote.transport()))
    assert "another push won" not in str(e.value) and "mvc fetch origin shows where it stands" in e.value.hint


def test_the_tracking_ref_follows_the_remote_branch_whatever_fails_after_it(tmp_path, remote):
    """A file-system error (or Ctrl-C) writing a tag after the branch had moved left origin/main
    behind: only an MvcError moved it."""
    class TagsFail(Counting):
        def update_ref(self, ref, new, expected, replace_damaged=False, **kw):
            if ref.startswith("refs/tags/"):
                raise PermissionError(13, "Permission denied", ref)
            return self.inner.update_ref(ref, new, expected, replace_damaged, **kw)
    repo = new_repo(tmp_path / "r", remote)
    head = repo.commit({"m": weights(0)}, message="one")
    repo.tag("v1")
    with pytest.raises(mvc.MvcError, match="permission denied"):  # (push names what moved before it)
        rm.push(repo, transport=TagsFail(remote.transport()))
    assert repo.refs.read("refs/remotes/origin/main") == head


def test_a_tracking_ref_that_cannot_be_moved_stops_no_tag_or_certificate(tmp_path, remote, monkeypatch):
    """Once the tracking ref moved before the tags, a full disk writing it stopped the push there: the
    tag was never sent."""
    from mvc.refs import RefStore
    repo = new_repo(tmp_path / "r", remote)
    head = repo.commit({"m": weights(0)}, message="one")
    repo.tag("v1")
    real = RefStore.update

    def full(self, ref, *a, **k):
        if ref.startswith("refs/remotes/"):
            raise OSError(28, "No space left on device")
        return real(self, ref, *a, **k)
    monkeypatch.setattr(RefStore, "update", full)
    with pytest.warns(UserWarning, match="pushed, but refs/remotes/origin/main was not moved .* no space left"):
        result = rm.push(repo)
    assert result["tags"] == ["v1"] and remote.transport().list_refs()["refs/tags/v1"] == head


def test_a_conditional_write_answered_409_is_tried_again(tmp_path, aws_env, s3_endpoint, monkeypatch):
    """S3 answers 409 ConditionalRequestConflict while another conditional write on the key is in
    flight, and asks for a retry; mvc called it 'another push won' without moving the ref."""
    import mvc.transport_s3 as s3mod
    from botocore.exceptions import ClientError
    from mvc.transport import ABSENT
    monkeypatch.setattr(s3mod.time, "sleep", lambda s: None)
    t = S3Remote(s3_endpoint).transport()
    real, calls = t.client.put_object, []

    def busy_once(**kw):
        calls.append(kw["Key"])
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "ConditionalRequestConflict", "Message": "busy"},
                               "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")
        return real(**kw)
    monkeypatch.setattr(t.client, "put_object", busy_once)
    t.cas_file("refs/heads/main", b"a" * 64 + b"\n", ABSENT)
    assert len(calls) == 2 and t.read_file("refs/heads/main")[0] == b"a" * 64 + b"\n"


def test_fetch_keeps_the_tracking_ref_of_a_remote_ref_it_cannot_read(tmp_path, remote):
    """A remote ref holding no id (damaged there, or read short) was left out of the listing, and
    fetch took it for deleted: it pruned origin/side, so commits only it reached became garbage."""
    src = new_repo(tmp_path / "src", remote)
    src.commit({"m": weights(0)}, message="one")
    side = src.commit({"m": weights(1)}, message="side", branch="side")
    rm.push(src)
    rm.push(src, branch="side")
    work = rm.clone(remote.url, str(tmp_path / "work"), endpoint=remote.endpoint)[0]
    assert work.refs.read("refs/remotes/origin/side") == side
    _write_remote_file(remote, "refs/heads/side", b"garbage\n")
    with pytest.warns(UserWarning, match="refs/heads/side"):
        result = rm.fetch(mvc.Repo(work.root))
    assert "refs/remotes/origin/side" not in result["refs"]
    assert mvc.Repo(work.root).refs.read("refs/remotes/origin/side") == side


def test_a_request_that_times_out_is_not_retried_on_top_of_botocores_retries(tmp_path, aws_env, s3_endpoint,
                                                                              monkeypatch):
    """A read timeout before any response counted as a body that broke off: 5 requests on top of
    botocore's 6 tries each, 30 in all (about an hour at the 120 s read timeout) for one object."""
    from botocore.exceptions import ReadTimeoutError
    t = S3Remote(s3_endpoint).transport()
    calls = []

    def stuck(**kw):
        calls.append(kw["Key"])
        raise ReadTimeoutError(endpoint_url=s3_endpoint)
    monkeypatch.setattr(t.client, "get_object", stuck)
    with pytest.raises(mvc.MvcError, match="cannot reach S3"):
        t.get("a" * 64)
    with pytest.raises(mvc.MvcError, match="cannot reach S3") as e:
        t.read_file("HEAD")
    assert len(calls) == 2
    assert "a server other than AWS needs one: --endpoint URL of clone" in e.value.hint  # (a clone: no remote yet)


def test_an_error_after_the_remote_branch_moved_says_so_and_moves_the_tracking_ref(tmp_path, remote, monkeypatch):
    """A certificate index write that failed after the branch had moved there said only 'S3 error
    while updating certs/...' and left origin/main behind."""
    repo = new_repo(tmp_path / "r", remote)
    head = repo.commit({"m": weights(0)}, message="one")
    blob = repo.store.put(b"held-out data")
    cert = canonical_json({"type": "certificate", "format": 1, "commit": head, "base": None, "passed": True,
                           "checks": [{"name": "x", "kind": "exact-logits", "status": "passed", "params": {},
                                       "figures": {}, "thresholds": {}, "inputs": {"data": blob}}],
                           "time": "2026-01-01T00:00:00Z", "config": None, "environment": {}})
    certindex.attach(repo.dir, head, [repo.store.put(cert, oid=hash_bytes(cert))])
    t = remote.transport()

    def fails(*_a, **_k):
        raise mvc.MvcError("S3 error while updating certs", "run the command again to resume")
    with monkeypatch.context() as m:  # (undo() would drop the fixtures' credentials too)
        m.setattr(t, "add_to_cert_index", fails)
        with pytest.raises(mvc.MvcError, match=f"the push had moved main on origin to {head[:12]}, which stays"):
            rm.push(repo, transport=t)
    assert repo.refs.read("refs/remotes/origin/main") == head
    rm.push(mvc.Repo(repo.root))  # the rest goes
    assert certindex.read_index(rm.clone(remote.url, str(tmp_path / "c"), endpoint=remote.endpoint)[0].dir, head)


class DamagedOnce(Counting):
    """A transport whose first read of each object arrives with one byte flipped (in transit)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seen = set()

    def _flip(self, oid, data: bytes) -> bytes:
        if oid in self.seen or not data:
            return data
        self.seen.add(oid)
        return bytes([data[0] ^ 1]) + data[1:]

    def get(self, oid, max_size=None):
        return self._flip(oid, self.inner.get(oid, max_size=max_size))

    def get_into(self, oid, f, max_size=None):
        data = self._flip(oid, self.inner.get(oid, max_size=max_size))
        f.write(data)
        return len(data)


@pytest.mark.parametrize("lazy", [False, True])
def test_an_object_damaged_in_transit_once_is_read_again_not_called_damage_there(tmp_path, remote, lazy):
    """One flipped byte in a response (no checksum header) stopped the clone: 'the remote is damaged
    (mvc push --repair)', though the remote's copy was good."""
    src = new_repo(tmp_path / "src", remote)
    head = src.commit({"m": weights(0)}, message="one")
    rm.push(src)
    clone = rm.clone(remote.url, str(tmp_path / "c"), lazy=lazy, endpoint=remote.endpoint,
                     transport=DamagedOnce(remote.transport()))[0]
    if lazy:
        store = next(s for s in clone.store.stores if hasattr(s, "_transport"))
        store._transport = DamagedOnce(remote.transport())
    assert torch.equal(clone.load(head, "m")["w0"], weights(0)["w0"]) and clone.fsck()["ok"]


def test_retry_hints_only_where_a_retry_can_help(tmp_path):
    """A 501 NotImplemented was hinted 'run the command again to resume', and a clone of a remote
    lacking an object 'run the same mvc clone again to resume', which alone meets it again."""
    from botocore.exceptions import ClientError
    from mvc.transport_s3 import _transient

    def error(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    assert _transient(error("SlowDown", 503)) and _transient(error("InternalError", 500))
    assert not _transient(error("NotImplemented", 501)) and not _transient(error("AccessDenied", 403))
    src = new_repo(tmp_path / "src")
    src.commit({"m": weights(0)}, message="one")
    remote = str(tmp_path / "remote.mvc")
    rm.push(src, remote)
    blob = tree_blob_ids(src.tree("HEAD", "m"))[0]
    path = DirectoryTransport(remote).objects.path(blob)
    os.chmod(path, 0o644)
    os.unlink(path)
    with pytest.raises(mvc.MvcError) as e:
        rm.clone(remote, str(tmp_path / "c"))
    assert "once the remote is repaired, the same mvc clone resumes" in e.value.hint
    assert "run the same mvc clone again" not in e.value.hint


# -- robustness: packed sources, clashing and damaged refs, foreign data, repair ---------------
def _write_remote_file(remote, name, data: bytes):
    if remote.kind == "dir":
        path = os.path.join(remote.url, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    else:
        remote.client.put_object(Bucket=remote.bucket, Key=f"team/models/{name}", Body=data)


def test_listing_a_remote_reads_its_refs_several_at_once_and_keeps_their_order(remote, tmp_path, monkeypatch):
    """Refs were read one at a time: on S3 each is a request, so a remote of 1,000 tags took 1,000
    round trips before a fetch began. A damaged one is still skipped with a warning."""
    import threading
    import time
    from mvc import transport as tmod
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1, n=1)}, message="one")
    for i in range(12):
        repo.tag(f"v{i:02d}")
    rm.push(repo)
    _write_remote_file(remote, "refs/tags/v99", b"junk\n")
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    read_listed = tmod.Transport.read_listed

    def slow(self, name, version):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.02)  # (a request's latency)
        try:
            return read_listed(self, name, version)
        finally:
            with lock:
                state["now"] -= 1
    monkeypatch.setattr(tmod.Transport, "read_listed", slow)
    with pytest.warns(UserWarning, match="refs/tags/v99"):
        refs = remote.transport().list_refs()
    assert list(refs) == ["refs/heads/main"] + [f"refs/tags/v{i:02d}" for i in range(12)]
    assert set(refs.values()) == {cid} and state["most"] > 1


def test_clone_of_a_packed_repository_is_byte_exact(tmp_path):
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    ids = [src.commit({"core": weights(i)}, message=f"c{i}") for i in range(3)]
    pack(src, full=True)
    assert not list(src.loose.ids())  # everything packed: a loose-only reader would see nothing
    dst, _ = rm.clone(src.root, str(tmp_path / "copy"))
    for rev in ids:
        assert checkout_bytes(dst, rev, tmp_path / f"d{rev[:6]}") == checkout_bytes(src, rev, tmp_path / f"s{rev[:6]}")
    assert dst.fsck()["ok"]


def test_push_refuses_a_branch_name_clashing_with_a_remote_one(remote, tmp_path):
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1)}, message="one")
    repo.create_branch("a")
    repo.create_branch("b/c")
    rm.push(repo, branch="a")
    repo.delete_branch("a")
    repo.create_branch("a/x")
    with pytest.raises(mvc.errors.BadName, match="clashes with refs/heads/a/x|has refs/heads/a,"):
        rm.push(repo, branch="a/x")
    rm.push(repo, branch="b/c")
    assert set(remote.transport().list_refs()) == {"refs/heads/a", "refs/heads/b/c"}


def test_fetch_skips_a_remote_branch_that_cannot_exist_beside_another(tmp_path, aws_env, s3_endpoint):
    remote = S3Remote(s3_endpoint)  # a directory cannot hold both main and main/sub; S3 can
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1)}, message="one")
    rm.push(repo)
    _write_remote_file(remote, "refs/heads/main/sub", (cid + "\n").encode())
    other = new_repo(tmp_path / "other", remote)
    with pytest.warns(UserWarning, match="skipped remote branch main/sub"):
        rm.fetch(other)
    assert other.refs.read("refs/remotes/origin/main") == cid


def test_a_remote_ref_naming_a_tree_is_skipped_not_a_block_on_every_clone_fetch_and_push(remote, tmp_path):
    """A damaged remote ref holding a tree's id failed every clone, fetch and push ("object .. is
    a tree, not a commit"), as a ref holding no id at all does not: it is skipped with a warning."""
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1, n=2)}, message="one")
    rm.push(repo)
    tree = repo.read_commit(cid)["components"]["core"]
    _write_remote_file(remote, "refs/heads/junk", (tree + "\n").encode())
    with pytest.warns(UserWarning, match=f"skipped remote ref refs/heads/junk on origin: object {tree[:12]} is a tree"):
        clone, info = rm.clone(remote.url, str(tmp_path / "clone"), endpoint=remote.endpoint)
    assert info["branch"] == "main" and clone.refs.list("refs/remotes/") == {"refs/remotes/origin/main": cid}
    cid2 = repo.commit({"core": weights(2, n=2)}, message="two")
    assert rm.push(repo)["new"] == cid2  # (the tree is here too: it is no commit either)
    _write_remote_file(remote, "refs/tags/junk", (tree + "\n").encode())
    with pytest.warns(UserWarning) as caught:
        fetched = rm.fetch(clone)
    assert fetched["refs"] == {"refs/remotes/origin/main": {"old": cid, "new": cid2}} and clone.fsck()["ok"]
    said = sorted(str(w.message) for w in caught if "skipped remote ref" in str(w.message))
    assert len(said) == 2 and said[0].startswith("skipped remote ref refs/heads/junk")
    assert said[0].endswith("push --force there replaces it)")  # (a tag: push moves none, --force or not)
    assert said[1].endswith("a push never moves a tag there: remove refs/tags/junk from it by hand)")


def test_a_remote_ref_naming_an_object_larger_than_any_commit_is_skipped(remote, tmp_path, monkeypatch):
    """A remote branch naming a big blob (over the size a commit may have) failed every fetch and
    clone, as a ref naming a tree did: it is skipped with a warning, unread."""
    from mvc.remote import fetching
    monkeypatch.setattr(fetching, "MAX_META_BYTES", 16 << 10)  # (64 MiB in truth: a tiny stand-in)
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1, n=2), "big": {"w": torch.arange(8192, dtype=torch.float32)}}, message="one")
    rm.push(repo)
    blob = repo.read_tree(repo.read_commit(cid)["components"]["big"])["tensors"]["w"]["id"]
    assert len(repo.store.get(blob)) > 16 << 10
    _write_remote_file(remote, "refs/heads/junk", (blob + "\n").encode())
    with pytest.warns(UserWarning, match=f"skipped remote ref refs/heads/junk on origin: object {blob[:12]} is "
                                         "larger than any commit"):
        clone, info = rm.clone(remote.url, str(tmp_path / "clone"), endpoint=remote.endpoint)
    assert clone.refs.list("refs/remotes/") == {"refs/remotes/origin/main": cid} and clone.fsck()["ok"]


def test_a_remote_ref_naming_a_missing_object_is_skipped_not_a_block_on_every_clone(remote, tmp_path):
    """A remote half-copied (refs before objects) had a branch naming a commit it lacks: every clone
    and fetch failed (exit 3, 'run the same mvc clone again to resume', which never helps)."""
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1, n=2)}, message="one")
    rm.push(repo)
    _write_remote_file(remote, "refs/heads/junk", ("ab" * 32 + "\n").encode())
    with pytest.warns(UserWarning, match="skipped remote ref refs/heads/junk on origin: object abababababab is not there"):
        clone, info = rm.clone(remote.url, str(tmp_path / "clone"), endpoint=remote.endpoint)
    assert clone.refs.list("refs/remotes/") == {"refs/remotes/origin/main": cid} and clone.fsck()["ok"]
    cid2 = repo.commit({"core": weights(2, n=2)}, message="two")
    rm.push(repo)
    with pytest.warns(UserWarning, match="skipped remote ref refs/heads/junk"):
        assert rm.fetch(clone)["refs"] == {"refs/remotes/origin/main": {"old": cid, "new": cid2}}



def test_a_skipped_ref_s_missing_commit_that_a_branch_needs_as_a_parent_fails_the_clone(remote, tmp_path):
    """The branch naming the lost commit was skipped, and its child's history then took the lost
    commit as seen: the clone exited 0 with a history its log, fsck and gc could not read."""
    from mvc.transport import DirectoryTransport
    repo = new_repo(tmp_path / "src", remote)
    lost = repo.commit({"core": weights(1, n=2)}, message="one")
    repo.create_branch("old")
    repo.commit({"core": weights(2, n=2)}, message="two")
    rm.push(repo)
    rm.push(repo, branch="old")
    if remote.kind == "dir":
        path = DirectoryTransport(remote.url).objects.path(lost)
        os.chmod(path, 0o644)
        os.unlink(path)
    else:
        remote.client.delete_object(Bucket=remote.bucket, Key=f"team/models/objects/{lost[:2]}/{lost[2:]}")
    with pytest.raises(mvc.errors.ObjectMissing, match=f"commit {lost} on remote .* is the parent of commits"):
        rm.clone(remote.url, str(tmp_path / "clone"), endpoint=remote.endpoint)


def test_a_branch_name_freed_on_the_remote_can_be_taken_by_a_folder_and_back(remote, tmp_path):
    """Deleting a/b there left the folder a/ (a directory remote): pushing `a` failed. A fetch made
    origin/a before it pruned origin/a/b (skipped as a clash, then "no branch a"). A push of a/b
    beside a stale origin/a failed after moving the remote branch, saying nothing moved."""
    src = new_repo(tmp_path / "src", remote)
    cid = src.commit({"core": weights(1, n=2)}, message="one")
    src.create_branch("a/b")
    rm.push(src)
    rm.push(src, branch="a/b")
    other, _ = rm.clone(remote.url, str(tmp_path / "other"), endpoint=remote.endpoint)
    rm.push(src, branch="a/b", delete=True)
    src.delete_branch("a/b")
    src.create_branch("a")
    assert rm.push(src, branch="a")["status"] == "new branch"
    fetched = rm.fetch(other)
    assert fetched["refs"] == {"refs/remotes/origin/a/b": {"old": cid, "new": None},
                               "refs/remotes/origin/a": {"old": None, "new": cid}}
    third, _ = rm.clone(remote.url, str(tmp_path / "third"), endpoint=remote.endpoint)  # tracks origin/a
    rm.push(src, branch="a", delete=True)
    third.create_branch("a/b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rm.push(third, branch="a/b")["status"] == "new branch"
    assert third.refs.list("refs/remotes/origin/") == {"refs/remotes/origin/main": cid, "refs/remotes/origin/a/b": cid}
    assert remote.transport().list_refs() == {"refs/heads/main": cid, "refs/heads/a/b": cid}


def test_tags_that_clash_with_a_tag_there_are_skipped_not_a_crash_or_a_blocked_fetch(remote, tmp_path):
    """A tag `rel/1` pushed beside a tag `rel` there: exit 4 on a directory remote (after the
    branch moved), both kept on S3, after which every clone and fetch failed. A local tag `rel`
    blocked every fetch of a remote holding `rel/1`."""
    src = new_repo(tmp_path / "src", remote)
    cid = src.commit({"core": weights(1, n=2)}, message="one")
    src.tag("rel")
    rm.push(src)
    src.delete_tag("rel")
    src.tag("rel/1")
    cid2 = src.commit({"core": weights(2, n=2)}, message="two")
    with pytest.warns(UserWarning, match="tag rel/1 not pushed: the remote has refs/tags/rel, which clashes"):
        pushed = rm.push(src)
    assert pushed["new"] == cid2 and pushed["tags"] == [] and pushed["tags_skipped"] == {"rel/1": None}
    assert remote.transport().list_refs() == {"refs/heads/main": cid2, "refs/tags/rel": cid}
    here = new_repo(tmp_path / "here", remote)  # a remote with `rel/1`, a repository with a tag `rel`
    here.commit({"core": weights(3, n=2)}, message="mine")
    here.tag("rel/1")
    with pytest.warns(UserWarning, match="skipped remote tag rel: .*rel/1"):
        fetched = rm.fetch(here)
    assert fetched["refs"] == {"refs/remotes/origin/main": {"old": None, "new": cid2}} and fetched["tags"] == {}

def test_a_damaged_remote_ref_blocks_nothing_else_and_push_can_replace_or_delete_it(remote, tmp_path):
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1)}, message="one")
    repo.create_branch("side")
    rm.push(repo)
    rm.push(repo, branch="side")
    _write_remote_file(remote, "refs/heads/main", b"garbage\n")
    other = new_repo(tmp_path / "other", remote)
    with pytest.warns(UserWarning, match="refs/heads/main holds 'garbage'"):
        rm.fetch(other)  # the intact branch still comes
    assert other.refs.read("refs/remotes/origin/side") == cid
    with pytest.warns(UserWarning), pytest.raises(CorruptObject, match="--force to replace it"):
        rm.push(repo)
    with pytest.warns(UserWarning):
        assert rm.push(repo, force=True)["new"] == cid
    assert remote.transport().read_ref("refs/heads/main") == cid
    _write_remote_file(remote, "refs/heads/side", b"garbage\n")
    rm.push(repo, branch="side", delete=True)
    assert "refs/heads/side" not in remote.transport().list_refs()


def test_first_push_refuses_a_location_holding_other_data(remote, tmp_path):
    _write_remote_file(remote, "readme.txt", b"not an mvc remote")
    repo = new_repo(tmp_path / "src", remote)
    repo.commit({"core": weights(1)}, message="one")
    with pytest.raises(mvc.errors.BadInput, match="not empty and is not an mvc repository"):
        rm.push(repo)


@pytest.mark.parametrize("url,match", [("", "empty"), ("file://otherhost/tmp/x", "on this machine")])
def test_empty_and_remote_host_file_urls_are_refused(tmp_path, url, match):
    repo = new_repo(tmp_path / "src")
    with pytest.raises(mvc.errors.BadInput, match=match):
        rm.add_remote(repo, "r", url)


def test_remote_names_with_control_characters_are_refused(tmp_path):
    repo = new_repo(tmp_path / "src")
    with pytest.raises(mvc.errors.BadName):
        rm.add_remote(repo, "a\nb", str(tmp_path / "r"))
    assert mvc.Repo(repo.root).config.sections() == ["core"]


def test_gc_refuses_to_run_while_a_reachable_object_is_missing(tmp_path):
    repo = new_repo(tmp_path / "src")
    repo.commit({"core": weights(1)}, message="one")
    head = repo.commit({"core": weights(2)}, message="two")
    tree = repo.read_commit(head)["components"]["core"]
    os.unlink(repo.loose.path(head))
    repo._cache.clear()
    with pytest.raises(CorruptObject, match="reachable objects are missing"):
        repo.gc(grace_s=0)
    assert repo.loose.has(tree)  # what the missing commit refers to is still there


def test_fsck_repair_from_restores_damaged_loose_and_packed_objects(tmp_path, monkeypatch):
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    ids = [src.commit({"core": weights(i)}, message=f"c{i}") for i in range(3)]
    backup, _ = rm.clone(src.root, str(tmp_path / "backup"))
    blob = tree_blob_ids(src.read_tree(src.read_commit(ids[0])["components"]["core"]))[0]
    flip_byte(src.loose.path(blob), 200)
    r = invoke(monkeypatch, src.root, "fsck", "--repair-from", backup.root, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["repair"]["restored"] == [blob]
    pack(mvc.Repo(src.root), full=True)
    pack_file = next(p for p in os.listdir(os.path.join(src.dir, "objects", "pack")) if p.endswith(".pack"))
    flip_byte(os.path.join(src.dir, "objects", "pack", pack_file), 400)
    assert not mvc.Repo(src.root).fsck()["ok"]
    r = invoke(monkeypatch, src.root, "fsck", "--repair-from", backup.root)
    assert r.exit_code == 0, r.output
    fixed = mvc.Repo(src.root)
    assert fixed.fsck()["ok"]
    for rev in ids:
        assert checkout_bytes(fixed, rev, tmp_path / f"f{rev[:6]}") == checkout_bytes(backup, rev, tmp_path / f"b{rev[:6]}")


def test_fsck_repair_from_restores_a_lost_history_of_any_depth(tmp_path, monkeypatch):
    """Repair went in at most 64 rounds (a restored commit reveals its parent): a clone that lost a
    pack holding 80 commits was restored in part, exit 1 (h104)."""
    import glob

    from mvc.pack_write import pack
    origin = new_repo(tmp_path / "origin")
    for i in range(70):
        origin.commit({"h": {"w": torch.full((2,), float(i))}}, message=f"step {i}")
    src, _ = rm.clone(origin.root, str(tmp_path / "src"))  # (its reflog names the tip alone)
    backup = origin
    pack(src, full=True, grace_s=0)
    for f in glob.glob(os.path.join(src.dir, "objects", "pack", "pack-*")):
        os.remove(f)  # (the pack is lost)
    r = invoke(monkeypatch, src.root, "fsck", "--repair-from", backup.root, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and len(doc["repair"]["restored"]) >= 70 * 3  # (a commit, a tree and a blob each)
    fixed = mvc.Repo(src.root)
    assert fixed.fsck()["ok"] and len(fixed.log()) == 70


def _pushed_then_tree_lost(tmp_path):
    """(a repository pushed to a directory remote, that remote's path, the id of the tree it then lost)."""
    src = new_repo(tmp_path / "src")
    cid = src.commit({"core": weights(1, n=2)}, message="one")
    remote = str(tmp_path / "remote.mvc")
    rm.push(src, remote)
    tid = src.read_commit(cid)["components"]["core"]
    os.chmod(src.loose.path(tid), 0o644)
    os.unlink(src.loose.path(tid))
    return src, remote, tid


def test_repair_refuses_a_commit_or_tree_over_the_size_limit_unread(tmp_path, monkeypatch):
    """Repair read a lost tree from the remote with no bound (fetch refuses one over 64 MiB unread):
    a damaged remote holding a huge file under that id was read whole into memory."""
    from mvc.remote import repairing
    from mvc.transport import DirectoryTransport
    monkeypatch.setattr(repairing, "MAX_META_BYTES", 4096)  # (64 MiB in truth: a tiny stand-in)
    src, remote, tid = _pushed_then_tree_lost(tmp_path)
    there = DirectoryTransport(remote).objects.path(tid)
    os.chmod(there, 0o644)
    with open(there, "wb") as f:
        f.truncate(1 << 20)
    asked = []
    get = DirectoryTransport.get
    monkeypatch.setattr(DirectoryTransport, "get", lambda self, oid, max_size=None: (
        asked.append(max_size), get(self, oid, max_size))[1])
    failed = rm.repair(src, remote)["failed"]
    assert tid in failed and asked and all(a is not None and a <= 4096 for a in asked)


def test_fsck_repair_from_a_remote_it_cannot_read_says_why(tmp_path, monkeypatch):
    """A remote that could not be read (the network, credentials, a missing bucket) was reported as
    'restored 0 objects; 2 not available there' (exit 1), no reason and no retry hint."""
    src, remote, _tid = _pushed_then_tree_lost(tmp_path)

    def unreachable(self, oid, max_size=None):
        raise mvc.MvcError(f"cannot reach {remote}", "check the network, and run the command again to resume")
    monkeypatch.setattr(DirectoryTransport, "get", unreachable)
    with pytest.raises(mvc.MvcError, match="cannot reach") as e:
        rm.repair(src, remote)
    assert "run the command again" in e.value.hint
    monkeypatch.undo()
    assert rm.repair(mvc.Repo(src.root), remote)["ok"]


def test_fsck_repair_from_replaces_a_damaged_loose_copy_beside_a_good_packed_one(tmp_path):
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    cid = src.commit({"core": weights(4)}, message="one")
    backup, _ = rm.clone(src.root, str(tmp_path / "backup"))
    pack(src)
    blob = tree_blob_ids(src.read_tree(src.read_commit(cid)["components"]["core"]))[0]
    src.loose.put(src.store.get(blob), oid=blob)  # a loose copy again, then damaged
    flip_byte(src.loose.path(blob), 200)
    assert not mvc.Repo(src.root).fsck()["ok"]  # reads take the packed copy; fsck names the loose one
    res = rm.repair(mvc.Repo(src.root), backup.root)
    assert res["ok"] and res["restored"] == [blob] and mvc.Repo(src.root).fsck()["ok"]


def test_an_incremental_pack_keeps_a_good_loose_copy_of_a_damaged_packed_object(tmp_path):
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    w = weights(5, n=2, shape=(64, 64))
    cid = src.commit({"core": w}, message="one")
    blob = tree_blob_ids(src.read_tree(src.read_commit(cid)["components"]["core"]))[0]
    good = src.store.get(blob)
    pack(src)
    (p,) = pack_store_of(mvc.Repo(src.root).store).packs()
    flip_byte(p.path, p.records[blob].offset + 10)
    mvc.Repo(src.root).loose.put(good, oid=blob)  # e.g. a repair whose repack did not run
    src.commit({"other": weights(6, n=1)}, message="two")
    pack(mvc.Repo(src.root))  # moves the new loose objects; must not take the good copy with it
    r = mvc.Repo(src.root)
    assert r.loose.has(blob)
    got = r.load(cid, "core")
    assert all(torch.equal(got[k], w[k]) for k in w)


def test_pack_lookup_sees_packs_another_thread_just_loaded(tmp_path, monkeypatch):
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    cid = src.commit({"core": weights(1)}, message="one")
    reader = pack_store_of(mvc.Repo(src.root).store)
    reader.refresh()  # no packs yet
    pack(src, full=True)
    real = reader.refresh
    monkeypatch.setattr(reader, "refresh", lambda: (real(), False)[1])  # as if another thread had refreshed
    assert reader.lookup(cid) is not None


def test_repair_after_a_damaged_pack_index_or_header_takes_one_run(tmp_path, monkeypatch):
    from mvc.pack_write import pack
    for at in ("idx", "header"):
        src = new_repo(tmp_path / f"src-{at}")
        ids = [src.commit({"core": weights(i)}, message=f"c{i}") for i in range(2)]
        pack(src, full=True)
        pack_dir = os.path.join(src.dir, "objects", "pack")
        name = next(p for p in os.listdir(pack_dir) if p.endswith(".pack"))[:-5]  # the older pack
        ids.append(src.commit({"core": weights(2)}, message="c2"))
        pack(src)  # a second pack: the repair's repack cannot reuse the damaged one's name
        backup, _ = rm.clone(src.root, str(tmp_path / f"backup-{at}"))
        flip_byte(os.path.join(pack_dir, name + (".idx" if at == "idx" else ".pack")), 60 if at == "idx" else 10)
        r = invoke(monkeypatch, src.root, "fsck")
        assert r.exit_code == 1 and "upgrade mvc" not in r.output  # damage, not a newer format
        r = invoke(monkeypatch, src.root, "fsck", "--repair-from", backup.root)
        assert r.exit_code == 0, r.output
        fixed = mvc.Repo(src.root)
        assert [c["id"] for c in fixed.log()] == ids[::-1] and fixed.fsck()["ok"]
        if at == "idx":  # an index that cannot be read: the pack is set aside, not deleted
            assert sorted(os.listdir(os.path.join(pack_dir, "damaged"))) == [name + ".idx", name + ".pack"]


def test_a_repository_cannot_be_its_own_remote(tmp_path):
    repo = new_repo(tmp_path / "src")
    repo.commit({"core": weights(1)}, message="one")
    for url in (repo.root, ".", "file://" + repo.root, os.path.join(repo.root, ".mvc")):
        with pytest.raises(mvc.errors.BadInput, match="this repository itself"):
            cwd = os.getcwd()
            os.chdir(repo.root)
            try:
                rm.add_remote(repo, "self", url)
            finally:
                os.chdir(cwd)
    with pytest.raises(mvc.errors.BadInput, match="this repository itself"):
        rm.push(repo, repo.root, delete=True)
    assert repo.head() is not None


def test_a_damaged_remote_tag_does_not_fail_the_push(tmp_path):
    bare = DirRemote(tmp_path)
    repo = new_repo(tmp_path / "src", bare)
    cid = repo.commit({"core": weights(1)}, message="one")
    rm.push(repo)
    repo.tag("t1", cid)
    _write_remote_file(bare, "refs/tags/t1", b"junk\n")
    with pytest.warns(UserWarning) as caught:
        r = rm.push(repo)
    assert any("tag t1 not pushed" in str(w.message) for w in caught)
    assert r["tags"] == [] and "t1" in r["tags_skipped"]
    with pytest.warns(UserWarning):
        r = rm.push(repo, force=True)
    assert bare.transport().read_ref("refs/tags/t1") == cid


def test_a_lazy_clone_whose_remote_is_gone_says_so(tmp_path):
    src = new_repo(tmp_path / "src")
    src.commit({"core": weights(1, n=2)}, message="one")
    bare = DirRemote(tmp_path)
    rm.push(src, bare.url)
    lazy, _ = rm.clone(bare.url, str(tmp_path / "lazy"), lazy=True)
    os.rename(bare.url, bare.url + ".moved")
    with pytest.raises(mvc.errors.ObjectMissing, match="is gone or is no mvc repository"):
        lazy.load("HEAD", "core")


def test_a_lazy_clone_reading_what_a_newer_mvc_wrote_on_its_remote_says_upgrade_not_damaged(tmp_path):
    """A promisor remote a newer mvc marked (an [extensions] entry, say another object encoding):
    a blob that does not hash to its id there was called damaged (review h38)."""
    src = new_repo(tmp_path / "src")
    src.commit({"core": weights(1, n=2)}, message="one")
    bare = DirRemote(tmp_path)
    rm.push(src, bare.url)
    lazy, _ = rm.clone(bare.url, str(tmp_path / "lazy"), lazy=True)
    for oid in tree_blob_ids(src.read_tree(src.read_commit(src.resolve("HEAD"))["components"]["core"])):
        bare.corrupt(oid)
    with open(os.path.join(bare.url, "config"), "a") as f:
        f.write("[extensions]\nobjectformat = blake4\n")
    with pytest.raises(mvc.errors.FormatTooNew, match="uses the extension objectformat"):
        lazy.load("HEAD", "core")


def test_an_autopack_failure_after_the_commit_landed_is_a_warning(tmp_path):
    repo = new_repo(tmp_path / "src")
    with open(os.path.join(repo.dir, "config"), "a") as f:
        f.write("[pack]\nautoevery = -1\n")  # hand-edited: mvc config would refuse it
    repo = mvc.Repo(repo.root)
    with pytest.warns(UserWarning, match="committed .* but packing after it failed"):
        cid = repo.commit({"core": weights(1)}, message="one")
    assert repo.head() == cid


# -- push --repair: a remote that lost objects or holds damaged copies -------------------------
def _history(repo):
    """Every object the history of HEAD reaches."""
    out = set()
    for c in repo.log():
        out.add(c["id"])
        for tid in repo.read_commit(c["id"])["components"].values():
            out |= {tid, *tree_blob_ids(repo.read_tree(tid))}
    return out


def _assert_clone_is_whole(src, url, tmp_path, endpoint=None, name="fresh"):
    """A fresh clone of the remote passes fsck and checks out the same bytes as `src`."""
    clone, _ = rm.clone(url, str(tmp_path / name), endpoint=endpoint)
    assert clone.fsck()["ok"] and clone.head() == src.head()
    for c in src.log():
        rev = c["id"]
        assert checkout_bytes(clone, rev, tmp_path / f"{name}-c{rev[:6]}") == \
            checkout_bytes(src, rev, tmp_path / f"{name}-s{rev[:6]}")
    return clone


def _two_commits_pushed(remote, tmp_path):
    src = new_repo(tmp_path / "src", remote)
    c1 = src.commit({"core": weights(1)}, message="one")
    src.commit({"core": weights(2), "brick/python": weights(3, n=2, shape=(4, 16))}, message="two")
    rm.push(src)
    blob = src.read_tree(src.read_commit(c1)["components"]["core"])["tensors"]["w2"]["id"]
    return src, blob


@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_push_repair_resends_a_lost_or_damaged_loose_blob(tmp_path, damage):
    bare = DirRemote(tmp_path)
    src, blob = _two_commits_pushed(bare, tmp_path)
    path = bare.transport().objects.path(blob)
    if damage == "deleted":
        os.unlink(path)
    else:
        flip_byte(path, 100)
    plain = rm.push(src)  # trusts the remote: sends nothing
    assert plain["status"] == "up-to-date" and plain["objects_sent"] == 0
    with pytest.raises(mvc.errors.MvcError):  # the damage is real: a clone fails
        rm.clone(bare.url, str(tmp_path / "broken"))

    counting = Counting(bare.transport())
    r = rm.push(src, repair=True, transport=counting)
    rep = r["repair"]
    assert counting.put_ids == [blob] and r["objects_sent"] == 1 and r["status"] == "up-to-date"
    assert rep["checked"] == len(_history(src)) and rep["local_damaged"] == {}
    assert (rep["missing"], rep["damaged"]) == (([blob], []) if damage == "deleted" else ([], [blob]))
    assert rep["missing_resent"] + rep["damaged_resent"] == 1
    assert rep["bytes_sent"] == r["bytes_sent"] == src.store.size(blob)
    assert open(path, "rb").read() == src.store.get(blob)  # the good copy replaced the bad one
    _assert_clone_is_whole(src, bare.url, tmp_path)
    again = rm.push(src, repair=True)
    assert again["objects_sent"] == 0 and again["repair"]["checked"] == rep["checked"]


def _packed_remote(tmp_path):
    """A packed repository used as a remote, and a working clone of it."""
    from mvc.pack_write import pack
    served = new_repo(tmp_path / "served")
    for i in range(3):
        served.commit({"core": weights(i)}, message=f"c{i}")
    pack(served, full=True)
    assert not list(served.loose.ids())
    work, _ = rm.clone(served.root, str(tmp_path / "work"))
    pack_dir = os.path.join(served.dir, "objects", "pack")
    pack_file = os.path.join(pack_dir, next(p for p in os.listdir(pack_dir) if p.endswith(".pack")))
    return served, work, pack_file


def test_push_repair_resends_objects_of_a_damaged_pack_as_loose_copies(tmp_path):
    served, work, pack_file = _packed_remote(tmp_path)
    flip_byte(pack_file, 400)
    assert rm.push(work)["objects_sent"] == 0  # a plain push sees every object there
    with pytest.raises(CorruptObject):
        rm.clone(served.root, str(tmp_path / "broken"))

    r = rm.push(work, repair=True)
    rep = r["repair"]
    assert rep["damaged_resent"] >= 1 and rep["missing_resent"] == 0 and not rep["local_damaged"]
    there = DirectoryTransport(served.root)
    for oid in rep["damaged"]:  # now loose there, and the loose copy is what reads get
        assert there.objects.has(oid) and there.get(oid) == work.store.get(oid)
    _assert_clone_is_whole(work, served.root, tmp_path)
    assert rm.push(work, repair=True)["objects_sent"] == 0


def test_push_repair_never_sends_a_local_copy_that_is_damaged_too(tmp_path):
    bare = DirRemote(tmp_path)
    src, blob = _two_commits_pushed(bare, tmp_path)
    old = src.head()
    other = src.read_tree(src.read_commit(old)["components"]["brick/python"])["tensors"]["w1"]["id"]
    os.unlink(bare.transport().objects.path(other))  # repairable
    remote_path = bare.transport().objects.path(blob)
    flip_byte(remote_path, 100)
    flip_byte(src.loose.path(blob), 120)  # damaged here too
    remote_bad = open(remote_path, "rb").read()
    new = src.commit({"core": weights(2), "brick/python": weights(4, n=2, shape=(4, 16))}, message="three")

    with pytest.raises(rm.RepairIncomplete, match="damaged too") as caught:
        rm.push(mvc.Repo(src.root), repair=True)
    e = caught.value
    assert e.exit_code == 3 and blob in e.message
    rep = e.result["repair"]
    assert list(rep["local_damaged"]) == [blob] and "corrupt" in rep["local_damaged"][blob]
    assert other in rep["missing"] and blob not in rep["damaged"] + rep["missing"]
    assert open(remote_path, "rb").read() == remote_bad  # the bad local copy was not sent
    assert bare.transport().get(other) == src.store.get(other)  # the rest was repaired
    assert bare.transport().read_ref("refs/heads/main") == old != new  # no ref moved
    assert src.refs.read("refs/remotes/origin/main") == old


def test_push_repair_held_back_trees_naming_a_blob_damaged_on_both_sides(tmp_path):
    bare = DirRemote(tmp_path)
    src = new_repo(tmp_path / "src", bare)
    cid = src.commit({"core": weights(1)}, message="one")
    tid = src.read_commit(cid)["components"]["core"]
    blob = src.read_tree(tid)["tensors"]["w0"]["id"]
    rm.push(src)
    t = bare.transport()
    for oid in (blob, tid, cid):
        os.unlink(t.objects.path(oid))
    os.unlink(src.loose.path(blob))
    with pytest.raises(rm.RepairIncomplete) as caught:
        rm.push(mvc.Repo(src.root), repair=True)
    rep = caught.value.result["repair"]
    assert list(rep["local_damaged"]) == [blob] and rep["held_back"] == sorted([tid, cid])
    assert not t.has(tid) and not t.has(cid)  # a tree there always has its blobs there


def test_push_repair_on_s3_resends_a_deleted_and_an_overwritten_object(tmp_path, aws_env, s3_endpoint):
    remote = S3Remote(s3_endpoint)
    src, blob = _two_commits_pushed(remote, tmp_path)
    tree = src.read_commit(src.head())["components"]["brick/python"]
    remote.client.delete_object(Bucket=remote.bucket, Key=f"team/models/objects/{tree[:2]}/{tree[2:]}")
    good = src.store.get(blob)
    remote.client.put_object(Bucket=remote.bucket, Key=f"team/models/objects/{blob[:2]}/{blob[2:]}",
                             Body=good[:len(good) // 2])  # truncated
    assert rm.push(src)["objects_sent"] == 0
    r = rm.push(src, repair=True)
    rep = r["repair"]
    assert (rep["missing"], rep["damaged"]) == ([tree], [blob]) and not rep["local_damaged"]
    assert remote.transport().get(blob) == good
    _assert_clone_is_whole(src, remote.url, tmp_path, endpoint=remote.endpoint)


def test_push_repair_resends_certificates_and_the_inputs_they_name(tmp_path):
    bare = DirRemote(tmp_path)
    src = new_repo(tmp_path / "src", bare)
    cid = src.commit({"core": weights(1)}, message="one")
    data_blob = src.store.put(b"held-out text\n")
    cert_id = src.store.put(json.dumps({"type": "certificate", "format": 1, "commit": cid, "passed": True,
                                        "inputs": {"data": data_blob}}, sort_keys=True).encode())
    certindex.attach(src.dir, cid, [cert_id])
    assert rm.push(src)["certificates"] == 1
    t = bare.transport()
    os.unlink(t.objects.path(cert_id))
    flip_byte(t.objects.path(data_blob), 3)
    assert rm.push(src)["objects_sent"] == 0
    rep = rm.push(src, repair=True)["repair"]
    assert (rep["missing"], rep["damaged"]) == ([cert_id], [data_blob])
    clone = _assert_clone_is_whole(src, bare.url, tmp_path)
    assert clone.store.get(data_blob) == b"held-out text\n" and certindex.read_index(clone.dir, cid) == [cert_id]


# -- certificates name commits and data outside the pushed branch --------------------------------
def _certified_with_host(tmp_path, remote, pack):
    """src: main (two commits) certified by a migration-like certificate naming held-out data, a
    tree of main and the tip of another branch, host-b (two commits of its own history)."""
    src = new_repo(tmp_path / "src", remote)
    src.commit({"core": weights(1)}, message="one")
    c2 = src.commit({"core": weights(2), "brick/python": weights(3, n=2)}, message="two")
    h1 = src.commit({"core": weights(4)}, message="host one", branch="host-b", remove=["brick/python"])
    h2 = src.commit({"core": weights(5)}, message="host two", branch="host-b")
    data_blob = src.store.put(b"held-out text\n")
    brick_tree = src.read_commit(c2)["components"]["brick/python"]
    cert_id = src.store.put(json.dumps(
        {"type": "certificate", "format": 1, "commit": c2, "passed": True,
         "inputs": {"data": data_blob, "hosts": [h2], "source": c2, "brick_tree": brick_tree}},
        sort_keys=True).encode())
    certindex.attach(src.dir, c2, [cert_id])
    if pack:  # certificate inputs then live in a pack, not as loose files
        src.gc(grace_s=0)
    return src, c2, (h1, h2), data_blob, cert_id


def _assert_certificate_inputs_arrived(src, dst, c2, hosts, data_blob, cert_id, tmp_path):
    assert certindex.read_index(dst.dir, c2) == [cert_id]
    assert dst.store.get(data_blob) == b"held-out text\n"
    for h in hosts:  # the named host commit with its history, trees and blobs
        assert dst.read_commit(h) == src.read_commit(h)
        assert checkout_bytes(dst, h, tmp_path / f"d{h[:6]}") == checkout_bytes(src, h, tmp_path / f"s{h[:6]}")
    assert dst.fsck()["ok"]
    assert "host-b" not in dst.branches()  # a certificate input, not a branch


@pytest.mark.parametrize("pack", [False, True], ids=["loose", "packed"])
def test_push_and_clone_carry_every_certificate_input(remote, tmp_path, pack):
    src, c2, hosts, data_blob, cert_id = _certified_with_host(tmp_path, remote, pack)
    r = rm.push(src, branch="main")
    assert r["certificates"] == 1
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    _assert_certificate_inputs_arrived(src, dst, c2, hosts, data_blob, cert_id, tmp_path)
    assert rm.push(src, branch="main")["objects_sent"] == 0


def test_fetch_of_a_new_certificate_brings_its_host_history(tmp_path):
    bare = DirRemote(tmp_path)
    src = new_repo(tmp_path / "src", bare)
    src.commit({"core": weights(1)}, message="one")
    rm.push(src)
    dst, _ = rm.clone(bare.url, str(tmp_path / "dst"))
    shutil.rmtree(src.root)
    src, c2, hosts, data_blob, cert_id = _certified_with_host(tmp_path, None, pack=False)
    rm.add_remote(src, "origin", bare.url)
    rm.push(src, branch="main", force=True)
    rm.fetch(dst)
    _assert_certificate_inputs_arrived(src, dst, c2, hosts, data_blob, cert_id, tmp_path)


def test_push_repair_checks_certificate_host_history(tmp_path):
    bare = DirRemote(tmp_path)
    src, c2, (h1, h2), data_blob, cert_id = _certified_with_host(tmp_path, bare, pack=False)
    rm.push(src, branch="main")
    lost = src.read_tree(src.read_commit(h1)["components"]["core"])["tensors"]["w0"]["id"]
    os.unlink(bare.transport().objects.path(lost))
    rep = rm.push(src, branch="main", repair=True)["repair"]
    assert rep["missing"] == [lost]
    dst, _ = rm.clone(bare.url, str(tmp_path / "dst"))
    _assert_certificate_inputs_arrived(src, dst, c2, (h1, h2), data_blob, cert_id, tmp_path)


def test_a_push_to_a_bare_remote_removes_temp_files_of_killed_pushes(tmp_path):
    bare = tmp_path / "bare"
    repo = new_repo(tmp_path / "src", None)
    rm.add_remote(repo, "origin", str(bare))
    repo.commit({"core": weights(1)}, message="one")
    rm.push(repo)
    tmp = bare / "objects" / "tmp"
    tmp.mkdir(exist_ok=True)
    stale, live = tmp / "ab12-stale", tmp / "cd34-live"
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y" * 10)  # a push in progress elsewhere
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    repo.commit({"core": weights(2)}, message="two")
    rm.push(repo)
    assert not stale.exists() and live.exists()
    clone, _ = rm.clone(str(bare), str(tmp_path / "copy"))
    assert clone.fsck()["ok"] and clone.head() == repo.head()


def test_a_first_push_killed_while_writing_the_remote_config_is_completed_by_the_next(tmp_path):
    """A first push killed between writing the remote's config to its temp file and renaming it
    left `.config.<16 hex>.tmp`: every later push refused the location as "not empty and not an
    mvc repository", and nothing removed the file."""
    bare = tmp_path / "bare"
    for sub in ("objects", "refs/heads", "refs/tags"):
        (bare / sub).mkdir(parents=True)
    (bare / ".config.0123456789abcdef.tmp").write_text("[core]\n")
    repo = new_repo(tmp_path / "src", None)
    rm.add_remote(repo, "origin", str(bare))
    repo.commit({"core": weights(1)}, message="one")
    rm.push(repo)
    clone, _ = rm.clone(str(bare), str(tmp_path / "copy"))
    assert clone.head() == repo.head() and clone.fsck()["ok"]
    other = tmp_path / "other"
    other.mkdir()
    (other / ".notes.0123456789abcdef.tmp").write_text("not ours")  # only the config's temp name is excused
    rm.add_remote(repo, "other", str(other))
    with pytest.raises(mvc.errors.BadInput, match="not empty and is not an mvc repository"):
        rm.push(repo, "other")


def test_a_commit_in_a_lazy_clone_stores_tensors_it_only_has_promised(tmp_path):
    """A promised blob may vanish from the remote: a commit of equal bytes must keep its own copy."""
    owner = new_repo(tmp_path / "owner")
    w = weights(7, n=2)
    owner.commit({"m": {"x": torch.zeros(3)}}, message="c0")
    owner.commit({"base": w}, message="base", branch="base")
    rm.clone(str(tmp_path / "owner"), str(tmp_path / "lazy"), lazy=True)
    lazy = mvc.Repo(tmp_path / "lazy")
    cid = lazy.commit({"mine": {k: v.clone() for k, v in w.items()}}, message="my copy")
    ids = [t["id"] for t in lazy.tree(cid, "mine")["tensors"].values()]
    assert all(lazy.loose.has(i) for i in ids)
    owner.delete_branch("base")
    shutil.rmtree(os.path.join(owner.dir, "logs"))
    os.makedirs(os.path.join(owner.dir, "logs"))
    assert mvc.Repo(owner.root).gc(grace_s=0)["removed"] > 0
    got = mvc.Repo(tmp_path / "lazy").load(cid, "mine")
    assert all(torch.equal(got[k], w[k]) for k in w)


def test_has_on_a_repository_remote_looks_again_when_a_repack_removed_the_pack_it_knew(tmp_path):
    from mvc.pack_write import pack
    owner = new_repo(tmp_path / "owner")
    owner.commit({"m": {"x": torch.zeros(3)}}, message="c0")
    side = owner.commit({"a": weights(3, n=1)}, message="side", branch="side")
    wid = next(iter(owner.tree(side, "a")["tensors"].values()))["id"]
    pack(owner)
    t = DirectoryTransport(str(tmp_path / "owner"))
    assert t.has(wid)  # the transport now knows the pack holding it
    owner.delete_branch("side")
    shutil.rmtree(os.path.join(owner.dir, "logs"))
    os.makedirs(os.path.join(owner.dir, "logs"))
    assert mvc.Repo(owner.root).gc(grace_s=0)["pack"]["dropped"] > 0  # that pack is gone, and w with it
    assert not t.has(wid)  # not answered from the stale pack list: a push must send it again


def test_push_and_clone_take_the_good_copy_when_a_loose_copy_is_damaged_beside_a_packed_one(tmp_path):
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    w = weights(8, n=3, shape=(32, 32))
    cid = src.commit({"core": w}, message="one")
    pack(src)
    blob = tree_blob_ids(src.read_tree(src.read_commit(cid)["components"]["core"]))[0]
    src.loose.put(src.store.get(blob), oid=blob)
    flip_byte(src.loose.path(blob), 150)
    rm.add_remote(src, "origin", str(tmp_path / "bare"))
    rm.push(mvc.Repo(src.root))  # sends the packed (good) copy, not the damaged file
    pushed, _ = rm.clone(str(tmp_path / "bare"), str(tmp_path / "from-bare"))
    assert pushed.fsck()["ok"]
    for lazy in (False, True):  # the damaged repository itself used as a remote
        clone, _ = rm.clone(src.root, str(tmp_path / f"c{lazy}"), lazy=lazy)
        got = clone.load(cid, "core")
        assert all(torch.equal(got[k], w[k]) for k in w)


def test_fetch_mirrors_remote_branches_named_before_the_stricter_rules(remote, tmp_path):
    """New local refs may not end in '.' or be capital hex; a remote (an older mvc) may have them,
    and their remote-tracking refs still come. A part ending '.lock' stays refused (it wedges locks)."""
    repo = new_repo(tmp_path / "src", remote)
    cid = repo.commit({"core": weights(1)}, message="one")
    rm.push(repo)
    for name in ("DEADBEEF", "v1.", "a.lock/b"):
        _write_remote_file(remote, f"refs/heads/{name}", (cid + "\n").encode())
    other = new_repo(tmp_path / "other", remote)
    with pytest.warns(UserWarning, match="a.lock/b"):
        rm.fetch(other)
    for name in ("main", "DEADBEEF", "v1."):
        assert other.refs.read(f"refs/remotes/origin/{name}") == cid, name
    assert other.refs.read("refs/remotes/origin/a.lock/b") is None


def test_tags_and_the_default_branch_of_an_older_remote_come_whatever_their_names(tmp_path):
    """A repository made before the stricter names (tag 'v1.', 'DEADBEEF', branch 'v1.'): fetch
    failed after downloading everything, and clone failed after fetching, half made."""
    src = mvc.Repo.init(tmp_path / "src")
    cid = src.commit({"core": weights(1)}, message="one")
    for ref in ("refs/tags/v1.", "refs/tags/DEADBEEF", "refs/heads/v1."):
        with open(os.path.join(src.dir, *ref.split("/")), "w") as f:
            f.write(cid + "\n")
    with open(os.path.join(src.dir, "HEAD"), "w") as f:
        f.write("ref: refs/heads/v1.\n")
    other = mvc.Repo.init(tmp_path / "other")
    rm.add_remote(other, "origin", src.root)
    rm.fetch(other)
    assert sorted(other.tags()) == ["DEADBEEF", "v1."] and other.resolve("DEADBEEF") == cid
    clone, info = rm.clone(src.root, str(tmp_path / "clone"))
    assert info["branch"] == "v1." and clone.refs.head_target() == "refs/heads/v1." and clone.resolve("HEAD") == cid
    with pytest.raises(BadName):  # mvc itself makes no such name
        clone.create_branch("v2.")


def test_fetch_marks_a_tracking_branch_that_moved_back_as_forced(remote, tmp_path, monkeypatch):
    """After the remote's main was rolled back and force-pushed, fetch printed `old..new` as for a
    fast-forward: nothing said that commits left the branch (git says "forced update")."""
    repo = new_repo(tmp_path / "src", remote)
    c1 = repo.commit({"core": weights(1)}, message="one")
    c2 = repo.commit({"core": weights(2)}, message="two")
    rm.push(repo)
    other, _ = rm.clone(remote.url, str(tmp_path / "other"), endpoint=remote.endpoint)
    repo.rollback(c1)
    rm.push(repo, force=True)
    c3 = repo.commit({"core": weights(3)}, message="three")
    rm.push(repo)
    monkeypatch.chdir(other.root)
    r = CliRunner().invoke(cli, ["fetch"])
    assert r.exit_code == 0 and f"origin/main: {c2[:12]}..{c3[:12]} (forced update" in r.stdout, r.output
    repo.commit({"core": weights(4)}, message="four")
    rm.push(repo)
    got = json.loads(CliRunner().invoke(cli, ["fetch", "--json"]).stdout)["refs"]["refs/remotes/origin/main"]
    assert got["old"] == c3 and "forced" not in got  # a fast-forward is not marked


@pytest.mark.parametrize("when", ["before reading it", "before sending the file"])
def test_a_push_sends_an_object_packed_while_it_was_being_sent(tmp_path, monkeypatch, when):
    """`mvc pack` or gc moving a loose object into a pack while a push sent it failed the push
    ("object ... is missing (run mvc fsck)", or "unexpected file layout"): nothing was damaged."""
    from mvc.pack_write import pack
    from mvc.remote import pushing
    repo = new_repo(tmp_path / "src", None)
    rm.add_remote(repo, "origin", str(tmp_path / "bare"))
    repo.commit({"core": weights(1)}, message="one")
    packed = []

    def pack_once():
        if not packed:
            packed.append(pack(mvc.Repo(repo.root)))  # another process's mvc pack, at this instant

    if when == "before reading it":
        real = pushing._loose_copy_whole
        monkeypatch.setattr(pushing, "_loose_copy_whole", lambda r, oid: (pack_once(), real(r, oid))[1])
    else:
        real_put_file = DirectoryTransport.put_file

        def put_file(self, oid, path, **kw):
            pack_once()
            return real_put_file(self, oid, path, **kw)
        monkeypatch.setattr(DirectoryTransport, "put_file", put_file)
    rm.push(repo)
    assert packed and not list(repo.loose.ids())  # it did move everything into a pack meanwhile
    clone, _ = rm.clone(str(tmp_path / "bare"), str(tmp_path / "copy"))
    assert clone.head() == repo.head() and clone.fsck()["ok"]


def test_an_api_call_s_error_names_only_what_it_moved_not_other_threads_or_earlier_calls(tmp_path, monkeypatch):
    """The list of moves behind "it had moved ..." was process-wide, cleared by the CLI only: a
    fetch refused for permissions named a background thread's commit and an earlier add_remote
    as its own moves (probe h7)."""
    remote = mvc.Repo.init(tmp_path / "remote")
    remote.commit({"m": {"w": torch.zeros(2)}}, message="there")
    repo = mvc.Repo.init(tmp_path / "local")
    rm.add_remote(repo, "origin", str(tmp_path / "remote"))
    t = threading.Thread(target=lambda: repo.commit({"m": {"w": torch.ones(2)}}, message="background"))
    t.start()
    t.join()
    repo.commit({"m": {"w": torch.full((2,), 2.0)}}, message="an earlier call in this thread")

    def denied(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "remote" / ".mvc" / "refs"))
    monkeypatch.setattr(DirectoryTransport, "list_refs", denied)
    with pytest.raises(mvc.MvcError) as e:
        rm.fetch(repo, "origin")
    assert e.value.hint.startswith("nothing was moved;")
    from mvc.refs import moves_of_this_thread
    assert moves_of_this_thread()[-1].startswith("moved refs/heads/main")  # (kept for the caller)


def test_the_certificates_of_a_commit_a_pushed_certificate_names_travel_too(tmp_path):
    """gc keeps a baseline commit a certificate names with that commit's own certificates; push sent
    the baseline (with its history) but not its certificates, and fetch skipped them: in a clone
    `mvc verify` of the baseline exited 3 where the source's exited 0."""
    from mvc import certindex
    from mvc.objects import canonical_json, hash_bytes

    def certify(repo, commit, **named):
        data = canonical_json({"type": "certificate", "format": 1, "commit": commit, "passed": True,
                               "checks": [{"name": "x", "status": "passed", **named}]})
        cid = repo.store.put(data, oid=hash_bytes(data))
        certindex.attach(repo.dir, commit, [cid])
        return cid
    src = new_repo(tmp_path / "src")
    base = src.commit({"core": weights(1, n=2)}, message="baseline", branch="a")
    base_cert = certify(src, base)
    head = src.commit({"core": weights(2, n=2)}, message="candidate", branch="b", root=True)
    certify(src, head, baseline=base)
    rm.add_remote(src, "origin", str(tmp_path / "remote.mvc"))
    rm.push(src, branch="b")
    clone, _ = rm.clone(str(tmp_path / "remote.mvc"), str(tmp_path / "clone"))
    assert clone.store.has(base) and certindex.read_index(clone.dir, base) == [base_cert]
    assert clone.store.has(base_cert) and clone.fsck()["ok"]


def test_a_fetch_brings_back_a_certificate_an_index_here_lists_but_no_longer_holds(tmp_path):
    """An index gc had not pruned yet (younger than the grace) outlived its certificate: a fetch of
    that commit again took the line for 'already here' and never downloaded the certificate."""
    from mvc import certindex
    from mvc.objects import canonical_json, hash_bytes
    src = new_repo(tmp_path / "src")
    cid = src.commit({"core": weights(1, n=2)}, message="one")
    data = canonical_json({"type": "certificate", "format": 1, "commit": cid, "passed": True, "checks": []})
    cert = src.store.put(data, oid=hash_bytes(data))
    certindex.attach(src.dir, cid, [cert])
    clone, _ = rm.clone(src.root, str(tmp_path / "clone"))
    path = clone.loose.path(cert)
    os.chmod(path, 0o644)
    os.unlink(path)
    assert not mvc.Repo(clone.root).fsck()["ok"]
    src.commit({"core": weights(2, n=2)}, message="two")
    rm.fetch(clone)
    assert mvc.Repo(clone.root).store.has(cert) and mvc.Repo(clone.root).fsck()["ok"]


def test_a_push_and_a_clone_make_small_objects_durable_a_batch_at_a_time(tmp_path, monkeypatch):
    """Each object sent or received had its own fsync (2,003 objects: 2,267 fsyncs to push, 2,274 to
    clone; half of their time for a component of many small tensors), where a commit makes a batch
    durable with one syncfs."""
    from mvc import store as store_mod
    src = new_repo(tmp_path / "src")
    src.commit({"core": {f"w{i}": torch.full((4,), float(i)) for i in range(300)}}, message="many")
    rm.add_remote(src, "origin", str(tmp_path / "r.mvc"))
    syncs, fsyncs = [], []
    monkeypatch.setattr(store_mod, "syncfs", lambda *a: syncs.append(a) or True)  # (where the kernel has it)
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    rm.push(src)
    assert len(fsyncs) < 50 and syncs, (len(fsyncs), len(syncs))
    fsyncs.clear()
    clone, _ = rm.clone(str(tmp_path / "r.mvc"), str(tmp_path / "c"))
    assert len(fsyncs) < 50, len(fsyncs)
    assert clone.fsck()["ok"] and torch.equal(clone.load("HEAD", "core")["w299"], torch.full((4,), 299.0))
    assert not os.listdir(tmp_path / "r.mvc" / "objects" / "tmp") and not os.listdir(clone.loose.tmp)


def test_an_interrupted_push_keeps_what_it_sent_whole(tmp_path, monkeypatch):
    """Small objects are made durable a batch at a time; an error half way must not drop those sent
    whole before it (the push run again sends only the rest)."""
    from mvc.transport import DirectoryTransport
    src = new_repo(tmp_path / "src")
    src.commit({"core": {f"w{i}": torch.full((4,), float(i)) for i in range(40)}}, message="many")
    rm.add_remote(src, "origin", str(tmp_path / "r.mvc"))
    real_write, calls = DirectoryTransport._write, []

    def flaky(self, oid, fill, replace=False, size=None):
        calls.append(oid)
        if len(calls) == 20:
            raise OSError(5, "simulated I/O error")
        return real_write(self, oid, fill, replace, size)
    monkeypatch.setattr(DirectoryTransport, "_write", flaky)
    with pytest.raises(OSError):
        rm.push(src, jobs=1)
    monkeypatch.setattr(DirectoryTransport, "_write", real_write)
    there = DirectoryTransport(str(tmp_path / "r.mvc"))
    assert sum(there.has(o) for o in calls[:19]) == 19 and not os.listdir(there.objects.tmp)
    assert rm.push(src)["objects_sent"] < 40


def test_pushes_into_a_repository_remote_are_in_its_reflogs_and_keep_history_from_its_gc(tmp_path, monkeypatch):
    """A branch that a push moves or deletes in a repository (not a bare remote) is logged there as its
    owner's moves are: a forced push's overwritten commit and a deleted branch's commits stay reachable
    from its reflogs, so the owner's gc keeps them (and `mvc rollback` there can take them back)."""
    monkeypatch.setenv("MVC_AUTHOR", "pusher <p@example.org>")
    owner = new_repo(tmp_path / "owner")
    owner.commit({"m": {"x": torch.zeros(3)}}, message="owner's")
    dev, _ = rm.clone(str(tmp_path / "owner"), str(tmp_path / "dev"))
    first = dev.commit({"m": weights(1, n=1)}, message="first", branch="exp")
    rm.push(dev, branch="exp")
    rewritten = dev.commit({"m": weights(2, n=1)}, message="rewritten", branch="other")  # (not above first)
    dev.refs.update("refs/heads/exp", rewritten, message="rewrite")
    rm.push(dev, branch="exp", force=True)
    owner = mvc.Repo(owner.root)
    log = owner.refs.reflog("refs/heads/exp")
    assert [(e["old"], e["new"]) for e in log] == [(first, rewritten), (None, first)]
    assert log[0]["message"] == "push: forced update" and log[0]["author"] == "pusher <p@example.org>"
    rm.push(dev, branch="exp", delete=True)
    assert "refs/heads/exp" not in owner.refs.list()
    _age_objects(owner.dir, 7200)
    owner.gc()  # the default grace: objects older than it go unless a ref or reflog reaches them
    assert owner.read_commit(first)["message"] == "first" and owner.read_commit(rewritten)["message"] == "rewritten"
    assert owner.fsck()["ok"]
    retired = owner.refs.reflog("refs/heads/exp")  # (retired with the branch: what `mvc reflog exp` shows)
    assert [(e["old"], e["new"], e["message"]) for e in retired[:1]] == [(rewritten, None, "push --delete")]


def _age_objects(mvc_dir, seconds):
    past = time.time() - seconds
    for dirpath, _dirs, files in os.walk(os.path.join(mvc_dir, "objects")):
        for f in files:
            os.utime(os.path.join(dirpath, f), (past, past))


@pytest.mark.parametrize("junk", [b"garbage\n", b""])
def test_a_damaged_branch_in_a_repository_remote_is_replaced_by_a_forced_push_and_logged(tmp_path, junk):
    owner = new_repo(tmp_path / "owner")
    owner.commit({"m": {"x": torch.zeros(3)}}, message="owner's")
    dev, _ = rm.clone(str(tmp_path / "owner"), str(tmp_path / "dev"))
    head = dev.commit({"m": weights(1, n=1)}, message="dev's", branch="exp")
    (tmp_path / "owner" / ".mvc" / "refs" / "heads" / "exp").write_bytes(junk)
    if junk:  # (an empty file reads as no branch there, as on a bare remote)
        with pytest.raises(CorruptObject, match="not an object id"):
            rm.push(dev, branch="exp")
        assert (tmp_path / "owner" / ".mvc" / "refs" / "heads" / "exp").read_bytes() == junk
    rm.push(dev, branch="exp", force=True)
    owner = mvc.Repo(owner.root)
    assert owner.refs.read("refs/heads/exp") == head and owner.fsck()["ok"]
    assert [(e["old"], e["new"]) for e in owner.refs.reflog("refs/heads/exp")] == [(None, head)]
    retired = [open(os.path.join(d, f)).read() for d, _, fs in os.walk(os.path.join(owner.dir, "logs", "deleted"))
               for f in fs]  # (the damaged ref's removal: logged, and retired as a deletion's log is)
    assert any("replaced a damaged ref" in text for text in retired)
    (tmp_path / "owner" / ".mvc" / "refs" / "heads" / "exp").write_bytes(b"")  # emptied after a pusher read it:
    from mvc.errors import RefConflict                                          # moved meanwhile, as on a bare remote
    with pytest.raises(RefConflict, match=f"remote refs/heads/exp is \\(none\\), expected {head[:12]}"):
        DirectoryTransport(str(tmp_path / "owner")).update_ref("refs/heads/exp", head, expected=head)


def test_an_s3_url_with_a_query_or_fragment_is_refused(in_repo):
    """s3://bkt/exp#1 and s3://bkt/exp#2 were both the prefix `exp` (urlparse took the rest as a
    fragment): a push to one landed where the other fetched from."""
    for url in ("s3://bkt/exp#1", "s3://bkt/exp?x=1"):
        with pytest.raises(BadInput, match="may not hold '\\?' or '#'"):
            rm.add_remote(in_repo, "e", url)
        with pytest.raises(BadInput, match="may not hold"):
            open_transport(url)
    assert rm.list_remotes(in_repo) == []


def test_an_s3_consoles_folder_markers_are_no_files_of_a_remote(tmp_path, aws_env, s3_endpoint):
    """The empty `team/models/` key an S3 console's "Create folder" makes stopped the first push:
    "remote ... is not empty and is not an mvc repository"."""
    s3 = S3Remote(s3_endpoint)
    for key in ("team/", "team/models/"):
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"")
    repo = mvc.Repo.init(tmp_path / "a")
    cid = repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    rm.add_remote(repo, "origin", s3.url, endpoint=s3_endpoint)
    assert rm.push(repo, "origin", "main")["status"] == "new branch"
    s3.client.put_object(Bucket=s3.bucket, Key="team/models/refs/heads/", Body=b"")  # (one under refs too)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s3.transport().list_refs() == {"refs/heads/main": cid}


def test_an_s3_server_that_never_answers_is_said_at_its_first_retry(tmp_path, aws_env, monkeypatch):
    """A server that accepts connections and never answers kept mvc silent for minutes (120 s a read,
    5 attempts a request): the first retry is said now."""
    import socket

    import mvc.transport_s3 as s3mod
    monkeypatch.setattr(s3mod, "READ_TIMEOUT_S", 0.3)
    monkeypatch.setattr(s3mod, "MAX_ATTEMPTS", 2)
    server, held = socket.socket(), []
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def accept():
        while True:
            try:
                held.append(server.accept()[0])  # accepted, never answered
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    try:
        t = open_transport("s3://bucket/models", f"http://127.0.0.1:{server.getsockname()[1]}")
        with pytest.warns(UserWarning, match="ReadTimeoutError.*trying again"):
            with pytest.raises(mvc.errors.MvcError):
                t.read_file("config")
    finally:
        server.close()
        for c in held:
            c.close()


def test_fsck_repair_from_restores_a_damaged_packed_object_once(tmp_path):
    """The restored copy went loose beside the damaged packed one, which fsck still named: the
    repair asked for it again in each of its 64 rounds ("restored 64 objects") (h92)."""
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    cid = src.commit({"core": weights(5, n=2, shape=(64, 64))}, message="one")
    backup, _ = rm.clone(src.root, str(tmp_path / "backup"))
    blob = tree_blob_ids(src.read_tree(src.read_commit(cid)["components"]["core"]))[0]
    pack(src)
    (p,) = pack_store_of(mvc.Repo(src.root).store).packs()
    flip_byte(p.path, p.records[blob].offset + p.records[blob].length - 3, 0x10)
    res = rm.repair(mvc.Repo(src.root), backup.root)
    assert res["ok"] and res["restored"] == [blob] and mvc.Repo(src.root).fsck()["ok"]


def test_fsck_says_another_copy_is_whole_beside_a_damaged_packed_one(tmp_path):
    """After push --repair (or a repair whose repack did not run) wrote a good copy loose, fsck named
    the packed copy's damage and no way out (h92)."""
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    src = new_repo(tmp_path / "src")
    cid = src.commit({"core": weights(5, n=2, shape=(64, 64))}, message="one")
    blob = tree_blob_ids(src.read_tree(src.read_commit(cid)["components"]["core"]))[0]
    good = src.store.get(blob)
    pack(src)
    (p,) = pack_store_of(mvc.Repo(src.root).store).packs()
    flip_byte(p.path, p.records[blob].offset + p.records[blob].length - 3, 0x10)
    mvc.Repo(src.root).loose.put(good, oid=blob)
    problems = [q for q in mvc.Repo(src.root).fsck()["problems"] if q["id"] == blob]
    assert problems and all("another copy of it is whole (mvc gc" in q["problem"] for q in problems)


def test_push_repair_resends_what_only_a_remote_pack_with_a_damaged_index_holds(tmp_path):
    """The repair read the remote's objects through the damaged index (a binary search, never its
    checksum): it re-sent one object, and the remote's gc then found the rest missing (h92)."""
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    owner = new_repo(tmp_path / "owner")
    owner.commit({"core": weights(1)}, message="one")
    local, _ = rm.clone(owner.root, str(tmp_path / "local"))
    pack(owner)
    (p,) = pack_store_of(mvc.Repo(owner.root).store).packs()
    flip_byte(p.idx_path, 60)
    rm.push(mvc.Repo(local.root), "origin", "main", repair=True)
    there = mvc.Repo(owner.root)
    there.gc(grace_s=0)
    assert mvc.Repo(owner.root).fsck()["ok"]


def test_fetch_replaces_a_damaged_leftover_and_fetches_a_tip_whose_commit_is_gone(tmp_path):
    """A damaged loose blob no ref reaches (an interrupted fetch's, rotted since) was trusted, so the
    pull landed on a history fsck failed; and a local branch whose commit was lost (its pack file
    removed) made fetch say "received 0 objects" and pull "up to date" (h92)."""
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    owner = new_repo(tmp_path / "owner")
    owner.commit({"core": weights(1)}, message="one")
    local, _ = rm.clone(owner.root, str(tmp_path / "local"))
    cid = owner.commit({"core": weights(2)}, message="two")
    blob = tree_blob_ids(owner.read_tree(owner.read_commit(cid)["components"]["core"]))[0]
    local.loose.put(owner.store.get(blob), oid=blob)  # (the leftover, then damaged)
    flip_byte(local.loose.path(blob), 100)
    rm.pull(mvc.Repo(local.root), "origin", "main")
    assert mvc.Repo(local.root).fsck()["ok"] and mvc.Repo(local.root).resolve("main") == cid
    pack(mvc.Repo(local.root))
    (p,) = pack_store_of(mvc.Repo(local.root).store).packs()
    os.remove(p.path)
    rm.fetch(mvc.Repo(local.root), "origin")
    fresh = mvc.Repo(local.root)
    assert fresh.read_commit(cid)["message"] == "two"


def test_a_clone_of_a_remote_whose_commits_are_gone_hints_push_repair(tmp_path):
    """The hint was "mvc push --force BRANCH there from a good copy", which found the branch up to date
    and sent nothing; push --repair is what sends the missing commit (h92)."""
    from mvc.pack import pack_store_of
    from mvc.pack_write import pack
    owner = new_repo(tmp_path / "owner")
    owner.commit({"core": weights(1)}, message="one")
    pack(owner)
    (p,) = pack_store_of(mvc.Repo(owner.root).store).packs()
    os.remove(p.path)
    with pytest.raises(mvc.MvcError) as e:
        rm.clone(owner.root, str(tmp_path / "c"))
    assert "push --repair" in e.value.hint and "push --force" not in e.value.hint


def _certify(repo, commit, tag=b"x"):
    cert = canonical_json({"type": "certificate", "format": 1, "commit": commit, "passed": True, "note": tag.decode(),
                           "checks": [{"name": "x", "status": "passed"}]})
    certindex.attach(repo.dir, commit, [repo.store.put(cert, oid=hash_bytes(cert))])
    return hash_bytes(cert)


class ReadCounter:
    """Counts the S3 transport's reads of mutable files (refs, certificate indexes) by prefix."""

    def __init__(self, monkeypatch):
        from mvc.transport_s3 import S3Transport
        self.names = []
        read_file = S3Transport.read_file

        def counted(t, name):
            self.names.append(name)
            return read_file(t, name)
        monkeypatch.setattr(S3Transport, "read_file", counted)

    def count(self, prefix):
        n = sum(1 for name in self.names if name.startswith(prefix))
        self.names.clear()
        return n


def test_pushes_and_fetches_read_only_the_refs_and_certificate_indexes_that_changed(tmp_path, aws_env, s3_endpoint,
                                                                                    monkeypatch):
    """Every push and fetch read every ref of the remote and the certificate index of every certified
    commit of the history, one request each: at the N-th checkpoint of a run that certifies and tags
    each one, N requests of each kind. A listing gives each file's ETag; what this repository read
    at the same ETag is not read again."""
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    for i in range(15):
        _certify(src, src.commit({"h": {"w": torch.full((2,), float(i))}}, message=str(i)))
        src.tag(f"step-{i}")
    rm.push(src)
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    reads = ReadCounter(monkeypatch)
    for i in range(2):  # (what a push wrote there is cached as written: not read back by the next)
        head = src.commit({"h": {"w": torch.full((2,), -1.0 - i)}}, message=f"next {i}")
        _certify(src, head)
        src.tag(f"more-{i}")
        rm.push(src)
        refs_read, certs_read = reads.count("refs/"), reads.count("certs/")
        rm.fetch(dst)
        fetched_refs, fetched_certs = reads.count("refs/"), reads.count("certs/")
        assert refs_read <= 4 and certs_read <= 2, (i, refs_read, certs_read)  # (were one read a ref and one a
        assert fetched_refs <= 4 and fetched_certs <= 2, (i, fetched_refs, fetched_certs)  # certified commit)
    assert dst.refs.read("refs/remotes/origin/main") == head and certindex.read_index(dst.dir, head)
    assert set(dst.refs.list("refs/tags/")) == set(src.refs.list("refs/tags/"))


def test_a_certificate_index_changed_on_the_remote_is_read_again_and_a_damaged_cache_is_not_believed(
        tmp_path, aws_env, s3_endpoint):
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    head = src.commit({"h": {"w": torch.zeros(2)}}, message="one")
    first = _certify(src, head)
    rm.push(src)
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    assert certindex.read_index(dst.dir, head) == [first]
    second = _certify(src, head, b"again")  # (another line in the same index there: a new ETag)
    rm.push(src)
    rm.fetch(dst)
    assert certindex.read_index(dst.dir, head) == [first, second]
    assert rm.push(src)["certificates"] == 0  # (reads the index its own push changed: cached as it is now)
    cache = os.path.join(src.dir, "remote-listing")
    [name] = os.listdir(cache)
    with open(os.path.join(cache, name)) as f:
        entries = json.load(f)
    key = "certs/" + head[:2] + "/" + head[2:]
    assert entries[key][1] == first + "\n" + second + "\n"
    entries[key][1] = first + "\n"  # (a cache damaged on disk: the entry's checksum no longer matches)
    with open(os.path.join(cache, name), "w") as f:
        json.dump(entries, f)
    assert rm.push(mvc.Repo(src.root))["certificates"] == 0  # (believed, it said the remote lacked `second`)
    third = _certify(src, head, b"third")
    rm.push(src)
    for path in os.scandir(os.path.join(dst.dir, "remote-listing")):
        with open(path, "w") as f:
            f.write("{not json")
    rm.fetch(dst)
    assert certindex.read_index(dst.dir, head) == [first, second, third]
    for path in os.scandir(os.path.join(dst.dir, "remote-listing")):
        with open(path, "w") as f:
            f.write("[" * 100_000 + "]" * 100_000)  # (nested past the recursion limit: a bug, exit 4)
    rm.fetch(dst)
    src.set_config("remote.origin.url", remote.url + "-moved")  # (the cache is the remote's, by name)
    rm.remove_remote(src, "origin")
    assert os.listdir(cache) == []  # (what was read there goes with the remote)


def test_a_fetch_downloads_a_long_history_s_new_commits_ahead_of_its_walk_by_the_remote_s_commit_graph(
        tmp_path, aws_env, s3_endpoint, monkeypatch):
    """A fetch learns a commit's parents only by downloading it: a linear history of N new commits
    was N requests one after the other (h104 03). Pushes to S3 record each commit's parents in
    graph/ segments; a fetch downloads what the graph says its tips need in parallel first."""
    from mvc.remote import commit_graph
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    ids = [src.commit({"h": {"w": torch.full((2,), float(i))}}, message=str(i)) for i in range(70)]
    rm.push(src)
    src.create_branch("side", ids[10])
    src.switch("side")
    side = [src.commit({"h": {"w": torch.full((2,), -float(i))}}, message=f"side {i}") for i in range(3)]
    rm.push(src, branch="side")
    segments = remote.transport().list_files("graph/")
    assert len(segments) >= 2  # (70 lines of ~130 bytes: more than one segment of < 4,000 bytes)
    graph = commit_graph.read_graph(remote.transport(), rm.Pool(1))
    assert graph[ids[0]] == [] and graph[ids[69]] == [ids[68]] and graph[side[0]] == [ids[10]] and len(graph) == 73
    ahead = []
    real = commit_graph.commits_ahead
    monkeypatch.setattr(commit_graph, "commits_ahead", lambda *a: ahead.append(real(*a)) or ahead[-1])
    walked = []
    monkeypatch.setattr(rm.fetching, "receive", lambda t, oid, *a: walked.append(oid) or rm.receive(t, oid, *a))
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    assert not set(walked) & (set(ids) | set(side)) and not ahead[0]  # (all of them ahead; the walk took each)
    assert [c["id"] for c in dst.log("origin/side")] == side[::-1] + ids[:11][::-1] and dst.fsck()["ok"]


def test_a_commit_graph_that_lies_or_is_gone_costs_requests_not_history(tmp_path, aws_env, s3_endpoint):
    from mvc.remote import commit_graph
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    ids = [src.commit({"h": {"w": torch.full((2,), float(i))}}, message=str(i)) for i in range(5)]
    rm.push(src)
    stranger = "ab" * 32
    lies = (commit_graph.graph_line(ids[4], [ids[1]]) + commit_graph.graph_line(ids[3], [stranger])
            + b"not a line\n" + commit_graph.graph_line(stranger, []))
    _write_remote_file(remote, "graph/00000000", lies)  # (parents skipped, a commit not there, junk)
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    assert [c["id"] for c in dst.log()] == ids[::-1] and dst.fsck()["ok"]
    remote.client.delete_object(Bucket=remote.bucket, Key="team/models/graph/00000000")
    more = [src.commit({"h": {"w": torch.full((2,), -float(i))}}, message=f"more {i}") for i in range(3)]
    rm.push(src)  # (appends to a new first segment)
    rm.fetch(dst)
    assert [c["id"] for c in dst.log("origin/main")] == (ids + more)[::-1] and dst.fsck()["ok"]
    assert set(commit_graph.read_graph(remote.transport(), rm.Pool(1))) == set(more)


def test_push_repair_adds_to_the_commit_graph_what_an_older_mvc_left_out_or_a_line_got_wrong(
        tmp_path, aws_env, s3_endpoint):
    """Commits pushed by an mvc that kept no graph were never added to it, nor a wrong line mended:
    each fetch walked them one by one. push --repair, which reads the whole history, adds them;
    a right line appended after a wrong one in the same segment wins."""
    from mvc.remote import commit_graph
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    ids = [src.commit({"h": {"w": torch.full((2,), float(i))}}, message=str(i)) for i in range(6)]
    rm.push(src)
    for name in remote.transport().list_files("graph/"):  # (as an older mvc left it)
        remote.client.delete_object(Bucket=remote.bucket, Key="team/models/" + name)
    _write_remote_file(remote, "graph/00000000", commit_graph.graph_line(ids[5], [ids[2]]))  # (a wrong line)
    more = src.commit({"h": {"w": torch.full((2,), -1.0)}}, message="more")
    rm.push(src)  # (a plain push adds what its branch gains, no more)
    assert set(commit_graph.read_graph(remote.transport(), rm.Pool(1))) == {ids[5], more}
    report = rm.push(src, repair=True)["repair"]
    assert report["graph_added"] == 6 and report["missing_resent"] == report["damaged_resent"] == 0
    truth = {c: src.read_commit(c)["parents"] for c in [*ids, more]}
    assert commit_graph.read_graph(remote.transport(), rm.Pool(2)) == truth
    assert rm.push(src, repair=True)["repair"]["graph_added"] == 0
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    assert [c["id"] for c in dst.log()] == [more, *ids[::-1]] and dst.fsck()["ok"]
    for name in remote.transport().list_files("graph/"):  # (graph/ holding another's file: left alone, and
        remote.client.delete_object(Bucket=remote.bucket, Key="team/models/" + name)  # none said added, h115 05)
    _write_remote_file(remote, "graph/README", b"not a segment\n")
    assert rm.push(src, repair=True)["repair"]["graph_added"] == 0
    assert remote.transport().list_files("graph/") == ["graph/README"]


def test_the_first_push_of_a_long_history_records_all_of_it_and_a_fetch_reads_only_the_newest_segments(
        tmp_path, aws_env, s3_endpoint, monkeypatch):
    """Every segment written counted as a retry: a push of 700 commits recorded 601, in id order (h109
    09). A fetch of one new commit with no cached segment read every segment (h109 01)."""
    from mvc.remote import commit_graph
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    src.commit({"h": {"w": torch.zeros(2)}}, message="one")
    rm.push(src)
    t = remote.transport()
    lines = [commit_graph.graph_line(hash_bytes(str(i).encode()), [hash_bytes(str(i - 1).encode())] if i else [])
             for i in range(700)]
    commit_graph.record(t, lines)
    graph = commit_graph.read_graph(t, rm.Pool(4))
    assert len(graph) == 701 and len(t.list_files("graph/")) > 20
    dst, _ = rm.clone(remote.url, str(tmp_path / "dst"), endpoint=remote.endpoint)
    src.commit({"h": {"w": torch.ones(2)}}, message="two")
    rm.push(src)
    shutil.rmtree(os.path.join(dst.dir, "remote-listing"))  # (a cold cache: a clone by an older mvc)
    from mvc.transport_s3 import S3Transport
    names = []
    read_file = S3Transport.read_file
    monkeypatch.setattr(S3Transport, "read_file", lambda self, name: names.append(name) or read_file(self, name))
    rm.fetch(dst)
    assert dst.refs.read("refs/remotes/origin/main") == src.head()
    assert 1 <= sum(n.startswith("graph/") for n in names) <= rm.Pool(8).jobs  # (one batch, newest first)


def test_a_graph_naming_blobs_downloads_none_of_them_and_a_remote_nested_at_graph_is_left_alone(
        tmp_path, aws_env, s3_endpoint):
    """A forged graph whose lines named blobs made a lazy clone download them into memory (h109 03);
    segments past graph/99999999 were never listed (h109 07); a remote an older mvc let stand at
    REMOTE/graph was listed whole by every push and fetch, and written into (h109 08)."""
    from mvc.remote import commit_graph
    remote = S3Remote(s3_endpoint)
    src = new_repo(tmp_path / "src", remote)
    head = src.commit({"h": {"w": torch.rand(300_000)}}, message="a 1.2 MB blob")
    rm.push(src)
    [blob] = [b for b in remote.object_ids() if src.store.size(b) > 1 << 20]
    _write_remote_file(remote, "graph/99999999", commit_graph.graph_line(head, [blob]) + commit_graph.graph_line(
        blob, []) + b"x" * 3750 + b"\n")  # (full: the next segment's number has 9 digits)
    lazy, _ = rm.clone(remote.url, str(tmp_path / "lazy"), endpoint=remote.endpoint, lazy=True)
    assert not lazy.loose.has(blob) and lazy.fsck()["ok"]
    assert commit_graph.commits_ahead(mvc.Repo.init(tmp_path / "empty"), remote.transport(), "origin",
                                      rm.Pool(2), [head], set()) == {head: src.store.get(head)}  # (not the blob)
    more = src.commit({"h": {"w": torch.rand(2)}}, message="more")
    rm.push(src)
    assert "graph/100000000" in remote.transport().list_files("graph/")
    assert commit_graph.read_graph(remote.transport(), rm.Pool(1))[more] == [head]
    for name in remote.transport().list_files("graph/"):
        remote.client.delete_object(Bucket=remote.bucket, Key="team/models/" + name)
    _write_remote_file(remote, "graph/HEAD", b"ref: refs/heads/main\n")  # (another remote's layout there)
    _write_remote_file(remote, "graph/objects/ab/" + "c" * 62, b"x")
    src.commit({"h": {"w": torch.rand(2)}}, message="again")
    rm.push(src)
    assert remote.transport().list_files("graph/") == ["graph/HEAD", "graph/objects/ab/" + "c" * 62]
    rm.fetch(lazy)
    assert lazy.refs.read("refs/remotes/origin/main") == src.head()


def test_two_pushes_appending_to_the_commit_graph_at_once_both_land(tmp_path, aws_env, s3_endpoint):
    from mvc.remote import commit_graph
    remote = S3Remote(s3_endpoint)
    lines = {k: [commit_graph.graph_line(hash_bytes(f"{k}{i}".encode()), []) for i in range(40)] for k in "ab"}
    barrier = threading.Barrier(2)
    errors = []

    def append(k):
        try:
            barrier.wait()
            for line in lines[k]:
                commit_graph.record(remote.transport(), [line])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=append, args=(k,)) for k in "ab"]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    graph = commit_graph.read_graph(remote.transport(), rm.Pool(1))
    assert set(graph) == {line.split()[0].decode() for k in "ab" for line in lines[k]}
    sizes = [len(remote.client.get_object(Bucket=remote.bucket, Key="team/models/" + n)["Body"].read())
             for n in remote.transport().list_files("graph/")]
    assert len(sizes) >= 2 and max(sizes) <= commit_graph.SEGMENT_BYTES

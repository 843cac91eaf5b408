"""Remotes under concurrency and partial failure: a repository used as a remote while its owner
collects garbage, pushes racing, transient S3 failures, and fetches while certificates arrive."""
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import torch
from urllib3.exceptions import ProtocolError

import mvc
from mvc import certindex, remote as rm
from mvc.errors import NonFastForward
from mvc.objects import tree_blob_ids
from mvc.transport import DirectoryTransport, open_transport

GC_SCRIPT = "import sys, mvc; mvc.Repo(sys.argv[1]).gc(grace_s=float(sys.argv[2])); print('gc done')"


def weights(seed, n=4, shape=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(*shape, generator=g) for i in range(n)}


class Hooked:
    """Wraps a transport; runs `before_ref(ref)` before the first branch update (every object of
    the push has been sent then, and nothing points at the new ones yet)."""

    def __init__(self, inner, before_ref):
        self.inner, self.before_ref, self.fired = inner, before_ref, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def update_ref(self, ref, new, expected, replace_damaged=False, **kw):
        if not self.fired and ref.startswith("refs/heads/"):
            self.fired = True
            self.before_ref(ref)
        return self.inner.update_ref(ref, new, expected, replace_damaged, **kw)


def _served_and_clone(tmp_path):
    """An mvc repository in use (`served`) and a clone of it."""
    served = mvc.Repo.init(tmp_path / "served")
    served.commit({"core": weights(1)}, message="one")
    work, _ = rm.clone(served.root, str(tmp_path / "work"))
    return served, work


def test_push_to_a_repository_remote_holds_off_its_short_grace_gc(tmp_path):
    """The owner's `gc --grace 0` (another process) must not delete the objects of a push in
    flight: they are unreachable until the push moves the branch, and younger than any grace."""
    served, work = _served_and_clone(tmp_path)
    new = work.commit({"core": weights(2), "extra": weights(3)}, message="two")
    gc = {}

    def owner_gc(_ref):
        gc["proc"] = subprocess.Popen([sys.executable, "-c", GC_SCRIPT, served.root, "0"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:  # the gc must wait for the push: it may not finish while the branch is not moved
            gc["early"] = gc["proc"].communicate(timeout=1.5)
        except subprocess.TimeoutExpired:
            gc["early"] = None

    rm.push(work, transport=Hooked(DirectoryTransport(served.root), owner_gc))
    out, err = gc["proc"].communicate(timeout=60) if gc["early"] is None else gc["early"]
    assert gc["proc"].returncode == 0 and "gc done" in out, err
    fresh = mvc.Repo(served.root)
    assert fresh.refs.read("refs/heads/main") == new
    report = fresh.fsck()
    assert report["ok"], report["problems"][:3]
    assert gc["early"] is None, "gc ran to the end while the push had objects in flight"


def test_the_push_takes_the_very_lock_the_owners_gc_takes():
    from mvc import repo, transport
    assert transport.WRITERS_LOCK == repo.WRITERS_LOCK


def test_push_freshens_objects_it_finds_on_a_repository_remote(tmp_path):
    """Objects an interrupted push left there long ago are unreachable and older than gc's default
    grace: a resumed push that relies on them freshens them, so a default gc keeps them."""
    served, work = _served_and_clone(tmp_path)
    new = work.commit({"core": weights(2)}, message="two")
    t = DirectoryTransport(served.root)
    tid = work.read_commit(new)["components"]["core"]
    leftovers = [*work.read_tree(tid)["tensors"].values()][:2]
    old = time.time() - 7200
    for entry in leftovers:  # sent by a push interrupted two hours ago
        t.put_file(entry["id"], work.loose.path(entry["id"]))
        os.utime(t.objects.path(entry["id"]), (old, old))

    def owner_gc(_ref):  # the default grace: no lock, the objects' age decides
        mvc.Repo(served.root).gc()

    r = rm.push(work, transport=Hooked(t, owner_gc))
    assert r["objects_present"] >= len(leftovers)
    report = mvc.Repo(served.root).fsck()
    assert report["ok"], report["problems"][:3]


def test_fetch_retries_when_a_branch_is_deleted_and_collected_under_it(tmp_path, monkeypatch):
    """A clone lists the remote's branches, then one of them is deleted there and the owner's gc
    collects its history before the clone reads it: the clone starts over from the branches as
    they are now instead of calling the remote damaged."""
    served, work = _served_and_clone(tmp_path)
    main = served.head()
    work.commit({"core": weights(5), "extra": weights(6)}, message="exp", branch="exp")
    rm.push(work, branch="exp")
    served.set_config("gc.reflogExpire", "-1")  # (the owner's gc expires every reflog entry: deleted, it is garbage)
    t = DirectoryTransport(served.root)
    real_get_into = DirectoryTransport.get_into
    done = []

    def get_into(self, oid, f, **kw):
        if not done:  # the first object read: the branch list is already taken
            done.append(oid)
            t.update_ref("refs/heads/exp", None, expected=served.refs.read("refs/heads/exp"))
            mvc.Repo(served.root).gc(grace_s=0)
        return real_get_into(self, oid, f, **kw)

    monkeypatch.setattr(DirectoryTransport, "get_into", get_into)
    clone, info = rm.clone(served.root, str(tmp_path / "copy"), jobs=1)
    assert done and info["head"] == main
    assert clone.refs.read("refs/remotes/origin/exp") is None
    assert clone.fsck()["ok"]


# -- a clone killed while it sets itself up ------------------------------------------------------
CLONE_KILLED_AT = textwrap.dedent("""
    import os, signal, sys
    import mvc
    from mvc import remote as rm
    from mvc.remote import cloning
    url, dest, where = sys.argv[1:4]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if where == "init":  # inside Repo.init, before its temp folder becomes .mvc
        real_rename = os.rename
        os.rename = lambda a, b, *r: die() if os.path.basename(b) == ".mvc" else real_rename(a, b, *r)
    elif where == "origin":  # after init, before the origin is configured
        cloning.add_remote = die
    elif where == "lazy":  # the origin's url is written, its lazy mark is not
        real_set = mvc.Repo.set_config
        mvc.Repo.set_config = lambda self, k, v: die() if k.endswith(".promisor") else real_set(self, k, v)
    elif where == "head":  # its branch is made, HEAD is not pointed at it yet
        mvc.refs.RefStore.set_symbolic = die
    rm.clone(url, dest, lazy=True)
""")


@pytest.mark.parametrize("where", ["init", "origin", "lazy"])
def test_a_clone_killed_while_setting_up_resumes(tmp_path, where):
    served = mvc.Repo.init(tmp_path / "served")
    served.commit({"core": weights(1)}, message="one")
    dest = tmp_path / "copy"
    proc = subprocess.run([sys.executable, "-c", CLONE_KILLED_AT, served.root, str(dest), where],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert os.listdir(dest)  # it left something behind
    clone, info = rm.clone(served.root, str(dest), lazy=True)
    assert info["head"] == served.head() and info["lazy"]
    assert rm.list_remotes(clone) == [{"name": "origin", "url": served.root, "endpoint": None, "lazy": True}]
    assert not any(clone.loose.has(b) for b in tree_blob_ids(clone.tree("HEAD", "core")))  # lazy indeed
    assert clone.fsck()["ok"] and sorted(os.listdir(dest)) == [".mvc"]


def test_a_clone_run_again_over_a_finished_one_says_so(tmp_path):
    """A clone killed while it pointed HEAD at its branch (HEAD already named it) was complete, but
    running it again said "already exists and is not empty (clone into a new directory)"."""
    served = mvc.Repo.init(tmp_path / "served")
    served.commit({"core": weights(1)}, message="one")
    dest = tmp_path / "copy"
    proc = subprocess.run([sys.executable, "-c", CLONE_KILLED_AT, served.root, str(dest), "head"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(mvc.errors.BadInput, match="already holds a clone of .*mvc pull there"):
        rm.clone(served.root, str(dest), lazy=True)
    copy = mvc.Repo(dest)
    assert copy.head() == served.head() and copy.fsck()["ok"]
    copy.refs.set_symbolic("HEAD", "refs/heads/unborn")  # killed with its branch made, HEAD not on it yet
    again, info = rm.clone(served.root, str(dest), lazy=True)
    assert again.refs.head_target() == "refs/heads/main" and info["head"] == served.head()


def test_clone_still_refuses_a_directory_holding_anything_else(tmp_path):
    served = mvc.Repo.init(tmp_path / "served")
    served.commit({"core": weights(1)}, message="one")
    own = mvc.Repo.init(tmp_path / "own")
    (tmp_path / "own" / "notes.txt").write_text("mine")
    other = mvc.Repo.init(tmp_path / "other")
    other.commit({"core": weights(2)}, message="mine")
    mine, _ = rm.clone(served.root, str(tmp_path / "cloned"))  # then committed to: its branch is the user's
    mine.commit({"core": weights(3)}, message="my own work")
    for dest in (own.root, other.root, mine.root):
        with pytest.raises(mvc.errors.BadInput, match="already exists and is not empty"):
            rm.clone(served.root, dest)
    assert (tmp_path / "own" / "notes.txt").read_text() == "mine" and mvc.Repo(other.root).head()
    assert mvc.Repo(mine.root).log()[0]["message"] == "my own work"


# -- S3: transient failures --------------------------------------------------------------------
class _BrokenStream(io.RawIOBase):
    """A response body whose connection breaks after `cut` bytes."""

    def __init__(self, data, cut):
        self.data, self.cut, self.pos = data, cut, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.pos >= self.cut:
            raise ProtocolError("Connection broken: IncompleteRead")
        n = min(len(b), self.cut - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def _s3_remote(s3_endpoint, tmp_path, n=6):
    import boto3
    bucket = f"mvc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/m"
    src = mvc.Repo.init(tmp_path / "src")
    rm.add_remote(src, "origin", url, s3_endpoint)
    src.commit({"core": weights(1, n=n, shape=(64, 64))}, message="one")
    return src, url


def _breaking_bodies(t, breaks, how):
    """Make GetObject bodies of objects numbered in `breaks` (1-based, in request order) break off
    halfway: a reset connection or a body shorter than its Content-Length."""
    from botocore.response import StreamingBody
    real, lock, count = t.client.get_object, threading.Lock(), [0]

    def get_object(**kw):
        r = real(**kw)
        if "/objects/" in kw["Key"]:
            with lock:
                count[0] += 1
                hit = count[0] in breaks
            if hit:
                data = r["Body"].read()
                raw = (_BrokenStream(data, len(data) // 2) if how == "reset"
                       else io.BytesIO(data[:len(data) // 2]))
                r["Body"] = StreamingBody(raw, len(data))
        return r

    t.client.get_object = get_object
    return t


@pytest.mark.parametrize("how", ["reset", "truncated"])
def test_s3_body_that_breaks_off_is_resumed_on_clone_and_lazy_load(tmp_path, aws_env, s3_endpoint, how):
    src, url = _s3_remote(s3_endpoint, tmp_path)
    rm.push(src)
    t = _breaking_bodies(open_transport(url, s3_endpoint), {2, 5}, how)
    clone, _ = rm.clone(url, str(tmp_path / "copy"), endpoint=s3_endpoint, transport=t, jobs=1)
    assert clone.fsck()["ok"] and clone.head() == src.head()
    lazy, _ = rm.clone(url, str(tmp_path / "lazy"), endpoint=s3_endpoint, lazy=True)
    store = next(s for s in lazy.store.stores if s.fetches)
    store._transport = _breaking_bodies(open_transport(url, s3_endpoint), {1, 3}, how)
    state = lazy.load("HEAD", "core")
    assert all(torch.equal(state[k], v) for k, v in weights(1, n=6, shape=(64, 64)).items())


def test_s3_body_that_keeps_breaking_is_a_clear_error_and_clone_resumes(tmp_path, aws_env, s3_endpoint,
                                                                          monkeypatch):
    src, url = _s3_remote(s3_endpoint, tmp_path)
    rm.push(src)
    t = _breaking_bodies(open_transport(url, s3_endpoint), set(range(3, 10 ** 6)), "reset")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mvc.MvcError, match="cannot reach S3 .* while reading object") as caught:
        rm.clone(url, str(tmp_path / "copy"), endpoint=s3_endpoint, transport=t, jobs=1)
    assert "run the command again to resume" in caught.value.hint
    partial = mvc.Repo(tmp_path / "copy")
    assert partial.fsck()["ok"] and not partial.branches()
    clone, _ = rm.clone(url, str(tmp_path / "copy"), endpoint=s3_endpoint)
    assert clone.fsck()["ok"] and clone.head() == src.head()


def test_s3_put_failures_are_retried_or_reported_and_push_repair_completes(tmp_path, aws_env, s3_endpoint,
                                                                            monkeypatch):
    """Throttling (503 SlowDown) and reset connections on PutObject: a few are retried by the
    client; when they persist the push fails clearly, no ref moves, and push --repair (or a plain
    push) completes it."""
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ConnectionClosedError
    from botocore.retries import standard
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    src, url = _s3_remote(s3_endpoint, tmp_path)
    rm.push(src)
    old = src.head()
    new = src.commit({"core": weights(2, n=6, shape=(64, 64))}, message="two")

    def failing(which):
        lock, count = threading.Lock(), [0]

        def before_send(request, **kw):
            if request.method != "PUT" or "/objects/" not in request.url:
                return None
            with lock:
                count[0] += 1
                n = count[0]
            if n not in which:
                return None
            if n % 2:
                raise ConnectionClosedError(endpoint_url=request.url)
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Length": str(len(body))}, _Raw(body))

        t = open_transport(url, s3_endpoint)
        t.client.meta.events.register("before-send.s3", before_send)
        return t

    assert rm.push(src, transport=failing({2, 3, 5}), jobs=2)["new"] == new  # retried
    src.commit({"core": weights(3, n=6, shape=(64, 64))}, message="three")
    with pytest.raises(mvc.MvcError) as caught:
        rm.push(src, transport=failing(set(range(3, 10 ** 6))), jobs=2)
    assert "S3" in caught.value.message and "again" in caught.value.hint
    assert open_transport(url, s3_endpoint).read_ref("refs/heads/main") == new  # nothing moved
    r = rm.push(src, repair=True)
    assert r["new"] == src.head() and r["repair"]["missing_resent"] >= 1
    clone, _ = rm.clone(url, str(tmp_path / "copy"), endpoint=s3_endpoint)
    assert clone.fsck()["ok"] and clone.head() == src.head() and old in {c["id"] for c in clone.log()}


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **kw):
        yield self.body

    def read(self, *a, **kw):
        body, self.body = self.body, b""
        return body


# -- certificate indexes and push/delete races -------------------------------------------------
def _certify(repo, commit, text):
    cert = json.dumps({"type": "certificate", "format": 1, "commit": commit, "passed": True,
                       "note": text}, sort_keys=True).encode()
    return repo.store.put(cert)


def test_a_push_appends_to_a_certificate_index_the_remote_owner_is_appending_to(tmp_path):
    """A writer that has the index open for appending (the owner's `mvc ci`) must not lose its
    line: a push that adds certificates to the same index appends in place too, never replacing
    the file under an open handle."""
    served, work = _served_and_clone(tmp_path)
    commit = served.head()
    index = os.path.join(served.dir, "certs", commit[:2], commit[2:])
    os.makedirs(os.path.dirname(index), exist_ok=True)
    first = _certify(served, commit, "owner one")
    with open(index, "a") as f:
        f.write(first + "\n")
    theirs = _certify(served, commit, "owner two")
    owner = open(index, "a")  # the owner's ci has opened the index and is about to write
    try:
        mine = _certify(work, commit, "pushed")
        certindex.attach(work.dir, commit, [mine])
        assert rm.push(work)["certificates"] == 1
        owner.write(theirs + "\n")
    finally:
        owner.close()
    assert set(certindex.read_index(served.dir, commit)) == {first, mine, theirs}
    clone, _ = rm.clone(served.root, str(tmp_path / "copy"))
    assert set(certindex.read_index(clone.dir, commit)) == {first, mine, theirs}


def test_an_index_line_cut_short_stays_apart_from_the_lines_appended_after_it(tmp_path):
    served, work = _served_and_clone(tmp_path)
    commit = served.head()
    index = os.path.join(served.dir, "certs", commit[:2], commit[2:])
    os.makedirs(os.path.dirname(index), exist_ok=True)
    with open(index, "w") as f:
        f.write("ab12")  # a crash in the middle of writing a line
    mine = _certify(work, commit, "pushed")
    certindex.attach(work.dir, commit, [mine])
    rm.push(work)
    assert certindex.read_index(served.dir, commit) == [mine]
    with open(certindex.index_path(work.dir, commit), "a") as f:
        f.write("cd34")
    other = _certify(work, commit, "fetched later")
    certindex.attach(work.dir, commit, [other])
    assert certindex.read_index(work.dir, commit) == [mine, other]


def test_a_push_that_loses_to_a_delete_says_so(tmp_path):
    served, work = _served_and_clone(tmp_path)
    work.commit({"core": weights(7)}, message="exp", branch="exp")
    rm.push(work, branch="exp")
    new = work.commit({"core": weights(8)}, message="exp two", branch="exp")
    other = DirectoryTransport(served.root)

    def delete_meanwhile(ref):
        other.update_ref(ref, None, expected=other.read_ref(ref))

    with pytest.raises(NonFastForward, match="was deleted while pushing") as caught:
        rm.push(work, branch="exp", transport=Hooked(DirectoryTransport(served.root), delete_meanwhile))
    assert "push again" in caught.value.hint
    assert other.read_ref("refs/heads/exp") is None
    assert rm.push(work, branch="exp")["status"] == "new branch" and other.read_ref("refs/heads/exp") == new
    assert mvc.Repo(served.root).fsck()["ok"]


# -- lazy clones -------------------------------------------------------------------------------
def test_an_open_lazy_clone_loads_what_another_process_fetched(tmp_path):
    """A long-lived process holds a lazy clone open; `mvc pull` in another process fetches a new
    commit (its blobs promised): the open repository loads it, instead of calling it missing."""
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": {"w": torch.ones(4)}}, message="one")
    lazy, _ = rm.clone(src.root, str(tmp_path / "lazy"), lazy=True)
    reader = mvc.Repo(lazy.root)
    assert torch.equal(reader.load("HEAD", "core")["w"], torch.ones(4))
    src.commit({"core": {"w": torch.full((4,), 2.0)}}, message="two")
    proc = subprocess.run([sys.executable, "-m", "mvc", "pull"], cwd=lazy.root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(reader.load("HEAD", "core")["w"], torch.full((4,), 2.0))
    assert reader.fsck()["ok"]


def test_a_promise_line_cut_short_stays_apart_from_later_ones(tmp_path):
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": {"w": torch.ones(4)}}, message="one")
    lazy, _ = rm.clone(src.root, str(tmp_path / "lazy"), lazy=True)
    with open(os.path.join(lazy.dir, "lazy", "promised"), "a") as f:
        f.write("0123abcd")  # a crash in the middle of a line
    src.commit({"core": {"w": torch.full((4,), 3.0)}}, message="two")
    rm.pull(mvc.Repo(lazy.root))
    fresh = mvc.Repo(lazy.root)
    assert torch.equal(fresh.load("HEAD", "core")["w"], torch.full((4,), 3.0)) and fresh.fsck()["ok"]


def test_a_push_completes_a_remote_whose_init_was_cut_short(tmp_path):
    """A first push killed between writing the remote's config and its HEAD: the next push writes
    HEAD, so clones check out the pushed branch."""
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": weights(1)}, message="one", branch="dev")
    url = str(tmp_path / "remote.mvc")
    rm.push(src, url, branch="dev")
    os.unlink(os.path.join(url, "HEAD"))
    src.commit({"core": weights(2)}, message="two", branch="dev")
    rm.push(src, url, branch="dev")
    assert DirectoryTransport(url).head_target() == "refs/heads/dev"


def test_a_push_completes_a_directory_remote_whose_init_left_only_folders(tmp_path):
    """A first push killed after creating the remote's folders but before its config (or a second
    first push racing it) must not find 'a directory that is not an mvc repository' for ever."""
    src = mvc.Repo.init(tmp_path / "src")
    cid = src.commit({"core": weights(1)}, message="one")
    url = tmp_path / "remote.mvc"
    for sub in ("objects", "refs/heads", "refs/tags"):
        os.makedirs(url / sub)
    assert rm.push(src, str(url))["new"] == cid
    assert DirectoryTransport(str(url)).read_ref("refs/heads/main") == cid
    other = tmp_path / "other.mvc"
    os.makedirs(other / "refs")
    (other / "refs" / "notes.txt").write_text("not mvc's")
    with pytest.raises(mvc.errors.BadInput, match="not empty and is not an mvc repository"):
        rm.push(src, str(other))


# -- real processes racing ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dir", "s3"])
def test_pushes_racing_in_real_processes_leave_whole_history(tmp_path, request, kind):
    """Rounds of two `mvc push` processes at once: to one branch (one wins, the other is told to
    fetch), to two branches (both land), and a push racing a push --delete. After every round a
    fresh clone of the remote passes fsck."""
    import random
    endpoint = None
    if kind == "dir":
        url = str(tmp_path / "remote.mvc")
    else:
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("s3_endpoint")
        import boto3
        bucket = f"mvc-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/m"
    seed = mvc.Repo.init(tmp_path / "seed")
    rm.add_remote(seed, "origin", url, endpoint)
    seed.commit({"core": weights(0)}, message="root")
    rm.push(seed)
    a, _ = rm.clone(url, str(tmp_path / "a"), endpoint=endpoint)
    b, _ = rm.clone(url, str(tmp_path / "b"), endpoint=endpoint)
    rng = random.Random(7)
    mvc_cmd = [sys.executable, "-m", "mvc"]
    for i, mode in enumerate(["same", "different", "delete", "same", "delete", "different"]):
        for r in (a, b):
            rm.fetch(r)
        if mode == "same":
            for r in (a, b):
                r.refs.update("refs/heads/main", r.refs.read("refs/remotes/origin/main"), message="reset")
                r.commit({"core": weights(rng.randrange(10 ** 6), n=6)}, message=f"{i}", branch="main")
            cmds = [(["push", "origin", "main"], a), (["push", "origin", "main"], b)]
        elif mode == "different":
            a.commit({"core": weights(rng.randrange(10 ** 6), n=6)}, message=f"a{i}", branch=f"a{i}")
            b.commit({"core": weights(rng.randrange(10 ** 6), n=6)}, message=f"b{i}", branch=f"b{i}")
            cmds = [(["push", "origin", f"a{i}"], a), (["push", "origin", f"b{i}"], b)]
        else:
            a.commit({"core": weights(rng.randrange(10 ** 6), n=6)}, message="tmp", branch=f"t{i}")
            rm.push(a, branch=f"t{i}")
            a.commit({"core": weights(rng.randrange(10 ** 6), n=6)}, message="tmp 2", branch=f"t{i}")
            rm.fetch(b)
            cmds = [(["push", "origin", f"t{i}"], a), (["push", "--delete", "origin", f"t{i}"], b)]
        procs = [subprocess.Popen(mvc_cmd + args, cwd=r.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for args, r in cmds]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        for rc, err in results:
            assert rc in (0, 3) and "Traceback" not in err, err
        if mode == "same":
            assert sorted(rc for rc, _ in results) == [0, 3], results
            assert "fetch" in [err for rc, err in results if rc == 3][0]
        if mode == "different":
            assert [rc for rc, _ in results] == [0, 0], results
        check, _ = rm.clone(url, str(tmp_path / f"check{i}"), endpoint=endpoint)
        report = check.fsck()
        assert report["ok"], (mode, report["problems"][:3])


def test_a_lazy_read_finds_the_blob_a_concurrent_pack_moved(tmp_path, monkeypatch):
    """A blob fetched on first use is stored loose and read back; packed by another process in
    between, the read said "missing (run mvc fsck)": the pack store was never asked."""
    from mvc import transport as tp
    from mvc.pack_write import pack
    src = mvc.Repo.init(tmp_path / "src")
    rm.add_remote(src, "origin", str(tmp_path / "r.mvc"))
    src.commit({"core": weights(0, n=3)}, message="x")
    rm.push(src)
    lazy_root = str(tmp_path / "lazy")
    rm.clone(str(tmp_path / "r.mvc"), lazy_root, lazy=True)
    real_download, packed = tp.LazyRemoteStore._download, []

    def download(self, oid):
        stored = real_download(self, oid)
        if not packed:  # `mvc pack` elsewhere, right now
            packed.append(pack(mvc.Repo(lazy_root))["packed"])
        return stored
    monkeypatch.setattr(tp.LazyRemoteStore, "_download", download)
    repo = mvc.Repo(lazy_root)
    t = next(iter(repo.tree("HEAD", "core")["tensors"].values()))
    data = repo.store.view(t["id"])
    assert packed and packed[0] >= 1 and mvc.objects.hash_bytes(data) == t["id"]


# -- garbage a killed gc left half deleted ----------------------------------------------------------
def _drop_half_the_blobs(repo, cid):
    """What a gc killed while it deleted (in no particular order) left: the commit and its tree
    are still there, half of the blobs are gone."""
    blobs = tree_blob_ids(mvc.Repo(repo.root).tree(cid, "core"))
    for oid in blobs[::2]:
        repo.loose.delete(oid)
    return blobs


def test_fetch_looks_below_a_commit_no_local_ref_reaches(tmp_path):
    """A fetch skipped a commit found here although no ref reached it: after a killed gc its blobs
    were half gone, the fetch moved origin/gone onto it, said ok, and fsck failed ever after."""
    local = mvc.Repo.init(tmp_path / "local")
    local.commit({"core": weights(0)}, message="base")
    rm.add_remote(local, "origin", str(tmp_path / "served"))
    rm.push(local, "origin", "main")
    cid = local.commit({"core": weights(1, n=6)}, message="gone", branch="gone")
    rm.push(local, "origin", "gone")
    local.delete_branch("gone")
    local.refs.update("refs/remotes/origin/gone", None)
    local.refs.expire_reflogs(-1)  # nothing reaches the commit any more
    _drop_half_the_blobs(local, cid)
    assert local.fsck()["ok"]  # only unreachable garbage is incomplete
    rm.fetch(local, "origin")
    assert local.refs.read("refs/remotes/origin/gone") == cid
    assert local.fsck()["ok"] and len(local.load("origin/gone", "core")) == 6


def test_push_looks_below_a_commit_the_remote_holds_unreachable(tmp_path):
    """The same on the other side: a repository served as a remote, whose gc was killed, held the
    commit and tree but not all blobs; push skipped them and the remote's new branch was broken."""
    local = mvc.Repo.init(tmp_path / "local")
    local.commit({"core": weights(0)}, message="base")
    served = mvc.Repo.init(tmp_path / "served")
    rm.add_remote(local, "origin", served.root)
    rm.push(local, "origin", "main")
    cid = local.commit({"core": weights(1, n=6)}, message="exp", branch="exp")
    rm.push(local, "origin", "exp")
    served = mvc.Repo(served.root)
    served.delete_branch("exp")
    served.refs.expire_reflogs(-1)
    _drop_half_the_blobs(served, cid)
    assert served.fsck()["ok"]
    rm.push(local, "origin", "exp")
    served = mvc.Repo(served.root)
    assert served.branches()["exp"] == cid and served.fsck()["ok"]
    clone = rm.clone(served.root, str(tmp_path / "clone"))[0]
    assert len(clone.load("origin/exp", "core")) == 6


def test_gc_deletes_commits_then_trees_then_blobs_and_stops_on_a_missing_reachable_blob(tmp_path, monkeypatch):
    """gc deleted in hex order, so a kill left commits without trees and trees without blobs; and
    a reachable blob already missing did not stop it (only commits and trees were checked)."""
    from mvc.errors import CorruptObject
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"core": weights(0)}, message="keep")
    gone = repo.commit({"core": weights(1)}, message="gone", branch="gone")
    garbage = {gone, repo.read_commit(gone)["components"]["core"], *tree_blob_ids(repo.tree(gone, "core"))}
    repo.delete_branch("gone")
    repo.set_config("gc.reflogExpire", "0")
    order, real = [], repo.loose.delete
    monkeypatch.setattr(repo.loose, "delete", lambda oid: (order.append((oid, repo.kind_of(oid))), real(oid)))
    repo.gc(grace_s=0)
    kinds = [k for oid, k in order if oid in garbage]
    assert len(kinds) == len(garbage) and kinds == sorted(kinds, key=["commit", "tree", "blob"].index), kinds
    other = mvc.Repo.init(tmp_path / "o")
    other.commit({"core": weights(2)}, message="x")
    other.loose.delete(next(iter(other.tree("main", "core")["tensors"].values()))["id"])
    with pytest.raises(CorruptObject, match="reachable objects are missing"):
        other.gc(grace_s=0)


def test_gc_deletion_rank_reads_commits_and_trees_only(tmp_path):
    """A JSON side file (config.json) ranked with the commits, and a tree over 4 MB with the blobs:
    a gc killed between them left a tree without its blobs."""
    import json as _json
    repo = mvc.Repo.init(tmp_path / "r")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8, "type": "x"}')
    cid = repo.commit({"model": str(folder)}, message="x")
    tree = repo.tree(cid, "model")
    side = tree["files"]["config.json"]["id"]
    entry = {"id": "0" * 64, "dtype": "F32", "shape": [1], "file": "model.safetensors"}
    big_tree = repo.loose.put(_json.dumps(
        {"format": 1, "type": "tree", "kind": "other", "files": {"model.safetensors": tree["files"]["config.json"]},
         "tensors": {f"t{i}": entry for i in range(50_000)}}, sort_keys=True, separators=(",", ":")).encode())
    assert os.path.getsize(repo.loose.path(big_tree)) > mvc.objects.SMALL_OBJECT
    ranks = {oid: repo._deletion_rank(oid) for oid in (cid, repo.read_commit(cid)["components"]["model"], side,
                                                        big_tree)}
    assert list(ranks.values()) == [0, 1, 2, 1]


def test_fetch_takes_the_remotes_copy_of_a_tree_damaged_here(tmp_path):
    """Looking below trees it holds, fetch read a damaged local copy and stopped (no ref moved)."""
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"a": weights(0, n=2), "b": weights(1, n=2)}, message="one")
    work = rm.clone(src.root, str(tmp_path / "work"))[0]
    tid = work.read_commit(work.head())["components"]["a"]
    path = work.loose.path(tid)
    os.chmod(path, 0o644)
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 1
    open(path, "wb").write(bytes(data))
    head = src.commit({"b": weights(2, n=2)}, message="two (a unchanged)")  # shares the damaged tree
    rm.fetch(mvc.Repo(work.root), "origin")
    assert mvc.Repo(work.root).refs.read("refs/remotes/origin/main") == head


def test_a_push_reads_no_tree_of_the_remotes_tags(tmp_path, monkeypatch):
    """Trusting the remote's ref heads must not read their trees: with 30 tags a one-commit push
    read 31 trees (15 s at 1,000 checkpoint tags of a large model)."""
    work = mvc.Repo.init(tmp_path / "work")
    rm.add_remote(work, "origin", str(tmp_path / "remote"))
    base = weights(0, n=3)
    for i in range(30):
        work.commit({"m": {**base, "step": torch.tensor([i])}}, message=f"ckpt {i}")
        work.tag(f"ckpt-{i}")
    rm.push(work)
    work.commit({"m": {**base, "step": torch.tensor([-1])}}, message="new")
    again = mvc.Repo(work.root)
    reads, real = [], again.read_tree
    monkeypatch.setattr(again, "read_tree", lambda tid, **kw: (reads.append(tid), real(tid, **kw))[1])
    rm.push(again)
    assert rm.clone(str(tmp_path / "remote"), str(tmp_path / "check"))[0].head() == again.head()
    assert len(reads) <= 3, len(reads)


def test_export_refuses_a_pytorch_name_before_a_lazy_clone_downloads_anything(tmp_path):
    from mvc.errors import BadInput
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": weights(0, n=8)}, message="one")
    lazy = rm.clone(src.root, str(tmp_path / "lazy"), lazy=True)[0]
    before = set(lazy.loose.ids())
    with pytest.raises(BadInput, match="PyTorch name"):
        lazy.export("HEAD", "core", str(tmp_path / "core.pt"))
    assert set(lazy.loose.ids()) == before


def _lazy_of(tmp_path, n=6):
    """(origin, a lazy clone of it) of two commits of `core`."""
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": weights(0, n=n)}, message="one")
    src.commit({"core": {**weights(0, n=n), "w0": torch.ones(16, 16)}}, message="two")
    return src, rm.clone(src.root, str(tmp_path / "lazy"), lazy=True)[0]


def test_a_refused_checkout_or_export_downloads_nothing_and_a_push_plan_reads_no_blob(tmp_path):
    """A destination of another size was refused only after every blob was downloaded; a push's plan
    (and --dry-run) downloaded every unfetched blob to learn its size; a revision naming one did too."""
    from mvc.errors import BadInput, UnknownRevision
    _src, lazy = _lazy_of(tmp_path)
    before = set(lazy.loose.ids())
    (tmp_path / "out" / "core").mkdir(parents=True)
    (tmp_path / "out" / "core" / "model.safetensors").write_bytes(b"my own notes")
    with pytest.raises(BadInput, match="already exist with other content"):
        lazy.checkout("HEAD", str(tmp_path / "out"))
    assert set(lazy.loose.ids()) == before  # nothing downloaded
    (tmp_path / "core.safetensors").write_bytes(b"x")
    with pytest.raises(BadInput, match="already exist with other content"):
        lazy.export("HEAD", "core", str(tmp_path / "core.safetensors"))
    assert set(lazy.loose.ids()) == before
    blob = tree_blob_ids(lazy.tree("HEAD", "core"))[0]
    with pytest.raises(UnknownRevision, match="names a blob, not a commit"):
        lazy.resolve(blob)
    assert set(lazy.loose.ids()) == before
    rm.add_remote(lazy, "third", str(tmp_path / "third.mvc"))
    plan = rm.push(lazy, "third", dry_run=True)
    assert plan["dry_run"] and set(lazy.loose.ids()) == before
    lazy.export("HEAD", "core", str(tmp_path / "fresh.safetensors"))  # (and what is accepted still is)
    assert set(lazy.loose.ids()) > before


def test_repairs_and_lazy_clones_of_lazy_clones_say_what_was_never_fetched(tmp_path):
    """A lazy clone's push --repair called blobs it never fetched 'damaged too' (its hint, fsck
    --repair-from, restored nothing); a lazy clone of a lazy clone called the blobs its remote never
    fetched damage on the remote."""
    from mvc.errors import ObjectMissing
    from mvc.remote.pushing import RepairIncomplete
    src, lazy = _lazy_of(tmp_path)
    second = rm.clone(lazy.root, str(tmp_path / "second"), lazy=True)[0]
    with pytest.raises(ObjectMissing, match="is a lazy clone that has not fetched it either") as e:
        second.load("HEAD", "core")
    assert "damaged" not in str(e.value) and src.root in e.value.hint
    origin = DirectoryTransport(str(tmp_path / "origin.mvc"))
    rm.add_remote(src, "bare", origin.root)
    rm.push(src, "bare")
    lazy2 = rm.clone(origin.root, str(tmp_path / "lazy2"), lazy=True)[0]
    blob = tree_blob_ids(lazy2.tree("HEAD", "core"))[1]
    path = origin.objects.path(blob)
    os.chmod(path, 0o644)
    os.unlink(path)  # the remote loses a blob this lazy clone never fetched
    with pytest.raises(RepairIncomplete, match="this lazy clone never fetched them") as e:
        rm.push(lazy2, repair=True)
    assert "damaged too" not in str(e.value) and "from a repository that holds them" in e.value.hint
    lost = src.loose.path(blob)  # a repository that is no lazy clone loses the blob too
    os.chmod(lost, 0o644)
    os.unlink(lost)
    with pytest.raises(RepairIncomplete, match="the local copy is damaged too") as e:
        rm.push(src, "bare", repair=True)
    assert "lazy clone" not in str(e.value) and "fsck --repair-from" in e.value.hint


def test_a_lazy_load_makes_small_blobs_durable_a_batch_at_a_time(tmp_path, monkeypatch):
    """Each blob a lazy clone fetched on first use had its own fsync and its own take of the writers
    lock (a load of 30,000 tiny tensors: 14 s)."""
    from mvc import store as store_mod
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": {f"w{i}": torch.full((4,), float(i)) for i in range(300)}}, message="many")
    lazy = rm.clone(src.root, str(tmp_path / "lazy"), lazy=True)[0]
    monkeypatch.setattr(store_mod, "syncfs", lambda *a: True)  # (where the kernel has it)
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    got = mvc.Repo(lazy.root).load("HEAD", "core")
    assert len(fsyncs) < 50, len(fsyncs)
    assert all(torch.equal(got[f"w{i}"], torch.full((4,), float(i))) for i in range(300))
    assert mvc.Repo(lazy.root).fsck()["ok"] and not os.listdir(lazy.loose.tmp)
    assert len(set(lazy.loose.ids())) > 300  # fetched and kept


@pytest.mark.parametrize("case", ["folder where a file goes", "file where a component folder goes",
                                  "file where the output folder goes", "file above export's folder"])
def test_a_checkout_refuses_a_path_in_the_way_before_a_lazy_clone_downloads_anything(tmp_path, case):
    """A folder where a file goes, or a file where a folder goes (-o's folder itself, or one above
    it), was refused only when the folders were opened, after every blob had been downloaded."""
    from mvc.errors import BadInput
    _src, lazy = _lazy_of(tmp_path)
    before = set(lazy.loose.ids())
    out = tmp_path / "out"
    write = lambda force: lazy.checkout("HEAD", str(out), force=force)  # noqa: E731
    match = "is a file where the checkout needs a folder"
    if case == "folder where a file goes":
        (out / "core" / "model.safetensors").mkdir(parents=True)
        match = "a folder stands there"
    elif case == "file where a component folder goes":
        out.mkdir()
        (out / "core").write_bytes(b"in the way")
    else:
        out.write_bytes(b"in the way")
        if case == "file where the output folder goes":  # (-o naming a file: checkout writes a folder)
            match = "it is a file, and checkout writes a folder"
        if case == "file above export's folder":
            match = "out is a file, not a folder"
            write = lambda force: lazy.export("HEAD", "core", str(out / "sub" / "x.safetensors"),  # noqa: E731
                                             force=force)
    for force in (False, True):
        with pytest.raises(BadInput, match=match):
            write(force)
        assert set(lazy.loose.ids()) == before  # nothing downloaded


def test_a_push_from_a_clock_ahead_leaves_another_pushs_temp_files_alone(tmp_path, monkeypatch):
    """A bare remote's stale temp files were judged by this machine's clock: a push from one running
    two hours ahead deleted the temp file of a push in flight from another machine."""
    import mvc.transport as transport
    remote = DirectoryTransport(str(tmp_path / "remote.mvc"))
    remote.init("main")
    live = os.path.join(remote.objects.tmp, "0" * 16 + "-inflight")
    os.makedirs(remote.objects.tmp, exist_ok=True)
    with open(live, "wb") as f:
        f.write(b"half an object")
    stale = os.path.join(remote.objects.tmp, "1" * 16 + "-killed")
    with open(stale, "wb") as f:
        f.write(b"left by a killed push")
    os.utime(stale, (time.time() - 2 * transport.STALE_TMP_S,) * 2)
    real = time.time
    monkeypatch.setattr(transport.time, "time", lambda: real() + 2 * 3600)
    assert remote._remove_stale_tmp() == 1
    assert os.listdir(remote.objects.tmp) == [os.path.basename(live)]  # (the clock probe's file is gone too)


def test_a_bare_remote_s_stale_ref_temp_files_are_removed_by_a_later_push(tmp_path):
    """h76: a push killed while it wrote a ref left refs/tags/.v1.<hex>.tmp in a bare remote for
    ever (only objects/tmp was swept)."""
    import mvc.transport as transport
    remote = DirectoryTransport(str(tmp_path / "remote.mvc"))
    remote.init("main")
    tags = os.path.join(remote.root, "refs", "tags")
    stale, young, other = (os.path.join(tags, n) for n in (".v1." + "a" * 16 + ".tmp", ".v2." + "b" * 16 + ".tmp",
                                                            "notes.txt"))
    for path in (stale, young, other):
        with open(path, "w") as f:
            f.write("x")
    os.utime(stale, (time.time() - 2 * transport.STALE_TMP_S,) * 2)
    os.utime(other, (time.time() - 2 * transport.STALE_TMP_S,) * 2)
    assert remote._remove_stale_tmp() == 1
    assert sorted(os.listdir(tags)) == sorted(os.path.basename(p) for p in (young, other))


def test_a_push_to_a_folder_that_is_no_remote_sweeps_none_of_its_files(tmp_path):
    """h81: the stale-temp sweep ran before the push found the folder was no mvc remote, deleting
    old files named like temp files there."""
    import mvc.transport as transport
    folder = tmp_path / "not-a-remote"
    (folder / "refs").mkdir(parents=True)
    mine = [folder / (".notes." + "c" * 16 + ".tmp"), folder / "refs" / (".x." + "d" * 16 + ".tmp")]
    for path in mine:
        path.write_text("mine")
        os.utime(path, (time.time() - 2 * transport.STALE_TMP_S,) * 2)
    assert DirectoryTransport(str(folder))._remove_stale_tmp() == 0
    assert all(p.exists() for p in mine) and sorted(os.listdir(folder)) == sorted([mine[0].name, "refs"])

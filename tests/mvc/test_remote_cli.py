"""The remote commands' surface (directory remotes): remote add/list/remove, errors and exit codes,
dry runs, URL handling, resumed clones, pushing from a lazy clone, push --repair, and no torch import."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import mvc
from mvc import remote as rm
from mvc.cli import cli
from mvc.transport import DirectoryTransport

from damage import flip_byte


def invoke(monkeypatch, cwd, *args):
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_remote_add_list_remove(in_repo, tmp_path, monkeypatch):
    root = in_repo.root
    r = invoke(monkeypatch, root, "remote", "add", "origin", "../shared.mvc")
    assert r.exit_code == 0, r.output
    r = invoke(monkeypatch, root, "remote", "add", "minio", "s3://bucket/team/", "--endpoint", "http://127.0.0.1:9000")
    assert r.exit_code == 0, r.output
    assert invoke(monkeypatch, root, "remote").stdout.split() == ["minio", "origin"]
    verbose = invoke(monkeypatch, root, "remote", "-v").stdout
    assert f"origin\t{os.path.abspath(os.path.join(root, '..', 'shared.mvc'))}" in verbose
    assert "minio\ts3://bucket/team (endpoint http://127.0.0.1:9000)" in verbose
    listed = json.loads(invoke(monkeypatch, root, "remote", "list", "--json").stdout)
    assert [(x["name"], x["url"], x["endpoint"]) for x in listed] == [
        ("minio", "s3://bucket/team", "http://127.0.0.1:9000"),
        ("origin", os.path.abspath(os.path.join(root, "..", "shared.mvc")), None)]
    assert in_repo.__class__(root).get_config("remote.minio.endpoint") == "http://127.0.0.1:9000"

    r = invoke(monkeypatch, root, "remote", "add", "origin", "/elsewhere")
    assert r.exit_code == 3 and "already exists" in r.stderr
    r = invoke(monkeypatch, root, "remote", "add", "bad/name", "/x")
    assert r.exit_code == 3
    r = invoke(monkeypatch, root, "remote", "remove", "minio")
    assert r.exit_code == 0
    assert invoke(monkeypatch, root, "remote").stdout.split() == ["origin"]
    r = invoke(monkeypatch, root, "remote", "remove", "minio")
    assert r.exit_code == 3 and "no remote named" in r.stderr


@pytest.mark.parametrize("name", ["bad name", "HEAD", "a/b", "heads", "tags", "remotes", "refs"])
def test_config_refuses_remote_names_remote_add_refuses(in_repo, tmp_path, monkeypatch, name):
    """`mvc config 'remote.bad name.url' URL` was stored: fetch then failed on a branch name the user
    never typed, and remote HEAD made refs/remotes/HEAD/main."""
    added = invoke(monkeypatch, in_repo.root, "remote", "add", name, tmp_path / "shared.mvc")
    r = invoke(monkeypatch, in_repo.root, "config", f"remote.{name}.url", tmp_path / "shared.mvc")
    assert added.exit_code == r.exit_code == 3 and r.stderr == added.stderr
    assert r.stderr.startswith(f"error: invalid remote name {name!r}")
    assert rm.list_remotes(mvc.Repo(in_repo.root)) == []
    assert invoke(monkeypatch, in_repo.root, "config", "remote.origin.url", tmp_path / "shared.mvc").exit_code == 0


def test_config_stores_a_remote_url_as_remote_add_does(in_repo, tmp_path, monkeypatch):
    """`mvc config remote.NAME.url ../moved` (the hint a lazy clone gives when its remote moved) kept
    the relative path as typed: a command run from a subfolder then looked for the remote there."""
    os.makedirs(os.path.join(in_repo.root, "sub"))
    r = invoke(monkeypatch, os.path.join(in_repo.root, "sub"), "config", "remote.origin.url", "../../moved.mvc")
    assert r.exit_code == 0, r.output
    assert mvc.Repo(in_repo.root).get_config("remote.origin.url") == os.path.abspath(
        os.path.join(in_repo.root, "..", "moved.mvc"))
    for url, says in ((in_repo.root, "is this repository itself"), ("s3://KEY:SECRET@bucket/p", "credentials")):
        r = invoke(monkeypatch, in_repo.root, "config", "remote.origin.url", url)
        assert r.exit_code == 3 and says in r.stderr
    assert "SECRET" not in open(os.path.join(in_repo.dir, "config")).read()
    assert invoke(monkeypatch, in_repo.root, "config", "remote.origin.note", "../kept as typed").exit_code == 0
    assert mvc.Repo(in_repo.root).get_config("remote.origin.note") == "../kept as typed"
    monkeypatch.chdir(in_repo.root)  # the Python API stores it the same way (only the command did)
    in_repo.set_config("remote.api.url", "../api.mvc")
    assert in_repo.get_config("remote.api.url") == os.path.abspath(os.path.join(in_repo.root, "..", "api.mvc"))
    with pytest.raises(mvc.errors.BadInput, match="credentials"):
        in_repo.set_config("remote.api.url", "s3://KEY:SECRET@bucket/p")


def test_credentials_are_never_written_to_the_config(in_repo, monkeypatch):
    for args in (["remote", "add", "a", "s3://KEY:SECRET@bucket/p"],
                 ["remote", "add", "b", "s3://bucket/p", "--endpoint", "http://user:pw@127.0.0.1:9000"]):
        r = invoke(monkeypatch, in_repo.root, *args)
        assert r.exit_code == 3 and "credentials are never stored" in r.stderr
    invoke(monkeypatch, in_repo.root, "remote", "add", "s3r", "s3://bucket/p")
    for key, value in (("remote.s3r.endpoint", "http://AKIA:SECRET@127.0.0.1:9000"),  # (config stored it)
                       ("remote.s3r.url", "s3://KEY:SECRET@bucket/p")):
        r = invoke(monkeypatch, in_repo.root, "config", key, value)
        assert r.exit_code == 3 and "credentials are never stored" in r.stderr, r.output
    assert "SECRET" not in open(os.path.join(in_repo.dir, "config")).read()
    r = invoke(monkeypatch, in_repo.root, "remote", "add", "c", "http://example.com/models")
    assert r.exit_code == 3 and "unsupported remote URL" in r.stderr


def test_errors_are_one_line_with_exit_3(in_repo, tmp_path, monkeypatch):
    in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    r = invoke(monkeypatch, in_repo.root, "push")
    assert r.exit_code == 3 and r.stderr.startswith("error: no remote configured")
    r = invoke(monkeypatch, in_repo.root, "fetch", "nowhere")
    assert r.exit_code == 3 and "no remote named 'nowhere'" in r.stderr
    r = invoke(monkeypatch, tmp_path, "clone", str(tmp_path / "missing"), "x")
    assert r.exit_code == 3 and "no mvc repository" in r.stderr
    rm.add_remote(in_repo, "origin", str(tmp_path / "r.mvc"))
    r = invoke(monkeypatch, in_repo.root, "push", "origin", "--delete")
    assert r.exit_code == 2 and "needs the BRANCH" in r.stderr
    r = invoke(monkeypatch, in_repo.root, "push", "origin", "nosuch")
    assert r.exit_code == 3 and "no local branch" in r.stderr
    r = invoke(monkeypatch, in_repo.root, "push", "--delete", "nosuch")
    assert r.exit_code == 3
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "file").write_text("x")
    r = invoke(monkeypatch, in_repo.root, "push", str(tmp_path / "junk"))
    assert r.exit_code == 3 and "not empty" in r.stderr


def test_dry_run_reports_objects_bytes_and_what_is_there(in_repo, tmp_path, monkeypatch):
    in_repo.commit({"core": {"a": torch.ones(64), "b": torch.zeros(64)}}, message="one")
    rm.add_remote(in_repo, "origin", str(tmp_path / "r.mvc"))
    r = invoke(monkeypatch, in_repo.root, "push", "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("would send 5 objects,") and "(0 already there)" in r.stdout
    assert not os.path.exists(tmp_path / "r.mvc")  # nothing created
    assert invoke(monkeypatch, in_repo.root, "push").exit_code == 0
    in_repo.commit({"core": {"a": torch.ones(64), "b": torch.full((64,), 2.0)}}, message="two")
    r = invoke(monkeypatch, in_repo.root, "push", "-n", "--json")
    doc = json.loads(r.stdout)
    assert doc["objects_sent"] == 3 and doc["status"] == "fast-forward"  # blob b, tree, commit


def test_push_to_a_url_and_push_branch_shorthand(in_repo, tmp_path, monkeypatch):
    cid = in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    in_repo.create_branch("exp")
    target = tmp_path / "plain.mvc"
    r = invoke(monkeypatch, in_repo.root, "push", str(target), "exp")
    assert r.exit_code == 0, r.output
    assert DirectoryTransport(str(target)).read_ref("refs/heads/exp") == cid
    rm.add_remote(in_repo, "origin", str(tmp_path / "o.mvc"))
    r = invoke(monkeypatch, in_repo.root, "push", "exp")  # a branch, not a remote: origin
    assert r.exit_code == 0, r.output
    assert DirectoryTransport(str(tmp_path / "o.mvc")).read_ref("refs/heads/exp") == cid


def test_push_and_pull_of_head_mean_the_current_branch(in_repo, tmp_path, monkeypatch):
    """`mvc push origin HEAD` said "invalid branch or tag name 'HEAD'"."""
    cid = in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    rm.add_remote(in_repo, "origin", str(tmp_path / "o.mvc"))
    for args in (["push", "origin", "HEAD"], ["push", "HEAD"], ["pull", "origin", "HEAD"]):
        r = invoke(monkeypatch, in_repo.root, *args)
        assert r.exit_code == 0 and "HEAD" not in r.stdout, (args, r.output)
    assert DirectoryTransport(str(tmp_path / "o.mvc")).read_ref("refs/heads/main") == cid
    assert json.loads(invoke(monkeypatch, in_repo.root, "push", "origin", "HEAD", "--json").stdout)["branch"] == "main"


def test_a_rejected_push_is_one_error_with_one_hint_in_brackets(in_repo, tmp_path, monkeypatch):
    """It read "... your main (id) (fetch first (mvc pull origin main); or pass --force ...)"."""
    rm.add_remote(in_repo, "origin", str(tmp_path / "o.mvc"))
    in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    assert invoke(monkeypatch, in_repo.root, "push").exit_code == 0
    in_repo.create_branch("side")  # the remote's main moves to a commit made on another branch
    theirs = in_repo.commit({"core": {"w": torch.zeros(4)}}, message="theirs", branch="side")
    DirectoryTransport(str(tmp_path / "o.mvc")).update_ref("refs/heads/main", theirs,
                                                           expected=in_repo.resolve("main"))
    ours = in_repo.commit({"core": {"w": torch.full((4,), 2.0)}}, message="ours")
    r = invoke(monkeypatch, in_repo.root, "push")
    assert r.exit_code == 3 and r.stderr == (
        f"error: push to origin rejected: remote main at {theirs[:12]} is not an ancestor of your main at "
        f"{ours[:12]}: the two have diverged (mvc has no merge: keep yours with mvc push --force origin main, "
        "or take theirs with mvc fetch origin, then, on main, mvc rollback origin/main)\n")
    assert invoke(monkeypatch, in_repo.root, "fetch").exit_code == 0  # the hint's commands run as written
    assert invoke(monkeypatch, in_repo.root, "rollback", "origin/main").exit_code == 0
    assert in_repo.head() == theirs


def test_a_rejected_push_advises_what_works_behind_diverged_or_not_known(in_repo, tmp_path, monkeypatch):
    """The hint was always "fetch first with mvc pull origin main", which fails ("pull only
    fast-forwards") when the two have diverged."""
    rm.add_remote(in_repo, "origin", str(tmp_path / "o.mvc"))
    in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    assert invoke(monkeypatch, in_repo.root, "push").exit_code == 0
    other, _ = rm.clone(str(tmp_path / "o.mvc"), str(tmp_path / "other"))
    theirs = other.commit({"core": {"w": torch.full((4,), 5.0)}}, message="theirs")  # not known here
    assert invoke(monkeypatch, other.root, "push").exit_code == 0
    r = invoke(monkeypatch, in_repo.root, "push")
    assert r.exit_code == 3 and theirs[:12] in r.stderr and "diverged:" not in r.stderr
    assert "(mvc pull origin main fetches it and fast-forwards yours if it is behind, or says that they have " \
        "diverged)" in r.stderr
    assert invoke(monkeypatch, in_repo.root, "fetch").exit_code == 0
    r = invoke(monkeypatch, in_repo.root, "push")  # known now, and ours lies below it
    assert r.exit_code == 3 and "(yours is behind it: mvc pull origin main brings it here; after a rollback, " \
        "mvc push --force origin main moves it back to yours)" in r.stderr
    assert invoke(monkeypatch, in_repo.root, "pull").exit_code == 0 and in_repo.head() == theirs


def test_an_mvc_repository_can_be_a_remote(tmp_path):
    a = mvc.Repo.init(tmp_path / "a")
    cid = a.commit({"core": {"w": torch.ones(4)}}, message="one")
    b, info = rm.clone(a.root, str(tmp_path / "b"))
    assert b.head() == cid and info["branch"] == "main"


def test_interrupted_clone_resumes(tmp_path, monkeypatch):
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": {f"w{i}": torch.full((8,), float(i)) for i in range(6)}}, message="one")
    rm.add_remote(src, "origin", str(tmp_path / "r.mvc"))
    rm.push(src)
    real_get = DirectoryTransport.get_into
    calls = []

    def flaky(self, oid, f, **kw):
        calls.append(oid)
        if len(calls) == 5:
            raise OSError(5, "simulated I/O error")
        return real_get(self, oid, f, **kw)

    monkeypatch.setattr(DirectoryTransport, "get_into", flaky)
    try:
        rm.clone(str(tmp_path / "r.mvc"), str(tmp_path / "c"), jobs=1)
    except OSError:
        pass
    monkeypatch.setattr(DirectoryTransport, "get_into", real_get)
    partial = mvc.Repo(tmp_path / "c")
    assert not partial.branches() and len(list(partial.loose.ids())) >= 1
    r = invoke(monkeypatch, tmp_path, "clone", str(tmp_path / "r.mvc"), "c")
    assert r.exit_code == 0, r.output
    assert mvc.Repo(tmp_path / "c").head() == src.head() and mvc.Repo(tmp_path / "c").fsck()["ok"]
    r = invoke(monkeypatch, tmp_path, "clone", str(tmp_path / "r.mvc"), "c")
    assert r.exit_code == 3 and "already holds a clone of" in r.stderr and "mvc pull there" in r.stderr


def test_push_from_a_lazy_clone_to_another_remote_fetches_what_it_lacks(tmp_path):
    src = mvc.Repo.init(tmp_path / "src")
    w = torch.randn(32, 32)
    src.commit({"core": {"w": w}}, message="one")
    rm.add_remote(src, "origin", str(tmp_path / "r.mvc"))
    rm.push(src)
    lazy, _ = rm.clone(str(tmp_path / "r.mvc"), str(tmp_path / "lazy"), lazy=True)
    rm.add_remote(lazy, "backup", str(tmp_path / "backup.mvc"))
    assert rm.push(lazy, "backup")["objects_sent"] == 4  # blob, header, tree, commit
    full, _ = rm.clone(str(tmp_path / "backup.mvc"), str(tmp_path / "full"))
    assert full.fsck()["ok"] and torch.equal(full.load("HEAD", "core")["w"], w)
    r = rm.remove_remote
    try:
        r(mvc.Repo(lazy.root), "origin")
        raise AssertionError("removing the promisor remote must need --force")
    except mvc.MvcError as e:
        assert "lazy clone" in e.message


def test_remote_commands_do_not_import_torch(tmp_path):
    src = mvc.Repo.init(tmp_path / "src")
    src.commit({"core": {"w": torch.ones(3)}}, message="x")
    script = textwrap.dedent(f"""
        import json, os, sys
        from click.testing import CliRunner
        from mvc.cli import cli
        os.chdir({src.root!r})
        steps = [["remote", "add", "origin", "../r.mvc"], ["push"], ["push", "--dry-run"], ["push", "--repair"],
                 ["fetch"], ["pull"],
                 ["remote", "-v"], ["clone", "../r.mvc", "../c"], ["clone", "--lazy", "../r.mvc", "../l"]]
        for args in steps:
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 0, (args, r.output)
        print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m == "boto3")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


# -- push --repair -----------------------------------------------------------------------------
def _files(repo, rev, out):
    repo.checkout(rev, str(out))
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(out) for f in files}


def _core(seed):
    g = torch.Generator().manual_seed(seed)
    return {"core": {f"w{i}": torch.randn(32, 16, generator=g) for i in range(4)}}


def _damaged_remote(tmp_path, damage):
    """(a working repository, the URL of its origin, the damaged blob or None for a pack)."""
    if damage == "pack":
        from mvc.pack_write import pack
        served = mvc.Repo.init(tmp_path / "served")
        for i in range(3):
            served.commit(_core(i), message=f"c{i}")
        pack(served, full=True)
        work, _ = rm.clone(served.root, str(tmp_path / "work"))
        pack_dir = os.path.join(served.dir, "objects", "pack")
        flip_byte(os.path.join(pack_dir, next(p for p in os.listdir(pack_dir) if p.endswith(".pack"))), 400)
        return work, served.root, None
    work = mvc.Repo.init(tmp_path / "work")
    c1 = work.commit(_core(1), message="one")
    work.commit(_core(2), message="two")
    url = str(tmp_path / "r.mvc")
    rm.add_remote(work, "origin", url)
    rm.push(work)
    blob = work.read_tree(work.read_commit(c1)["components"]["core"])["tensors"]["w1"]["id"]
    path = DirectoryTransport(url).objects.path(blob)
    if damage == "deleted":
        os.unlink(path)
    else:
        flip_byte(path, 90)
    return work, url, blob


@pytest.mark.parametrize("damage", ["deleted", "flipped", "pack"])
def test_push_repair_fixes_a_damaged_directory_remote(tmp_path, monkeypatch, damage):
    work, url, blob = _damaged_remote(tmp_path, damage)
    r = invoke(monkeypatch, work.root, "push")
    assert r.exit_code == 0 and "nothing to send" in r.stdout and "(up to date)" in r.stdout
    r = invoke(monkeypatch, tmp_path, "clone", url, "broken")
    assert r.exit_code == 3  # the damage is real

    r = invoke(monkeypatch, work.root, "push", "--repair", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    dry = json.loads(r.stdout)["repair"]
    assert dry["missing_resent"] + dry["damaged_resent"] >= 1 and not dry["local_damaged"]
    assert invoke(monkeypatch, tmp_path, "clone", url, "still-broken").exit_code == 3  # a dry run sends nothing

    r = invoke(monkeypatch, work.root, "push", "--repair")
    assert r.exit_code == 0, r.output
    kind = "missing" if damage == "deleted" else "damaged"
    n = dry[f"{kind}_resent"]
    assert f"verified {dry['checked']} objects on origin: re-sent" in r.stdout and f" {n} {kind}" in r.stdout
    if blob:
        assert dry[kind] == [blob]
    r = invoke(monkeypatch, work.root, "push", "--repair", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["objects_sent"] == 0 and doc["repair"]["checked"] == dry["checked"]
    assert doc["repair"]["missing_resent"] == doc["repair"]["damaged_resent"] == doc["repair"]["bytes_sent"] == 0

    r = invoke(monkeypatch, tmp_path, "clone", url, "fresh")
    assert r.exit_code == 0, r.output
    r = invoke(monkeypatch, tmp_path / "fresh", "fsck")
    assert r.exit_code == 0, r.output
    fresh = mvc.Repo(tmp_path / "fresh")
    for c in work.log():
        rev = c["id"]
        assert _files(fresh, rev, tmp_path / f"f{rev[:6]}") == _files(work, rev, tmp_path / f"w{rev[:6]}")


def test_push_repair_with_a_damaged_local_copy_names_it_and_exits_3(tmp_path, monkeypatch):
    work, url, blob = _damaged_remote(tmp_path, "flipped")
    remote_path = DirectoryTransport(url).objects.path(blob)
    remote_bad = open(remote_path, "rb").read()
    flip_byte(work.loose.path(blob), 200)
    r = invoke(monkeypatch, work.root, "push", "--repair")
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert f"not sent: {blob}: damaged on origin" in r.stderr
    assert "error: 1 objects could not be repaired on origin" in r.stderr and "damaged too" in r.stderr
    assert "mvc fsck --repair-from" in r.stderr
    r = invoke(monkeypatch, work.root, "push", "--repair", "--json")
    assert r.exit_code == 3
    doc = json.loads(r.stdout)  # the report still comes, as one JSON document
    assert list(doc["repair"]["local_damaged"]) == [blob] and doc["repair"]["damaged"] == []
    assert open(remote_path, "rb").read() == remote_bad  # the damaged local copy was not sent


def test_push_repair_help_and_usage(in_repo, monkeypatch):
    r = invoke(monkeypatch, in_repo.root, "push", "--help")
    assert r.exit_code == 0 and "--repair" in r.stdout and "mvc push origin main --repair" in r.stdout
    r = invoke(monkeypatch, in_repo.root, "push", "--delete", "--repair", "main")
    assert r.exit_code == 2 and "do not go together" in r.stderr


def test_an_interrupted_clone_says_the_same_clone_resumes_it(tmp_path, monkeypatch):
    """It said 'interrupted after it had set remote.origin.url ... do not run the command again
    blindly', where `mvc clone --help` says a re-run resumes it, as it does (probe h8)."""
    from mvc.refs import note_moved
    remote = mvc.Repo.init(tmp_path / "remote")
    remote.commit({"m": {"w": torch.ones(2)}}, message="one")

    def interrupted(url, directory, **kw):
        note_moved("set remote.origin.url in .mvc/config", logged=False)
        raise KeyboardInterrupt
    monkeypatch.setattr(rm, "clone", interrupted)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["clone", str(tmp_path / "remote"), "c"])
    assert r.exit_code == 130 and r.stderr.startswith("error: interrupted after it had set remote.origin.url in "
                                                      ".mvc/config (that stands; the same mvc clone resumes it")
    assert "blindly" not in r.stderr


@pytest.mark.parametrize("command", ["push", "fetch", "pull"])
def test_an_interrupted_transfer_says_the_same_command_finishes_it(tmp_path, monkeypatch, command):
    """An interrupt after a push had moved the remote's branch said "do not run the command again
    blindly", where `mvc push --help` says a re-run resumes it (it sends the tags left) (h97)."""
    from mvc.refs import note_moved
    remote = mvc.Repo.init(tmp_path / "remote")
    remote.commit({"m": {"w": torch.ones(2)}}, message="one")
    local = mvc.Repo.init(tmp_path / "local")
    local.commit({"m": {"w": torch.ones(2)}}, message="one")
    rm.add_remote(local, "origin", str(tmp_path / "remote"))

    def interrupted(*a, **kw):
        note_moved("moved main on origin to 0123456789ab", logged=False)
        raise KeyboardInterrupt
    monkeypatch.setattr(rm, command, interrupted)
    monkeypatch.chdir(tmp_path / "local")
    r = CliRunner().invoke(cli, [command])
    again = {"push": "the same mvc push sends the rest", "fetch": "the same mvc fetch fetches the rest",
             "pull": "the same mvc pull goes on from there"}[command]
    assert r.exit_code == 130 and r.stderr == (f"error: interrupted after it had moved main on origin to 0123456789ab "
                                               f"(that stands; {again})\n")
    if command == "push":  # (run again, a delete finds the branch gone; a dry run did nothing)
        for extra in (["--delete", "main"], ["--dry-run"]):
            assert "the same mvc push" not in CliRunner().invoke(cli, ["push", "origin", *extra]).stderr


def test_push_reports_new_tags_reading_each_ref_a_bounded_number_of_times(tmp_path, monkeypatch):
    """The report of a push read every tag once per tag it printed: 800 new tags took 640,000 ref
    reads (16 s). Reads now grow with the tags, not with their square."""
    from mvc.refs import RefStore
    reads = []
    read = RefStore.read
    monkeypatch.setattr(RefStore, "read", lambda self, ref: (reads.append(ref), read(self, ref))[1])
    counts = []
    for n in (10, 40):
        repo = mvc.Repo.init(tmp_path / f"r{n}")
        repo.commit({"m": {"w": torch.ones(2)}}, message="x")
        for i in range(n):
            repo.tag(f"v{i}")
        reads.clear()
        r = invoke(monkeypatch, repo.root, "push", str(tmp_path / f"remote{n}.mvc"))
        assert r.exit_code == 0 and r.stdout.count("(new tag)") == n, r.output
        counts.append(len(reads))
    assert counts[1] < 6 * counts[0], counts  # (4x the tags: 16x the reads before)


# -- h64: remotes as a demanding user meets them ---------------------------------------------------
def test_a_relative_remote_url_in_the_config_is_relative_to_the_repository(in_repo, tmp_path, monkeypatch):
    """`url = ../models.mvc` written by hand was taken relative to where the command ran: a push
    from a subfolder made a new remote inside the work tree, said so as a success, and moved
    origin/main to it."""
    cid = in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    rm.add_remote(in_repo, "origin", str(tmp_path / "models.mvc"))
    config = os.path.join(in_repo.dir, "config")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace(str(tmp_path / "models.mvc"), "../models.mvc"))
    sub = os.path.join(in_repo.root, "sub")
    os.makedirs(sub)
    assert invoke(monkeypatch, sub, "push").exit_code == 0
    assert not os.path.exists(os.path.join(in_repo.root, "models.mvc"))
    assert DirectoryTransport(str(tmp_path / "models.mvc")).read_ref("refs/heads/main") == cid
    fetched = json.loads(invoke(monkeypatch, sub, "fetch", "--json").stdout)
    assert fetched["refs"] == {}  # (the same remote from anywhere: nothing new, nothing forced)


def test_push_delete_refuses_the_current_branch_of_a_repository_remote_without_force(tmp_path, monkeypatch):
    """`mvc push --delete origin main` into a repository left its owner on a branch with no commits:
    the owner's next commit started a new history (git refuses: denyDeleteCurrent)."""
    owner = mvc.Repo.init(tmp_path / "owner")
    first = owner.commit({"core": {"w": torch.ones(4)}}, message="one")
    owner.create_branch("side")
    mine, _ = rm.clone(owner.root, str(tmp_path / "mine"))
    r = invoke(monkeypatch, mine.root, "push", "--delete", "origin", "main")
    assert r.exit_code == 3 and "refusing to delete main on origin: it is the current branch" in r.stderr
    assert mvc.Repo(owner.root).branches()["main"] == first
    assert invoke(monkeypatch, mine.root, "push", "--delete", "origin", "side").exit_code == 0  # not current
    assert invoke(monkeypatch, mine.root, "push", "--delete", "origin", "main", "--force").exit_code == 0
    assert "main" not in mvc.Repo(owner.root).branches()


def test_clone_of_a_repositorys_own_mvc_folder_is_named_after_the_repository(tmp_path, monkeypatch):
    """`mvc clone /x/b/.mvc` (the form push prints: "To /x/b/.mvc") made ./.mvc/.mvc, and the folder
    it ran in was then no readable repository."""
    b = mvc.Repo.init(tmp_path / "b")
    cid = b.commit({"core": {"w": torch.ones(4)}}, message="one")
    work = tmp_path / "work"
    work.mkdir()
    r = invoke(monkeypatch, work, "clone", os.path.join(b.root, ".mvc"))
    assert r.exit_code == 0, r.output
    assert mvc.Repo(str(work / "b")).head() == cid and not (work / ".mvc").exists()


@pytest.mark.parametrize("content", ["ab" * 32 + "\n", "garbage\n"])  # (a missing commit; no id at all: h69)
def test_a_clone_whose_remote_branches_are_all_damaged_fails_instead_of_calling_it_empty(tmp_path, monkeypatch,
                                                                                          content):
    """The clone exited 0 with "the remote has no branches yet (an empty repository)"."""
    a = mvc.Repo.init(tmp_path / "a")
    a.commit({"core": {"w": torch.ones(4)}}, message="one")
    rm.add_remote(a, "origin", str(tmp_path / "r.mvc"))
    rm.push(a, "origin", "main")
    with open(tmp_path / "r.mvc" / "refs" / "heads" / "main", "w") as f:
        f.write(content)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["clone", str(tmp_path / "r.mvc"), "c"])
    assert r.exit_code == 3 and "no branch of" in r.stderr and "main names no commit there" in r.stderr
    assert "empty repository" not in r.output


def test_a_clone_whose_default_branch_is_damaged_fails_and_says_how_to_use_another(tmp_path, monkeypatch):
    """The clone checked out another branch (exit 0, a fetch warning above): the user got a model
    they had not asked for."""
    a = mvc.Repo.init(tmp_path / "a")
    a.commit({"core": {"w": torch.ones(4)}}, message="one")
    side = a.commit({"core": {"w": torch.zeros(4)}}, message="side", branch="side")
    rm.add_remote(a, "origin", str(tmp_path / "r.mvc"))
    rm.push(a, "origin", "main")
    rm.push(a, "origin", "side")
    with open(tmp_path / "r.mvc" / "refs" / "heads" / "main", "w") as f:
        f.write("ab" * 32 + "\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["clone", str(tmp_path / "r.mvc"), "c"])
    assert r.exit_code == 3 and "the default branch main of" in r.stderr and "nothing was checked out" in r.stderr
    assert "mvc branch side origin/side && mvc switch side" in r.stderr
    c = mvc.Repo(str(tmp_path / "c"))
    assert not c.branches() and c.refs.read("refs/remotes/origin/side") == side
    monkeypatch.chdir(tmp_path / "c")  # the hint's commands work as written
    assert CliRunner().invoke(cli, ["branch", "side", "origin/side"]).exit_code == 0
    assert CliRunner().invoke(cli, ["switch", "side"]).exit_code == 0
    assert mvc.Repo(str(tmp_path / "c")).head() == side
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(cli, ["clone", str(tmp_path / "r.mvc"), "d"]).exit_code == 3
    rm.push(a, "origin", "main", force=True)  # once the remote is repaired, the same clone resumes
    r = CliRunner().invoke(cli, ["clone", str(tmp_path / "r.mvc"), "d"])
    assert r.exit_code == 0 and mvc.Repo(str(tmp_path / "d")).head() == a.branches()["main"]


def test_a_damaged_default_branch_clone_hint_names_a_branch_mvc_branch_takes(tmp_path, monkeypatch):
    """The hint named min() of the fetched branches: `Release.` (a name an older mvc made) is one
    `mvc branch` refuses, so its command failed as written (h74 01)."""
    a = mvc.Repo.init(tmp_path / "a")
    a.commit({"core": {"w": torch.ones(4)}}, message="one")
    a.commit({"core": {"w": torch.zeros(4)}}, message="side", branch="side")
    rm.add_remote(a, "origin", str(tmp_path / "r.mvc"))
    for b in ("main", "side"):
        rm.push(a, "origin", b)
    heads = tmp_path / "r.mvc" / "refs" / "heads"
    os.link(heads / "side", heads / "Release.")
    (heads / "main").write_text("ab" * 32 + "\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["clone", str(tmp_path / "r.mvc"), "c"])
    assert r.exit_code == 3 and "mvc branch side origin/side && mvc switch side" in r.stderr


def test_a_clone_says_when_the_remotes_head_names_a_branch_it_does_not_have(tmp_path, monkeypatch):
    """After push --delete main on a bare remote its HEAD still names main: a clone checked out
    another branch without a word (h74 02)."""
    a = mvc.Repo.init(tmp_path / "a")
    a.commit({"core": {"w": torch.ones(4)}}, message="one")
    side = a.commit({"core": {"w": torch.zeros(4)}}, message="side", branch="side")
    rm.add_remote(a, "origin", str(tmp_path / "r.mvc"))
    for b in ("main", "side"):
        rm.push(a, "origin", b)
    os.unlink(tmp_path / "r.mvc" / "refs" / "heads" / "main")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["clone", str(tmp_path / "r.mvc"), "c"])
    assert r.exit_code == 0 and "the remote's HEAD names branch main, which it does not have: checked out side" \
        in r.stderr
    assert mvc.Repo(str(tmp_path / "c")).head() == side


def test_a_clone_of_branches_all_damaged_or_newer_tells_them_apart(tmp_path):
    """A branch of a newer format was called damaged beside a damaged one ("push --force" for both;
    upgrading mvc is the answer for the newer one: h74 09); newer ones alone say upgrade."""
    from mvc.errors import CorruptObject, FormatTooNew
    from mvc.objects import canonical_json, hash_bytes
    from mvc.transport import open_transport
    src = mvc.Repo.init(tmp_path / "src")
    head = src.commit({"model": {"w": torch.zeros(2)}}, message="one")
    remote = str(tmp_path / "remote")
    rm.add_remote(src, "origin", remote)
    rm.push(src)
    t = open_transport(remote)
    data = canonical_json({**json.loads(src.store.get(head)), "format": 3, "parents": [head], "message": "v2"})
    t.put(hash_bytes(data), data)
    t.flush()
    heads = tmp_path / "remote" / "refs" / "heads"
    (heads / "side").write_text(hash_bytes(data) + "\n")
    (heads / "main").write_text("ab" * 32 + "\n")
    with pytest.raises(CorruptObject) as e:
        rm.clone(remote, str(tmp_path / "c"))
    assert "main names no commit there; side is of a newer format than this mvc reads: upgrade mvc" in e.value.message
    (heads / "main").unlink()
    (tmp_path / "remote" / "HEAD").write_text("ref: refs/heads/side\n")
    with pytest.raises(FormatTooNew):
        rm.clone(remote, str(tmp_path / "d"))


def test_hints_that_set_a_remotes_url_quote_its_name(in_repo, monkeypatch, aws_env):
    """`mvc config remote.x&y.url ...` as a hint ran `y.url` in the background (h74 04)."""
    with open(os.path.join(in_repo.dir, "config"), "a") as f:
        f.write('\n[remote "x&y"]\nurl = s3://b/exp#1\n')
    r = invoke(monkeypatch, in_repo.root, "fetch", "x&y")
    assert r.exit_code == 3 and "mvc config 'remote.x&y.url' s3://b/exp keeps using that" in r.stderr


def test_fetch_of_a_plain_url_is_refused_as_nothing_would_keep_what_it_fetched(in_repo, tmp_path, monkeypatch):
    """`mvc fetch URL` said "received N objects" and named nothing: no ref held them, so the next gc
    --grace 0 deleted them."""
    other = mvc.Repo.init(tmp_path / "other")
    other.commit({"core": {"w": torch.ones(4)}}, message="theirs")
    before = sorted(in_repo.store.ids())
    r = invoke(monkeypatch, in_repo.root, "fetch", other.root)
    assert r.exit_code == 3 and "fetch needs a configured remote" in r.stderr and "mvc remote add NAME" in r.stderr
    assert sorted(in_repo.store.ids()) == before


def test_an_endpoint_is_refused_beside_a_directory_remote(in_repo, tmp_path, monkeypatch):
    """`remote add NAME DIR --endpoint URL` stored an endpoint nothing would use."""
    r = invoke(monkeypatch, in_repo.root, "remote", "add", "o", str(tmp_path / "d.mvc"), "--endpoint", "http://h:9000")
    assert r.exit_code == 3 and "an endpoint is for S3 remotes" in r.stderr
    assert "o" not in invoke(monkeypatch, in_repo.root, "remote").stdout.split()
    in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    rm.add_remote(in_repo, "origin", str(tmp_path / "d.mvc"))
    rm.push(in_repo, "origin", "main")
    r = invoke(monkeypatch, tmp_path, "clone", str(tmp_path / "d.mvc"), "c", "--endpoint", "http://h:9000")
    assert r.exit_code == 3 and "an endpoint is for S3 remotes" in r.stderr and not (tmp_path / "c").exists()


def test_a_push_losing_to_the_owners_commit_does_not_blame_another_push(tmp_path, monkeypatch):
    from mvc.transport import DirectoryTransport as DT
    owner = mvc.Repo.init(tmp_path / "owner")
    owner.commit({"core": {"w": torch.ones(4)}}, message="one")
    mine, _ = rm.clone(owner.root, str(tmp_path / "mine"))
    mine.commit({"core": {"w": torch.zeros(4)}}, message="mine")
    real = DT.update_ref
    theirs = []

    def update_ref(self, ref, *a, **k):  # the owner commits as the push moves the branch
        if not theirs:
            theirs.append(mvc.Repo(owner.root).commit({"core": {"w": torch.full((4,), 3.0)}}, message="owner's"))
        return real(self, ref, *a, **k)
    monkeypatch.setattr(DT, "update_ref", update_ref)
    r = invoke(monkeypatch, mine.root, "push")
    assert r.exit_code == 3 and f"moved to {theirs[0][:12]} while pushing: a commit or push there won" in r.stderr


def test_an_interrupt_as_a_push_moves_the_remote_branch_says_that_it_moved(tmp_path, monkeypatch):
    """Ctrl-C reaching a push as the remote's ref was written said only "interrupted" (bare remote),
    or "moved refs/heads/main" (a repository remote's own note, read as a ref here)."""
    from mvc.transport import DirectoryTransport as DT
    for kind in ("bare", "repository"):
        a = mvc.Repo.init(tmp_path / kind / "a")
        cid = a.commit({"core": {"w": torch.ones(4)}}, message="one")
        url = str(tmp_path / kind / "r.mvc") if kind == "bare" else mvc.Repo.init(tmp_path / kind / "owner").root
        rm.add_remote(a, "origin", url)
        real = DT.update_ref

        def update_ref(self, *args, **kw):
            real(self, *args, **kw)
            raise KeyboardInterrupt  # (after the write: its answer lost)
        monkeypatch.setattr(DT, "update_ref", update_ref)
        r = invoke(monkeypatch, a.root, "push", "origin", "main")
        monkeypatch.setattr(DT, "update_ref", real)
        assert r.exit_code == 130, r.output
        assert f"moved main on origin to {cid[:12]}" in r.stderr and "moved refs/heads/main" not in r.stderr
        assert a.refs.read("refs/remotes/origin/main") == cid


def test_an_error_after_a_push_points_at_the_reflog_only_for_a_local_move(tmp_path, monkeypatch):
    """A push that moved the remote branch, could not move its tracking ref (full disk) and then
    failed on a tag said "see mvc reflog": the local reflog had no entry for either move (h76)."""
    from mvc.refs import RefStore
    from mvc.transport import DirectoryTransport as DT
    a = mvc.Repo.init(tmp_path / "a")
    cid = a.commit({"core": {"w": torch.ones(4)}}, message="one")
    a.tag("v1")
    rm.add_remote(a, "origin", str(tmp_path / "r.mvc"))
    real_update, real_remote = RefStore.update, DT.update_ref

    def full(self, ref, *args, **kw):
        if ref.startswith("refs/remotes/"):
            raise OSError(28, "No space left on device")
        return real_update(self, ref, *args, **kw)

    def tags_fail(self, ref, *args, **kw):
        if ref.startswith("refs/tags/"):
            raise PermissionError(13, "Permission denied", ref)
        return real_remote(self, ref, *args, **kw)
    monkeypatch.setattr(RefStore, "update", full)
    monkeypatch.setattr(DT, "update_ref", tags_fail)
    r = invoke(monkeypatch, a.root, "push", "origin", "main")
    assert r.exit_code == 3, r.output
    assert f"moved main on origin to {cid[:12]}" in r.stderr and "reflog" not in r.stderr, r.stderr
    monkeypatch.setattr(RefStore, "update", real_update)  # the tracking ref moves: its reflog has the entry
    a.commit({"core": {"w": torch.zeros(4)}}, message="two")
    a.tag("v2")
    r = invoke(monkeypatch, a.root, "push", "origin", "main")
    assert r.exit_code == 3 and "see mvc reflog" in r.stderr, r.stderr
    assert a.reflog("origin/main")[0]["new"] == a.reflog("remotes/origin/main")[0]["new"] == a.resolve("main")
    r = invoke(monkeypatch, a.root, "reflog", "origin/main")  # (it said: no branch 'origin/main')
    assert r.exit_code == 0 and r.stdout.startswith(f"{a.resolve('main')[:12]} origin/main@{{0}}: push to origin"), r.output
    assert a.resolve("origin/main@{0}") == a.resolve("main")


def test_relative_file_urls_and_remote_v_are_the_repositorys_and_file_urls_are_not_cut(in_repo, tmp_path,
                                                                                      monkeypatch):
    """`url = file:../r` was still taken from where the command ran, and `mvc remote -v` showed a
    relative url as written; file:///d/exp#1 and #2 were one remote, /d/exp (h69)."""
    cid = in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    with open(os.path.join(in_repo.dir, "config"), "a") as f:
        f.write('\n[remote "origin"]\nurl = file:../r.mvc\n[remote "plain"]\nurl = ../p.mvc\n')
    sub = os.path.join(in_repo.root, "sub")
    os.makedirs(sub)
    assert invoke(monkeypatch, sub, "push", "origin", "main").exit_code == 0
    parent = os.path.dirname(in_repo.root)
    assert DirectoryTransport(os.path.join(parent, "r.mvc")).read_ref("refs/heads/main") == cid
    assert not os.path.exists(os.path.join(in_repo.root, "r.mvc"))
    listed = {r["name"]: r["url"] for r in json.loads(invoke(monkeypatch, sub, "remote", "--json").stdout)}
    assert listed == {"origin": os.path.join(parent, "r.mvc"), "plain": os.path.join(parent, "p.mvc")}
    for url in ("file:///d/exp#1", "file:///d/exp?x"):
        r = invoke(monkeypatch, in_repo.root, "remote", "add", "cut", url)
        assert r.exit_code == 3 and "may not hold '?' or '#'" in r.stderr
    # urlparse drops TAB, CR and LF: s3://b/exp<TAB>1 read and wrote s3://b/exp1, file:///d/a<TAB>b /d/ab (h112 01)
    for url in ("s3://b/exp\t1", f"file://{parent}/a\tb", f"{parent}/a\nb", "s3://b/x\x7f"):
        r = invoke(monkeypatch, in_repo.root, "remote", "add", "ctl", url)
        assert r.exit_code == 3 and "holds a control character" in r.stderr, r.output
        r = invoke(monkeypatch, in_repo.root, "push", url, "main")
        assert r.exit_code == 3 and "holds a control character" in r.stderr, r.output
    assert not os.path.exists(os.path.join(parent, "ab")) and "ctl" not in {r["name"] for r in rm.list_remotes(in_repo)}
    for url in ("s3://[b/x", "s3://b\uff03c/x"):  # (urlparse's ValueError was a bug, exit 4: h115 06)
        r = invoke(monkeypatch, in_repo.root, "remote", "add", "odd", url)
        assert r.exit_code == 3 and "cannot be read as a URL" in r.stderr, r.output
    with open(os.path.join(in_repo.dir, "config"), "a") as f:  # (one written by hand: the others still work,
        f.write('[remote "q"]\nurl = s3://[b/x\n')            # it fails when used, named: h116 07)
    assert invoke(monkeypatch, in_repo.root, "remote", "-v").exit_code == 0
    assert invoke(monkeypatch, in_repo.root, "push", "origin").exit_code == 0
    r = invoke(monkeypatch, in_repo.root, "fetch", "q")
    assert r.exit_code == 3 and "the URL of remote q in .mvc/config, 's3://[b/x' cannot be read" in r.stderr


def test_a_configured_s3_url_with_a_fragment_says_where_an_older_mvc_pushed(in_repo, monkeypatch, aws_env):
    """An older mvc took s3://b/exp#1 as s3://b/exp; the refusal of such a config (every fetch, push
    and lazy read) gave no hint that the data lies under s3://b/exp, nor how to keep using it."""
    with open(os.path.join(in_repo.dir, "config"), "a") as f:
        f.write('\n[remote "origin"]\nurl = s3://b/exp#1\n[remote "secret"]\nurl = s3://KEY:SECRET@b/exp#1\n')
    r = invoke(monkeypatch, in_repo.root, "fetch")
    assert r.exit_code == 3 and "an older mvc read it cut there, as s3://b/exp," in r.stderr
    assert "mvc config remote.origin.url s3://b/exp keeps using that" in r.stderr
    r = invoke(monkeypatch, in_repo.root, "fetch", "secret")
    assert r.exit_code == 3 and "credentials are never stored" in r.stderr and "SECRET" not in r.output
    assert invoke(monkeypatch, in_repo.root, "config", "remote.origin.url", "s3://b/exp").exit_code == 0
    assert in_repo.__class__(in_repo.root).get_config("remote.origin.url") == "s3://b/exp"


def test_an_endpoint_set_with_config_on_a_directory_remote_is_refused(in_repo, tmp_path, monkeypatch):
    rm.add_remote(in_repo, "origin", str(tmp_path / "d.mvc"))
    r = invoke(monkeypatch, in_repo.root, "config", "remote.origin.endpoint", "http://h:9000")
    assert r.exit_code == 3 and "an endpoint is for S3 remotes" in r.stderr
    assert in_repo.__class__(in_repo.root).get_config("remote.origin.endpoint") is None


def test_push_delete_refuses_a_repositorys_current_branch_through_a_link_to_its_mvc(tmp_path, monkeypatch):
    """Reached through a symbolic link to its .mvc, a repository was taken for a bare remote: its
    current branch was deleted without --force, and its refs moved without its RefStore (h69)."""
    owner = mvc.Repo.init(tmp_path / "owner")
    first = owner.commit({"core": {"w": torch.ones(4)}}, message="one")
    os.symlink(owner.dir, tmp_path / "link")
    mine, _ = rm.clone(str(tmp_path / "link"), str(tmp_path / "mine"))
    r = invoke(monkeypatch, mine.root, "push", "--delete", "origin", "main")
    assert r.exit_code == 3 and "it is the current branch" in r.stderr
    assert mvc.Repo(owner.root).branches()["main"] == first


def test_an_interrupt_as_push_delete_lands_removes_the_tracking_ref_too(tmp_path, monkeypatch):
    from mvc.transport import DirectoryTransport as DT
    a = mvc.Repo.init(tmp_path / "a")
    a.commit({"core": {"w": torch.ones(4)}}, message="one")
    a.create_branch("feat")
    rm.add_remote(a, "origin", str(tmp_path / "r.mvc"))
    rm.push(a, "origin", "main")
    rm.push(a, "origin", "feat")
    real = DT.update_ref

    def update_ref(self, *args, **kw):
        real(self, *args, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(DT, "update_ref", update_ref)
    r = invoke(monkeypatch, a.root, "push", "--delete", "origin", "feat")
    assert r.exit_code == 130 and "deleted feat on origin" in r.stderr
    assert a.refs.read("refs/remotes/origin/feat") is None


def test_remote_urls_hand_written_or_spelt_otherwise_are_refused_or_read_as_meant(in_repo, tmp_path, monkeypatch):
    """h70: `file:../a#b` in the config was read as ../a; S3://b/p was pushed to a folder named S3:;
    s3://KEY:SECRET@b/p?x printed the secret; an endpoint stayed beside a url set to a directory
    later."""
    in_repo.commit({"core": {"w": torch.ones(4)}}, message="one")
    with open(os.path.join(in_repo.dir, "config"), "a") as f:
        f.write('\n[remote "cut"]\nurl = file:../a#b\n')
    r = invoke(monkeypatch, in_repo.root, "push", "cut", "main")
    above = os.path.join(os.path.dirname(in_repo.root), "a")  # (the hint's command may run in a subfolder)
    assert r.exit_code == 3 and f"holds '?' or '#': an older mvc read it cut there, as {above}," in r.stderr
    assert f"mvc config remote.cut.url {above} keeps using that" in r.stderr
    assert not os.path.exists(os.path.join(os.path.dirname(in_repo.root), "a"))
    from mvc.transport import normalize_url
    assert normalize_url("S3://bucket/p/") == "s3://bucket/p"
    r = invoke(monkeypatch, in_repo.root, "remote", "add", "s", "s3://KEY:SECRET@bucket/p?x=1")
    assert r.exit_code == 3 and "credentials are never stored" in r.stderr and "SECRET" not in r.output
    assert invoke(monkeypatch, in_repo.root, "remote", "add", "y", "s3://bucket/p", "--endpoint",
                  "http://127.0.0.1:9000").exit_code == 0
    r = invoke(monkeypatch, in_repo.root, "config", "remote.y.url", str(tmp_path / "d"))
    assert r.exit_code == 3 and "mvc config --unset remote.y.endpoint first" in r.stderr
    assert invoke(monkeypatch, in_repo.root, "config", "--unset", "remote.y.endpoint").exit_code == 0
    assert invoke(monkeypatch, in_repo.root, "config", "remote.y.url", str(tmp_path / "d")).exit_code == 0


def test_a_repository_whose_mvc_folder_is_a_link_is_a_repository_remote(tmp_path, monkeypatch):
    """owner/.mvc -> /data/store: reached as /data/store it was taken for a bare remote (h70)."""
    import shutil
    owner = mvc.Repo.init(tmp_path / "owner")
    first = owner.commit({"core": {"w": torch.ones(4)}}, message="one")
    shutil.move(owner.dir, tmp_path / "store")
    os.symlink(tmp_path / "store", os.path.join(owner.root, ".mvc"))
    assert DirectoryTransport(str(tmp_path / "store")).repository
    mine, _ = rm.clone(str(tmp_path / "store"), str(tmp_path / "mine"))
    r = invoke(monkeypatch, mine.root, "push", "--delete", "origin", "main")
    assert r.exit_code == 3 and "it is the current branch" in r.stderr
    assert mvc.Repo(owner.root).branches()["main"] == first
    bare = DirectoryTransport(str(tmp_path / "bare.mvc"))
    bare.init("main")
    assert not bare.repository

"""The CLI through CliRunner: stdout/stderr apart, exit codes, --json documents, error lines."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from mvc.cli import cli


@pytest.fixture
def run(in_repo):
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result
    return invoke


def _ckpt(path, seed):
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(8, 8, generator=g), "b": torch.zeros(8)}, path)
    return path


def test_commit_log_show_json(run, tmp_path):
    p = _ckpt(tmp_path / "m.safetensors", 0)
    r = run("commit", p, "-m", "first", "--metric", "loss=2.5", "--metric", "note=hi", "--json")
    cid = json.loads(r.stdout)["commit"]
    assert len(cid) == 64 and r.stderr == ""
    run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "second")
    log = json.loads(run("log", "--json").stdout)
    assert [c["message"] for c in log] == ["second", "first"] and log[1]["id"] == cid
    assert log[1]["metrics"] == {"loss": 2.5, "note": "hi"} and set(log[0]) >= {"id", "parents", "components"}
    assert json.loads(run("log", "-n", "1", "--json").stdout)[0]["message"] == "second"
    shown = json.loads(run("show", "HEAD~1", "--json").stdout)
    assert shown["id"] == cid and shown["components"]["model"]["tensors"] == 2
    human = run("log", "--oneline").stdout
    assert cid[:12] in human and "first" in human


def test_diff_exit_code_and_json(run, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "a")
    run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "b")
    d = json.loads(run("diff", "HEAD~1", "HEAD", "--json").stdout)
    assert d["components"]["model"]["tensors"]["w"]["status"] == "changed"
    run("diff", "HEAD~1", "HEAD", "--exit-code", code=1)
    run("diff", "HEAD", "HEAD", "--exit-code", code=0)
    assert "w" in run("diff", "HEAD~1", "HEAD").stdout


def test_errors_are_one_line_with_exit_3(run):
    r = run("show", "nope", code=3)
    assert r.stderr.startswith("error: unknown revision") and "Traceback" not in r.stderr
    assert r.stdout == ""
    r = run("commit", "missing.safetensors", "-m", "x", code=3)
    assert "no such file" in r.stderr


def test_usage_error_exit_2(run):
    run("commit", code=2)  # -m missing
    run("log", "-n", "-1", code=2)


def test_not_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["log"])
    assert r.exit_code == 3 and "not an mvc repository" in r.stderr


def test_bad_safetensors_exit_3_and_nothing_written(run, in_repo, tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    r = run("commit", p, "-m", "bad", code=3)
    assert r.stderr.startswith("error: ") and not list(in_repo.store.ids())


def test_rollback_reflog_branch_tag_checkout(run, tmp_path):
    p = tmp_path / "m.safetensors"
    ids = [json.loads(run("commit", _ckpt(p, i), "-m", f"c{i}", "--json").stdout)["commit"] for i in range(3)]
    r = json.loads(run("rollback", "--json").stdout)
    assert (r["old"], r["new"]) == (ids[2], ids[1])
    log = json.loads(run("reflog", "--json").stdout)
    assert log[0]["message"].startswith("rollback")
    run("rollback", ids[2][:10])
    assert run("rev-parse", "HEAD").stdout.strip() == ids[2]
    run("branch", "exp", "HEAD~2")
    b = json.loads(run("branch", "--json").stdout)
    assert b == {"current": "main", "branches": {"exp": ids[0], "main": ids[2]}}
    run("tag", "v1", "exp")
    assert json.loads(run("tag", "--json").stdout) == {"v1": ids[0]}
    run("checkout", "v1", "-o", tmp_path / "out")
    assert (tmp_path / "out" / "model" / "m.safetensors").read_bytes() == _ckpt(tmp_path / "x.safetensors", 0).read_bytes()
    run("export", "HEAD", "model", "-o", tmp_path / "e.safetensors")
    assert (tmp_path / "e.safetensors").read_bytes() == p.read_bytes()
    run("branch", "-d", "exp")
    run("switch", "exp", code=3)


def test_fsck_du_gc(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "a")
    assert json.loads(run("fsck", "--json").stdout)["ok"]
    du = json.loads(run("du", "--json").stdout)
    assert du["commits"] == 1 and du["stored_bytes"] > du["logical_bytes"] * 0.5
    gc = json.loads(run("gc", "--dry-run", "--json").stdout)
    assert gc["removed"] == 0
    text = run("gc", "--dry-run").stdout  # a dry run says what it would do, with no sizes it cannot know
    assert "would remove 0 objects" in text and "would pack" in text and "->" not in text
    assert "verified stamps (not counted above)" in run("du").stdout
    oid = next(o for o in in_repo.store.ids() if in_repo.store.size(o) > 200)
    path = in_repo.loose.path(oid)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    r = run("fsck", code=1)
    assert oid in r.stdout


def test_components_and_remove(run, tmp_path):
    run("commit", "-c", f"core={_ckpt(tmp_path / 'a.safetensors', 0)}",
        "-c", f"brick/python={_ckpt(tmp_path / 'b.safetensors', 1)}", "-m", "two")
    assert set(json.loads(run("ls-tree", "HEAD", "--json").stdout)) == {"core", "brick/python"}
    run("commit", "--remove", "brick/python", "-m", "drop")
    assert set(json.loads(run("ls-tree", "HEAD", "--json").stdout)) == {"core"}
    run("commit", "-c", f"../x={tmp_path / 'a.safetensors'}", "-m", "bad", code=3)


def test_help_has_examples():
    r = CliRunner().invoke(cli, ["commit", "--help"])
    assert r.exit_code == 0 and "Examples" in r.stdout and "mvc commit" in r.stdout


def test_status_and_config(run, tmp_path):
    s = json.loads(run("status", "--json").stdout)
    assert s["branch"] == "main" and s["head"] is None
    run("config", "core.fsync", "false")
    assert run("config", "core.fsync").stdout.strip() == "false"
    run("config", "nope.key", code=1)

"""The CLI through CliRunner: stdout/stderr apart, exit codes, --json documents, error lines."""
import json
import os
import pathlib
import stat
import time
import warnings

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import mvc
from mvc.cli import cli
from mvc.errors import BadInput


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


@pytest.mark.parametrize("value, shown", [("0", False), ("false", False), ("", False), ("1", True), ("yes", True)])
def test_mvc_debug_shows_the_traceback_only_when_set_to_a_true_value(run, monkeypatch, value, shown):
    """MVC_DEBUG=0 turned tracebacks on (any non-empty value did)."""
    monkeypatch.setenv("MVC_DEBUG", value)
    r = run("show", "nope", code=3)
    assert ("Traceback" in r.stderr) == shown and r.stderr.splitlines()[-1].startswith("error: unknown revision")


def test_empty_revisions_and_huge_numbers_are_bad_input_exit_3(run, tmp_path):
    """`mvc rollback ""` moved the branch back one commit and `mvc commit -b ""` landed on the
    current branch; a count or metric of 5000 digits crashed as "a bug in mvc" (exit 4)."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "a")
    run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "b")
    head = json.loads(run("log", "-n", "1", "--json").stdout)[0]["id"]
    assert "empty revision" in run("rollback", "", code=3).stderr
    assert "invalid branch or tag name ''" in run("commit", tmp_path / "m.safetensors", "-m", "c", "-b", "",
                                                   code=3).stderr
    assert "too large a count" in run("log", "HEAD~" + "9" * 5000, code=3).stderr
    assert "5000 digits" in run("commit", tmp_path / "m.safetensors", "-m", "c", "--metric", "k=" + "9" * 5000,
                                code=3).stderr
    assert json.loads(run("log", "-n", "1", "--json").stdout)[0]["id"] == head


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
    text = run("gc").stdout
    assert "packed 5 objects" in text and "packs:" not in text  # no packs before: none kept or removed
    run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "b")
    run("pack")
    text = run("gc").stdout  # two packs of similar size: rolled into one
    assert "packs: 0 kept as they were (large, nothing to drop), 2 rewritten or removed" in text
    assert run("gc").stdout.count("packs:") == 0  # one pack, nothing new: nothing to say
    in_repo = mvc.Repo(in_repo.root)
    run("commit", _ckpt(tmp_path / "m.safetensors", 2), "-m", "c")
    oid = next(o for o in in_repo.loose.ids() if in_repo.store.size(o) > 200)
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


def test_status_names_a_head_that_names_a_tag_as_damaged_not_detached(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "a.safetensors", 0), "-m", "one")
    run("tag", "v1")
    pathlib.Path(in_repo.dir, "HEAD").write_text("ref: refs/tags/v1\n")
    out = run("status").stdout
    assert out.startswith("Not on a branch: HEAD names 'refs/tags/v1', not a branch") and "(detached)" not in out
    assert "mvc switch" in out.splitlines()[0]  # (the repair)
    s = json.loads(run("status", "--json").stdout)
    assert s["branch"] is None and s["head_problem"].startswith("HEAD names 'refs/tags/v1'")


def test_config_help_lists_every_key_mvc_reads_with_its_default(run):
    """pack.level, pack.cacheMB and pack.verify were accepted and read, and documented nowhere (h108)."""
    from mvc.config import KNOWN
    from mvc.maintenance import REFLOG_EXPIRE_S
    from mvc.pack import DEFAULT_CACHE_BYTES
    from mvc.pack_write import AUTO_PACK_LIMIT, DEFAULT_MAX_DEPTH
    text = run("config", "--help").stdout
    listed = {line.split()[0]: line for line in text.split("Keys mvc reads (default):")[1].split("Examples:")[0]
              .splitlines() if line.strip()}
    assert set(listed) == set(KNOWN)
    assert f"({DEFAULT_CACHE_BYTES >> 20})" in listed["pack.cacheMB"] and f"({DEFAULT_MAX_DEPTH})" in listed[
        "pack.maxDepth"] and f"({AUTO_PACK_LIMIT};" in listed["pack.autoPackLimit"]
    assert f"({REFLOG_EXPIRE_S / 86400:.0f}d)" in listed["gc.reflogExpire"]


def test_config_keys_are_case_insensitive_and_typos_in_mvc_sections_are_refused(run, in_repo):
    import mvc
    # reading ignores case (configparser lowercases option names), so setting checks known keys the same way
    r = run("config", "pack.maxdepth", "abc", code=3)
    assert r.stderr.startswith("error: config pack.maxDepth = 'abc' is invalid") and "\n" not in r.stderr.strip()
    run("config", "core.FORMAT", "2", code=3)
    run("config", "Pack.MaxDepth", "3")
    assert mvc.Repo(in_repo.root).config_value("pack.maxDepth", 8) == 3
    assert run("config", "PACK.maxDepth").stdout.strip() == "3"
    for key in ("my..key", "my.key.", ".my.key"):  # (my..key was stored as my.key)
        assert "invalid config key" in run("config", key, "x", code=3).stderr
    assert "my" not in mvc.Repo(in_repo.root).config.sections()
    # an unknown key in a section mvc owns is a typo: refused with the closest known key
    r = run("config", "core.fsnyc", "false", code=3)
    assert r.stderr.strip() == "error: unknown config key 'core.fsnyc' (did you mean core.fsync?)"
    assert "did you mean gc.reflogExpire?" in run("config", "gc.reflogexpires", "1", code=3).stderr
    # reading or unsetting it is refused too: a typo is not an unset key (read: exit 1, unset: exit 0 before)
    assert run("config", "core.fsnyc", code=3).stderr == r.stderr
    assert run("config", "--unset", "core.fsnyc", code=3).stderr == r.stderr
    with pytest.raises(mvc.errors.ConfigError, match="did you mean core.fsync"):
        mvc.Repo(in_repo.root).get_config("core.fsnyc")
    # other sections stay free-form; a subsection keeps its case
    run("config", "user.note", "hello")
    run("config", "remote.Origin.url", "/somewhere")
    assert run("config", "remote.Origin.url").stdout.strip() == "/somewhere"
    run("config", "remote.origin.url", code=1)
    path = os.path.join(in_repo.dir, "config")
    pathlib.Path(path).write_text(pathlib.Path(path).read_text().replace("[core]\n", "[core]\nfsnyc = false\n", 1))
    assert run("config", "core.fsnyc").stdout == "false\n"  # a hand-edited typo can be read and unset
    run("config", "--unset", "core.fsnyc")
    run("config", "core.fsnyc", code=3)
    r = run("config", "--unset", "Core.Format", code=3)  # the repository could not be opened again
    assert r.stderr.startswith("error: config core.format cannot be unset")
    assert mvc.Repo(in_repo.root).get_config("core.format") is not None


# -- human output: whole names and 12-hex ids, shape and metric changes, usage errors, help ------------------
LONG = ["model.layers.10.self_attn.q_proj.weight", "model.layers.10.self_attn.k_proj.weight"]


def _long_ckpt(path, seed, x=None):
    g = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(8, generator=g) for n in LONG}
    tensors["x"] = torch.zeros(8) if x is None else x
    save_file(tensors, path)
    return path


def test_piped_tables_show_whole_names_and_ids(run, tmp_path):
    comp = "brick/model.layers.10.self_attn.adapter"
    run("commit", "-c", f"{comp}={_long_ckpt(tmp_path / 'a.safetensors', 0)}", "-m", "a")
    run("commit", "-c", f"{comp}={_long_ckpt(tmp_path / 'a.safetensors', 1)}", "-m", "b")
    diff = run("diff", "HEAD~1", "HEAD").stdout
    shown = run("show").stdout
    tree = json.loads(run("show", "--json").stdout)["components"][comp]["tree"]
    listing = run("ls-tree", "HEAD", comp).stdout
    for name in LONG:
        assert name in diff and name in listing
    assert [line for line in diff.splitlines() if "q_proj" in line and "changed" in line]
    assert comp in shown and tree[:12] in shown and comp in run("log").stdout + run("ls-tree", "HEAD").stdout
    assert "…" not in diff + shown


def test_tables_keep_12_hex_ids_and_whole_names_on_narrow_terminals():
    import io
    from rich.console import Console
    from mvc.cli.output import table
    name = "brick/model.layers.10.self_attn.adapter"
    t = table("component", "kind", "tree", "tensors", "files", "bytes", "dtypes", "arch",
              names=("component",), ids=("tree",))
    t.add_row(name, "other", "62857e056a1b", "3", "1", "392 B", "F32x2", "-")
    for width in (20, 40, 60, 90):
        out = io.StringIO()
        Console(file=out, width=width, soft_wrap=True).print(t)  # as mvc's console on such a terminal
        lines = out.getvalue().splitlines()
        rows = [line.split("│")[1:5] for line in lines if line.startswith("│")]
        assert rows[0][2].strip() == "62857e056a1b", width
        assert "".join(r[0].strip() for r in rows) == name, width
        assert rows[0][1].strip() == "other" and rows[0][3].strip() == "3", width
        if width == 90:  # room for every column but the name's full width: the name folds
            assert len(rows) > 1 and max(map(len, lines)) <= 90
        if width < 60:  # too narrow for the table: drawn whole, the terminal wraps its lines
            assert len(rows) == 1


def test_diff_shows_both_shapes_side_files_and_metric_only_changes(run, tmp_path):
    run("commit", _long_ckpt(tmp_path / "m.safetensors", 0), "-m", "a", "--metric", "loss=2")
    run("commit", _long_ckpt(tmp_path / "m.safetensors", 0, torch.zeros(9, dtype=torch.float64)), "-m", "b")
    row = next(line for line in run("diff", "HEAD~1", "HEAD").stdout.splitlines() if "│ x " in line)
    assert "F32 -> F64" in row and "[8] -> [9]" in row
    run("commit", _long_ckpt(tmp_path / "m.safetensors", 0), "-m", "c", "--metric", "loss=2")
    run("commit", _long_ckpt(tmp_path / "m.safetensors", 0), "-m", "d", "--metric", "loss=3")
    text = run("diff", "HEAD~1", "HEAD", "--exit-code").stdout
    assert "metric loss: 2 -> 3" in text and "metrics differ" in text and "no differences" not in text
    d = json.loads(run("diff", "HEAD~1", "HEAD", "--json", "--exit-code").stdout)
    assert d["identical"] is True and d["metrics_changed"] is True
    assert json.loads(run("diff", "HEAD", "HEAD", "--json").stdout)["metrics_changed"] is False
    assert "metrics are not compared" in " ".join(CliRunner().invoke(cli, ["diff", "--help"]).stdout.split())


def test_diff_tells_a_null_metric_from_a_missing_one(run, tmp_path):
    from mvc import Repo
    repo = Repo(".")
    sd = {"w": torch.ones(3)}
    repo.commit({"core": sd}, message="a", metrics={"acc": None, "gone": 1})
    repo.commit({"core": sd}, message="b", metrics={"new": None})
    d = json.loads(run("diff", "HEAD~1", "HEAD", "--json").stdout)["metrics"]
    # a null is a value (acc: null -> none was not reported at all)
    assert d == {"acc": {"a": None, "b": None, "only_in": "a"}, "gone": {"a": 1, "b": None, "only_in": "a"},
                 "new": {"a": None, "b": None, "only_in": "b"}}
    text = run("diff", "HEAD~1", "HEAD").stdout
    assert "metric acc: null -> -" in text and "metric gone: 1 -> -" in text and "metric new: - -> null" in text
    repo.commit({"core": sd}, message="c", metrics={"new": None})
    assert json.loads(run("diff", "HEAD~1", "HEAD", "--json").stdout)["metrics"] == {}


def test_diff_lists_side_files_with_size_and_12_hex_id(run, tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    _ckpt(d / "model.safetensors", 0)
    (d / "config.json").write_text('{"layers": 2}')
    run("commit", d, "-m", "a")
    (d / "config.json").write_text('{"layers": 24}')
    run("commit", d, "-m", "b")
    files = json.loads(run("diff", "HEAD~1", "HEAD", "--json").stdout)["components"]["model"]["files"]
    ids = files["config.json"]["id"]
    line = next(line for line in run("diff", "HEAD~1", "HEAD").stdout.splitlines() if "config.json" in line)
    assert "changed" in line and "13 B -> 14 B" in line and f"{ids[0][:12]} -> {ids[1][:12]}" in line


def test_diff_lists_a_safetensors_file_whose_tensor_values_changed_under_the_same_header(run, tmp_path):
    """h78: a shard whose weights changed but whose header did not was left out of diff's files (its
    entry names the header blob only), and its id looked unchanged."""
    d = tmp_path / "hf"
    d.mkdir()
    _ckpt(d / "model.safetensors", 0)
    _ckpt(d / "other.safetensors", 5)
    run("commit", d, "-m", "a")
    _ckpt(d / "model.safetensors", 1)
    run("commit", d, "-m", "b")
    files = json.loads(run("diff", "HEAD~1", "HEAD", "--json").stdout)["components"]["model"]["files"]
    assert list(files) == ["model.safetensors"] and files["model.safetensors"]["status"] == "changed"
    entry = files["model.safetensors"]
    assert entry["header"][0] == entry["header"][1] and entry["tensors_changed"] == 1 and "id" not in entry
    line = next(line for line in run("diff", "HEAD~1", "HEAD").stdout.splitlines() if "file model.safetensors" in line)
    assert "same header, 1 tensor changed)" in line  # (w; b stays zeros)


def test_a_safetensors_file_without_its_suffix_is_said_to_be_stored_as_bytes(repo, tmp_path):
    """h78: a hub cache blob (named by its hash) was stored as bytes without a word, and repo.load of
    the component returned {}."""
    from safetensors.torch import save_file
    blob = tmp_path / "a1b2c3d4e5f6"
    save_file({"w": torch.ones(4)}, str(blob))
    with pytest.warns(UserWarning, match="looks like a safetensors file but its name does not end in .safetensors"):
        repo.commit({"core": str(blob)}, message="x")
    with pytest.raises(BadInput, match=r"core holds no tensors: its files \(a1b2c3d4e5f6\) are stored as bytes"):
        repo.load("HEAD", "core")
    (tmp_path / "notes").write_bytes(b"plain text")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repo.commit({"notes": str(tmp_path / "notes")}, message="no warning for other files")


@pytest.mark.parametrize("args, says", [
    (["--metric", "=5"], "empty KEY"),
    (["--metric", "loss"], "no '='"),
    (["--metric", "loss="], "empty VALUE"),
    (["--metric", "loss=1", "--metric", "loss=2"], "given twice"),
    (["-c", "a=PATH", "--remove", "a"], "both committed and removed"),
    (["-c", "=PATH"], "empty NAME"),
])
def test_commit_refuses_bad_metrics_and_components_as_usage_errors(run, tmp_path, args, says):
    p = _ckpt(tmp_path / "m.safetensors", 0)
    r = run("commit", "-m", "x", *[str(p) if a == "PATH" else a.replace("PATH", str(p)) for a in args],
            *([] if "-c" in args else [p]), code=2)
    assert says in r.stderr and json.loads(run("log", "--json").stdout) == []


@pytest.mark.parametrize("filename, expected", [
    (None, "error: no space left on device (nothing was moved; free some space and retry)\n"),
    ("/data/objects/ab/cd", "error: no space left on device at /data/objects/ab/cd (nothing was moved; "
                            "free some space and retry)\n"),
])
def test_enospc_is_one_error_line_without_empty_parentheses(run, tmp_path, monkeypatch, filename, expected):
    import errno

    from mvc.repo import Repo

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", *([filename] if filename else []))
    monkeypatch.setattr(Repo, "commit", full)
    r = run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "x", code=3)
    assert r.stderr == expected


def test_text_from_the_repository_is_not_read_as_markup(run, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "[wip] try [/] again")
    assert "[wip] try [/] again" in run("show").stdout


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_command_help_has_an_example_of_itself():
    missing = []
    for path, _cmd in _commands(cli):
        lines = CliRunner().invoke(cli, [*path, "--help"]).stdout.splitlines()
        heads = [i for i, line in enumerate(lines) if line.strip() in ("Example:", "Examples:")]
        usage = " ".join(("mvc", *path))
        if not any(i + 1 < len(lines) and lines[i + 1].strip().startswith(usage) for i in heads):
            missing.append(usage)
    assert not missing, f"--help without an 'Example(s):' line starting with the command: {missing}"


def test_cat_object_takes_a_prefix_of_any_object(run, in_repo):
    import torch
    cid = in_repo.commit({"core": {"w": torch.ones(3)}}, message="one")
    tree = in_repo.read_commit(cid)["components"]["core"]
    out = run("cat-object", tree[:10]).stdout
    assert json.loads(out)["type"] == "tree"
    assert json.loads(run("cat-object", cid[:8]).stdout)["type"] == "commit"
    assert "unknown revision" in run("cat-object", "0" * 6 if not tree.startswith("000000") else "f" * 6, code=3).stderr


def test_pack_of_a_tiny_repository_says_it_grew(run, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "tiny")
    out = run("pack").stdout
    assert "x larger: pack headers and index outweigh compression" in out and "smaller" not in out, out
    assert " 0 MB/s" not in out and "B/s" in out  # a human-sized rate, not a rounded-down 0
    from mvc.cli.output import size_change
    assert size_change(2000, 1000) == "2.00x smaller" and size_change(1000, 1000) == "same size"
    assert size_change(1000, 1130).startswith("1.13x larger")


def test_every_json_option_has_help_text():
    seen = []
    for path, cmd in _commands(cli):
        for p in cmd.params:
            if "--json" in getattr(p, "opts", ()):
                seen.append(" ".join(path))
                assert p.help, f"mvc {' '.join(path)} --json has no help text"
    assert {"verify", "paste brick", "pack", "log", "ci"} <= set(seen)


def test_checkout_and_export_never_overwrite_other_content_without_force(run, tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    _ckpt(d / "model.safetensors", 0)
    (d / "config.json").write_text('{"a": 1}\n')
    run("commit", d, "-m", "one")
    out = tmp_path / "out"
    run("checkout", "HEAD", "-o", out)
    cfg = out / "model" / "config.json"
    weights = out / "model" / "model.safetensors"
    inode = os.stat(weights).st_ino
    run("checkout", "HEAD", "-o", out)  # the same bytes: nothing rewritten
    assert os.stat(weights).st_ino == inode
    cfg.write_text('{"a": 2, "edited": true}\n')  # the user's edit
    r = run("checkout", "HEAD", "-o", out, code=3)
    assert "already exist with other content" in r.stderr and str(cfg) in r.stderr
    assert cfg.read_text() == '{"a": 2, "edited": true}\n'  # before: silently replaced
    run("checkout", "HEAD", "-o", out, "--force")
    assert cfg.read_text() == '{"a": 1}\n'
    run("commit", _ckpt(tmp_path / "single.safetensors", 1), "--component", "m=" + str(tmp_path / "single.safetensors"),
        "-m", "two")
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"precious")
    r = run("export", "HEAD", "m", "-o", target, code=3)
    assert target.read_bytes() == b"precious" and "--force" in r.stderr
    run("export", "HEAD", "m", "-o", target, "--force")
    assert target.read_bytes() == (tmp_path / "single.safetensors").read_bytes()
    (tmp_path / "blocked").write_bytes(b"a file where a folder goes")  # (it said only "a file stands ...")
    r = run("checkout", "HEAD", "-o", tmp_path / "blocked" / "deeper", "--force", code=3)
    assert f"{tmp_path / 'blocked'} is a file, not a folder" in r.stderr
    (out / "m" / "single.safetensors").mkdir(parents=True)  # a folder where a file goes: not removed
    (out / "m" / "single.safetensors" / "keep").write_bytes(b"mine")
    r = run("checkout", "HEAD", "-o", out, "--force", code=3)
    assert "a folder stands there, where the checkout writes a file" in r.stderr and "Is a directory" not in r.stderr
    assert (out / "m" / "single.safetensors" / "keep").read_bytes() == b"mine"


def test_a_failed_checkout_leaves_nothing_behind(run, in_repo, tmp_path):
    from damage import flip_byte
    d = tmp_path / "two"
    d.mkdir()
    _ckpt(d / "a.safetensors", 0)
    _ckpt(d / "b.safetensors", 1)
    run("commit", d, "-m", "two files")
    tree = in_repo.read_tree(in_repo.read_commit(in_repo.resolve("HEAD"))["components"]["model"])
    blob = next(t["id"] for t in tree["tensors"].values() if t["file"] == "b.safetensors")
    flip_byte(in_repo.loose.path(blob), pos=os.path.getsize(in_repo.loose.path(blob)) - 1)
    out = tmp_path / "out"
    r = run("checkout", "HEAD", "-o", out, code=3)
    assert "corrupt" in r.stderr
    assert not out.exists()  # before: out/model/a.safetensors was written, which looks like a checkout


def test_revision_messages_and_short_ids(run, in_repo, tmp_path):
    r = run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "root", "--json")
    cid = json.loads(r.stdout)["commit"]
    out = run("log").stdout
    assert f"commit {cid[:12]}" in out and cid not in out  # DESIGN: human mode shows 12-hex ids
    assert cid not in run("show", "HEAD").stdout
    assert run("rev-parse", cid[:8].upper()).stdout.strip() == cid  # before: unknown revision
    tree = in_repo.read_commit(cid)["components"]["model"]
    r = run("rev-parse", tree[:10], code=3)
    assert "names a tree, not a commit" in r.stderr  # before: "unknown revision"
    r = run("rollback", code=3)
    assert r.stderr == (f"error: nothing to roll back to: {cid[:12]}, the head of main, is a root commit, with no "
                        "parent (mvc rollback REV moves it to another commit)\n")  # before: "(it has no parent) (...)"


def test_single_files_whose_names_could_not_be_checked_out_are_refused(run, in_repo, tmp_path):
    bad = tmp_path / "back\\slash.safetensors"
    _ckpt(bad, 0)
    r = run("commit", bad, "-m", "x", code=3)  # before: committed, then unreadable (show/checkout failed)
    assert "file name" in r.stderr and "backslash" in r.stderr and list(in_repo.loose.ids()) == []


def test_a_file_name_of_255_bytes_checks_out_and_exports(run, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    long_name = "z" * 245 + ".json"
    (d / long_name).write_text("{}")
    _ckpt(d / "m.safetensors", 0)
    run("commit", d, "-m", "long")
    run("checkout", "HEAD", "-o", tmp_path / "out")  # before: the temp name passed 255 bytes (exit 4)
    assert (tmp_path / "out" / "model" / long_name).read_text() == "{}"


def test_output_targets_that_are_links_or_odd_paths_are_refused(run, tmp_path):
    ck = _ckpt(tmp_path / "m.safetensors", 0)
    run("commit", ck, "-m", "one")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "model").symlink_to(elsewhere)
    r = run("checkout", "HEAD", "-o", out, code=3)
    assert "symbolic link" in r.stderr and os.listdir(elsewhere) == []  # before: written into elsewhere
    link = tmp_path / "dangling.safetensors"
    link.symlink_to(tmp_path / "nowhere")
    r = run("export", "HEAD", "model", "-o", link, "--force", code=3)
    assert "symbolic link" in r.stderr and os.path.islink(link)  # before: the link was replaced
    r = run("export", "HEAD", "model", "-o", str(tmp_path / "newdir") + "/", code=3)
    assert "not a file name" in r.stderr  # before: FileNotFoundError, exit 4
    for name in (".", ".."):  # before: "No such file or directory (was its directory removed?)"
        r = run("export", "HEAD", "model", "-o", os.path.join(str(tmp_path / "newdir"), name), code=3)
        assert "not a file name" in r.stderr and not (tmp_path / "newdir").exists()
    # "L/.." after a link L is the link target's parent for the kernel, not out/ as os.path.abspath
    # folds it: the link checks must see the folders written to (before: written through, exit 0)
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "model").symlink_to(elsewhere)
    work = tmp_path / "work"
    work.mkdir()
    (work / "L").symlink_to(tmp_path / "real" / "sub")
    r = run("checkout", "HEAD", "-o", f"{work}/L/..", code=3)
    assert "symbolic link" in r.stderr and os.listdir(elsewhere) == [] and sorted(os.listdir(work)) == ["L"]
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "real" / "e.safetensors").symlink_to(victim)
    r = run("export", "HEAD", "model", "-o", f"{work}/L/../e.safetensors", "--force", code=3)
    assert "symbolic link" in r.stderr and (tmp_path / "real" / "e.safetensors").is_symlink()
    assert victim.read_bytes() == b"keep"
    run("export", "HEAD", "model", "-o", f"{work}/L/../new.safetensors")
    assert (tmp_path / "real" / "new.safetensors").read_bytes() == ck.read_bytes()
    (tmp_path / "dangling").symlink_to(tmp_path / "missing-target")  # said "(was its directory removed?)"
    for args in (("checkout", "HEAD", "-o", tmp_path / "dangling"),
                 ("export", "HEAD", "model", "-o", tmp_path / "dangling" / "m.safetensors"),
                 ("checkout", "HEAD", "-o", f"{work}/../dangling"),  # (a '..' before it: it was followed)
                 ("export", "HEAD", "model", "-o", f"{work}/../dangling/m.safetensors")):
        r = run(*args, code=3)
        assert f"{tmp_path / 'dangling'} is a symbolic link to {tmp_path / 'missing-target'}, which does not exist" \
            in r.stderr and not (tmp_path / "missing-target").exists()
    r = run("export", "HEAD", "model", "-o", "-")
    assert r.stdout_bytes == ck.read_bytes()


def test_export_to_stdout_of_a_damaged_or_missing_blob_writes_nothing(run, tmp_path):
    """A stream cannot take bytes back: `mvc export ... -o - | ssh host 'cat > f'` wrote the header
    and the tensors before the damaged one, leaving a cut file there (its exit status lost in the
    pipe). Every blob is verified before the first byte now."""
    from damage import flip_byte
    g = torch.Generator().manual_seed(3)
    ck = tmp_path / "m.safetensors"
    save_file({"a": torch.randn(64, generator=g), "z": torch.randn(64, generator=g)}, ck)
    run("commit", ck, "-m", "one")
    repo = mvc.Repo()
    tree = repo.tree("HEAD", "model")
    last = tree["tensors"]["z"]["id"]  # (the file's last tensor: safetensors orders same-dtype ones by name)
    flip_byte(repo.loose.path(last), pos=200)
    r = run("export", "HEAD", "model", "-o", "-", code=3)
    assert r.stdout_bytes == b"" and last[:12] in r.stderr
    os.remove(repo.loose.path(last))
    r = run("export", "HEAD", "model", "-o", "-", code=3)
    assert r.stdout_bytes == b"" and "missing" in r.stderr


def test_output_errors_are_clear_and_leave_the_old_files(run, tmp_path, monkeypatch):
    import errno
    from damage import at_path
    ck = _ckpt(tmp_path / "m.safetensors", 0)
    run("commit", ck, "-m", "one")
    target = tmp_path / "t.safetensors"
    target.write_bytes(b"old")
    real_replace = os.replace

    def read_only(src, dst, **kw):
        if at_path(dst, kw.get("dst_dir_fd")) == str(target):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", read_only)
    r = run("export", "HEAD", "model", "-o", target, "--force", code=3)  # before: exit 4
    assert "Read-only file system" in r.stderr and target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".mvc-tmp")] == []


def test_forced_checkout_over_an_older_one_is_all_or_nothing_and_names_stray_files(run, in_repo, tmp_path):
    from damage import flip_byte
    d = tmp_path / "shards"
    d.mkdir()
    for i, name in enumerate("abc"):
        _ckpt(d / f"{name}.safetensors", i)
    run("commit", d, "-m", "three")
    out = tmp_path / "out"
    run("checkout", "HEAD", "-o", out)
    first = {p.name: p.read_bytes() for p in (out / "model").iterdir()}
    (d / "c.safetensors").unlink()
    _ckpt(d / "a.safetensors", 10)
    _ckpt(d / "b.safetensors", 11)
    run("commit", d, "-m", "two changed, one gone")
    with pytest.warns(UserWarning, match=r"1 file\(s\) under .* are not part of"):
        in_repo.checkout("HEAD", str(out), force=True)
    run("checkout", "HEAD~1", "-o", out, "--force")  # back to the first state
    tree = in_repo.read_tree(in_repo.read_commit(in_repo.resolve("HEAD"))["components"]["model"])
    blob = next(t["id"] for t in tree["tensors"].values() if t["file"] == "b.safetensors")
    flip_byte(in_repo.loose.path(blob), pos=os.path.getsize(in_repo.loose.path(blob)) - 1)
    r = run("checkout", "HEAD", "-o", out, "--force", code=3)
    assert "corrupt" in r.stderr
    # before: a.safetensors already held the new bytes while b and c held the old: no single revision
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == first


def test_a_checkout_or_export_that_finds_its_files_in_place_says_so(run, in_repo, tmp_path):
    """A second checkout said 'wrote 1 file' and left the file untouched (as it should)."""
    model = tmp_path / "m"
    model.mkdir()
    _ckpt(model / "a.safetensors", 0)
    (model / "config.json").write_text("{}")
    run("commit", model, "-m", "one")
    assert "wrote 2 files of" in run("checkout", "HEAD", "-o", tmp_path / "out").stdout
    assert "nothing to write: the 2 files of" in run("checkout", "HEAD", "-o", tmp_path / "out").stdout
    (tmp_path / "out" / "model" / "config.json").write_text('{"edited": 1}')
    r = run("checkout", "HEAD", "-o", tmp_path / "out", "--force")
    assert "wrote 1 file of" in r.stdout and "(1 already up to date)" in r.stdout
    doc = json.loads(run("checkout", "HEAD", "-o", tmp_path / "out", "--json").stdout)
    assert len(doc["files"]) == 2 and sorted(doc["unchanged"]) == sorted(doc["files"])
    run("commit", "-c", f"x={_ckpt(tmp_path / 'x.safetensors', 1)}", "-m", "two")
    assert run("export", "HEAD", "x", "-o", tmp_path / "x.out").stdout.startswith("wrote")
    assert "left as it was" in run("export", "HEAD", "x", "-o", tmp_path / "x.out").stdout
    assert json.loads(run("export", "HEAD", "x", "-o", tmp_path / "x.out", "--json").stdout)["unchanged"] is True


def test_checkout_into_a_file_says_that_it_writes_a_folder_and_names_export(run, in_repo, tmp_path):
    """`mvc checkout HEAD -o model.safetensors` (checkout taken for export) was told "model.safetensors
    is a file where the checkout needs a folder: remove it if an older checkout left it": the advice
    was to delete the user's own model file."""
    ck = _ckpt(tmp_path / "m.safetensors", 0)
    run("commit", ck, "-m", "one")
    before = ck.read_bytes()
    r = run("checkout", "HEAD", "-o", ck, code=3)
    assert "it is a file, and checkout writes a folder" in r.stderr and "mvc export REV COMPONENT -o FILE" in r.stderr
    assert "remove it" not in r.stderr and ck.read_bytes() == before
    assert "checkout writes a folder" in run("checkout", "HEAD", "-o", os.devnull, code=3).stderr
    for args in (["checkout", "HEAD", "-o", ck / "out"], ["export", "HEAD", "model", "-o", ck / "x.safetensors"]):
        r = run(*args, code=3)  # a path under the user's file: said so, and still no "remove it"
        assert f"{ck} is a file, not a folder" in r.stderr and "remove it" not in r.stderr, r.stderr
    assert ck.read_bytes() == before


def test_small_wording(run, in_repo, tmp_path):
    ck = _ckpt(tmp_path / "m.safetensors", 0)
    r = run("commit", ck, "-m", "\n  ", code=2)  # a usage error, as a missing -m is
    assert "only white space" in r.stderr  # before: an empty one-line message was committed
    assert "the message is empty" in run("commit", ck, "-m", "", code=2).stderr
    run("commit", ck, "-m", "one")
    assert "wrote 1 file of" in run("checkout", "HEAD", "-o", tmp_path / "out").stdout
    assert "nothing to write: the 1 file of" in run("checkout", "HEAD", "-o", tmp_path / "out").stdout
    assert "already holds its bytes" in run("checkout", "HEAD", "-o", tmp_path / "out").stdout  # (not "hold")
    du = run("du").stdout
    assert "saved -" not in du  # tiny tensors: commit/tree objects outweigh dedup, said in words
    assert "Show at most N moves" in run("reflog", "--help").stdout


def test_rev_parse_switch_and_export_take_json(run, tmp_path):
    ck = _ckpt(tmp_path / "m.safetensors", 0)
    cid = json.loads(run("commit", ck, "-m", "one", "--json").stdout)["commit"]
    assert json.loads(run("rev-parse", "HEAD", "main", "--json").stdout) == {"HEAD": cid, "main": cid}
    run("branch", "exp")
    assert json.loads(run("switch", "exp", "--json").stdout) == {"branch": "exp", "head": cid, "next_commit_branch": "exp"}
    got = json.loads(run("export", "HEAD", "model", "-o", tmp_path / "e.safetensors", "--json").stdout)
    assert got == {"commit": cid, "component": "model", "file": str(tmp_path / "e.safetensors"),
                   "bytes": os.path.getsize(ck), "unchanged": False}


def test_temp_files_of_a_killed_checkout_are_removed_by_the_next_once_stale(run, tmp_path):
    import time as _time
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    folder = tmp_path / "out" / "model"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".0123456789ab.mvc-tmp", folder / ".ba9876543210.mvc-tmp"
    for p in (stale, fresh):
        p.write_bytes(b"half a file")
    old = _time.time() - 7200
    os.utime(stale, (old, old))
    run("checkout", "HEAD", "-o", tmp_path / "out")
    assert not stale.exists() and fresh.exists()  # a running checkout's temp file is young



def test_switch_inside_git_says_where_the_next_commit_goes(run, in_repo):
    """Inside a git work tree commits follow git's branch (DESIGN.md section 10): `mvc switch exp`
    while git is on main used to say only "Switched", and the next commit went to main."""
    import subprocess
    git = lambda *a: subprocess.run(["git", *a], cwd=in_repo.root, check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    in_repo.commit({"core": {"w": torch.zeros(2)}}, message="one")
    run("branch", "exp")
    r = run("switch", "exp")
    assert "git is on branch main" in r.stderr and "next commit goes to the mvc branch named like git's (main)" \
        in r.stderr and "--branch exp" in r.stderr
    doc = json.loads(run("status", "--json").stdout)
    assert doc["branch"] == "exp" and doc["next_commit_branch"] == "main"
    assert "the next commit goes to branch main" in run("status").stdout
    git("checkout", "-qb", "exp")
    r = run("switch", "exp", "--json")
    assert not r.stderr and json.loads(r.stdout)["next_commit_branch"] == "exp"
    assert "next commit" not in run("status").stdout


def test_revert_returns_to_a_revisions_weights_and_refuses_a_no_op(run, in_repo):
    one = in_repo.commit({"core": {"w": torch.zeros(2)}, "opt": {"m": torch.ones(1)}}, message="one")
    in_repo.commit({"core": {"w": torch.ones(2)}}, message="two", remove=["opt"])
    r = run("revert", "HEAD~1")
    head = in_repo.head()
    assert r.stdout.strip() == f"[main {head[:12]}] revert to {one[:12]}"  # what the commit says it is
    assert in_repo.read_commit(head)["components"] == in_repo.read_commit(one)["components"]
    assert len(in_repo.log()) == 3  # the bad commit stays in the history
    r = run("revert", "HEAD", code=3)  # git's habit: nothing to do here, and nothing is written
    assert "nothing to revert: main already holds the components of HEAD" in r.stderr
    assert "mvc revert HEAD~1" in r.stderr and in_repo.head() == head
    doc = json.loads(run("revert", "HEAD~1", "-m", "again", "--json").stdout)
    assert doc["restored"] == in_repo.resolve("HEAD~2") and in_repo.read_commit(doc["commit"])["message"] == "again"
    in_repo.commit({}, message="metrics only", metrics={"loss": 1.0})  # (h108: the hint named the command
    r = run("revert", "HEAD~1", code=3)                                 # that had just failed)
    assert r.stderr.endswith("(the last commit of main changed no weights (its message or metrics only): "
                             "mvc rollback undoes it)\n") and "mvc revert HEAD~1" not in r.stderr


def test_sizes_use_the_decimal_units_of_the_progress_bars():
    """du said 50.0 MB for 52,432,680 bytes (MiB labelled MB) while the bar said 52.4 MB."""
    from mvc.cli.output import human_bytes
    assert [human_bytes(n) for n in (999, 52_432_680, 1_500, 2 * 10**12, None)] == \
        ["999 B", "52.4 MB", "1.5 kB", "2.0 TB", "-"]
    assert [human_bytes(n) for n in (999_992, 999_949, 999.6)] == ["1.0 MB", "999.9 kB", "1.0 kB"]  # not 1000.0 kB


def test_gc_says_what_only_reflogs_keep_after_a_rollback(run, in_repo):
    """gc after rolling back a bad checkpoint freed nothing and did not say why."""
    in_repo.commit({"core": {"w": torch.zeros(100)}}, message="good")
    bad = in_repo.commit({"core": {"w": torch.ones(100)}}, message="bad")
    run("rollback")
    doc = json.loads(run("gc", "--grace", "0", "--json").stdout)
    bad_objects = {bad, in_repo.read_commit(bad)["components"]["core"], in_repo.tree(bad, "core")["tensors"]["w"]["id"]}
    assert doc["removed"] == 0 and doc["kept_by_reflogs"] == len(bad_objects)
    assert doc["kept_by_reflogs_bytes"] == sum(in_repo.store.size(o) for o in bad_objects)
    out = run("gc", "--grace", "0").stdout
    assert "kept 3 objects" in out and "only reflog entries reach" in out and "gc.reflogExpire 0" in out
    run("config", "gc.reflogExpire", "0")
    doc = json.loads(run("gc", "--grace", "0", "--json").stdout)
    assert doc["removed"] == 3 and doc["kept_by_reflogs"] == 0
    assert not any(mvc.Repo(in_repo.root).store.has(o) for o in bad_objects)


def test_export_refuses_a_pytorch_name_for_safetensors_bytes(run, in_repo, tmp_path):
    """`export -o back.pt` wrote safetensors bytes under a .pt name (torch.load then failed)."""
    torch.save({"w": torch.ones(2)}, tmp_path / "sd.pt")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "vocab.bin").write_bytes(b"\x00raw")
    run("commit", "-c", f"sd={tmp_path / 'sd.pt'}", "-c", f"tok={tmp_path / 'd'}", "-m", "x")
    r = run("export", "HEAD", "sd", "-o", tmp_path / "back.pt", code=3)
    assert "stored as safetensors (model.safetensors)" in r.stderr and "torch.save(dict(mvc.Repo().load(" in r.stderr
    assert not (tmp_path / "back.pt").exists()
    run("export", "HEAD", "sd", "-o", tmp_path / "back.safetensors")
    run("export", "HEAD", "tok", "-o", tmp_path / "vocab.bin")  # a raw file keeps any name
    assert (tmp_path / "vocab.bin").read_bytes() == b"\x00raw"
    r = run("export", "HEAD", "sd", "-o", "-", "--json", code=2)
    assert "--json cannot share stdout" in r.stderr and not r.stdout
    model = torch.nn.Linear(2, 1)  # an optimizer's state: the hint's file must load into an optimizer
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    run("commit", "-c", f"optimizer={tmp_path / 'opt.pt'}", "-m", "optimizer")  # (it was refused)
    r = run("export", "HEAD", "optimizer", "-o", tmp_path / "opt-back.pt", code=3)
    hint = r.stderr.split("write a PyTorch file from Python: ")[1].rstrip(")\n")
    assert hint.startswith("torch.save(mvc.Repo().load_optimizer(REV, 'optimizer')")
    again = torch.optim.SGD(model.parameters(), lr=1.0)
    again.load_state_dict(eval(hint.split("torch.save(")[1].rsplit(", ", 1)[0].replace("mvc.Repo()", "in_repo")
                               .replace("REV", "'HEAD'")))
    assert torch.equal(again.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])


def test_a_commit_that_changes_nothing_says_so(run, tmp_path):
    p = _ckpt(tmp_path / "m.safetensors", 0)
    first = run("commit", p, "-m", "one", "--json")
    assert json.loads(first.stdout)["unchanged"] is False and not first.stderr
    again = run("commit", p, "-m", "two", "--metric", "loss=1", "--json")
    assert json.loads(again.stdout)["unchanged"] is True
    assert "no component changed since" in again.stderr and "metrics only" in again.stderr


def test_log_ranges_and_git_habits_get_the_mvc_way(run, in_repo, tmp_path):
    base = in_repo.commit({"core": {"w": torch.zeros(2)}}, message="base")
    run("branch", "exp")
    a = in_repo.commit({"core": {"w": torch.ones(2)}}, message="on main", branch="main")
    e1 = in_repo.commit({"core": {"w": torch.full((2,), 2.0)}}, message="exp 1", branch="exp")
    e2 = in_repo.commit({"core": {"w": torch.full((2,), 3.0)}}, message="exp 2", branch="exp")
    ids = lambda r: [c["id"] for c in json.loads(run("log", r, "--json").stdout)]
    assert ids("main..exp") == [e2, e1] and ids("exp..main") == [a] and ids("exp..exp") == []
    assert ids("..exp") == [e2, e1]  # HEAD is main
    assert ids(f"{base[:8]}..") == [a]
    assert run("log", "exp..exp").stderr.strip() == "no commits in exp..exp"
    assert "unknown revision 'nope'" in run("log", "nope..exp", code=3).stderr
    r = run("checkout", "exp", code=2)  # git's checkout BRANCH
    assert "-o DIR" in r.stderr and "mvc switch BRANCH" in r.stderr


def test_log_of_an_empty_repository_says_so(run, in_repo):
    r = run("log")
    assert r.stdout == "" and r.stderr.strip() == "no commits yet"
    assert json.loads(run("log", "--json").stdout) == []


# -- a git user's journey: what a probe of the CLI found --------------------------------------------
def test_a_ref_file_of_non_utf8_bytes_is_named_not_a_crash(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    (pathlib.Path(in_repo.dir) / "refs" / "heads" / "broken").write_bytes(b"\xff\xfe garbage\n")
    r = run("fsck", code=1)
    assert "refs/heads/broken" in r.stdout + r.stderr
    r = run("branch")  # skipped with a warning: it blocks no other branch
    assert r.stderr.startswith("warning: skipped ") and "refs/heads/broken" in r.stderr and "Traceback" not in r.stderr
    run("branch", "-d", "broken")
    run("fsck")


def test_checkout_and_export_refuse_to_write_into_the_repositorys_own_directory(run, in_repo, tmp_path):
    run("commit", "-c", f"heads/x={_ckpt(tmp_path / 'm.safetensors', 0)}", "-m", "one")
    before = sorted(str(p) for p in pathlib.Path(in_repo.dir).rglob("*"))
    r = run("checkout", "HEAD", "-o", ".mvc/refs", code=3)
    assert "inside the repository's own .mvc" in r.stderr
    run("export", "HEAD", "heads/x", "-o", ".mvc/HEAD", "--force", code=3)
    os.symlink(pathlib.Path(in_repo.dir) / "refs", tmp_path / "sneaky")  # through a link too
    run("checkout", "HEAD", "-o", tmp_path / "sneaky", code=3)
    assert sorted(str(p) for p in pathlib.Path(in_repo.dir).rglob("*")) == before
    assert run("branch").stdout.split()[:2] == ["*", "main"] and list(in_repo.refs.list("refs/heads/")) == ["refs/heads/main"]


def test_checkout_and_export_refuse_to_write_into_another_repositorys_mvc(run, in_repo, tmp_path):
    """Only the repository's own .mvc was protected: a checkout into another's refs/heads wrote a
    safetensors file as a branch there (its log, branch and fsck then failed)."""
    run("commit", "-c", f"x={_ckpt(tmp_path / 'm.safetensors', 0)}", "-m", "one")
    other = mvc.Repo.init(tmp_path / "other")
    before = sorted(str(p) for p in pathlib.Path(other.dir).rglob("*"))
    assert "inside another repository's .mvc" in run("checkout", "HEAD", "-o", f"{other.dir}/refs/heads", code=3).stderr
    run("export", "HEAD", "x", "-o", f"{other.dir}/HEAD", "--force", code=3)
    assert sorted(str(p) for p in pathlib.Path(other.dir).rglob("*")) == before


def test_an_unreadable_input_exits_3_given_as_path_or_as_component(run, in_repo, tmp_path, monkeypatch):
    """click's readable check made `mvc commit PATH` a usage error (exit 2); -c NAME=PATH exits 3."""
    import builtins
    target = str(_ckpt(tmp_path / "m.safetensors", 0))
    real_open, real_access = builtins.open, os.access

    def deny(path, *a, **kw):  # (the tests run as root: chmod 000 would not stop the read)
        if not isinstance(path, int) and os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", deny)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == target else real_access(p, mode, **kw))
    for args in ((target,), ("-c", f"model={target}")):
        r = run("commit", *args, "-m", "x", code=3)
        assert r.stderr == f"error: {target}: permission denied (nothing was committed)\n"


def test_checkout_over_a_file_it_cannot_read_says_so(run, in_repo, tmp_path, monkeypatch):
    """An unreadable file already there was reported as holding 'other content'."""
    import builtins
    run("commit", "-c", f"x={_ckpt(tmp_path / 'm.safetensors', 0)}", "-m", "one")
    run("checkout", "HEAD", "-o", tmp_path / "out")
    target = str(tmp_path / "out" / "x" / "m.safetensors")
    real_open = builtins.open

    def deny(path, *a, **kw):  # (the tests run as root: chmod 000 would not stop the read)
        if not isinstance(path, int) and os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", deny)
    r = run("checkout", "HEAD", "-o", tmp_path / "out", code=3)
    assert f"cannot read {target}" in r.stderr and "permission denied" in r.stderr and "other content" not in r.stderr
    run("checkout", "HEAD", "-o", tmp_path / "out", "--force")  # replaced unread
    monkeypatch.undo()
    assert (tmp_path / "out" / "x" / "m.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()


def test_a_file_replaced_by_a_forced_checkout_keeps_its_mode(run, in_repo, tmp_path):
    """A private 0600 file replaced with --force came back 0644 (modes are not committed)."""
    run("commit", "-c", f"x={_ckpt(tmp_path / 'm.safetensors', 0)}", "-m", "one")
    dest = tmp_path / "out" / "x" / "m.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"mine")
    dest.chmod(0o600)
    run("checkout", "HEAD", "-o", tmp_path / "out", "--force")
    assert dest.read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_a_checkout_names_folders_left_by_components_the_commit_lacks(run, in_repo, tmp_path):
    """A checkout of a commit without `optimizer` left out/optimizer from an earlier checkout
    without a word: a loader reading the folder took the old optimizer state (h65 01)."""
    core, opt, brick = (_ckpt(tmp_path / f"{n}.safetensors", i) for i, n in enumerate(("core", "opt", "brick")))
    run("commit", "-c", f"core={core}", "-c", f"optimizer={opt}", "-c", f"brick/python={brick}", "-m", "all")
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "readme.txt").write_text("mine")  # the user's own folder, no model files: never named
    assert "no component" not in run("checkout", "HEAD", "-o", out).stderr
    run("commit", "--remove", "optimizer", "--remove", "brick/python", "-m", "core only")
    r = run("checkout", "HEAD", "-o", out)
    assert "2 folder(s) under" in r.stderr and "no component of" in r.stderr
    assert f"e.g. {out / 'brick' / 'python'}" in r.stderr
    assert "no component" not in run("checkout", "HEAD", "-o", out, "-c", "core").stderr  # as asked


def test_stale_component_folders_above_nested_ones_other_suffixes_and_a_bounded_look(tmp_path, monkeypatch):
    """h74: `brick/brick.safetensors` left when `brick` became `brick/python` was not named, nor a
    `.pth` component's folder; token data (`train.bin`) was taken for a model; the folder bound
    stopped only the look below, not beside."""
    from mvc import components as comp
    out = tmp_path / "out"
    for rel in ("brick/python/w.safetensors", "brick/brick.safetensors", "llama/original/consolidated.00.PTH",
                "data/train.bin", "hf/pytorch_model.bin", "hf/config.json", "core/w.safetensors"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    others = {"brick", "hf", "llama/original", "data", "core", "brick/python"}
    found = comp.stale_component_folders(str(out), ["core", "brick/python"], others)
    assert sorted(os.path.relpath(p, out) for p in found) == ["brick", "hf", os.path.join("llama", "original")]
    found = comp.stale_component_folders(str(out), ["core", "brick/python"], others - {"hf"})
    assert sorted(os.path.relpath(p, out) for p in found) == ["brick", os.path.join("llama", "original")]
    for i in range(30):
        (out / "many" / f"d{i}").mkdir(parents=True)
    listed = []
    real_walk = os.walk
    monkeypatch.setattr(comp.os, "walk", lambda top: ((listed.append(d) or (d, ds, fs)) for d, ds, fs in real_walk(top)))
    monkeypatch.setattr(comp, "STALE_SCAN_FOLDERS", 10)
    comp.stale_component_folders(str(out), ["core"], others)
    assert len(listed) <= 11


def test_a_checkout_into_the_project_does_not_name_the_folder_a_component_came_from(run, in_repo, tmp_path):
    """h74 08: `mvc checkout HEAD -o .` named the project's own ckpt/ (what `model` was committed
    from) as left by an earlier checkout; only folders named as components of commits near it are."""
    root = pathlib.Path(in_repo.root)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    _ckpt(ckpt / "w.safetensors", 0)
    run("commit", "-c", "model=ckpt", "-c", f"optimizer={_ckpt(tmp_path / 'o.safetensors', 1)}", "-m", "one")
    run("commit", "--remove", "optimizer", "-m", "model only")
    r = run("checkout", "HEAD~1", "-o", ".")
    assert "no component" not in r.stderr and (root / "model" / "w.safetensors").exists()
    r = run("checkout", "HEAD", "-o", ".")
    assert "1 folder(s) under" in r.stderr and f"e.g. {os.path.join('.', 'optimizer')}" in r.stderr


def test_a_long_history_does_not_hide_the_components_of_other_branches(repo, tmp_path, monkeypatch):
    """h79: the look for component names spent its whole budget on the history checked out: on a
    long training branch, a folder a checkout of another branch left was no longer named."""
    from mvc import components as comp
    monkeypatch.setattr(comp, "STALE_NAME_COMMITS", 30)
    repo.commit({"m": {"w": torch.zeros(8)}}, message="c0")
    repo.commit({"brick": {"b": torch.ones(8)}}, message="feat: brick", branch="feat")
    for i in range(40):
        repo.commit({}, message=f"step {i}", metrics={"i": i})
    out = tmp_path / "out"
    repo.checkout("feat", str(out))
    with pytest.warns(UserWarning, match="1 folder.* no component of .*e.g. .*brick"):
        repo.checkout("main", str(out), force=True)
    for i in range(40):  # h81: more refs than the budget were all read in the first round
        repo.create_branch(f"b{i}", f"HEAD~{i}")
    read = []
    real = type(repo).read_commit
    monkeypatch.setattr(type(repo), "read_commit", lambda self, c, *a, **k: read.append(c) or real(self, c, *a, **k))
    monkeypatch.setattr(comp, "STALE_NAME_COMMITS", 5)
    assert "m" in repo._component_names_near(repo.resolve("HEAD")) and len(read) <= 5


def test_the_leftover_warning_of_a_checkout_skips_git_folders(run, in_repo, tmp_path):
    """A committed git clone of a model, checked out over itself, called every git object a leftover."""
    model = tmp_path / "llama"
    model.mkdir()
    _ckpt(model / "w.safetensors", 0)
    (model / ".git").mkdir()
    (model / ".git" / "config").write_text("[core]\n")
    run("commit", "-c", f"llama={model}", "-m", "one")
    r = run("checkout", "HEAD", "-o", tmp_path)
    assert "left from before" not in r.stderr
    (model / "old.bin").write_bytes(b"x")
    assert "1 file(s)" in run("checkout", "HEAD", "-o", tmp_path).stderr  # a real leftover still is


def test_the_reflog_selectors_of_a_deleted_branch_resolve(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "a.safetensors", 0), "-m", "base")
    run("commit", _ckpt(tmp_path / "b.safetensors", 1), "-m", "work", "-b", "exp")
    tip = run("rev-parse", "exp").stdout.strip()
    run("branch", "-d", "exp")
    listed = run("reflog", "exp").stdout.splitlines()
    assert listed[1].startswith(tip[:12]) and "@{1}" in listed[1]
    assert run("rev-parse", "exp@{1}").stdout.strip() == tip
    assert "unknown branch" in run("rev-parse", "never@{1}", code=3).stderr


@pytest.mark.parametrize("name", ["main.lock/x", "a/b.lock/c", "x.", "ABCDEF12", "DeadBeef"])
def test_branch_names_that_would_wedge_a_lock_or_hide_an_id_prefix_are_refused(run, in_repo, tmp_path, name):
    run("commit", _ckpt(tmp_path / "a.safetensors", 0), "-m", "one")
    assert "invalid branch or tag name" in run("branch", name, code=3).stderr
    run("tag", name, code=3)
    run("commit", _ckpt(tmp_path / "b.safetensors", 1), "-m", "two")  # main is not wedged
    assert in_repo.refs.list("refs/heads/") == {"refs/heads/main": in_repo.resolve("HEAD")}


def test_refs_made_before_the_stricter_names_stay_readable(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "a.safetensors", 0), "-m", "one")
    cid = in_repo.resolve("HEAD")
    (pathlib.Path(in_repo.dir) / "refs" / "heads" / "DEADBEEF").write_text(cid + "\n")
    assert run("rev-parse", "DEADBEEF").stdout.strip() == cid
    run("commit", _ckpt(tmp_path / "b.safetensors", 1), "-m", "two", "-b", "DEADBEEF")  # and movable
    assert run("rev-parse", "DEADBEEF~1").stdout.strip() == cid


def test_output_paths_the_system_refuses_are_errors_not_bugs(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    long = tmp_path / ("x" * 300)
    os.symlink("loop", tmp_path / "loop")
    for args in (["checkout", "HEAD", "-o", long], ["export", "HEAD", "model", "-o", long],
                 ["init", long], ["checkout", "HEAD", "-o", tmp_path / "loop" / "out"]):
        r = run(*args, code=3)
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr and "bug" not in r.stderr, args


def test_cat_object_takes_any_revision_of_64_characters(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    name = "release/" + "a" * 56
    run("branch", name)
    cid = in_repo.resolve("HEAD")
    want = in_repo.store.get(cid)
    for rev in (name, cid.upper(), cid[:10].upper()):
        assert run("cat-object", rev).stdout_bytes == want, rev


@pytest.mark.parametrize("raw,stored", [("2024_01", "2024_01"), ("\u0663", "\u0663"), (" 7 ", " 7 "),
                                        ("7", 7), ("-3", -3), ("2.5", 2.5), ("1e-3", 1e-3), (".5", 0.5),
                                        ("True", True), ("0x10", "0x10")])
def test_metrics_are_numbers_only_when_written_as_plain_numbers(run, in_repo, tmp_path, raw, stored):
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one", "--metric", f"k={raw}")
    got = json.loads(run("show", "--json").stdout)["metrics"]["k"]
    assert got == stored and type(got) is type(stored)


def test_ranges_and_counts_get_their_own_messages(run, in_repo, tmp_path):
    run("commit", _ckpt(tmp_path / "a.safetensors", 0), "-m", "one")
    run("branch", "exp")
    assert "is a range, not a revision" in run("diff", "HEAD..exp", code=3).stderr
    assert "not supported" in run("log", "main...exp", code=2).stderr
    r = run("log", "-n", "0")
    assert r.stdout == "" and r.stderr == ""


@pytest.mark.parametrize("grace,why", [("-5", "-5.0 is not in the range"), ("nan", "'nan' is not a number of seconds"),
                                       ("NaN", "'NaN' is not a number of seconds"), ("inf", "inf is not in the range")])
def test_gc_grace_must_be_a_finite_number_of_seconds(run, in_repo, tmp_path, grace, why):
    """--grace nan exited 3 (past click's range check, which NaN passes), --grace inf 2."""
    run("commit", _ckpt(tmp_path / "a.safetensors", 0), "-m", "one")
    before = sorted(in_repo.store.ids())
    r = run("gc", "--grace", grace, code=2)
    assert f"Invalid value for '--grace': {why}" in r.stderr
    assert sorted(in_repo.store.ids()) == before


def test_switch_in_a_repository_without_commits_picks_the_branch_the_first_commit_makes(run, in_repo, tmp_path):
    # the current branch is no error there ("no branch 'main'" before): the first commit makes it
    assert run("switch", "main").stdout == "Already on main\n"
    assert json.loads(run("switch", "main", "--json").stdout)["branch"] == "main" and in_repo.head_branch == "main"
    assert run("switch", "other").stdout == "Switched to branch other\n" and in_repo.head_branch == "other"
    assert run("switch", "HEAD").stdout == "Already on other\n"
    assert "invalid branch or tag name 'tags/x'" in run("switch", "tags/x", code=3).stderr
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "first")
    assert in_repo.branches() == {"other": in_repo.head()}
    assert "no branch 'main'" in run("switch", "main", code=3).stderr


def test_switch_to_a_commit_says_mvc_has_no_detached_head(run, in_repo, tmp_path):
    """`mvc switch <id>` and `mvc switch HEAD~1` said "invalid branch or tag name"."""
    for seed in (0, 1):
        run("commit", _ckpt(tmp_path / "m.safetensors", seed), "-m", str(seed))
    run("tag", "v1", "HEAD~1")
    cid = in_repo.resolve("HEAD~1")
    for rev in (cid, cid[:12], "HEAD~1", "v1"):
        assert run("switch", rev, code=3).stderr == (
            f"error: {rev!r} names a commit, not a branch: mvc has no detached HEAD (make a branch there and "
            f"switch to it: mvc branch NAME {rev} && mvc switch NAME)\n")
    assert in_repo.head_branch == "main"
    assert "no branch 'nope'" in run("switch", "nope", code=3).stderr


def test_reflog_head_is_the_current_branch(run, in_repo, tmp_path):
    """`mvc reflog HEAD` said "invalid branch or tag name 'HEAD'"."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    assert run("reflog", "HEAD").stdout == run("reflog").stdout != ""
    assert in_repo.reflog("HEAD") == in_repo.reflog("main")


def test_diff_text_never_rounds_a_change_to_none_or_all(run, in_repo, tmp_path):
    w = torch.zeros(5000)
    save_file({"w": w}, tmp_path / "a.safetensors")
    w2 = w.clone()
    w2[0] = 1.0  # 1 of 5000 changed: 0.02%
    save_file({"w": w2}, tmp_path / "b.safetensors")
    run("commit", tmp_path / "a.safetensors", "-m", "a")
    run("commit", tmp_path / "b.safetensors", "-m", "b")
    out = run("diff", "HEAD~1", "HEAD").stdout
    assert "<0.1%" in out and "0.0%" not in out


@pytest.mark.parametrize("name", ["v1.", "DEADBEEF", "x.lock/y"])
def test_init_refuses_a_default_branch_its_first_commit_could_not_make(tmp_path, name):
    with pytest.raises(mvc.errors.BadName):
        mvc.Repo.init(tmp_path / "r", default_branch=name)
    assert not (tmp_path / "r" / ".mvc").exists()


def test_init_of_an_existing_repository_says_that_a_default_branch_given_is_ignored(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r", default_branch="trunk")
    for name in ("dev", "main"):  # ("main", the default name, given explicitly was not said to be ignored)
        with pytest.warns(UserWarning, match=f"is a repository already: default_branch='{name}' ignored"):
            again = mvc.Repo.init(tmp_path / "r", default_branch=name)
    assert again.head_branch == repo.head_branch == "trunk"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mvc.Repo.init(tmp_path / "r", default_branch="trunk")  # (what it is: nothing ignored)
        mvc.Repo.init(tmp_path / "r")


def test_long_tables_print_as_aligned_plain_lines(run, tmp_path, monkeypatch):
    """rich drew ~0.5 ms a row: a diff of 10k changed tensors spent 5 s of its 8 s on the table."""
    import mvc.cli.output
    monkeypatch.setattr(mvc.cli.output, "PLAIN_TABLE_ROWS", 3)
    names = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(5)]
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        save_file({n: torch.randn(4, generator=g) for n in names}, tmp_path / "m.safetensors")
        run("commit", tmp_path / "m.safetensors", "-m", str(seed))
    out = run("diff", "HEAD~1", "HEAD").stdout.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("tensor "))
    rows = out[header + 1: header + 6]
    assert [r.split()[0] for r in rows] == names and all(r.split()[1] == "changed" for r in rows)
    assert "│" not in "".join(out) and out[header].index("status") == rows[0].index("changed")
    assert "│" in run("show").stdout  # short tables are still drawn


def test_each_message_option_is_a_paragraph_as_in_git(run, tmp_path):
    """`-m subject -m body` kept only "body", without a word."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "subject", "-m", "body\nmore")
    assert json.loads(run("log", "--json").stdout)[0]["message"] == "subject\n\nbody\nmore"
    run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "two")
    run("revert", "HEAD~1", "-m", "back", "-m", "why")
    assert json.loads(run("log", "-n", "1", "--json").stdout)[0]["message"] == "back\n\nwhy"
    run("revert", "HEAD~1", "-m", "")  # where a command has a default message, "" means it (as in the API)
    assert json.loads(run("log", "-n", "1", "--json").stdout)[0]["message"].startswith("revert to ")


@pytest.mark.parametrize("command", ["gc", "pack"])
def test_an_interrupted_gc_or_pack_says_running_it_again_finishes_it(run, monkeypatch, command):
    """An interrupted gc that had expired reflog entries said "do not run the command again blindly" (h97)."""
    from mvc.refs import note_moved

    def interrupted(*_a, **_k):
        note_moved("expired 2 reflog entries", logged=False)
        raise KeyboardInterrupt
    monkeypatch.setattr("mvc.repo.Repo.gc", interrupted)
    monkeypatch.setattr("mvc.pack_write.Packer.run", interrupted)
    r = run(command, code=130)
    assert r.stderr == f"error: interrupted after it had expired 2 reflog entries (that stands; the same mvc {command} finishes the work)\n"
    if command == "gc":  # (a dry run and a plain fsck, which repair nothing, say no such thing)
        assert "finishes" not in run("gc", "--dry-run", code=130).stderr
        monkeypatch.setattr("mvc.repo.Repo.fsck", interrupted)
        assert "gc" not in run("fsck", code=130).stderr


def test_ctrl_c_after_a_commit_landed_says_what_landed(run, tmp_path, monkeypatch):
    """A signal arriving after repo.commit returned (while the CLI printed) said only "error:
    interrupted": a wrapper retrying on 130 would commit twice."""
    from mvc.cli import repo_cmds

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    monkeypatch.setattr(repo_cmds, "short", interrupted)  # Ctrl-C while the commit line prints
    r = run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "two", code=130)
    head = mvc.Repo(".").resolve("HEAD")
    assert r.stderr.strip() == (f"error: interrupted after it had moved refs/heads/main to {head[:12]} (that stands: see "
                                "mvc log and mvc reflog; do not run the command again blindly)")


def test_init_and_clone_through_a_dangling_symlink_name_the_link(run, in_repo, tmp_path):
    """makedirs under a symbolic link to nothing raised FileNotFoundError (exit 4); init of the link
    itself said "the path is a file"."""
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for args in (["init", tmp_path / "dangling"], ["init", tmp_path / "dangling" / "x"],
                 ["clone", in_repo.root, tmp_path / "dangling" / "y"]):
        err = run(*args, code=3).stderr
        assert err.startswith("error: cannot create a repository at ") and err.count("\n") == 1, err
        assert f"is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err
        assert "(create its target, or remove the link)" in err
    assert not (tmp_path / "gone").exists()


def test_a_clone_whose_url_the_config_cannot_hold_leaves_nothing(run, tmp_path):
    """A clone from a folder whose name is not UTF-8 exited 3 but left an empty repository behind
    (and in a directory the user made for it, an empty .mvc), which the next clone called "not empty"."""
    source = os.path.join(os.fsencode(tmp_path), b"src\xff").decode(errors="surrogateescape")
    mvc.Repo.init(source)
    (tmp_path / "mine").mkdir()
    for target in (tmp_path / "new" / "a" / "b", tmp_path / "mine"):  # (the folders a clone makes go too)
        err = run("clone", source, target, code=3).stderr
        assert "the value is not UTF-8 text" in err
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path / "mine") == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_init_where_no_folder_can_be_made_is_an_error_not_a_bug(run):
    """makedirs under /proc fails with ENOENT, which no check before it foresees: exit 4 with a traceback."""
    err = run("init", "/proc/self/no-such/models", code=3).stderr
    assert err.startswith("error: cannot create a repository at /proc/self/no-such/models: the folder ")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("value,shown", [("nan", "nan"), ("-inf", "-inf"), ("1e400", "inf")])
def test_a_metric_that_is_not_a_finite_number_is_a_usage_error(run, in_repo, tmp_path, value, shown):
    """--metric loss=nan exited 3 with "metrics: value.loss is nan ... (canonical JSON)"."""
    r = run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "x", "--metric", f"loss={value}", code=2)
    assert r.stderr.endswith(f"Invalid value for '--metric': metric 'loss' is {shown}: metrics are JSON numbers, "
                             "which have no NaN or infinity (record it as text instead, e.g. loss=diverged)\n")
    assert in_repo.head() is None
    run("commit", tmp_path / "m.safetensors", "-m", "x", "--metric", "loss=diverged")
    assert in_repo.log()[0]["metrics"] == {"loss": "diverged"}


@pytest.mark.parametrize("value", ["1e-400", "-2e-324"])
def test_a_metric_too_small_for_a_float_is_a_usage_error_not_zero(run, in_repo, tmp_path, value):
    """--metric lr=1e-400 was stored as 0.0 while 1e400 was refused (probe h34)."""
    r = run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "x", "--metric", f"lr={value}", code=2)
    assert f"metric value {value} is too small for a float (it would be stored as 0)" in r.stderr
    assert in_repo.head() is None
    run("commit", tmp_path / "m.safetensors", "-m", "x", "--metric", "lr=0e-400", "--metric", "b=5e-324")
    assert in_repo.log()[0]["metrics"] == {"lr": 0.0, "b": 5e-324}


@pytest.mark.parametrize("kind,name", [("branch", "tags/v1"), ("tag", "heads/main"), ("branch", "remotes/o/x"),
                                       ("tag", "refs/heads/x")])
def test_new_names_that_revisions_read_as_qualified_are_refused(run, in_repo, tmp_path, kind, name):
    """Branch tags/v1 beside tag v1: `mvc rev-parse tags/v1` silently gave the tag."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    r = run(kind, name, code=3)
    assert r.stderr == (f"error: invalid branch or tag name {name!r}: a revision that starts with {name.split('/')[0]}/ "
                        "names a branch, tag or ref by its full name (choose a name that does not start with heads/, "
                        "tags/, remotes/ or refs/)\n")
    assert list(in_repo.branches()) == ["main"] and in_repo.tags() == {}


@pytest.mark.parametrize("args", [["branch", ""], ["branch", "", "HEAD~1"], ["tag", ""], ["tag", "", "HEAD~1"]])
def test_an_empty_branch_or_tag_name_is_refused_not_a_listing(run, in_repo, tmp_path, args):
    """`mvc branch ""` listed the branches (exit 0), as if no name were given."""
    for seed in (0, 1):
        run("commit", _ckpt(tmp_path / "m.safetensors", seed), "-m", str(seed))
    r = run(*args, code=3)
    assert r.stdout == "" and r.stderr == "error: invalid branch or tag name ''\n"
    assert list(in_repo.branches()) == ["main"] and in_repo.tags() == {}


@pytest.mark.parametrize("key,value,takes", [("gc.reflogExpire", "abc", "a duration: a number of seconds, or one "
                                                                        "with a unit (s, m, h, d, w), e.g. 90d"),
                                             ("pack.cacheMB", "lots", "a finite number >= 0 of MB"),
                                             ("pack.level", "x", "a whole number from -7 to 22"),
                                             ("pack.level", "99", "a whole number from -7 to 22"),
                                             ("pack.maxDepth", "x", "a whole number >= 0"),
                                             ("core.fsync", "maybe", "true or false")])
def test_a_config_value_mvc_cannot_read_says_what_the_key_takes(run, in_repo, key, value, takes):
    """gc.reflogExpire abc said Python's "could not convert string to float: 'abc'". Setting one has no
    hint (it said to run the command just run); a hand-edited one read back says how to set it."""
    assert run("config", key, value, code=3).stderr == f"error: config {key} = {value!r} is invalid: it takes {takes}\n"
    run("config", key, code=1)
    section, _, name = key.partition(".")
    path = os.path.join(in_repo.dir, "config")
    text = open(path).read()
    text = (text.replace(f"[{section}]\n", f"[{section}]\n{name} = {value}\n") if f"[{section}]\n" in text
            else text + f"[{section}]\n{name} = {value}\n")  # (a hand edit)
    open(path, "w").write(text)
    with pytest.raises(mvc.MvcError) as e:
        mvc.Repo(in_repo.root).config_value(key, None)
    assert e.value.hint == f"set it with mvc config {key} VALUE"


def test_a_config_value_that_is_not_utf8_is_refused(run, in_repo):
    """A remote path holding a byte that is not UTF-8 (legal on Linux; argv hands it over as a
    surrogate) crashed writing the config file: UnicodeEncodeError, exit 4."""
    r = run("remote", "add", "origin", "/tmp/rem\udcff", code=3)
    assert r.stderr.startswith("error: config remote.origin.url: the value is not UTF-8 text (")
    assert "remote" not in open(os.path.join(in_repo.dir, "config")).read()


def test_metrics_print_as_json_spells_them(run, in_repo, tmp_path):
    """--metric ok=true showed as ok=True (Python's spelling) in log, show and diff."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "a", "--metric", "ok=false")
    in_repo.commit({}, message="b", metrics={"ok": True, "none": None, "curve": [1.5, True], "note": "fine"})
    assert "Metrics: curve=[1.5,true], none=null, note=fine, ok=true" in run("log", "-n", "1").stdout
    assert "Metrics: curve=[1.5,true], none=null, note=fine, ok=true" in run("show").stdout
    out = run("diff", "HEAD~1", "HEAD").stdout
    assert "metric ok: false -> true" in out and "metric note: - -> fine" in out
    assert "True" not in out + run("log").stdout


def test_two_metrics_dicts_never_print_alike(run, in_repo):
    """{"a=b, c": 1} and {"a": "b, c=1"} both printed "Metrics: a=b, c=1" (h86)."""
    lines = []
    cases = ({"a=b, c": 1}, {"a": "b, c=1"}, {"a": "b", "c": 1}, {"x": ["p, q"]}, {"x": "[\"p, q\"]"},
             {"a": ["c, b=1"]}, {"a": '["c', "b": '1"]'}, {"a": ["\u202e"]}, {"a": '["\u202e"]'})  # (h90)
    for i, metrics in enumerate(cases):
        in_repo.commit({"m": {"w": torch.full((2,), float(i))}}, message="m", metrics=metrics)
        lines += [ln for ln in run("log", "-n", "1").stdout.splitlines() if "Metrics:" in ln]
    assert len(set(lines)) == len(cases), lines
    assert lines[2].strip() == "Metrics: a=b, c=1" and lines[0].strip() == 'Metrics: "a=b, c"=1'
    assert "\u202e" not in "".join(lines)
    in_repo.commit({"m": {"w": torch.ones(2)}}, message="m", metrics={"a": 1})
    in_repo.commit({"m": {"w": torch.ones(2)}}, message="m", metrics={"a": "1"})
    assert 'metric a: 1 -> "1"' in run("diff", "HEAD~1", "HEAD").stdout  # (it said 1 -> 1)
    diffs = []  # (h94: "x -> y" to "z" and "x" to "y -> z"; key "k: a" = "b" and "k" = "a: b"; é two ways)
    for before, after in (({"k": "x -> y"}, {"k": "z"}), ({"k": "x"}, {"k": "y -> z"}), ({"k: a": "b"}, {"k: a": "c"}),
                          ({"k": "a: b"}, {"k": "c"}), ({"k": "\u00e9"}, {"k": "e\u0301"})):
        in_repo.commit({"m": {"w": torch.ones(2)}}, message="m", metrics=before)
        in_repo.commit({"m": {"w": torch.ones(2)}}, message="m", metrics=after)
        diffs.append([ln for ln in run("diff", "HEAD~1", "HEAD").stdout.splitlines() if "metric" in ln])
    assert len({tuple(d) for d in diffs}) == len(diffs), diffs
    assert diffs[4][0].split(": ", 1)[1].split(" -> ")[0] != diffs[4][0].split(" -> ")[1], diffs[4]


def test_config_values_with_white_space_at_either_end_are_refused(run, in_repo, tmp_path):
    """configparser drops it on reading: "  padded  " came back "padded", and a remote added as
    '/x/rem ' was pushed into '/x/rem', another folder."""
    err = run("config", "user.note", "  padded  ", code=3).stderr
    assert "config user.note: the value '  padded  ' starts or ends with white space" in err
    assert "remote" not in err and err.count("(") == 0  # (the remote's hint, nested parentheses, was given)
    err = run("remote", "add", "o", str(tmp_path / "rem "), code=3).stderr
    assert "starts or ends with white space" in err and "rename it, or link to it" in err
    assert in_repo.get_config("user.note") is None and "o" not in run("remote").stdout
    run("config", "user.note", "in between  spaces")
    assert mvc.Repo(in_repo.root).get_config("user.note") == "in between  spaces"


def test_reflog_of_another_branch_labels_its_entries_with_its_name(run, in_repo, tmp_path):
    """`@{N}` beside another branch's entries resolves in the current branch's reflog: another
    commit. The label carries the branch (git's exp@{N}), which resolves to the commit shown."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    run("branch", "exp")
    run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "two", "--branch", "exp")
    lines = run("reflog", "exp").stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["exp@{0}:", "exp@{1}:"]
    for line in lines:
        shown_id, label = line.split()[:2]
        assert in_repo.resolve(label.rstrip(":")).startswith(shown_id)
    assert [line.split()[1] for line in run("reflog").stdout.splitlines()] == ["@{0}:"]  # the current branch
    err = run("reflog", "", code=3).stderr  # was exit 0 and nothing, as if a branch had never moved
    assert err.startswith("error: ") and "branch" in err


def test_a_head_naming_a_tag_is_no_branch_to_commit_or_roll_back(run, in_repo, tmp_path):
    """HEAD damaged to `ref: refs/tags/v1`: rollback and commit moved the tag (fsck names such a
    HEAD); they refuse, saying what is wrong with HEAD (they said "HEAD is detached"), and mvc switch
    repairs it. A HEAD holding no id at all points at mvc switch too (the hint was "delete the
    file", after which fsck fails)."""
    first = json.loads(run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one", "--json").stdout)["commit"]
    second = json.loads(run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "two", "--json").stdout)["commit"]
    run("tag", "v1")
    head = os.path.join(in_repo.dir, "HEAD")
    with open(head, "w") as f:
        f.write("ref: refs/tags/v1\n")
    said = [run("rollback", code=3).stderr, run("commit", _ckpt(tmp_path / "m.safetensors", 2), "-m", "x", code=3).stderr,
            run("reflog", code=3).stderr, run("rev-parse", "@{1}", code=3).stderr,
            run("push", str(tmp_path / "elsewhere.mvc"), code=3).stderr]
    for err in said:
        assert "HEAD names 'refs/tags/v1', not a branch" in err and "detached" not in err
        assert err.rstrip().endswith("(mvc switch BRANCH repairs it)")
    assert in_repo.tags() == {"v1": second} and in_repo.branches() == {"main": second}
    run("switch", "main")
    assert run("rollback", "--json").stdout and in_repo.branches()["main"] == first
    with open(head, "w") as f:
        f.write("garbage\n")
    assert run("log", code=3).stderr.rstrip().endswith("(mvc switch BRANCH repairs it)")
    with open(head, "w") as f:
        f.write("ref: garbage\n")  # fsck names it (it stopped at "not a full ref name")
    assert "HEAD names 'garbage', not a branch" in run("fsck", code=1).stdout


def test_output_paths_are_quoted_in_human_output(run, in_repo, tmp_path):
    """A path holding a line break or a terminal escape was printed raw by init, checkout and
    export: it could forge an `error:` line or retitle the terminal."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "one")
    odd = str(tmp_path / "out\nerror: forged\x1b]0;PWNED\x07")
    for args in (["export", "HEAD", "model", "-o", odd + ".safetensors"], ["checkout", "HEAD", "-o", odd],
                 ["init", odd + "-repo"]):
        out = run(*args).stdout
        assert out.count("\n") == 1 and "\x1b" not in out and "\\x1b]0;PWNED\\x07" in out, (args, out)


def test_reflog_expiry_takes_a_unit_and_a_bare_number_is_seconds(run, in_repo):
    """`mvc config gc.reflogExpire 90` meant 90 seconds while every text a user saw spoke of days:
    a rolled-back checkpoint went at the next gc. A duration may now name its unit."""
    from mvc.config import parse
    assert [parse("gc.reflogExpire", v) for v in ("90d", "12h", "30m", "2w", "45s", "90", "0")] == \
        [90 * 86400, 12 * 3600, 1800, 14 * 86400, 45, 90, 0]
    in_repo.commit({"m": {"w": torch.zeros(2)}}, message="one")
    gone = in_repo.commit({"m": {"w": torch.ones(2)}}, message="two")
    in_repo.rollback()
    log = os.path.join(in_repo.dir, "logs", "refs", "heads", "main")
    hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    with open(log) as f:
        entries = [json.loads(line) for line in f]
    with open(log, "w") as f:  # (every move an hour old)
        f.writelines(json.dumps({**e, "time": hour_ago}) + "\n" for e in entries)
    run("config", "gc.reflogExpire", "30d")
    run("gc", "--grace", "0")
    assert mvc.Repo(in_repo.root).store.has(gone)  # 30 days keep an hour-old entry
    assert "is 30 seconds (a duration with no unit); if you meant days, write 30d" in \
        run("config", "gc.reflogExpire", "30").stderr
    run("gc", "--grace", "0")
    assert not mvc.Repo(in_repo.root).store.has(gone)  # 30 seconds do not
    assert "gc.reflogExpire 30d" in run("config", "--help").stdout
    assert run("config", "gc.reflogExpire", "3600").stderr == ""  # (an hour in seconds: no days suggested)


def test_no_commits_yet_names_the_branches_that_have_some(run, in_repo):
    """After `mvc commit ... --branch imports` (or a pipeline run) in a new repository, log, status
    and show said only that there are no commits yet."""
    assert run("log").stderr.strip() == "no commits yet"  # (none anywhere: as before)
    in_repo.commit({"m": {"w": torch.zeros(2)}}, message="import", branch="imports")
    hint = "branches with commits: imports; mvc switch NAME, or mvc log NAME"
    assert run("log").stderr.strip() == f"no commits yet on main ({hint})"
    assert f"No commits yet on it ({hint})" in run("status").stdout
    assert run("show", code=3).stderr.strip() == f"error: HEAD has no commits yet ({hint})"


def test_fetched_branches_are_listed_and_labelled(run, in_repo, tmp_path):
    """Remote-tracking branches (origin/NAME) were in no listing: branch -r and -a were unknown
    options, and log labelled no commit with them."""
    from mvc import remote as rm
    head = in_repo.commit({"m": {"w": torch.zeros(2)}}, message="one")
    rm.add_remote(in_repo, "origin", str(tmp_path / "remote"))
    rm.push(in_repo)
    assert run("branch", "-r").stdout == f"  origin/main {head[:12]}\n"
    assert run("branch", "-a").stdout == f"* main {head[:12]}\n  remotes/origin/main {head[:12]}\n"
    assert json.loads(run("branch", "-a", "--json").stdout)["remotes"] == {"origin/main": head}
    assert "origin/main" not in json.dumps(json.loads(run("branch", "--json").stdout))
    assert f"{head[:12]} (main, origin/main) one" in run("log", "--oneline").stdout
    assert "take no NAME" in run("branch", "-r", "x", code=2).stderr
    # h77: a local branch named origin/main printed as the tracking one did, in -a and in log
    other = in_repo.commit({"m": {"w": torch.ones(2)}}, message="two")
    run("branch", "origin/main")
    assert run("branch", "-a").stdout == (f"* main {other[:12]}\n  origin/main {other[:12]}\n"
                                          f"  remotes/origin/main {head[:12]}\n")
    assert f"{other[:12]} (main, heads/origin/main) two" in run("log", "--oneline").stdout
    assert f"{head[:12]} (remotes/origin/main) one" in run("log", "--oneline").stdout


def test_small_words_of_the_day(run, in_repo):
    """mvc du said '1 commits'. (A negative config value follows `--`: taking unknown options as
    values stored typos such as --json as a remote's url.)"""
    in_repo.commit({"m": {"w": torch.zeros(2)}}, message="one")
    assert run("du").stdout.startswith("1 commit, ")
    run("config", "gc.reflogExpire", "--", "-1")
    assert run("config", "gc.reflogExpire").stdout == "-1\n"
    assert "No such option" in run("config", "remote.origin.url", "--json", code=2).stderr


def test_committing_a_file_without_tensors_over_weights_says_so(run, in_repo, tmp_path):
    """`mvc commit notes.txt -m x` replaced component model (its tensors) by a text file, silently."""
    run("commit", _ckpt(tmp_path / "m.safetensors", 0), "-m", "weights")
    (tmp_path / "notes.txt").write_text("remember to tune the lr")
    r = run("commit", tmp_path / "notes.txt", "-m", "oops")
    assert "component model held 2 tensors and now holds none (only files): mvc rollback undoes" in r.stderr
    assert "holds none" not in run("commit", _ckpt(tmp_path / "m.safetensors", 1), "-m", "weights again").stderr
    run("branch", "exp")
    r = run("commit", "-c", f"model={tmp_path / 'notes.txt'}", "-m", "oops", "--branch", "exp")
    assert "mvc switch exp; mvc rollback undoes this commit" in r.stderr  # (a rollback moves HEAD's branch)
    tree = in_repo.read_commit(in_repo.resolve("HEAD"))["components"]["model"]
    os.chmod(in_repo.loose.path(tree), 0o644)
    os.unlink(in_repo.loose.path(tree))  # a damaged parent: the commit lands, the check is skipped
    assert run("commit", tmp_path / "notes.txt", "-m", "again").stdout.startswith("[main ")


def test_no_commits_yet_names_fetched_branches_too(run, in_repo, tmp_path):
    """In a repository made to fetch a team's remote (the README's CI steps), show said only 'make a
    first commit'."""
    from mvc import remote as rm
    team = mvc.Repo.init(tmp_path / "team")
    team.commit({"m": {"w": torch.zeros(2)}}, message="one")
    rm.add_remote(team, "origin", str(tmp_path / "remote"))
    rm.push(team)
    run("remote", "add", "origin", tmp_path / "remote")
    run("fetch")
    assert "(fetched branches: origin/main; mvc branch NAME origin/NAME makes one here)" in \
        run("show", code=3).stderr
    assert "fetched branches: origin/main" in run("log").stderr


def test_checkout_of_a_component_the_commit_lacks_lists_those_it_has(run, in_repo, tmp_path):
    run("commit", "-c", f"core={_ckpt(tmp_path / 'a.safetensors', 0)}", "-c", f"brick/py={_ckpt(tmp_path / 'b.safetensors', 1)}",
        "-m", "two")
    r = run("checkout", "HEAD", "-o", str(tmp_path / "out"), "-c", "nope", code=3)
    assert r.stderr.endswith("has no component 'nope' (it has: brick/py, core)\n") and not (tmp_path / "out").exists()


def test_branch_force_moves_an_existing_branch_but_not_the_current_one(run, in_repo, tmp_path):
    """A branch that is not the current one could only be moved by switching to it and rolling back;
    `mvc branch NAME REV` on it said "already exists" with no way on."""
    for seed in (0, 1):
        run("commit", _ckpt(tmp_path / "m.safetensors", seed), "-m", str(seed))
    first, second = in_repo.resolve("HEAD~1"), in_repo.resolve("HEAD")
    run("branch", "exp", "HEAD~1")
    assert run("branch", "exp", code=3).stderr == "error: branch 'exp' already exists (pass --force to move it)\n"
    r = run("branch", "-f", "exp")
    assert r.stdout == f"Moved branch exp from {first[:12]} to {second[:12]} (undo with: mvc branch -f exp {first[:12]})\n"
    assert in_repo.branches()["exp"] == second and in_repo.reflog("exp")[0]["message"] == "branch: reset to HEAD"
    doc = json.loads(run("branch", "-f", "exp", first[:12], "--json").stdout)
    assert doc == {"branch": "exp", "commit": first, "old": second} and in_repo.branches()["exp"] == first
    assert run("branch", "-f", "main", "exp", code=3).stderr == ("error: cannot force-move the current branch 'main' "
                                                                "(mvc rollback exp moves it)\n")
    assert run("branch", "main", "exp", code=3).stderr == ("error: branch 'main' already exists (it is the current "
                                                          "branch: mvc rollback exp moves it)\n")  # (not --force)
    assert run("branch", "-f", "main", code=3).stderr.endswith("(mvc rollback REV moves it)\n")
    assert json.loads(run("branch", "made", "--json").stdout) == {"branch": "made", "commit": second, "old": None}
    assert in_repo.branches() == {"main": second, "exp": first, "made": second}
    assert json.loads(run("branch", "-f", "new", "--json").stdout)["old"] is None  # (one that did not exist: made)
    assert in_repo.branches()["new"] == second
    run("branch", "-f", code=2)
    run("branch", "-d", "exp", "-f", code=2)


def test_delete_of_two_names_or_unset_with_a_value_is_a_usage_error(run, in_repo):
    """`mvc tag -d t1 t2` and `mvc branch -d b1 b2` deleted t1 / b1 alone and exited 0 (the second
    name went to REV, unread); `config --unset KEY VALUE` ignored the value; `tag -f` listed (h100)."""
    in_repo.commit({"m": {"w": torch.zeros(2)}}, message="a")
    for args in (("tag", "t1"), ("tag", "t2"), ("branch", "b1"), ("branch", "b2")):
        run(*args)
    assert "one tag" in run("tag", "-d", "t1", "t2", code=2).stderr
    assert "one branch" in run("branch", "-d", "b1", "b2", code=2).stderr
    assert set(in_repo.tags()) == {"t1", "t2"} and {"b1", "b2"} <= set(in_repo.branches())
    run("tag", "-f", code=2)
    run("config", "gc.reflogExpire", "30d")
    assert "takes no VALUE" in run("config", "--unset", "gc.reflogExpire", "30d", code=2).stderr
    assert run("config", "gc.reflogExpire").stdout == "30d\n"
    run("tag", "-d", "t1")
    run("branch", "-d", "b1")
    run("config", "--unset", "gc.reflogExpire")
    assert set(in_repo.tags()) == {"t2"} and "b1" not in in_repo.branches()
    run("config", "gc.reflogExpire", code=1)  # (unset)

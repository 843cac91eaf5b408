"""Human output never passes text from a user, a file or a remote raw to the terminal: control and
bidirectional-override characters are quoted, emoji codes stay text, tables keep names and ids."""
import io
import json
import struct
import sys

import pytest
import torch

import mvc
from damage import forge
from mvc.errors import BadName
from mvc.quoting import one_line, shown

RAW = ("\x1b", "\x07", "\x9b", "\x9d", "\u202e")  # ESC, BEL, CSI, OSC, right-to-left override


def test_shown_quotes_only_text_that_needs_it():
    assert shown("brick/python") == "brick/python" and shown("é ß 模型") == "é ß 模型"
    assert shown('a"b\\c') == 'a"b\\c'  # no control character: printed as stored
    assert shown("w\x1b]0;x\x07") == '"w\\x1b]0;x\\x07"'
    assert shown('two\nlines "q" \\') == '"two\\nlines \\"q\\" \\\\"'
    assert shown("c\u009b2J") == '"c\\x9b2J"' and shown("\u202etxt") == '"\\u202etxt"'
    assert one_line("error: bad\npath \x1b[2J") == "error: bad\\npath \\x1b[2J"
    # no two texts print alike: a text typed to look quoted is quoted itself
    assert shown('"x\\x1b[2J"') == '"\\"x\\\\x1b[2J\\""' != shown("x\x1b[2J") == '"x\\x1b[2J"'
    assert shown("out\udcfe") == '"out\\udcfe"'  # a path argument's byte that is not UTF-8
    assert shown("main\u200e") == '"main\\u200e"' and shown("ma\u200bin") == '"ma\\u200bin"'  # invisible marks
    # blanks at either end print as nothing in a column ("a " as "a"), and the empty name as no name
    assert [shown(t) for t in ("a", "a ", " a", "", "a b", "\u3000a")] == ["a", '"a "', '" a"', '""', "a b", '"\u3000a"']
    # h77: what prints as nothing or as a plain space where no text has one (soft hyphen, line
    # separator, grapheme joiner, Hangul filler, a thin space) is quoted; h79: not the no-break and
    # ideographic spaces of French and CJK text, nor emoji's joiner
    assert [shown(t) for t in ("x\u00ady", "x\u2028y", "x\u034fy", "x\u3164y", "x\u2009y")] == [
        '"x\\xady"', '"x\\u2028y"', '"x\\u034fy"', '"x\\u3164y"', '"x\\u2009y"']
    assert [shown(t) for t in ("perte\u00a0: 2,3", "学習\u3000ステップ", "\U0001f469\u200d\U0001f52c")] == [
        "perte\u00a0: 2,3", "学習\u3000ステップ", "\U0001f469\u200d\U0001f52c"]
    # h81: names (branches, components, paths) holding those spaces, or not in NFC, are quoted
    from mvc.quoting import shown_name
    assert [shown_name(t) for t in ("a\u00a0b", "e\u0301x", "\u00e9x", "a b", "core")] == [
        '"a\\xa0b"', '"e\u0301x"', "\u00e9x", "a b", "core"]


def _raw_safetensors(path, names):
    """A file as a hub might hold it: tensor names with escapes and newlines (safetensors allows any text)."""
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 4 * len(names))
    return path


def test_stored_text_reaches_the_terminal_quoted(run, tmp_path, monkeypatch):
    evil = "w\x1b]0;PWNED\x07"
    forged = "real\n0000000000000000000000000000000000000000000000000000000000000000   F32  [2] forged"
    run("commit", _raw_safetensors(tmp_path / "a.safetensors", [evil, forged]), "-m", "one\x1b[2J",
        "--metric", "loss=2.0\nCI:     passed", "--metric", "k\u009b=1")
    p = _raw_safetensors(tmp_path / "a.safetensors", [evil, forged, "new"])
    repo = mvc.Repo(".")
    repo.commit({"model": str(p)}, message="two \u202eright-to-left\nsecond line\x07")
    # an author as a remote's commit may carry it (commits made here refuse control characters)
    repo.rollback(forge(repo, {**repo.read_commit(repo.resolve("HEAD")), "author": "mallory\nDate: forged"}))
    outputs = {cmd: run(*cmd).stdout for cmd in [("log",), ("log", "--oneline"), ("show",), ("show", "HEAD~1"),
                                                  ("ls-tree", "HEAD", "model"), ("diff", "HEAD~1", "HEAD"),
                                                  ("reflog",), ("diff", "HEAD~1", "HEAD", "--all")]}
    for cmd, out in outputs.items():
        assert not any(c in out for c in RAW), (cmd, out)
    log = outputs[("log",)]
    starts = [line.split(" ")[0] for line in log.splitlines()]
    assert starts.count("CI:") == 0 and starts.count("Date:") == 2 and starts.count("commit") == 2
    assert '"mallory\\nDate: forged"' in log and '"loss"' not in log and '"2.0\\nCI:     passed"' in log
    assert "    two \\u202eright-to-left\n    second line\\x07\n" in log  # (a message's lines: escaped, not quoted)
    listing = outputs[("ls-tree", "HEAD", "model")].splitlines()
    assert len(listing) == 4  # three tensors and one file: the forged line stays inside its quotes
    assert '"w\\x1b]0;PWNED\\x07"' in outputs[("ls-tree", "HEAD", "model")]
    assert '"real\\n0000' in outputs[("diff", "HEAD~1", "HEAD", "--all")]
    assert json.loads(run("log", "--json").stdout)[0]["author"] == "mallory\nDate: forged"  # JSON as stored


def test_a_message_of_paragraphs_and_indented_lines_prints_as_written(run, tmp_path):
    """`-m one -m two` (each -m a paragraph) printed its blank line as `""`, and an indented line
    quoted, in log and show (h108)."""
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
    run("commit", tmp_path / "m.safetensors", "-m", "one", "-m", "  indented\tcode")
    body = "\n    one\n\n      indented\\tcode\n"
    assert body in run("log").stdout and body in run("show").stdout


def test_a_path_argument_that_is_not_utf8_is_printed_quoted_on_a_strict_utf8_stdout(tmp_path):
    """A strict UTF-8 stdout (en_US.UTF-8; C.UTF-8 is lenient) cannot write a lone surrogate: the
    checkout wrote its files, then failed printing its confirmation (exit 4, a traceback)."""
    import os
    import subprocess
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"m": {"w": torch.ones(2)}}, message="x")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    r = subprocess.run([sys.executable, "-m", "mvc", "checkout", "HEAD", "-o", b"out\xfe"], cwd=tmp_path / "r",
                       env=env, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b' under "out\\udcfe"\n')
    assert (tmp_path / "r" / os.fsdecode(b"out\xfe") / "m" / "model.safetensors").is_file()


def test_rich_emoji_codes_and_markup_stay_text(run, tmp_path):
    from safetensors.torch import save_file
    save_file({"blk:cat:w": torch.zeros(2)}, tmp_path / "m.safetensors")
    run("commit", "-c", f"enc:fire:={tmp_path / 'm.safetensors'}", "-m", "ratio :100: ok [bold]x[/]",
        "--metric", "acc:x:=1")
    save_file({"blk:cat:w": torch.ones(2)}, tmp_path / "m.safetensors")
    run("commit", "-c", f"enc:fire:={tmp_path / 'm.safetensors'}", "-m", "second")
    show = run("show", "HEAD~1").stdout
    assert "enc:fire:" in show and ":100:" in show and "acc:x:=1" in show and "[bold]x[/]" in show
    diff = run("diff", "HEAD~1", "HEAD").stdout
    assert "enc:fire:" in diff and "blk:cat:w" in diff
    assert not any(e in show + diff for e in ("\U0001f525", "\U0001f4af", "\U0001f431", "\u274c"))


def test_error_and_warning_lines_escape_what_they_echo(run, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"x")
    (folder / "link\x1b]0;T\x07").symlink_to(folder)
    r = run("commit", folder, "-m", "m", code=3)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "\x1b" not in r.stderr and "\\x1b]0;T\\x07" in r.stderr


def test_new_names_refuse_c1_controls_and_paths_past_the_limit(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r")
    with pytest.raises(BadName, match="C1 control"):
        repo.commit({"core\u009b2J": {"w": torch.zeros(1)}}, message="m")
    with pytest.raises(BadName, match="longer than 1000 bytes"):
        repo.commit({"/".join(["s" * 200] * 6): {"w": torch.zeros(1)}}, message="m")
    repo.commit({"core": {"w": torch.zeros(1)}}, message="m")
    with pytest.raises(BadName, match="C1 control"):
        repo.create_branch("rel\u009b2J")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "w\u009d.bin").write_bytes(b"x")
    with pytest.raises(BadName, match="C1 control"):
        repo.commit({"model": str(folder)}, message="m")
    assert len(repo.log()) == 1


def test_components_named_before_the_new_name_rules_still_work(tmp_path):
    """revert passes a commit's trees back to commit(), which refused their old names (a C1
    control) as if they were new: a commit from an older mvc could not be reverted to."""
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"core": {"w": torch.zeros(2)}}, message="one")
    head = repo.read_commit(repo.resolve("HEAD"))
    old = forge(repo, {**head, "components": {"core\u009b": head["components"]["core"]},
                       "parents": [repo.resolve("HEAD")], "message": "an older mvc's name"})
    repo.rollback(old)
    repo.commit({"core": {"w": torch.ones(2)}}, message="two")
    back = repo.revert(old)
    assert repo.read_commit(back)["components"]["core\u009b"] == head["components"]["core"]
    repo.commit({"core": {"w": torch.ones(3)}}, message="rename it", remove=["core\u009b"])
    assert "core\u009b" not in repo.read_commit(repo.resolve("HEAD"))["components"]
    again = repo.revert(back)  # the old name is not on the branch any more: restored all the same
    assert "core\u009b" in repo.read_commit(again)["components"]


def test_pipeline_and_remote_names_follow_the_rules_of_new_branch_names(tmp_path):
    from mvc.remote.config import check_remote_name
    from semantic_ci.pipeline_config import load
    p = tmp_path / "p.toml"
    (tmp_path / "data.txt").write_text("some text " * 50)
    p.write_text('[pipeline]\nname = "demo"\n[streams.text]\nfile = "data.txt"\n[[stages]]\nname = "core\u009b"\n'
                 'kind = "train-core"\narch = "layercake"\nconfig = "tiny"\nstream = "text"\nsteps = 4\n')
    with pytest.raises(mvc.MvcError, match="cannot name a branch"):  # before: trained, then failed
        load(str(p))
    with pytest.raises(BadName, match="invalid remote name"):
        check_remote_name("origin\u009b")


def test_remote_urls_and_stage_names_reach_the_terminal_quoted(run, tmp_path):
    url = str(tmp_path / "remote\u202e\x1b]0;t\x07")
    refused = run("remote", "add", "origin", url, code=3).stderr  # (a control character: refused, and quoted)
    assert not any(c in refused for c in RAW) and "\\u202e\\x1b]0;t\\x07" in refused
    out = run("remote", "add", "origin", url.replace("\x1b]0;t\x07", "")).stdout + run("remote", "-v").stdout
    assert not any(c in out for c in RAW) and '\\u202e"' in out
    from mvc.cli.run_cmds import LiveView, _line
    from mvc.quoting import one_line
    line = one_line(_line({"event": "stage", "stage": "core\u202e\x1b[2J"}))
    assert not any(c in line for c in RAW) and "core\\u202e\\x1b[2J" in line
    view = LiveView()
    view.rows["core\u202e"] = {"status": "running"}
    assert '"core\\u202e"' in "".join(str(c) for c in view._table().columns[0].cells)


def test_names_that_are_only_a_part_of_a_branch_keep_the_old_rules(tmp_path):
    """The new-branch rules (no capital hex, no trailing '.') were applied to remote and pipeline
    names, which are only the first part of the branches they make: 'DEADBEEF' and 'v2.' stopped."""
    from mvc.remote.config import check_remote_name
    assert check_remote_name("DEADBEEF") == "DEADBEEF" and check_remote_name("v2.") == "v2."
    from semantic_ci.pipeline_config import load
    (tmp_path / "data.txt").write_text("some text " * 50)
    p = tmp_path / "p.toml"
    p.write_text('[pipeline]\nname = "DEADBEEF"\n[streams.text]\nfile = "data.txt"\n[[stages]]\nname = "core"\n'
                 'kind = "train-core"\narch = "layercake"\nconfig = "tiny"\nstream = "text"\nsteps = 4\n')
    assert load(str(p)).name == "DEADBEEF"


def test_trees_under_new_names_follow_the_new_name_rules(tmp_path):
    repo = mvc.Repo.init(tmp_path / "r")
    repo.commit({"core": {"w": torch.zeros(2)}}, message="one")
    tid = repo.read_commit(repo.resolve("HEAD"))["components"]["core"]
    with pytest.raises(BadName, match="C1 control"):
        repo.commit({}, trees={"evil\u009b31m": tid}, message="x")
    assert repo.commit({}, trees={"copy": tid}, message="a new, well-named component")


def test_no_error_message_ends_in_brackets_where_a_hint_follows():
    """`error: <what> (<hint>)` read "... is a root commit (it has no parent) (mvc rollback REV ...)":
    a message raised with a hint must not end in a bracketed aside of its own (source scan)."""
    import ast
    import pathlib
    root = pathlib.Path(mvc.__file__).parent
    errors = {n for n, c in vars(mvc.errors).items() if isinstance(c, type) and issubclass(c, mvc.errors.MvcError)}
    errors.add("error")  # (mvc.cli.output.error)

    def text(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        return None
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or len(node.args) + len(node.keywords) < 2 or not node.args:
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            what = text(node.args[0])
            if name in errors and what and what.rstrip().endswith(")") \
                    and (len(node.args) > 1 or any(k.arg == "hint" for k in node.keywords)):
                bad.append(f"{path.relative_to(root)}:{node.lineno}: {what[-60:]!r}")
    assert not bad, bad


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("total,pause,shown", [(1000, 0.6, True), (1000, 0.0, False), (64 << 20, 0.0, True)])
def test_a_bar_shows_for_a_large_job_at_once_and_for_a_small_one_that_runs_long(monkeypatch, total, pause, shown):
    """A commit of 40,000 tiny tensors ran for seconds without a bar: it showed for 32 MB or more
    only (probe h6). DESIGN.md section 4: progress on anything that may take over a second."""
    import time
    from mvc.cli import output
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(output, "PROGRESS_AFTER_S", 0.5)
    with output.byte_progress(total, "counting") as advance:
        advance(total // 2)
        time.sleep(pause)
        advance(total - total // 2)
    assert ("counting" in err.getvalue()) == shown
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: never a bar
    with output.byte_progress(64 << 20, "counting") as advance:
        advance(64 << 20)
    assert sys.stderr.getvalue() == ""


def test_a_bar_on_a_terminal_that_closed_lets_the_hangup_end_the_command(monkeypatch):
    """Stopping the bar wrote to the closed terminal: its EIO replaced the hangup's Terminated, and
    the command exited 1 with a traceback instead of 129 (review)."""
    from mvc.cli import output
    from mvc.errors import Terminated

    class Gone(_Terminal):
        closed_now = False

        def write(self, s):
            if self.closed_now:
                raise OSError(5, "Input/output error")
            return super().write(s)
    err = Gone()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(Terminated):
        with output.byte_progress(64 << 20, "checking out") as advance:
            advance(1 << 20)
            err.closed_now = True
            raise Terminated(1)


def _console_text(render, width: int) -> str:
    from rich.console import Console
    con = Console(file=io.StringIO(), width=width, color_system=None, markup=True, soft_wrap=True)  # as mvc's
    render(con)
    return con.file.getvalue()


@pytest.mark.parametrize("width", [80, 40, 20])
def test_ci_and_pipeline_tables_fold_names_and_never_cut_a_verdict_or_id(width):
    """They cut cells with an ellipsis: on 80 columns two checks 'general-ppl-holdout-check-a'
    and '-b' both read 'general-ppl-hold…', one PASS and one FAIL; narrower, verdicts ('F…') and
    ids were cut too."""
    from semantic_ci.pipeline_report import render_summary
    from semantic_ci.report import render_table
    checks = [{"name": f"general-ppl-holdout-check-{x}", "kind": "exact-logits", "status": s, "note": None,
               "figures": {"max_abs_delta": 5.29, "differing_positions": 2047}, "thresholds": {"tolerance": 0}}
              for x, s in (("a", "passed"), ("b", "failed"))]
    summary = {"commit": "c" * 64, "certificate": "d" * 64, "passed": False, "checks": checks}
    text = _console_text(lambda con: render_table(summary, con), width)
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert "…" not in text and "PASS" in text and "FAIL" in text
    assert "general-ppl-holdout-check-ageneral-ppl-holdout-check-b" in first_column  # folded, whole
    run = {"pipeline": "p", "profile": None,
           "stages": [{"stage": "pretrain-the-general-core", "status": "done", "commit": "e" * 64, "seconds": 1.5,
                       "metrics": {"loss": 1.2345}}]}
    import types
    repo = types.SimpleNamespace(read_commit=lambda _id: {"extra": {}})  # (no certificate to list)
    text = _console_text(lambda con: render_summary(repo, run, con), width)
    assert "…" not in text and "e" * 12 in text and "done" in text


@pytest.mark.parametrize("fs_encoding, named", [("utf-8", False), ("ascii", True)])
def test_text_that_is_not_utf8_names_a_locale_that_is_not(repo, monkeypatch, fs_encoding, named):
    """Under LC_ALL=C without Python's UTF-8 mode a message typed as UTF-8 arrives as undecodable
    bytes: the error blamed the text, not the locale."""
    from mvc.errors import BadInput
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: fs_encoding)
    with pytest.raises(BadInput) as e:
        repo.commit({"m": {"w": torch.ones(1)}}, message="h\udcc3\udca9llo")
    with pytest.raises(BadName) as e2:
        repo.create_branch("br\udcc3\udca4")
    for err in (e.value, e2.value):
        assert ("LC_ALL=C.UTF-8" in str(err)) is named and (f"as {fs_encoding}" in str(err)) is named


@pytest.mark.parametrize("args, line", [
    (["log", "--bogus"], "error: No such option '--bogus' (see mvc log --help)"),
    (["log", "--jsn"], "error: No such option '--jsn'. Did you mean '--json'? (see mvc log --help)"),
    (["nosuch"], "error: No such command 'nosuch' (see mvc --help)"),
    (["--bogus"], "error: No such option '--bogus' (see mvc --help)"),
    (["commit"], "error: Missing option '-m' / '--message' (see mvc commit --help)"),
    # (raised by click's parser with no context: they were click's block still, h57)
    (["log", "-n"], "error: Option '-n' requires an argument (see mvc log --help)"),
    (["--version=3"], "error: Option '--version' does not take a value (see mvc --help)"),
    (["remote", "add"], "error: Missing argument 'NAME' (see mvc remote add --help)"),
    (["log", "a", "b", "c"], "error: Got unexpected extra arguments: b c (see mvc log --help)"),
    (["hooks", "instal"], "error: No such command 'instal': did you mean one of 'install', 'uninstall'? "
                          "(see mvc hooks --help)"),
])
def test_usage_errors_are_one_error_line_with_exit_2(args, line):
    """DESIGN.md section 4: errors are one line `error: <what> (<hint>)`; a usage error printed
    click's three-line block (Usage: ..., Try ..., Error: ...) (h55)."""
    from click.testing import CliRunner

    from mvc.cli import cli
    r = CliRunner().invoke(cli, args, prog_name="mvc")
    assert r.exit_code == 2 and r.stderr == line + "\n" and r.stdout == ""
    r = CliRunner().invoke(cli, [], prog_name="mvc")  # `mvc` alone shows the help, as asked for
    assert r.exit_code == 0 and "Commands:" in r.stdout and r.stderr == ""


@pytest.mark.parametrize("group,commands", [("paste", "brick"), ("hooks", "install, uninstall")])
def test_a_group_alone_is_one_error_line_naming_its_commands(group, commands):
    """`mvc paste` printed its whole help on stderr (exit 2), no `error:` line (h66)."""
    from click.testing import CliRunner

    from mvc.cli import cli
    r = CliRunner().invoke(cli, [group], prog_name="mvc")
    assert r.exit_code == 2 and r.stdout == "" and \
        r.stderr == f"error: mvc {group} needs a command: {commands} (see mvc {group} --help)\n"

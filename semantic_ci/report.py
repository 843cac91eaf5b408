"""Human and JUnit renderings of a CI summary (the JSON shape is in DESIGN.md section 9)."""
from __future__ import annotations

import os
import re
import tempfile
from xml.sax.saxutils import quoteattr

MAIN_FIGURE = {"exact-logits": ("max_abs_delta", "tolerance"), "ppl-ratio": ("ratio", "max_ratio"),
               "migration": ("worst_domain_ratio", "max_domain_ratio")}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _fmt4(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else _fmt(v)


def _against(v, *bounds, fmt=_fmt) -> str:
    """`v` as `fmt` writes it, with more digits where that would show it equal to one of `bounds`
    while it is not (a ratio of 1.0500004 failing `<= 1.05` printed as 1.05)."""
    text = fmt(v)
    number = (int, float)
    for bound in bounds:
        if isinstance(v, float) and isinstance(bound, number) and not isinstance(bound, bool) and v != bound \
                and text == fmt(bound):
            for digits in range(7, 18):  # (17 significant digits tell any two floats apart)
                text = f"{v:.{digits}g}"
                if float(text) != bound:
                    break
    return text


def figure_text(check: dict) -> tuple[str, str]:
    figs, th = check["figures"], check["thresholds"]
    if check["kind"] == "exact-logits" and figs:
        f = (f"max|d|={_against(figs.get('max_abs_delta'), th.get('tolerance'))}, "
             f"{figs.get('differing_positions')} positions differ")
        if figs.get("first_differing_offset") is not None:
            f += f", first at byte {figs['first_differing_offset']}"
        return f, f"tolerance {_fmt(th.get('tolerance'))}"
    if check["kind"] == "ppl-ratio" and figs:
        return (f"ratio {_against(figs.get('ratio'), th.get('max_ratio'))} (95% {_fmt(figs.get('ratio_ci95'))}), "
                f"bpb {_fmt(figs.get('bpb'))} vs "
                f"{_fmt(figs.get('baseline_bpb'))}", f"<= {_fmt(th.get('max_ratio'))}")
    if check["kind"] == "gate" and figs:
        if "value" in figs:
            return _against(figs["value"], *th.values()), ", ".join(f"{k} {_fmt(v)}" for k, v in th.items())
        return f"recent losses {_fmt(figs.get('recent_losses'))}", f"plateau above {_fmt(th.get('plateau_above'))}"
    if check["kind"] == "migration" and figs:
        n = len(figs.get("hosts", {}))
        if "worst_domain_ratio" in figs:
            text = f"domain ratio {_against(figs['worst_domain_ratio'], th.get('max_domain_ratio'), fmt=_fmt4)}"
            if "worst_general_ratio" in figs:
                text += f", general {_against(figs['worst_general_ratio'], th.get('max_general_ratio'), fmt=_fmt4)}"
            bound = f"<= {_fmt(th.get('max_domain_ratio'))}" + (
                f" / {_fmt(th['max_general_ratio'])}" if "max_general_ratio" in th else "")
            return text + f" (worst of {n} hosts)", bound
        if "identical" in figs:
            ratio = f", PPL ratio {_fmt(figs['worst_ppl_ratio'])}" if figs.get("worst_ppl_ratio") is not None else ""
            return f"max logit diff {_fmt(figs['max_abs_delta'])}{ratio} ({n} hosts)", \
                "diff 0" + (", ratio 1.0" if ratio else "")
        if "tensor_ids_equal" in figs:
            return f"tensor ids equal: {figs['tensor_ids_equal']} ({n} hosts)", "equal"
        return check.get("note") or "-", "-"
    return check.get("note") or "-", "-"


def as_text(text) -> str:
    """Text from mvc.toml, certificates or git (names, notes, branches) for a console that reads
    rich markup: control characters quoted, brackets escaped."""
    from rich.markup import escape

    from mvc.quoting import shown
    return escape(shown(text))


def render_table(summary: dict, console) -> None:
    from mvc.cli.output import table  # (a narrow terminal folds names and figures, never cuts them)
    t = table("check", "kind", "figure", "threshold", "verdict", names=("check", "figure", "threshold"),
              title=f"semantic CI of {summary['commit'][:12]} (certificate {summary['certificate'][:12]})")
    for c in summary["checks"]:
        verdict = {"passed": "[green]PASS[/]", "failed": "[red]FAIL[/]", "skipped": "[yellow]skipped[/]"}[c["status"]]
        fig, th = figure_text(c)
        kind = c["kind"] + (f" ({c['preset']})" if c.get("preset") else "")
        t.add_row(as_text(c["name"]), as_text(kind), as_text(fig), as_text(th), verdict)  # "[nan, nan]" is no markup
    console.print(t)
    for c in summary["checks"]:
        if c.get("note"):
            console.print(f"  {as_text(c['name'])}: {as_text(c['note'])}")
    if not summary["passed"]:
        console.print("[red]semantic CI failed[/]")
    elif all(c["status"] == "skipped" for c in summary["checks"]):
        console.print("[yellow]no check ran (all skipped)[/]")
    else:
        console.print("[green]all checks passed[/]")


def junit_xml(summary: dict) -> str:
    """The JUnit XML text of a CI summary (one testcase per check)."""
    cases = []
    failures = skipped = 0
    for c in summary["checks"]:
        fig, th = figure_text(c)
        body = ""
        if c["status"] == "failed":
            failures += 1
            body = f"<failure message={_attr(f'{fig} (threshold {th})')}/>"
        elif c["status"] == "skipped":
            skipped += 1
            body = f"<skipped message={_attr(c.get('note') or '')}/>"
        cases.append(f'  <testcase classname="mvc.ci.{c["kind"]}" name={_attr(c["name"])}>{body}'
                     f"<system-out>{_xml_text(fig)}</system-out></testcase>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="mvc-semantic-ci" '
            f'tests="{len(cases)}" failures="{failures}" skipped="{skipped}" '
            f'id={_attr(summary["certificate"])}>\n' + "\n".join(cases) + "\n</testsuite>\n")


def junit_target_problem(path: str) -> str | None:
    """Why a JUnit report cannot be written to `path` (None when it can): checked before the checks
    run. The parent must be (or be creatable as) a directory we can create files in, and the path
    must not be a directory, inside a repository's .mvc directory (its config, refs and objects),
    nor an existing file other than a JUnit report (a run's mvc.toml or held-out data were
    replaced). Missing parent directories are created."""
    if not path:
        return "empty path"
    full = os.path.abspath(path)
    if os.path.isdir(full):
        return f"{path} is a directory"
    if os.path.lexists(full) and not os.path.isfile(full):
        return f"{path} exists and is not a regular file"
    from mvc.components import inside_repository_dir
    if inside_repository_dir(os.path.dirname(full)):
        return f"{path} is inside a repository's .mvc directory, which holds its config, refs and objects"
    if os.path.isfile(full) and not _is_junit_report(full):
        return f"{path} exists and is not a JUnit report: it would be replaced (remove it, or name another file)"
    parent = os.path.dirname(full)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".mvc-junit-", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"cannot create files in {parent} ({e.strerror or e})"
    return None


def _is_junit_report(path: str) -> bool:
    """Whether the file at `path` is empty or starts as a JUnit XML report does (what --junit wrote before)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return not head or (head.lstrip().startswith(b"<?xml") and (b"<testsuite" in head or b"<testsuites" in head))


def write_junit(summary: dict, path: str) -> None:
    """Write the JUnit report atomically (mvc.files.atomic_write: temp file, fsync, rename)."""
    from mvc.files import atomic_write
    atomic_write(os.path.abspath(path), junit_xml(summary).encode("utf-8"))


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # no XML 1.0 document holds these


def _xml_safe(s: str) -> str:
    """`s` with the characters XML 1.0 cannot hold (control characters, e.g. an ESC in a check
    name, lone surrogates) replaced by U+FFFD: parsers reject a report that has them."""
    return _NOT_XML.sub("\ufffd", str(s))


def _attr(s: str) -> str:
    return quoteattr(_xml_safe(s))


def _xml_text(s: str) -> str:
    return _xml_safe(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

"""Human and JUnit renderings of a CI summary (the JSON shape is in DESIGN.md section 9)."""
from __future__ import annotations

import os
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


def figure_text(check: dict) -> tuple[str, str]:
    figs, th = check["figures"], check["thresholds"]
    if check["kind"] == "exact-logits" and figs:
        f = f"max|d|={_fmt(figs.get('max_abs_delta'))}, {figs.get('differing_positions')} positions differ"
        if figs.get("first_differing_offset") is not None:
            f += f", first at byte {figs['first_differing_offset']}"
        return f, f"tolerance {_fmt(th.get('tolerance'))}"
    if check["kind"] == "ppl-ratio" and figs:
        return (f"ratio {_fmt(figs['ratio'])} (95% {_fmt(figs['ratio_ci95'])}), bpb {_fmt(figs['bpb'])} vs "
                f"{_fmt(figs['baseline_bpb'])}", f"<= {_fmt(th.get('max_ratio'))}")
    if check["kind"] == "gate" and figs:
        if "value" in figs:
            return f"{_fmt(figs['value'])}", ", ".join(f"{k} {_fmt(v)}" for k, v in th.items())
        return f"recent losses {_fmt(figs.get('recent_losses'))}", f"plateau above {_fmt(th.get('plateau_above'))}"
    if check["kind"] == "migration" and figs:
        n = len(figs.get("hosts", {}))
        if "worst_domain_ratio" in figs:
            text = f"domain ratio {figs['worst_domain_ratio']:.4f}"
            if "worst_general_ratio" in figs:
                text += f", general {figs['worst_general_ratio']:.4f}"
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


def render_table(summary: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"semantic CI of {summary['commit'][:12]} (certificate {summary['certificate'][:12]})")
    for col in ("check", "kind", "figure", "threshold", "verdict"):
        t.add_column(col)
    for c in summary["checks"]:
        verdict = {"passed": "[green]PASS[/]", "failed": "[red]FAIL[/]", "skipped": "[yellow]skipped[/]"}[c["status"]]
        fig, th = figure_text(c)
        kind = c["kind"] + (f" ({c['preset']})" if c.get("preset") else "")
        t.add_row(c["name"], kind, fig, th, verdict)
    console.print(t)
    for c in summary["checks"]:
        if c.get("note"):
            console.print(f"  {c['name']}: {c['note']}")
    console.print("[green]all checks passed[/]" if summary["passed"] else "[red]semantic CI failed[/]")


def write_junit(summary: dict, path: str) -> None:
    cases = []
    failures = skipped = 0
    for c in summary["checks"]:
        fig, th = figure_text(c)
        body = ""
        if c["status"] == "failed":
            failures += 1
            body = f"<failure message={quoteattr(f'{fig} (threshold {th})')}/>"
        elif c["status"] == "skipped":
            skipped += 1
            body = f"<skipped message={quoteattr(c.get('note') or '')}/>"
        cases.append(f'  <testcase classname="mvc.ci.{c["kind"]}" name={quoteattr(c["name"])}>{body}'
                     f"<system-out>{_xml_text(fig)}</system-out></testcase>")
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="mvc-semantic-ci" '
           f'tests="{len(cases)}" failures="{failures}" skipped="{skipped}" '
           f'id={quoteattr(summary["certificate"])}>\n' + "\n".join(cases) + "\n</testsuite>\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(xml)


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

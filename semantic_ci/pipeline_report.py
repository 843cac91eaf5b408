"""The end-of-run report of a pipeline: stages, their result commits, and the certificate table
in the seed note's shape (claim, evidence object id, result) for the figures we measured."""
from __future__ import annotations

from mvc.quoting import one_line, shown

from . import certificate
from .report import figure_text


NOT_RESULTS = ("failed", "error", "skipped")  # the statuses of a stage that made no result in this run


def certificate_rows(repo, summary: dict) -> list[dict]:
    """One row per check of every evaluate stage's certificate (of a stage that failed or could not
    run: the certificate this run made, if any; its branch's tip may be an earlier run's result,
    whose passing certificate was shown beside the failure, h91)."""
    rows, seen = [], set()
    for st in summary["stages"]:
        cert_id = st.get("certificate") if st.get("status") in NOT_RESULTS else _result_certificate(repo, st)
        if not cert_id or cert_id in seen:
            continue
        seen.add(cert_id)
        for c in certificate.read(repo, cert_id)["checks"]:
            fig, th = figure_text(c)
            rows.append({"stage": st["stage"], "claim": c["name"], "evidence": cert_id, "result": fig,
                         "threshold": th, "verdict": c["status"]})
    names = [r["claim"] for r in rows]
    for r in rows:  # the same check name in several stages: say which stage measured it
        if names.count(r["claim"]) > 1:
            r["claim"] = f"{r['stage']}: {r['claim']}"
    return rows


def _result_certificate(repo, st: dict) -> str | None:
    commit = st.get("commit")
    info = repo.read_commit(commit).get("extra", {}).get("pipeline", {}) if commit else {}
    cert_id = info.get("certificate") or st.get("certificate")
    if not cert_id and commit and info.get("status") == "done":  # a training stage: its last gates
        parents = repo.read_commit(commit)["parents"]
        certs = certificate.of_commit(repo, parents[0]) if parents else []
        cert_id = certs[-1] if certs else None
    return cert_id


def render_summary(repo, summary: dict, con) -> None:
    from mvc.cli.output import table  # (a narrow terminal folds names and figures, never cuts them or ids)
    t = table("stage", "status", "commit", "seconds", "key metrics", names=("stage", "key metrics"), ids=("commit",),
              title=f"pipeline {shown(summary['pipeline'])}"
              + (f" (profile {shown(summary['profile'])})" if summary["profile"] else ""))
    for st in summary["stages"]:
        m = st.get("metrics", {})
        keym = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in m.items() if k in ("loss", "heldout_bpb", "steps", "params", "compression_params",
                                                        "compression_dense_params", "compression_ratio"))
        status = st["status"] + (" (optional)" if st.get("optional") else "") + (
            " (commit: an earlier run's)" if st.get("previous") else "")
        t.add_row(shown(st["stage"]), status, (st.get("commit") or "-")[:12], str(st.get("seconds", "")),
                  one_line(keym or st.get("reason", "")))
    con.print(t)
    rows = certificate_rows(repo, summary)
    if rows:
        ct = table("claim", "evidence", "result", "threshold", "verdict", names=("claim", "result", "threshold"),
                   ids=("evidence",), title="certificate (our measured figures; mvc verify re-checks each evidence id)")
        for r in rows:
            ct.add_row(shown(r["claim"]), r["evidence"][:12], r["result"], r["threshold"], r["verdict"])
        con.print(ct)

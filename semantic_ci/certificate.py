"""Certificates: the stored, re-verifiable record of a CI run, attached to a commit by an index
(.mvc/certs/<2>/<62> lists certificate ids) so the commit's id never changes.

The index is not trusted: every reader keeps only certificates that exist, decode and certify the
commit they are indexed under, and reports the other lines (`index`). This module imports no torch
(`mvc status` / `mvc log` may read CI states through `ci_state`)."""
from __future__ import annotations

import math
import platform
import re
import socket

from mvc import certindex
from mvc.errors import (AmbiguousRevision, CorruptObject, FormatTooNew, MvcError, ObjectMissing, UnknownRevision,
                        WrongObjectType)
from mvc.objects import WRITE_FORMAT, decode, is_oid
from mvc.refs import utc_now

# Canonical JSON has no NaN/Infinity: a non-finite figure is stored as one of these strings.
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
CERTIFICATE_MAX_BYTES = 64 << 20  # looking up an id prefix never reads a bigger object (a tensor blob)


def _nonfinite_text(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _replace_nonfinite(obj, path: str, found: list):
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append((path, _nonfinite_text(obj)))
        return _nonfinite_text(obj)
    if isinstance(obj, dict):
        return {k: _replace_nonfinite(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_nonfinite(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def finite_figures(check: dict) -> dict:
    """A check result whose NaN / infinite figures are stored as "nan" / "inf" / "-inf" (canonical
    JSON cannot hold them); such a figure means a diverged model, so the check fails and its note
    names the figures. Idempotent: a result already made finite passes through unchanged."""
    found: list = []
    figures = _replace_nonfinite(check.get("figures") or {}, "", found)
    if not found:
        return check
    out = dict(check, figures=figures)
    what = ", ".join(f"{p} is {t}" for p, t in found)
    note = f"figure not finite: {what} (the model diverged)"
    out["note"] = note + (f"; {check['note']}" if check.get("note") else "")
    if out.get("status") == "passed":
        out["status"], out["passed"] = "failed", False
    return out


def make(commit: str, checks: list[dict], base: str | None, config_source: str | None,
         partial: bool = False) -> dict:
    """A certificate of `checks` run on `commit`. `partial`: not the configured suite as configured
    (some checks only, or another baseline): the commit's CI state and rollback targets ignore it."""
    import torch
    checks = [finite_figures(c) for c in checks]
    ran = [c for c in checks if c["status"] != "skipped"]
    return {"type": "certificate", "format": WRITE_FORMAT, "commit": commit, "base": base,
            **({"partial": True} if partial else {}),
            "passed": all(c["status"] == "passed" for c in ran), "checks": checks, "time": utc_now(),
            "config": config_source,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "host": socket.gethostname(),
                            "threads": torch.get_num_threads()}}


def _index_path(repo, commit: str) -> str:
    return certindex.index_path(repo.dir, commit)


def store(repo, cert: dict) -> str:
    """Write the certificate object and attach it to its commit; returns its id."""
    with repo.writing():  # a short-grace gc must not delete it before the index names it
        cid = repo.write_object(cert)
        certindex.attach(repo.dir, cert["commit"], [cid])
    return cid


NEWER_FORMAT = "a certificate of a newer format than this mvc reads"  # (a problem that upgrading mvc solves)
NEWER_HINT = "upgrade mvc to read the certificates a newer mvc wrote (never remove their lines)"


def index(repo, commit: str, newer: list | None = None) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(certificate id, certificate)] in index order, problems) for a commit's index. Kept: the
    lines naming a stored certificate of this very commit. Reported (problems), never used: a
    malformed line, a missing or unreadable object, a certificate of another commit, one of a
    newer format (`newer`, a list, receives for each how many kept certificates precede it)."""
    try:
        with open(_index_path(repo, commit), "rb") as f:
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()]
    except FileNotFoundError:
        return [], []
    except (IsADirectoryError, NotADirectoryError):
        return [], [f"the certificate index of {commit[:12]} is a folder, not a file (ignored)"]
    good, problems, seen = [], [], set()
    where = f"the certificate index of {commit[:12]}"
    for line in lines:
        if not line or line in seen:
            continue
        seen.add(line)
        if not is_oid(line):
            problems.append(f"{where} holds a malformed line {line[:80]!r}")
            continue
        if not repo.store.has(line):
            problems.append(f"{where} names certificate {line}, which is missing (run mvc fsck)")
            continue
        try:
            cert = read(repo, line)
        except FormatTooNew as e:
            problems.append(f"{where} names {line[:12]}, {NEWER_FORMAT} ({e.message})")
            if newer is not None:
                newer.append(len(good))
            continue
        except MvcError as e:
            problems.append(f"{where} names {line[:12]}, which is not a readable certificate ({e.message})")
            continue
        if not isinstance(cert.get("checks"), list) or not cert["checks"]:
            problems.append(f"{where} names certificate {line[:12]}, which records no checks: it certifies "
                            f"nothing (ignored)")
            continue
        if cert.get("commit") != commit:
            other = cert.get("commit")
            other = other[:12] if isinstance(other, str) else repr(other)
            problems.append(f"{where} names certificate {line[:12]}, which certifies {other}, "
                            f"not this commit (ignored)")
            continue
        good.append((line, cert))
    return good, problems


def of_commit(repo, commit: str) -> list[str]:
    """The ids of the commit's valid certificates, oldest first (see `index` for what is dropped)."""
    return [cid for cid, _ in index(repo, commit)[0]]


def _judge(repo, commit: str) -> tuple[dict | None, bool, list[str]]:
    """(the certificate that judges the commit: its latest full run, else its latest partial one,
    or None; whether one of a newer format may judge it instead (after its latest full run, or
    with no full run: it may be one), the index's problems)."""
    newer: list[int] = []
    good, problems = index(repo, commit, newer)
    full = [i for i, (_cid, cert) in enumerate(good) if not cert.get("partial")]
    unknown = bool(newer) and (not full or max(newer) > full[-1])
    return (good[full[-1] if full else -1][1] if good else None), unknown, problems


def ci_state(repo, commit: str) -> tuple[str | None, list[str]]:
    """(state, problems): "passed" or "failed" (with " (partial run)" when only partial runs judge
    it), "unknown (...)" when a certificate of a newer format may judge it, None with no
    certificate; and what is wrong with its index (for `mvc status` / `mvc log`; no torch import)."""
    judge, unknown, problems = _judge(repo, commit)
    if unknown:
        return "unknown (a newer certificate format: upgrade mvc)", problems
    if judge is None:
        return None, problems
    verdict = "passed" if passed(judge) else "failed"
    return verdict + (" (partial run)" if judge.get("partial") else ""), problems


def passed(cert: dict) -> bool:
    """Whether a certificate counts as passed: it says so, it records checks, and none of them
    failed (a certificate whose verdict contradicts its checks was edited: it does not pass)."""
    checks = cert.get("checks")
    return (cert.get("passed") is True and isinstance(checks, list) and bool(checks)
            and all(isinstance(c, dict) and c.get("status") in ("passed", "skipped") for c in checks)
            and not any(_contradicts_its_figures(c) for c in checks))


def _contradicts_its_figures(check: dict) -> bool:
    """Whether a check recorded as passed holds figures that break its own recorded bound (an
    edit: a ppl ratio above its max_ratio, logits that differ beyond their tolerance). Judged from
    the record alone, without torch, for what `mvc status`, `mvc log` and on-commit rollback read."""
    if check.get("status") != "passed":
        return False
    figs, bounds = check.get("figures"), check.get("thresholds")
    if not isinstance(figs, dict) or not isinstance(bounds, dict):
        return False
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if check.get("kind") == "ppl-ratio" and num(bounds.get("max_ratio")):
        return not (num(figs.get("ratio")) and figs["ratio"] <= bounds["max_ratio"])
    if check.get("kind") == "exact-logits" and num(bounds.get("tolerance")):
        if bounds["tolerance"] == 0:
            return figs.get("differing_positions") != 0
        return not (num(figs.get("max_abs_delta")) and figs["max_abs_delta"] <= bounds["tolerance"])
    return False


def read(repo, cert_id: str) -> dict:
    """A stored certificate, shape-checked (CorruptObject names what is malformed): certificates
    travel with pushes and fetches, so their fields are untrusted input to verify and status."""
    cert = decode(repo.store.get(cert_id), "certificate", cert_id)
    problem = _shape_problem(cert)
    if problem:
        raise CorruptObject(f"certificate {cert_id[:12]} is malformed: {problem}",
                            "it certifies nothing; run mvc ci to certify the commit again")
    return cert


STATUSES = ("passed", "failed", "skipped")


def _shape_problem(cert: dict) -> str | None:
    """What makes a certificate unusable by its readers (None when its shape is sound)."""
    if not (isinstance(cert.get("commit"), str) and is_oid(cert["commit"])):
        return "'commit' is not a commit id"
    if not isinstance(cert.get("passed"), bool):
        return "'passed' is not true or false"
    checks = cert.get("checks")
    if not isinstance(checks, list):
        return "'checks' is not a list"
    for i, c in enumerate(checks):
        if not isinstance(c, dict):
            return f"check {i} is not an object"
        if not all(isinstance(c.get(k), str) for k in ("name", "kind")) or c.get("status") not in STATUSES:
            return f"check {i} lacks a name, kind or status"
        for key in ("params", "figures", "thresholds", "inputs"):
            if not isinstance(c.get(key, {}), dict):
                return f"check {c['name'][:40]!r}: {key!r} is not an object"
    return None


def _certificates_with_prefix(repo, prefix: str) -> list[str]:
    """The ids of stored certificates starting with `prefix` (large objects, tensor blobs, are not
    read: a certificate is far smaller)."""
    found = []
    for oid in repo.ids_with_prefix(prefix):
        try:
            if repo.store.size(oid) > CERTIFICATE_MAX_BYTES:
                continue
            read(repo, oid)
        except (WrongObjectType, ObjectMissing):
            continue
        except CorruptObject as e:
            raise CorruptObject(f"{prefix} names a damaged object: {e.message}", "run mvc fsck") from None
        found.append(oid)
    return found


def locate(repo, rev_or_cert: str) -> tuple[str, dict, list[str]]:
    """(id, certificate, index problems): a certificate by id (or unique prefix of >= 6 hex), or the
    latest valid one of a commit revision (its latest full run; the latest partial one when no run
    was full) plus what is wrong with that commit's index. A text that
    resolves as a commit means the commit; an ambiguous certificate prefix is an error listing them."""
    if is_oid(rev_or_cert) and repo.store.has(rev_or_cert):
        try:
            return rev_or_cert, read(repo, rev_or_cert), []
        except CorruptObject as e:
            if "not a certificate" not in e.message and "is a commit" not in e.message:
                raise
    try:
        commit = repo.resolve(rev_or_cert)
    except AmbiguousRevision:
        raise
    except UnknownRevision:
        text = rev_or_cert.strip().lower()
        if text == "head" or "~" in text or "^" in text or "@{" in text:
            raise  # revision syntax, e.g. HEAD of a repository with no commits: its own message
        if not re.fullmatch(r"[0-9a-f]{6,63}", text):
            hint = "id prefixes need at least 6 hex digits" if re.fullmatch(r"[0-9a-f]{1,5}", text) else \
                "see mvc log for commits; mvc ci prints certificate ids"
            raise UnknownRevision(f"{rev_or_cert!r} is neither a commit nor a certificate", hint) from None
        found = _certificates_with_prefix(repo, text)
        if len(found) > 1:
            raise AmbiguousRevision(f"ambiguous certificate id {text}: {len(found)} certificates match",
                                    "candidates: " + ", ".join(f[:12] for f in found[:10])
                                    + (", ..." if len(found) > 10 else "")) from None
        if not found:
            raise UnknownRevision(f"{rev_or_cert!r} is neither a commit nor a certificate",
                                  "see mvc log for commits; mvc ci prints certificate ids") from None
        return found[0], read(repo, found[0]), []
    good, problems = index(repo, commit)
    if not good:
        if problems:
            raise MvcError(f"commit {commit[:12]} has no valid certificate: {problems[0]}"
                           + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
                           NEWER_HINT if all(NEWER_FORMAT in p for p in problems) else "run mvc ci to certify it again")
        recorded = _pipeline_certificate(repo, commit)
        if recorded:  # a pipeline stage's result commit: its gates certified the commit it records
            cert = read(repo, recorded)
            if _same_components(repo, cert["commit"], commit):
                return recorded, cert, []
            raise MvcError(f"commit {commit[:12]} has no certificate: the one it records ({recorded[:12]}) certifies "
                           f"{cert['commit'][:12]}, whose components are not this commit's",
                           "run mvc ci to certify it")
        raise MvcError(f"commit {commit[:12]} has no certificate",
                       "run mvc ci first, or mvc run for a pipeline's stage branches")
    full = [(cid, cert) for cid, cert in good if not cert.get("partial")]
    cid, cert = (full or good)[-1]  # the latest full run judges the commit, as status and log say
    return cid, cert, problems


def _same_components(repo, certified: str, commit: str) -> bool:
    """Whether `commit` holds exactly the components (trees) of `certified`, which it is not: a
    stage's result commit adds none to the checkpoint its gates certified. Commit metadata travels
    with pushes like certificates do: the certificate a commit records must certify its weights."""
    try:
        return repo.read_commit(certified)["components"] == repo.read_commit(commit)["components"]
    except MvcError:  # (the certified commit is not here, or damaged: nothing shows the weights are the same)
        return False


def _pipeline_certificate(repo, commit: str) -> str | None:
    """The certificate a pipeline stage's result commit records (its gates ran on the checkpoint
    before it), when that certificate is stored here; None otherwise (`locate` checks that it
    certifies this commit's components)."""
    extra = repo.read_commit(commit).get("extra") or {}
    pipeline = extra.get("pipeline") if isinstance(extra, dict) else None
    cert = pipeline.get("certificate") if isinstance(pipeline, dict) else None
    return cert if isinstance(cert, str) and is_oid(cert) and repo.store.has(cert) else None


def find(repo, rev_or_cert: str) -> tuple[str, dict]:
    """A certificate by id (or unique prefix), or the latest valid one of a commit revision."""
    cid, cert, _problems = locate(repo, rev_or_cert)
    return cid, cert


def last_passing_ancestor(repo, commit: str) -> str | None:
    """The nearest first-parent ancestor whose latest full certificate passed (or that has none; one
    a certificate of a newer format may judge is passed over: its verdict is not known here)."""
    c = repo.read_commit(commit)
    while c["parents"]:
        parent = c["parents"][0]
        judge, unknown, _ = _judge(repo, parent)  # (a diagnostic, partial run judges nothing here)
        if not unknown and (judge is None or judge.get("partial") or passed(judge)):
            return parent
        c = repo.read_commit(parent)
    return None

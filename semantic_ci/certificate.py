"""Certificates: the stored, re-verifiable record of a CI run, attached to a commit by an index
(.mvc/certs/<2>/<62> lists certificate ids) so the commit's id never changes."""
from __future__ import annotations

import os
import platform
import socket

import torch

from mvc.errors import CorruptObject, MvcError, UnknownRevision
from mvc.objects import FORMAT_VERSION, decode, is_oid
from mvc.refs import utc_now


def make(commit: str, checks: list[dict], base: str | None, config_source: str | None) -> dict:
    ran = [c for c in checks if c["status"] != "skipped"]
    return {"type": "certificate", "format": FORMAT_VERSION, "commit": commit, "base": base,
            "passed": all(c["status"] == "passed" for c in ran), "checks": checks, "time": utc_now(),
            "config": config_source,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "host": socket.gethostname(),
                            "threads": torch.get_num_threads()}}


def _index_path(repo, commit: str) -> str:
    return os.path.join(repo.dir, "certs", commit[:2], commit[2:])


def store(repo, cert: dict) -> str:
    """Write the certificate object and attach it to its commit; returns its id."""
    with repo.writing():  # a short-grace gc must not delete it before the index names it
        cid = repo.write_object(cert)
        path = _index_path(repo, cert["commit"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(cid + "\n")
            f.flush()
            os.fsync(f.fileno())
    return cid


def of_commit(repo, commit: str) -> list[str]:
    try:
        with open(_index_path(repo, commit)) as f:
            return [line.strip() for line in f if is_oid(line.strip())]
    except FileNotFoundError:
        return []


def read(repo, cert_id: str) -> dict:
    return decode(repo.store.get(cert_id), "certificate", cert_id)


def find(repo, rev_or_cert: str) -> tuple[str, dict]:
    """A certificate by id (or unique prefix), or the latest one of a commit revision."""
    if is_oid(rev_or_cert) and repo.store.has(rev_or_cert):
        try:
            return rev_or_cert, read(repo, rev_or_cert)
        except CorruptObject as e:
            if "not a certificate" not in e.message and "is a commit" not in e.message:
                raise
    try:
        commit = repo.resolve(rev_or_cert)
    except UnknownRevision:
        raise UnknownRevision(f"{rev_or_cert!r} is neither a commit nor a certificate") from None
    certs = of_commit(repo, commit)
    if not certs:
        raise MvcError(f"commit {commit[:12]} has no certificate", "run mvc ci first")
    return certs[-1], read(repo, certs[-1])


def last_passing_ancestor(repo, commit: str) -> str | None:
    """The nearest first-parent ancestor whose latest certificate passed (or that has none)."""
    c = repo.read_commit(commit)
    while c["parents"]:
        parent = c["parents"][0]
        certs = of_commit(repo, parent)
        if not certs or read(repo, certs[-1])["passed"]:
            return parent
        c = repo.read_commit(parent)
    return None

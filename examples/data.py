"""Deterministic local data streams: general English text, Python source, disjoint Python source.

Every stream is built only from files on the machine, in a fixed order, and cut to an exact size;
its held-out tail (``split_holdout``, default last 5%) is the evaluation set. Document order is
a deterministic shuffle (files sorted by the SHA-256 of their relative path), so the tail is drawn
from the same mix of documents as the training part rather than from the alphabetically last ones.

- ``general_stream`` (8 MB): English prose, from the first available source:
  1. ``python-doc``: reST sources of the Python documentation (Debian ``python3.11-doc``:
     /usr/share/doc/python3.11/html/_sources);
  2. ``man``: English man pages (/usr/share/man/man1..8, gcloud's generated pages excluded),
     converted from troff to plain text by the small converter below (no groff needed);
  ``source="pydoc"`` (and the fallback when the others are missing and ``allow_short``): the English
  prose of ``pydoc_data/topics.py`` that every CPython ships (~0.75 MB here).
- ``python_stream`` (2 MB): the standard library's ``.py`` files (test suites excluded).
- ``python_disjoint_stream`` (2 MB): ``.py`` files of installed third-party packages (Debian's
  dist-packages, then this interpreter's site-packages), none of them part of the stdlib:
  a filesystem-disjoint domain for transfer tests.

CLI: ``python -m examples.data --out DIR`` writes ``<name>.train.txt`` / ``<name>.holdout.txt`` for
each stream and ``manifest.json`` (sources, sizes, SHA-256). Importing this module does not import torch.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import site
import sys
import sysconfig
from pathlib import Path

GENERAL_SIZE = 8_000_000
PYTHON_SIZE = 2_000_000
HOLDOUT_FRAC = 0.05
SEPARATOR = b"\n\n"
_TEST_DIRS = {"test", "tests", "idle_test", "testing", "__pycache__"}


class DataUnavailable(RuntimeError):
    """Not enough source material on this machine for the requested stream."""


def split_holdout(data: bytes, frac: float = HOLDOUT_FRAC) -> tuple[bytes, bytes]:
    """(train, held-out tail): the last ``frac`` of the bytes is held out."""
    if not 0.0 < frac < 1.0:
        raise ValueError("holdout fraction must lie strictly between 0 and 1")
    cut = len(data) - max(1, int(len(data) * frac))
    return data[:cut], data[cut:]


def _shuffled(items: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Deterministic shuffle: sort by SHA-256 of the relative path (ties by the path)."""
    return sorted(items, key=lambda it: (hashlib.sha256(it[0].encode()).hexdigest(), it[0]))


def _concat(docs, size: int, what: str, allow_short: bool) -> bytes:
    out = bytearray()
    for text in docs:
        if not text.strip():
            continue
        out += text + SEPARATOR
        if len(out) >= size:
            return bytes(out[:size])
    if not allow_short:
        raise DataUnavailable(f"{what}: only {len(out):,} of {size:,} bytes available on this machine")
    return bytes(out)


# ---- general text ---------------------------------------------------------------------------------

def python_doc_dir() -> Path | None:
    """The reST sources of the Python docs (Debian python3.X-doc), or None."""
    for d in sorted(glob.glob("/usr/share/doc/python3*/html/_sources")):
        return Path(d)
    return None


def _python_doc_docs():
    root = python_doc_dir()
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    for _, p in _shuffled([(str(p.relative_to(root)), p) for p in files]):
        yield p.read_bytes()


_MAN_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),       # font changes
    (re.compile(r"\\s[+-]?\d"), ""),                     # size changes
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),        # strings
    (re.compile(r"\\\((em|en)"), "-"),
    (re.compile(r"\\\((aq|cq|oq)"), "'"),
    (re.compile(r"\\\((dq|lq|rq)"), '"'),
    (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\(co"), "(c)"),
    (re.compile(r"\\\(.."), ""),
    (re.compile(r"\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[~ 0]"), " "),
    (re.compile(r"\\[&,/|^c%:)]"), ""),
    (re.compile(r"\\e"), "\\\\"),
]
_MAN_TEXT_MACROS = {"B", "I", "BR", "IR", "BI", "IB", "RB", "RI", "SM", "SB", "IP", "TP", "HP", "UR", "MT", "Nm",
                    "Nd", "Xr", "Fl", "Ar", "Sh", "Ss", "Pa", "Dv", "Er", "Ev", "Va", "Fn", "Ft", "Op", "Dl"}
_MAN_HEADINGS = {"SH", "SS", "Sh", "Ss"}
_MAN_BREAKS = {"PP", "LP", "P", "sp", "br", "Pp", "TP", "IP", "HP"}


def man_to_text(src: str) -> str:
    """Plain text of a troff man page: requests dropped, text macros and escapes reduced to words."""
    out: list[str] = []
    skipping = False
    for line in src.splitlines():
        if skipping:  # inside a macro definition or an ignored block, up to ".."
            skipping = line.strip() != ".."
            continue
        if re.match(r"[.'](de|de1|am|ig|ds|nr)\b", line):
            skipping = not line.startswith((".ds", "'ds", ".nr", "'nr"))
            continue
        if line.startswith((".\\\"", "'\\\"", '.\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro in _MAN_BREAKS:
                out.append("")
            if macro in _MAN_HEADINGS:
                out.append("")
            if macro in _MAN_TEXT_MACROS | _MAN_HEADINGS and rest:
                words = [w.strip('"') for w in re.findall(r'"[^"]*"|\S+', rest)]
                joiner = "" if macro in ("BR", "IR", "RB", "RI", "BI", "IB") else " "  # alternating fonts
                line = joiner.join(words)
            else:
                continue
        for pat, rep in _MAN_ESCAPES:
            line = pat.sub(rep, line)
        out.append(line.rstrip())
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def man_pages() -> list[tuple[str, Path]]:
    """English man pages (sections 1-8, no symlinks, no gcloud pages), as (relative path, path)."""
    items = []
    for sec in range(1, 9):
        for p in sorted(glob.glob(f"/usr/share/man/man{sec}/*")):
            name = os.path.basename(p)
            if os.path.islink(p) or not os.path.isfile(p) or name.startswith("gcloud"):
                continue
            items.append((f"man{sec}/{name}", Path(p)))
    return items


def _man_docs():
    for _, p in _shuffled(man_pages()):
        try:
            raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
        except OSError:
            continue
        if raw.startswith(b".so "):
            continue
        yield man_to_text(raw.decode("utf-8", errors="replace")).encode("utf-8")


def pydoc_prose() -> bytes:
    """English prose of pydoc_data/topics.py (shipped with every CPython)."""
    from pydoc_data.topics import topics
    return SEPARATOR.join(topics[k].strip().encode("utf-8") for k in sorted(topics)) + SEPARATOR


def general_sources() -> dict[str, str | None]:
    """Which general-text sources exist here: name -> location, or None with what is missing."""
    doc = python_doc_dir()
    return {"python-doc": str(doc) if doc else None,
            "man": "/usr/share/man" if man_pages() else None,
            "pydoc": "pydoc_data.topics"}


def general_stream(size: int = GENERAL_SIZE, source: str = "auto", allow_short: bool = False) -> bytes:
    """The general English text stream of exactly ``size`` bytes (see module docstring)."""
    avail = general_sources()
    if source == "auto":
        source = next((s for s in ("python-doc", "man") if avail[s]), "pydoc")
    if source == "pydoc":
        return _concat([pydoc_prose()], size, "general stream (pydoc_data prose)", allow_short)
    if not avail.get(source):
        missing = {"python-doc": "the Python docs' reST sources (apt-get install python3.11-doc)",
                   "man": "English man pages in /usr/share/man"}[source]
        raise DataUnavailable(f"general stream: source {source!r} missing: {missing}")
    docs = _python_doc_docs() if source == "python-doc" else _man_docs()
    return _concat(docs, size, f"general stream ({source})", allow_short)


# ---- Python source ----------------------------------------------------------------------------

def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _py_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if _TEST_DIRS & set(rel.parts[:-1]) or "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        if p.is_file() and not p.is_symlink():
            out.append((str(rel), p))
    return out


def python_stream(size: int = PYTHON_SIZE, allow_short: bool = False) -> bytes:
    """Python standard-library source (test suites excluded), exactly ``size`` bytes."""
    files = _shuffled(_py_files(stdlib_dir()))
    return _concat((p.read_bytes() for _, p in files), size, "python stream (stdlib)", allow_short)


def disjoint_python_roots() -> list[Path]:
    roots = [Path("/usr/lib/python3/dist-packages")] + [Path(p) for p in site.getsitepackages()]
    return [r for r in roots if r.is_dir()]


def python_disjoint_files() -> list[tuple[str, Path]]:
    """Third-party ``.py`` files, (root index/relative path, path), none sharing a stdlib relative path."""
    std = {rel for rel, _ in _py_files(stdlib_dir())}
    items: list[tuple[str, Path]] = []
    seen = set()
    for i, root in enumerate(disjoint_python_roots()):
        for rel, p in _py_files(root):
            if rel in std or rel in seen:
                continue
            seen.add(rel)
            items.append((f"{i}/{rel}", p))
    return items


def python_disjoint_stream(size: int = PYTHON_SIZE, allow_short: bool = False) -> bytes:
    """Third-party package source, filesystem-disjoint from the stdlib, exactly ``size`` bytes."""
    return _concat((p.read_bytes() for _, p in _shuffled(python_disjoint_files())), size,
                   "disjoint python stream (site-packages)", allow_short)


# ---- CLI -------------------------------------------------------------------------------------

STREAMS = {"general": (general_stream, GENERAL_SIZE), "python": (python_stream, PYTHON_SIZE),
           "python_disjoint": (python_disjoint_stream, PYTHON_SIZE)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m examples.data", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--general-size", type=int, default=GENERAL_SIZE)
    ap.add_argument("--python-size", type=int, default=PYTHON_SIZE)
    ap.add_argument("--holdout-frac", type=float, default=HOLDOUT_FRAC)
    ap.add_argument("--general-source", default="auto", choices=["auto", "python-doc", "man", "pydoc"])
    ap.add_argument("--allow-short", action="store_true", help="write what exists instead of failing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"holdout_frac": args.holdout_frac, "general_sources": general_sources(), "streams": {}}
    for name, (fn, _) in STREAMS.items():
        size = args.general_size if name == "general" else args.python_size
        kwargs = {"source": args.general_source} if name == "general" else {}
        try:
            data = fn(size=size, allow_short=args.allow_short, **kwargs)
        except DataUnavailable as e:
            print(f"error: {e} (use --allow-short or a smaller size)", file=sys.stderr)
            return 3
        train, hold = split_holdout(data, args.holdout_frac)
        (out / f"{name}.train.txt").write_bytes(train)
        (out / f"{name}.holdout.txt").write_bytes(hold)
        manifest["streams"][name] = {"bytes": len(data), "train_bytes": len(train), "holdout_bytes": len(hold),
                                     "sha256": hashlib.sha256(data).hexdigest()}
        print(f"{name}: {len(data):,} bytes -> {out}/{name}.{{train,holdout}}.txt", file=sys.stderr)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Object ids, canonical JSON and the tree/commit/certificate object shapes (pure data, no I/O)."""
from __future__ import annotations

import contextlib
import gc
import json
import math
import re
import sys
import unicodedata
import warnings

import blake3

from . import forks
from .errors import BadInput, BadName, CorruptObject, FormatTooNew, WrongObjectType
from .safetensors_format import DTYPE_SIZES, MAX_DIM

FORMAT_VERSION = 2          # the newest format of trees, commits and certificates this mvc reads
WRITE_FORMAT = 1            # what it writes, unless an object needs more: see tree_object
HASH_THREADS_MIN = 1 << 20  # buffers at least this large are hashed on all cores
OID_RE = re.compile(r"^[0-9a-f]{64}$")
SMALL_OBJECT = 4 << 20  # commits, trees and certificates are far smaller than this
MAX_TREE_BYTES = 64 << 20  # the largest tree a commit may hold: a remote sends no larger one


_forked = False  # in a child forked after hashing started: blake3's thread pool did not come along


@forks.on_fork
def _note_fork() -> None:
    global _forked
    _forked = True


def new_hasher(threads: bool = True):
    """A BLAKE3 hasher, on all cores when `threads` (and this process was not forked)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO if threads and not _forked else 1)


def hash_bytes(*buffers, threads: bool = True) -> str:
    """BLAKE3-256 hex of the concatenation of `buffers` (bytes-like). Large inputs are hashed on all
    cores unless `threads` is False (callers that already keep every core busy) or this process
    was forked (the pool's threads stay in the parent: a child waiting on them hangs)."""
    h = new_hasher(threads and sum(len(b) for b in buffers) >= HASH_THREADS_MIN)
    for b in buffers:
        h.update(b)
    return h.hexdigest()


def _non_finite(value, path: str) -> tuple[str, float] | None:
    """(where, value) of the first NaN or infinity inside a JSON value, None when there is none;
    BadInput for a dict key that is no string."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    items = ()
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise BadInput(f"{path} has a non-string key {k!r}")
        items = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    return next(filter(None, (_non_finite(v, p) for p, v in items)), None)


def _check_finite(value, path="value"):
    found = _non_finite(value, path)
    if found:
        raise BadInput(f"{found[0]} is {found[1]}: NaN and infinity cannot be stored (canonical JSON)")


def check_metric(name: str, value) -> None:
    """BadInput naming the metric when its value holds NaN or infinity, which a commit (JSON)
    cannot store: a diverged run's loss is recorded as text."""
    found = _non_finite(value, repr(name))
    if found:
        raise BadInput(f"metric {found[0]} is {found[1]}: metrics are JSON numbers, which have no NaN or "
                       "infinity", 'record it as text instead, e.g. "diverged"')


def canonical_json(obj) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    if nests_deeper(obj, MAX_JSON_DEPTH):  # (a recursion error below, a reader's later)
        raise BadInput(f"cannot store this value: it nests deeper than {MAX_JSON_DEPTH} levels of dicts and lists")
    _check_finite(obj)
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except TypeError as e:  # e.g. a tensor or numpy scalar among the values
        raise BadInput(f"cannot store this value: {e}", "use numbers, strings, lists and dicts") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise BadInput(f"cannot store this value: {str(e)[:120]}", "store such a number as text") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. from a name that was not UTF-8
        raise BadInput(f"text {text[max(0, e.start - 20):e.end + 20]!r} is not valid Unicode",
                       "names, messages and metadata must be UTF-8" + _locale_hint()) from None


def _locale_hint() -> str:
    """Where this process reads its arguments in another encoding than UTF-8 (LC_ALL=C without
    Python's UTF-8 mode), what the user typed as UTF-8 arrives as undecodable bytes: say so."""
    encoding = sys.getfilesystemencoding()
    if encoding.replace("-", "").lower() == "utf8":
        return ""
    return (f"; this process reads its arguments as {encoding}, not UTF-8: run it in a UTF-8 locale, "
            "e.g. LC_ALL=C.UTF-8, or with PYTHONUTF8=1")


def encode(obj: dict) -> tuple[str, bytes]:
    """(id, canonical bytes) of a JSON object. A commit or tree is checked as every reader will
    check it (decode) first: one that no reader accepts is refused here, before it can land."""
    data = canonical_json(obj)
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind in _SHAPE_CHECKS:
        if kind == "commit" and len(data) > SMALL_OBJECT:  # readers take anything larger for a blob
            raise BadInput(f"this commit would take {len(data)} bytes, and at most {SMALL_OBJECT} are "
                           "read as a commit", "shorten the message and metrics; store large "
                           "notes as a component or a file")
        if kind == "tree" and len(data) > MAX_TREE_BYTES:  # it would commit, push, and never clone
            n = len(obj.get("tensors") or {}) + len(obj.get("files") or {})
            raise BadInput(f"this component's tree would take {len(data)} bytes for {n} tensors and files; "
                           f"a remote sends back trees of at most {MAX_TREE_BYTES} bytes",
                           "split it into several components, e.g. by layer range, or shorten the tensor names")
        try:
            _SHAPE_CHECKS[kind](json.loads(data))
        except _Malformed as e:
            raise BadInput(f"cannot write this {kind}: {e}") from None
    return hash_bytes(data), data


def json_copy(value):
    """A deep copy of a decoded object (dicts, lists and plain values): what the API hands out of
    an object a Repo keeps cached, so that changing it changes nothing the Repo reads later."""
    if type(value) is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if type(value) is list:
        return [json_copy(v) for v in value]
    return value


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic collector off meanwhile, for work that allocates an object per tensor of a
    large tree (decoding it, diffing it) and makes no cycles: the collections those allocations
    set off, each over every object of the process (torch's heap included), took as long as the
    work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def decode(data: bytes, expected_type: str, oid: str = "?") -> dict:
    """Parse a JSON object of `expected_type`, refusing other kinds and newer formats."""
    try:
        with gc_paused():
            obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # the bytes hashed right: a blob
        raise WrongObjectType(f"object {oid[:12]} is a blob, not a {expected_type}", "blob") from None
    if not isinstance(obj, dict) or obj.get("type") != expected_type:
        got = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise WrongObjectType(f"object {oid[:12]} is a {got}, not a {expected_type}", str(got))
    return _checked(obj, expected_type, oid)


def _checked(obj: dict, expected_type: str, oid: str) -> dict:
    """`obj` (of type `expected_type`) when this mvc can read it: FormatTooNew or CorruptObject otherwise."""
    fmt = obj.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CorruptObject(f"{expected_type} {oid[:12]} has no format version")
    if fmt < 1:
        raise CorruptObject(f"{expected_type} {oid[:12]} has format {fmt}, a format no mvc writes")
    if fmt > FORMAT_VERSION:
        raise FormatTooNew(f"{expected_type} {oid[:12]} has format {fmt}; this mvc reads up to {FORMAT_VERSION}",
                           "upgrade mvc")
    check = _SHAPE_CHECKS.get(expected_type)
    if check is not None:
        try:
            _need(not nests_deeper(obj, READ_JSON_DEPTH), f"it nests deeper than {READ_JSON_DEPTH} levels")
            check(obj)
        except _Malformed as e:
            raise CorruptObject(f"{expected_type} {oid[:12]} is malformed: {e}",
                                "its bytes are intact: it was written this way, by another program or a "
                                "faulty remote; mvc fsck lists what refers to it") from None
    return obj


class _Malformed(Exception):
    """A field of a commit or tree that readers could not use (its text says which)."""


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Malformed(what)


def _is_dict_of_str_keys(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _safe_name(name: str, what: str) -> None:
    try:
        check_component_name(name, what)
    except BadName as e:
        raise _Malformed(e.message) from None


MAX_JSON_DEPTH = 64  # nesting of dicts and lists a new object may have: readers recurse through it
READ_JSON_DEPTH = 256  # what a stored commit or tree may have (an older mvc wrote deeper than 64)


def nests_deeper(value, limit: int) -> bool:
    """Whether dicts, lists and tuples nest more than `limit` levels in `value` (found level by level,
    without recursion; a value that contains itself nests without end)."""
    level, depth = ([value] if isinstance(value, _CONTAINERS) else []), 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [x for v in level for x in (v.values() if isinstance(v, dict) else v) if isinstance(x, _CONTAINERS)]
    return False


_CONTAINERS = (dict, list, tuple)


def _check_commit_shape(obj: dict) -> None:
    """Every field a reader relies on, typed, so that a commit that hashes right but was built
    wrongly (or by a hostile remote) is refused by name instead of crashing or misleading a reader:
    component names are safe relative paths, every id is 64 lowercase hex."""
    comps, parents = obj.get("components"), obj.get("parents")
    _need(_is_dict_of_str_keys(comps), "'components' must map names to tree ids")
    for name, tid in comps.items():
        _safe_name(name, "component name")
        _need(isinstance(tid, str) and is_oid(tid), f"component {name[:60]!r} names {str(tid)[:70]!r}, not an object id")
    _need(isinstance(parents, list) and all(isinstance(p, str) and is_oid(p) for p in parents),
          "'parents' must be a list of commit ids")
    _need(len(set(parents)) == len(parents), "a parent is listed twice")
    for key in ("message", "author", "time"):
        _need(isinstance(obj.get(key), str), f"{key!r} must be text")
    for key in ("metrics", "provenance", "extra"):
        _need(_is_dict_of_str_keys(obj.setdefault(key, {})), f"{key!r} must be a JSON object")


def _check_tree_shape(obj: dict) -> None:
    """The tensor and file maps of a tree: ids are 64 hex, dtypes known, shapes lists of sizes,
    file paths safe relative paths, each file a safetensors file (with its header blob) or a raw one."""
    tensors, files = obj.get("tensors"), obj.get("files")
    _need(_is_dict_of_str_keys(tensors), "'tensors' must map names to entries")
    _need(_is_dict_of_str_keys(files), "'files' must map paths to entries")
    _need(isinstance(obj.setdefault("meta", {}), dict), "'meta' must be a JSON object")
    _need(isinstance(obj.get("kind"), str), "'kind' must be text")
    _need(obj.get("arch") is None or isinstance(obj["arch"], str), "'arch' must be text")
    for key in ("config", "abi"):  # what rebuilds a model and what paste compares: objects or nothing
        _need(obj.get(key) is None or _is_dict_of_str_keys(obj[key]), f"{key!r} must be a JSON object")
    for rel, f in files.items():
        # only paths that would leave the checkout folder are refused here; others a checkout cannot
        # write (a backslash, a control character) are refused by it: older mvc stored such names
        _need(not rel.startswith("/") and all(seg not in ("", ".", "..") for seg in rel.split("/")),
              f"file path {rel[:60]!r} would leave the checkout folder")
        _need(isinstance(f, dict), f"file {rel[:60]!r} is not an entry")
        size = f.get("size")
        _need(type(size) is int and size >= 0, f"file {rel[:60]!r} has no valid size")
        key = {"safetensors": "header", "raw": "id"}.get(f.get("format"))
        _need(key is not None, f"file {rel[:60]!r} has unknown format {str(f.get('format'))[:30]!r}")
        _need(isinstance(f.get(key), str) and is_oid(f[key]), f"file {rel[:60]!r} has no valid {key} id")
    for rel in files:  # (a checkout could not write both "sub" and "sub/x")
        segs = rel.split("/")
        folder = next((d for d in ("/".join(segs[:i]) for i in range(1, len(segs))) if d in files), None)
        _need(folder is None, f"file path {rel[:60]!r} is below {folder!s:.60}, a file of the tree too")
    for name, t in tensors.items():
        where = f"tensor {name[:60]!r}"
        _need(isinstance(t, dict), f"{where} is not an entry")
        _need(isinstance(t.get("id"), str) and is_oid(t["id"]), f"{where} has no valid object id")
        _need(t.get("dtype") in DTYPE_SIZES, f"{where} has unknown dtype {str(t.get('dtype'))[:30]!r}")
        shape = t.get("shape")
        _need(isinstance(shape, list) and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape),
              f"{where} has an invalid shape")
        for key in ("alias", "name"):
            _need(isinstance(t.get(key, ""), str), f"{where} has a non-text {key!r}")
        _need(isinstance(t.get("file"), str) and t["file"] in files, f"{where} belongs to no file the tree lists")


_SHAPE_CHECKS = {"commit": _check_commit_shape, "tree": _check_tree_shape}


def is_oid(text: str) -> bool:
    return bool(OID_RE.match(text))


RESERVED_SEGMENTS = (".git", ".mvc")  # a checkout must never write into a repository's own directory
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
QUALIFIERS = ("heads/", "tags/", "remotes/", "refs/")  # a revision starting so names its ref by kind
_C1_CONTROL = re.compile(r"[\x80-\x9f]")  # 8-bit twins of ESC sequences (CSI, OSC): refused in new names


def is_reserved_segment(seg: str) -> bool:
    """`.git` or `.mvc` as a file system may see it (any case, trailing dots or spaces)."""
    return seg.lower().rstrip(". ") in RESERVED_SEGMENTS


def check_component_name(name: str, what: str = "component name") -> str:
    """Component names (and file paths inside components) are relative slash paths: no empty, '.'
    or '..' segments, no absolute paths, no `.git` or `.mvc` segment (any case; a checkout writes
    them as directories), UTF-8 segments a file system can hold."""
    if not isinstance(name, str):
        raise BadName(f"{what} {name!r} is a {type(name).__name__}, not a string")
    if not name:
        raise BadName(f"{what} is empty")
    if "\\" in name:
        raise BadName(f"invalid {what} {name!r}: a backslash separates folders on Windows",
                      "rename it")
    if name.startswith("/"):
        raise BadName(f"invalid {what} {name!r} (use relative names like core or brick/python)")
    if _CONTROL.search(name):
        raise BadName(f"invalid {what} {name!r} (control characters such as tab or newline)")
    for seg in name.split("/"):
        if seg in ("", ".", ".."):
            raise BadName(f"invalid {what} {name!r} (empty, '.' or '..' segment)")
        if is_reserved_segment(seg):
            raise BadName(f"invalid {what} {name!r} ({seg!r} is reserved for repositories)")
    _check_path_text(name, what)
    return name


MAX_SEGMENT_BYTES = 255  # the longest file name most file systems take
MAX_REF_SEGMENT_BYTES = 200  # leaves room for the lock and temp-file names made from a ref's
MAX_REF_BYTES = 1000  # a whole ref name: far inside PATH_MAX below any repository, and S3's 1,024-byte keys


def check_new_component_name(name: str, what: str = "component name", max_bytes: int | None = MAX_REF_BYTES) -> str:
    """What a component name (or, `max_bytes` None, a file path) must also satisfy to enter a new
    commit (names made before these rules stay readable): no C1 control characters, and at most
    `max_bytes`, so that a checkout path fits in a file system's path limit."""
    check_component_name(name, what)
    if _C1_CONTROL.search(name):
        raise BadName(f"invalid {what} {name!r} (C1 control characters, which terminals act on)")
    if max_bytes is not None and len(name.encode("utf-8")) > max_bytes:
        raise BadName(f"invalid {what} {name[:40]!r}... (longer than {max_bytes} bytes: a checkout could "
                      "not write its files)")
    return name


def _check_path_text(name: str, what: str, limit: int = MAX_SEGMENT_BYTES) -> None:
    """Names become file paths: UTF-8 text whose segments a file system can hold."""
    try:
        segs = [seg.encode("utf-8") for seg in name.split("/")]
    except UnicodeEncodeError:
        raise BadName(f"invalid {what} {name!r} (not valid UTF-8{_locale_hint()})") from None
    if any(len(seg) > limit for seg in segs):
        raise BadName(f"invalid {what} {name[:40]!r}... (a part longer than {limit} bytes)")


def check_no_nesting(names, new=None, quiet: bool = False) -> None:
    """Component names must not nest (`a` beside `a/b`): a checkout writes `a/b` inside `a`; nor
    differ only in case or Unicode form (`core` beside `Core`, or `café` in NFC and NFD), nor nest
    once so folded (`Core` beside `core/x`): a checkout on a file system that ignores case or
    Unicode form (macOS; Windows for case) writes both into one folder. With `new` (the names
    being added), such a pair a parent already holds (an older mvc took them) is warned of, not
    refused: every commit on that branch would be (`quiet`: nor warned of, for a check made
    again later). Names that nest as written are always refused."""
    new = set(names) if new is None else set(new)

    def clash(a: str, b: str, what: str, why: str, hint: str) -> None:
        if a in new or b in new:
            raise BadName(f"components {a!r} and {b!r} {what}: {why}", hint)
        if not quiet:
            warnings.warn(f"components {a!r} and {b!r} {what}: {why}; remove one with mvc commit --remove {b}")

    for a, b, kind in folded_clashes(names):
        if kind == "nests":  # (nesting as written was always refused)
            raise BadName(f"components {a!r} and {b!r} nest: {b!r} would be checked out inside {a!r}",
                          "pick names that are not directories of one another")
        same = kind == "same"
        # (a folder name folded, against the part of b's path at its depth)
        case = case_folded(a) == case_folded(b if same else "/".join(b.split("/")[:a.count("/") + 1]))
        how = "case or Unicode form" if case else "trailing dots or spaces"
        where = "a checkout on macOS (or, for case, Windows)" if case else "a checkout on Windows (which drops them)"
        if same:
            clash(a, b, f"differ only in {how}", f"{where} writes both into one folder",
                  f"pick names that differ in more than {how}")
        else:
            clash(a, b, f"nest where {how} {'is' if case else 'are'} ignored", f"{where} writes {b!r} inside {a!r}",
                  "pick names that are not directories of one another")


def folded_clashes(paths, fold=None):
    """(a, b, kind) for the slash paths that clash where case or Unicode form is ignored: "same"
    (`core`, `Core`), "nests" (`a`, `a/x`: as written), "nests-folded" (`Core`, `core/x`). A pair
    that nests as written comes before those that nest only folded. `fold`: how names are folded
    (`folded_name`, which also drops trailing dots and spaces; `case_folded` does not)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        groups.setdefault((fold or folded_name)(path), []).append(path)
    for group in groups.values():
        for other in group[1:]:
            yield group[0], other, "same"
    for fb in sorted(groups):
        segs = fb.split("/")
        for fa in ("/".join(segs[:i]) for i in range(1, len(segs))):
            pairs = [(a, b) for a in groups.get(fa, ()) for b in groups[fb]]
            exact = [(a, b) for a, b in pairs if b.startswith(a + "/")]
            for a, b in exact or pairs:
                yield a, b, "nests" if exact else "nests-folded"


def folded_name(name: str) -> str:
    """A name (or path) as case-insensitive, normalizing file systems (macOS, Windows) compare them:
    NFC and simple lower case (not casefold's `ß` = `ss`, which they keep apart), and each segment
    without trailing dots and spaces, which Windows drops (`core.` is `core` there)."""
    return "/".join(seg.rstrip(". ") or seg for seg in unicodedata.normalize("NFC", name).lower().split("/"))


def case_folded(name: str) -> str:
    """A name as a case-insensitive, normalizing file system (macOS) compares it: NFC, lower case."""
    return unicodedata.normalize("NFC", name).lower()


def check_relpath(path: str) -> str:
    """A file path inside a component (from a tree): the same rules as component names."""
    try:
        return check_component_name(path, "file path")
    except BadName:
        raise CorruptObject(f"tree holds an unsafe file path {path!r}") from None


def check_ref_name(name: str) -> str:
    if not isinstance(name, str):
        raise BadName(f"a branch or tag name must be text, not {type(name).__name__} ({name!r:.40})")
    if (not name or name == "HEAD" or name.startswith(("-", "/")) or name.endswith(("/", ".lock")) or ".." in name
            or any(c in name for c in " ~^:?*[\\@{}") or _CONTROL.search(name) or "//" in name
            or any(seg.startswith(".") for seg in name.split("/"))):
        raise BadName(f"invalid branch or tag name {name!r}")
    if is_oid(name) or (len(name) >= 6 and re.fullmatch(r"[0-9a-f]+", name)):
        raise BadName(f"invalid branch or tag name {name!r} (it looks like an object id)")
    _check_path_text(name, "branch or tag name", MAX_REF_SEGMENT_BYTES)
    if len(name.encode("utf-8")) > MAX_REF_BYTES:
        raise BadName(f"invalid branch or tag name {name[:40]!r}... (longer than {MAX_REF_BYTES} bytes)")
    return name


def check_new_ref_name(name: str, mirrored: bool = False) -> str:
    """What a ref must also satisfy to be created (refs made before these rules stay readable):
    no part ends in ".lock" (a folder x.lock would sit where branch x's lock file goes), no
    trailing ".", no hex that would hide an id prefix, in capitals either (as git refuses the
    first two), no C1 control characters, and no start that revisions read as a qualifier
    (`tags/v1` as a branch: `mvc rev-parse tags/v1` gives tag v1). A `mirrored` name (a remote's branch or tag, git's branch: made elsewhere, maybe
    by an older mvc) needs only the first."""
    check_ref_name(name)
    if any(seg.endswith(".lock") for seg in name.split("/")):
        raise BadName(f"invalid branch or tag name {name!r} (a part ends in '.lock', where a lock file goes)")
    if mirrored:
        return name
    if _C1_CONTROL.search(name):
        raise BadName(f"invalid branch or tag name {name!r} (C1 control characters, which terminals act on)")
    if name.endswith("."):
        raise BadName(f"invalid branch or tag name {name!r} (it ends in '.')")
    if name.startswith(QUALIFIERS):  # branch tags/v1 would hide behind tag v1 (or shadow it, unqualified)
        raise BadName(f"invalid branch or tag name {name!r}: a revision that starts with "
                      f"{name.split('/')[0]}/ names a branch, tag or ref by its full name",
                      f"choose a name that does not start with {', '.join(QUALIFIERS[:-1])} or {QUALIFIERS[-1]}")
    if is_oid(name.lower()) or (len(name) >= 6 and re.fullmatch(r"[0-9a-f]+", name, re.IGNORECASE)):
        raise BadName(f"invalid branch or tag name {name!r} (it looks like an object id)")
    return name


def check_remote_name(name: str) -> str:
    if "/" in name:
        raise BadName(f"invalid remote name {name!r} (no '/')")
    try:
        check_ref_name(name)  # one part of refs/remotes/NAME/..., never a revision of its own
    except BadName:
        raise BadName(f"invalid remote name {name!r}") from None
    if _C1_CONTROL.search(name):
        raise BadName(f"invalid remote name {name!r} (C1 control characters, which terminals act on)")
    if f"{name}/" in QUALIFIERS:  # remote heads: heads/main would still mean the local branch main
        raise BadName(f"invalid remote name {name!r}: a revision that starts with {name}/ names a ref by its kind",
                      "choose another name, e.g. origin")
    return name


def tree_object(kind: str, tensors: dict, files: dict, arch=None, config=None, abi=None,
                meta=None) -> dict:
    """A tree in the oldest format that holds it: 1, or 2 for an optimizer state holding lists of
    tensors (`sequence_state` entries with a length: an mvc reading format 1 only would take their
    items `state.<i>.<key>.<j>` for keys `<key>.<j>`, a misread; it refuses format 2 instead)."""
    meta = meta or {}
    sequences = meta.get("sequence_state") if isinstance(meta, dict) else None
    fmt = 2 if isinstance(sequences, dict) and any("length" in v for v in sequences.values()) else WRITE_FORMAT
    return {"type": "tree", "format": fmt, "kind": kind, "arch": arch, "config": config,
            "abi": abi, "meta": meta, "tensors": tensors, "files": files}


def commit_object(components: dict, parents: list, message: str, author: str, time: str,
                  metrics=None, provenance=None, extra=None) -> dict:
    return {"type": "commit", "format": WRITE_FORMAT, "components": dict(components),
            "parents": list(parents), "message": message, "author": author, "time": time,
            "metrics": metrics or {}, "provenance": provenance or {}, "extra": extra or {}}


def named_ids(value) -> set[str]:
    """Every object id (64-hex string) inside a JSON value, e.g. the inputs a certificate names.
    Values under keys ending in `_digest` are hashes of computed data (a certificate's logits
    digest), not stored objects."""
    if isinstance(value, str):
        return {value} if is_oid(value) else set()
    if isinstance(value, dict):
        return set().union(*(named_ids(v) for k, v in value.items() if not str(k).endswith("_digest")))
    if isinstance(value, list):
        return set().union(*(named_ids(v) for v in value)) if value else set()
    return set()


def certificate_refs(data, oid: str) -> set[str]:
    """Every object id a stored certificate names. One of a newer format than this mvc reads is
    not understood, but what it names is kept all the same (gc must not delete it, a push must
    send it): its ids are found in its JSON whatever its shape. MvcError for one that is damaged."""
    try:
        return named_ids(decode(data, "certificate", oid))
    except FormatTooNew:
        return named_ids(json.loads(data))


def may_say_commit_or_tree(find) -> bool:
    """Whether bytes whose `find` method is given hold the words a commit or tree says it is with."""
    return find(b'"type"') >= 0 and (find(b'"tree"') >= 0 or find(b'"commit"') >= 0)


def object_kind(data) -> str:
    """"commit" or "tree" for the bytes of such an object (of a newer format too); "blob" for
    anything else (tensors, headers, files, data, certificates), JSON data that only says it is a
    commit or a tree included (a held-out file a certificate names may say anything)."""
    if bytes(data[:1]) != b"{":
        return "blob"
    raw = bytes(data)
    if not may_say_commit_or_tree(raw.find):
        return "blob"  # (no parse of a large JSON data file that cannot say it is one)
    try:
        with gc_paused():
            obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "blob"
    kind = obj.get("type") if isinstance(obj, dict) else None
    if not isinstance(kind, str) or kind not in _SHAPE_CHECKS:
        return "blob"
    try:
        _checked(obj, kind, "?")
    except FormatTooNew:
        return kind  # (a newer mvc's: its readers say so)
    except CorruptObject:
        return "blob"
    return kind


def tree_blob_ids(tree: dict) -> list[str]:
    """Every blob id a tree refers to (tensor blobs, headers, raw files)."""
    ids = [t["id"] for t in tree["tensors"].values()]
    for f in tree["files"].values():
        if f.get("header"):
            ids.append(f["header"])
        if f.get("id"):
            ids.append(f["id"])
    return ids


def tree_blob_sizes(tree: dict, exact_headers: bool = True) -> dict[str, int]:
    """{blob id: size} of the blobs a (shape-checked) tree names, from the tree alone: exact for
    tensors (canonical header and data) and raw files; a stored safetensors header is its file less
    its tensors' data, or, without `exact_headers`, a bound that holds whatever the tree's numbers
    say (the file's size and the header limit: for trees a remote sends)."""
    from .safetensors_format import MAX_HEADER_BYTES, blob_prefix
    sizes, data = {}, {}
    for t in tree["tensors"].values():
        n = DTYPE_SIZES[t["dtype"]] * math.prod(t["shape"])
        sizes[t["id"]] = len(blob_prefix(t["dtype"], tuple(t["shape"]))) + n
        if t.get("file") is not None:
            data[t["file"]] = data.get(t["file"], 0) + n
    for relpath, f in tree["files"].items():
        if f.get("id"):
            sizes[f["id"]] = f["size"]
        if f.get("header"):
            sizes[f["header"]] = f["size"] - data.get(relpath, 0) if exact_headers else \
                min(f["size"], 8 + MAX_HEADER_BYTES)
    return sizes

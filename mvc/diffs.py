"""What changed between two trees of a component: tensors added, removed or changed (max |delta|,
relative L2 change, fraction of elements changed, computed exactly in float64 or int64), files
added, removed or changed, and model metadata changes. torch is imported only to compare tensors."""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable

from . import components as comp
from . import safetensors_format as stf
from .objects import gc_paused


CHUNK_ELEMENTS = 1 << 22  # compared at a time: float64 temporaries of 32 MB, whatever the tensor's size


def compared_bytes(ta: dict | None, tb: dict | None) -> int:
    """Bytes `tensor_change` reads, both sides, for two trees of a component: tensors they both
    hold with the same shape and different contents (the total of a progress bar)."""
    if not ta or not tb:
        return 0
    total = 0
    now = {a: b for b, a in _rekeyed(ta["tensors"], tb["tensors"]).items()}  # (paired as _diff_trees pairs them)
    for name, x in ta["tensors"].items():
        y = tb["tensors"].get(now.get(name, name))
        if y is not None and x["id"] != y["id"] and x["shape"] == y["shape"]:
            n = math.prod(x["shape"])
            total += n * (stf.DTYPE_SIZES[x["dtype"]] + stf.DTYPE_SIZES[y["dtype"]])
    return total


def diff_trees(store, ta: dict | None, tb: dict | None, progress: Callable[[int], None] | None = None) -> dict:
    """Two trees of one component compared: per tensor added / removed / changed / unchanged (with
    change figures), per file added / removed / changed, and whether the model metadata changed.
    `progress` gets the bytes compared as they are. The result shares no list or dict with the
    trees (a Repo's cached ones)."""
    with gc_paused():  # (an entry per tensor: collections over torch's heap took half of mvc diff)
        return _diff_trees(store, ta, tb, progress)


def _diff_trees(store, ta: dict | None, tb: dict | None, progress: Callable[[int], None] | None) -> dict:
    status = "added" if ta is None else "removed" if tb is None else "changed"
    tens_a = ta["tensors"] if ta else {}
    tens_b = tb["tensors"] if tb else {}
    tensors = {}
    was = _rekeyed(tens_a, tens_b)
    for tname in sorted((set(tens_a) - set(was.values())) | set(tens_b)):
        x, y = tens_a.get(was.get(tname, tname)), tens_b.get(tname)  # (ties: single-file trees, whose keys stay)
        if x is None:
            tensors[tname] = {"status": "added", "dtype": y["dtype"], "shape": list(y["shape"])}
        elif y is None:
            tensors[tname] = {"status": "removed", "dtype": x["dtype"], "shape": list(x["shape"])}
        elif x["id"] == y["id"]:
            tensors[tname] = {"status": "unchanged"}
            if x.get("alias") != y.get("alias"):  # same values, tied to another name or untied
                tensors[tname]["note"] = (f"now tied to {y['alias']}" if y.get("alias") else
                                          f"no longer tied to {x['alias']}")
        else:
            tensors[tname] = {"status": "changed", **tensor_change(store, tname, x, y, progress)}
        if tname in was:
            tensors[tname]["was"] = was[tname]
            tensors[tname]["note"] = ", ".join(filter(None, [f"was {was[tname]}", tensors[tname].get("note")]))
    files = {}
    fa, fb = (ta or {}).get("files", {}), (tb or {}).get("files", {})
    # a safetensors file's entry names its header only: its bytes changed too when a tensor in it did
    in_file: Counter = Counter()
    for tname, d in tensors.items():
        if d["status"] != "unchanged":
            in_file.update({t["file"] for t in (tens_a.get(was.get(tname, tname)), tens_b.get(tname))
                            if t and t.get("file")})
    for rel in sorted(set(fa) | set(fb)):
        x, y = fa.get(rel), fb.get(rel)
        if x == y and not in_file[rel]:
            continue
        files[rel] = {"status": "added" if x is None else "removed" if y is None else "changed",
                      "size": [x and x["size"], y and y["size"]]}
        if "header" in (x or y):  # (the id of its header blob: equal while only tensor values changed)
            files[rel]["header"] = [x and x.get("header"), y and y.get("header")]
            files[rel]["tensors_changed"] = in_file[rel]
        else:
            files[rel]["id"] = [x and x.get("id"), y and y.get("id")]
    fields = meta_fields(ta, tb) if ta and tb else []
    return {"status": status, "tensors": tensors, "files": files, "meta_changed": bool(fields),
            "meta_fields": fields}


def _rekeyed(tens_a: dict, tens_b: dict) -> dict[str, str]:
    """{key in b: key in a} for the tensors of a folder's files whose key changed while they stayed
    the same tensor of the same file: a name a second file also holds is keyed `file:name` (adding
    b.safetensors beside a.safetensors, both holding `w`, makes a's `w` into `a.safetensors:w`),
    which is no removal of `w`."""
    def place(t: dict, key: str):
        return (t["file"], t.get("name", key)) if "file" in t else None
    gone = {place(t, k): k for k, t in tens_a.items() if k not in tens_b and place(t, k)}
    return {k: gone[p] for k, t in tens_b.items() if k not in tens_a and (p := place(t, k)) in gone}


META_KEYS = ("kind", "arch", "config", "abi", "meta")  # a tree's model metadata


def meta_fields(ta: dict, tb: dict) -> list[str]:
    """The metadata fields that differ between two trees: `arch`, `abi`, ..., and for the dict
    fields (config, meta) the keys that differ, as `config.d_model`."""
    fields = []
    for k in META_KEYS:
        x, y = ta.get(k), tb.get(k)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            fields += [f"{k}.{sub}" for sub in sorted(set(x) | set(y), key=str) if x.get(sub) != y.get(sub)]
        else:
            fields.append(k)
    return fields


def tensor_change(store, name: str, x: dict, y: dict, progress: Callable[[int], None] | None = None) -> dict:
    """dtype and shape of a changed tensor and, when the shapes agree, the fraction of elements
    changed, max |delta| and the L2 norm of the change relative to the old tensor. Compared in
    chunks of CHUNK_ELEMENTS, so memory stays bounded whatever the tensor's size: a loose object is
    mapped, a large packed one decoded a batch at a time (an XOR delta's base is decoded whole)."""
    out = {"dtype": [x["dtype"], y["dtype"]], "shape": [list(x["shape"]), list(y["shape"])]}
    notes = [what for what, k in (("dtype changed", "dtype"), ("shape changed", "shape")) if x[k] != y[k]]
    if notes:
        out["note"] = ", ".join(notes)
    if x["shape"] != y["shape"]:
        return out
    n = math.prod(x["shape"])
    if not n:
        out.update(max_abs_delta=0.0, rel_l2=0.0, frac_changed=0.0)
        return out
    step = stf.DTYPE_SIZES[x["dtype"]] + stf.DTYPE_SIZES[y["dtype"]]
    once = comp.ProgressOnce(progress)

    def sums(whole: bool) -> _ChangeSums:
        acc = _ChangeSums()
        once.restart()
        sides = [_element_chunks(store, t, name, n, whole) for t in (x, y)]
        for a, b in zip(*sides):
            acc.add(a, b)
            once(a.numel() * step)
        for side in sides:  # drained: a streamed blob is verified once its last piece has passed
            for _none in side:  # (its size was checked: no element is left)
                pass
        return acc
    acc = comp.streamed_else_whole(sums)
    out["frac_changed"] = acc.changed / n
    out["max_abs_delta"] = acc.max_abs
    norm_a = _combine(acc.norms_a)
    if norm_a[0] and norm_a[1]:  # (changes measured on halves count twice)
        out["rel_l2"] = math.hypot(_ratio(_combine(acc.norms_d), norm_a), 2 * _ratio(_combine(acc.norms_half), norm_a))
    else:
        out["rel_l2"] = 0.0 if not acc.changed_finite else None
    notes = [out.get("note")]
    if out["rel_l2"] is None and norm_a[0] == 0:  # (a bias initialised at zero, after a step)
        notes.append("rel L2 undefined: the old (finite) values are all zero")
    if acc.changed_finite and acc.max_abs == 0:  # changed bits, equal values: only ±0 can do that,
        notes.append(f"{acc.changed_finite} value(s) changed only between 0.0 and -0.0" if x["dtype"] != "BOOL"
                     # or a bool stored as another non-zero byte (0x01 -> 0x02: both true)
                     else f"{acc.changed_finite} value(s) changed only in their stored byte (still true)")
    for k in ("max_abs_delta", "rel_l2"):  # finite deltas of huge weights can still overflow
        if out[k] is not None and not math.isfinite(out[k]):
            out[k] = None
            notes.append(f"{'max |delta|' if k == 'max_abs_delta' else 'rel L2'} overflows float64")
    if acc.nonfinite:
        if not acc.changed_finite:  # every change is to or from NaN/inf: nothing to measure
            out["max_abs_delta"] = out["rel_l2"] = None
        out["nonfinite_changed"] = acc.nonfinite
        bits = f", {acc.nan_bits} of them NaN to NaN with other sign or payload bits" if acc.nan_bits else ""
        notes.append(f"{acc.nonfinite} non-finite value(s) changed{bits} (not in max |delta| and rel L2)")
        if acc.nan_bits:
            out["nan_bits_changed"] = acc.nan_bits
    if any(notes):
        out["note"] = ", ".join(filter(None, notes))
    return out


def _element_chunks(store, t: dict, name: str, n: int, whole: bool = False):
    """The `n` elements of the tensor tree entry `t` names, as 1-D tensors of CHUNK_ELEMENTS (the
    last may be shorter). A mapped or small blob is sliced; a large packed one is decoded a batch
    at a time into one reused buffer (each chunk good until the next is asked for), not whole,
    unless `whole`."""
    from .tensors import buffer_tensor
    if whole or not store.streams(t["id"]):
        buf, e = comp.tensor_blob(store, t, name)
        flat = buffer_tensor(buf, e.begin, e.end, e.dtype, e.shape).reshape(-1)
        for start in range(0, n, CHUNK_ELEMENTS):
            yield flat[start: start + CHUNK_ELEMENTS]
        return
    size = stf.DTYPE_SIZES[t["dtype"]]
    chunk, filled = bytearray(min(n, CHUNK_ELEMENTS) * size), 0
    entry = stf.TensorEntry(name, t["dtype"], tuple(t["shape"]), 0, n * size)
    for piece in comp.tensor_pieces(store, t, entry):
        at = 0
        while at < len(piece):
            take = min(len(chunk) - filled, len(piece) - at)
            chunk[filled: filled + take] = piece[at: at + take]
            filled, at = filled + take, at + take
            if filled == len(chunk):
                yield buffer_tensor(chunk, 0, filled, t["dtype"], [filled // size])
                filled = 0
    if filled:
        yield buffer_tensor(chunk, 0, filled, t["dtype"], [filled // size])


class _ChangeSums:
    """What `tensor_change` adds up over the chunks of a tensor pair."""

    def __init__(self):
        self.changed = self.changed_finite = self.nonfinite = self.nan_bits = 0
        self.max_abs = 0.0
        # per chunk, as (scale, norm / scale) (see _norm): norms of float64 weights near its
        # largest values would overflow multiplied out
        self.norms_a: list[tuple[float, float]] = []  # of the finite old weights
        self.norms_d: list[tuple[float, float]] = []  # of the finite changes
        self.norms_half: list[tuple[float, float]] = []  # of half of each change beyond float64

    def add(self, a, b) -> None:
        import torch
        complex_ = a.is_complex() or b.is_complex()
        a64 = None
        if not (a.is_floating_point() or b.is_floating_point() or complex_):  # integers, bool: exact,
            d, changed = _int_delta(a, b)                                      # up to 2**64 - 1 apart
        elif a.is_floating_point() != b.is_floating_point() and not complex_:  # an int <-> float change
            d, changed = _mixed_delta(a, b)
        else:
            wide = torch.complex128 if complex_ else torch.float64
            a64, b64 = a.to(wide), b.to(wide)  # exact for every float and complex dtype stored
            changed = _values_differ(a64, b64) if a.dtype != b.dtype else None
            d = b64 - a64
        if a.dtype == b.dtype:  # bit for bit, as ids compare (NaN payloads, -0.0 vs 0.0 included)
            changed = _bits_differ(a, b)
        n_changed = int(changed.sum())
        self.changed += n_changed
        # NaN or inf on either side has no finite difference: such changes are counted apart and the
        # figures cover the others (one NaN used to blank them for the whole tensor). Two finite
        # float64 values can be further apart than float64 reaches: that change is measured on
        # halves (max |delta| then overflows, and says so; rel L2 stays finite)
        finite_d = d.isfinite()
        measured = changed & finite_d
        n_measured = int(measured.sum())
        over = None
        if n_measured < n_changed:  # some change has no finite difference: which of them are finite?
            over = changed & ~finite_d & _finite(a) & _finite(b)
            n_measured += int(over.sum())
        self.changed_finite += n_measured
        self.nonfinite += n_changed - n_measured
        if n_changed > n_measured and a.dtype == b.dtype and (a.is_floating_point() or complex_):
            self.nan_bits += int((changed & _only_nan_bits(a, b)).sum())
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        kept = torch.where(measured, d, zero)
        self.max_abs = max(self.max_abs, float(kept.abs().max()))
        self.norms_d.append(_norm(kept))
        if over is not None and bool(over.any()):
            self.max_abs = math.inf
            self.norms_half.append(_norm(torch.where(over, b.to(torch.float64) / 2 - a.to(torch.float64) / 2, zero)))
        if a64 is None:
            a64 = a.to(torch.complex128 if a.is_complex() else torch.float64)
        finite_a = a64.isfinite()
        self.norms_a.append(_norm(a64 if bool(finite_a.all()) else a64[finite_a]))


def _values_differ(a, b):
    """Elementwise, for two tensors of one wide dtype: do the values differ? A NaN equals a NaN;
    complex values are compared part by part (torch calls one NaN when either part is)."""
    import torch
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
        return ((a != b) & ~(a.isnan() & b.isnan())).any(dim=-1)
    return (a != b) & ~(a.isnan() & b.isnan())


def _only_nan_bits(a, b):
    """Elementwise, for two tensors of one float or complex dtype: is each part either NaN on both
    sides or equal, with some part NaN on both (a NaN that changed only its sign or payload bits;
    nan+1j -> nan+2j is a real change). Judged widened to 64 bits."""
    import torch
    a, b = (t.to(torch.complex128 if t.is_complex() else torch.float64) for t in (a, b))
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    else:
        a, b = a.unsqueeze(-1), b.unsqueeze(-1)
    both_nan = a.isnan() & b.isnan()
    return ((a == b) | both_nan).all(dim=-1) & both_nan.any(dim=-1)


def _finite(t):
    """Elementwise finiteness, judged on the values widened to 64 bits (torch has no isfinite for
    some float8 dtypes, and calls an e8m0 NaN finite)."""
    import torch
    if t.is_complex():
        return t.to(torch.complex128).isfinite()
    if t.is_floating_point():
        return t.to(torch.float64).isfinite()
    return torch.ones(t.shape, dtype=torch.bool)


def _bits_differ(a, b):
    """Elementwise: do two tensors of one dtype differ in any bit?"""
    import torch
    n, size = a.numel(), a.element_size()
    same_size_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(size)
    if same_size_int is not None:
        return a.view(same_size_int) != b.view(same_size_int)
    return (a.view(torch.uint8).view(n, size) != b.view(torch.uint8).view(n, size)).any(dim=1)  # complex128


def _norm(t) -> tuple[float, float]:
    """The L2 norm of `t` as (scale, norm / scale). Where squares overflow or underflow (float64
    weights beyond 1e154 or below 1e-154) it is taken again on `t` divided by its largest
    magnitude, and that magnitude is the scale."""
    import torch
    if not t.numel():
        return 0.0, 0.0
    plain = float(torch.linalg.vector_norm(t))
    if 1e-140 < plain < math.inf:
        return plain, 1.0
    top = float(t.abs().max())
    if top == 0.0 or not math.isfinite(top):
        return top, 1.0
    return top, float(torch.linalg.vector_norm(t / top))


def _combine(norms: list[tuple[float, float]]) -> tuple[float, float]:
    """The norm of several chunks together, as (scale, norm / scale)."""
    scale = max((m for m, r in norms if r), default=0.0)
    if not scale or not math.isfinite(scale):
        return scale, 1.0 if scale else 0.0
    return scale, math.hypot(*(m / scale * r for m, r in norms))


def _ratio(num: tuple[float, float], den: tuple[float, float]) -> float:
    """num / den of two (scale, norm / scale) norms, without multiplying either out."""
    return 0.0 if not (num[0] and num[1]) else (num[0] / den[0]) * (num[1] / den[1])


def _int_delta(a, b):
    """(b - a as float64, rounded once from the exact difference; changed mask) of integer or bool
    tensors. Both signed (or both unsigned) are subtracted as 64-bit unsigned magnitudes, which
    hold any difference exactly; a uint64 against a signed dtype goes through long double."""
    import numpy as np
    import torch
    x, y = _as_numpy(a), _as_numpy(b)
    unsigned = (x.dtype == np.uint64, y.dtype == np.uint64)
    if unsigned[0] != unsigned[1]:
        return _long_double_delta(x, y)
    kind = np.uint64 if unsigned[0] else np.int64
    x, y = x.astype(kind, copy=False), y.astype(kind, copy=False)
    up = y >= x
    xu, yu = x.view(np.uint64), y.view(np.uint64)
    with np.errstate(over="ignore"):
        mag = np.where(up, yu - xu, xu - yu)  # modulo 2**64: exact, as |y - x| < 2**64
    f = mag.astype(np.float64)
    return torch.from_numpy(np.where(up, f, -f)), torch.from_numpy(mag != 0)


def _mixed_delta(a, b):
    """(b - a, changed) for an integer tensor against a float one, compared in long double (exact
    for 64-bit integers and float64 where the platform's long double has a 64-bit mantissa)."""
    return _long_double_delta(_as_numpy(a), _as_numpy(b))


def _long_double_delta(x, y):
    import numpy as np
    import torch
    with np.errstate(over="ignore", invalid="ignore"):  # (a signalling NaN raises "invalid" as it is cast)
        xl, yl = x.astype(np.longdouble), y.astype(np.longdouble)
        changed = (xl != yl) & ~(np.isnan(xl) & np.isnan(yl))
        d = (yl - xl).astype(np.float64)
    return torch.from_numpy(d), torch.from_numpy(changed)


def _as_numpy(t):
    """A numpy array of `t`'s values: bool and integers as they are, floats numpy lacks (bfloat16,
    float8) widened exactly to float32."""
    import torch
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.contiguous().numpy()

"""What changed between two trees of a component: tensors added, removed or changed (max |delta|,
relative L2 change, fraction of elements changed, computed exactly in float64 or int64), files
added, removed or changed, and model metadata changes. torch is imported only to compare tensors."""
from __future__ import annotations

import math
from typing import Callable

from . import components as comp
from . import safetensors_format as stf


CHUNK_ELEMENTS = 1 << 22  # compared at a time: float64 temporaries of 32 MB, whatever the tensor's size


def compared_bytes(ta: dict | None, tb: dict | None) -> int:
    """Bytes `tensor_change` reads, both sides, for two trees of a component: tensors they both
    hold with the same shape and different contents (the total of a progress bar)."""
    if not ta or not tb:
        return 0
    total = 0
    for name, x in ta["tensors"].items():
        y = tb["tensors"].get(name)
        if y is not None and x["id"] != y["id"] and x["shape"] == y["shape"]:
            n = math.prod(x["shape"])
            total += n * (stf.DTYPE_SIZES[x["dtype"]] + stf.DTYPE_SIZES[y["dtype"]])
    return total


def diff_trees(store, ta: dict | None, tb: dict | None, progress: Callable[[int], None] | None = None) -> dict:
    """Two trees of one component compared: per tensor added / removed / changed / unchanged (with
    change figures), per file added / removed / changed, and whether the model metadata changed.
    `progress` gets the bytes compared as they are."""
    status = "added" if ta is None else "removed" if tb is None else "changed"
    tens_a = ta["tensors"] if ta else {}
    tens_b = tb["tensors"] if tb else {}
    tensors = {}
    for tname in sorted(set(tens_a) | set(tens_b)):
        x, y = tens_a.get(tname), tens_b.get(tname)
        if x is None:
            tensors[tname] = {"status": "added", "dtype": y["dtype"], "shape": y["shape"]}
        elif y is None:
            tensors[tname] = {"status": "removed", "dtype": x["dtype"], "shape": x["shape"]}
        elif x["id"] == y["id"]:
            tensors[tname] = {"status": "unchanged"}
        else:
            tensors[tname] = {"status": "changed", **tensor_change(store, tname, x, y, progress)}
    files = {}
    fa, fb = (ta or {}).get("files", {}), (tb or {}).get("files", {})
    for rel in sorted(set(fa) | set(fb)):
        x, y = fa.get(rel), fb.get(rel)
        if x == y:
            continue
        files[rel] = {"status": "added" if x is None else "removed" if y is None else "changed",
                      "size": [x and x["size"], y and y["size"]],
                      "id": [x and (x.get("id") or x.get("header")), y and (y.get("id") or y.get("header"))]}
    return {"status": status, "tensors": tensors, "files": files,
            "meta_changed": bool(ta and tb and {k: ta.get(k) for k in ("kind", "arch", "config", "abi")}
                                 != {k: tb.get(k) for k in ("kind", "arch", "config", "abi")})}


def tensor_change(store, name: str, x: dict, y: dict, progress: Callable[[int], None] | None = None) -> dict:
    """dtype and shape of a changed tensor and, when the shapes agree, the fraction of elements
    changed, max |delta| and the L2 norm of the change relative to the old tensor. Compared in
    chunks of CHUNK_ELEMENTS, so memory stays bounded whatever the tensor's size."""
    out = {"dtype": [x["dtype"], y["dtype"]], "shape": [x["shape"], y["shape"]]}
    notes = [what for what, k in (("dtype changed", "dtype"), ("shape changed", "shape")) if x[k] != y[k]]
    if notes:
        out["note"] = ", ".join(notes)
    if x["shape"] != y["shape"]:
        return out
    from .tensors import buffer_tensor
    vals = []
    for t in (x, y):
        buf, e = comp.tensor_blob(store, t, name)
        vals.append(buffer_tensor(buf, e.begin, e.end, e.dtype, e.shape))
    a, b = (v.reshape(-1) for v in vals)
    n = a.numel()
    if not n:
        out.update(max_abs_delta=0.0, rel_l2=0.0, frac_changed=0.0)
        return out
    acc = _ChangeSums()
    step = a.element_size() + b.element_size()
    for start in range(0, n, CHUNK_ELEMENTS):
        stop = min(n, start + CHUNK_ELEMENTS)
        acc.add(a[start:stop], b[start:stop])
        if progress:
            progress((stop - start) * step)
    out["frac_changed"] = acc.changed / n
    out["max_abs_delta"] = acc.max_abs
    norm_a, norm_d = math.hypot(*acc.norms_a), math.hypot(*acc.norms_d)
    out["rel_l2"] = norm_d / norm_a if norm_a else (0.0 if not acc.changed_finite else None)
    for k in ("max_abs_delta", "rel_l2"):  # finite deltas of huge weights can still overflow
        if out[k] is not None and not math.isfinite(out[k]):
            out[k] = None
    if acc.nonfinite:
        if not acc.changed_finite:  # every change is to or from NaN/inf: nothing to measure
            out["max_abs_delta"] = out["rel_l2"] = None
        out["nonfinite_changed"] = acc.nonfinite
        out["note"] = ", ".join(filter(None, [out.get("note"), f"{acc.nonfinite} non-finite value(s) changed "
                                                              "(not in max |delta| and rel L2)"]))
    return out


class _ChangeSums:
    """What `tensor_change` adds up over the chunks of a tensor pair."""

    def __init__(self):
        self.changed = self.changed_finite = self.nonfinite = 0
        self.max_abs = 0.0
        self.norms_a: list[float] = []  # per chunk: of the finite old weights
        self.norms_d: list[float] = []  # per chunk: of the finite changes

    def add(self, a, b) -> None:
        import torch
        n = a.numel()
        wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
        a64 = a.to(wide)
        if a.dtype == b.dtype:  # bit for bit, as ids compare (NaN payloads, -0.0 vs 0.0 included)
            size = a.element_size()
            same_size_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(size)
            if same_size_int is not None:
                changed = a.view(same_size_int) != b.view(same_size_int)
            else:  # 16-byte complex128
                changed = (a.view(torch.uint8).view(n, size) != b.view(torch.uint8).view(n, size)).any(dim=1)
        else:
            b64 = b.to(wide)
            changed = (a64 != b64) & ~(a64.isnan() & b64.isnan())
        n_changed = int(changed.sum())
        self.changed += n_changed
        exact = not (a.is_floating_point() or b.is_floating_point() or a.is_complex() or b.is_complex()) \
            and a.dtype != torch.uint64 and b.dtype != torch.uint64
        da = (b.to(torch.int64) - a.to(torch.int64)).to(torch.float64) if exact else \
            b.to(wide) - a64  # integers: exact differences up to 2**63
        # NaN or inf on either side has no finite difference: such changes are counted apart and the
        # figures cover the others (one NaN used to blank them for the whole tensor)
        measured = changed & da.isfinite()
        n_measured = int(measured.sum())
        self.changed_finite += n_measured
        self.nonfinite += n_changed - n_measured
        d = torch.where(measured, da, torch.zeros((), dtype=da.dtype))
        self.max_abs = max(self.max_abs, float(d.abs().max()))
        self.norms_d.append(float(torch.linalg.vector_norm(d)))
        finite_a = a64.isfinite()
        self.norms_a.append(float(torch.linalg.vector_norm(a64 if bool(finite_a.all()) else a64[finite_a])))

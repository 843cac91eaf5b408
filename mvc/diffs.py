"""What changed between two trees of a component: tensors added, removed or changed (max |delta|,
relative L2 change, fraction of elements changed, computed exactly in float64 or int64), files
added, removed or changed, and model metadata changes. torch is imported only to compare tensors."""
from __future__ import annotations

import math

from . import components as comp


def diff_trees(store, ta: dict | None, tb: dict | None) -> dict:
    """Two trees of one component compared: per tensor added / removed / changed / unchanged (with
    change figures), per file added / removed / changed, and whether the model metadata changed."""
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
            tensors[tname] = {"status": "changed", **tensor_change(store, tname, x, y)}
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

def tensor_change(store, name: str, x: dict, y: dict) -> dict:
    """dtype and shape of a changed tensor and, when the shapes agree, the fraction of elements
    changed, max |delta| and the L2 norm of the change relative to the old tensor."""
    out = {"dtype": [x["dtype"], y["dtype"]], "shape": [x["shape"], y["shape"]]}
    notes = [what for what, k in (("dtype changed", "dtype"), ("shape changed", "shape")) if x[k] != y[k]]
    if notes:
        out["note"] = ", ".join(notes)
    if x["shape"] != y["shape"]:
        return out
    import torch
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
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    if a.dtype == b.dtype:  # bit for bit, as ids compare (NaN payloads, -0.0 vs 0.0 included)
        size = a.element_size()
        changed = (a.view(torch.uint8).view(n, size) != b.view(torch.uint8).view(n, size)).any(dim=1)
    else:
        a64, b64 = a.to(wide), b.to(wide)
        changed = (a64 != b64) & ~(a64.isnan() & b64.isnan())
    out["frac_changed"] = float(changed.sum()) / n
    exact = not (a.is_floating_point() or b.is_floating_point() or a.is_complex() or b.is_complex()) \
        and a.dtype != torch.uint64 and b.dtype != torch.uint64
    da = (b.to(torch.int64) - a.to(torch.int64)).to(torch.float64) if exact else \
        b.to(wide) - a.to(wide)  # integers: exact differences up to 2**63
    # NaN or inf on either side has no finite difference: such changes are counted apart and the
    # figures cover the others (one NaN used to blank them for the whole tensor)
    finite = da.isfinite()
    d = torch.where(changed & finite, da, torch.zeros_like(da))
    a64 = a.to(wide)
    norm_a = float(torch.linalg.vector_norm(a64[a64.isfinite()]))  # of the finite weights
    out["max_abs_delta"] = float(d.abs().max())
    out["rel_l2"] = float(torch.linalg.vector_norm(d)) / norm_a if norm_a else \
        (0.0 if not (changed & finite).any() else None)
    for k in ("max_abs_delta", "rel_l2"):  # finite deltas of huge weights can still overflow
        if out[k] is not None and not math.isfinite(out[k]):
            out[k] = None
    nonfinite = int((changed & ~finite).sum())
    if nonfinite:
        if not (changed & finite).any():  # every change is to or from NaN/inf: nothing to measure
            out["max_abs_delta"] = out["rel_l2"] = None
        out["nonfinite_changed"] = nonfinite
        out["note"] = ", ".join(filter(None, [out.get("note"), f"{nonfinite} non-finite value(s) changed "
                                                              "(not in max |delta| and rel L2)"]))
    return out

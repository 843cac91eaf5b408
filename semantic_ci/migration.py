"""Migration checks: take a brick from a source commit to each listed host (in memory: nothing is
committed) and check bounded transfer (domain and general PPL ratios with/without the brick),
exact transfer (bit-identical logits and PPL ratio 1.0 on every host) or an exact copy (L0)."""
from __future__ import annotations

from mvc.errors import AbiMismatch, BadInput
from mvc.paste import check_abi

from . import evaluate as ev
from .checks import Context, compare_logits, read_check_data, resolve_relative, result
from .config import Check


def _brick(ctx: Context, source: str, name: str, int8: bool):
    import bricks

    from .models import rebuild_stored_brick
    comp = f"brick/{name}"
    tree = ctx.repo.tree(source, comp)
    brick = rebuild_stored_brick(tree, ctx.repo.load(source, comp), comp)  # (untrusted: BadInput, not a crash)
    if int8 and not brick.mvc_arch.endswith("-int8"):  # an int8 artifact already: measured as it is
        brick = bricks.quantize(brick)
    brick.eval()
    return tree, brick


def _attached(host, brick):
    import bricks
    try:
        return bricks.attach(host, brick).eval()
    except ValueError as e:  # (stored records that passed check_abi, yet do not fit: edited or another program's)
        raise BadInput(f"the brick does not attach to the host: {str(e)[:300]}",
                       "the commit is damaged or was made by other code") from None


def run_migration(ctx: Context, check: Check) -> dict:
    name = check.get("brick").removeprefix("brick/")  # (the setting may name the component whole)
    mode = check.get("mode", "bounded")
    window = check.get("window", ctx.config.window)
    # checks.run_migration has refused unknown revisions, a source without the brick and hosts
    # without a core (errors, not verdicts)
    source = resolve_relative(ctx.repo, check.get("source", "HEAD"), ctx.commit)
    hosts = [resolve_relative(ctx.repo, h, ctx.commit) for h in check.get("hosts")]
    comp = f"brick/{name}"
    inputs = {"source": source, "hosts": hosts, "window": window, "brick_tree": ctx.repo.read_commit(source)["components"][comp]}
    per_host, ok = {}, True
    for h in hosts:
        try:
            check_abi(ctx.repo.tree(h, "core"), ctx.repo.tree(source, comp))
        except AbiMismatch as e:
            per_host[h] = {"abi": e.message}
            ok = False
    if not ok:  # the note names the field, as paste does
        first = next(iter(per_host.items()))
        return result(check, "failed", {"hosts": per_host}, {}, inputs,
                      note=f"ABI contract mismatch with host {first[0]}: {first[1]['abi']}")
    if mode == "copy":
        return _copy(ctx, check, source, hosts, comp, inputs)
    tree, brick = _brick(ctx, source, name, bool(check.get("int8")))
    if mode == "function":
        return _function(ctx, check, source, hosts, brick, window, inputs)
    if mode == "exact":
        return _exact(ctx, check, source, hosts, brick, window, inputs)
    return _bounded(ctx, check, hosts, brick, window, inputs)


def _copy(ctx, check, source, hosts, comp, inputs) -> dict:
    """L0: a paste reuses the brick's tensors by id; hosts that already hold it must hold the same ids."""
    src_ids = {k: t["id"] for k, t in ctx.repo.tree(source, comp)["tensors"].items()}
    figs = {"hosts": {}}
    ok = True
    for h in hosts:
        comps = ctx.repo.read_commit(h)["components"]
        ids = {k: t["id"] for k, t in ctx.repo.read_tree(comps[comp])["tensors"].items()} if comp in comps else src_ids
        same = ids == src_ids
        figs["hosts"][h] = {"tensor_ids_equal": same, "installed": comp in comps}
        ok &= same
    figs["tensor_ids_equal"] = ok
    return result(check, "passed" if ok else "failed", figs, {"tensor_ids_equal": True}, inputs)


def _function(ctx, check, source, hosts, brick, window, inputs) -> dict:
    """L1: on equal ABI inputs (the source host's states), the brick's decoded output is
    bit-identical on every host (it is, when every host decodes through the canonical head)."""
    import torch
    from bricks import decode_delta
    data, data_id, desc = read_check_data(ctx, check, "probe")
    inputs.update(data=data_id, data_desc=desc)
    src_host = ctx.models.get(source, "core")

    def outputs(host):
        outs = []
        with torch.inference_mode():
            for _off, chunk in ev.windows(data, window):
                x = torch.frombuffer(bytearray(chunk[:-1]), dtype=torch.uint8).long().unsqueeze(0)
                if brick.brick_kind == "portable":
                    outs.append(brick(x))
                    continue
                _, abi, _ = src_host.forward_with_abi(x)
                outs.append(decode_delta(host.head.weight, brick(x, abi)))
        return torch.cat([o.reshape(-1, 256) for o in outs])

    ref = outputs(src_host)
    figs = {"hosts": {}}
    all_equal = True
    for h in hosts:
        out = outputs(ctx.models.get(h, "core"))
        same = out.shape == ref.shape and torch.equal(out.view(torch.int32), ref.view(torch.int32))
        delta = float((out.double() - ref.double()).abs().max()) if out.shape == ref.shape else None
        figs["hosts"][h] = {"identical": same, "max_abs_delta": delta}
        all_equal &= same
    figs["identical"] = all_equal
    figs["max_abs_delta"] = max((v["max_abs_delta"] or 0.0) for v in figs["hosts"].values()) if hosts else 0.0
    figs["worst_ppl_ratio"] = None
    return result(check, "passed" if all_equal else "failed", figs, {"max_abs_delta": 0.0}, inputs,
                  ev.envelope("float32", window))


def _exact(ctx, check, source, hosts, brick, window, inputs) -> dict:
    """PX: the brick's logits and PPL are identical on the source host and on every target host,
    measured on the domain data, else on the probe (`probe`, or the built-in one)."""
    if check.get("domain_data"):
        data, data_id, desc = read_check_data(ctx, check, "domain_data")
        inputs.update(domain_data=data_id, data_desc=desc)
    else:  # (recorded as the probe is: `data`, which verify reads back as `probe`)
        data, data_id, desc = read_check_data(ctx, check, "probe")
        inputs.update(data=data_id, data_desc=desc)
    ref = _attached(ctx.models.get(source, "core"), brick)
    nll_ref, count = ev.model_nll(ref, data, window)
    ppl_ref, _ = ev.ppl_bpb(nll_ref, count)
    figs = {"source_ppl": ppl_ref, "hosts": {}}
    worst_delta, all_equal, ratios = 0.0, True, []
    for h in hosts:
        model = _attached(ctx.models.get(h, "core"), brick)
        cmp = compare_logits(model, ref, data, window)
        nll, _ = ev.model_nll(model, data, window)
        ppl, _ = ev.ppl_bpb(nll, count)
        ratio = ev.ppl_ratio(nll, nll_ref, count)
        ratios.append(ratio)
        equal = cmp["differing_positions"] == 0
        all_equal &= equal
        worst_delta = max(worst_delta, cmp["max_abs_delta"] or 0.0)
        figs["hosts"][h] = {"ppl": ppl, "ppl_ratio": ratio, "max_abs_delta": cmp["max_abs_delta"],
                                 "differing_positions": cmp["differing_positions"], "logits_digest": cmp["logits_digest"]}
    figs.update(max_abs_delta=worst_delta, identical=all_equal, worst_ppl_ratio=max(ratios) if ratios else 1.0)
    passed = all_equal and all(r == 1.0 for r in ratios)
    return result(check, "passed" if passed else "failed", figs, {"max_abs_delta": 0.0, "ppl_ratio": 1.0}, inputs,
                  ev.envelope("float32", window))


def _bounded(ctx, check, hosts, brick, window, inputs) -> dict:
    """L3-L6: domain PPL ratio with/without the brick and the general PPL ratio on every host."""
    dom, dom_id, _ = read_check_data(ctx, check, "domain_data")
    gen = gen_id = None
    if check.get("general_data"):
        gen, gen_id, _ = read_check_data(ctx, check, "general_data", 0)
    inputs.update(domain_data=dom_id, general_data=gen_id)
    max_dom = float(check.get("max_domain_ratio", 0.75))
    max_gen = float(check.get("max_general_ratio", 1.05))
    figs = {"hosts": {}}
    worst_dom, worst_gen = 0.0, 0.0
    for h in hosts:
        host = ctx.models.get(h, "core")
        model = _attached(host, brick)
        row = {}
        for label, data in (("domain", dom), ("general", gen)):
            if data is None:
                continue
            nll_h, count = ev.model_nll(host, data, window)
            nll_b, _ = ev.model_nll(model, data, window)
            ppl_h, _ = ev.ppl_bpb(nll_h, count)
            ppl_b, _ = ev.ppl_bpb(nll_b, count)
            row[f"{label}_ppl_host"], row[f"{label}_ppl_with_brick"] = ppl_h, ppl_b
            row[f"{label}_ratio"] = ev.ppl_ratio(nll_b, nll_h, count)
        figs["hosts"][h] = row
        worst_dom = _worst(worst_dom, row["domain_ratio"])
        worst_gen = _worst(worst_gen, row.get("general_ratio", 0.0))
    figs["worst_domain_ratio"] = worst_dom
    if gen is not None:
        figs["worst_general_ratio"] = worst_gen
    passed = worst_dom <= max_dom and (gen is None or worst_gen <= max_gen)
    th = {"max_domain_ratio": max_dom}
    if gen is not None:
        th["max_general_ratio"] = max_gen
    return result(check, "passed" if passed else "failed", figs, th, inputs, ev.envelope("float32", window))


def _worst(a: float, b: float) -> float:
    """The larger ratio, NaN winning (max() would drop a NaN that comes second)."""
    return b if b != b or b > a else a


__all__ = ["run_migration"]

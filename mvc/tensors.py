"""The torch bridge: tensors <-> canonical blob bytes, tied-tensor detection, safe .pt import.

torch is imported inside the functions, so modules that only move bytes never pay for it.
"""
from __future__ import annotations

import json
import re
import threading

from . import safetensors_format as stf
from .errors import BadInput
from .quoting import short_repr

_ST_TO_TORCH = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64",
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


def torch_dtype(st_dtype: str):
    import torch
    return getattr(torch, _ST_TO_TORCH[st_dtype])


def st_dtype(t) -> str:
    name = str(t.dtype).replace("torch.", "")
    try:
        return _TORCH_TO_ST[name]
    except KeyError:
        hint = ("store t.int_repr() and its q_scale()/q_zero_point() (or q_per_channel_scales()) as tensors, "
                "or t.dequantize()" if getattr(t, "is_quantized", False) else
                "store torch.view_as_real(t) (its last dimension holds the real and imaginary parts)"
                if t.is_complex() else "convert it to a dtype safetensors stores, e.g. with .float()")
        raise BadInput(f"tensor dtype {t.dtype} cannot be stored in safetensors", hint) from None


def tensor_buffer(t, name: str | None = None) -> tuple[str, tuple[int, ...], memoryview]:
    """(safetensors dtype, shape, little-endian bytes) of a tensor, without copying when possible;
    BadInput naming tensor `name` for one that has no plain data to store."""
    where = "a tensor" if name is None else f"tensor {name!r}"
    try:
        return _tensor_buffer(t)
    except BadInput as e:
        raise BadInput(f"{where}: {e.message}", e.hint) from None
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:  # a tensor subclass without
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]  # storage of its own
        raise BadInput(f"{where} is a {type(t).__name__} with no plain data to store: {reason}",
                       _no_data_hint(t)) from None


def _no_data_hint(t) -> str:
    kind = type(t).__name__
    if kind == "DTensor":
        return "gather it first: state = {k: v.full_tensor() for k, v in state.items()}"
    if "Uninitialized" in kind:
        return "a lazy module's parameters exist once it has run: call the model on one input first"
    return "convert it to a plain tensor first (e.g. torch.Tensor(t) or t.clone().as_subclass(torch.Tensor))"


def _tensor_buffer(t) -> tuple[str, tuple[int, ...], memoryview]:
    import torch
    if not isinstance(t, torch.Tensor):
        raise BadInput(f"expected a tensor, got {type(t).__name__}")
    if isinstance(t, torch.nn.parameter.UninitializedTensorMixin):
        raise BadInput("an uninitialized parameter (of a lazy module) has no data yet",
                       _no_data_hint(t))
    if t.is_nested:
        raise BadInput("a nested tensor cannot be stored in safetensors", "store its components as tensors")
    if t.layout != torch.strided:
        raise BadInput(f"a {t.layout} tensor cannot be stored in safetensors", "convert it with .to_dense()")
    if t.device.type == "meta":
        raise BadInput("a tensor on the meta device has no data to store")
    _check_storage_holds(t)
    t = t.detach().resolve_conj().resolve_neg()  # lazy conjugate/negative views: materialise them
    if t.device.type != "cpu":
        t = t.cpu()
    dtype, shape = st_dtype(t), tuple(t.shape)
    flat = t.contiguous().reshape(-1)
    if flat.numel() and flat.stride(0) != 1:  # one element with a stride (e.g. complex .imag): torch
        flat = flat.clone(memory_format=torch.contiguous_format)  # contiguous, but a byte view needs stride 1
    if flat.numel() == 0:
        return dtype, shape, memoryview(b"")
    raw = flat.view(torch.uint8) if flat.element_size() > 1 or flat.dtype != torch.uint8 else flat
    return dtype, shape, memoryview(raw.numpy()).cast("B")


def _check_storage_holds(t) -> None:
    """BadInput when `t`'s storage is too small for its elements: one freed or shrunk in place
    (FSDP frees unsharded parameters so) would hand over whatever memory lies past it."""
    if t.numel() == 0:
        return
    try:
        held = t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError):
        return  # (no storage to measure, e.g. a lazy device's: what follows says whether it has data)
    last = t.storage_offset() + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    need = (last + 1) * t.element_size()
    if held < need:
        raise BadInput(f"its storage holds {held} bytes, and its {t.numel()} elements need {need}: the "
                       "storage was freed or shrunk, as FSDP does to unsharded parameters",
                       "store it while its storage holds the data: gather the full parameters first, "
                       "e.g. with FSDP's summon_full_params or a full state dict")


def load_target(device=None, dtype=None):
    """(torch.device or None, floating torch.dtype or None) for `repo.load(device=, dtype=)`, checked
    before any blob is read: a device this machine cannot use, or a dtype that is not a floating
    type (a torch.dtype or its name, e.g. "bfloat16"), is BadInput naming it."""
    import torch
    if dtype is not None:
        name = dtype.removeprefix("torch.") if isinstance(dtype, str) else None
        if name is not None:
            dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise BadInput(f"dtype must be a floating-point torch dtype (e.g. torch.bfloat16 or \"bfloat16\"), "
                           f"got {name if name is not None else dtype!r}",
                           "integer and bool tensors always keep their own dtype")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise BadInput(f"device {device!r} is not a device name: {e}", "e.g. \"cpu\" or \"cuda:0\"") from None
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, ValueError) as e:
            reason = str(e).splitlines()[0].split(". ")[0][:160]  # torch's first sentence
            raise BadInput(f"device {str(device)!r} is not available here: {reason}",
                           "load on \"cpu\", or on a device this machine has") from None
    return device, dtype


def buffer_tensor(buf, begin: int, end: int, dtype: str, shape):
    """A tensor over `buf[begin:end]` (zero-copy when `buf` is writable, e.g. a private mmap)."""
    import torch
    tdtype = torch_dtype(dtype)
    if end == begin:  # (on the CPU, as the others: not torch's default device, e.g. inside `with torch.device("meta")`)
        return torch.empty(tuple(shape), dtype=tdtype, device="cpu")
    size = tdtype.itemsize
    if begin % size == 0 and (end - begin) % size == 0:  # canonical blobs: data 8-byte aligned
        flat = torch.frombuffer(buf, dtype=tdtype, count=(end - begin) // size, offset=begin)
    else:
        flat = torch.frombuffer(buf, dtype=torch.uint8, count=end - begin, offset=begin).view(tdtype)
    return flat if len(shape) == 1 else flat.reshape(tuple(shape))


def find_aliases(state: dict) -> dict[str, str]:
    """Tensors that are the same view of the same storage: {alias: first name in sorted order}."""
    import torch
    seen: dict[tuple, str] = {}
    aliases = {}
    for name in sorted(state):
        t = state[name]
        try:
            if t.is_nested or t.layout != torch.strided or t.is_meta or t.numel() == 0:  # refused when stored
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                   t.dtype, t.device.type, t.is_conj(), t.is_neg())  # a lazy conj/neg view has other values
        except (RuntimeError, ValueError, TypeError, NotImplementedError):  # no storage of its own
            continue  # (a DTensor, a lazy module's parameter): tensor_buffer refuses it by name
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def load_pickle_state_dict(path: str, f=None) -> dict:
    """Import a PyTorch .pt/.bin file as a flat state dict with torch.load(weights_only=True) (from
    the open binary file `f` of `path` when given)."""
    import warnings

    import torch
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols and storages: not for users
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path if f is None else f, map_location="cpu", weights_only=True, mmap=False)
    except PermissionError:
        raise
    except Exception as e:  # untrusted bytes: whatever the unpickler trips on, the file is refused
        if stf.looks_like_safetensors(path):
            raise BadInput(f"refusing to import {path}: it is a safetensors file, not a torch.save pickle",
                           "rename it to .safetensors, or keep it as raw bytes by committing the folder "
                           "holding it") from None
        raise BadInput(f"refusing to import {path}: not a plain tensor checkpoint: {_load_error_reason(e)}",
                       "mvc loads .pt/.bin files with weights_only=True and never runs pickled code; "
                       "save a state dict, or convert to safetensors; a file that is no checkpoint is kept "
                       "as raw bytes by committing the folder holding it") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and set(obj) == {key} and isinstance(obj[key], dict):
            obj = obj[key]
    if optimizer_state(obj) is not None:  # an optimizer.state_dict(): stored as from memory
        return obj
    if not isinstance(obj, dict) or not obj:
        raise BadInput(f"{path} does not hold a mapping of names to tensors but "
                       f"{'an empty dict' if isinstance(obj, dict) else 'a ' + type(obj).__name__}",
                       "save model.state_dict()")
    problem = flat_state_problem(obj)
    if problem:
        raise BadInput(f"{path} does not hold a flat mapping of names to tensors: {problem}", NESTED_HINT)
    return obj


NESTED_HINT = ("mvc stores flat name -> tensor mappings: commit each state dict of a training checkpoint as "
               "its own component (-c model=... -c optimizer=...; from Python an optimizer.state_dict() "
               "commits as it is: repo.commit({'optimizer': opt.state_dict()})) and plain numbers as --metric "
               "or tensors; or keep the file as raw bytes by committing the folder holding it")


def optimizer_state(value) -> tuple[dict, dict] | None:
    """(tensors, tree metadata) of a torch optimizer's `state_dict()` ({"state": {i: {key: value}},
    "param_groups": [...]}), stored as DESIGN.md section 10 says: state tensors named
    `state.<i>.<key>`, param groups in the tree's metadata; None for anything else. Plain numbers
    in the state are stored as 0-dim tensors (floats float64), their names listed as
    `plain_state`; a value None (no tensor) by its name in `none_state`; a list or tuple of numbers as one tensor, and a list or tuple of tensors (and
    Nones: LBFGS's history) as `state.<i>.<key>.<j>` per tensor, both recorded under
    `sequence_state` ({name: {"type": "list" | "tuple"}, plus "length" and "none" positions for a
    sequence of tensors}); settings that are tuples (betas) as lists, their keys listed per group
    as `tuple_settings`: load_optimizer gives all of them back as they were (the numbers of one
    sequence as one type: a list mixing ints and floats comes back as floats). A state keyed by
    parameter names (torch.distributed.checkpoint's get_optimizer_state_dict) is stored by
    position, its keys listed in the metadata as `state_keys`, which load_optimizer maps back."""
    import torch
    if not (isinstance(value, dict) and set(value) == {"state", "param_groups"}
            and isinstance(value["state"], dict) and isinstance(value["param_groups"], list)):
        return None
    from .objects import MAX_JSON_DEPTH, nests_deeper
    keys = list(value["state"])
    named = not all(type(k) is int for k in keys)
    for k in keys if named else ():
        if type(k) is not str and type(k) is not int:
            raise BadInput(f"optimizer state key {short_repr(k)} is {_kind(k)}, neither a parameter index nor a name")
    if named and any(type(k) is int for k in keys):
        raise BadInput(f"the optimizer state's keys mix parameter indices and names, e.g. "
                       f"{short_repr(next(k for k in keys if type(k) is int))} and "
                       f"{short_repr(next(k for k in keys if type(k) is str))}", "key every parameter's state one way")
    for what, v in (("state nests", value["state"]), ("param groups nest", value["param_groups"])):
        if nests_deeper(v, MAX_JSON_DEPTH):  # (the walks below recurse: a deep one was a RecursionError)
            raise BadInput(f"the optimizer's {what} deeper than {MAX_JSON_DEPTH} levels of lists and dicts",
                           "mvc stores tensors, numbers and lists of them")
    flat, plain, sequences, nones = {}, [], {}, []

    def put(name: str, t, i, key) -> None:
        if name in flat:  # (a key "a.0" beside a list "a")
            raise BadInput(f"optimizer state {i}.{key} would be stored as {name!r}, which another value of the "
                           "state takes", "rename one of the two state keys")
        flat[name] = t

    for pos, (i, per) in enumerate(value["state"].items()):
        if not isinstance(per, dict):
            raise BadInput(f"optimizer state {i!r} is a {type(per).__name__}, not a dict of its values")
        for key, v in per.items():
            name = f"state.{pos if named else i}.{key}"
            if isinstance(v, torch.Tensor):
                put(name, v, i, key)
                continue
            if v is None:  # (SGD without momentum kept momentum_buffer None, torch <= 2.2)
                put(name, None, i, key)
                nones.append(name)
                continue
            seq = "tuple" if isinstance(v, tuple) else "list" if isinstance(v, list) else None
            if seq and v and all(x is None or isinstance(x, torch.Tensor) for x in v):  # (or all None)
                for j, x in enumerate(v):
                    if x is not None:
                        put(f"{name}.{j}", x, i, key)
                sequences[name] = {"type": seq, "length": len(v), "none": [j for j, x in enumerate(v) if x is None]}
                continue
            if seq and any(x is None or isinstance(x, torch.Tensor) for x in v):
                other = next(x for x in v if not (x is None or isinstance(x, torch.Tensor)))
                raise BadInput(f"optimizer state {i}.{key} is a {seq} mixing tensors or Nones with {_kind(other)}, "
                               f"{short_repr(other)}, which mvc does not store",
                               "it stores lists of tensors, with Nones, or lists of numbers")
            if seq and _holds(v, torch.Tensor):  # (torch.tensor would turn 1-element ones into numbers)
                raise BadInput(f"optimizer state {i}.{key} is a {seq} holding tensors in nested lists, which mvc "
                               "does not store", "it stores flat lists of tensors: flatten or stack them")
            if _holds(v, complex):  # (torch.tensor makes complex64 of it, and C128 is not stored: it would round)
                raise BadInput(f"optimizer state {i}.{key} holds a complex number ({short_repr(v)}), which would be "
                               "rounded to complex64", "store it as a complex64 tensor, or as two floats")
            try:  # floats, alone or in a list, as float64: torch's default float32 rounds 0.1
                put(name, torch.tensor(v, dtype=torch.float64 if _holds(v, float) else None, device="cpu"), i, key)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                what = ("a whole number outside int64's range" if isinstance(v, int) else
                        "not one tensor's worth of numbers (ragged, or holding other values)" if seq else
                        "neither a tensor nor a number, nor a list of them")
                raise BadInput(f"optimizer state {i}.{key} is {_kind(v)} ({short_repr(v)}), {what}",
                               "store it as a tensor (a float64 one for a large number), or keep it out of the "
                               "optimizer's state: mvc stores tensors, numbers and lists of either") from None
            if isinstance(v, (bool, int, float)):
                plain.append(name)
            elif seq:
                sequences[name] = {"type": seq}
    meta = {"param_groups": [_jsonable(g) for g in value["param_groups"]]}
    tuples = [sorted(str(k) for k, v in g.items() if isinstance(v, tuple)) if isinstance(g, dict) else []
              for g in value["param_groups"]]
    if any(tuples):
        meta["tuple_settings"] = tuples
    if plain:
        meta["plain_state"] = sorted(plain)
    if nones:
        meta["none_state"] = sorted(nones)
    for name in nones:
        del flat[name]
    if sequences:
        meta["sequence_state"] = sequences
    if named:
        meta["state_keys"] = keys
    return flat, meta


def _kind(v) -> str:
    """'a list', 'an int', ... of a value, for messages."""
    name = type(v).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _holds(value, kind) -> bool:
    """Whether a number, or a (nested) list or tuple of them, holds one of type `kind`."""
    if isinstance(value, (list, tuple)):
        return any(_holds(v, kind) for v in value)
    return isinstance(value, kind) and not isinstance(value, bool)


TENSOR_SETTING = "__tensor__"  # how a param-group setting that is a 0-dim tensor (an lr) is recorded


def _jsonable(value):
    """Param-group settings as JSON: tuples (betas) as lists, a 0-dim tensor (a tensor lr) as
    {TENSOR_SETTING: its value, "dtype": its dtype}, which `setting_value` turns back into one."""
    import torch
    if isinstance(value, dict):
        if TENSOR_SETTING in value:
            raise BadInput(f"a param-group setting uses the key {TENSOR_SETTING!r}, which records tensor settings",
                           "rename that key")
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return {TENSOR_SETTING: value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()  # (a numpy scalar, e.g. an lr a schedule computed in numpy: a plain number, as metrics)
    return value


def setting_value(value):
    """A recorded param-group setting as the optimizer had it (the inverse of _jsonable, but for
    tuples: `tuple_settings` names those, see optimizer_state)."""
    import torch
    if isinstance(value, dict):
        if (set(value) == {TENSOR_SETTING, "dtype"} and isinstance(value[TENSOR_SETTING], (int, float))
                and isinstance(getattr(torch, str(value["dtype"]), None), torch.dtype)):
            return torch.tensor(value[TENSOR_SETTING], dtype=getattr(torch, value["dtype"]), device="cpu")
        return {k: setting_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [setting_value(v) for v in value]
    return value


def flat_state_problem(state: dict) -> str | None:
    """Why `state` is not a flat mapping of string names to tensors (None when it is), naming the
    first entry that is not: a nested dict (an optimizer state, {"model": ..., "epoch": 3}) or a
    plain value."""
    import torch
    for k, v in state.items():
        if not isinstance(k, str):
            return f"key {k!r} is a {type(k).__name__}, not a string"
        if isinstance(v, torch.Tensor):
            continue
        if isinstance(v, dict):
            kind = "a state dict" if v and all(isinstance(x, torch.Tensor) for x in v.values()) else "a nested dict"
            return f"entry {k!r} is {kind}, not a tensor"
        kind = type(v).__name__
        return f"entry {k!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({str(v)[:40]}), not a tensor"
    return None


def _load_error_reason(e: Exception) -> str:
    """The sentence of a torch.load error that says what was refused, without torch's advice to
    load with weights_only=False (which mvc never does) or its requests to file issues."""
    if isinstance(e, LookupError) or not str(e).strip():  # e.g. KeyError: 101 from random bytes
        return f"unreadable pickle data: {type(e).__name__} {str(e)[:80]}".rstrip()
    text = str(e)
    if "WeightsUnpickler error:" in text:  # the line that names what was refused
        after = text.partition("WeightsUnpickler error:")[2].strip()
        reason = (after.splitlines() or [""])[0].split(". ")[0].rstrip(".")  # one line of it
        m = re.search(r"GLOBAL (torch\.nn\.modules\.\S+)", reason)
        if m:
            return f"it holds a whole model object ({m.group(1)}), not a state dict"
        if re.fullmatch(r"Unsupported operand \d+", reason):  # a pickle opcode torch.save never writes
            return f"not a file written by torch.save (pickle: {reason.lower()})"
        return reason[:200] or "unreadable pickle data"
    boilerplate = ("Check the documentation", "Please file an issue", "In PyTorch 2.6", "(1)", "(2)")
    for line in (line.strip() for line in text.splitlines()):
        line = line.removeprefix("Weights only load failed").lstrip(". ").replace("``", "")  # (its reason may follow)
        if line and not line.startswith(boilerplate):
            return line.split(". ")[0].rstrip(".")[:200]
    return type(e).__name__


def module_state(value):
    """(state dict, arch, config, abi dict-or-None, kind-or-None) of an nn.Module or mapping.

    A module with a string ``mvc_commit_refusal`` (and optionally ``mvc_commit_hint``) is refused
    with that text: it cannot be committed as one component (e.g. a host with a brick attached).
    """
    import torch
    value = _unwrapped(value, torch)
    if isinstance(value, torch.nn.Module):
        refusal = getattr(value, "mvc_commit_refusal", None)
        if isinstance(refusal, str) and refusal:
            hint = getattr(value, "mvc_commit_hint", None)
            raise BadInput(refusal, hint if isinstance(hint, str) and hint else None)
        state = _without_compiled_prefixes(value, value.state_dict(), torch)
        inner = getattr(value, "module", None)
        if getattr(value, "mvc_arch", None) is None and getattr(inner, "mvc_arch", None) is not None:
            import warnings  # (e.g. swa_utils.AveragedModel: its own tensors beside the model's)
            warnings.warn(f"this {type(value).__name__} wraps a {type(inner).__name__} of arch {inner.mvc_arch!r}: "
                          "it is committed as plain tensors named module.*, without that arch (commit its "
                          ".module to keep it)")
        problem = flat_state_problem(state)  # e.g. a get_extra_state() value among the tensors
        if problem:
            raise BadInput(f"the state dict of this {type(value).__name__} {problem}", NESTED_HINT)
        arch = getattr(value, "mvc_arch", None)
        config = getattr(value, "mvc_config", None)
        kind = getattr(value, "mvc_kind", None)
        for attr, got, ok in (("mvc_arch", arch, arch is None or isinstance(arch, str)),
                              ("mvc_kind", kind, kind is None or isinstance(kind, str)),
                              ("mvc_config", config, config is None or (isinstance(config, dict)
                                                                        and all(isinstance(k, str) for k in config)))):
            if not ok:  # what a reader rebuilds the model from: it would refuse the tree
                raise BadInput(f"{type(value).__name__}.{attr} is a {type(got).__name__}: it must be "
                               + ("a dict with string keys" if attr == "mvc_config" else "a string") + " or None")
        spec = getattr(value, "abi_spec", None)
        abi = None
        if spec is not None and not isinstance(getattr(spec, "hash", None), str):
            raise BadInput(f"{type(value).__name__}.abi_spec is a {type(spec).__name__} without a text .hash",
                           "set abi_spec to an ABI spec, a cores.abi.AbiSpec, or None")
        if spec is not None:
            abi = {"hash": spec.hash, "spec": spec.to_dict() if hasattr(spec, "to_dict") else None}
        return state, arch, config, abi, kind
    if isinstance(value, dict):
        if optimizer_state(value) is not None:
            return value, None, None, None, None  # (build_tree flattens it)
        problem = flat_state_problem(value)
        if problem:
            raise BadInput(f"state dict {problem}", NESTED_HINT)
        return value, None, None, None, None
    raise BadInput(f"cannot commit a {type(value).__name__}",
                   "pass a state dict, an nn.Module or a file/directory path")


def _unwrapped(value, torch):
    """The model inside the wrappers that add nothing to its state but a name prefix: torch.compile's
    (`_orig_mod.`), and DistributedDataParallel's and DataParallel's (`module.`) around a model with
    an arch, so that it is committed under the names its builder makes, with its arch and config (a
    plain module inside them keeps `module.`: loaded back into the wrapper, the names fit)."""
    while True:
        if type(value).__name__ == "OptimizedModule" and isinstance(getattr(value, "_orig_mod", None), torch.nn.Module):
            value = value._orig_mod
        elif isinstance(value, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) \
                and getattr(_unwrapped(value.module, torch), "mvc_arch", None) is not None:
            value = value.module
        else:
            return value


def _without_compiled_prefixes(module, state: dict, torch) -> dict:
    """`state` with the `_orig_mod.` that submodules compiled one by one (`blocks[i] =
    torch.compile(block)`, nested ones too) put into its names taken out, for a model with an arch:
    the names its builder makes (a plain module's stay: loaded back into it, they fit)."""
    if getattr(module, "mvc_arch", None) is None:
        return state
    marks = sorted((f"{name}._orig_mod." for name, m in module.named_modules()
                    if name and type(m).__name__ == "OptimizedModule" and isinstance(getattr(m, "_orig_mod", None), torch.nn.Module)),
                   key=len, reverse=True)  # (inner ones first: their names hold the outer ones')
    if not marks:
        return state
    out = {}
    for key, t in state.items():
        for mark in marks:
            if key.startswith(mark):
                key = mark[:-len("_orig_mod.")] + key[len(mark):]
        out[key] = t
    return out


def is_torch_value(value) -> bool:
    """True for an nn.Module or a mapping of tensors, without importing torch for other values."""
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(value, (torch.nn.Module, torch.Tensor)) or (
        isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()))


BUILD_ERRORS = (TypeError, ValueError, KeyError, OverflowError, AttributeError)


def match_stored_dtypes(model, state: dict) -> None:
    """Give the freshly built `model` the floating dtypes its committed tensors have (it is built
    in the default dtype, and load_state_dict would upcast a bfloat16 model into it, silently),
    tensor by tensor. What was not committed (non-persistent buffers) follows the model only from
    the default dtype, and only when every committed floating tensor has one dtype (a model cast
    as a whole): a buffer its builder made float64 or complex (rotary frequencies) keeps that."""
    import torch
    floating = {t.dtype for t in state.values() if t.is_floating_point()}
    whole = floating.pop() if len(floating) == 1 else None
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        stored = state.get(name)
        want = stored.dtype if stored is not None and stored.is_floating_point() else \
            whole if stored is None and t.dtype == torch.get_default_dtype() else None
        if want is not None and t.is_floating_point() and t.dtype != want:
            t.data = t.data.to(want)


def meta_state(make) -> dict | None:
    """The state dict of the model `make()` builds, built on torch's meta device (it allocates
    nothing); None when the builder fails there (a bad config, or one that needs real tensors, e.g.
    through numpy: the real build decides, its errors mapped by the caller)."""
    import torch
    try:
        with torch.device("meta"):
            return dict(make().state_dict())
    except Exception:  # noqa: BLE001 (see above)
        return None


def check_fits_record(built: dict | None, stored: dict, arch, what: str, hint: str | None = None) -> None:
    """Refuse (BadInput) tensors (`stored`: name -> something with a "shape") that are not those
    the recorded arch and config build (`built`, see built_shapes: names and shapes): a module
    committed with a tensor its builder does not make (a buffer registered after the build) can
    never be rebuilt, and a paste would spread it to other hosts. Nothing is refused when the
    builder could not be run here (`built` None)."""
    if built is None:
        return
    missing = sorted(set(built) - set(stored))
    extra = sorted(set(stored) - set(built))
    shapes = sorted(n for n in set(built) & set(stored) if built[n] != list(stored[n]["shape"]))
    if missing or extra or shapes:
        parts = [f"{label} {', '.join(repr(n) for n in names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                 for label, names in (("no tensor", missing), ("an extra tensor", extra), ("another shape of", shapes))
                 if names]
        raise BadInput(f"{what} does not fit its recorded arch {arch!r} and config: it has " + "; ".join(parts),
                       hint or "it cannot be rebuilt from its record: commit the module as its arch builds "
                       "it, with no tensors added after the build")


def built_shapes(make) -> dict | None:
    """{name: shape as a list} of the state dict `make()` builds on the meta device (see
    meta_state), or None when it cannot be built there."""
    state = meta_state(make)
    return None if state is None else {n: list(t.shape) for n, t in state.items()}


def check_module_fits(arch, config, state: dict, name: str) -> None:
    """Refuse (BadInput) to commit a module whose tensors are not what its `mvc_arch` and
    `mvc_config` build (see check_fits_record): load_model, paste and CI rebuild it from that
    record. Nothing is checked where the arch is not installed. The builder and the shapes it makes
    are kept per (arch, config), so a training loop committing one model builds it once; tensors of
    other shapes are then tried as load_model would load them (`loads_on_meta`: a model may size a
    tensor by its data, as bpe-transformer its trained tokenizer)."""
    if not isinstance(config, dict):
        return
    key = (arch, json.dumps(config, sort_keys=True, default=repr))
    built = _BUILT.get(key, _BUILT)
    if built is _BUILT:  # (finding the builder reads every installed package's entry points: once)
        found = recorded_builder({"arch": arch, "config": config})
        built = None if found is None else (found, built_shapes(lambda: found[0](_copied(found[1]))))
        with _BUILT_LOCK:
            _BUILT[key] = built
            for old in list(_BUILT)[:-8]:
                _BUILT.pop(old, None)
    if built is None or built[1] is None:
        return
    (builder, cfg), shapes = built
    stored = {n: {"shape": list(t.shape)} for n, t in state.items()}
    if set(stored) == set(shapes) and all(shapes[n] == stored[n]["shape"] for n in shapes):
        return
    seen = (key, frozenset((n, tuple(t.shape), t.dtype) for n, t in state.items()))
    if seen in _FITTING:
        return
    if loads_on_meta(lambda: builder(_copied(cfg)), {n: (t.shape, t.dtype) for n, t in state.items()}):
        with _BUILT_LOCK:
            if len(_FITTING) >= 64:
                _FITTING.clear()
            _FITTING.add(seen)  # (a training loop's next commit has these shapes again)
        return
    check_fits_record(shapes, stored, arch, f"component {name!r}",
                      "load_model, paste and CI could never rebuild it from its record: commit the module "
                      "as its arch builds it (no tensors added or reshaped after the build), or commit "
                      "its state_dict() as plain tensors")


_BUILT: dict = {}  # (arch, config JSON) -> ((builder, config), {name: shape} it makes or None) or None
_FITTING: set = set()  # (key, the names, shapes and dtypes) that loads_on_meta took
_BUILT_LOCK = threading.Lock()


def _copied(config: dict) -> dict:
    return json.loads(json.dumps(config))  # (a builder may change the config it is given)


def loads_on_meta(make, stored: dict) -> bool:
    """Whether the model `make()` builds takes tensors of the `stored` {name: (shape, torch dtype)}
    through its own load_state_dict (strict, with its load hooks), all on the meta device."""
    import torch
    try:
        with torch.device("meta"):
            model = make()
            fake = {n: torch.empty(tuple(shape), dtype=dtype) for n, (shape, dtype) in stored.items()}
        model.load_state_dict(fake, strict=True)
    except Exception:  # noqa: BLE001 (missing or unexpected names, shapes it refuses, a build it cannot do)
        return False
    return True


def precheck_build(make, tree: dict, what: str) -> None:
    """Refuse (BadInput) to build a model from a stored tree whose recorded arch config is
    unusable or far larger than the tensors it stores: the config is untrusted (a remote may
    send any), and a `d_model` of 1e8 would allocate tens of gigabytes before any check. `make()`
    builds the model; it runs once on torch's meta device, which allocates nothing. A builder
    that fails there is left to the real build (whose BUILD_ERRORS the caller maps to BadInput)."""
    import math
    stored = sum(math.prod(t["shape"]) for t in tree["tensors"].values())
    built = meta_state(make)
    if built is None:
        return
    planned = sum(v.numel() for v in built.values())
    if planned > 2 * stored + (1 << 20):
        raise BadInput(f"{what} records a config of {planned:,} parameters, but stores {stored:,}",
                       "the commit is damaged or was made by other code; load its tensors with repo.load()")


def recorded_builder(tree: dict):
    """(the builder of a tree's recorded arch, a copy of its config), or None when the tree records
    none or its arch is not installed here (what paste's checks cannot tell, they leave alone)."""
    arch, config = tree.get("arch"), tree.get("config")
    if not isinstance(arch, str) or not isinstance(config, dict):
        return None
    try:
        config = _copied(config)
    except (TypeError, ValueError, RecursionError):  # (not JSON: the tree refuses it, saying why)
        return None
    try:
        return arch_builder(arch), config
    except Exception:  # noqa: BLE001 (not installed, or an entry point that fails to load: what
        return None  # load_model says; a check that cannot run here is left alone)


def arch_builder(arch: str):
    """The `mvc.archs` entry point named `arch` (how committed models are rebuilt)."""
    from importlib.metadata import entry_points
    eps = {ep.name: ep for ep in entry_points(group="mvc.archs")}
    if arch not in eps:
        raise BadInput(f"no model architecture {arch!r} is registered",
                       "install the package that provides it, in the entry point group mvc.archs")
    return eps[arch].load()

"""Pipeline files (TOML): streams, ordered stages with budgets, gates and fallbacks, and profiles.

Everything is validated before any training starts; errors name the file, the stage and the key.

    [pipeline]
    name = "demo"                        # stage branches are <name>/<stage> (paste: <name>/<stage>/<host>)

    [streams.general]                    # a named byte stream: a file, or a builder function
    builder = "examples.data:general_stream"
    args = { size = 400000, source = "pydoc", allow_short = true }
    holdout = 0.05                       # the last 5% is held out for evaluation

    [[stages]]
    name = "host-a"
    kind = "train-core"                  # train-core | train-brick | paste | int8 | evaluate | compress | k0
    arch = "layercake"
    config = "tiny"
    seed = 0
    stream = "general"
    steps = 200
    checkpoint_every = 50
    gates = [{ metric = "heldout_bpb", max = 5.0 }, { plateau = 6.0, patience = 3 }]
    fallback = { lr_scale = 0.5, extra_steps = 100, retries = 2 }

    [profile.tiny.stages.host-a]         # `mvc run FILE --profile tiny` overrides stage keys
    steps = 50
"""
from __future__ import annotations

import copy
import importlib
import math
import os
import stat
import sys
import tomllib
from dataclasses import dataclass, field

from mvc.errors import ConfigError, MvcError
from mvc.objects import check_component_name, check_new_ref_name, check_ref_name

from . import config as cicfg

STAGE_KINDS = ("train-core", "train-brick", "paste", "int8", "evaluate", "compress", "k0")
COMMON_KEYS = {"name", "kind", "gates", "fallback", "checks", "branch", "every_checkpoint_checks", "optional"}
# what only some kinds evaluate: paste and int8 stages run no checks or gates (nor retry), an
# evaluate stage runs its checks once (no gates, no retry); set there, they were accepted and ignored
NOT_EVALUATED = {"paste": {"gates", "checks", "fallback", "every_checkpoint_checks"},
                 "int8": {"gates", "checks", "fallback", "every_checkpoint_checks"},
                 "evaluate": {"gates", "fallback", "every_checkpoint_checks"}}
TRAIN_KEYS = {"steps", "wall_seconds", "checkpoint_every", "lr", "batch_size", "seq_len", "seed", "stream",
              "eval_bytes"}
KIND_KEYS = {
    "train-core": TRAIN_KEYS | {"arch", "config", "overrides", "init"},
    "train-brick": TRAIN_KEYS | {"host", "brick", "brick_name", "options", "general_stream"},
    "paste": {"source", "brick_name", "into", "int8", "as_name"},
    "int8": {"source", "brick_name", "as_name"},
    "evaluate": {"source"},
    "compress": TRAIN_KEYS | {"source", "method", "rank", "ratio", "components", "meta_components", "layers",
                              "freeze_centres", "recovery_steps"},
    "k0": TRAIN_KEYS | {"source", "blend", "threshold", "k0_stream"},
}
GATE_KEYS = {"metric", "max", "min", "plateau", "patience", "check", "at"}
FALLBACK_KEYS = {"lr_scale", "extra_steps", "retries", "set"}
STREAM_KEYS = {"builder", "args", "file", "holdout"}
DEFAULT_HOLDOUT = 0.05  # the share of a stream held out for evaluation (its tail)
STREAM_SETTINGS = ("stream", "general_stream", "k0_stream")  # the stage settings naming a stream


@dataclass
class Stage:
    name: str
    kind: str
    settings: dict
    gates: list[dict] = field(default_factory=list)
    fallback: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)   # semantic_ci.config.Check, inline
    pipeline_name: str = ""  # (set where a stage is read alone: defined_stages)

    def get(self, key, default=None):
        return self.settings.get(key, default)


@dataclass
class Pipeline:
    name: str
    path: str
    streams: dict[str, dict]
    stages: list[Stage]
    profile: str | None = None

    @property
    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"{self.path}: no stage named {name!r}", f"stages: {', '.join(s.name for s in self.stages)}")


MAX_PIPELINE_BYTES = 1 << 20  # what verify reads of the pipeline file a certificate names
STAGE_MARK = ": stage "  # how a stage's certificates name their definition: "FILE[ (profile P)]: stage NAME"


def stage_source(pipeline: Pipeline, stage_name: str, root: str) -> str:
    """What a stage's certificates record as their configuration: the pipeline file (relative to
    the repository root `root` when inside it, where `mvc verify` reads it), its profile, the stage."""
    path = os.path.abspath(pipeline.path)
    inside = os.path.relpath(path, os.path.abspath(root))
    shown = path if inside == os.pardir or inside.startswith(os.pardir + os.sep) else inside
    return f"{shown} ({f'profile {pipeline.profile}' if pipeline.profile else NO_PROFILE}){STAGE_MARK}{stage_name}"


NO_PROFILE = "no profile"


def _named(stage: Stage, pipeline_name: str) -> Stage:
    stage.pipeline_name = pipeline_name  # (what verify binds a certificate's commit to)
    return stage


def defined_stages(source: str, root: str) -> tuple[list[Stage], str]:
    """The stage a certificate's configuration (`stage_source`) names, as its pipeline file defines it
    now: ([stage], file), or ([], why) when it cannot be read there. The file's shapes and values are
    checked, not what it names outside itself (its streams and builders: verify re-runs from
    recorded ids). A label an older mvc wrote ("FILE: stage NAME") says nothing of the profile the
    run used: the stage as each profile defines it is given (none first), for verify to pick the
    one the certificate's bounds were set by (any of them is a definition the user's file holds)."""
    file, _, name = source.rpartition(STAGE_MARK)
    profiles: list[str | None] | None = [None]
    if file.endswith(f" ({NO_PROFILE})"):
        file = file[:-len(NO_PROFILE) - 3]
    elif file.endswith(")") and " (profile " in file:
        file, _, profile = file[:-1].rpartition(" (profile ")
        profiles = [profile]
    else:
        profiles = None  # (an older mvc's label)
    path = file if os.path.isabs(file) else os.path.join(root, file)
    try:  # (a certificate is a claim from anywhere: what it names may be a pipe, a device, a huge file)
        if not stat.S_ISREG(os.stat(path).st_mode) or os.path.getsize(path) > MAX_PIPELINE_BYTES:
            return [], f"{file}: not a pipeline file (not a regular file of at most {MAX_PIPELINE_BYTES} bytes)"
        with open(path, "rb") as f:
            doc = tomllib.loads(f.read(MAX_PIPELINE_BYTES).decode("utf-8"))
        if profiles is not None:
            pipeline = parse(doc, file, profiles[0])
            return [_named(pipeline.stage(name), pipeline.name)], file
        stages, why = [], None  # (an older label: a profile that cannot be read, or lacks the stage,
        for profile in [None, *(doc.get("profile") if isinstance(doc.get("profile"), dict) else ())]:
            try:                # is not the one the run used)
                pipeline = parse(doc, file, profile)
                stages.append(_named(pipeline.stage(name), pipeline.name))
            except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as e:
                why = why or (e.message if isinstance(e, ConfigError) else f"{file}: {e}")
        return (stages, file) if stages else ([], why)
    except (OSError, ConfigError, tomllib.TOMLDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        why = e.message if isinstance(e, ConfigError) else (
            f"{file}: cannot read it ({e.strerror or e})" if isinstance(e, OSError) else
            f"{file}: invalid TOML ({e})" if isinstance(e, (tomllib.TOMLDecodeError, UnicodeDecodeError)) else
            f"{file}: cannot be read as a pipeline file ({e})")
        return [], why


def _deep_merge(base: dict, over: dict) -> dict:
    """Profile overrides: tables merge key by key; arrays of named tables (checks) merge by name."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        elif _named_tables(v) and _named_tables(out.get(k)):
            merged = {t["name"]: t for t in out[k]}
            for t in v:
                merged[t["name"]] = _deep_merge(merged.get(t["name"], {}), t)
            out[k] = list(merged.values())
        else:
            out[k] = copy.deepcopy(v)
    return out


def _named_tables(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                   for t in v)


def load(path: str, profile: str | None = None) -> Pipeline:
    """Read, parse and validate a pipeline file, including what it names outside itself (stream
    files and builders, architectures, presets, brick kinds): nothing has trained when this fails."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a pipeline file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML (not UTF-8: {e})") from None
    pipeline = parse(doc, path, profile)
    validate_environment(pipeline)
    return pipeline


# -- shape and type checks -------------------------------------------------------------------------
STR_KEYS = ("arch", "brick", "brick_name", "as_name", "method", "stream", "general_stream", "k0_stream", "host",
            "source", "init", "branch")
TABLE_KEYS = ("overrides", "options")
BOOL_KEYS = ("int8", "freeze_centres", "optional")
POSITIVE_INT_KEYS = ("steps", "checkpoint_every", "batch_size", "seq_len", "eval_bytes", "rank", "components",
                     "meta_components", "recovery_steps")
NUMBER_KEYS = ("ratio", "blend", "threshold")
AT_LEAST_TWO_KEYS = ("seq_len", "eval_bytes")  # (positive integers, as above)
MAX_COUNT = 1 << 40  # steps, sizes and retries above this are typos (and steps + extra_steps overflowed int64)


def _type_name(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__) + f" ({v!r})"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _tables_of_tables(table: dict, where: str, err) -> None:
    for name, value in table.items():
        if not isinstance(value, dict):
            raise err(f"{where}.{name}", f"must be a table, got {_type_name(value)}")


def _check_settings(err, where: str, kind: str, settings: dict, streams: dict) -> None:
    """The types and ranges of a stage's settings (also of a fallback's `set`)."""
    for key in STR_KEYS:
        if key in settings and (not isinstance(settings[key], str) or not settings[key]):
            raise err(f"{where}.{key}", f"must be a non-empty string, got {_type_name(settings[key])}")
    if "config" in settings and not isinstance(settings["config"], (str, dict)):
        raise err(f"{where}.config", f"must be a preset name or a table, got {_type_name(settings['config'])}")
    for key in TABLE_KEYS:
        if key in settings and not isinstance(settings[key], dict):
            raise err(f"{where}.{key}", f"must be a table, got {_type_name(settings[key])}")
    for key in BOOL_KEYS:
        if key in settings and not isinstance(settings[key], bool):
            raise err(f"{where}.{key}", f"must be true or false, got {_type_name(settings[key])}")
    for key in POSITIVE_INT_KEYS + ("seed",):
        if key in settings and (isinstance(settings[key], bool) or not isinstance(settings[key], int)
                                or settings[key] < (0 if key == "seed" else 1)):
            raise err(f"{where}.{key}", f"must be a positive integer, got {settings[key]!r}")
        if key in POSITIVE_INT_KEYS and key in settings and settings[key] > MAX_COUNT:
            raise err(f"{where}.{key}", f"must be at most {MAX_COUNT:,}, got {settings[key]!r}")
    # a window of one byte predicts nothing and one held-out byte measures nothing: the trainers refuse
    # both, which was found only once every stage before this one had trained (h91)
    for key in AT_LEAST_TWO_KEYS:
        if settings.get(key) == 1:
            raise err(f"{where}.{key}", "must be at least 2, got 1")
    for key in ("lr", "wall_seconds"):
        if key in settings and (not _is_number(settings[key]) or not settings[key] > 0
                                or not math.isfinite(settings[key])):
            raise err(f"{where}.{key}", f"must be a positive number, got {settings[key]!r}")
    for key in NUMBER_KEYS:
        if key in settings and (not _is_number(settings[key]) or not math.isfinite(settings[key])):
            raise err(f"{where}.{key}", f"must be a finite number, got {settings[key]!r}")
    if "branch" in settings:
        try:
            check_new_ref_name(settings["branch"])
        except Exception:
            raise err(f"{where}.branch", f"{settings['branch']!r} cannot name a branch") from None
    for key in STREAM_SETTINGS:
        if key in settings and settings[key] not in streams:
            raise err(f"{where}.{key}", f"no stream {settings[key]!r} (have: {', '.join(streams) or 'none'})")


# compress method -> the setting that is its own budget (else `ratio`); "meta" needs none on a core
# already compressed to L1 layers (stage:<a compress stage>), which it converts to L2
COMPRESS_BUDGET = {"harmonic": "components", "meta": "components", "lowrank": "rank"}


def _check_kind_settings(err, where: str, kind: str, settings: dict) -> None:
    """What a compress or k0 stage would refuse once the stages before it had trained: a compress
    stage's method, budget and layer patterns' type; a k0 stage's blend share. `settings` are a
    stage's own, or those a fallback runs with (its `set` over them)."""
    if kind == "k0" and "blend" in settings and not 0 <= settings["blend"] <= 1:
        raise err(f"{where}.blend", f"must lie in [0, 1] (the share of K0 in a blended row), got {settings['blend']!r}")
    if kind != "compress":
        return
    method = settings.get("method", "harmonic")
    if method not in COMPRESS_BUDGET:
        raise err(f"{where}.method", f"unknown method {method!r} (known: {', '.join(COMPRESS_BUDGET)})")
    own = COMPRESS_BUDGET[method]
    if method != "meta" and own not in settings and "ratio" not in settings:  # (meta: see _check_compress)
        raise err(f"{where}.{own}", f"a {method} compression needs a budget: {own} or ratio")
    layers = settings.get("layers")
    if layers is not None and not (isinstance(layers, str) and layers) and not (
            isinstance(layers, list) and layers and all(isinstance(x, str) and x for x in layers)):
        raise err(f"{where}.layers", f"must be a layer name or pattern, or a non-empty list of them, got "
                                     f"{_type_name(layers)}")


def _check_stage_ref(err, where: str, value, results: list[str]) -> None:
    if isinstance(value, str) and value.startswith("stage:") and value[6:] not in results:
        raise err(where, f"{value} must name an earlier stage (earlier: {', '.join(results) or 'none'})")


def _check_refs_in(err, where: str, value, results: list[str], streams: dict) -> None:
    """`stage:NAME` and `stream:NAME` inside a check's parameters (also inside lists)."""
    if isinstance(value, list):
        for v in value:
            _check_refs_in(err, where, v, results, streams)
    elif isinstance(value, str) and value.startswith("stage:"):
        _check_stage_ref(err, where, value, results)
    elif isinstance(value, str) and value.startswith("stream:") and value[7:] not in streams:
        raise err(where, f"{value}: no such stream (have: {', '.join(streams) or 'none'})")


# -- what the file names outside itself ------------------------------------------------------------------
def stream_path(pipeline: "Pipeline", spec: dict) -> str:
    f = spec["file"]
    return f if os.path.isabs(f) else os.path.join(pipeline.base_dir, f)


def resolve_builder(pipeline: "Pipeline", spec: str):
    """The callable named by a stream's `builder = "module:function"` (searched next to the
    pipeline file and in its parent, so examples/x.toml finds examples.data). Those folders are
    searched first, but mvc's own packages are imported before: a folder of the user's named like
    one of them (kernels, cores) must not replace it. A pipeline file is code: its builders run."""
    importlib.import_module("bricks")  # (and so cores and kernels, what a pipeline runs on) first
    mod, _, fn = spec.partition(":")
    root = os.path.dirname(pipeline.base_dir)  # examples/x.toml -> the project root
    for p in (root, pipeline.base_dir):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        func = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{pipeline.path}: cannot import stream builder {spec!r} ({e})") from None
    except (Exception, SystemExit) as e:  # the module itself failed (or called sys.exit) while importing
        from .models import raised
        raise ConfigError(f"{pipeline.path}: cannot import stream builder {spec!r} "
                          f"(while importing {mod}, {raised(e)})") from None
    if not callable(func):
        raise ConfigError(f"{pipeline.path}: stream builder {spec!r} is not a function")
    return func


def validate_environment(pipeline: "Pipeline") -> None:
    """Checks that need more than the file: stream files exist, builders import, architectures
    and presets are known. Raises ConfigError naming the file and the key."""
    path = pipeline.path
    for name, spec in pipeline.streams.items():
        if "file" in spec:
            f = stream_path(pipeline, spec)
            if not os.path.isfile(f):
                raise ConfigError(f"{path}: streams.{name}.file: no such file {spec['file']!r}",
                                  f"looked for {f}")
        else:
            try:
                resolve_builder(pipeline, spec["builder"])
            except ConfigError as e:
                raise ConfigError(f"{path}: streams.{name}.builder: {e.message.removeprefix(path + ': ')}") from None
    for stage in pipeline.stages:
        for key in ("brick_name", "as_name"):  # they become component names brick/<name>
            if isinstance(stage.get(key), str):
                try:
                    check_component_name(f"brick/{stage.get(key)}", "brick name")
                except MvcError as e:
                    raise ConfigError(f"{path}: stage {stage.name}.{key}: {e.message}") from None
        if stage.kind == "train-core":
            _check_core_config(pipeline, stage)
            fb_set = stage.fallback.get("set") or {}
            if {"arch", "config", "overrides"} & set(fb_set):  # a retry runs with these replacing the stage's
                _check_core_config(pipeline, Stage(stage.name, stage.kind, {**stage.settings, **fb_set}),
                                   ".fallback.set")
        elif stage.kind == "train-brick":
            from bricks.api import KINDS
            fb_set = stage.fallback.get("set") or {}
            for where, run_as in (("", stage), (".fallback.set", Stage(stage.name, stage.kind, {**stage.settings,
                                                                                                  **fb_set}))):
                if where and not {"brick", "options", "seq_len"} & set(fb_set):  # (a retry builds as the stage)
                    continue
                kind = run_as.get("brick", "sparse")
                if kind not in KINDS and kind not in KINDS.values():
                    raise ConfigError(f"{path}: stage {stage.name}{where}.brick: unknown brick kind {kind!r}",
                                      f"known: {', '.join(KINDS)}")
                _check_brick_options(pipeline, run_as, kind, where)
                _check_brick_window(pipeline, run_as, kind, where)
        _check_named_components(pipeline, stage)
        if stage.kind in ("paste", "int8"):
            _check_source_brick(pipeline, stage)
        if stage.kind == "paste":
            _check_paste_abi(pipeline, stage)
        elif stage.kind == "k0":
            _check_k0_source(pipeline, stage)
        elif stage.kind == "compress":
            _check_compress(pipeline, stage)


def _check_brick_window(pipeline: "Pipeline", stage: Stage, kind: str, where: str = "") -> None:
    """A sparse brick's router reads whole patches: a seq_len shorter than the canonical ABI's patch
    was refused by its trainer, after the stages before it had trained (h94). `stage` as it runs
    (its fallback's set over it, named by `where`)."""
    from cores.abi import AbiSpec
    patch = AbiSpec.__dataclass_fields__["patch_bytes"].default
    seq_len = stage.get("seq_len")
    if kind in ("sparse", "sparse-brick") and isinstance(seq_len, int) and not isinstance(seq_len, bool) \
            and seq_len < patch:
        raise ConfigError(f"{pipeline.path}: stage {stage.name}{where}.seq_len: must be at least {patch} for a "
                          f"sparse brick (its router reads whole {patch}-byte patches), got {seq_len}")


def _check_brick_options(pipeline: "Pipeline", stage: Stage, kind: str, where: str = "") -> None:
    """Build the stage's brick, for a tiny host, on the meta device: an unknown option or one of
    the wrong type fails here, before any stage trains (it used to fail after the host stages).
    `stage` as it runs (its fallback's set over it, named by `where`)."""
    options = stage.get("options") or {}
    if not options:
        return
    import torch

    import bricks
    import cores
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            host = cores.build("layercake", config="tiny")
            bricks.build(kind, host=host, seed=0, **options)
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"{pipeline.path}: stage {stage.name}{where}.options: {msg}") from None
    except Exception:  # noqa: BLE001 (a brick that cannot build on the meta device: training will tell)
        return


def _check_core_config(pipeline: "Pipeline", stage: Stage, suffix: str = "") -> None:
    """Build the stage's core on the meta device (no memory, no RNG): an unknown arch, preset or
    override field fails here, before anything trains (`suffix` names a fallback's settings)."""
    import torch

    import cores
    from cores import registry
    where = f"{pipeline.path}: stage {stage.name}{suffix}"
    arch = stage.get("arch")
    try:
        registry.builder(arch)
    except KeyError:
        raise ConfigError(f"{where}.arch: unknown architecture {arch!r}",
                          f"known: {', '.join(a for a in registry.available() if 'brick' not in a)}") from None
    config, seed = stage.get("config", "tiny"), core_seed(stage.settings)
    for key, overrides in (("config", {}), ("overrides", stage.get("overrides", {}))):
        if key == "overrides" and not overrides:
            break
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                cores.build(arch, config=config, **seed, **overrides)
        except (ValueError, TypeError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ConfigError(f"{where}.{key}: {msg}") from None
        except Exception:  # an arch that cannot build on the meta device: the real build will tell
            return


def _referenced_stage(pipeline: "Pipeline", ref) -> Stage | None:
    """The stage a `stage:NAME` reference names; None for a revision or an unknown stage (which
    its own check names)."""
    if not (isinstance(ref, str) and ref.startswith("stage:")):
        return None
    try:
        return pipeline.stage(ref[6:])
    except ConfigError:
        return None


def _stage_core(pipeline: "Pipeline", ref, through: tuple = ("train-brick",)):
    """The core a `stage:NAME` reference makes, as a train-core stage builds it (on the meta
    device where it can); None when it cannot be known here (a revision, another stage kind).
    `through`: stage kinds that stand for the core of the stage they name (a train-brick stage
    for its host; a compress or k0 stage for its source, whose byte embedding it keeps)."""
    import torch
    import cores
    stage = _referenced_stage(pipeline, ref)
    if stage is None:
        return None
    if stage.kind in through:
        return _stage_core(pipeline, stage.get("host" if stage.kind == "train-brick" else "source"), through)
    if stage.kind != "train-core":
        return None
    args = dict(config=stage.get("config", "tiny"), **core_seed(stage.settings), **(stage.get("overrides") or {}))
    core = None
    for device in ("meta", "cpu"):  # a legacy head's spec hashes its initial weights: those need a real build
        try:
            with torch.random.fork_rng(devices=[]), torch.device(device):
                core = cores.build(stage.get("arch"), **args)
            break
        except Exception:  # (its own check names what is wrong with its settings)
            continue
    return core


def _stage_abi(pipeline: "Pipeline", ref) -> dict | None:
    """{"hash", "spec"} of the ABI of the core a `stage:NAME` reference makes (see _stage_core)."""
    spec = getattr(_stage_core(pipeline, ref), "abi_spec", None)
    return {"hash": spec.hash, "spec": spec.to_dict()} if spec is not None else None


def _check_k0_source(pipeline: "Pipeline", stage: Stage) -> None:
    """K0 blends into a LayerCake core's byte embedding: a source stage making another arch
    failed with an AttributeError once every earlier stage had trained."""
    source = stage.get("source")
    core = _stage_core(pipeline, source, through=("compress", "k0"))
    if core is not None and not hasattr(core, "byte_emb"):
        raise ConfigError(f"{pipeline.path}: stage {stage.name}.source: {source} makes a {type(core).__name__}, "
                          "which has no byte embedding for K0 to blend into", "K0 works on LayerCake cores")


def _check_compress(pipeline: "Pipeline", stage: Stage) -> None:
    """What a compress stage's source decides, checked for its own settings and for those a
    fallback runs with: each layer pattern must name a layer of the source's core, and a "meta"
    compression of a dense core needs a budget (both were found only after the earlier stages had
    trained). The source's core is known when a train-core stage (through k0 stages) makes it;
    a compressed core's layers differ."""
    from cores.convert import linear_names
    source = stage.get("source")
    core = _stage_core(pipeline, source, through=("k0",))  # None: a revision, or compressed already
    runs = [("", stage.settings)] + ([(".fallback.set", {**stage.settings, **stage.fallback["set"]})]
                                     if stage.fallback.get("set") else [])
    for suffix, settings in runs:
        where = f"{pipeline.path}: stage {stage.name}{suffix}"
        if settings.get("method") == "meta" and core is not None and not {"components", "ratio"} & set(settings):
            raise ConfigError(f"{where}.components: a meta compression of {source}'s dense core needs a budget: "
                              "components or ratio", "it needs none only on a compressed core's L1 layers")
        layers = settings.get("layers")
        for pattern in ([layers] if isinstance(layers, str) else layers or []) if core is not None else []:
            if not linear_names(core, include=[pattern]):
                raise ConfigError(f"{where}.layers: {pattern!r} names no linear layer of {source}'s core",
                                  "its linear layers: " + ", ".join(linear_names(core)[:12]))


def stage_brick(pipeline: "Pipeline", ref) -> str | None:
    """The brick a `stage:NAME` reference's commits hold: a train-brick stage's brick_name, an
    int8 stage's as_name (else <brick_name>-int8); None when it cannot be known here."""
    source = _referenced_stage(pipeline, ref)
    if source is None:
        return None
    if source.kind == "train-brick":
        return source.get("brick_name")
    if source.kind == "int8":  # (what stages.int8 commits: as_name, else <brick_name>-int8)
        return source.get("as_name") or f"{source.get('brick_name')}-int8"
    return None


TRAINED = ("optimizer", "train_state")  # what every training stage's commits hold beside the model


def stage_components(pipeline: "Pipeline", ref, depth: int = 0) -> tuple[set[str], bool] | None:
    """(components the commits of a `stage:NAME` reference hold, whether that is all of them: a
    stage branch starting at a revision holds that revision's too); None for a revision, or a
    stage whose commits cannot be told here (paste, evaluate)."""
    stage = _referenced_stage(pipeline, ref)
    if stage is None or depth > len(pipeline.stages):
        return None

    def on(base_ref, own: set[str]) -> tuple[set[str], bool]:
        base = stage_components(pipeline, base_ref, depth + 1) if base_ref else (set(), True)
        return (own | base[0], base[1]) if base is not None else (own, False)
    if stage.kind == "train-core":
        return on(stage.get("init"), {"core", *TRAINED})
    if stage.kind in ("compress", "k0"):
        return on(stage.get("source"), {"core", *TRAINED})
    if stage.kind == "train-brick":
        return on(stage.get("host"), {f"brick/{stage.get('brick_name')}", *TRAINED})
    if stage.kind == "int8":
        return on(stage.get("source"), {f"brick/{stage.get('as_name') or str(stage.get('brick_name')) + '-int8'}"})
    return None


def _check_named_components(pipeline: "Pipeline", stage: Stage) -> None:
    """A check that names a component or brick the commits it runs on cannot hold (a stage's own
    checkpoints, an evaluate stage's source, a baseline, a migration's source and hosts made by
    earlier stages) fails here, not after every earlier stage has trained (h72)."""
    if not stage.checks:
        return
    # the commits its checks run on (HEAD): None for an evaluate stage of the previous result
    own = f"stage:{stage.name}" if stage.kind != "evaluate" else stage.get("source")
    for check in stage.checks:
        where = f"{pipeline.path}: stage {stage.name}.checks.{check.name}"
        if check.kind == "migration":
            brick = check.get("brick") or ""
            needs = [(check.get("source", "HEAD"), "brick", brick if brick.startswith("brick/") else f"brick/{brick}")]
            needs += [(h, f"hosts[{i}]", "core") for i, h in enumerate(check.get("hosts") or ())]
        else:
            wanted = [("component", check.get("component", "core"))] + [
                (f"bricks[{i}]", b if b.startswith("brick/") else f"brick/{b}")
                for i, b in enumerate(check.get("bricks") or ())]
            needs = [(rev, key, comp) for rev in ("HEAD", check.get("baseline")) for key, comp in wanted]
        for rev, key, comp in needs:
            ref = own if rev == "HEAD" else rev
            made = stage_components(pipeline, ref) if isinstance(ref, str) else None  # (None: HEAD, or a revision)
            if made is not None and made[1] and comp not in made[0]:
                raise ConfigError(f"{where}.{key}: the commits of {ref} hold no component {comp!r}",
                                  f"they hold: {', '.join(sorted(made[0]))}")


def _check_source_brick(pipeline: "Pipeline", stage: Stage) -> None:
    """A paste or int8 stage's brick_name must be the brick its source stage makes (one that was
    not failed once every earlier stage had trained, and left the stage's branch behind)."""
    made = stage_brick(pipeline, stage.get("source"))
    if made is not None and stage.get("brick_name") != made:
        raise ConfigError(f"{pipeline.path}: stage {stage.name}.brick_name: {stage.get('source')} makes brick "
                          f"{made!r}, not {stage.get('brick_name')!r}", f"brick_name = \"{made}\"")


def _check_paste_abi(pipeline: "Pipeline", stage: Stage) -> None:
    """A paste stage whose brick's host and target host stages have other ABI contracts fails
    here, before any stage trains (it failed after every earlier stage had trained)."""
    from mvc.errors import AbiMismatch
    from mvc.paste import check_abi
    brick = _stage_abi(pipeline, stage.get("source"))
    if brick is None:
        return
    for j, host in enumerate(stage.get("into") or []):
        abi = _stage_abi(pipeline, host)
        if abi is None:
            continue
        try:
            check_abi({"abi": abi}, {"abi": brick})
        except AbiMismatch as e:
            raise ConfigError(f"{pipeline.path}: stage {stage.name}.into[{j}] ({host}): {e.message}",
                              "the brick's host stage and this host stage build cores under other ABI "
                              "contracts: compare their config and overrides") from None


def step_budget(kind: str, settings: dict) -> str | None:
    """The setting holding the step count a stage's job trains: a compress stage's `recovery_steps`
    when set, else `steps` (a compress stage without either trains 1 step); None for a stage budgeted
    by wall_seconds alone (a fallback's extra_steps is refused there)."""
    if kind == "compress":
        return "recovery_steps" if settings.get("recovery_steps") else "steps"
    return "steps" if "steps" in settings else None


def core_seed(settings: dict) -> dict:
    """The seed argument of a stage's cores.build: the stage's `seed` when it sets one; otherwise
    none, so that a `config` table's own seed (or the preset's default, 0) is used."""
    return {"seed": int(settings["seed"])} if "seed" in settings else {}


def parse(doc: dict, path: str, profile: str | None = None) -> Pipeline:
    """A Pipeline from a parsed pipeline file; every problem is a ConfigError naming file and key."""
    def err(where, what):
        return ConfigError(f"{path}: {where}: {what}")

    _check_shapes(doc, err)
    if profile is not None:
        doc = _apply_profile(doc, profile, err)
    name = _pipeline_name(doc.get("pipeline", {}), err)
    streams = {sname: _parse_stream(sname, spec, err) for sname, spec in doc.get("streams", {}).items()}
    stages, seen = [], set()
    results: list[str] = []  # what `stage:NAME` may name so far: earlier stages and paste/<host> results
    for i, raw in enumerate(doc["stages"]):
        stage = _parse_stage(i, raw, name, path, streams, results, seen, err)
        stages.append(stage)
        results.append(stage.name)
        results += [r for r in stage_branches(name, stage) if r != stage.name]
    return Pipeline(name, path, streams, stages, profile)


def stage_branches(pipeline_name: str, stage: Stage) -> dict[str, str]:
    """Result name -> branch, for every branch a stage commits to (the one place that maps a stage
    to its branches). A stage commits to `<pipeline>/<stage>` (or its `branch` setting), result
    `<stage>`; a paste stage commits only to `<that>/<host>` for each host it pastes into, results
    `<stage>/<host>` (the stage's own result is the last host's)."""
    base = stage.get("branch") or f"{pipeline_name}/{stage.name}"
    if stage.kind != "paste":
        return {stage.name: base}
    labels = [h[6:] if h.startswith("stage:") else h for h in stage.get("into")]
    return {f"{stage.name}/{label}": f"{base}/{label}" for label in labels}


def _check_shapes(doc: dict, err) -> None:
    """Top-level keys and table shapes first: a scalar where a table belongs is a clear error."""
    for key in doc:
        if key not in ("pipeline", "streams", "stages", "profile"):
            raise err(key, "unknown top-level key (pipeline, streams, stages, profile)")
    for key in ("pipeline", "streams", "profile"):
        if key in doc and not isinstance(doc[key], dict):
            raise err(key, f"must be a table ([{key}]), got {_type_name(doc[key])}")
    _tables_of_tables(doc.get("streams", {}), "streams", err)
    raw_stages = doc.get("stages", [])
    if not isinstance(raw_stages, list) or not raw_stages:
        raise err("stages", "a pipeline needs at least one [[stages]] table")
    for i, raw in enumerate(raw_stages):
        if not isinstance(raw, dict):
            raise err(f"stages[{i}]", f"must be a table ([[stages]]), got {_type_name(raw)}")
    profiles = doc.get("profile", {})
    _tables_of_tables(profiles, "profile", err)
    for pname, prof in profiles.items():
        for key in prof:
            if key not in ("streams", "stages"):
                raise err(f"profile.{pname}.{key}", "profiles override only streams and stages")
            if not isinstance(prof[key], dict):
                raise err(f"profile.{pname}.{key}",
                          f"must be a table of {key} overrides ([profile.{pname}.{key}.NAME]), got {_type_name(prof[key])}")
            _tables_of_tables(prof[key], f"profile.{pname}.{key}", err)


def _apply_profile(doc: dict, profile: str, err) -> dict:
    profiles = doc.get("profile", {})
    if profile not in profiles:
        raise err("profile", f"no profile {profile!r} (have: {', '.join(profiles) or 'none'})")
    prof = profiles[profile]
    names = [s.get("name") for s in doc["stages"]]
    for sname in prof.get("stages", {}):
        if sname not in names:
            raise err(f"profile.{profile}.stages.{sname}", "no such stage")
    doc = dict(doc)
    doc["streams"] = _deep_merge(doc.get("streams", {}), prof.get("streams", {}))
    doc["stages"] = [_deep_merge(s, prof.get("stages", {}).get(s.get("name"), {})) for s in doc["stages"]]
    return doc


def _pipeline_name(meta: dict, err) -> str:
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise err("pipeline.name", "a pipeline needs a name")
    try:
        check_ref_name(name)  # (only the first part of its branches: those are checked whole below)
    except Exception:
        raise err("pipeline.name", f"{name!r} cannot name a branch") from None
    for key in meta:
        if key not in ("name", "description"):
            raise err(f"pipeline.{key}", "unknown key (name, description)")
    return name


def _parse_stream(sname: str, spec, err) -> dict:
    if not isinstance(spec, dict):
        raise err(f"streams.{sname}", "must be a table")
    for key in spec:
        if key not in STREAM_KEYS:
            raise err(f"streams.{sname}.{key}", f"unknown key ({', '.join(sorted(STREAM_KEYS))})")
    if ("builder" in spec) == ("file" in spec):
        raise err(f"streams.{sname}", "give exactly one of builder = \"module:function\" or file = \"path\"")
    if "builder" in spec and (not isinstance(spec["builder"], str) or spec["builder"].count(":") != 1):
        raise err(f"streams.{sname}.builder", "must look like \"module:function\"")
    if "file" in spec and (not isinstance(spec["file"], str) or not spec["file"]):
        raise err(f"streams.{sname}.file", f"must be a path, got {spec['file']!r}")
    if not isinstance(spec.get("args", {}), dict):
        raise err(f"streams.{sname}.args", f"must be a table of keyword arguments, got {_type_name(spec['args'])}")
    h = spec.get("holdout", DEFAULT_HOLDOUT)
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < h < 1:
        raise err(f"streams.{sname}.holdout", "must be a fraction between 0 and 1")
    return dict(spec, holdout=h)


REQUIRED = {  # stage kind -> settings it cannot run without
    "train-core": ("arch", "stream"), "compress": ("source", "stream"), "k0": ("source", "stream"),
    "train-brick": ("host", "stream", "brick_name"), "paste": ("source", "brick_name"),
    "int8": ("source", "brick_name"),
}


def _parse_stage(i: int, raw: dict, name: str, path: str, streams: dict, results: list[str], seen: set,
                 err) -> Stage:
    sname = raw.get("name")
    if not isinstance(sname, str) or not sname:
        raise err(f"stages[{i}].name", "every stage needs a name")
    where = f"stage {sname}"
    if sname in seen:
        raise err(where, "duplicate stage name")
    seen.add(sname)
    try:
        check_new_ref_name(f"{name}/{sname}")
    except Exception:
        raise err(f"{where}.name", f"{sname!r} cannot name a branch") from None
    kind = raw.get("kind")
    if kind not in STAGE_KINDS:
        raise err(f"{where}.kind", f"unknown stage kind {kind!r} ({', '.join(STAGE_KINDS)})")
    allowed = COMMON_KEYS | KIND_KEYS[kind]
    for key in raw:
        if key in NOT_EVALUATED.get(kind, ()):
            raise err(f"{where}.{key}", f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} stage does not evaluate "
                                        f"{key}: they would never run" +
                      (" (put its checks in an evaluate stage after it)" if kind in ("paste", "int8") else ""))
        if key not in allowed:
            raise err(f"{where}.{key}", f"unknown key for a {kind} stage (known: {', '.join(sorted(allowed))})")
    settings = {k: v for k, v in raw.items() if k not in ("gates", "fallback", "checks")}
    _check_settings(err, where, kind, settings, streams)
    if kind in ("train-core", "train-brick") and "steps" not in settings and "wall_seconds" not in settings:
        raise err(f"{where}.steps", "a training stage needs a budget (steps or wall_seconds)")
    for key in REQUIRED.get(kind, ()):
        if key not in settings:
            raise err(f"{where}.{key}", f"required for a {kind} stage")
    for key in ("host", "source", "init"):
        _check_stage_ref(err, f"{where}.{key}", settings.get(key), results)
    if kind == "paste":
        into = settings.get("into")
        if not isinstance(into, list) or not into:
            raise err(f"{where}.into", "a paste stage needs a list of host stages or revisions")
        for j, h in enumerate(into):
            if not isinstance(h, str) or not h:
                raise err(f"{where}.into[{j}]", f"must be \"stage:NAME\" or a revision, got {h!r}")
            _check_stage_ref(err, f"{where}.into[{j}]", h, results)
        host_branches = list(stage_branches(name, Stage(sname, kind, settings)).values())
        if len(host_branches) != len(into):
            raise err(f"{where}.into", "names a host twice (each host gets a branch <pipeline>/<stage>/<host>)")
        for j, branch in enumerate(host_branches):
            try:
                check_new_ref_name(branch)
            except MvcError:
                raise err(f"{where}.into[{j}]", f"{into[j]!r} cannot name a branch ({branch!r})") from None
    checks_cfg = cicfg.parse({"ci": {"checks": raw.get("checks", [])}}, f"{path}: {where}") \
        if raw.get("checks") else cicfg.CiConfig()
    check_names = {c.name for c in checks_cfg.checks}
    for c in checks_cfg.checks:  # (gate results are recorded as "<metric> gate", "plateau gate"...)
        if c.name.endswith(" gate"):
            raise err(f"{where}.checks.{c.name}", "a check's name may not end in ' gate' (the names of gate results)")
    if kind == "evaluate" and not check_names:  # (its certificate, of no checks, certified nothing: verify
        raise err(f"{where}.checks", "an evaluate stage needs at least one check")  # refused it after it passed)
    for c in checks_cfg.checks:
        for key, value in c.params.items():
            _check_refs_in(err, f"{where}.checks.{c.name}.{key}", value, results, streams)
    ecc = settings.get("every_checkpoint_checks")
    if ecc is not None:
        if not isinstance(ecc, list) or not all(isinstance(n, str) for n in ecc):
            raise err(f"{where}.every_checkpoint_checks", "must be a list of check names")
        for n in ecc:
            if n not in check_names:
                raise err(f"{where}.every_checkpoint_checks", f"no check named {n!r} in this stage's checks")
    gates = raw.get("gates", [])
    if not isinstance(gates, list):
        raise err(f"{where}.gates", "must be an array of tables")
    for j, g in enumerate(gates):
        _check_gate(f"{where}.gates[{j}]", g, check_names, err)
        _check_gate_metric(f"{where}.gates[{j}]", kind, g, err)
    fb = raw.get("fallback", {})
    _check_fallback(where, kind, fb, streams, err)
    if fb.get("extra_steps") and step_budget(kind, {**settings, **(fb.get("set") or {})}) is None:
        raise err(f"{where}.fallback.extra_steps", "the stage is budgeted by wall_seconds alone: it has no steps to "
                                                   "add to (a retry would run as before); set fallback.set.wall_seconds")
    _check_kind_settings(err, where, kind, settings)
    if fb.get("set"):
        _check_kind_settings(err, f"{where}.fallback.set", kind, {**settings, **fb["set"]})
    return Stage(sname, kind, settings, gates, fb, checks_cfg.checks)


# What a core's training checkpoint records (cores.train.Trainer.metrics, with the pipeline's
# `attempt`), and the prefixes of the metrics a stage kind adds: a gate naming another metric was
# found only at the first checkpoint, once it had trained (tests/pipeline tie this to Trainer.metrics).
CORE_METRICS = frozenset({"steps", "loss", "loss_last10", "bytes_seen", "wall_seconds", "batch_size", "seq_len", "lr",
                          "params", "seed", "bytes_per_second", "heldout_bpb", "heldout_bytes", "eval_seconds",
                          "attempt"})
METRIC_PREFIXES = {"train-core": ("last_",), "compress": ("last_", "compression_"), "k0": ("last_", "k0_")}


def _check_gate_metric(gw: str, kind: str, g: dict, err) -> None:
    metric = g.get("metric")
    if kind in METRIC_PREFIXES and isinstance(metric, str) and metric not in CORE_METRICS \
            and not metric.startswith(METRIC_PREFIXES[kind]):
        raise err(f"{gw}.metric", f"{metric!r} is not a metric a {kind} stage records (it records: "
                                  f"{', '.join(sorted(CORE_METRICS - {'attempt'}))}, and "
                                  f"{', '.join(p + '*' for p in METRIC_PREFIXES[kind])})")


def _check_gate(gw: str, g, check_names: set, err) -> None:
    if not isinstance(g, dict):
        raise err(gw, "must be a table")
    for key in g:
        if key not in GATE_KEYS:
            raise err(f"{gw}.{key}", f"unknown gate key ({', '.join(sorted(GATE_KEYS))})")
    for key in ("max", "min", "plateau"):  # finite: thresholds are stored in canonical JSON
        if key in g and (not _is_number(g[key]) or not math.isfinite(g[key])):
            raise err(f"{gw}.{key}", f"must be a finite number, got {g[key]!r}")
    kinds = [k for k in ("metric", "plateau", "check") if k in g]
    if len(kinds) > 1:  # (one of them was evaluated, the others dropped unsaid: a check never ran)
        raise err(gw, f"a gate is one of metric, plateau or check, not {' and '.join(kinds)} (write a gate "
                      "for each)")
    for key, owner in (("max", "metric"), ("min", "metric"), ("patience", "plateau")):
        if key in g and owner not in g:
            raise err(f"{gw}.{key}", f"belongs to a {owner} gate" + (f", not a {kinds[0]} gate" if kinds else ""))
    if "max" in g and "min" in g and g["min"] > g["max"]:
        raise err(gw, f"min {g['min']} is above max {g['max']}: the gate can never pass")
    if "metric" in g:
        if not isinstance(g["metric"], str) or not g["metric"]:
            raise err(f"{gw}.metric", f"must be a metric name, got {g['metric']!r}")
        if "max" not in g and "min" not in g:
            raise err(gw, "a metric gate needs max or min")
    elif "plateau" in g:
        p = g.get("patience", 3)
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise err(f"{gw}.patience", "must be a positive integer")
    elif "check" in g:
        if not isinstance(g["check"], str) or g["check"] not in check_names:
            raise err(f"{gw}.check", f"no check named {g['check']!r} in this stage's checks")
    else:
        raise err(gw, "a gate is one of: metric (+ max/min), plateau (+ patience), check")
    if g.get("at", "end") not in ("end", "checkpoint"):
        raise err(f"{gw}.at", "must be \"end\" or \"checkpoint\"")


def _check_fallback(where: str, kind: str, fb, streams: dict, err) -> None:
    if not isinstance(fb, dict):
        raise err(f"{where}.fallback", "must be a table")
    for key in fb:
        if key not in FALLBACK_KEYS:
            raise err(f"{where}.fallback.{key}", f"unknown key ({', '.join(sorted(FALLBACK_KEYS))})")
    for key in ("retries", "extra_steps"):
        if key in fb and (isinstance(fb[key], bool) or not isinstance(fb[key], int) or fb[key] < 0):
            raise err(f"{where}.fallback.{key}", f"must be a non-negative integer, got {fb[key]!r}")
        if key in fb and fb[key] > MAX_COUNT:
            raise err(f"{where}.fallback.{key}", f"must be at most {MAX_COUNT:,}, got {fb[key]!r}")
    if "lr_scale" in fb and (not _is_number(fb["lr_scale"]) or not 0 < fb["lr_scale"] < math.inf):
        raise err(f"{where}.fallback.lr_scale", f"must be a positive number, got {fb['lr_scale']!r}")
    if "set" in fb:
        if not isinstance(fb["set"], dict):
            raise err(f"{where}.fallback.set", "must be a table of stage settings")
        settable = KIND_KEYS[kind] - {"name", "kind"}
        for key in fb["set"]:
            if key not in settable:
                raise err(f"{where}.fallback.set.{key}",
                          f"not a setting of a {kind} stage (known: {', '.join(sorted(settable))})")
        _check_settings(err, f"{where}.fallback.set", kind, dict(fb["set"]), streams)

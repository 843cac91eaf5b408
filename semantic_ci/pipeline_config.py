"""Pipeline files (TOML): streams, ordered stages with budgets, gates and fallbacks, and profiles.

Everything is validated before any training starts; errors name the file, the stage and the key.

    [pipeline]
    name = "demo"                        # stage branches are <name>/<stage>

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
import os
import tomllib
from dataclasses import dataclass, field

from mvc.errors import ConfigError
from mvc.objects import check_ref_name

from . import config as cicfg

STAGE_KINDS = ("train-core", "train-brick", "paste", "int8", "evaluate", "compress", "k0")
COMMON_KEYS = {"name", "kind", "gates", "fallback", "checks", "branch", "every_checkpoint_checks", "optional"}
TRAIN_KEYS = {"steps", "wall_seconds", "checkpoint_every", "lr", "batch_size", "seq_len", "seed", "stream",
              "eval_bytes"}
KIND_KEYS = {
    "train-core": TRAIN_KEYS | {"arch", "config", "overrides", "init"},
    "train-brick": TRAIN_KEYS | {"host", "brick", "brick_name", "options", "general_stream", "general_mix"},
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


@dataclass
class Stage:
    name: str
    kind: str
    settings: dict
    gates: list[dict] = field(default_factory=list)
    fallback: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)   # semantic_ci.config.Check, inline

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
    return isinstance(v, list) and bool(v) and all(isinstance(t, dict) and "name" in t for t in v)


def load(path: str, profile: str | None = None) -> Pipeline:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    return parse(doc, path, profile)


def parse(doc: dict, path: str, profile: str | None = None) -> Pipeline:
    def err(where, what):
        return ConfigError(f"{path}: {where}: {what}")

    for key in doc:
        if key not in ("pipeline", "streams", "stages", "profile"):
            raise err(key, "unknown top-level key (pipeline, streams, stages, profile)")
    profiles = doc.get("profile", {})
    if profile is not None:
        if profile not in profiles:
            raise err("profile", f"no profile {profile!r} (have: {', '.join(profiles) or 'none'})")
        prof = profiles[profile]
        for key in prof:
            if key not in ("streams", "stages"):
                raise err(f"profile.{profile}.{key}", "profiles override only streams and stages")
        names = [s.get("name") for s in doc.get("stages", [])]
        for sname in prof.get("stages", {}):
            if sname not in names:
                raise err(f"profile.{profile}.stages.{sname}", "no such stage")
        doc = dict(doc)
        doc["streams"] = _deep_merge(doc.get("streams", {}), prof.get("streams", {}))
        doc["stages"] = [_deep_merge(s, prof.get("stages", {}).get(s.get("name"), {})) for s in doc.get("stages", [])]
    meta = doc.get("pipeline", {})
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise err("pipeline.name", "a pipeline needs a name")
    try:
        check_ref_name(name)
    except Exception:
        raise err("pipeline.name", f"{name!r} cannot name a branch") from None
    for key in meta:
        if key not in ("name", "description"):
            raise err(f"pipeline.{key}", "unknown key (name, description)")
    streams = {}
    for sname, spec in doc.get("streams", {}).items():
        if not isinstance(spec, dict):
            raise err(f"streams.{sname}", "must be a table")
        for key in spec:
            if key not in STREAM_KEYS:
                raise err(f"streams.{sname}.{key}", f"unknown key ({', '.join(sorted(STREAM_KEYS))})")
        if ("builder" in spec) == ("file" in spec):
            raise err(f"streams.{sname}", "give exactly one of builder = \"module:function\" or file = \"path\"")
        if "builder" in spec and (not isinstance(spec["builder"], str) or spec["builder"].count(":") != 1):
            raise err(f"streams.{sname}.builder", "must look like \"module:function\"")
        h = spec.get("holdout", 0.05)
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < h < 1:
            raise err(f"streams.{sname}.holdout", "must be a fraction between 0 and 1")
        streams[sname] = dict(spec, holdout=h)
    raw_stages = doc.get("stages", [])
    if not isinstance(raw_stages, list) or not raw_stages:
        raise err("stages", "a pipeline needs at least one [[stages]] table")
    stages, seen = [], set()
    for i, raw in enumerate(raw_stages):
        sname = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(sname, str) or not sname:
            raise err(f"stages[{i}].name", "every stage needs a name")
        where = f"stage {sname}"
        if sname in seen:
            raise err(where, "duplicate stage name")
        seen.add(sname)
        try:
            check_ref_name(f"{name}/{sname}")
        except Exception:
            raise err(f"{where}.name", f"{sname!r} cannot name a branch") from None
        kind = raw.get("kind")
        if kind not in STAGE_KINDS:
            raise err(f"{where}.kind", f"unknown stage kind {kind!r} ({', '.join(STAGE_KINDS)})")
        allowed = COMMON_KEYS | KIND_KEYS[kind]
        for key in raw:
            if key not in allowed:
                raise err(f"{where}.{key}", f"unknown key for a {kind} stage (known: {', '.join(sorted(allowed))})")
        settings = {k: v for k, v in raw.items() if k not in ("gates", "fallback", "checks")}
        for key in ("steps", "checkpoint_every", "batch_size", "seq_len", "seed", "eval_bytes"):
            if key in settings and (isinstance(settings[key], bool) or not isinstance(settings[key], int)
                                    or settings[key] < (0 if key == "seed" else 1)):
                raise err(f"{where}.{key}", f"must be a positive integer, got {settings[key]!r}")
        for key in ("lr", "wall_seconds"):
            if key in settings and (isinstance(settings[key], bool) or not isinstance(settings[key], (int, float))
                                    or settings[key] <= 0):
                raise err(f"{where}.{key}", f"must be a positive number, got {settings[key]!r}")
        if kind in ("train-core", "train-brick", "compress", "k0") and "stream" in settings \
                and settings["stream"] not in streams:
            raise err(f"{where}.stream", f"no stream {settings['stream']!r} (have: {', '.join(streams) or 'none'})")
        if kind in ("train-core", "train-brick") and "steps" not in settings and "wall_seconds" not in settings:
            raise err(f"{where}.steps", "a training stage needs a budget (steps or wall_seconds)")
        if kind == "train-core":
            for key in ("arch", "stream"):
                if key not in settings:
                    raise err(f"{where}.{key}", "required for a train-core stage")
        if kind in ("compress", "k0"):
            for key in ("source", "stream"):
                if key not in settings:
                    raise err(f"{where}.{key}", f"required for a {kind} stage")
        if kind == "train-brick":
            for key in ("host", "stream", "brick_name"):
                if key not in settings:
                    raise err(f"{where}.{key}", "required for a train-brick stage")
        for key in ("host", "source"):
            ref = settings.get(key)
            if isinstance(ref, str) and ref.startswith("stage:") and ref[6:] not in seen - {sname}:
                raise err(f"{where}.{key}", f"{ref} must name an earlier stage")
        if kind == "paste":
            into = settings.get("into")
            if not isinstance(into, list) or not into:
                raise err(f"{where}.into", "a paste stage needs a list of host stages or revisions")
        gates = raw.get("gates", [])
        if not isinstance(gates, list):
            raise err(f"{where}.gates", "must be an array of tables")
        checks_cfg = cicfg.parse({"ci": {"checks": raw.get("checks", [])}}, f"{path}: {where}") \
            if raw.get("checks") else cicfg.CiConfig()
        check_names = {c.name for c in checks_cfg.checks}
        for j, g in enumerate(gates):
            gw = f"{where}.gates[{j}]"
            if not isinstance(g, dict):
                raise err(gw, "must be a table")
            for key in g:
                if key not in GATE_KEYS:
                    raise err(f"{gw}.{key}", f"unknown gate key ({', '.join(sorted(GATE_KEYS))})")
            if "metric" in g:
                if "max" not in g and "min" not in g:
                    raise err(gw, "a metric gate needs max or min")
            elif "plateau" in g:
                if not isinstance(g.get("patience", 3), int) or g.get("patience", 3) < 1:
                    raise err(f"{gw}.patience", "must be a positive integer")
            elif "check" in g:
                if g["check"] not in check_names:
                    raise err(f"{gw}.check", f"no check named {g['check']!r} in this stage's checks")
            else:
                raise err(gw, "a gate is one of: metric (+ max/min), plateau (+ patience), check")
            if g.get("at", "end") not in ("end", "checkpoint"):
                raise err(f"{gw}.at", "must be \"end\" or \"checkpoint\"")
        fb = raw.get("fallback", {})
        if not isinstance(fb, dict):
            raise err(f"{where}.fallback", "must be a table")
        for key in fb:
            if key not in FALLBACK_KEYS:
                raise err(f"{where}.fallback.{key}", f"unknown key ({', '.join(sorted(FALLBACK_KEYS))})")
        if "retries" in fb and (not isinstance(fb["retries"], int) or fb["retries"] < 0):
            raise err(f"{where}.fallback.retries", "must be a non-negative integer")
        stages.append(Stage(sname, kind, settings, gates, fb, checks_cfg.checks))
    return Pipeline(name, path, streams, stages, profile)

"""The `[ci]` table of mvc.toml: parsing, validation with file and key named, and rubric presets."""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field

from mvc.errors import ConfigError

CONFIG_FILE = "mvc.toml"
KINDS = ("exact-logits", "ppl-ratio", "migration")
PRESETS = ("L0", "L1", "L2", "L3", "L4", "L5", "L6", "PX")
TOP_SECTIONS = {"ci"}  # the top-level tables of mvc.toml (a misspelt [cii] is an error, not "no checks")
TOP_KEYS = {"on_commit", "on_fail", "checks", "adapter", "probe_bytes", "window"}
CHECK_KEYS = {
    "common": {"name", "kind", "component", "bricks", "adapter", "probe", "probe_bytes", "window"},
    "exact-logits": {"baseline", "tolerance", "roundtrip"},
    "ppl-ratio": {"baseline", "data", "max_ratio", "bootstrap"},
    "migration": {"brick", "hosts", "mode", "domain_data", "general_data", "max_domain_ratio",
                  "max_general_ratio", "source", "int8", "probe"},
}
DEFAULT_PROBE_BYTES = 4096
DEFAULT_WINDOW = 256
# The built-in probe is generated in memory and every byte of it is evaluated one window at a time:
# beyond this it would exhaust memory (or take days), so a larger probe_bytes is refused when read.
MAX_PROBE_BYTES = 64 << 20
MAX_BOOTSTRAP = 100_000  # resamples of the PPL-ratio interval (each one a row of window indices)


@dataclass
class Check:
    name: str
    kind: str
    params: dict = field(default_factory=dict)
    preset: str | None = None

    def get(self, key, default=None):
        return self.params.get(key, default)


@dataclass
class CiConfig:
    on_commit: bool = False
    on_fail: str = "report"
    checks: list[Check] = field(default_factory=list)
    adapter: str | None = None
    probe_bytes: int = DEFAULT_PROBE_BYTES
    window: int = DEFAULT_WINDOW
    source: str = CONFIG_FILE
    # {path as mvc.toml names it: (bytes, description)}: check data read from the git commit this
    # config came from (the git hooks); paths not in it are read from the work tree
    files: dict | None = None

    def select(self, names) -> list[Check]:
        if not names:
            return list(self.checks)
        if isinstance(names, str):  # (one name: its letters were taken for names, "no check named f, r, o")
            names = [names]
        known = {c.name: c for c in self.checks}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"{self.source}: no check named {', '.join(missing)}",
                              f"checks: {', '.join(known) or 'none'}")
        return [known[n] for n in dict.fromkeys(names)]  # a name given twice runs once


def _err(source, key, what):
    return ConfigError(f"{source}: {key}: {what}")


def _whole(source, key, value, minimum=None, maximum=None) -> int:
    """A count (probe_bytes, window, bootstrap): 16.9 is refused, not truncated to 16."""
    _num(source, key, value)
    if value != int(value):  # (before the bounds: 2.5 is not a count at all)
        raise _err(source, key, f"must be a whole number, got {value!r}")
    _num(source, key, value, minimum, maximum)
    return int(value)


def _num(source, key, value, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(source, key, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise _err(source, key, f"must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise _err(source, key, f"must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise _err(source, key, f"must be <= {maximum}, got {value!r}")
    return value


def _str_list(source, key, value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _err(source, key, f"must be a non-empty list of names, got {value!r}")
    return value


def parse(doc: dict, source: str = CONFIG_FILE) -> CiConfig:
    """Validate a parsed mvc.toml document; unknown keys and impossible settings are errors."""
    for key in doc:
        if key not in TOP_SECTIONS:
            raise _err(source, key, f"unknown section (known: {', '.join(sorted(TOP_SECTIONS))})")
    ci = doc.get("ci", {})
    if not isinstance(ci, dict):
        raise _err(source, "ci", "must be a table")
    for key in ci:
        if key not in TOP_KEYS:
            raise _err(source, f"ci.{key}", f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    cfg = CiConfig(source=source)
    if "on_commit" in ci:
        if not isinstance(ci["on_commit"], bool):
            raise _err(source, "ci.on_commit", "must be true or false")
        cfg.on_commit = ci["on_commit"]
    if "on_fail" in ci:
        if ci["on_fail"] not in ("report", "rollback"):
            raise _err(source, "ci.on_fail", f"must be \"report\" or \"rollback\", got {ci['on_fail']!r}")
        cfg.on_fail = ci["on_fail"]
    if "adapter" in ci:
        cfg.adapter = _adapter(source, "ci.adapter", ci["adapter"])
    if "probe_bytes" in ci:
        cfg.probe_bytes = _whole(source, "ci.probe_bytes", ci["probe_bytes"], 16, MAX_PROBE_BYTES)
    if "window" in ci:
        cfg.window = _whole(source, "ci.window", ci["window"], 1)  # (as a check's own window: 128.7 refused)
    checks = ci.get("checks", [])
    if not isinstance(checks, list):
        raise _err(source, "ci.checks", "must be an array of tables ([[ci.checks]])")
    names = set()
    for i, raw in enumerate(checks):
        where = f"ci.checks[{i}]"
        if not isinstance(raw, dict):
            raise _err(source, where, "must be a table")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _err(source, f"{where}.name", "every check needs a name")
        where = f"ci.checks[{name}]"
        if name in names:
            raise _err(source, f"{where}.name", "duplicate check name")
        names.add(name)
        kind = raw.get("kind")
        if kind is None:
            raise _err(source, f"{where}.kind", f"every check needs a kind (one of {', '.join(KINDS + PRESETS)})")
        if kind not in KINDS and kind not in PRESETS:
            raise _err(source, f"{where}.kind", f"unknown kind {kind!r} (one of {', '.join(KINDS + PRESETS)})")
        cfg.checks.append(_check(source, where, name, kind, raw))
    return cfg


def _adapter(source, key, value):
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise _err(source, key, f"must look like \"package.module:function\", got {value!r}")
    return value


def _check(source, where, name, kind, raw) -> Check:
    base_kind = preset_kind(kind)
    allowed = CHECK_KEYS["common"] | CHECK_KEYS[base_kind]
    for key in raw:
        if key not in allowed:
            raise _err(source, f"{where}.{key}", f"unknown key for a {kind} check (known: {', '.join(sorted(allowed))})")
    p = {**PRESET_DEFAULTS.get(kind, {}), **{k: v for k, v in raw.items() if k not in ("name", "kind")}}
    if "adapter" in p:
        _adapter(source, f"{where}.adapter", p["adapter"])
    if "bricks" in p:
        p["bricks"] = _str_list(source, f"{where}.bricks", p["bricks"])
        if len(p["bricks"]) > 1:  # (a brick attaches to a core; one attached to another brick's model is refused)
            raise _err(source, f"{where}.bricks", f"one brick at most: bricks do not stack, got {p['bricks']!r}")
    for key in ("component", "baseline", "data", "brick", "domain_data", "general_data", "source", "probe"):
        if key in p and (not isinstance(p[key], str) or not p[key]):
            raise _err(source, f"{where}.{key}", f"must be a non-empty string, got {p[key]!r}")
    if "tolerance" in p:
        _num(source, f"{where}.tolerance", p["tolerance"], 0)
    for key in ("max_ratio", "max_domain_ratio", "max_general_ratio"):
        if key in p:
            _num(source, f"{where}.{key}", p[key], 0)
            if p[key] == 0:
                raise _err(source, f"{where}.{key}", "a ratio bound of 0 can never pass")
    for key, least, most in (("probe_bytes", 16, MAX_PROBE_BYTES), ("window", 1, None),
                             ("bootstrap", 1, MAX_BOOTSTRAP)):
        if key in p:
            p[key] = _whole(source, f"{where}.{key}", p[key], least, most)
    if "int8" in p and not isinstance(p["int8"], bool):
        raise _err(source, f"{where}.int8", "must be true or false")
    if base_kind == "migration":
        if "brick" not in p:
            raise _err(source, f"{where}.brick", "a migration check needs the brick's name")
        p["hosts"] = _str_list(source, f"{where}.hosts", p.get("hosts"))
        mode = p.setdefault("mode", "bounded")
        if mode not in MIGRATION_MODES:
            raise _err(source, f"{where}.mode", f"must be one of {', '.join(MIGRATION_MODES)}, got {mode!r}")
        if mode == "bounded" and "domain_data" not in p:
            raise _err(source, f"{where}.domain_data", "bounded migration needs held-out domain data")
        for bound in ("max_domain_ratio", "max_general_ratio"):  # (a bound no other mode reads: never checked)
            if mode != "bounded" and bound in raw:
                raise _err(source, f"{where}.{bound}", f"only a bounded migration check reads it (mode is {mode!r})")
            if mode != "bounded":  # a preset's (L3-L6) with its mode overridden: not part of the check
                p.pop(bound, None)
        if mode == "bounded" and "max_general_ratio" in p and "general_data" not in p:
            # (without it the general ratio is never measured: the bound would pass unchecked)
            set_by = "" if "max_general_ratio" in raw else f" (the {kind} preset's)"
            raise _err(source, f"{where}.general_data", f"max_general_ratio = {p['max_general_ratio']!r}{set_by} "
                       "bounds the general PPL ratio, which needs held-out general data")
    if base_kind == "ppl-ratio" and "data" in p and "probe" in raw:  # (unread: one naming nothing passed)
        raise _err(source, f"{where}.probe", "a ppl-ratio check reads its data file when `data` is set, never the "
                   "probe: set one of the two")
    if base_kind == "ppl-ratio" and "baseline" not in p:
        raise _err(source, f"{where}.baseline", "a ppl-ratio check needs a baseline revision")
    if base_kind == "exact-logits" and "baseline" not in p and not p.get("roundtrip"):
        raise _err(source, f"{where}.baseline", "an exact-logits check needs a baseline revision")
    if "roundtrip" in p and not isinstance(p["roundtrip"], bool):
        raise _err(source, f"{where}.roundtrip", "must be true or false")
    return Check(name=name, kind=base_kind, params=p, preset=kind if kind in PRESETS else None)


MIGRATION_MODES = ("bounded", "exact", "copy", "function")


# Rubric presets (DESIGN.md section 10): each expands to one of the three check kinds with defaults.
PRESET_DEFAULTS = {
    "L0": {"mode": "copy"},
    "L1": {"mode": "function"},
    "L2": {"baseline": "HEAD", "tolerance": 0.0, "roundtrip": True},
    "L3": {"mode": "bounded", "max_domain_ratio": 0.75, "max_general_ratio": 1.05},
    "L4": {"mode": "bounded", "max_domain_ratio": 0.75, "max_general_ratio": 1.05},
    "L5": {"mode": "bounded", "max_domain_ratio": 0.75, "max_general_ratio": 1.05, "int8": True},
    "L6": {"mode": "bounded", "max_domain_ratio": 0.75, "max_general_ratio": 1.05},
    "PX": {"mode": "exact"},
}


def preset_kind(kind: str) -> str:
    return {"L0": "migration", "L1": "migration", "L2": "exact-logits", "L3": "migration", "L4": "migration",
            "L5": "migration", "L6": "migration", "PX": "migration"}.get(kind, kind)


MAX_CONFIG_BYTES = 1 << 20


def load(root: str, text: str | None = None, source: str | None = None) -> CiConfig | None:
    """The CI config of a repository root (or of `text`, e.g. read from a git branch); None if absent."""
    path = os.path.join(root, CONFIG_FILE)
    source = source or path
    if text is None:
        if not os.path.exists(path):
            if os.path.islink(path):  # (a link to nothing, or a loop of links: not "no mvc.toml")
                raise ConfigError(f"{source}: a symbolic link to {os.readlink(path)}, which leads to no file")
            return None
        try:
            if os.path.isfile(path) and os.path.getsize(path) > MAX_CONFIG_BYTES:
                raise ConfigError(f"{source}: {os.path.getsize(path)} bytes; a CI config is far smaller")
            if not os.path.isfile(path) and not os.path.isdir(path):  # /dev/zero through a link: never read
                raise ConfigError(f"{source}: not a regular file")
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:  # a directory, no permission: a config problem, not a bug
            raise ConfigError(f"{source}: cannot read it ({e.strerror or e})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start})") from None
    try:
        doc = tomllib.loads(text.removeprefix("\ufeff"))  # (an editor's byte-order mark: not TOML)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML ({e})") from None
    return parse(doc, source)

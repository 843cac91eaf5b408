"""The repository config file (`.mvc/config`, INI): key syntax, the keys mvc reads and their checks.

`mvc config KEY VALUE` refuses a value mvc could not use later, so that no setting can make the
repository unusable; reading goes through the same parsers, so a hand-edited bad value is a clear
ConfigError instead of a crash. Keys given to mvc are case-insensitive, as in git (configparser
lowercases option names; split_key lowercases the section), a subsection (`remote.NAME.url`) is not;
in the file, section names are the lower-case ones mvc writes (a hand-written [Core] is another
section, which opening the repository warns of; a config without [core] format is refused by name).
In the sections mvc owns (core, gc, pack) a key mvc does not know is refused, so a typo is not
stored, read or unset silently (one a hand-edited file holds can still be read and unset); other
sections (remote.NAME, user notes, plugins) are free-form.
"""
from __future__ import annotations

import configparser
import difflib
import warnings
import re

from .errors import ConfigError, FormatTooNew
from .objects import check_remote_name


def _bool(raw: str) -> bool:
    value = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}.get(raw.strip().lower())
    if value is None:
        raise ValueError("it takes true or false")
    return value


def _number(low: float, unit: str):
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:  # (Python's "could not convert string to float" names no fix)
            value = float("nan")
        if not value >= low or value == float("inf"):  # also refuses NaN
            raise ValueError("it takes a finite number" + (f" >= {low:g}" if low > float("-inf") else "")
                             + f" of {unit}")
        return value
    return parse


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(raw: str) -> float:
    """Seconds, written as a number of seconds or with a unit: 90d, 12h, 30m, 2w, 45s (<= 0: none)."""
    text = raw.strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    try:
        value = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        value = float("nan")
    if not value == value or value in (float("inf"), float("-inf")):
        raise ValueError("it takes a duration: a number of seconds, or one with a unit (s, m, h, d, w), e.g. 90d")
    return value


def _integer(low: int, high: int | None = None):
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:  # (Python's "invalid literal for int() with base 10")
            value = low - 1
        if value < low or (high is not None and value > high):
            raise ValueError(f"it takes a whole number from {low} to {high}" if high is not None
                             else f"it takes a whole number >= {low}")
        return value
    return parse


# key -> parser of its text value; other keys may be set freely (remotes, user notes)
KNOWN = {
    "core.fsync": _bool,
    "gc.reflogExpire": _duration,  # <= 0 expires every entry
    "pack.autoEvery": _integer(0),
    "pack.autoPackLimit": _integer(0),
    "pack.maxDepth": _integer(0),
    "pack.level": _integer(-7, 22),  # zstd's levels (22 its highest)
    "pack.cacheMB": _number(0, "MB"),
    "pack.verify": _bool,
}
READ_ONLY = {"core.format": "it is set by mvc init and names the repository's on-disk format"}
# Extensions (`[extensions]` NAME = VALUE) this mvc implements: none yet. A later mvc that adds a
# feature older ones must not meet (they would misread it) names it there; an mvc that does not
# implement it refuses the repository or remote, whatever the value (git's extensions.* rule).
KNOWN_EXTENSIONS: frozenset[str] = frozenset()
_CANONICAL = {k.lower(): k for k in (*KNOWN, *READ_ONLY)}  # any spelling -> the spelling above
OWNED_SECTIONS = frozenset(k.partition(".")[0] for k in _CANONICAL)  # core, gc, pack
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def new_parser() -> configparser.ConfigParser:
    """No %-interpolation: values are read back as stored (white space at either end, which
    configparser drops, is refused when a value is set)."""
    return configparser.ConfigParser(interpolation=None)


def state(parser: configparser.ConfigParser) -> dict:
    """{section: {option: value}} of a parsed config, to compare two of them."""
    return {sec: dict(parser.items(sec, raw=True)) for sec in parser.sections()}


def edited_text(text: str, section: str, option: str, value: str | None) -> str:
    """`text` (the config file) with `option` of `section` set to `value` (None: removed), every
    other line as it was: comments, order and layout a hand edit gave it stay (configparser's
    write drops them). A section whose last option is removed goes, with its comments. The caller
    checks the result parses as intended (a layout this line editor misreads is rewritten whole)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    header = configparser.ConfigParser.SECTCRE
    starts = [i for i, line in enumerate(lines) if not line[:1].isspace() and header.match(line.strip())]
    begin = next((i for i in starts if header.match(lines[i].strip()).group("header") == section), None)
    new_line = [] if value is None else [f"{option} = {value}\n"]
    if begin is None:  # (a readable file holds a section once: configparser refuses repeats)
        gap = "\n" if lines and lines[-1].strip() and new_line else ""
        return "".join(lines) + (f"{gap}[{section}]\n{new_line[0]}" if new_line else "")
    end = next((i for i in starts if i > begin), len(lines))
    if end < len(lines):  # comments and blank lines just above the next header belong to that section
        while end - 1 > begin and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(("#", ";"))):
            end -= 1
    for i in range(begin + 1, end):
        m = configparser.ConfigParser.OPTCRE.match(lines[i])
        if _is_option(lines[i]) and m and m.group("option").strip().lower() == option.lower():
            j = i + 1
            while j < end and lines[j][:1].isspace() and lines[j].strip():
                j += 1  # (its continuation lines)
            lines[i:j] = new_line
            end -= j - i - len(new_line)
            if not any(_is_option(x) for x in lines[begin + 1:end]):
                del lines[begin:end]  # an empty section is dropped, as configparser would
                if 0 < begin < len(lines) and not lines[begin - 1].strip() and not lines[begin].strip():
                    del lines[begin]  # (one blank line between the sections it stood between)
            return "".join(lines)
    if new_line:
        last = max(i for i in range(begin, end) if lines[i].strip())
        lines[last + 1:last + 1] = new_line
    return "".join(lines)


def _is_option(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith(("#", ";")) and not line[:1].isspace()


def split_key(key: str) -> tuple[str, str]:
    """`section.name` or `section.sub.name` -> (INI section, option); refuses what INI cannot hold."""
    section, _, name = key.rpartition(".")
    head, dot, sub = section.partition(".")
    if not _NAME.fullmatch(head or "") or not _NAME.fullmatch(name) or head.upper() == "DEFAULT" \
            or any(c in sub for c in '"\n\r[]') or (dot and not sub):  # (a..b was stored as a.b)
        raise ConfigError(f"invalid config key {key!r}", "keys look like section.name, e.g. core.fsync")
    return (f'{head.lower()} "{sub}"' if sub else head.lower()), name


def canonical(key: str) -> str:
    """The KNOWN / READ_ONLY spelling of a key written in any case (`pack.maxdepth` ->
    `pack.maxDepth`); other keys unchanged."""
    return _CANONICAL.get(key.lower(), key)


def parse(key: str, raw: str, hint: bool = True):
    """The value of a known key (raw text for others); ConfigError names the key and the problem
    (with how to set it anew, unless `hint` is False: a value being set, whose fix is in the error)."""
    key = canonical(key)
    parser = KNOWN.get(key)
    if parser is None:
        return raw
    try:
        return parser(raw)
    except ValueError as e:
        raise ConfigError(f"config {key} = {raw!r} is invalid: {e}",
                          f"set it with mvc config {key} VALUE" if hint else None) from None


def check_key(key: str) -> str:
    """The spelling of `key` mvc uses; ConfigError for a key mvc does not know in one of its own
    sections (a typo: `core.fsnyc`), with a did-you-mean hint. Setting, reading and unsetting such a
    key all refuse it, so that a typo is never taken for an unset key."""
    key = canonical(key)
    section = key.partition(".")[0].lower()
    if key not in _CANONICAL.values() and section in OWNED_SECTIONS:
        close = difflib.get_close_matches(key.lower(), list(_CANONICAL), n=1)
        hint = (f"did you mean {_CANONICAL[close[0]]}?" if close else
                f"{section} keys: {', '.join(k for k in _CANONICAL.values() if k.partition('.')[0] == section)}")
        raise ConfigError(f"unknown config key {key!r}", hint)
    return key


def check_extensions(parser: configparser.ConfigParser, where: str) -> None:
    """FormatTooNew when the config `parser` read names an extension this mvc does not implement
    (its section in any case: a newer mvc's `[Extensions]` must not slip by as another section)."""
    unknown = sorted({key for section in parser.sections() if section.lower() == "extensions"
                      for key in parser[section] if key not in parser.defaults()} - KNOWN_EXTENSIONS)
    if unknown:
        raise FormatTooNew(f"{where} uses the extension{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}, "
                           "which this mvc does not implement: a newer mvc wrote it", "upgrade mvc")


def warn_miscased_sections(parser: configparser.ConfigParser, where: str) -> None:
    """Warn of a section of mvc's own spelled in another case (`[Core]`, `[PACK]`): mvc reads only
    the lower-case ones, so its keys would be ignored without a word."""
    for section in parser.sections():
        head = section.partition(" ")[0]
        if head.lower() in OWNED_SECTIONS | {"remote"} and head != head.lower():
            right = head.lower() + section[len(head):]
            warnings.warn(f"{where}: section [{section}] is not read (mvc reads [{right}]); "
                          f"rename it to [{right}] or set its keys with mvc config")


def is_remote_url(key: str) -> bool:
    """Whether `key` is a remote's url (remote.NAME.url), which is stored normalised."""
    head, _, rest = key.partition(".")
    return head.lower() == "remote" and "." in rest and rest.rpartition(".")[2].lower() == "url"


def check_setting(key: str, value: str) -> None:
    """Refuse a `mvc config KEY VALUE` that mvc could not use."""
    key = canonical(key)
    if key in READ_ONLY:
        raise ConfigError(f"config {key} cannot be set", READ_ONLY[key])
    if key.partition(".")[0].lower() == "extensions":
        raise ConfigError(f"config {key} cannot be set", "extensions are written by the mvc that implements "
                          "them: an mvc that does not refuses the repository")
    check_key(key)
    head, _, rest = key.partition(".")
    if head.lower() == "remote" and "." in rest:  # remote.NAME.url: a name `mvc remote add` takes
        check_remote_name(rest.rpartition(".")[0])
    if "\n" in value or "\r" in value:
        raise ConfigError(f"config {key}: a value is one line")
    remote_url = is_remote_url(key)
    if value != value.strip():  # the config file's reader drops it: another value would be used
        raise ConfigError(f"config {key}: the value {value!r} starts or ends with white space, which the "
                          "config file cannot keep", "use a path without white space at either end of its "
                          "name: rename it, or link to it" if remote_url else None)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # (bytes a path may hold on Linux, which argv gives as surrogates)
        raise ConfigError(f"config {key}: the value is not UTF-8 text", "the config file is UTF-8: use a path "
                          "whose name is UTF-8: rename it, or link to it" if remote_url else None) from None
    parsed = parse(key, value, hint=False)
    if key == "gc.reflogExpire" and value.strip()[-1:].isdigit() and 0 < parsed <= 1000:  # (a count of days?)
        warnings.warn(f"gc.reflogExpire {value} is {value} seconds (a duration with no unit); if you meant days, "
                      f"write {value}d")

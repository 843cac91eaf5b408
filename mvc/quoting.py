"""How text that came from a user, a file or a remote (names, messages, authors, metrics, paths)
is shown to people: control and bidirectional-override characters escaped, never passed raw."""
from __future__ import annotations

import json
import re
import unicodedata

# what a terminal would act on or draw misleadingly: C0 and C1 controls (ESC, CSI, OSC, BEL,
# newline, carriage return), DEL, the bidirectional marks, embeddings, overrides and isolates that
# reorder a line, and invisible characters that would make two names print alike (zero-width
# space, word joiner, byte-order mark; the joiners emoji and Indic scripts need are left alone), and
# lone surrogates: the bytes of a path argument that is not UTF-8, which a strict UTF-8 stdout
# (en_US.UTF-8) cannot write at all
# (with them, what prints as nothing or as a plain space where no text has one: the typographic
# spaces, invisible format characters, line and paragraph separators, where splitlines breaks, the
# soft hyphen, the combining grapheme joiner and the Hangul fillers; the no-break and ideographic
# spaces French and CJK text use are left alone, quoted only at either end as any white space is)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u1680\u180e\u2000-\u200b\u200e\u200f"
                     "\u2028-\u202e\u205f-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
                     "\ud800-\udfff]")
_QUOTED = re.compile(r'[\\"]|' + _UNSAFE.pattern)  # what a double-quoted string escapes
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}


def _escape(ch: str) -> str:
    return _ESCAPES.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def shown(text) -> str:
    """A string that came from a user, a file or a remote (a name, message, author, metric, path)
    as human output prints it: unchanged unless it holds a control or bidirectional-override
    character or one that prints as nothing or as a plain space, is empty, starts or ends with white
    space (invisible in a column: "a " would print as "a") or starts with a double quote, then
    double-quoted with C escapes, as git quotes such paths. Nothing it holds can move the cursor,
    retitle the terminal or forge a line of output, and no two texts print alike: only a quoted
    one starts with a double quote (names: see `shown_name`)."""
    text = str(text)
    if text and not _UNSAFE.search(text) and not text.startswith('"') \
            and not text[0].isspace() and not text[-1].isspace():
        return text
    return quoted(text)


def json_shown(value) -> str:
    """A JSON value as compact JSON (`[1.5,true]`), the characters `shown` escapes written in
    JSON's own escapes (\\u202e): safe to print, and never quoted (it cannot start with a double
    quote unless it is a JSON string)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def quoted(text: str) -> str:
    """`text` double-quoted with C escapes, as `shown` quotes what it must (a list's items that
    hold its separator are quoted too: see the metrics line)."""
    return '"' + _QUOTED.sub(lambda m: _escape(m.group()), text) + '"'


_NAME_SPACES = re.compile("[\xa0\u202f\u3000]")  # spaces that print as " ", which no ref name holds
_QUOTED_NAME = re.compile(_QUOTED.pattern + "|" + _NAME_SPACES.pattern)  # what a quoted name escapes


def shown_name(text) -> str:
    """A name (branch, tag, component, path) as `shown` prints it, and also quoted, with those
    spaces escaped, when it holds a no-break or ideographic space (`a b` is no name) or is not in
    Unicode's composed form (NFC: `é` as e + U+0301): a name that prints like another is quoted.
    Free text (messages, authors) keeps those as typed (French and CJK typography)."""
    text = str(text)
    if not _NAME_SPACES.search(text) and unicodedata.is_normalized("NFC", text):
        return shown(text)
    return '"' + _QUOTED_NAME.sub(lambda m: _escape(m.group()), text) + '"'


def one_line(text: str) -> str:
    """An error or warning line with every unsafe character escaped (its names are quoted already)."""
    return _UNSAFE.sub(lambda m: _escape(m.group()), text)


def message_body(message: str, indent: str = "    ") -> list[str]:
    """A commit message's lines as log and show print them, indented: each line's unsafe characters
    escaped (one_line), not quoted as a name is, so that a paragraph break stays a blank line and a
    line indented by its author keeps its indentation."""
    return [indent + one_line(line) if line else "" for line in message.splitlines()]


def short_repr(value, width: int = 40) -> str:
    """A value's repr for a message, cut to about `width` characters with its brackets kept
    (reprlib: `[tensor(1.), tensor(2.), ...]`, not a slice ending mid-element)."""
    import reprlib
    r = reprlib.Repr()
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 3
    r.maxother = r.maxlong = r.maxstring = width
    return r.repr(value)

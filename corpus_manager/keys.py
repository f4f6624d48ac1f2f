"""Reversible escaping of Table Storage keys.

Table Storage forbids ``/ \\ # ?`` and control characters in PartitionKey and RowKey. We
percent-escape exactly those, the escape character ``%`` itself, and the field separators our
composite keys use (``|`` and ``~``), so distinct inputs never share a key (``a_b``, ``a/b`` and
``a%2Fb`` stay three keys) and every key decodes back to what it was made from.
"""

from __future__ import annotations

import re

from .errors import InvalidName

ESCAPE = "%"
# Separators of composite keys; escaped inside fields so splitting is unambiguous.
FIELD_SEP = "|"
SET_SEP = "~"
# Table Storage: a key is at most 1 KiB, of UTF-16 (Azurite refuses more than 512 UTF-16 code units)
MAX_KEY_UNITS = 512

_FORBIDDEN = set("/\\#?%|~")


def _needs_escape(ch: str) -> bool:
    code = ord(ch)
    # control characters (C0, DEL, C1) are refused by Table Storage; lone surrogates cannot travel as UTF-8
    return ch in _FORBIDDEN or code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF


def escape(text: str) -> str:
    """Escape one key field. Characters above U+00FF get a 4- or 8-digit form, so decoding is greedy-free."""
    out = []
    for ch in text:
        if _needs_escape(ch):
            code = ord(ch)
            out.append(f"%{code:02X}" if code <= 0xFF else f"%u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


_ESCAPED = re.compile(r"%(?:u([0-9A-F]{4})|([0-9A-F]{2}))")


def unescape(key: str) -> str:
    def repl(m: re.Match[str]) -> str:
        return chr(int(m.group(1) or m.group(2), 16))

    return _ESCAPED.sub(repl, key)


def check_key(key: str, what: str) -> str:
    units = len(key.encode("utf-16-le", "surrogatepass")) // 2
    if units > MAX_KEY_UNITS:
        raise InvalidName(
            f"{what} is too long for a Table key ({units} UTF-16 units after escaping; Table "
            f"Storage allows 1 KiB = {MAX_KEY_UNITS})"
        )
    return key

"""HStreamDB's object identifier rule (stream names, subscription and shard reader ids).

Protocol profile: 1-255 characters, an ASCII letter first, then ASCII letters, digits,
'-' or '_'. Profile hstream-0.20 checks what the real server checks
(common/hstream/HStream/Utils/Validation.hs:33-54): Haskell's `isLetter` first and
`isAlphaNum` (or '-', '_') after, both Unicode-wide, so "流-1" or "écho" are valid names.
"""

from __future__ import annotations

import re
import unicodedata

import grpc

from refserver.errors import HStreamError

NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,254}")
# GHC's isLetter (= isAlpha) and isAlphaNum by Unicode general category.
_LETTERS = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo"})
_ALPHANUMS = _LETTERS | {"Nd", "Nl", "No"}
MARKS = "-_"


def valid_name(name: str, unicode_rule: bool = False) -> bool:
    if not unicode_rule:
        return NAME_RULE.fullmatch(name) is not None
    return (
        0 < len(name) <= 255
        and unicodedata.category(name[0]) in _LETTERS
        and all(c in MARKS or unicodedata.category(c) in _ALPHANUMS for c in name)
    )


def check_name(name: str, what: str, code: int, unicode_rule: bool = False) -> None:
    if valid_name(name, unicode_rule):
        return
    allowed = "letters, digits" if not unicode_rule else "Unicode letters, digits"
    raise HStreamError(
        grpc.StatusCode.INVALID_ARGUMENT,
        code,
        f"invalid {what} {name!r}: 1-255 characters, a letter first, then {allowed}, '-' or '_'",
    )

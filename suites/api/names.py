"""The protocol's name rule (§2: 1-255 characters, a letter first, then letters, digits, '-'
or '_'; else 3/204) and the two readings of "letter" a server may take.

The protocol does not fix the alphabet. Real HStreamDB reads it as Unicode: GHC's `isLetter`
first, `isAlphaNum` after (common/hstream/HStream/Utils/Validation.hs:33-54), so "écho" and
"流_1" are names. The reference server's protocol profile reads it as ASCII. Both agree on
every ASCII name and on every name that breaks the Unicode rule, so a check demands their
common part: names valid under the ASCII reading are accepted, names invalid under the
Unicode reading are refused with 3/204. Names only the Unicode reading admits may be
accepted or refused with 3/204, never anything else (`MAY_DIFFER`).
"""

from __future__ import annotations

import re
import unicodedata

ASCII_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,254}")
# GHC's isLetter (= isAlpha) and isAlphaNum, by Unicode general category.
LETTERS = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo"})
ALPHANUMS = LETTERS | {"Nd", "Nl", "No"}

VALID, INVALID, MAY_DIFFER = "valid", "invalid", "valid under the Unicode reading only"


def unicode_valid(name: str, unassigned_letters: bool = False) -> bool:
    """The Unicode reading; `unassigned_letters` counts code points this Python's tables do
    not know (category Cn) as letters, since the server's newer tables may."""
    letters = LETTERS | {"Cn"} if unassigned_letters else LETTERS
    alphanums = ALPHANUMS | letters
    return (
        0 < len(name) <= 255
        and unicodedata.category(name[0]) in letters
        and all(c in "-_" or unicodedata.category(c) in alphanums for c in name)
    )


def classify(name: str) -> str:
    """VALID (every reading accepts it), INVALID (every reading refuses it) or MAY_DIFFER."""
    if ASCII_RULE.fullmatch(name):
        return VALID
    if unicode_valid(name, unassigned_letters=True):
        return MAY_DIFFER
    return INVALID

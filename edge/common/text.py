"""Folding written words so that spelling cannot hide what they ask for.

Why one function: deployment tags (the law-enforcement refusal) and the
configuration's refusal of retired attributes (emotion, gender, age, ...)
both judge words a person wrote, and a look-alike that gets past one must
not get past the other.
"""
from __future__ import annotations

import re
import unicodedata

SEPARATOR = "-"
# Characters folded to the separator besides whitespace and the Unicode dash and
# connector-punctuation categories (Pd, Pc): the ones people type between words.
EXTRA_SEPARATORS = frozenset({".", "/", "\\", "\u2212"})  # U+2212 MINUS SIGN is category Sm
SEPARATOR_CATEGORIES = frozenset({"Pd", "Pc", "Zs", "Zl", "Zp"})


def _is_separator(ch: str) -> bool:
    return ch.isspace() or ch in EXTRA_SEPARATORS or unicodedata.category(ch) in SEPARATOR_CATEGORIES


def fold(written: str, separator: str = SEPARATOR) -> str:
    """NFKC, case fold (NFKC again, since folding can denormalise), runs of separators to one `separator`.

    With `separator=""` the words run together: "Facial_Hair" and "facial hair" both read "facialhair".
    """
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", written).casefold())
    folded = "".join(SEPARATOR if _is_separator(ch) else ch for ch in text)
    folded = re.sub(f"{SEPARATOR}+", SEPARATOR, folded).strip(SEPARATOR)
    return folded.replace(SEPARATOR, separator)

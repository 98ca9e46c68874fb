"""Deployment tags: the controlled vocabulary and how a written tag is judged.

Why so strict: the law-enforcement refusal must not be defeated by spelling.
A tag is folded (Unicode NFKC, case folding, separators to '-') and then
compared with the vocabulary shipped in `edge/trust/deployment-tags.json`.
Anything that still holds a character outside [a-z0-9-] after folding, or that
is not listed, is *unknown*, and unknown keeps identification off (fail closed):
a Cyrillic 'о' in "pоlice" makes the tag unknown rather than harmless.
"""
from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from edge.common.errors import ConfigError
from edge.common.text import fold

VOCABULARY_RESOURCE = "deployment-tags.json"
FOLDED_TAG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_TAG_CHARS = 64


class TagClass(enum.Enum):
    ALLOWED = "allowed"
    PUBLIC_SPACE = "public-space"
    LAW_ENFORCEMENT = "law-enforcement"
    UNKNOWN = "unknown"

    @property
    def forbids_identification(self) -> bool:
        return self is not TagClass.ALLOWED


@dataclass(frozen=True, slots=True)
class Vocabulary:
    version: int
    allowed: frozenset[str]
    public_space: frozenset[str]
    law_enforcement: frozenset[str]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Vocabulary":
        """Why validated: a vocabulary with a misspelt entry would silently fail open."""
        try:
            version = data["vocabulary_version"]
            lists = {k: data[k] for k in ("allowed", "public_space", "law_enforcement")}
        except KeyError as exc:
            raise ConfigError("deployment-tag vocabulary", f"missing key {exc.args[0]!r}",
                              "vocabulary_version, allowed, public_space, law_enforcement") from None
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError("deployment-tag vocabulary", "vocabulary_version is not an integer")
        sets: dict[str, frozenset[str]] = {}
        for key, items in lists.items():
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"deployment-tag vocabulary {key}", "is not a list of strings")
            for item in items:
                if fold_tag(item) != item or not FOLDED_TAG_PATTERN.fullmatch(item):
                    raise ConfigError(f"deployment-tag vocabulary {key}",
                                      f"entry {item!r} is not in folded form", "lower-case a-z, 0-9 and single '-'")
            sets[key] = frozenset(items)
        overlap = (sets["allowed"] & sets["public_space"]) | (sets["allowed"] & sets["law_enforcement"]) \
            | (sets["public_space"] & sets["law_enforcement"])
        if overlap:
            raise ConfigError("deployment-tag vocabulary", f"tags listed in more than one class: {sorted(overlap)}")
        return cls(version, sets["allowed"], sets["public_space"], sets["law_enforcement"])

    def classify_folded(self, folded: str) -> TagClass:
        if folded in self.law_enforcement:
            return TagClass.LAW_ENFORCEMENT
        if folded in self.public_space:
            return TagClass.PUBLIC_SPACE
        if folded in self.allowed:
            return TagClass.ALLOWED
        return TagClass.UNKNOWN


@dataclass(frozen=True, slots=True)
class TagVerdict:
    written: str
    folded: str
    tag_class: TagClass

    def describe(self) -> str:
        shown = repr(self.written) if self.written == self.folded else f"{self.written!r} (read as {self.folded!r})"
        if self.tag_class is TagClass.ALLOWED:
            return f"tag {shown} is allowed"
        if self.tag_class is TagClass.LAW_ENFORCEMENT:
            return f"tag {shown} is a law-enforcement deployment: identification is never allowed for it"
        if self.tag_class is TagClass.PUBLIC_SPACE:
            return f"tag {shown} is a public space: passers-by cannot consent, identification is not allowed"
        return f"tag {shown} is not in the deployment-tag vocabulary: unknown tags keep identification off"


def fold_tag(written: str) -> str:
    """A tag as the vocabulary lists it: `edge.common.text.fold` (NFKC, case fold, separators to single '-')."""
    return fold(written)


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    raw = resources.files(__package__).joinpath(VOCABULARY_RESOURCE).read_text(encoding="utf-8")
    return Vocabulary.from_mapping(json.loads(raw))


def classify_tag(written: str, vocabulary: Vocabulary | None = None) -> TagVerdict:
    vocab = vocabulary or default_vocabulary()
    if not isinstance(written, str) or len(written) > MAX_TAG_CHARS * 4:
        return TagVerdict(str(written)[:MAX_TAG_CHARS], "", TagClass.UNKNOWN)
    folded = fold_tag(written)
    if len(folded) > MAX_TAG_CHARS or not FOLDED_TAG_PATTERN.fullmatch(folded):
        return TagVerdict(written, folded, TagClass.UNKNOWN)
    return TagVerdict(written, folded, vocab.classify_folded(folded))


def identification_blockers(tags: Iterable[str], vocabulary: Vocabulary | None = None) -> tuple[str, ...]:
    """Reasons the tags forbid identification; empty means the tags allow it.

    No tag at all also forbids it: a deployment nobody described is not one
    anybody vouched for.
    """
    verdicts = [classify_tag(t, vocabulary) for t in tags]
    if not verdicts:
        return ("no deployment tag is declared: identification needs the deployment described by known tags",)
    return tuple(v.describe() for v in verdicts if v.tag_class.forbids_identification)

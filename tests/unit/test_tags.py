"""Deployment tags: the law-enforcement and public-space refusals cannot be spelt around."""
from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.common.errors import ConfigError
from edge.trust.tags import (
    FOLDED_TAG_PATTERN,
    TagClass,
    Vocabulary,
    classify_tag,
    default_vocabulary,
    fold_tag,
    identification_blockers,
)

LAW_ENFORCEMENT = ["law-enforcement", "police", "sheriff", "corrections", "border-control", "body-worn",
                   "dash-mounted", "patrol", "suspect-database", "inmate-database", "mugshot-database"]
ALLOWED = ["retail", "office", "home", "education", "healthcare", "transport", "hospitality", "event",
           "accessibility", "access-control", "research"]


def test_shipped_vocabulary_is_the_documented_one() -> None:
    vocab = default_vocabulary()
    assert vocab.law_enforcement == frozenset(LAW_ENFORCEMENT)
    assert vocab.allowed == frozenset(ALLOWED)
    assert vocab.public_space == frozenset({"public-space"})


def test_vocabulary_is_shipped_as_package_data() -> None:
    raw = resources.files("edge.trust").joinpath("deployment-tags.json").read_text(encoding="utf-8")
    assert json.loads(raw)["vocabulary_version"] == default_vocabulary().version


@pytest.mark.parametrize("tag", ALLOWED)
def test_allowed_tags(tag: str) -> None:
    assert classify_tag(tag).tag_class is TagClass.ALLOWED


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


SPELLINGS = [
    lambda t: t.upper(),
    lambda t: t.title(),
    lambda t: t.replace("-", " "),
    lambda t: t.replace("-", "_"),
    lambda t: t.replace("-", "  -  "),
    lambda t: t.replace("-", "--"),
    lambda t: t.replace("-", "\u2013"),  # en dash
    lambda t: t.replace("-", "\u2010"),  # hyphen
    lambda t: t.replace("-", "\u2212"),  # minus sign
    lambda t: t.replace("-", "\u00a0"),  # no-break space
    lambda t: t.replace("-", "\u3000"),  # ideographic space
    lambda t: t.replace("-", "."),
    lambda t: t.replace("-", "/"),
    lambda t: f"  {t}\t",
    lambda t: f"-{t}-",
    _fullwidth,
    lambda t: _fullwidth(t.upper()),
    lambda t: unicodedata.normalize("NFD", t),
]


@pytest.mark.parametrize("tag", LAW_ENFORCEMENT)
@pytest.mark.parametrize("spell", SPELLINGS)
def test_law_enforcement_spelling_tricks_still_law_enforcement(tag: str, spell) -> None:  # type: ignore[no-untyped-def]
    written = spell(tag)
    verdict = classify_tag(written)
    assert verdict.tag_class is TagClass.LAW_ENFORCEMENT, (written, verdict)
    assert identification_blockers([written])


@pytest.mark.parametrize("written", [
    "p\u043elice",            # Cyrillic o
    "\u0440olice",            # Cyrillic er looks like p
    "law\u200benforcement",   # zero-width space
    "law\u00adenforcement",   # soft hyphen
    "lawenforcement",          # separator dropped
    "polic\u0435",            # Cyrillic e
    "\u03c1olice",            # Greek rho
    "police\u0301",           # combining accent
    "poli\u0441e",            # Cyrillic es
    "police-department",       # a new law-enforcement word
    "\U0001d429\U0001d428\U0001d425\U0001d422\U0001d41c\U0001d41e",  # mathematical bold: NFKC folds to police
])
def test_look_alikes_never_pass_as_allowed(written: str) -> None:
    verdict = classify_tag(written)
    assert verdict.tag_class in (TagClass.UNKNOWN, TagClass.LAW_ENFORCEMENT)
    assert identification_blockers([written])


def test_mathematical_alphanumerics_fold_to_the_real_word() -> None:
    assert classify_tag("\U0001d429\U0001d428\U0001d425\U0001d422\U0001d41c\U0001d41e").tag_class is \
        TagClass.LAW_ENFORCEMENT


@pytest.mark.parametrize("written", ["public space", "PUBLIC_SPACE", _fullwidth("public-space")])
def test_public_space_forbids_identification(written: str) -> None:
    assert classify_tag(written).tag_class is TagClass.PUBLIC_SPACE
    assert "public space" in identification_blockers([written])[0]


def test_unknown_tag_forbids_identification() -> None:
    assert classify_tag("stadium").tag_class is TagClass.UNKNOWN
    assert "not in the deployment-tag vocabulary" in identification_blockers(["retail", "stadium"])[0]


def test_no_tags_forbid_identification() -> None:
    assert "no deployment tag" in identification_blockers([])[0]


def test_allowed_tags_allow_identification() -> None:
    assert identification_blockers(["Retail", "access control"]) == ()


def test_one_bad_tag_among_good_ones_blocks() -> None:
    assert len(identification_blockers(["retail", "office", "Police"])) == 1


def test_overlong_tag_is_unknown() -> None:
    assert classify_tag("retail" * 100).tag_class is TagClass.UNKNOWN


@pytest.mark.parametrize("data, problem", [
    ({"vocabulary_version": 1, "allowed": ["Retail"], "public_space": [], "law_enforcement": []}, "folded form"),
    ({"vocabulary_version": 1, "allowed": ["police"], "public_space": [], "law_enforcement": ["police"]},
     "more than one class"),
    ({"vocabulary_version": 1, "allowed": "retail", "public_space": [], "law_enforcement": []}, "list of strings"),
    ({"allowed": [], "public_space": [], "law_enforcement": []}, "missing key"),
])
def test_bad_vocabulary_is_refused(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Vocabulary.from_mapping(data)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_fold_is_idempotent_and_classification_total(text: str) -> None:
    folded = fold_tag(text)
    assert fold_tag(folded) == folded
    verdict = classify_tag(text)
    if verdict.tag_class is not TagClass.UNKNOWN:
        assert FOLDED_TAG_PATTERN.fullmatch(verdict.folded)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_only_exact_vocabulary_words_are_allowed(text: str) -> None:
    verdict = classify_tag(text)
    if verdict.tag_class is TagClass.ALLOWED:
        assert verdict.folded in ALLOWED
        assert re.fullmatch(r"[a-z0-9-]+", verdict.folded)


separators = st.sampled_from([" ", "_", "-", "\u2013", "\u2014", "\u00a0", "\u3000", "\t", ".", "\uff3f", "\uff0d"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LAW_ENFORCEMENT), separators, st.lists(st.booleans(), min_size=40, max_size=40),
       st.booleans(), st.text(alphabet=" \t_-", max_size=3), st.text(alphabet=" \t_-", max_size=3))
def test_law_enforcement_survives_random_case_separator_and_width(tag: str, sep: str, upper: list[bool],
                                                                  wide: bool, lead: str, trail: str) -> None:
    spelt = "".join(c.upper() if u else c for c, u in zip(tag, upper)).replace("-", sep)
    if wide:
        spelt = _fullwidth(spelt)
    assert classify_tag(lead + spelt + trail).tag_class is TagClass.LAW_ENFORCEMENT

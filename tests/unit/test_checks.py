"""Unit tests of the built-in checks: choice extraction, text checks, their parameter models."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pytest_llmeval.cases.schema import CaseSpec
from pytest_llmeval.checks import choice, text
from pytest_llmeval.checks.choice import extract_choice
from pytest_llmeval.checks.text import extract_json, normalize
from pytest_llmeval.core.checks import CheckDef, CheckOutcome

CHECKS: dict[str, CheckDef] = {c.name: c for c in [*text.CHECKS, *choice.CHECKS]}
CAPITALS = {"A": "London", "B": "Paris", "C": "Rome"}

fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_case(kind: str = "qa", **fields: Any) -> CaseSpec:
    return CaseSpec(suite="s", kind=kind, id="c", path=Path("x.yaml"), line=1, system=None, prompt="p",
                    params={}, tags=(), checks=[], fields=fields)


def params(name: str, value: Any) -> Any:
    """Validate parameters as a case file would give them: a mapping (full form) or a shorthand value."""
    d = CHECKS[name]
    raw = value if isinstance(value, dict) else {d.shorthand: value}
    return d.params.model_validate(raw)


def grade(name: str, answer: str, value: Any, case: CaseSpec | None = None) -> CheckOutcome:
    d = CHECKS[name]
    assert d.grade is not None
    outcome = d.grade(answer, case or make_case(), params(name, value))
    assert outcome.name == name
    assert 0.0 <= outcome.score <= 1.0
    assert outcome.passed == (outcome.reason == ""), "a failure says why; a pass needs no reason"
    return outcome


# ------------------------------------------------------------------------------------ registration


def test_the_built_in_checks_are_registered_with_their_shorthands() -> None:
    assert [c.name for c in text.CHECKS] == ["contains", "not_contains", "regex", "equals", "json"]
    assert [c.name for c in choice.CHECKS] == ["choice"]
    assert CHECKS["contains"].shorthand == "value"
    assert CHECKS["regex"].shorthand == "pattern"
    assert CHECKS["json"].shorthand is None
    assert CHECKS["choice"].kinds == frozenset({"choice"})
    assert all(c.grade is not None and c.doc for c in CHECKS.values())


def test_unknown_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="ignroe_case"):
        params("contains", {"value": "x", "ignroe_case": True})


# ---------------------------------------------------------------------------------- extract_choice


@pytest.mark.parametrize("answer, expected", [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B)", "B"),
    ("[B]", "B"),
    ("B.", "B"),
    ("  B\n", "B"),
    ("B. Paris", "B"),
    ("B) Paris", "B"),
    ("(B) Paris", "B"),
    ("**B) Paris**", "B"),
    ("**B.** Paris", "B"),
    ("The answer is (B).", "B"),
    ("The answer is B.", "B"),
    ("Answer: b", "B"),
    ("answer is B", "B"),
    ("Final answer: B", "B"),
    ("**Answer:** B", "B"),
    ("**Answer**: B", "B"),
    ("The correct answer is: **B**", "B"),
    ("The answer is option B", "B"),
    ("Answer - C", "C"),
    ("the answer is\n\nC", "C"),
    ("My answer: (c)", "C"),
    ("Option C", "C"),
    ("**B**", "B"),
    ("I think the correct answer is C because Rome is the capital of Italy.", "C"),
    ("The answer is B, Paris.", "B"),
    ("Options: (A) London (B) Paris (C) Rome.\nAnswer: C", "C"),
    ("Paris", "B"),
    ("The capital of France is Paris.", "B"),
    ("A good question. The answer is C.", "C"),
    ("A) London", "A"),
    ("a", "A"),
    ("The answer is a.", "A"),
])
def test_extract_choice_finds_the_committed_letter(answer: str, expected: str) -> None:
    assert extract_choice(answer, CAPITALS) == expected


@pytest.mark.parametrize("answer", [
    "",
    "   \n",
    "A or B",
    "(A) and (B)",
    "A/B",
    "A, B",
    "b or c",
    "A and B",
    "The answer is B or C",
    "The answer is (B)/(C)",
    "Paris, not London",
    "D",
    "(D)",
    "The answer is D.",
    "I need a moment",
    "I don't know.",
    "Could be anything.",
])
def test_extract_choice_returns_none_when_the_answer_commits_to_no_single_choice(answer: str) -> None:
    assert extract_choice(answer, CAPITALS) is None


def test_the_article_a_is_not_choice_a() -> None:
    assert extract_choice("A good question. The answer is C.", CAPITALS) == "C"
    assert extract_choice("I need a moment", CAPITALS) is None
    assert extract_choice("A lot of people get this wrong.", CAPITALS) is None
    assert extract_choice("The answer is a tough one, but I am sure.", CAPITALS) != "A"


def test_a_letter_counts_only_when_it_is_a_choice() -> None:
    two = {"A": "yes", "B": "no"}
    assert extract_choice("C", two) is None
    assert extract_choice("The answer is (C).", two) is None
    assert extract_choice("(C) or maybe (B)", two) == "B"
    assert extract_choice("anything", {}) is None
    assert extract_choice("?", {}) is None


def test_a_choice_quoted_inside_a_longer_quoted_choice_does_not_count() -> None:
    cities = {"A": "York", "B": "New York City", "C": "Boston"}
    assert extract_choice("New York City", cities) == "B"
    assert extract_choice("I would say York.", cities) == "A"
    assert extract_choice("York or Boston", cities) is None


def test_a_choice_text_that_mentions_other_letters_is_still_that_choice() -> None:
    choices = {"A": "London", "B": "Paris", "C": "Both (A) and (B)"}
    assert extract_choice("C) Both (A) and (B)", choices) == "C"
    assert extract_choice("(A) and (B)", choices) is None


# ------------------------------------------------------------------------- extract_choice properties

_LETTERS = "ABCDE"
_WORD_CHARS = string.ascii_letters + string.digits + " ,.'-()?!&"


@st.composite
def choices_and_letter(draw: st.DrawFn) -> tuple[dict[str, str], str]:
    n = draw(st.integers(2, 5))
    texts = draw(st.lists(st.text(_WORD_CHARS, max_size=30), min_size=n, max_size=n))
    choices = dict(zip(_LETTERS[:n], texts, strict=True))
    return choices, draw(st.sampled_from(sorted(choices)))


def _plain(choices: dict[str, str]) -> bool:
    # Deliberately confusing choice texts are left out: ones that talk about answers or options, and
    # ones that are nothing but lone letters ("A) B" is anyone's guess).
    return all(
        not any(w in v.lower() for w in ("answer", "option", "choice")) and (not v or re.search(r"\w\w", v))
        for v in choices.values()
    )


@fast
@given(choices_and_letter())
def test_the_answer_is_letter_extracts_that_letter(cl: tuple[dict[str, str], str]) -> None:
    choices, letter = cl
    assume(_plain(choices))
    assert extract_choice(f"The answer is ({letter}).", choices) == letter


@fast
@given(choices_and_letter())
def test_letter_then_its_choice_text_extracts_that_letter(cl: tuple[dict[str, str], str]) -> None:
    choices, letter = cl
    assume(_plain(choices))
    assert extract_choice(f"{letter}) {choices[letter]}", choices) == letter


@fast
@given(choices_and_letter(), st.text())
def test_extraction_never_returns_a_letter_outside_the_choices(cl: tuple[dict[str, str], str],
                                                               answer: str) -> None:
    choices, _ = cl
    got = extract_choice(answer, choices)
    assert got is None or got in choices


@fast
@given(choices_and_letter(), st.sampled_from(["{} or {}", "({}) and ({})", "The answer is {} or {}."]))
def test_a_hedge_between_two_letters_commits_to_none(cl: tuple[dict[str, str], str], form: str) -> None:
    choices, letter = cl
    assume(_plain(choices))
    other = next(k for k in choices if k != letter)
    assert extract_choice(form.format(letter, other), choices) is None


# ---------------------------------------------------------------------------------------- normalize


@pytest.mark.parametrize("raw, expected", [
    ("The Cat!", "cat"),
    ("  An   apple. ", "apple"),
    ("Hello,   World", "hello world"),
    ("the theory of a thing", "theory of thing"),
    ("It's", "its"),
    ("Paris.", "paris"),
    ("A", ""),
    ("", ""),
    ("Tab\tand\nnewline", "tab and newline"),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@fast
@given(st.text())
def test_normalize_is_idempotent(s: str) -> None:
    assert normalize(normalize(s)) == normalize(s)


# ----------------------------------------------------------------------------------------- contains


def test_contains_single_value_ignores_case_by_default() -> None:
    assert grade("contains", "The capital is PARIS.", "paris").passed
    out = grade("contains", "The capital is Lyon.", "Paris")
    assert not out.passed and out.score == 0.0 and "'Paris'" in out.reason


def test_contains_can_match_case() -> None:
    assert not grade("contains", "The capital is PARIS.", {"value": "Paris", "ignore_case": False}).passed
    assert grade("contains", "The capital is Paris.", {"value": "Paris", "ignore_case": False}).passed


def test_contains_list_needs_every_value_and_scores_the_share_found() -> None:
    out = grade("contains", "Paris is in France", ["Paris", "France", "Europe", "Seine"])
    assert not out.passed
    assert out.score == pytest.approx(0.5)
    assert "'Europe'" in out.reason and "'Seine'" in out.reason and "Paris" not in out.reason
    full = grade("contains", "Paris is in France", ["Paris", "France"])
    assert full.passed and full.score == 1.0


def test_contains_any_passes_on_one_value() -> None:
    assert grade("contains", "It is Paris", {"value": ["Paris", "Lyon"], "any": True}).score == 1.0
    out = grade("contains", "It is Nice", {"value": ["Paris", "Lyon"], "any": True})
    assert not out.passed and out.score == 0.0


@pytest.mark.parametrize("bad", ["", [], ["Paris", ""]])
def test_contains_rejects_empty_values(bad: Any) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        params("contains", bad)


def test_not_contains() -> None:
    assert grade("not_contains", "It is Paris", "London").passed
    out = grade("not_contains", "It is Paris, not LONDON", ["london", "Rome", "Berlin", "Paris"])
    assert not out.passed
    assert out.score == pytest.approx(0.5)
    assert "'london'" in out.reason and "'Paris'" in out.reason and "Rome" not in out.reason
    assert grade("not_contains", "It is LONDON", {"value": "London", "ignore_case": False}).passed


# -------------------------------------------------------------------------------------------- regex


def test_regex_searches_by_default() -> None:
    assert grade("regex", "The year was 1969.", r"\b19\d\d\b").passed
    out = grade("regex", "The year was 2001.", r"\b19\d\d\b")
    assert not out.passed and out.score == 0.0 and r"\b19\d\d\b" in out.reason


def test_regex_full_must_match_the_whole_stripped_answer() -> None:
    assert grade("regex", "  1969\n", {"pattern": r"\d{4}", "full": True}).passed
    assert not grade("regex", "In 1969", {"pattern": r"\d{4}", "full": True}).passed
    assert grade("regex", "In 1969", {"pattern": r"\d{4}"}).passed


def test_regex_case() -> None:
    assert not grade("regex", "PARIS", "paris").passed
    assert grade("regex", "PARIS", {"pattern": "paris", "ignore_case": True}).passed


@pytest.mark.parametrize("bad", ["(unclosed", "[a-", "*x"])
def test_regex_rejects_an_invalid_pattern(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        params("regex", bad)


# ------------------------------------------------------------------------------------------- equals


@pytest.mark.parametrize("answer", ["Paris", "paris", "  PARIS. ", "The Paris!", "paris\n"])
def test_equals_normalises(answer: str) -> None:
    assert grade("equals", answer, "Paris").passed


def test_equals_normalises_whitespace_and_articles_inside() -> None:
    assert grade("equals", "the  Eiffel\tTower", "Eiffel Tower").passed
    assert grade("equals", "A dog, an apple.", "dog apple").passed


def test_equals_is_not_contains() -> None:
    out = grade("equals", "It is Paris", "Paris")
    assert not out.passed and out.score == 0.0 and "'Paris'" in out.reason


def test_equals_accepts_any_listed_value() -> None:
    assert grade("equals", "Lutetia", ["Paris", "Lutetia"]).passed
    out = grade("equals", "Rome", ["Paris", "Lutetia"])
    assert not out.passed and "'Paris' or 'Lutetia'" in out.reason


def test_equals_without_normalisation_only_strips() -> None:
    assert grade("equals", "  Paris\n", {"value": "Paris", "normalize": False}).passed
    assert not grade("equals", "paris", {"value": "Paris", "normalize": False}).passed
    assert not grade("equals", "Paris.", {"value": "Paris", "normalize": False}).passed


# --------------------------------------------------------------------------------------------- json


@pytest.mark.parametrize("answer, value", [
    ('{"a": 1}', {"a": 1}),
    ("  [1, 2]\n", [1, 2]),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('Here you go:\n```json\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}),
    ('```\n{"a": 1}\n```', {"a": 1}),
    ('Sure! The result is {"a": 1}. Hope that helps.', {"a": 1}),
    ('Result: [{"a": 1}, {"a": 2}] as asked.', [{"a": 1}, {"a": 2}]),
    ('First {"a": 1} and then {"b": 2}.', {"a": 1}),
    ('Sure: {"a": 1} (mind the {braces} in templates)', {"a": 1}),
    ('Pick [A] or [B]: {"pick": "A"}', {"pick": "A"}),
])
def test_extract_json(answer: str, value: Any) -> None:
    assert extract_json(answer) == value


@pytest.mark.parametrize("answer", ["", "no JSON here", "{not: json}", "[" * 5000])
def test_extract_json_fails_without_json(answer: str) -> None:
    with pytest.raises(ValueError, match="no parseable JSON"):
        extract_json(answer)


def test_json_check_passes_and_fails_with_a_reason() -> None:
    assert grade("json", 'Here: {"a": 1}', {}).passed
    out = grade("json", "I cannot produce JSON.", {})
    assert not out.passed and out.score == 0.0 and "no parseable JSON" in out.reason


PERSON = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_json_schema_valid() -> None:
    assert grade("json", '```json\n{"name": "Ada", "age": 36, "tags": ["math"]}\n```', {"schema": PERSON}).passed


def test_json_schema_invalid_names_the_failing_path() -> None:
    out = grade("json", '{"name": "Ada", "age": "old"}', {"schema": PERSON})
    assert not out.passed and out.score == 0.0
    assert "at age" in out.reason and "integer" in out.reason
    nested = grade("json", '{"name": "Ada", "age": 1, "tags": ["x", 2]}', {"schema": PERSON})
    assert not nested.passed and "at tags/1" in nested.reason
    root = grade("json", '{"name": "Ada"}', {"schema": PERSON})
    assert not root.passed and "(root)" in root.reason and "age" in root.reason


def test_json_schema_is_given_by_the_key_schema() -> None:
    p = params("json", {"schema": {"type": "array"}})
    assert p.schema_ == {"type": "array"}
    assert params("json", {}).schema_ is None


def test_json_rejects_an_invalid_schema() -> None:
    with pytest.raises(ValueError, match="invalid JSON schema"):
        params("json", {"schema": {"type": "no-such-type"}})


# ------------------------------------------------------------------------------------------- choice


def choice_case(answer: str = "B") -> CaseSpec:
    return make_case("choice", question="Capital of France?", choices=dict(CAPITALS), answer=answer)


def test_choice_uses_the_case_answer_by_default() -> None:
    case = choice_case()
    assert grade("choice", "The answer is (B).", {}, case).passed
    assert grade("choice", "Paris", {}, case).passed
    wrong = grade("choice", "A) London", {}, case)
    assert not wrong.passed and wrong.score == 0.0 and "chose A" in wrong.reason and "expected B" in wrong.reason
    none = grade("choice", "I am not sure.", {}, case)
    assert not none.passed and "no choice found" in none.reason and "expected B" in none.reason


def test_choice_explicit_answer_overrides_the_case_answer() -> None:
    case = choice_case("B")
    assert grade("choice", "C", "C", case).passed
    assert grade("choice", "C", {"answer": "c"}, case).passed
    assert not grade("choice", "B", {"answer": "C"}, case).passed


# ------------------------------------------------------------------------------------ score bounds


_values = st.one_of(st.text(min_size=1, max_size=5),
                    st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4))


@fast
@given(st.text(max_size=40), _values, st.booleans(), st.booleans())
def test_contains_scores_stay_in_bounds(answer: str, value: Any, ignore_case: bool, any_: bool) -> None:
    for name in ("contains", "not_contains"):
        out = grade(name, answer, {"value": value, "ignore_case": ignore_case, "any": any_})
        assert out.passed == (out.score == 1.0)


@fast
@given(st.text(max_size=40), _values, st.booleans())
def test_equals_scores_stay_in_bounds(answer: str, value: Any, norm: bool) -> None:
    out = grade("equals", answer, {"value": value, "normalize": norm})
    assert out.score in (0.0, 1.0)


@fast
@given(st.text(max_size=40), st.sampled_from(sorted(CAPITALS)))
def test_choice_scores_stay_in_bounds(answer: str, expected: str) -> None:
    out = grade("choice", answer, {}, choice_case(expected))
    assert out.score in (0.0, 1.0)

"""Multiple-choice grading: find the letter the model chose, however it phrased it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pytest_llmeval.checks import CheckDef, CheckOutcome, CheckParams
from pytest_llmeval.checks.text import normalize

if TYPE_CHECKING:
    from pytest_llmeval.cases import CaseSpec


def extract_choice(answer: str, choices: dict[str, str]) -> str | None:
    """The choice letter an answer commits to, or None when it commits to none (or to several).

    Handles "B", "(B)", "B) Paris", "The answer is (B).", "Answer: b", "Option C", and an answer that
    quotes exactly one choice's text. Only letters that are keys of ``choices`` count.
    """
    keys = {k.upper() for k in choices}
    text = answer.strip()
    if not text:
        return None
    letter = "|".join(sorted(keys))

    patterns = [
        rf"^\W*({letter})\W*$",  # the whole answer is the letter
        rf"(?i:answer|option|choice)\s*(?:is|would be|:|-)?\s*(?:option\s*)?[\(\[]?\*{{0,2}}\s*({letter})\b",
        rf"^[\(\[]?({letter})[\)\]\.:]",  # "B) Paris", "(B) ...", "B. ..."
        rf"[\(\[]({letter})[\)\]]",  # "(B)" anywhere
    ]
    for i, pat in enumerate(patterns):
        # Lower-case letters only count where they cannot be a word: the whole answer, or after "answer:".
        flags = re.IGNORECASE if i in (0, 1) else 0
        found = {m.upper() for m in re.findall(pat, text, flags)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None

    # The answer quotes exactly one choice text (longest-first so "New York City" beats "York").
    norm_answer = f" {normalize(text)} "
    quoted = [k for k, v in choices.items() if normalize(v) and f" {normalize(v)} " in norm_answer]
    if len(quoted) == 1:
        return quoted[0].upper()
    return None


class ChoiceParams(CheckParams):
    answer: str | None = None  # the expected letter; default: the case's `answer` field


def grade_choice(answer: str, case: CaseSpec, p: ChoiceParams) -> CheckOutcome:
    choices: dict[str, str] = case.fields.get("choices") or {}
    expected = (p.answer or str(case.fields.get("answer", ""))).upper()
    got = extract_choice(answer, choices)
    if got is None:
        return CheckOutcome("choice", False, 0.0, f"no choice found in the answer; expected {expected}")
    passed = got == expected
    return CheckOutcome("choice", passed, float(passed), "" if passed else f"chose {got}, expected {expected}")


CHECKS = [
    CheckDef("choice", ChoiceParams, grade_choice, shorthand="answer", kinds=frozenset({"choice"}),
             doc="the chosen letter (or quoted choice text) equals the expected answer"),
]

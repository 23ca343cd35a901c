"""Multiple-choice grading: find the letter the model chose, however it phrased it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pytest_llmeval.checks.text import normalize
from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec


def extract_choice(answer: str, choices: dict[str, str]) -> str | None:
    """The choice letter an answer commits to, or None when it commits to none (or to several).

    Handles "B", "(B)", "B) Paris", "The answer is (B).", "Answer: b", "Option C", and an answer that
    quotes exactly one choice's text. Only letters that are keys of ``choices`` count; a hedge
    ("A or B", "(A) and (B)", "the answer is B or C") commits to none.
    """
    keys = {k.upper() for k in choices}
    text = answer.strip()
    if not text or not keys:
        return None
    letter = "|".join(sorted(keys))
    sep = r"[\s*_:\-\(\[]*"  # spaces, markdown emphasis, ":" or "-", an opening bracket

    # 1. The whole answer is the letter: "B", "b", "(B)", "**B**".
    m = re.fullmatch(rf"\W*({letter})\W*", text, re.IGNORECASE)
    if m:
        return m.group(1).upper()
    if re.fullmatch(rf"(?:\W*\b(?:{letter})\b\W*(?:or|and)?)+", text, re.IGNORECASE):
        # Nothing but letters: "A or B", "(A) and (B)", "A/B" commit to none; "A) A" is A.
        only = {x.upper() for x in re.findall(rf"\b({letter})\b", text, re.IGNORECASE)}
        return only.pop() if len(only) == 1 else None

    # 2. After a keyword: "The answer is (B).", "Answer: b", "**Answer:** B", "Option C".
    found: set[str] = set()
    keyword = rf"\b(?:answer|option|choice)(?:\s+(?:is|would\s+be|will\s+be))?{sep}(?:option{sep})?"
    keyword += rf"({letter})\b"
    for m in re.finditer(keyword, text, re.IGNORECASE):
        rest = text[m.end():]
        if m.group(1) in ("a", "i") and re.match(r"\s+[A-Za-z]", rest):
            continue  # "the answer is a tough one": the article, not choice A
        found.add(m.group(1).upper())
        # A hedge right after it: "the answer is B or C".
        hedge = re.match(rf"[\s*_\)\]]*(?:/|&|(?i:or|and)\b)[\s*_\(\[]*({letter})\b", rest)
        if hedge:
            found.add(hedge.group(1))
    if found:
        return found.pop() if len(found) == 1 else None

    # 3. A marked letter (capitals only, so the article "a" never counts): "B) Paris", "**B.** Paris"
    #    at the start, or "(B)" anywhere; "(A) and (B)" commits to none. The text of the choice
    #    marked at the start is skipped, so "D) Both (A) and (B)" is D.
    rest = text
    found = set()
    start = re.match(rf"[\s*_#>]*[\(\[]?({letter})[\)\]\.:]", text)
    if start:
        found.add(start.group(1))
        own = next((v for k, v in choices.items() if k.upper() == start.group(1)), "")
        rest = text[start.end():].replace(own, " ", 1) if own else text[start.end():]
    found |= set(re.findall(rf"[\(\[]({letter})[\)\]]", rest))
    if found:
        return found.pop() if len(found) == 1 else None

    # 4. The answer quotes exactly one choice text; a choice text quoted only as part of a longer
    #    quoted one does not count ("New York City" beats "York").
    norm_answer = f" {normalize(text)} "
    padded = {k: f" {normalize(v)} " for k, v in choices.items() if normalize(v)}
    quoted = {k: v for k, v in padded.items() if v in norm_answer}
    quoted = {k: v for k, v in quoted.items() if not any(v != w and v in w for w in quoted.values())}
    if len(quoted) == 1:
        return next(iter(quoted)).upper()
    return None


class ChoiceParams(CheckParams):
    answer: str | None = None  # the expected letter; default: the case's `answer` field


def grade_choice(answer: str, case: CaseSpec, p: ChoiceParams, ctx: GradeContext | None = None) -> CheckOutcome:
    choices: dict[str, str] = case.fields.get("choices") or {}
    expected = (p.answer or str(case.fields.get("answer", ""))).upper()
    got = extract_choice(answer, choices)
    if got is None:
        return CheckOutcome("choice", False, 0.0, f"no choice found in the answer; expected {expected}")
    passed = got == expected
    reason = "" if passed else f"chose {got}, expected {expected}"
    return CheckOutcome("choice", passed, float(passed), reason)


CHECKS = [
    CheckDef("choice", ChoiceParams, grade_choice, shorthand="answer", kinds=frozenset({"choice"}),
             doc="the chosen letter (or quoted choice text) equals the expected answer"),
]

"""Deterministic text checks: contains, not_contains, regex, equals, json (they need nothing from the grading context)."""

from __future__ import annotations

import json
import re
import string
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class ContainsParams(CheckParams):
    value: str | list[str]
    ignore_case: bool = True
    any: bool = False  # pass when any one value occurs (default: all must occur)

    @field_validator("value")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if not _as_list(v) or any(not s for s in _as_list(v)):
            raise ValueError("expected a non-empty string or a list of non-empty strings")
        return v


def _found(answer: str, needle: str, ignore_case: bool) -> bool:
    return needle.lower() in answer.lower() if ignore_case else needle in answer


def grade_contains(answer: str, case: CaseSpec, p: ContainsParams, ctx: GradeContext | None = None) -> CheckOutcome:
    values = _as_list(p.value)
    hits = [v for v in values if _found(answer, v, p.ignore_case)]
    missing = [v for v in values if v not in hits]
    if p.any:
        passed = bool(hits)
        score = 1.0 if passed else 0.0
    else:
        passed = not missing
        score = len(hits) / len(values)
    reason = "" if passed else f"missing {', '.join(repr(m) for m in missing)}"
    return CheckOutcome("contains", passed, score, reason)


def grade_not_contains(answer: str, case: CaseSpec, p: ContainsParams, ctx: GradeContext | None = None) -> CheckOutcome:
    values = _as_list(p.value)
    present = [v for v in values if _found(answer, v, p.ignore_case)]
    passed = not present
    score = 1.0 - len(present) / len(values)
    reason = "" if passed else f"contains forbidden {', '.join(repr(v) for v in present)}"
    return CheckOutcome("not_contains", passed, score, reason)


class RegexParams(CheckParams):
    pattern: str
    ignore_case: bool = False
    full: bool = False  # the whole (stripped) answer must match, not just a part of it

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return v


def grade_regex(answer: str, case: CaseSpec, p: RegexParams, ctx: GradeContext | None = None) -> CheckOutcome:
    flags = re.IGNORECASE if p.ignore_case else 0
    rx = re.compile(p.pattern, flags)
    match = rx.fullmatch(answer.strip()) if p.full else rx.search(answer)
    passed = match is not None
    return CheckOutcome("regex", passed, float(passed), "" if passed else f"no match for /{p.pattern}/")


class EqualsParams(CheckParams):
    value: str | list[str]  # one accepted answer, or several
    normalize: bool = True


def grade_equals(answer: str, case: CaseSpec, p: EqualsParams, ctx: GradeContext | None = None) -> CheckOutcome:
    accepted = _as_list(p.value)
    norm = normalize if p.normalize else (lambda s: s.strip())
    got = norm(answer)
    passed = any(got == norm(v) for v in accepted)
    expected = " or ".join(repr(v) for v in accepted)
    return CheckOutcome("equals", passed, float(passed), "" if passed else f"expected {expected}")


class JsonParams(CheckParams):
    # A JSON Schema the parsed value must satisfy ("schema" would shadow a pydantic attribute).
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(v).check_schema(v)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"invalid JSON schema: {exc.message}") from None
        return v


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)


def extract_json(answer: str) -> Any:
    """Parse JSON from an answer: the whole text, a fenced block, or the first {...} / [...] value in it."""
    candidates = [answer.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(answer)]
    for text in candidates:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            continue
    # Embedded in prose: the first object or array that parses, whatever text follows it.
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", answer):
        try:
            return decoder.raw_decode(answer, m.start())[0]
        except ValueError:
            continue
        except RecursionError:  # absurdly deep nesting: later starts lie inside it too
            break
    raise ValueError("the answer holds no parseable JSON")


def grade_json(answer: str, case: CaseSpec, p: JsonParams, ctx: GradeContext | None = None) -> CheckOutcome:
    try:
        value = extract_json(answer)
    except ValueError as exc:
        return CheckOutcome("json", False, 0.0, str(exc))
    if p.schema_ is not None:
        import jsonschema

        errors = sorted(jsonschema.validators.validator_for(p.schema_)(p.schema_).iter_errors(value),
                        key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(x) for x in errors[0].path) or "(root)"
            return CheckOutcome("json", False, 0.0, f"schema: at {where}: {errors[0].message}")
    return CheckOutcome("json", True, 1.0)


CHECKS = [
    CheckDef("contains", ContainsParams, grade_contains, shorthand="value",
             doc="every value (or any, with any: true) occurs in the answer; score = share found"),
    CheckDef("not_contains", ContainsParams, grade_not_contains, shorthand="value",
             doc="no value occurs in the answer; score = share absent"),
    CheckDef("regex", RegexParams, grade_regex, shorthand="pattern",
             doc="the pattern is found (or matches the whole answer, with full: true)"),
    CheckDef("equals", EqualsParams, grade_equals, shorthand="value",
             doc="the normalised answer equals a value (case, punctuation, articles, spaces ignored)"),
    CheckDef("json", JsonParams, grade_json, shorthand=None,
             doc="the answer parses as JSON (bare, fenced or embedded); optional schema"),
]

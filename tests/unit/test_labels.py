"""The `labels` kind: reading label lists out of real answers, Jaccard, the jaccard check and the suite report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pytest_llmeval.cases.schema import CaseSpec
from pytest_llmeval.checks.labels import (
    CHECKS,
    ParsedLabels,
    format_label_report,
    jaccard,
    label_report,
    parse_labels,
)
from pytest_llmeval.core.checks import CheckOutcome

ALLOWED = ["DRY", "SRP", "MC", "NAME", "NO_COMPILE"]

# ------------------------------------------------------------------------------------------- parsing

# (answer, labels, unknown, format)
ANSWERS: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    # JSON, as asked, and the ways models wrap it.
    ('["DRY", "SRP"]', ("DRY", "SRP"), (), "json"),
    ('["SRP", "DRY", "SRP"]', ("SRP", "DRY"), (), "json"),
    ('```json\n["MC", "NAME"]\n```', ("MC", "NAME"), (), "json"),
    ('Here is my analysis.\n\n```json\n{"labels": ["NO_COMPILE"]}\n```\nThe semicolon is missing.',
     ("NO_COMPILE",), (), "json"),
    ('{"labels": ["dry", " SRP "], "explanation": "the loop is duplicated"}', ("DRY", "SRP"), (), "json"),
    ('["no compile", "Name"]', ("NO_COMPILE", "NAME"), (), "json"),
    ("['DRY', 'MC']", ("DRY", "MC"), (), "json"),
    ('["DRY", "FOO"]', ("DRY",), ("FOO",), "json"),
    ('["DRYRUN"]', (), ("DRYRUN",), "json"),
    ('The allowed labels are ["DRY", "SRP", "MC", "NAME", "NO_COMPILE"]. My answer: ["SRP"]', ("SRP",), (), "json"),
    ('{"DRY": true, "SRP": false, "MC": true}', ("DRY", "MC"), (), "json"),
    ('["DRY - the summing loop appears twice"]', ("DRY",), (), "json"),
    ("[DRY, SRP]", ("DRY", "SRP"), (), "list"),
    # Plain lists: separators, lead-ins, bullets, numbering, markup, explanations.
    ("DRY, SRP", ("DRY", "SRP"), (), "list"),
    ("dry; srp; mc.", ("DRY", "SRP", "MC"), (), "list"),
    ("DRY/SRP", ("DRY", "SRP"), (), "list"),
    ("DRY and SRP", ("DRY", "SRP"), (), "list"),
    ("DRY, SRP, and NAME", ("DRY", "SRP", "NAME"), (), "list"),
    ("DRY\nMC\n", ("DRY", "MC"), (), "list"),
    ("Labels: DRY, NAME", ("DRY", "NAME"), (), "list"),
    ("**Labels:** `MC`, `NAME`", ("MC", "NAME"), (), "list"),
    ("The labels are SRP and MC.", ("SRP", "MC"), (), "list"),
    ("Looking at the code, the labels that apply are DRY and NAME.", ("DRY", "NAME"), (), "list"),
    ("- DRY - the loop is repeated, twice\n- SRP: main reads input and computes", ("DRY", "SRP"), (), "list"),
    ("* **DRY**: repeated loop\n* **MC**: 3.14 is hard-coded", ("DRY", "MC"), (), "list"),
    ("• DRY\n• NAME", ("DRY", "NAME"), (), "list"),
    ("1. DRY\n2) SRP", ("DRY", "SRP"), (), "list"),
    ("Violations found:\n1. NAME (variables a, b, c)\n2. MC\n\nThe rest is fine.", ("NAME", "MC"), (), "list"),
    ('"DRY", "SRP"', ("DRY", "SRP"), (), "list"),
    ("no-compile", ("NO_COMPILE",), (), "list"),
    ("No compile - a semicolon is missing on line 4.", ("NO_COMPILE",), (), "list"),
    ("The summing loop is written out twice and 3.14 appears bare.\n\nDRY, MC", ("DRY", "MC"), (), "list"),
    ("DRY, FOO", ("DRY",), ("FOO",), "list"),
    ("Labels: GOTO", (), ("GOTO",), "list"),
    # Explicitly nothing.
    ("None", (), (), "empty"),
    ("none.", (), (), "empty"),
    ("[]", (), (), "empty"),
    ("```json\n[]\n```", (), (), "empty"),
    ("No labels apply.", (), (), "empty"),
    ("N/A", (), (), "empty"),
    ("Labels: none", (), (), "empty"),
    ('{"labels": []}', (), (), "empty"),
    ("The code is clean, so no labels apply.", (), (), "empty"),
    ("", (), (), "empty"),
    # Free prose: allowed labels as whole words, never an unknown.
    ("The loop is copied, which violates DRY, and main also breaks SRP by doing I/O.", ("DRY", "SRP"), (), "text"),
    ("The DRYRUN macro is fine, but main violates SRP.", ("SRP",), (), "text"),
    ("This code has a DRY-run option and nothing else stands out.", (), (), "text"),
    ("It breaks DRY. The function name is fine.", ("DRY",), (), "text"),  # exact-case DRY wins over English "name"
    ("this breaks dry and srp in my opinion", ("DRY", "SRP"), (), "text"),
    ("It does not compile because a brace is missing: no_compile applies here.", ("NO_COMPILE",), (), "text"),
    # A reasoning trace and quoted code are not the answer.
    ("<think>Maybe MC? The constant 3 is used. Actually no.</think>\n[\"DRY\"]", ("DRY",), (), "json"),
    ("```c\nint a[] = {1, 2};\n// MC\n```\nLabels: NAME", ("NAME",), (), "list"),
    ("The result is wrong.\nSRP", ("SRP",), (), "list"),
]


@pytest.mark.parametrize(("answer", "labels", "unknown", "fmt"), ANSWERS)
def test_parse_labels_reads_real_answers(answer: str, labels: tuple[str, ...], unknown: tuple[str, ...],
                                         fmt: str) -> None:
    assert parse_labels(answer, ALLOWED) == ParsedLabels(labels, unknown, fmt)


def test_canonical_spelling_comes_from_the_allowed_list() -> None:
    allowed = ["no-compile", "Magic Constant", "dry"]
    assert parse_labels("NO_COMPILE, magic_constant, DRY", allowed).labels == ("no-compile", "Magic Constant", "dry")
    assert parse_labels("It has a magic constant.", allowed).labels == ("Magic Constant",)


def test_an_allowed_label_named_none_is_a_label_not_an_empty_answer() -> None:
    assert parse_labels("NONE", ["NONE", "DRY"]) == ParsedLabels(("NONE",), (), "list")


def test_a_prose_bullet_is_not_an_unknown_label() -> None:
    parsed = parse_labels("- The loop is copied, so DRY applies.\n- Names are fine.", ALLOWED)
    assert parsed == ParsedLabels(("DRY",), (), "text")


# ------------------------------------------------------------------------------------------- jaccard


@pytest.mark.parametrize(("predicted", "expected", "score"), [
    ([], [], 1.0),
    (["DRY"], [], 0.0),
    ([], ["DRY"], 0.0),
    (["DRY"], ["DRY"], 1.0),
    (["DRY", "SRP"], ["DRY"], 0.5),
    (["DRY", "MC"], ["DRY", "SRP"], 1 / 3),
    (["DRY", "DRY"], ["DRY"], 1.0),  # sets: a repeated label is one label
    (("a", "b", "c"), iter(["c", "d"]), 0.25),
])
def test_jaccard(predicted: list[str], expected: list[str], score: float) -> None:
    assert jaccard(predicted, expected) == pytest.approx(score)


# --------------------------------------------------------------------------------------- the check

JACCARD = {c.name: c for c in CHECKS}["jaccard"]


def labels_case(answer: list[str]) -> CaseSpec:
    return CaseSpec(suite="clean-code", kind="labels", id="c1", path=Path("cases/c.yaml"), line=1, system=None,
                    prompt="Answer with the labels that apply, as a JSON list.", params={}, tags=(), checks=[],
                    fields={"input": "int main(void) { return 0; }", "labels": list(ALLOWED), "answer": answer})


def grade(answer: str, expected: list[str], minimum: Any = None) -> CheckOutcome:
    raw = {} if minimum is None else {JACCARD.shorthand: minimum}
    assert JACCARD.grade is not None
    return JACCARD.grade(answer, labels_case(expected), JACCARD.params.model_validate(raw))


def test_the_jaccard_check_is_registered_for_labels_cases_with_min_as_shorthand() -> None:
    assert JACCARD.shorthand == "min"
    assert JACCARD.kinds == frozenset({"labels"})
    assert JACCARD.grade is not None and JACCARD.doc
    assert JACCARD.params.model_validate({}).min == 0.5
    for bad in (-0.1, 1.5, "high"):
        with pytest.raises(ValidationError):
            JACCARD.params.model_validate({"min": bad})
    with pytest.raises(ValidationError):
        JACCARD.params.model_validate({"min": 0.5, "max": 1})


def test_pass_at_exactly_min_and_fail_just_above() -> None:
    passed = grade('["DRY"]', ["DRY", "SRP"], 0.5)
    assert (passed.passed, passed.score, passed.reason) == (True, 0.5, "Jaccard 0.50")
    failed = grade('["DRY"]', ["DRY", "SRP"], 0.51)
    assert (failed.passed, failed.score) == (False, 0.5)
    assert failed.reason == "Jaccard 0.50 < min 0.51: missing SRP"


def test_default_min_is_one_half() -> None:
    assert grade("DRY", ["DRY", "SRP"]).passed
    assert not grade("DRY, MC", ["DRY", "SRP"]).passed


def test_a_decimal_min_does_not_fail_on_float_rounding() -> None:
    assert grade('["DRY"]', ["DRY", "SRP", "MC"], 0.3333333333333333).passed


def test_failure_reason_names_missing_extra_and_unknown_labels() -> None:
    out = grade('["DRY", "MC", "FOO"]', ["DRY", "SRP"], 0.5)
    assert not out.passed
    assert out.score == pytest.approx(1 / 3)
    assert out.reason == "Jaccard 0.33 < min 0.50: missing SRP; extra MC; unknown labels: FOO"
    assert out.details == {"predicted": ["DRY", "MC"], "expected": ["DRY", "SRP"], "unknown": ["FOO"],
                           "format": "json"}


def test_unknown_labels_do_not_count_and_are_not_otherwise_penalised() -> None:
    out = grade('["DRY", "SRP", "FOO"]', ["DRY", "SRP"], 1.0)
    assert (out.passed, out.score, out.reason) == (True, 1.0, "Jaccard 1.00; unknown labels: FOO")


def test_no_labels_expected_and_none_given_is_a_perfect_score() -> None:
    out = grade("None.", [], 1.0)
    assert (out.passed, out.score, out.reason) == (True, 1.0, "Jaccard 1.00")
    assert out.details["format"] == "empty"
    out = grade("None.", ["NAME"], 0.5)
    assert (out.passed, out.score, out.reason) == (False, 0.0, "Jaccard 0.00 < min 0.50: missing NAME")


def test_a_spurious_label_when_none_expected_fails_with_its_name() -> None:
    out = grade("Labels: MC", [], 0.5)
    assert (out.passed, out.score, out.reason) == (False, 0.0, "Jaccard 0.00 < min 0.50: extra MC")
    assert out.to_dict()["details"]["predicted"] == ["MC"]


# ---------------------------------------------------------------------------------------- the report

# Four cases over DRY, SRP, MC (+ NAME, allowed but never expected nor predicted): (expected, predicted)
PAIRS = [
    (["DRY", "SRP"], ["DRY"]),  # case Jaccard 1/2
    (["DRY"], ["DRY", "MC"]),   # case Jaccard 1/2
    (["SRP"], []),              # case Jaccard 0
    ([], []),                   # case Jaccard 1 (both empty)
]
# DRY:  support 2, predicted 2, tp 2 fp 0 fn 0 -> jaccard 1, precision 1, recall 1, f1 1
# SRP:  support 2, predicted 0, tp 0 fp 0 fn 2 -> jaccard 0, precision None (0/0), recall 0, f1 0/2 = 0
# MC:   support 0, predicted 1, tp 0 fp 1 fn 0 -> jaccard 0, precision 0, recall None (0/0), f1 0/1 = 0
# NAME: all zero -> every ratio None
# micro: tp 2 fp 1 fn 2 -> jaccard 2/5, precision 2/3, recall 2/4, f1 4/7
# macro: jaccard (1+0+0)/3, precision (1+0)/2, recall (1+0)/2, f1 (1+0+0)/3
# samples: (1/2 + 1/2 + 0 + 1) / 4 = 1/2


def test_label_report_on_a_hand_computed_example() -> None:
    report = label_report(PAIRS, labels=["DRY", "SRP", "MC", "NAME"])
    assert report == {
        "cases": 4,
        "labels": {
            "DRY": {"support": 2, "predicted": 2, "tp": 2, "fp": 0, "fn": 0,
                    "jaccard": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0},
            "SRP": {"support": 2, "predicted": 0, "tp": 0, "fp": 0, "fn": 2,
                    "jaccard": 0.0, "precision": None, "recall": 0.0, "f1": 0.0},
            "MC": {"support": 0, "predicted": 1, "tp": 0, "fp": 1, "fn": 0,
                   "jaccard": 0.0, "precision": 0.0, "recall": None, "f1": 0.0},
            "NAME": {"support": 0, "predicted": 0, "tp": 0, "fp": 0, "fn": 0,
                     "jaccard": None, "precision": None, "recall": None, "f1": None},
        },
        "micro": {"jaccard": 0.4, "precision": 0.666667, "recall": 0.5, "f1": 0.571429},
        "macro": {"jaccard": 0.333333, "precision": 0.5, "recall": 0.5, "f1": 0.333333},
        "samples_jaccard": 0.5,
    }
    assert report["micro"]["jaccard"] != report["macro"]["jaccard"]


def test_label_report_orders_given_labels_first_then_labels_seen() -> None:
    report = label_report([(["X", "DRY"], ["Y"]), (["X"], ["X", "X"])], labels=["SRP", "DRY"])
    assert list(report["labels"]) == ["SRP", "DRY", "X", "Y"]
    assert report["labels"]["X"]["tp"] == 1 and report["labels"]["X"]["predicted"] == 1  # a repeat counts once
    assert list(label_report([(["B"], ["A"])])["labels"]) == ["B", "A"]


def test_label_report_of_no_cases() -> None:
    report = label_report([], labels=["DRY"])
    assert report["cases"] == 0 and report["samples_jaccard"] is None
    assert report["micro"] == {"jaccard": None, "precision": None, "recall": None, "f1": None}
    assert report["macro"] == report["micro"]


def test_label_report_is_json_friendly() -> None:
    import json

    report = label_report(PAIRS, labels=ALLOWED)
    assert json.loads(json.dumps(report)) == report


def test_format_label_report_has_a_row_per_label_then_micro_and_macro() -> None:
    lines = format_label_report(label_report(PAIRS, labels=["DRY", "SRP", "MC", "NAME"]))
    assert lines[0].split() == ["label", "support", "precision", "recall", "jaccard"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert list(rows) == ["DRY", "SRP", "MC", "NAME", "micro", "macro"]
    assert rows["DRY"] == ["2", "1.00", "1.00", "1.00"]
    assert rows["SRP"] == ["2", "-", "0.00", "0.00"]
    assert rows["NAME"] == ["0", "-", "-", "-"]
    assert rows["micro"] == ["4", "0.67", "0.50", "0.40"]
    assert rows["macro"] == ["4", "0.50", "0.50", "0.33"]
    assert lines[-1] == "samples jaccard 0.50 over 4 cases"
    assert len({len(line) for line in lines[:-1]}) == 1, "fixed width"

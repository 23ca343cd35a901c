"""The trajectory checks (issue 18): tool_called, tool_sequence, tool_not_called, max_steps, tool_f1.

Cases come from real case files through the loader (a registry with these checks added); the trajectories are
built from core.tools' values, as the agent loop records them. Each check's reason carries the trajectory's
excerpt, and an answer without a trajectory fails with a reason saying so."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.cases.schema import CaseSpec
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.checks.tools import CHECKS, NO_TRAJECTORY
from pytest_llmeval.core.checks import CheckOutcome, CheckRegistry, GradeContext
from pytest_llmeval.core.tools import Step, ToolCall, Trajectory


def registry() -> CheckRegistry:
    reg = builtin_registry()
    for check in CHECKS:
        if reg.get(check.name) is None:  # once checks/builtin.py registers them, the registry has them already
            reg.register(check)
    return reg


def load_errors(tmp_path: Path, expect: str, kind: str = "") -> list[str]:
    path = tmp_path / "suite.yaml"
    head = f"kind: {kind}\n" if kind else ""
    extra = "    choices: [a, b]\n    answer: A\n" if kind == "choice" else ""
    path.write_text(f"{head}cases:\n  - id: c\n    question: q\n{extra}    expect:\n      - {expect}\n")
    loaded = load_file(path, registry())
    assert not loaded.cases
    return [str(e) for e in loaded.errors]


def case_with(tmp_path: Path, expect: str) -> CaseSpec:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent("""\
        tools: [{name: search}, {name: book}]
        cases:
          - id: c
            question: Book a table for two tomorrow
            expect:
              - {expect}
        """).replace("{expect}", expect))
    loaded = load_file(path, registry())
    assert not loaded.errors, [str(e) for e in loaded.errors]
    return loaded.cases[0]


def trajectory(*calls: tuple[str, dict[str, Any]], ended: str = "answer") -> Trajectory:
    steps = [Step(i, ToolCall(name, args, id=f"call_{i}"), result={"ok": True}) for i, (name, args) in
             enumerate(calls)]
    return Trajectory(steps, final="Done.", ended=ended)


AGENT = trajectory(("search", {"q": "restaurants in Paris", "limit": 5}),
                   ("check_availability", {"restaurant": "Chez Nous", "date": "2026-12-06", "people": 2}),
                   ("book", {"restaurant": "Chez Nous", "date": "2026-12-06", "people": 2,
                             "options": {"terrace": True, "note": "birthday"}}))


def grade(tmp_path: Path, expect: str, traj: Any = AGENT) -> CheckOutcome:
    case = case_with(tmp_path, expect)
    spec = case.checks[0]
    assert spec.definition is not None
    ctx = GradeContext("Done.", case, "m", trajectory=traj)
    return spec.definition.evaluate(spec.params, ctx)


def assert_explained(outcome: CheckOutcome, traj: Trajectory = AGENT) -> None:
    assert traj.excerpt() in outcome.reason, outcome.reason
    assert "1. search(" in outcome.reason


# ------------------------------------------------------------------------------------------- no trajectory


@pytest.mark.parametrize("expect", ["tool_called: search", "tool_sequence: [search]", "tool_not_called: book",
                                    "max_steps: 3", "tool_f1: [search]"])
def test_an_answer_without_a_trajectory_fails_every_check_saying_so(tmp_path: Path, expect: str) -> None:
    outcome = grade(tmp_path, expect, traj=None)
    assert not outcome.passed and outcome.score == 0.0
    assert outcome.reason == NO_TRAJECTORY
    assert outcome.reason.startswith("the answer carries no tool calls: ")


def test_a_trajectory_in_its_dict_form_or_a_list_of_calls_is_graded_the_same(tmp_path: Path) -> None:
    assert grade(tmp_path, "tool_called: book", traj=AGENT.to_dict()).passed
    openai_calls = [{"id": "c1", "type": "function", "function": {"name": "book", "arguments": '{"people": 2}'}}]
    outcome = grade(tmp_path, "tool_called: {name: book, arguments: {people: 2}}", traj=openai_calls)
    assert outcome.passed and outcome.details["matched_steps"] == [1]


# ------------------------------------------------------------------------------------------- tool_called


def test_tool_called_by_name_passes_and_says_where(tmp_path: Path) -> None:
    outcome = grade(tmp_path, "tool_called: book")
    assert outcome.passed and outcome.score == 1.0
    assert outcome.details == {"matched_steps": [3], "calls": 1, "matched": 1}
    assert outcome.reason.startswith("book called (step 3); trajectory:\n")
    assert_explained(outcome)


def test_a_tool_never_called_fails_naming_what_was_called(tmp_path: Path) -> None:
    outcome = grade(tmp_path, "tool_called: cancel")
    assert not outcome.passed and outcome.score == 0.0
    assert outcome.reason.startswith("cancel was never called (called: search, check_availability, book)")
    assert outcome.details == {"matched_steps": [], "calls": 0, "matched": 0}
    assert_explained(outcome)


def test_subset_is_the_default_and_compares_nested_mappings_as_subsets(tmp_path: Path) -> None:
    ok = grade(tmp_path, "tool_called: {name: book, arguments: {people: 2, options: {terrace: true}}}")
    assert ok.passed, ok.reason
    bad = grade(tmp_path, "tool_called: {name: book, arguments: {people: 4}}")
    assert not bad.passed
    assert bad.reason.startswith('no call of book with arguments matching (subset) {"people": 4}: '
                                 'step 3: people is 2, expected 4; trajectory:\n')
    assert bad.details["calls"] == 1 and bad.details["matched"] == 0
    assert_explained(bad)
    nested = grade(tmp_path, "tool_called: {name: book, arguments: {options: {terrace: false}}}")
    assert not nested.passed and "options.terrace is true, expected false" in nested.reason
    absent = grade(tmp_path, "tool_called: {name: book, arguments: {time: '20:00'}}")
    assert not absent.passed and "no argument time" in absent.reason


def test_exact_needs_every_argument_and_no_other(tmp_path: Path) -> None:
    ok = grade(tmp_path, "tool_called: {name: search, match: exact, arguments: {q: restaurants in Paris, limit: 5}}")
    assert ok.passed, ok.reason
    bad = grade(tmp_path, "tool_called: {name: search, match: exact, arguments: {q: restaurants in Paris}}")
    assert not bad.passed and "unexpected argument limit" in bad.reason
    # true is not 1 as JSON, though Python says they are equal
    flag = trajectory(("set", {"enabled": True}))
    assert not grade(tmp_path, "tool_called: {name: set, match: exact, arguments: {enabled: 1}}", flag).passed
    assert grade(tmp_path, "tool_called: {name: set, match: exact, arguments: {enabled: true}}", flag).passed
    assert grade(tmp_path, "tool_called: {name: now, match: exact, arguments: {}}", trajectory(("now", {}))).passed


def test_schema_validates_the_arguments(tmp_path: Path) -> None:
    schema = ("{type: object, required: [date, people], properties: {date: {type: string, "
              "pattern: '^\\d{4}-\\d{2}-\\d{2}$'}, people: {type: integer, minimum: 1, maximum: 8}}}")
    ok = grade(tmp_path, f"tool_called: {{name: book, match: schema, arguments: {schema}}}")
    assert ok.passed, ok.reason
    too_many = trajectory(("book", {"date": "2026-12-06", "people": 12}))
    bad = grade(tmp_path, f"tool_called: {{name: book, match: schema, arguments: {schema}}}", too_many)
    assert not bad.passed
    assert "schema: at people: 12 is greater than the maximum of 8" in bad.reason
    assert_explained_any(bad, too_many)


def assert_explained_any(outcome: CheckOutcome, traj: Trajectory) -> None:
    assert outcome.reason.endswith("; trajectory:\n" + traj.excerpt()), outcome.reason


def test_regex_matches_each_argument_whole_and_other_values_by_their_json(tmp_path: Path) -> None:
    ok = grade(tmp_path, r"tool_called: {name: book, match: regex, arguments: {date: '2026-\d\d-\d\d', people: '[1-4]'}}")
    assert ok.passed, ok.reason
    partial = grade(tmp_path, "tool_called: {name: search, match: regex, arguments: {q: Paris}}")
    assert not partial.passed and 'q is "restaurants in Paris", does not match /Paris/' in partial.reason
    assert grade(tmp_path, "tool_called: {name: search, match: regex, arguments: {q: '.*Paris'}}").passed
    assert grade(tmp_path, "tool_called: {name: book, match: regex, arguments: {options: '.*\"terrace\": true.*'}}").passed


def test_times_counts_the_matching_calls_exactly(tmp_path: Path) -> None:
    twice = trajectory(("search", {"q": "a"}), ("search", {"q": "b"}), ("book", {}))
    assert grade(tmp_path, "tool_called: {name: search, times: 2}", twice).passed
    three = grade(tmp_path, "tool_called: {name: search, times: 3}", twice)
    assert not three.passed and three.reason.startswith("expected search called 3 times, got 2; trajectory:")
    one = grade(tmp_path, "tool_called: {name: search, times: 1, arguments: {q: b}}", twice)
    assert one.passed and one.details == {"matched_steps": [2], "calls": 2, "matched": 1}
    zero = grade(tmp_path, "tool_called: {name: cancel, times: 0}", twice)
    assert zero.passed and zero.reason.startswith("cancel called 0 times; trajectory:")
    wrong = grade(tmp_path, "tool_called: {name: search, times: 2, arguments: {q: a}}", twice)
    assert not wrong.passed
    assert wrong.reason.startswith('expected search with arguments matching (subset) {"q": "a"} called 2 times, '
                                   'got 1 (step 2: q is "b", expected "a")')


def test_a_call_answered_with_an_error_still_counts_as_called(tmp_path: Path) -> None:
    failed = Trajectory([Step(0, ToolCall("book", {"people": 2}), error="arguments fail the schema")])
    outcome = grade(tmp_path, "tool_called: book", failed)
    assert outcome.passed and "1. book(people=2) -> ERROR arguments fail the schema" in outcome.reason
    assert not grade(tmp_path, "tool_not_called: book", failed).passed
    empty = grade(tmp_path, "tool_called: book", trajectory())
    assert not empty.passed and empty.reason == "book was never called (no tool was called); trajectory:\n(no tool call)"


# ------------------------------------------------------------------------------------------- tool_sequence


def test_in_order_is_a_subsequence(tmp_path: Path) -> None:
    ok = grade(tmp_path, "tool_sequence: [search, book]")
    assert ok.passed and ok.score == 1.0 and ok.details == {"matched_steps": [1, 3], "missing": []}
    assert ok.reason.startswith("called in order: search -> book")
    assert_explained(ok)
    reversed_ = grade(tmp_path, "tool_sequence: [book, search]")
    assert not reversed_.passed and reversed_.score == 0.5
    assert reversed_.reason.startswith("expected in order book -> search: matched 1 of 2, then no search after step 3")
    assert reversed_.details["missing"] == ["search"]
    assert_explained(reversed_)


def test_sequence_entries_may_give_arguments(tmp_path: Path) -> None:
    assert grade(tmp_path, "tool_sequence: [search, {name: book, arguments: {people: 2}}]").passed
    bad = grade(tmp_path, "tool_sequence: [search, {name: book, arguments: {people: 3}}]")
    assert not bad.passed and bad.details["missing"] == ['book(people=3)']


def test_exact_order_is_the_whole_sequence(tmp_path: Path) -> None:
    assert grade(tmp_path, "tool_sequence: {tools: [search, check_availability, book], order: exact}").passed
    gap = grade(tmp_path, "tool_sequence: {tools: [search, book], order: exact}")
    assert not gap.passed and "step 2 is check_availability(" in gap.reason and gap.reason.count("expected") == 2
    short = grade(tmp_path, "tool_sequence: {tools: [search, check_availability], order: exact}")
    assert not short.passed and "1 more call(s) after it" in short.reason
    long = grade(tmp_path, "tool_sequence: {tools: [search, check_availability, book, pay], order: exact}")
    assert not long.passed and "missing pay" in long.reason and long.score == 0.75
    assert_explained(long)


def test_any_order_needs_one_call_per_entry(tmp_path: Path) -> None:
    assert grade(tmp_path, "tool_sequence: {tools: [book, search], order: any_order}").passed
    two = trajectory(("search", {"q": "x"}), ("search", {"q": "y"}))
    # the first entry fits both calls: the assignment still gives the second its own
    assert grade(tmp_path, "tool_sequence: {tools: [search, {name: search, arguments: {q: x}}], order: any_order}",
                 two).passed
    bad = grade(tmp_path, "tool_sequence: {tools: [search, search, search], order: any_order}", two)
    assert not bad.passed and bad.score == pytest.approx(2 / 3)
    assert "not called: search" in bad.reason
    assert_explained_any(bad, two)


# ------------------------------------------------------------------------------------------- tool_not_called


def test_tool_not_called_passes_when_absent_and_fails_naming_the_step(tmp_path: Path) -> None:
    ok = grade(tmp_path, "tool_not_called: [delete_account, cancel]")
    assert ok.passed and ok.reason.startswith("delete_account or cancel not called")
    assert_explained(ok)
    bad = grade(tmp_path, "tool_not_called: book")
    assert not bad.passed and bad.score == 0.0 and bad.details == {"forbidden_steps": [3]}
    assert bad.reason.startswith('book was called (step 3: book(restaurant="Chez Nous"')
    assert_explained(bad)


def test_tool_not_called_with_arguments_forbids_only_those(tmp_path: Path) -> None:
    unconfirmed = trajectory(("delete_account", {"user": "ann", "confirmed": False}))
    confirmed = trajectory(("delete_account", {"user": "ann", "confirmed": True}))
    expect = "tool_not_called: {name: delete_account, arguments: {confirmed: false}}"
    bad = grade(tmp_path, expect, unconfirmed)
    assert not bad.passed and 'delete_account with arguments {"confirmed": false} was called' in bad.reason
    assert grade(tmp_path, expect, confirmed).passed


# ------------------------------------------------------------------------------------------- max_steps


def test_max_steps_counts_the_steps(tmp_path: Path) -> None:
    ok = grade(tmp_path, "max_steps: 3")
    assert ok.passed and ok.details == {"steps": 3, "ended": "answer"}
    assert ok.reason.startswith("3 steps (at most 3), ended: answer")
    assert_explained(ok)
    bad = grade(tmp_path, "max_steps: 2")
    assert not bad.passed and bad.reason.startswith("3 steps, more than 2")
    assert_explained(bad)
    assert grade(tmp_path, "max_steps: 0", trajectory()).passed


def test_a_run_stopped_by_its_step_limit_fails_unless_allowed(tmp_path: Path) -> None:
    looping = trajectory(("search", {"q": "x"}), ("search", {"q": "x"}), ended="max_steps")
    bad = grade(tmp_path, "max_steps: 5", looping)
    assert not bad.passed and "stopped at the agent loop's max_steps" in bad.reason
    assert bad.details == {"steps": 2, "ended": "max_steps"}
    assert grade(tmp_path, "max_steps: {steps: 5, allow_limit: true}", looping).passed


# ------------------------------------------------------------------------------------------- tool_f1


def test_tool_f1_of_an_exact_set_is_one(tmp_path: Path) -> None:
    ok = grade(tmp_path, "tool_f1: [book, search, check_availability]")
    assert ok.passed and ok.score == 1.0
    assert ok.details["precision"] == ok.details["recall"] == ok.details["f1"] == 1.0
    assert_explained(ok)


def test_tool_f1_scores_extra_and_missing_calls(tmp_path: Path) -> None:
    outcome = grade(tmp_path, "tool_f1: [search, book, pay, {name: book, arguments: {people: 2}}]")
    # calls: search, check_availability, book; matched: search and one book (one call counts once) -> 2
    assert outcome.details["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert outcome.details["recall"] == 0.5
    assert outcome.score == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert not outcome.passed
    assert outcome.details["missing"] == ["pay", "book(people=2)"]
    assert outcome.details["unexpected_steps"] == [2]
    assert "unexpected: step 2 check_availability(" in outcome.reason
    assert_explained(outcome)
    assert grade(tmp_path, "tool_f1: {expected: [search, book, pay], min: 0.6}").passed  # P 2/3, R 2/3: F1 .67
    below = grade(tmp_path, "tool_f1: {expected: [search, book, pay], min: 0.7}")
    assert not below.passed and "F1 0.67 < 0.70" in below.reason


def test_tool_f1_with_nothing_expected_and_nothing_called_is_one(tmp_path: Path) -> None:
    none = grade(tmp_path, "tool_f1: {expected: []}", trajectory())
    assert none.passed and none.score == 1.0
    some = grade(tmp_path, "tool_f1: {expected: []}")
    assert not some.passed and some.details["precision"] == 0.0 and some.details["recall"] == 1.0


# ------------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(("expect", "message"), [
    ("tool_called: {name: book, match: regex, arguments: {date: '[0-9'}}", "invalid regular expression for argument"),
    ("tool_called: {name: book, match: regex, arguments: {people: 2}}", "needs a regular expression (a string)"),
    ("tool_called: {name: book, match: schema, arguments: {type: objekt}}", "invalid JSON schema in arguments"),
    ("tool_called: {name: book, match: schema}", "match: schema needs arguments (a JSON Schema)"),
    ("tool_called: {name: book, match: exact}", "match: exact needs arguments (the call's arguments, {} for"),
    ("tool_called: {name: book, match: fuzzy}", "Input should be 'exact', 'subset', 'schema' or 'regex'"),
    ("tool_called: {name: book, times: -1}", "greater than or equal to 0"),
    ("tool_called: {name: book, argument: {people: 2}}", "unknown field"),
    ("tool_called: true", "required field is missing"),
    ("tool_called: ''", "expected a tool name"),
    ("tool_sequence: []", "at least 1 item"),
    ("tool_sequence: {tools: [search], order: random}", "Input should be 'in_order', 'exact' or 'any_order'"),
    ("tool_sequence: [{name: search, args: {}}]", "unknown field"),
    ("tool_not_called: []", "at least 1 item"),
    ("tool_not_called: {name: book, arguments: confirmed}", "valid dictionary"),
    ("max_steps: -1", "greater than or equal to 0"),
    ("max_steps: {steps: 3, allow: true}", "unknown field"),
    ("tool_f1: {expected: [search], min: 2}", "less than or equal to 1"),
])
def test_bad_parameters_are_case_errors(tmp_path: Path, expect: str, message: str) -> None:
    errors = load_errors(tmp_path, expect)
    assert any(message in e for e in errors), errors


def test_the_checks_apply_to_qna_cases_only(tmp_path: Path) -> None:
    errors = load_errors(tmp_path, "tool_called: book", kind="choice")
    assert any("applies to qna cases, not 'choice'" in e for e in errors), errors


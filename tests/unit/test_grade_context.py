"""One GradeContext for every check: services built on first use, the three-parameter form still called, and the
checks' own aggregates and summary lines reaching results.json and the terminal summary by injection."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cases.schema import CaseSpec
from pytest_llmeval.checks.builtin import BUILTIN_CHECKS, builtin_registry
from pytest_llmeval.checks.judge import JudgeEnv, JudgeParams, grade_judge
from pytest_llmeval.checks.labels import label_report
from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, CheckRegistry, GradeContext, takes_context
from pytest_llmeval.providers.runner import Completion
from pytest_llmeval.report.terminal import summary_lines
from pytest_llmeval.results.aggregate import CaseResult, aggregate, build_results


def make_case(kind: str = "qna", **fields: Any) -> CaseSpec:
    return CaseSpec(suite="s", kind=kind, id="c", path=Path("x.yaml"), line=1, system=None, prompt="What?",
                    params={}, tags=(), checks=[], fields=fields)


class NoParams(CheckParams):
    value: str = ""


# ------------------------------------------------------------------------------------------- services


def test_a_service_is_built_on_first_use_and_once_per_context() -> None:
    built: list[str] = []

    def judge(ctx: GradeContext) -> str:
        built.append(ctx.answer)
        return "the judge"

    ctx = GradeContext("Paris", make_case(), "m", factories={"judge": judge})
    assert ctx.provides("judge") and not ctx.provides("code")
    assert ctx.built("judge") is None and built == []
    assert ctx.judge == "the judge" and ctx.service("judge") == "the judge"
    assert built == ["Paris"] and ctx.built("judge") == "the judge"


def test_a_text_check_builds_nothing() -> None:
    def never(ctx: GradeContext) -> Any:
        raise AssertionError("a text check asked for a service")

    contains = next(c for c in BUILTIN_CHECKS if c.name == "contains")
    ctx = GradeContext("The capital is Paris.", make_case(), "m",
                       factories={"judge": never, "vision": never, "code": never})
    outcome = contains.evaluate(contains.params(value="Paris"), ctx)
    assert outcome.passed and outcome.score == 1.0


def test_a_service_the_run_does_not_provide_is_a_lookup_error_naming_it() -> None:
    ctx = GradeContext("x", make_case(), "m", factories={"judge": lambda ctx: None})
    with pytest.raises(LookupError, match="no 'code' service for this qna case .available: judge"):
        ctx.service("code")


def test_a_ready_made_service_is_used_as_is() -> None:
    ctx = GradeContext("x", make_case(), judge="given")
    assert ctx.judge == "given" and ctx.built("judge") == "given"


def test_resources_entered_by_a_factory_are_closed_with_the_context() -> None:
    events: list[str] = []

    class Workdir:
        def __enter__(self) -> Workdir:
            events.append("enter")
            return self

        def __exit__(self, *exc: object) -> None:
            events.append("exit")

    with GradeContext("x", make_case("code"), factories={"code": lambda ctx: ctx.enter(Workdir())}) as ctx:
        assert isinstance(ctx.code, Workdir)
        assert events == ["enter"]
    assert events == ["enter", "exit"]


# ------------------------------------------------------------------------------------------- arity


def test_the_documented_three_parameter_form_is_called_without_the_context() -> None:
    seen: list[Any] = []

    def three(answer: str, case: Any, params: Any) -> CheckOutcome:
        seen.append((answer, case.id))
        return CheckOutcome("three", True, 1.0)

    def four(answer: str, case: Any, params: Any, ctx: GradeContext) -> CheckOutcome:
        seen.append(ctx.model)
        return CheckOutcome("four", True, 1.0)

    def star(*args: Any) -> CheckOutcome:
        seen.append(len(args))
        return CheckOutcome("star", True, 1.0)

    ctx = GradeContext("a", make_case(), "model-x")
    for grade in (three, four, star):
        d = CheckDef(grade.__name__, NoParams, grade)
        d.evaluate(NoParams(), ctx)
    assert seen == [("a", "c"), "model-x", 4]
    assert not CheckDef("p", NoParams, functools.partial(four, ctx=None)).takes_context  # ctx bound: three left
    assert not takes_context(None) and not takes_context(len)  # no signature: the documented form


def test_every_built_in_check_takes_the_context() -> None:
    assert [c.name for c in BUILTIN_CHECKS if not c.takes_context] == []


def test_the_old_flags_are_derived_from_the_services_a_check_uses() -> None:
    checks = {c.name: c for c in BUILTIN_CHECKS}
    assert [n for n, c in checks.items() if c.context] == ["compiles", "runs", "stdout", "tests", "files"]
    assert [n for n, c in checks.items() if c.judge] == ["judge", "goal"]
    assert [n for n, c in checks.items() if c.vision] == ["image", "vision"]
    assert {n: c.calls for n, c in checks.items() if c.calls} == {"judge": "judge", "vision": "vision", "goal": "judge"}


def test_the_judge_check_grades_the_same_from_a_context_or_a_bare_environment() -> None:
    def ask(model: str, messages: list[dict[str, str]], attempt: int) -> Completion:
        return Completion(text='{"score": 8, "reason": "complete"}', model=model, resolved_model=model, latency_s=0.1)

    case = make_case(reference="Paris")
    params = JudgeParams(rubric="correctness", min=7)

    def env() -> JudgeEnv:
        return JudgeEnv(judge_model="judge-m", self_judging=False, ask=ask)

    direct = grade_judge("Paris.", case, params, env())
    via_context = grade_judge("Paris.", case, params, GradeContext("Paris.", case, "m", factories={
        "judge": lambda ctx: env()}))
    assert direct == via_context and direct.passed and direct.score == 0.8


# ------------------------------------------------------------------------------------------- aggregates


def labelled(case_id: str, outcome: str, expected: list[str], predicted: list[str]) -> CaseResult:
    return CaseResult(suite="clean", case_id=case_id, model="m", outcome=outcome, kind="labels",
                      labels={"predicted": predicted, "expected": expected, "unknown": [], "format": "json",
                              "allowed": ["DRY", "SRP", "MC"]},
                      judge={"model": "j", "self_judging": False, "calls": 1},
                      retrieval={"k": 2, "recall_at_k": 1.0, "mrr": 1.0})


RESULTS = [labelled("a", "passed", ["DRY"], ["DRY"]), labelled("b", "failed", ["SRP"], ["MC"]),
           labelled("c", "error", ["MC"], [])]  # an error is not graded: not in the report


def test_the_labels_report_is_the_jaccard_checks_aggregate_passed_in() -> None:
    row = aggregate(RESULTS, builtin_registry().aggregates())[0]
    assert row["labels"] == label_report([(["DRY"], ["DRY"]), (["SRP"], ["MC"])], ["DRY", "SRP", "MC"])
    keys = list(row)
    assert keys.index("judge") < keys.index("labels") < keys.index("retrieval")  # where it always was
    assert "labels" not in aggregate(RESULTS)[0]  # results knows no check: nothing passed in, no labels


def test_a_registered_checks_aggregate_and_summary_lines_are_used() -> None:
    def count(results: list[CaseResult]) -> dict[str, Any]:
        return {"graded": sum(1 for r in results if r.outcome in ("passed", "failed"))}

    def line(row: Any, name: str) -> list[str]:
        return [f"{name}: {row['graded']} graded"] if "graded" in row else []

    registry = builtin_registry()
    registry.register(CheckDef("counted", NoParams, None, aggregate=count, summary_lines=line))
    assert list(registry.aggregates()) == ["jaccard", "tool_called", "counted"]
    doc = build_results(RESULTS, models=["m"], cache_mode="on", exit_status=0, invalid=[], workers=0,
                        version="test", check_aggregates=registry.aggregates())
    assert doc["suites"][0]["graded"] == 2
    lines = summary_lines(doc, registry)
    at = lines.index("clean [m]: labels (per-label Jaccard, precision, recall):")
    assert lines[-1] == "clean [m]: 2 graded" and at < len(lines) - 1
    assert "clean [m]: 2 graded" not in summary_lines(doc)  # default: the built-in checks only
    assert any("labels (per-label" in x for x in summary_lines(doc))


def test_a_replaced_check_takes_its_aggregate_with_it() -> None:
    registry = CheckRegistry()
    for check in BUILTIN_CHECKS:
        registry.register(check)
    registry.register(CheckDef("jaccard", NoParams, None))
    registry.register(CheckDef("tool_called", NoParams, None))
    assert registry.aggregates() == {}

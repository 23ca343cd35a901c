"""Which cases the gate's redraws can draw again (run/redraw_child.py why_not_redrawn), and what the gate says of a
suite whose cases it cannot (run/redraw.py): no redraw process is started, nothing of the budget is spent, and the
suite stays inconclusive with the reason."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llmeval.results.gate import SuiteVerdict
from pytest_llmeval.run.redraw import decide_by_redraws
from pytest_llmeval.run.redraw_child import why_not_redrawn
from pytest_llmeval.run.state import STATE


@pytest.mark.parametrize("kind", ["qna", "choice", "code", "labels"])
def test_every_case_that_draws_an_answer_can_be_drawn_again(kind: str) -> None:
    # agent, application and conversation cases are qna cases: their draws take the slot for every call
    assert why_not_redrawn(kind, None) is None
    assert why_not_redrawn(kind, "judged") is None


def test_what_cannot_be_drawn_again_says_why() -> None:
    assert "grade the judge on the case's own answer" in str(why_not_redrawn("calibration", None))
    assert "perturbed variants" in str(why_not_redrawn("qna", "robust"))
    assert "hand-written tests" in str(why_not_redrawn("test", None))


def _doc(kind: str, stage: str | None, outcomes: list[bool]) -> dict[str, Any]:
    return {"cases": [{"suite": "s", "model": "m", "case_id": f"c{i}", "outcome": "passed" if ok else "failed",
                       "nodeid": f"cases/s.yaml::c{i}[m]", "kind": kind, "stage": stage}
                      for i, ok in enumerate(outcomes)]}


def test_a_suite_of_calibration_cases_keeps_the_run_s_verdict_saying_why_it_was_not_redrawn() -> None:
    now = [False] * 4 + [True] * 16  # 4 worse of 20: a 20-point drop, p = 0.0625: inconclusive
    baseline = {("s", "m", f"c{i}"): {"outcome": "passed"} for i in range(20)}
    reason = "pass rate fell 20.0 points but 20 paired cases cannot confirm it (p = 0.0625)"
    inconclusive = SuiteVerdict("s", "m", "inconclusive", paired=20, reasons=[reason])
    regression = SuiteVerdict("r", "m", "regression", paired=20, reasons=["pass rate fell 30.0 points (> 5), ..."])
    doc = _doc("calibration", None, now)
    doc["cases"] += [{**c, "suite": "r", "stage": "robust", "kind": "qna"} for c in _doc("qna", None, now)["cases"]]
    baseline.update({("r", "m", f"c{i}"): {"outcome": "passed"} for i in range(20)})
    config: Any = SimpleNamespace(stash={STATE: SimpleNamespace(settings=SimpleNamespace(repeat=1))})
    # No redraw process is started (this config could not start one), nothing of the budget is spent.
    out = decide_by_redraws(config, 200, 0.05, doc, baseline, [inconclusive, regression])
    assert out is not None and out["used"] == 0 and out["looks"] == 0 and out["suites"] == 0
    assert inconclusive.verdict == "inconclusive" and inconclusive.sequential is None
    assert inconclusive.reasons == [reason, "not redrawn: 20 of 20 cases cannot be drawn again: calibration cases "
                                            "grade the judge on the case's own answer: there is no answer to draw again"]
    # The run's own test settled the other: its verdict stands as it was.
    assert regression.verdict == "regression" and len(regression.reasons) == 1 and regression.sequential is None

"""A hand-written test whose `llm` call goes past the budget: an `error` outcome (an infrastructure error), never
a failure of the model, as docs/resilience.md says."""

from __future__ import annotations

from conftest import Project


def test_a_hand_written_call_past_the_budget_is_an_error(project: Project) -> None:
    project.pytester.makepyfile(test_budget="""
def test_first(llm):
    assert llm("one") == "ok"

def test_second(llm):
    assert llm("two") == "ok"
""")
    project.server.default = "ok"
    result = project.run("--llm-max-calls=1", "--llm-concurrency=1", "test_budget.py")
    result.assert_outcomes(passed=1, errors=1)
    outcomes = {c["case_id"]: c["outcome"] for c in project.results()["cases"]}
    assert outcomes == {"test_first": "passed", "test_second": "error"}
    assert len(project.server.requests) == 1

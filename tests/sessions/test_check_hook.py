"""The check hook as docs/extending.md documents it: a conftest check that asks the judge through its grading
context and adds an entry to each suite row and a line to the summary, next to a check written the older way
(``grade(answer, case, params)``), in a whole session with and without xdist."""

from __future__ import annotations

import pytest
from helpers.docs import documented_conftest

from conftest import Project

# The documented three-parameter form: called without the context.
SHORT = '''

class ShortParams(CheckParams):
    max_words: int = 20


def grade_short(answer, case, params):
    n = len(answer.split())
    return CheckOutcome("short", n <= params.max_words, min(1.0, params.max_words / max(n, 1)), f"{n} words")


def pytest_llmeval_register_checks(register):
    _register_tone(register)
    register(CheckDef("short", ShortParams, grade_short, shorthand="max_words"))
'''

SUITE = """\
suite: support
expect:
  - tone: polite
cases:
  - id: thanks
    question: Thank the customer for the order.
    expect:
      - short: 8
  - id: refusal
    question: Refuse the refund.
"""


@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_a_conftest_check_uses_the_context_and_reports_its_aggregate(project: Project, workers: str | None) -> None:
    # One hook in the conftest: the example's registers its check, SHORT's hook calls it and adds its own.
    conftest = documented_conftest("tests/sessions/test_check_hook.py")
    conftest = conftest.replace("def pytest_llmeval_register_checks(", "def _register_tone(")
    project.pytester.makeconftest(conftest + SHORT)
    project.write("cases/support.yaml", SUITE)
    server = project.server
    server.answer("Go away", "No: that is rude.")  # the judge, on the refusal (rules: first match wins)
    server.answer("Is this answer polite", "Yes.")  # the judge, on anything else
    server.answer("Thank the customer", "Thank you so much for your order!")
    server.answer("Refuse the refund", "No refund. Go away.")
    result = project.run(*(["-n", workers] if workers else []), "--llm-judge=openai/judge-model")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL tone (score 0.00): openai/judge-model says 'no: that is rude.'*",
                                 "*support [[]openai/test-model[]]: tone as wanted in 1 of 2 answer(s)*"])
    doc = project.results()
    (row,) = doc["suites"]
    assert row["tone"] == {"checked": 2, "passed": 1}
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert [c["check"] for c in cases["thanks"]["checks"]] == ["tone", "short"]
    assert cases["thanks"]["checks"][1]["reason"] == "7 words"
    # The judge the context made is the case's judge: its call is counted as the case's judge cost.
    assert cases["thanks"]["judge"]["model"] == "openai/judge-model" and cases["thanks"]["judge"]["calls"] == 1
    judged = [r for r in server.requests if "Is this answer polite" in r["messages"][-1]["content"]]
    assert len(judged) == 2 and {r["model"] for r in judged} == {"judge-model"}

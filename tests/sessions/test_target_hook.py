"""The target hook as docs/extending.md documents it: the documented ``faq`` conftest answers a whole suite (graded,
its references scored and recorded in results.json) with and without xdist, through the string form of
--llm-target too; a missing file is one error at the suite's target: line while the other suites still run."""

from __future__ import annotations

import json

import pytest
from helpers.docs import documented_conftest

from conftest import Project

FAQ = {
    "reset my password": {"answer": "Open Settings > Account and press Reset [1].", "source": "docs/account.md"},
    "offscreen": {"answer": "Set ORBIT_OFFSCREEN=1.", "source": "docs/install.md"},
}

# The suite documented next to the conftest, plus a case the FAQ cannot answer and one that fails `cites`.
SUITE = """\
suite: faq
target: {faq: faq.json}
cases:
  - id: reset
    question: How do I reset my password?
    sources: [docs/account.md]
    expect: [{contains: Settings}, {cites: true}]
  - id: offscreen
    question: How do I render offscreen?
    sources: [docs/install.md]
    expect: [{contains: ORBIT_OFFSCREEN}, {cites: true}]
  - id: unknown
    question: What is the meaning of life?
    expect: [{contains: "I don't know"}]
"""

PLAIN = """\
suite: plain
cases:
  - id: paris
    question: What is the capital of France?
    expect: [{contains: Paris}]
"""


def _setup(project: Project, suite: str = SUITE) -> None:
    project.pytester.makeconftest(documented_conftest("tests/sessions/test_target_hook.py"))
    project.write("faq.json", json.dumps(FAQ))
    project.write("cases/faq.yaml", suite)


@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_the_documented_target_kind_answers_a_whole_suite(project: Project, workers: str | None) -> None:
    _setup(project)
    extra = ["-n", workers] if workers else []
    result = project.run(*extra)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*FAIL cites*cited 0 of 1 expected source; not cited: docs/install.md*"])
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    reset = cases["reset"]
    assert reset["target"] == "faq:faq.json"
    assert reset["answer"] == "Open Settings > Account and press Reset [1]."
    assert [(r["n"], r["source"]) for r in reset["references"]] == [(1, "docs/account.md")]
    assert reset["metadata"] == {"matched": "reset my password"}
    assert reset["retrieval"]["recall_at_k"] == 1.0 and reset["retrieval"]["mrr"] == 1.0
    assert cases["unknown"]["outcome"] == "passed" and cases["unknown"]["references"] == []
    assert project.server.requests == [], "the faq kind answered: the --llm model was never asked"
    row = next(s for s in project.results()["suites"] if s["suite"] == "faq")
    assert row["app_calls"]["target"] == "faq:faq.json" and row["app_calls"]["cases"] == 3


def test_the_documented_kind_through_llm_target_and_a_load_error(project: Project) -> None:
    """The kind's string form in --llm-target; its check reports a missing file at the suite's target: line,
    and the suites that do not use it still run."""
    _setup(project, suite=SUITE.replace("target: {faq: faq.json}\n", ""))
    project.write("cases/broken.yaml", "suite: broken\n# the file is not there\ntarget: {faq: missing.json}\n"
                  "cases:\n  - {id: a, question: q, expect: [{contains: x}]}\n")
    project.write("cases/plain.yaml", PLAIN.replace("cases:\n", "target: model\ncases:\n"))
    project.server.answer("capital of France", "Paris.")
    result = project.run("--llm-target=faq:faq.json")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*cases/broken.yaml:3: target.file: no file missing.json in *"])
    cases = {(c["suite"], c["case_id"]): c for c in project.results()["cases"]}
    assert cases[("faq", "reset")]["target"] == "faq:faq.json"
    assert cases[("plain", "paris")]["target"] is None and cases[("plain", "paris")]["answer"] == "Paris."

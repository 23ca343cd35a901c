"""The provider hook as docs/extending.md documents it: the documented ``echo/`` conftest answers a whole session
(cached, graded, in results.json) with and without xdist; a conftest provider replaces a built-in one (``local/``)
and one that is not offline gets the run's retries and circuit breaker."""

from __future__ import annotations

import pytest
from helpers.docs import documented_conftest

from conftest import Project

SUITE = """\
suite: echo
system: Repeat after me.
cases:
  - id: paris
    question: The capital of France is Paris.
    expect:
      - contains: Paris
  - id: tokyo
    question: The capital of Japan is Kyoto.
    expect:
      - contains: Tokyo
"""


@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_the_documented_provider_answers_a_whole_session(project: Project, workers: str | None) -> None:
    project.pytester.makeconftest(documented_conftest("tests/sessions/test_provider_hook.py"))
    project.write("cases/echo.yaml", SUITE)
    extra = ["-n", workers] if workers else []
    result = project.run(*extra, model="echo/parrot")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL contains*Tokyo*"])
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    paris = cases["paris"]
    assert paris["answer"] == "The capital of France is Paris."
    assert (paris["model"], paris["resolved_model"], paris["cost_usd"], paris["cached"]) == (
        "echo/parrot", "echo/parrot", 0.0, False)
    assert paris["prompt_tokens"] == paris["completion_tokens"] == 6
    assert project.server.requests == []  # nothing went to litellm's endpoint

    again = project.run(*extra, model="echo/parrot")  # the response cache sits in front of every provider
    again.assert_outcomes(passed=1, failed=1)
    assert all(c["cached"] for c in project.results()["cases"])


def test_a_conftest_provider_replaces_a_builtin_one(project: Project) -> None:
    """The built-in providers register through the same hook, first: a conftest's ``local/`` wins (no model is
    loaded), and its check reports an unusable model as the one usage error of the run."""
    project.pytester.makeconftest('''
from pytest_llmeval import Provider, Reply


def check(model, shown):
    return None if model.endswith("/smollm2") else f"--llm={shown}: only local/smollm2 is faked here"


def pytest_llmeval_register_providers(register):
    register(Provider("local/", lambda request: Reply("Paris, of course.", cost_usd=0.5), check=check))
''')
    project.write("cases/echo.yaml", SUITE)
    result = project.run(model="local/smollm2")
    result.assert_outcomes(passed=1, failed=1)
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert cases["paris"]["answer"] == "Paris, of course." and cases["paris"]["cost_usd"] == 0.5

    refused = project.run(model="local/other")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["ERROR: --llm=local/other: only local/smollm2 is faked here"])


def test_a_remote_provider_gets_retries_and_the_circuit_breaker(project: Project) -> None:
    """A provider that is not offline and names its endpoint: transient failures are retried, and an endpoint
    that keeps refusing stops being called (the rest of the cases error without a call)."""
    project.pytester.makeconftest('''
from pytest_llmeval import Provider

ASKED = set()


def flaky(request):
    if "Paris" in request.prompt and request.prompt not in ASKED:
        ASKED.add(request.prompt)
        raise TimeoutError("slow today")  # transient: retried
    if "Paris" not in request.prompt:
        raise ConnectionRefusedError("nobody listens")  # the endpoint is down
    return request.prompt


def pytest_llmeval_register_providers(register):
    register(Provider("svc/", flaky, endpoint=lambda model, api_base: "svc at test"))
''')
    suite = SUITE + "".join(f"  - id: down-{i}\n    question: Question {i}\n    expect: [{{contains: answer {i}}}]\n"
                            for i in range(5))
    project.write("cases/echo.yaml", suite)
    result = project.run("--llm-retries=1", "--llm-breaker=2", "--llm-concurrency=1", model="svc/a")
    result.assert_outcomes(passed=1, errors=6)
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert cases["paris"]["outcome"] == "passed" and cases["paris"]["retries"] == 1
    assert "svc at test" in cases["down-4"]["message"] and "not sent" in cases["down-4"]["message"]

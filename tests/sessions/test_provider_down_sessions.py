"""A provider that fails or is down: no INTERNALERROR, a circuit breaker per endpoint, honest retry counts.

Faults come from the scripted server or from a closed port on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import textwrap

import pytest

from conftest import Project


def suite(n: int, name: str = "many") -> str:
    lines = [f"suite: {name}", "params: {temperature: 0, max_tokens: 8}", "cases:"]
    for i in range(n):
        lines += [f"  - id: c{i:03d}", f"    question: '{name} question {i:03d}: say ok.'",
                  "    expect: [{contains: ok}]"]
    return "\n".join(lines) + "\n"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stress_project(project: Project, cases: int) -> None:
    """Case files and hand-written failing tests interleaved: while the tests' assertion failures are rendered
    (ast.parse on the main thread), the next suite's calls fail in the prefetch threads (litellm formats them)."""
    for part in range(3):  # one folder each: pytest collects a folder's case files before its test modules
        project.write(f"cases/p{part}/suite.yaml", suite(cases // 3, name=f"s{part}"))
        project.write(f"cases/p{part}/test_plain{part}.py", textwrap.dedent(f"""
            import pytest

            @pytest.mark.parametrize("i", range(15))
            def test_plain_failure_{part}(i):
                values = [i, i + 1]
                assert values == [i, i + 2], "a traceback to render"
            """))
    project.server.fail(None, 500, message="upstream exploded")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_many_concurrent_failing_calls_never_crash_the_run(project: Project, workers: str) -> None:
    cases = 240
    stress_project(project, cases)
    result = project.pytester.runpytest_subprocess(*project.args("--llm-concurrency=32", "-n", workers),
                                                   "cases", timeout=300)
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "SystemError" not in output
    result.assert_outcomes(errors=cases, failed=45)
    result.stdout.fnmatch_lines(["*llmeval summary*", f"ERROR: {cases} of {cases} case(s) (100%) errored*"])
    assert len(project.server.requests) == cases  # 500s are not connection failures: no breaker


# ------------------------------------------------------------------------------------------ the circuit breaker


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_down_endpoint_errors_the_remaining_cases_at_once(project: Project, workers: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    step_summary = project.pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    project.write("cases/many.yaml", suite(120))
    port = closed_port()
    args = ["--llm=openai/test-model", f"--llm-api-base=http://127.0.0.1:{port}/v1", "--llm-retries=2",
            "--llm-concurrency=4", "-n", workers, "-p", "no:cacheprovider"]
    result = project.pytester.runpytest_subprocess(*args, timeout=300)
    result.assert_outcomes(errors=120)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    down = f"endpoint openai at http://127.0.0.1:{port}/v1 is down: connection refused"
    # Said once in the summary, naming the endpoint and the cause, with the count.
    # (pytest's own short summary that follows lists each error in full when CI is set)
    summary = out[out.index("llmeval summary"):out.index("short test summary info")]
    assert summary.count(down) == 1
    result.stdout.fnmatch_lines([f"ERROR: {down}*Calls to it stopped*120 case(s) errored without an answer.",
                                 "ERROR: 120 of 120 case(s) (100%) errored*No case was graded: this run has no pass "
                                 "rates."])
    assert "rest on the remaining" not in out
    cases = project.results()["cases"]
    not_sent = [c for c in cases if c["message"].startswith("not sent: ")]
    # Only the calls in flight when the breaker opened were made: at most a few per process, never one per case.
    assert len(not_sent) >= 120 - 3 * 4 * max(1, int(workers))
    assert all(down in c["message"] for c in cases)
    assert step_summary.read_text().count(down) == 1  # and once in the GitHub step summary


def test_the_breaker_stops_retries_and_backoff(project: Project) -> None:
    """Without a breaker every case spends its retries and backoff on a closed port; with it, the run is quick."""
    project.write("cases/many.yaml", suite(40))
    port = closed_port()
    base = ["--llm=openai/test-model", f"--llm-api-base=http://127.0.0.1:{port}/v1", "--llm-retries=3",
            "--llm-concurrency=1"]
    result = project.pytester.runpytest(*base)
    result.assert_outcomes(errors=40)
    cases = project.results()["cases"]
    # One case made the calls (4 attempts: the breaker opened at the third consecutive refusal and its retry
    # was not made), the others none.
    assert [c["retries"] for c in cases][:2] == [2, 0]
    assert sum(1 for c in cases if c["message"].startswith("not sent: ")) == 39
    project.write("cases/many.yaml", suite(3))  # (each case backs off for ~1.75 s on average)
    off = project.pytester.runpytest(*base, "--llm-breaker=0")
    off.assert_outcomes(errors=3)
    assert [c["retries"] for c in project.results()["cases"]] == [3, 3, 3]  # each case: 4 attempts, 3 retries


def test_a_401_opens_the_breaker_with_its_cause(project: Project) -> None:
    project.write("cases/many.yaml", suite(30))
    project.server.fail(None, 401, message="Incorrect API key provided")
    result = project.run("--llm-concurrency=1")
    result.assert_outcomes(errors=30)
    assert len(project.server.requests) == 3
    result.stdout.fnmatch_lines(["ERROR: endpoint openai at http://127.0.0.1:*/v1 is down: authentication failed "
                                 "(HTTP 401)*28 case(s) errored without an answer.*"])


def test_server_errors_do_not_open_the_breaker_and_answers_reset_it(project: Project) -> None:
    project.write("cases/many.yaml", suite(12))
    project.server.default = "ok"
    project.server.fail("many question 000:", 500)
    project.server.fail("many question 001:", 503)
    project.server.fail("many question 002:", 500)
    project.server.fail("many question 003:", 502)
    result = project.run("--llm-concurrency=1", "--llm-breaker=2")
    result.assert_outcomes(errors=4, passed=8)
    assert len(project.server.requests) == 12


# ------------------------------------------------------------------------------------------ retries, malformed


def test_retries_count_the_attempts_of_a_failed_call(project: Project) -> None:
    project.write("cases/many.yaml", suite(2))
    project.server.default = "ok"
    project.server.fail("many question 000:", 500, message="still broken")
    result = project.pytester.runpytest(*project.args()[:-1], "--llm-retries=2", "--llm-concurrency=1")
    result.assert_outcomes(errors=1, passed=1)
    by_id = {c["case_id"]: c for c in project.results()["cases"]}
    assert by_id["c000"]["retries"] == 2 and "after 3 attempts" in by_id["c000"]["message"]
    assert by_id["c001"]["retries"] == 0
    assert project.results()["suites"][0]["retries"] == 2


def test_an_answer_without_choices_is_a_malformed_response(project: Project) -> None:
    project.write("cases/many.yaml", suite(2))
    project.server.default = "ok"
    empty = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "test-model", "choices": [],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}})
    project.server.fail("many question 000:", 200, body=empty)
    result = project.run("--llm-concurrency=1")
    result.assert_outcomes(errors=1, passed=1)
    message = next(c for c in project.results()["cases"] if c["case_id"] == "c000")["message"]
    assert "malformed response: no choices" in message
    assert "IndexError" not in message and "IndexError" not in result.stdout.str()

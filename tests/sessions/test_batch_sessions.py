"""--llm-batch as a user runs it: whole pytest sessions against the scripted batch server (files + batches over
real HTTP through litellm), with and without -n 2; a run killed while polling; a second plain run from the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.batch_server import BatchServer

from conftest import API_KEY, GEO, GEO_ANSWERS, JUDGED, Project, kill_while_polling, plugin_env
from conftest import SUPPORT_CONVERSATION as CONVERSATION
from conftest import batch_store as store

BATCH = ("--llm-batch", "--llm-batch-poll=0.05")
JUDGE = "openai/judge-model"


@pytest.fixture
def batch_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchServer]:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    for name in ("LLMEVAL_MODELS", "LLMEVAL_CACHE", "LLMEVAL_RESULTS", "LLMEVAL_API_BASE", "LLMEVAL_BATCH"):
        monkeypatch.delenv(name, raising=False)
    with BatchServer() as server:
        for question, answer in GEO_ANSWERS:
            server.answer(question, answer, model="openai/test-model")
        yield server


@pytest.fixture
def bproject(pytester: pytest.Pytester, batch_server: BatchServer) -> Project:
    project = Project(pytester, batch_server)
    project.write("cases/geo.yaml", GEO)
    return project



@pytest.mark.parametrize("xdist", [False, True], ids=["n0", "n2"])
def test_batch_run_fills_the_cache_then_grades_and_a_plain_run_grades_from_it(bproject: Project, xdist: bool) -> None:
    server = bproject.server
    extra = ("-n", "2") if xdist else ()
    result = bproject.run(*BATCH, *extra)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*round 1: 3 request(s) submitted to openai/test-model (batch batch_*)",
                                 "*batches: 1 completed; requests: 3 submitted, 3 completed, 0 failed*",
                                 "*3 answer(s) from 1 batch(es) in the cache, 0 request(s) failed; grading*"])
    assert len(server.batches) == 1 and server.chat_calls == 0  # every answer came from the batch
    line = server.lines[0]
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"]["model"] == "test-model" and line["body"]["max_tokens"] == 32
    doc = bproject.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert cases["capital-fr"]["answer"] == "The capital of France is Paris." and cases["capital-fr"]["cached"]
    (batch,) = doc["run"]["batch"]["batches"]
    assert batch["status"] == "completed" and (batch["total"], batch["completed"], batch["failed"]) == (3, 3, 0)
    # No check grades with a model: one recording pass is enough.
    assert doc["run"]["batch"]["rounds"] == 1 and doc["run"]["batch"]["refused"] == 0
    # The API key is in no file the batch mode writes.
    assert API_KEY not in (bproject.pytester.path / ".llmeval" / "batches.json").read_text()
    # A second, plain run grades from the cache: no batch, no call.
    again = bproject.run(*extra)
    again.assert_outcomes(passed=2, failed=1)
    assert len(server.batches) == 1 and server.chat_calls == 0
    # And a second batch run finds nothing to submit.
    bproject.run(*BATCH, *extra).assert_outcomes(passed=2, failed=1)
    assert len(server.batches) == 1 and server.chat_calls == 0


@pytest.mark.parametrize("xdist", [False, True], ids=["n0", "n2"])
def test_a_line_that_fails_inside_the_batch_is_an_error_of_its_case(bproject: Project, xdist: bool) -> None:
    server = bproject.server
    server.fail_line("capital of Japan", "Scripted content policy refusal", status=400)
    result = bproject.run(*BATCH, *(("-n", "2") if xdist else ()))
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*requests: 3 submitted, 2 completed, 1 failed*",
                                 "*the request failed in the batch: HTTP 400: Scripted content policy refusal*"])
    assert server.chat_calls == 0  # a provider-side failure: not retried as a plain call
    cases = {c["case_id"]: c for c in bproject.results()["cases"]}
    assert cases["capital-jp"]["outcome"] == "error"
    assert "Scripted content policy refusal" in cases["capital-jp"]["message"]


def test_an_expired_batch_keeps_its_answers_and_resubmits_the_rest_once(bproject: Project) -> None:
    server = bproject.server
    server.expire_next(keep=1)  # answers the first line, then expires
    result = bproject.run(*BATCH)
    result.assert_outcomes(passed=2, failed=1)
    assert len(server.batches) == 2 and server.chat_calls == 0
    first, second = server.batches.values()
    assert first["status"] == "expired" and first["request_counts"]["completed"] == 1
    assert second["status"] == "completed" and second["request_counts"]["total"] == 2


def test_a_request_that_expires_twice_is_an_error(bproject: Project) -> None:
    server = bproject.server
    server.expire_next(keep=1)
    server.expire_next(keep=0)
    result = bproject.run(*BATCH)
    outcomes = result.parseoutcomes()  # which line the first batch answered depends on the order of the calls
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1 and outcomes["errors"] == 2
    result.stdout.fnmatch_lines(["*expired before answering this request (2 batches in a row)*"])
    assert len(server.batches) == 2 and server.chat_calls == 0


def test_a_failed_batch_makes_its_cases_errors(bproject: Project) -> None:
    bproject.server.fail_next("Scripted invalid JSONL")
    result = bproject.run(*BATCH)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*failed: Scripted invalid JSONL*"])
    assert bproject.server.chat_calls == 0


def test_judges_calls_are_batched_in_a_second_round(bproject: Project) -> None:
    server = bproject.server
    bproject.write("cases/support.yaml", JUDGED)
    server.answer("capital of France", '{"score": 9, "reason": "Matches."}', model=JUDGE)
    result = bproject.run(*BATCH, f"--llm-judge={JUDGE}", "-k", "support")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*round 1: 1 request(s) submitted to openai/test-model*",
                                 "*round 2: * request(s) submitted to openai/judge-model*"])
    assert len(server.batches) == 2 and server.chat_calls == 0
    judged = bproject.results()["cases"][0]
    assert judged["checks"][0]["passed"] and judged["judge"]["cached"]


def test_models_without_a_batch_api_are_called_one_by_one(bproject: Project) -> None:
    bproject.write("conftest.py", """
from pytest_llmeval.providers.base import Provider, Reply

def pytest_llmeval_register_providers(register):
    register(Provider("echo/", lambda request: Reply("Paris, Tokyo and the Pacific.")))
""")
    result = bproject.run(*BATCH, model="echo/any")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*echo/any has no batch API (an offline or custom provider): its calls are made one "
                                 "by one*"])
    assert not bproject.server.batches


def test_batch_mode_needs_the_exact_cache(bproject: Project) -> None:
    result = bproject.run(*BATCH, "--llm-cache=off")
    result.stderr.fnmatch_lines(["*--llm-batch puts the batches' answers in the exact cache*--llm-cache=off*"])


def test_a_timed_out_run_errors_and_the_next_run_resumes_polling(bproject: Project) -> None:
    server = bproject.server
    server.polls_to_complete = 10**9  # never, until told
    result = bproject.run(*BATCH, "--llm-batch-timeout=0.3")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*was still in_progress when --llm-batch-timeout (0.3 s) ran out*"])
    assert [b["status"] for b in store(bproject)["batches"]] == ["in_progress"]
    server.polls_to_complete = 1
    result = bproject.run(*BATCH)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*resuming 1 batch(es) of an earlier run*"])
    assert len(server.batches) == 1 and server.chat_calls == 0  # polled again, not resubmitted


def test_a_run_killed_while_polling_resumes_with_the_same_batch(bproject: Project) -> None:
    server = bproject.server
    server.polls_to_complete = 10**9
    kill_while_polling(bproject, *BATCH)
    saved = store(bproject)["batches"]
    assert len(saved) == 1 and not saved[0].get("collected")
    server.polls_to_complete = 1
    result = bproject.run(*BATCH)
    result.assert_outcomes(passed=2, failed=1)
    assert list(server.batches) == [saved[0]["id"]] and server.chat_calls == 0




def test_a_conversation_s_turns_are_batched_round_by_round(bproject: Project) -> None:
    server = bproject.server
    bproject.write("cases/support.yaml", CONVERSATION)
    server.answer("reset my password", "Click 'Forgot password' on the login page.")
    server.answer("lost my email", "Then contact support@example.com.")
    server.answer("Thanks, bye", "You're welcome!")
    server.answer("refund", "Yes, within 30 days of purchase.")
    server.answer("How long", "It takes a while.")
    result = bproject.run(*BATCH, "-k", "support")
    result.assert_outcomes(passed=1, failed=1)
    assert [b["request_counts"]["total"] for b in server.batches.values()] == [2, 2, 1]  # turn 1, 2, 3
    assert server.chat_calls == 0
    bproject.run("-k", "support").assert_outcomes(passed=1, failed=1)
    assert server.chat_calls == 0


def test_repeated_draws_each_get_their_batch_line(bproject: Project) -> None:
    server = bproject.server
    server.reset()
    server.answer("capital of Japan", ["Tokyo.", "Kyoto."])
    result = bproject.run(*BATCH, "--llm-repeat=2", "-k", "capital-jp")
    result.assert_outcomes(failed=1)
    assert len(server.lines) == 2 and server.chat_calls == 0
    samples = bproject.results()["cases"][0]["samples"]
    assert sorted(s["answer"] for s in samples) == ["Kyoto.", "Tokyo."]
    bproject.run("--llm-repeat=2", "-k", "capital-jp").assert_outcomes(failed=1)
    assert server.chat_calls == 0


# ------------------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("xdist", [False, True], ids=["n0", "n2"])
def test_max_calls_counts_batched_requests_and_skips_the_rest(bproject: Project, xdist: bool) -> None:
    server = bproject.server
    extra = ("-n", "2") if xdist else ()
    result = bproject.run(*BATCH, "--llm-max-calls=2", "-rs", *extra)
    outcomes = result.parseoutcomes()  # which request is past the budget depends on the order of the calls
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2 and outcomes["skipped"] == 1
    result.stdout.fnmatch_lines(["*round 1: 1 request(s) not submitted: --llm-max-calls 2 reached*",
                                 "*round 1: 2 request(s) submitted to openai/test-model*",
                                 "budget: 2 model call(s) of 2, $0.0000 spent, 1 case(s) skipped by the budget",
                                 "*--llm-max-calls 2 reached: no more model calls in this run*"])
    assert len(server.lines) == 2 and server.chat_calls == 0  # the third is neither batched nor called
    doc = bproject.results()
    assert doc["run"]["budget"]["calls"] == 2 and doc["run"]["budget"]["batched"] == 2
    assert doc["run"]["batch"]["over_budget"] == 1
    skipped = [c for c in doc["cases"] if c["outcome"] == "skipped"]
    assert len(skipped) == 1 and "--llm-max-calls 2 reached: no more model calls" in skipped[0]["message"]


def test_the_calls_of_models_without_a_batch_api_count_in_the_run_s_budget(bproject: Project) -> None:
    bproject.write("conftest.py", """
from pytest_llmeval.providers.base import Provider, Reply

def pytest_llmeval_register_providers(register):
    register(Provider("echo/", lambda request: Reply("Paris, Tokyo and the Pacific.")))
""")
    result = bproject.run(*BATCH, "--llm-max-calls=2", "--llm-concurrency=1", model="echo/any")
    # Two calls made in the recording pass; the third case's call meets the run's spent budget while grading.
    result.assert_outcomes(passed=2, skipped=1)
    assert bproject.results()["run"]["budget"]["calls"] == 2


def test_max_cost_sees_the_batch_price_of_the_first_round_before_the_second(bproject: Project) -> None:
    server = bproject.server
    bproject.write("cases/support.yaml", JUDGED)
    server.answer("capital of France", "The capital of France is Paris.", model="openai/gpt-4o-mini")
    server.answer("capital of France", '{"score": 9, "reason": "Matches."}', model="openai/gpt-4o")
    result = bproject.run(*BATCH, "--llm-judge=openai/gpt-4o", "--llm-max-cost=0.0000001", "-k", "support", "-rs",
                          model="openai/gpt-4o-mini")
    # Round 1's answer cost more than the budget: round 2's judge request is not submitted, the case not graded.
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*round 2: 1 request(s) not submitted: --llm-max-cost $1e-07 reached*",
                                 "*--llm-max-cost $1e-07 reached: no more model calls in this run*"])
    assert len(server.batches) == 1 and server.chat_calls == 0
    doc = bproject.results()
    (batch,) = doc["run"]["batch"]["batches"]
    assert batch["cost_usd"] > 1e-7  # litellm's batch price of gpt-4o-mini's tokens
    assert doc["run"]["budget"]["spend_usd"] == pytest.approx(batch["cost_usd"], abs=1e-6)


# ------------------------------------------------------------------------------------------ latency


def test_a_batched_answer_has_no_latency_and_stays_out_of_the_statistics(bproject: Project) -> None:
    from pytest_llmeval.report.html import render

    server = bproject.server
    server.latency = 0.3
    bproject.run("-k", "capital-fr").assert_outcomes(passed=1)  # a plain call: a real latency, cached
    server.latency = 0.0
    result = bproject.run(*BATCH, "--llm-gate=latency_p50<=0.1")
    result.assert_outcomes(passed=2, failed=1)
    doc = bproject.results()
    latency = {c["case_id"]: c["latency_s"] for c in doc["cases"]}
    assert latency["capital-jp"] is None and latency["ocean"] is None  # unknown, not 0
    assert latency["capital-fr"] >= 0.3
    (row,) = doc["suites"]
    assert row["latency_p50_s"] >= 0.3 and row["latency_p95_s"] >= 0.3  # the measured answer only
    # The gate's latency rule sees the same: the one measured latency breaks it (a 0 would have passed it).
    result.stdout.fnmatch_lines(["*: latency_p50 * breaks latency_p50<=0.1"])
    (batch,) = doc["run"]["batch"]["batches"]
    assert batch["turnaround_s"] is not None and batch["turnaround_s"] >= 0
    result.stdout.fnmatch_lines(["batches: 1 finished, turnaround * s, 2 answer(s); a batched answer has no latency "
                                 "of its own: p50 s / p95 s are over the others"])
    # A run of batched answers only: no latency anywhere, in the table nor in the HTML report.
    again = bproject.run(*BATCH, "-k", "not capital-fr", "--llm-results=.llmeval/only.json", "--llm-cache=on")
    again.assert_outcomes(passed=1, failed=1)
    only = bproject.results(".llmeval/only.json")
    assert only["suites"][0]["latency_p50_s"] is None and only["suites"][0]["latency_p95_s"] is None
    assert "no latencies recorded" in render(only)


# ------------------------------------------------------------------------------------------ two runs, one store


def _start(bproject: Project, out: Path, *extra: str) -> subprocess.Popen:
    with open(out, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "pytest", *bproject.args(*BATCH, *extra)],
                                cwd=bproject.pytester.path, env=plugin_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _until(what: Callable[[], bool], proc: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not what() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in proc), "a run ended early"
        time.sleep(0.1)
    assert what()


def test_two_runs_sharing_the_store_keep_each_other_s_batches(bproject: Project) -> None:
    server = bproject.server
    server.polls_to_complete = 10**9
    path = bproject.pytester.path
    first = _start(bproject, path / "first.txt", "-k", "capital-fr")
    procs = [first]
    try:
        _until(lambda: len(server.batches) == 1, procs)
        second = _start(bproject, path / "second.txt", "-k", "not capital-fr")
        procs.append(second)
        _until(lambda: len(server.batches) == 2, procs)
        time.sleep(1.0)  # both poll (every 0.05 s) and write the store many times over
        saved = store(bproject)
        assert {b["id"] for b in saved["batches"]} == set(server.batches)  # neither run dropped the other's
        assert len(saved["runs"]) == 2
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    # Both killed while polling: the next run resumes both batches and submits nothing.
    server.polls_to_complete = 1
    result = bproject.run(*BATCH)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*resuming 2 batch(es)*"])
    assert len(server.batches) == 2 and len(server.lines) == 3 and server.chat_calls == 0


def test_a_second_run_of_the_same_cases_waits_for_the_first_run_s_batch(bproject: Project) -> None:
    server = bproject.server
    server.polls_to_complete = 10**9
    path = bproject.pytester.path
    first = _start(bproject, path / "first.txt")
    procs = [first]
    try:
        _until(lambda: len(server.batches) == 1, procs)
        second = _start(bproject, path / "second.txt", "-n", "2")
        procs.append(second)
        _until(lambda: b"resuming 1 batch(es)" in (path / "second.txt").read_bytes(), procs)
        server.polls_to_complete = 1  # the batch finishes: whichever run sees it first collects it, once
        assert first.wait(timeout=120) == 1 and second.wait(timeout=120) == 1  # 1: capital-jp fails, as usual
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for name in ("first.txt", "second.txt"):
        assert "2 passed" in (path / name).read_text() and "1 failed" in (path / name).read_text()
    assert len(server.batches) == 1 and len(server.lines) == 3 and server.chat_calls == 0
    assert store(bproject)["runs"] == {}

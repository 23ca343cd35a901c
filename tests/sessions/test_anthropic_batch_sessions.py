"""--llm-batch with ``anthropic/`` models as a user runs it: whole pytest sessions against the scripted Anthropic
server (Message Batches over real HTTP: created by the plugin, retrieved and read through litellm), with and without
-n 2; errored and expired requests; a run killed while polling; a run mixing an OpenAI and an Anthropic model; an
Anthropic judge batched in a second round. The API key never reaches .llmeval/, results.json or the output."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.anthropic_batch_server import AnthropicBatchServer

from conftest import API_KEY, GEO, GEO_ANSWERS, JUDGED, Project, kill_while_polling
from conftest import batch_store as store

ANTHROPIC_KEY = "sk-ant-test"
MODEL = "anthropic/test-model"
BATCH = ("--llm-batch", "--llm-batch-poll=0.05")
JUDGE = "anthropic/judge-model"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicBatchServer]:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    for name in ("LLMEVAL_MODELS", "LLMEVAL_CACHE", "LLMEVAL_RESULTS", "LLMEVAL_API_BASE", "LLMEVAL_BATCH",
                 "ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with AnthropicBatchServer() as s:
        for model in (MODEL, "openai/test-model"):
            for question, answer in GEO_ANSWERS:
                s.answer(question, answer, model=model)
        yield s


@pytest.fixture
def aproject(pytester: pytest.Pytester, server: AnthropicBatchServer) -> Project:
    project = Project(pytester, server)
    project.write("cases/geo.yaml", GEO)
    return project


def run(project: Project, *extra: str) -> pytest.RunResult:
    return project.run(*extra, model=MODEL)



def assert_no_key(project: Project, *results: pytest.RunResult) -> None:
    """Neither API key is in any file under .llmeval/ (batches.json, results.json, the cache...) nor the output."""
    for path in (project.pytester.path / ".llmeval").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert ANTHROPIC_KEY.encode() not in data and API_KEY.encode() not in data, path
    for result in results:
        output = "\n".join(result.outlines + result.errlines)
        assert ANTHROPIC_KEY not in output and API_KEY not in output


@pytest.mark.parametrize("xdist", [False], ids=["n0"])  # -n 2: the OpenAI path's test (the same batch phase)
def test_a_cold_batch_run_fills_the_cache_and_a_plain_rerun_makes_no_call(aproject: Project, xdist: bool) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    extra = ("-n", "2") if xdist else ()
    result = run(aproject, *BATCH, *extra)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*round 1: 3 request(s) submitted to anthropic/test-model (batch msgbatch_*)",
                                 "*batches: 1 completed; requests: 3 submitted, 3 completed, 0 failed*",
                                 "*3 answer(s) from 1 batch(es) in the cache, 0 request(s) failed; grading*"])
    assert len(server.message_batches) == 1 and server.chat_calls == 0 and not server.batches
    params = server.message_requests[0]["params"]
    assert params["model"] == "test-model" and params["max_tokens"] == 32 and params["temperature"] == 0
    assert params["system"] == [{"type": "text", "text": "Answer in one short sentence."}]
    assert [m["role"] for m in params["messages"]] == ["user"]
    doc = aproject.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert cases["capital-fr"]["answer"] == "The capital of France is Paris." and cases["capital-fr"]["cached"]
    (batch,) = doc["run"]["batch"]["batches"]
    assert batch["model"] == MODEL and batch["status"] == "completed" and batch["id"].startswith("msgbatch_")
    assert doc["run"]["batch"]["unbatched"] == []
    saved = store(aproject)["batches"]
    assert saved[0]["provider"] == "anthropic"
    # A plain rerun grades from the same cache entries: no call at all.
    again = run(aproject, *extra)
    again.assert_outcomes(passed=2, failed=1)
    assert server.chat_calls == 0 and len(server.message_batches) == 1
    assert_no_key(aproject, result, again)


def test_the_endpoint_from_anthropic_api_base(aproject: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    monkeypatch.setenv("ANTHROPIC_API_BASE", server.base)
    result = aproject.pytester.runpytest(f"--llm={MODEL}", "--llm-retries=0", *BATCH)
    result.assert_outcomes(passed=2, failed=1)
    assert len(server.message_batches) == 1 and server.chat_calls == 0
    aproject.pytester.runpytest(f"--llm={MODEL}", "--llm-retries=0").assert_outcomes(passed=2, failed=1)
    assert server.chat_calls == 0


@pytest.mark.parametrize("xdist", [True], ids=["n2"])  # the refusals reach the workers; -n 0: the OpenAI path's test
def test_an_errored_request_is_an_error_with_the_provider_s_message(aproject: Project, xdist: bool) -> None:
    server = aproject.server
    server.fail_line("capital of Japan", "Scripted content policy refusal", status=400)
    result = run(aproject, *BATCH, *(("-n", "2") if xdist else ()))
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*requests: 3 submitted, 2 completed, 1 failed*",
                                 "*the request failed in the batch: HTTP 400: invalid_request_error: Scripted content "
                                 "policy refusal*"])
    assert server.chat_calls == 0  # a provider-side failure: not retried as a plain call
    cases = {c["case_id"]: c for c in aproject.results()["cases"]}
    assert cases["capital-jp"]["outcome"] == "error"
    assert "Scripted content policy refusal" in cases["capital-jp"]["message"]


def test_expired_requests_are_resubmitted_once(aproject: Project) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    server.expire_next(keep=1)  # answers the first request, the two others expire
    result = run(aproject, *BATCH)
    result.assert_outcomes(passed=2, failed=1)
    assert server.chat_calls == 0
    first, second = server.message_batches.values()
    assert first["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 2}
    assert second["request_counts"]["succeeded"] == 2 and len(second["_requests"]) == 2


def test_a_request_that_expires_twice_is_an_error(aproject: Project) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    server.expire_next(keep=1)
    server.expire_next(keep=0)
    result = run(aproject, *BATCH)
    outcomes = result.parseoutcomes()  # which request the first batch answered depends on the order of the calls
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1 and outcomes["errors"] == 2
    result.stdout.fnmatch_lines(["*expired before answering this request (2 batches in a row)*"])
    assert len(server.message_batches) == 2 and server.chat_calls == 0


def test_a_killed_poller_resumes_with_the_same_batch(aproject: Project) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    server.polls_to_complete = 10**9  # the batch stays in_progress
    kill_while_polling(aproject, *BATCH, model=MODEL)
    saved = store(aproject)["batches"]
    assert len(saved) == 1 and not saved[0].get("collected")  # its status: whatever it saw before the kill
    assert saved[0]["id"].startswith("msgbatch_")
    server.polls_to_complete = 1
    result = run(aproject, *BATCH)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*resuming 1 batch(es) of an earlier run*"])
    assert list(server.message_batches) == [saved[0]["id"]] and server.chat_calls == 0
    assert_no_key(aproject, result)


def test_an_openai_and_an_anthropic_model_are_batched_side_by_side(aproject: Project) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    result = aproject.run(*BATCH, f"--llm={MODEL}", model="openai/test-model")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*3 request(s) submitted to anthropic/test-model (batch msgbatch_*)",
                                 "*3 request(s) submitted to openai/test-model (batch batch_*)",
                                 "*6 answer(s) from 2 batch(es) in the cache, 0 request(s) failed; grading*"])
    assert len(server.batches) == 1 and len(server.message_batches) == 1 and server.chat_calls == 0
    assert {b["model"] for b in aproject.results()["run"]["batch"]["batches"]} == {MODEL, "openai/test-model"}
    aproject.run(f"--llm={MODEL}", model="openai/test-model").assert_outcomes(passed=4, failed=2)
    assert server.chat_calls == 0
    assert_no_key(aproject, result)


def test_an_anthropic_judge_is_batched_in_a_second_round(aproject: Project) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    aproject.write("cases/support.yaml", JUDGED)
    server.answer("capital of France", '{"score": 9, "reason": "Matches."}', model=JUDGE)
    result = run(aproject, *BATCH, f"--llm-judge={JUDGE}", "-k", "support")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*round 1: 1 request(s) submitted to anthropic/test-model*",
                                 "*round 2: * request(s) submitted to anthropic/judge-model*"])
    assert len(server.message_batches) == 2 and server.chat_calls == 0
    judged = aproject.results()["cases"][0]
    assert judged["checks"][0]["passed"] and judged["judge"]["cached"]


def test_a_batch_still_in_progress_at_the_timeout_errors_and_the_next_run_resumes_it(aproject: Project) -> None:
    server = aproject.server
    assert isinstance(server, AnthropicBatchServer)
    server.polls_to_complete = 10**9  # stays in_progress, until told
    result = run(aproject, *BATCH, "--llm-batch-timeout=0.3")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*msgbatch_* was still in_progress when --llm-batch-timeout (0.3 s) ran out*"])
    assert [b["status"] for b in store(aproject)["batches"]] == ["in_progress"]
    server.polls_to_complete = 1
    result = run(aproject, *BATCH)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*resuming 1 batch(es) of an earlier run*"])
    assert len(server.message_batches) == 1 and server.chat_calls == 0  # polled again, not resubmitted

"""The batch client (providers/batch.py) against the scripted batch server over real HTTP through litellm: upload,
create, poll, output, expired, partial and whole failures; the runner's hook; the store a killed run resumes from."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.batch_server import BatchServer

from conftest import poll_batch as poll
from pytest_llmeval.config.settings import Settings
from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers.batch import DEFERRED, BatchClient, BatchHook, batch_route, completion_of, line_error
from pytest_llmeval.providers.runner import ModelCallError, ModelRunner
from pytest_llmeval.run.batch import BatchStore

KEY = "sk-test-do-not-leak-0123456789"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with BatchServer() as s:
        s.answer("France", "Paris.")
        s.answer("Japan", "Tokyo.")
        s.answer("weather", "")
        yield s


def line(custom_id: str, prompt: str, **params: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "test-model", "messages": [{"role": "user", "content": prompt}], **params}}



def test_upload_create_poll_and_read_the_output(server: BatchServer) -> None:
    client = BatchClient("openai", server.url)
    batch_id = client.submit([line("k1", "capital of France?", max_tokens=8), line("k2", "capital of Japan?")],
                             {"source": "test"})
    assert [f["object"]["purpose"] for f in server.files.values()] == ["batch"]
    assert server.batches[batch_id]["metadata"] == {"source": "test"}
    assert server.lines[0]["body"]["max_tokens"] == 8
    server.polls_to_complete = 2
    assert poll(client, batch_id) == ["in_progress", "in_progress", "completed"]
    info = client.retrieve(batch_id)
    assert (info.total, info.completed, info.failed, info.error_file_id) == (2, 2, 0, None)
    out = {x["custom_id"]: x for x in client.lines(info.output_file_id)}
    assert set(out) == {"k1", "k2"} and line_error(out["k1"]) is None
    done = completion_of(out["k1"], "openai/test-model", "openai/test-model", tools=False)
    assert done.text == "Paris." and done.completion_tokens == 1 and done.prompt_tokens == 3
    assert done.tool_calls is None and not done.cached
    assert client.lines(None) == []
    assert server.chat_calls == 0


def test_partial_failures_go_to_the_error_file(server: BatchServer) -> None:
    server.fail_line("Japan", "Scripted refusal", status=400)
    client = BatchClient("openai", server.url)
    batch_id = client.submit([line("k1", "capital of France?"), line("k2", "capital of Japan?")])
    poll(client, batch_id)
    info = client.retrieve(batch_id)
    assert (info.status, info.completed, info.failed) == ("completed", 1, 1)
    (error,) = client.lines(info.error_file_id)
    assert error["custom_id"] == "k2" and line_error(error) == "HTTP 400: Scripted refusal"


def test_an_expired_batch_has_partial_output_and_expired_lines(server: BatchServer) -> None:
    server.expire_next(keep=1)
    client = BatchClient("openai", server.url)
    batch_id = client.submit([line("k1", "capital of France?"), line("k2", "capital of Japan?")])
    assert poll(client, batch_id)[-1] == "expired"
    info = client.retrieve(batch_id)
    assert [x["custom_id"] for x in client.lines(info.output_file_id)] == ["k1"]
    (expired,) = client.lines(info.error_file_id)
    assert expired["custom_id"] == "k2" and (line_error(expired) or "").startswith("batch_expired: ")


def test_a_batch_that_fails_validation(server: BatchServer) -> None:
    server.fail_next("Scripted invalid JSONL")
    client = BatchClient("openai", server.url)
    batch_id = client.submit([line("k1", "capital of France?")])
    info = client.retrieve(batch_id)
    assert info.status == "failed" and info.done and info.errors == ["Scripted invalid JSONL"]
    assert info.output_file_id is None


def test_cancel_and_unknown_ids(server: BatchServer) -> None:
    client = BatchClient("openai", server.url)
    batch_id = client.submit([line("k1", "capital of France?")])
    client.cancel(batch_id)
    assert client.retrieve(batch_id).status == "cancelled"
    with pytest.raises(InfrastructureError, match="cannot retrieve batch batch_nope"):
        client.retrieve("batch_nope")


def test_an_unreachable_endpoint_is_an_infrastructure_error_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    client = BatchClient("openai", "http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(ModelCallError, match="cannot upload a batch file") as caught:
        client.submit([line("k1", "hi")])
    assert KEY not in str(caught.value)


def test_tool_calls_of_a_batch_line() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    done = completion_of({"response": {"status_code": 200, "body": body}}, "m", "openai/m", tools=True)
    assert done.text == "" and done.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    with pytest.raises(InfrastructureError, match="malformed batch output line"):
        completion_of({"response": {"status_code": 200, "body": {"choices": []}}}, "m", "openai/m", tools=False)


def test_which_models_have_a_batch_api() -> None:
    assert batch_route("openai/gpt-4o-mini", None) == ("openai", "gpt-4o-mini")
    assert batch_route("gpt-4o-mini", None) == ("openai", "gpt-4o-mini")
    assert batch_route("anthropic/claude-3-5-haiku-latest", None) == ("anthropic", "claude-3-5-haiku-latest")
    assert batch_route("groq/llama3-70b-8192", None) is None


def test_the_runner_records_defers_and_refuses(tmp_path: Path, server: BatchServer) -> None:
    runner = ModelRunner(Settings(cache_dir=tmp_path / "cache", results_path=tmp_path / "results.json",
                                  api_base=server.url, retries=0))
    try:
        hook = runner.batch = BatchHook(record=True)
        messages = [{"role": "user", "content": "capital of France?"}]
        first = runner.complete("openai/test-model", messages, {"max_tokens": 8}, sample=0)
        runner.complete("openai/test-model", messages, {"max_tokens": 8}, sample=1)  # a repeat: its own slot
        assert first.text.startswith(DEFERRED) and len(hook.requests) == 2
        recorded = next(iter(hook.requests.values()))
        assert recorded["provider"] == "openai" and recorded["api_base"] == server.url
        assert recorded["body"] == {"model": "test-model", "messages": messages, "max_tokens": 8}
        # A call that needs the placeholder (a judge's) waits for the next round.
        with pytest.raises(ModelCallError, match="deferred to a later round"):
            runner.complete("openai/test-model", [{"role": "user", "content": f"Grade: {first.text}"}])
        # The answer, once in the cache under the recorded key, is what a plain call finds: no call made.
        key = recorded["key"]
        runner.store(key, completion_of({"response": {"status_code": 200, "body": {
            "choices": [{"message": {"content": "Paris."}}], "usage": {}}}}, "openai/test-model",
            "openai/test-model", tools=False))
        runner.batch = None
        again = runner.complete("openai/test-model", messages, {"max_tokens": 8}, sample=0)
        assert again.cached and again.text == "Paris." and server.chat_calls == 0
        # The grading pass refuses what failed in its batch, as an error with the batch's message.
        runner.batch = BatchHook(record=False, refused={hook.requests[k]["key"]: "batch b1: HTTP 400: no"
                                                        for k in hook.requests if k != key})
        with pytest.raises(ModelCallError, match="batch b1: HTTP 400: no"):
            runner.complete("openai/test-model", messages, {"max_tokens": 8}, sample=1)
        assert server.chat_calls == 0
    finally:
        runner.close()


def test_the_store_keeps_running_batches_for_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "batches.json"
    store = BatchStore(path)
    with store.locked():
        store.batches = [{"id": "b1", "keys": {"k1": False}, "collected": True, "failed": {"k1": "no"}},
                         {"id": "b2", "keys": {"k2": False, "k3": True}}]
        store.expired = {"k2": 1}
    again = BatchStore(path)
    assert again.pending_keys() == {"k2": "b2", "k3": "b2"}
    with again.locked():
        again.start_run("me")
    assert [b["id"] for b in BatchStore(path).batches] == ["b2"]  # finished ones forgotten, running ones kept
    assert BatchStore(path).expired == {"k2": 1} and again.alive("me") and not again.alive("gone")
    path.write_text("{not json")
    with pytest.raises(pytest.UsageError, match="cannot read .*batches.json.*delete it"):
        BatchStore(path)
    assert "sk-" not in json.dumps(again.batches)


def test_a_finished_batch_is_kept_while_another_run_may_wait_for_it(tmp_path: Path) -> None:
    path = tmp_path / "batches.json"
    store = BatchStore(path)
    with store.locked():
        store.start_run("first")  # this process: alive
        store.batches = [{"id": "b1", "keys": {"k1": False}, "collected": True, "failed": {"k1": "no"}}]
    with store.locked():
        store.start_run("second")
    assert [b["id"] for b in BatchStore(path).batches] == ["b1"]  # "first" may still need b1's failures
    with store.locked():
        store.end_run("first")
        store.end_run("second")
        store.runs["killed"] = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started": 0}
    with store.locked():
        store.start_run("third")  # the killed run is gone: nobody else waits
    assert BatchStore(path).batches == [] and set(BatchStore(path).runs) == {"third"}


def test_the_lock_makes_read_modify_write_safe_across_processes(tmp_path: Path) -> None:
    """Eight processes add 25 batches each, every add a read-modify-write of the whole file: none is lost."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from pytest_llmeval.run.batch_store import BatchStore\n"
        "store = BatchStore(Path(sys.argv[1]))\n"
        "for i in range(25):\n"
        "    with store.locked():\n"
        "        store.batches.append({'id': f'{sys.argv[2]}-{i}', 'keys': {}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "batches.json"), f"p{n}"])
             for n in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    ids = [b["id"] for b in BatchStore(tmp_path / "batches.json").batches]
    assert len(ids) == 200 and len(set(ids)) == 200


def test_batched_requests_are_counted_in_the_budget_up_to_its_limit(tmp_path: Path) -> None:
    from pytest_llmeval.providers.resilience import Budget, BudgetExhausted

    budget = Budget(tmp_path / "budget", max_calls=5, max_cost=None)
    try:
        budget.reserve()
        assert budget.reserve_batch(3) == 3 and budget.reserve_batch(3) == 1  # 1 + 3 + 1: the limit
        assert budget.reserve_batch(2) == 0
        with pytest.raises(BudgetExhausted, match="--llm-max-calls 5 reached"):
            budget.reserve()  # a plain call after the batches meets the same budget
        assert budget.state() == {"calls": 5, "spend_usd": 0.0, "max_calls": 5, "max_cost_usd": None, "batched": 4}
    finally:
        budget.close()
    costly = Budget(tmp_path / "cost", max_calls=None, max_cost=0.01)
    try:
        assert costly.reserve_batch(100) == 100  # nothing priced yet: a round goes whole
        costly.spend(0.02)  # its answers, priced
        assert costly.reserve_batch(1) == 0  # the next round does not go
    finally:
        costly.close()
    off = Budget(tmp_path / "off", max_calls=None, max_cost=None)
    assert off.reserve_batch(7) == 7 and off.state() == {}


def test_a_total_latency_is_unknown_when_one_call_s_is() -> None:
    from pytest_llmeval.providers.runner import Completion, total_latency

    def call(latency: float | None) -> Completion:
        return Completion(text="", model="m", resolved_model="m", latency_s=latency)

    assert total_latency([call(0.25), call(0.5)]) == 0.75 and total_latency([call(0.123456)], 4) == 0.1235
    assert total_latency([call(0.25), call(None)]) is None and total_latency([]) is None

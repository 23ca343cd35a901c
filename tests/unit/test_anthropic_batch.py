"""Anthropic's Message Batches client (providers/anthropic_batch.py) against the scripted Anthropic server over real
HTTP: the request translation is what a plain ``anthropic/`` call sends; create, poll, results; errored, expired and
canceled requests; a batched answer is the very cache entry a plain call makes; splitting within the limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.anthropic_batch_server import AnthropicBatchServer

from conftest import poll_batch as ended
from pytest_llmeval.config.settings import Settings
from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers.anthropic_batch import AnthropicBatchClient, anthropic_params, anthropic_request, openai_line
from pytest_llmeval.providers.batch import BatchHook, batch_route, completion_of, line_error
from pytest_llmeval.providers.runner import ModelRunner

KEY = "sk-ant-test-do-not-leak-0123456789"
MODEL = "anthropic/test-model"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicBatchServer]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    for name in ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with AnthropicBatchServer() as s:
        s.answer("France", "Paris.", model=MODEL)
        s.answer("Japan", "Tokyo.", model=MODEL)
        s.tool_call("weather", "get_weather", {"city": "Paris"}, model=MODEL)
        yield s


def runner_for(tmp_path: Path, server: AnthropicBatchServer) -> ModelRunner:
    return ModelRunner(Settings(cache_dir=tmp_path / "cache", results_path=tmp_path / "results.json",
                                api_base=server.url, retries=0))


def body(prompt: str, system: str | None = None, **params: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"model": "test-model", "messages": messages, **params}



@pytest.mark.parametrize("params", [
    {},  # no max_tokens: Anthropic requires one, litellm fills in its default
    {"temperature": 0, "max_tokens": 32, "stop": ["END"], "seed": 3},  # seed: not Anthropic's, dropped
    {"tools": TOOLS, "tool_choice": "auto", "max_tokens": 64},
    {"response_format": {"type": "json_object"}},
], ids=["system-default-max-tokens", "sampling", "tools", "response-format"])
def test_the_batch_request_is_what_a_plain_call_sends(tmp_path: Path, server: AnthropicBatchServer,
                                                     params: dict[str, Any]) -> None:
    runner = runner_for(tmp_path, server)
    try:
        messages = body("What is the capital of France?", system="Answer in one short sentence.")["messages"]
        runner.complete(MODEL, messages, params)
    finally:
        runner.close()
    sent = server.message_calls[-1]
    translated = anthropic_params({"model": "test-model", "messages": messages, **params})
    assert translated == sent
    assert translated["system"] == [{"type": "text", "text": "Answer in one short sentence."}]
    assert all(m["role"] != "system" for m in translated["messages"]) and translated["max_tokens"] > 0
    assert "seed" not in translated
    if "stop" in params:
        assert translated["stop_sequences"] == ["END"] and translated["max_tokens"] == 32
    if "tools" in params:
        assert translated["tools"][0]["name"] == "get_weather" and "input_schema" in translated["tools"][0]


def test_the_beta_features_a_plain_call_names_are_named_on_the_create(tmp_path: Path,
                                                                      server: AnthropicBatchServer) -> None:
    model = "claude-sonnet-4-5-20250929"  # structured outputs: a beta header on a plain call
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    params = {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}
    messages = [{"role": "user", "content": "Which city is the capital of France?"}]
    runner = runner_for(tmp_path, server)
    try:
        runner.complete(f"anthropic/{model}", messages, params)
    finally:
        runner.close()
    plain_betas = set(server.message_headers[-1]["anthropic-beta"].split(","))
    assert plain_betas
    translated = anthropic_request({"model": model, "messages": messages, **params})
    assert translated.params == server.message_calls[-1] and set(translated.betas) == plain_betas
    AnthropicBatchClient(server.url).submit([{"custom_id": "k1", "body": {"model": model, "messages": messages,
                                                                          **params}}])
    sent = set(server.batch_headers[-1]["anthropic-beta"].split(","))
    assert plain_betas < sent and "message-batches-2024-09-24" in sent
    assert set(server.message_requests[-1]) == {"custom_id", "params"}


def test_a_batched_answer_is_the_cache_entry_a_plain_call_makes(tmp_path: Path, server: AnthropicBatchServer) -> None:
    runner = runner_for(tmp_path, server)
    try:
        hook = runner.batch = BatchHook(record=True)
        calls = [("What is the capital of France?", {"max_tokens": 32}),
                 ("What is the weather in Paris?", {"tools": TOOLS, "max_tokens": 64})]
        for prompt, params in calls:
            runner.complete(MODEL, [{"role": "user", "content": prompt}], params)
        recorded = list(hook.requests.values())
        assert [r["provider"] for r in recorded] == ["anthropic", "anthropic"]
        client = AnthropicBatchClient(server.url)
        batch_id = client.submit([{"custom_id": r["key"], "body": r["body"]} for r in recorded])
        assert ended(client, batch_id)[-1] == "completed"
        out = {line["custom_id"]: line for line in client.lines(client.retrieve(batch_id).output_file_id)}
        batched = {r["key"]: completion_of(out[r["key"]], MODEL, MODEL, r["tools"]) for r in recorded}
        assert server.chat_calls == 0
        # The same requests made plainly, the cache out of the way: the same answers, field by field.
        plain_runner = ModelRunner(Settings(cache_dir=tmp_path / "plain", results_path=tmp_path / "results.json",
                                            api_base=server.url, retries=0, cache_mode="off"))
        try:
            plains = [plain_runner.complete(MODEL, [{"role": "user", "content": p}], params) for p, params in calls]
        finally:
            plain_runner.close()
        for plain, r in zip(plains, recorded, strict=True):
            mine = batched[r["key"]]
            assert (mine.text, mine.prompt_tokens, mine.completion_tokens) == \
                (plain.text, plain.prompt_tokens, plain.completion_tokens)
            assert [c["function"] for c in mine.tool_calls or []] == [c["function"] for c in plain.tool_calls or []]
            assert (mine.tool_calls is None) == (plain.tool_calls is None)
        assert batched[recorded[0]["key"]].text == "Paris."
        assert batched[recorded[1]["key"]].tool_calls[0]["function"] == {  # type: ignore[index]
            "name": "get_weather", "arguments": '{"city": "Paris"}'}
    finally:
        runner.close()


def test_create_sends_the_key_in_its_header_only(server: AnthropicBatchServer) -> None:
    client = AnthropicBatchClient(server.url)
    batch_id = client.submit([{"custom_id": "k1", "body": body("capital of France?")}])
    assert batch_id.startswith("msgbatch_")
    headers = server.batch_headers[-1]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "message-batches" in headers["anthropic-beta"]
    (request,) = server.message_requests
    assert request["custom_id"] == "k1" and set(request) == {"custom_id", "params"}
    assert KEY not in str(request)


def test_errored_expired_and_canceled_requests(server: AnthropicBatchServer) -> None:
    server.fail_line("Japan", "Scripted refusal")
    server.expire_next(keep=2)  # answers the first two requests, the third expires
    client = AnthropicBatchClient(server.url)
    batch_id = client.submit([{"custom_id": "k1", "body": body("capital of France?")},
                              {"custom_id": "k2", "body": body("capital of Japan?")},
                              {"custom_id": "k3", "body": body("capital of France, again?")}])
    server.polls_to_complete = 2
    assert ended(client, batch_id) == ["in_progress", "completed"]
    info = client.retrieve(batch_id)
    assert (info.total, info.completed, info.failed, info.error_file_id) == (3, 1, 2, None)
    out = {line["custom_id"]: line for line in client.lines(info.output_file_id)}
    assert line_error(out["k1"]) is None
    assert line_error(out["k2"]) == "HTTP 400: invalid_request_error: Scripted refusal"
    assert (line_error(out["k3"]) or "").startswith("batch_expired: ")
    # A batch canceled while running: its requests come back canceled.
    server.polls_to_complete = 10**9
    other = client.submit([{"custom_id": "k4", "body": body("capital of France?")}])
    assert client.retrieve(other).status == "in_progress"
    client.cancel(other)
    assert client.retrieve(other).status == "completed"
    (line,) = client.lines(other)
    assert (line_error(line) or "").startswith("batch_canceled: ")


def test_unknown_ids_and_an_unreachable_endpoint_are_errors_without_the_key(server: AnthropicBatchServer) -> None:
    client = AnthropicBatchClient(server.url)
    with pytest.raises(InfrastructureError, match="cannot retrieve batch msgbatch_nope"):
        client.retrieve("msgbatch_nope")
    down = AnthropicBatchClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(InfrastructureError, match="cannot create a batch") as caught:
        down.submit([{"custom_id": "k1", "body": body("hi")}])
    assert KEY not in str(caught.value)


def test_a_rejected_create_names_the_provider_s_reason(server: AnthropicBatchServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", " ")  # unset in effect: litellm sends no key
    with pytest.raises(InfrastructureError, match="cannot create a batch .anthropic.") as caught:
        AnthropicBatchClient(server.url).submit([{"custom_id": "k1", "body": body("hi")}])
    assert "Anthropic API Key" in str(caught.value) or "x-api-key" in str(caught.value)


def test_split_within_the_request_and_byte_limits(server: AnthropicBatchServer) -> None:
    lines = [{"custom_id": f"k{n}", "body": body(f"question {n}: " + "x" * 50)} for n in range(7)]
    assert [len(c) for c in AnthropicBatchClient(server.url, max_requests=3).split(lines)] == [3, 3, 1]
    one = len(str(anthropic_params(lines[0]["body"])))
    chunks = AnthropicBatchClient(server.url, max_bytes=3 * one).split(lines)
    assert len(chunks) > 2 and sum(len(c) for c in chunks) == 7
    assert [r["custom_id"] for c in chunks for r in c] == [f"k{n}" for n in range(7)]
    assert all(set(r) == {"custom_id", "params"} for c in chunks for r in c)
    with pytest.raises(InfrastructureError, match="over the 100 bytes"):
        AnthropicBatchClient(server.url, max_bytes=100).split(lines)


def test_anthropic_models_have_a_batch_api() -> None:
    assert batch_route("anthropic/claude-3-5-haiku-latest", None) == ("anthropic", "claude-3-5-haiku-latest")
    assert batch_route("anthropic/test-model", "http://127.0.0.1:9") == ("anthropic", "test-model")


def test_a_response_format_answer_reads_as_a_plain_call_reads_it(tmp_path: Path, server: AnthropicBatchServer) -> None:
    # Without native structured outputs litellm asks for the JSON through a forced tool, and reads its input back as
    # the answer's text: the batched answer must read the same, in this process and in a resumed one.
    model = "claude-3-5-haiku-latest"
    server.tool_call("capital of Italy", "json_tool_call", {"city": "Rome"}, model=f"anthropic/{model}")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    params = {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
              "max_tokens": 64}
    messages = [{"role": "user", "content": "What is the capital of Italy?"}]
    plain_runner = ModelRunner(Settings(cache_dir=tmp_path / "plain", results_path=tmp_path / "results.json",
                                        api_base=server.url, retries=0, cache_mode="off"))
    try:
        plain = plain_runner.complete(f"anthropic/{model}", messages, params)
    finally:
        plain_runner.close()
    assert '"Rome"' in plain.text and not plain.tool_calls
    client = AnthropicBatchClient(server.url)
    batch_id = client.submit([{"custom_id": "k1", "body": {"model": model, "messages": messages, **params}}])
    assert server.message_requests[-1]["params"]["tool_choice"]["name"] == "json_tool_call"
    assert ended(client, batch_id)[-1] == "completed"
    for reader in (client, AnthropicBatchClient(server.url)):  # the submitting process; a resumed one
        (line,) = reader.lines(batch_id)
        batched = completion_of(line, f"anthropic/{model}", f"anthropic/{model}", tools=False)
        assert (batched.text, batched.prompt_tokens, batched.completion_tokens) == \
            (plain.text, plain.prompt_tokens, plain.completion_tokens)


def test_result_lines_already_in_openai_shape_are_kept() -> None:
    converted = {"custom_id": "k1", "response": {"status_code": 200, "body": {"choices": []}}}
    assert openai_line(converted) is converted
    assert (line_error(openai_line({"custom_id": "k2", "result": {"type": "mystery"}})) or "").startswith(
        "unknown_result: ")
    malformed = openai_line({"custom_id": "k3", "result": {"type": "succeeded", "message": {"content": None}}})
    with pytest.raises(InfrastructureError, match="malformed batch output line"):
        completion_of(malformed, MODEL, MODEL, tools=False)

"""Tests for tests/helpers/llm_server.py, driven by the REAL litellm client (no mocks)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before importing litellm: no network fetch

import litellm  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
from helpers.llm_server import ScriptedLLMServer, serve  # noqa: E402

litellm.suppress_debug_info = True


@pytest.fixture(scope="module")
def _shared_server() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer(default="I don't know.") as server:
        yield server


@pytest.fixture
def server(_shared_server: ScriptedLLMServer) -> Iterator[ScriptedLLMServer]:
    _shared_server.reset()
    _shared_server.latency = 0.0
    _shared_server.default = "I don't know."
    yield _shared_server
    _shared_server.reset()
    _shared_server.latency = 0.0


def ask(server: ScriptedLLMServer, content: str, **kw: Any) -> Any:
    return litellm.completion(
        model=kw.pop("model", "openai/test-model"),
        api_base=server.url,
        api_key="sk-test",
        messages=kw.pop("messages", [{"role": "user", "content": content}]),
        num_retries=0,
        **kw,
    )


def http(method: str, url: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


# -- answers ------------------------------------------------------------------


def test_scripted_answer_matches_case_insensitive_substring(server: ScriptedLLMServer) -> None:
    server.answer("capital of FRANCE", "Paris.")
    resp = ask(server, "What is the capital of france?")
    assert resp.choices[0].message.content == "Paris."
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model.endswith("test-model")


def test_default_answer_when_no_rule_matches(server: ScriptedLLMServer) -> None:
    server.answer("capital", "Paris.")
    assert ask(server, "Tell me a joke").choices[0].message.content == "I don't know."
    server.default = "Pass."
    assert ask(server, "Tell me a joke").choices[0].message.content == "Pass."


def test_first_matching_rule_wins_and_only_last_user_message_counts(server: ScriptedLLMServer) -> None:
    server.answer("paris", "first")
    server.answer("paris", "second")
    server.answer("berlin", "german")
    assert ask(server, "paris?").choices[0].message.content == "first"
    messages = [
        {"role": "system", "content": "paris is everywhere"},
        {"role": "user", "content": "paris"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "and Berlin?"}]},
    ]
    assert ask(server, "", messages=messages).choices[0].message.content == "german"


def test_rule_model_filter(server: ScriptedLLMServer) -> None:
    server.answer("hi", "from big", model="big-model")
    server.answer("hi", "from small", model="openai/small-model")  # provider prefix is ignored
    server.answer("hi", "anyone")
    assert ask(server, "hi", model="openai/big-model").choices[0].message.content == "from big"
    assert ask(server, "hi", model="openai/small-model").choices[0].message.content == "from small"
    assert ask(server, "hi", model="openai/other").choices[0].message.content == "anyone"


def test_usage_tokens_are_word_counts(server: ScriptedLLMServer) -> None:
    server.answer("count", "one two three")
    resp = ask(
        server,
        "",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "please count now"}],
    )
    assert resp.usage.prompt_tokens == 5
    assert resp.usage.completion_tokens == 3
    assert resp.usage.total_tokens == 8


def test_request_body_is_recorded(server: ScriptedLLMServer) -> None:
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]
    ask(server, "", messages=messages, temperature=0.25, max_tokens=7)
    assert len(server.requests) == 1
    body = server.requests[0]
    assert body is server.last_request
    assert body["messages"] == messages
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 7
    assert body["model"] == "test-model"
    server.reset()
    assert server.requests == []


def test_n_choices(server: ScriptedLLMServer) -> None:
    server.answer("", "same")
    resp = ask(server, "x", n=3)
    assert [c.message.content for c in resp.choices] == ["same"] * 3
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 3


# -- faults -------------------------------------------------------------------


def test_500_raises_internal_server_error_with_message(server: ScriptedLLMServer) -> None:
    server.fail("explode", 500, message="the model melted")
    with pytest.raises(litellm.InternalServerError) as info:
        ask(server, "please explode")
    assert "the model melted" in str(info.value)
    assert info.value.status_code == 500
    # Non-matching requests are unaffected.
    assert ask(server, "calm").choices[0].message.content == "I don't know."


def test_default_error_message_and_raw_body(server: ScriptedLLMServer) -> None:
    server.fail(None, 503, times=1)
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        ask(server, "x")
    assert "Scripted failure: HTTP 503" in str(info.value)
    status, _, raw = http("POST", server.url + "/chat/completions", {"model": "m", "messages": []})
    assert status == 200
    server.fail(None, 502, body="upstream exploded")
    status, _, raw = http("POST", server.url + "/chat/completions", {"model": "m", "messages": []})
    assert (status, raw) == (502, b"upstream exploded")


def test_429_raises_rate_limit_error(server: ScriptedLLMServer) -> None:
    server.fail(None, 429)
    with pytest.raises(litellm.RateLimitError):
        ask(server, "anything")
    status, headers, raw = http("POST", server.url + "/chat/completions", {"model": "m", "messages": []})
    assert status == 429
    assert headers["retry-after"] == "0"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"


def test_401_raises_authentication_error(server: ScriptedLLMServer) -> None:
    server.fail(None, 401, message="bad key")
    with pytest.raises(litellm.AuthenticationError, match="bad key"):
        ask(server, "anything")


def test_fault_times_then_success(server: ScriptedLLMServer) -> None:
    server.answer("flaky", "recovered")
    server.fail("flaky", 500, times=1)
    with pytest.raises(litellm.InternalServerError):
        ask(server, "flaky call")
    assert ask(server, "flaky call").choices[0].message.content == "recovered"
    assert len(server.requests) == 2


def test_fault_model_filter(server: ScriptedLLMServer) -> None:
    server.fail(None, 500, model="broken-model")
    with pytest.raises(litellm.InternalServerError):
        ask(server, "x", model="openai/broken-model")
    assert ask(server, "x").choices[0].message.content == "I don't know."


def test_malformed_body_raises(server: ScriptedLLMServer) -> None:
    server.malformed("garble", times=1)
    with pytest.raises(Exception):  # noqa: B017,PT011 - litellm wraps the JSON decode error
        ask(server, "garble this")
    assert ask(server, "garble this").choices[0].message.content == "I don't know."


# -- latency & concurrency ----------------------------------------------------


def test_latency_is_applied(server: ScriptedLLMServer) -> None:
    server.latency = 0.3
    start = time.perf_counter()
    ask(server, "slow")
    assert time.perf_counter() - start >= 0.3


def test_per_rule_delay_overrides_latency(server: ScriptedLLMServer) -> None:
    server.latency = 5.0
    server.answer("quick", "fast", delay=0.0)
    start = time.perf_counter()
    assert ask(server, "quick one").choices[0].message.content == "fast"
    assert time.perf_counter() - start < 2.0


def test_concurrent_calls(server: ScriptedLLMServer) -> None:
    server.latency = 0.2
    server.answer("question", "answer")
    ask(server, "warm-up question")  # build litellm's cached client outside the timed window
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda i: ask(server, f"question {i}").choices[0].message.content, range(32)))
    elapsed = time.perf_counter() - start
    assert replies == ["answer"] * 32
    assert len(server.requests) == 33
    assert elapsed < 3.0, f"32 concurrent 0.2 s calls took {elapsed:.2f} s"


# -- streaming ----------------------------------------------------------------


def test_streaming_reassembles_text(server: ScriptedLLMServer) -> None:
    text = "The quick  brown fox\njumps over the lazy dog."
    server.answer("fox", text)
    chunks = list(ask(server, "tell me about the fox", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert server.requests[-1]["stream"] is True


def test_streaming_raw_sse(server: ScriptedLLMServer) -> None:
    server.answer("", "hello world")
    status, headers, raw = http(
        "POST",
        server.url + "/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == "m" for o in objs)
    assert "".join(c["delta"].get("content") or "" for o in objs for c in o["choices"]) == "hello world"
    assert objs[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


# -- misc endpoints & lifecycle -----------------------------------------------


def test_models_endpoint(server: ScriptedLLMServer) -> None:
    server.answer("x", "y", model="openai/fancy-model")
    status, _, raw = http("GET", server.url + "/models")
    assert status == 200
    ids = [m["id"] for m in json.loads(raw)["data"]]
    assert "test-model" in ids and "fancy-model" in ids


def test_unknown_path_and_bad_json(server: ScriptedLLMServer) -> None:
    status, _, raw = http("POST", server.url + "/embeddings", {"input": "x"})
    assert status == 404 and "error" in json.loads(raw)
    req = urllib.request.Request(server.url + "/chat/completions", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400
    assert server.requests == []


def test_serve_and_stop_lifecycle() -> None:
    server = serve(default="hi there")
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        assert ask(server, "anything").choices[0].message.content == "hi there"
        assert server.start() is server  # idempotent
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.url

"""targets/usage.py: the litellm calls an application makes inside track() are attributed to that case.

Real litellm against the scripted server (tests/helpers/llm_server.py), whose token counts are word counts: a prompt
of n words is n prompt tokens, a reply of m words m completion tokens. ``openai/gpt-4o-mini`` has a price in
litellm's cost map, ``openai/test-model`` none.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers.llm_server import ScriptedLLMServer

from pytest_llmeval.core.answer import Usage
from pytest_llmeval.targets import usage as app_usage
from pytest_llmeval.targets.usage import AppUsage, track

PRICED, UNPRICED = "openai/gpt-4o-mini", "openai/test-model"


def ask(server: ScriptedLLMServer, content: str, model: str = UNPRICED, **kw: Any) -> Any:
    import litellm

    return litellm.completion(model=model, api_base=server.url, api_key="sk-test",
                              messages=[{"role": "user", "content": content}], **{"num_retries": 0, **kw})


async def aask(server: ScriptedLLMServer, content: str, model: str = UNPRICED, **kw: Any) -> Any:
    import litellm

    return await litellm.acompletion(model=model, api_base=server.url, api_key="sk-test",
                                     messages=[{"role": "user", "content": content}], **{"num_retries": 0, **kw})


@pytest.fixture
def server(llm_server: ScriptedLLMServer) -> ScriptedLLMServer:
    llm_server.answer("hello", "world wide web")  # 3 completion tokens
    return llm_server


@pytest.fixture(autouse=True)
def _no_leftover_calls() -> Any:
    yield
    assert app_usage._calls == {}, "every call's id is forgotten once its outcome is recorded"


def test_sync_calls_are_counted_with_tokens_cost_latency_and_models(server: ScriptedLLMServer) -> None:
    with track() as used:
        ask(server, "hello there")  # 2 + 3 tokens, no price
        priced = ask(server, "hello you all", model=PRICED)  # 3 + 3 tokens
        ask(server, "hello")  # 1 + 3
    summary = used.summary()
    price = priced._hidden_params["response_cost"]
    assert price and price > 0
    assert summary == {"calls": 3, "failed": 0, "prompt_tokens": 6, "completion_tokens": 9, "cost_usd": price,
                       "latency_s": summary["latency_s"], "models": {UNPRICED: 2, PRICED: 1}}
    assert summary["latency_s"] > 0
    assert used.usage() == Usage(calls=3, prompt_tokens=6, completion_tokens=9, cost_usd=price,
                                 latency_s=summary["latency_s"])


def test_cost_is_none_when_no_call_has_a_known_price(server: ScriptedLLMServer) -> None:
    with track() as used:
        ask(server, "hello")
    assert used.summary()["cost_usd"] is None
    assert used.usage().cost_usd is None
    with track() as idle:
        pass
    assert idle.summary() == {"calls": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None,
                              "latency_s": 0.0, "models": {}}
    assert idle.usage() == Usage(calls=0)


def test_acompletion_inside_asyncio_run_is_counted(server: ScriptedLLMServer) -> None:
    async def app() -> list[Any]:
        return list(await asyncio.gather(aask(server, "hello one", model=PRICED), aask(server, "hello two three")))

    with track() as used:
        replies = asyncio.run(app())  # returns at once: litellm's async success logging is still queued
    summary = used.summary()
    assert summary["calls"] == 2 and summary["failed"] == 0
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (2 + 3, 3 + 3)
    assert summary["cost_usd"] == replies[0]._hidden_params["response_cost"] > 0
    assert summary["models"] == {PRICED: 1, UNPRICED: 1}


def test_concurrent_cases_each_see_exactly_their_own_calls(server: ScriptedLLMServer) -> None:
    """8 cases at once from a thread pool, as the plugin calls targets: case i makes i+1 calls of i+1 words
    each (sync for even i, acompletion in asyncio.run for odd i), while the server holds every reply 20 ms."""
    server.latency = 0.02

    def case(i: int) -> AppUsage:
        prompt = " ".join(["hello"] * (i + 1))
        with track() as used:
            if i % 2 == 0:
                for _ in range(i + 1):
                    ask(server, prompt)
            else:
                async def app() -> None:
                    await asyncio.gather(*(aask(server, prompt) for _ in range(i + 1)))
                asyncio.run(app())
        return used

    ask(server, "hello outside")  # outside every track(): recorded nowhere
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(case, range(8)))
    for i, used in enumerate(results):
        summary = used.summary()
        assert (summary["calls"], summary["failed"]) == (i + 1, 0), (i, summary)
        assert summary["prompt_tokens"] == (i + 1) * (i + 1), (i, summary)
        assert summary["completion_tokens"] == 3 * (i + 1), (i, summary)
        assert summary["models"] == {UNPRICED: i + 1}
        assert used.unsettled == 0
    assert len(server.requests) == 1 + sum(range(1, 9))


def test_a_failing_call_counts_as_failed(server: ScriptedLLMServer) -> None:
    import litellm

    server.fail("boom", 500)
    with track() as used:
        ask(server, "hello")
        with pytest.raises(litellm.InternalServerError):
            ask(server, "boom now", model=PRICED)

        async def app() -> None:
            with pytest.raises(litellm.InternalServerError):
                await aask(server, "boom again")
        asyncio.run(app())
    summary = used.summary()
    assert (summary["calls"], summary["failed"]) == (3, 2)
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (1, 3)  # the successful call's
    assert summary["cost_usd"] is None  # a failed call has no price; the other call's model has none
    assert summary["models"] == {UNPRICED: 2, PRICED: 1}


def test_a_call_litellm_retries_is_one_call(server: ScriptedLLMServer) -> None:
    server.fail("flaky", 500, times=1)
    with track() as used:
        ask(server, "hello flaky", num_retries=1)
    assert len(server.requests) == 2  # two HTTP attempts...
    assert (used.summary()["calls"], used.summary()["failed"]) == (1, 0)  # ...one call, its latency both


def test_calls_outside_track_are_recorded_nowhere(server: ScriptedLLMServer) -> None:
    ask(server, "hello before")
    with track() as used:
        ask(server, "hello")
    ask(server, "hello after")
    assert used.summary()["calls"] == 1
    assert used.closed


def test_nested_and_serial_tracks(server: ScriptedLLMServer) -> None:
    with track() as outer:
        ask(server, "hello")
        with track() as inner:
            ask(server, "hello")
            ask(server, "hello", model=PRICED)
        ask(server, "hello")
    assert inner.summary()["calls"] == 2 and inner.summary()["models"] == {UNPRICED: 1, PRICED: 1}
    assert outer.summary()["calls"] == 4 and outer.summary()["models"] == {UNPRICED: 3, PRICED: 1}
    assert outer.summary()["cost_usd"] == inner.summary()["cost_usd"] > 0
    with track() as first:
        ask(server, "hello")
    with track() as second:
        ask(server, "hello")
        ask(server, "hello")
    assert (first.summary()["calls"], second.summary()["calls"]) == (1, 2)


def test_streams_count_when_read_and_an_unread_one_is_unsettled(server: ScriptedLLMServer) -> None:
    with track() as used:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in ask(server, "hello", stream=True))
    assert text == "world wide web"
    assert (used.summary()["calls"], used.unsettled) == (1, 0)
    with track(settle_s=0.2) as abandoned:
        stream = ask(server, "hello", stream=True)  # never read: litellm never logs its outcome
    assert (abandoned.summary()["calls"], abandoned.unsettled) == (1, 1)
    assert abandoned.summary()["prompt_tokens"] == 0
    del stream


def test_merge_prefers_measured_calls_else_the_reported_usage(server: ScriptedLLMServer) -> None:
    reported = Usage(calls=5, prompt_tokens=50, completion_tokens=10, cost_usd=0.01)
    with track() as idle:
        pass
    assert idle.merge(reported) == reported
    assert idle.merge(None) == Usage(calls=0)
    with track() as used:
        ask(server, "hello")
    assert used.merge(reported) == used.usage() and used.merge(reported).calls == 1
    assert used.merge(None) == used.usage()


def test_other_callbacks_and_the_plugins_own_calls_still_work(server: ScriptedLLMServer) -> None:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    from pytest_llmeval.providers.base import Request
    from pytest_llmeval.providers.litellm_provider import provider

    seen: list[str] = []

    class UserLogger(CustomLogger):  # type: ignore[misc]
        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            seen.append(kwargs["litellm_call_id"])

    mine = UserLogger()
    saved = litellm.callbacks
    litellm.callbacks = [mine]  # a user replacing the list: the next track() puts its logger back
    try:
        with track() as used:
            ask(server, "hello")
        reply = provider().complete(Request(UNPRICED, [{"role": "user", "content": "hello plugin"}],
                                            api_base=server.url))
        assert reply.text == "world wide web" and reply.prompt_tokens == 2
        assert used.summary()["calls"] == 1  # the plugin's own call came after, outside: not counted
        assert mine in litellm.callbacks and any(getattr(cb, "llmeval_app_usage", False) for cb in litellm.callbacks)
        with track():
            pass
        assert sum(bool(getattr(cb, "llmeval_app_usage", False)) for cb in litellm.callbacks) == 1  # installed once
        for _ in range(50):  # the user's logger hears both calls (from litellm's logging thread)
            if len(seen) >= 2:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert len(seen) == 2
    finally:
        litellm.callbacks = saved


def test_importing_the_module_does_not_import_litellm() -> None:
    code = "import sys, pytest_llmeval.targets.usage; assert 'litellm' not in sys.modules, 'litellm imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert result.returncode == 0, result.stderr

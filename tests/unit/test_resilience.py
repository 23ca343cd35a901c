"""Throughput and resilience in one process: the prefetch window, prices, error classes and backoff, the rate
limiter, and the journal's appends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_llmeval.providers.resilience import Limit, RateLimiter, backoff, classify, parse_limits, retry_after
from pytest_llmeval.results.journal import read_run


def test_prefetch_window_counts_the_calls_not_done_only() -> None:
    """Answers waiting for their (later) items do not hold up new calls: the window is of calls waiting or running."""
    import threading

    from pytest_llmeval.providers.prefetch import Prefetcher

    release = threading.Event()
    started: list[int] = []

    def complete(*, model: str, messages: list[dict[str, str]], **_: object) -> str:
        started.append(int(messages[0]["content"]))
        release.wait(10)
        return messages[0]["content"]

    class Item:
        def __init__(self, i: int) -> None:
            self.nodeid = f"c{i}"
            self.call = {"model": "m", "messages": [{"role": "user", "content": str(i)}]}

        def plan_calls(self) -> list[dict[str, object]]:
            return [self.call]

    items = [Item(i) for i in range(12)]
    prefetcher = Prefetcher(complete, concurrency=2)  # window: 4 calls waiting or running
    try:
        prefetcher.fill(items)
        assert len(prefetcher._items) == 4
        release.set()
        for item in items[:4]:
            for future in prefetcher._items[item.nodeid]:
                future.result(10)
        release.clear()
        prefetcher.fill(items[1:])  # items 1-3 are done but not taken: 4 more calls go out
        assert len(prefetcher._items) == 8
        release.set()
        assert prefetcher.take(items[0]) == ["0"] and prefetcher.take(items[7]) == ["7"]
    finally:
        release.set()
        prefetcher.close()
    assert sorted(started) == list(range(8))


def test_the_price_litellm_computed_is_used_even_when_unknown() -> None:
    """litellm prices every response itself; pricing it again (for a model with no known price, ~0.6 ms of CPU a
    call) is only for a response that has no price field at all (one rebuilt from a stream)."""
    from types import SimpleNamespace

    from pytest_llmeval.providers.litellm_provider import _response_cost

    asked: list[object] = []

    def completion_cost(completion_response: object) -> float:
        asked.append(completion_response)
        return 0.25

    litellm = SimpleNamespace(completion_cost=completion_cost)
    assert _response_cost(litellm, SimpleNamespace(_hidden_params={"response_cost": 0.5})) == 0.5
    assert _response_cost(litellm, SimpleNamespace(_hidden_params={"response_cost": None})) is None
    assert asked == []
    rebuilt = SimpleNamespace(_hidden_params={})
    assert _response_cost(litellm, rebuilt) == 0.25 and asked == [rebuilt]


def test_classify_and_backoff() -> None:
    import random

    import httpx
    import openai

    def status(code: int, headers: dict[str, str] | None = None) -> Exception:
        response = httpx.Response(code, headers=headers or {}, request=httpx.Request("POST", "http://x"))
        cls = {429: openai.RateLimitError, 401: openai.AuthenticationError, 400: openai.BadRequestError}.get(
            code, openai.InternalServerError)
        return cls("boom", response=response, body=None)

    assert classify(status(429, {"retry-after": "3"})) == (True, 3.0)
    assert classify(status(429, {"retry-after-ms": "250"})) == (True, 0.25)
    assert classify(status(503)) == (True, None)
    assert classify(status(401)) == (False, None) and classify(status(400)) == (False, None)
    assert classify(openai.APIConnectionError(request=httpx.Request("POST", "http://x"))) == (True, None)
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (retry_after(status(429, {"retry-after": date})) or 0) <= 30
    rng = random.Random(1)
    waits = [backoff(a, rng) for a in range(8) for _ in range(50)]
    assert all(0 <= w <= 30 for w in waits) and len({round(w, 3) for w in waits}) > 300  # jittered
    assert max(backoff(0, rng) for _ in range(100)) <= 0.5 < max(backoff(3, rng) for _ in range(100))


# ------------------------------------------------------------------------------------------ rate limits


def test_rate_limiter_spaces_requests_per_minute_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_llmeval.providers.resilience as res

    clock = [1000.0]
    monkeypatch.setattr(res.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(res.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    limiter = RateLimiter({"m": Limit(rpm=3)})  # one every 20 s, a burst of one
    assert limiter.acquire("m", "m", 10) == 0.0
    assert limiter.acquire("m", "m", 10) == pytest.approx(20.0)
    assert limiter.acquire("m", "m", 10) == pytest.approx(20.0)
    clock[0] += 100  # idle time refills the bucket only up to its burst
    assert limiter.acquire("m", "m", 10) == 0.0 and limiter.acquire("m", "m", 10) == pytest.approx(20.0)
    fast = RateLimiter({"f": Limit(rpm=600)})  # ten a second: the first ten go at once, then every 0.1 s
    assert [fast.acquire("f", "f", 1) for _ in range(10)] == [0.0] * 10
    assert fast.acquire("f", "f", 1) == pytest.approx(0.1)
    tokens = RateLimiter({"t": Limit(tpm=6000)})  # 100 tokens a second
    assert tokens.acquire("t", "t", 100) == 0.0
    assert tokens.acquire("t", "t", 50) == pytest.approx(0.5)
    assert RateLimiter({"m": Limit(rpm=60)}, workers=4).limits["m"].rpm == 15  # xdist workers share it
    assert parse_limits(["openai/x = 500 rpm, 20000 tpm", "# note", "y = 2 rps"]) == {
        "openai/x": Limit(500, 20000), "y": Limit(120, None)}
    with pytest.raises(ValueError, match="cannot read '5 per minute'"):
        parse_limits(["x = 5 per minute"])


def test_a_journal_line_is_in_the_file_once_appended(tmp_path: Path) -> None:
    """One write(2) per case and no buffer of ours: another reader (or a SIGKILL) sees every appended line."""
    from pytest_llmeval.results.journal import Journal

    journal = Journal(tmp_path, "run-1", "main")
    odd = {"nodeid": "a.yaml::odd[m]", "outcome": "passed", "answer": "caf\u00e9 \ud800 lone surrogate", "score": 0.5}
    journal.append({"nodeid": "a.yaml::one[m]", "outcome": "failed", "answer": "x" * 70_000})
    journal.append(odd)
    assert len(journal.path.read_bytes().splitlines()) == 2  # before close
    journal.close()
    journal.append({"nodeid": "a.yaml::two[m]", "outcome": "passed"})  # reopened, appended
    journal.close()
    results = read_run(tmp_path, "run-1")
    assert [r["nodeid"] for r in results] == ["a.yaml::one[m]", "a.yaml::odd[m]", "a.yaml::two[m]"]
    assert results[1] == odd and len(results[0]["answer"]) == 70_000

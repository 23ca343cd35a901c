"""Calling models: every call goes to the provider the run's registry finds for it, behind the response caches.

The providers (base.py) register through ``pytest_llmeval_register_providers``; the runner owns what is the same
for all of them: the exact and semantic caches, retries, rate limits, the budget, the circuit breaker and the
Completion with its latency. A provider failure is a :class:`ModelCallError` (an ``error`` outcome, never a model
``failure``); a model that cannot be used at all (unknown provider, missing API key) is found once per run by
:meth:`ModelRunner.check_model`.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.cache.exact import ResponseCache, cache_key
from pytest_llmeval.config.settings import Settings
from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers import litellm_provider
from pytest_llmeval.providers.base import MalformedResponse, Provider, Request

if TYPE_CHECKING:
    from pytest_llmeval.providers.base import ProviderRegistry

__all__ = ["Completion", "MalformedResponse", "ModelCallError", "ModelRunner", "redact", "total_latency"]

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


def redact(text: str) -> str:
    """Remove the values of secret-looking environment variables from a message."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return text


class ModelCallError(InfrastructureError):
    """A model call failed for reasons outside the model's answer (provider, network, cache replay).

    ``attempts``: the calls made for it (``attempts - 1`` retries; 0 when none was made, e.g. when the endpoint's
    circuit breaker was open)."""

    def __init__(self, model: str, message: str, attempts: int = 0) -> None:
        super().__init__(message)
        self.model = model
        self.message = message
        self.attempts = attempts

    def __reduce__(self) -> Any:  # picklable with its fields (a process pool, a future's result)
        return (type(self), (self.model, self.message, self.attempts))


def total_latency(calls: list[Completion], digits: int | None = None) -> float | None:
    """The latencies of ``calls`` added up (rounded to ``digits``); None (unknown) when one is unknown (a batched
    answer) or none was made."""
    total = 0.0
    for c in calls:
        if c.latency_s is None:
            return None
        total += c.latency_s
    return None if not calls else total if digits is None else round(total, digits)


APP_FIELDS = ("references", "context", "metadata", "app_usage", "target", "trajectory")


@dataclass(frozen=True)
class Completion:
    """One answer and what it cost."""

    text: str
    model: str  # as the user named it (maybe an alias)
    resolved_model: str  # what the provider was called with (aliases resolved)
    # of the original call, also when served from the cache; None: unknown (a --llm-batch answer: a batch has no
    # per-request latency), left out of the latency statistics
    latency_s: float | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cached: bool = False
    semantic: dict[str, Any] | None = None  # served by the semantic cache: similarity, the original request
    ttft_s: float | None = None  # time to the first token, when the answer was streamed (--llm-stream)
    attempts: int = 1  # calls made for this answer (retries after 429, 5xx, connection errors, timeouts)
    tool_calls: list[dict[str, Any]] | None = None  # the calls a model offered tools asked for (OpenAI's shape)
    # An application target's answer (targets/): what it used and what its own model calls cost
    references: list[dict[str, Any]] | None = None  # Reference.to_dict(n), in the application's order
    context: str | None = None
    metadata: dict[str, Any] | None = None
    app_usage: dict[str, Any] | None = None  # calls, tokens, cost, latency of the application's own model calls
    target: str | None = None  # the target that answered (python:bot:answer); None: the model itself
    # The tool calls behind the answer (core.tools.Trajectory.to_dict() and its "mode": native | prompt | app): an
    # agent run's (run/agent.py), or those an application's answer carried
    trajectory: dict[str, Any] | None = None


class ModelRunner:
    """Per-process model access: config checks, the caches, retries, rate limits, budgets, and each call handed to
    the provider that serves the model.

    ``providers`` is the run's registry (filled by ``pytest_llmeval_register_providers``); outside a pytest run it
    defaults to the built-in providers. ``complete`` is safe to call from several threads at once (the prefetch
    pool does): the caches are thread-safe, and the semantic cache's in-memory index is guarded by a lock.
    """

    def __init__(self, settings: Settings, *, providers: ProviderRegistry | None = None, run_dir: Path | None = None,
                 workers: int = 1) -> None:
        from pytest_llmeval.providers.resilience import Budget, CircuitBreaker, RateLimiter

        if providers is None:
            from pytest_llmeval.providers.builtin import builtin_providers

            providers = builtin_providers()
        self.settings = settings
        self.providers = providers
        self.budget = Budget((run_dir or settings.results_path.parent / "run" / "default") / "budget",
                             settings.max_calls, settings.max_cost)
        # Open breakers are shared through the run's own directory only: a later run must try the endpoint again.
        self.breaker = CircuitBreaker(run_dir / "breakers" if run_dir else None, settings.breaker)
        self._endpoints: dict[tuple[str, str | None], str] = {}
        self._offline: dict[str, bool] = {}
        self.limiter = RateLimiter(dict(settings.rate_limits), workers)
        self._semantic_lock = threading.Lock()
        self._router: Provider | None = None
        self._router_models: set[str] | None = None
        self._rng = random.Random()
        self.cache = ResponseCache(settings.cache_dir) if settings.cache_mode != "off" else None
        self.semantic: Any = None
        if settings.cache_mode == "semantic":
            from pytest_llmeval.cache.semantic import SemanticCache

            self.semantic = SemanticCache(settings.cache_dir / "semantic", threshold=settings.semantic_threshold,
                                          model=settings.embedding_model)
        self._checked: dict[str, str | None] = {}
        # In an xdist worker: the controller's call server (callserver.py), which makes this worker's litellm calls
        self.remote: Any = None
        # With --llm-batch: providers/batch.py's BatchHook, asked on every exact-cache miss (set by run/batch.py)
        self.batch: Any = None

    def remote_serves(self, model: str) -> bool:
        """Whether this runner hands ``model``'s calls to the controller's call server: in an xdist worker, for the
        models litellm serves (the catch-all provider, the router); offline and prefixed providers run here."""
        if self.remote is None:
            return False
        resolved = self.settings.resolve_model(model)
        if resolved in self.router_models():
            return True
        try:
            provider = self.providers.find(resolved)
        except LookupError:
            return True  # the controller reports it, with the same registry
        return provider.prefix == "" and not provider.offline

    def check_model(self, model: str) -> str | None:
        """Why ``model`` cannot be used in this run (missing key, unknown provider), or None."""
        if model not in self._checked:
            self._checked[model] = self._check(model)
        return self._checked[model]

    def is_offline(self, model: str) -> bool:
        """Whether ``model`` (aliases resolved) is served by an offline provider (``local/...``): in this process,
        with no key, no network and no price; such calls are not prefetched in threads (CPU-bound; but ``local/``
        batches what the pool asks at once) and have no circuit breaker."""
        return self._is_offline(self.settings.resolve_model(model))

    def supports_tools(self, model: str) -> bool:
        """Whether ``model``'s provider does native function calling (``Provider.tools``; the ``local/`` models do
        not: their agent cases run in prompt-and-parse mode)."""
        try:
            return self.provider(self.settings.resolve_model(model)).tools
        except LookupError:
            return True  # reported by check_model where the item runs

    def _is_offline(self, resolved: str) -> bool:
        if resolved not in self._offline:
            try:
                self._offline[resolved] = self.providers.find(resolved).offline
            except LookupError:
                self._offline[resolved] = False
        return self._offline[resolved]

    def router_models(self) -> set[str]:
        """The model names the --llm-router configuration serves (empty without one)."""
        if self._router_models is None:
            self._router_models = set()
            if self.settings.router is not None:
                self._router_models = litellm_provider.router_models(self.settings.router)
        return self._router_models

    def provider(self, resolved: str) -> Provider:
        """The provider of the model ``resolved`` (aliases resolved): the --llm-router for the models its
        configuration lists, else the registered provider with the longest prefix it starts with (LookupError:
        none)."""
        if resolved in self.router_models():
            if self._router is None:
                assert self.settings.router is not None
                self._router = litellm_provider.router_provider(self.settings.router, before=self._setup_providers)
            return self._router
        return self.providers.find(resolved)

    def _setup_providers(self) -> None:
        """Make every provider's models callable through litellm, so a router configuration can name them."""
        for provider in self.providers:
            if provider.setup is not None:
                provider.setup()

    def _check(self, model: str) -> str | None:
        if self.remote_serves(model):
            problem: str | None = self.remote.request("check_model", model=model)
            return problem
        resolved = self.settings.resolve_model(model)
        if resolved in self.router_models() or model in self.router_models():
            return None
        shown = model if resolved == model else f"{model} (= {resolved})"
        try:
            provider = self.providers.find(resolved)
        except LookupError as exc:
            return f"--llm={shown}: {exc}"
        if self.settings.cache_mode == "replay" and not provider.offline:
            return None  # replay never calls the provider: no key needed
        return None if provider.check is None else provider.check(resolved, shown)

    def use_run_dir(self, run_dir: Path) -> None:
        """Share this run's budget and open circuit breakers with its other processes (xdist workers)."""
        self.budget.directory = run_dir / "budget"
        self.breaker.directory = run_dir / "breakers"
        if self.semantic is not None:
            self.semantic.stats.directory = run_dir / "semantic_verify"

    def _endpoint(self, provider: Provider, resolved: str, api_base: str | None) -> str | None:
        """Where calls to ``resolved`` go, as the circuit breaker keys and names it (None: no breaker)."""
        if provider.endpoint is None:
            return None
        key = (resolved, api_base)
        if key not in self._endpoints:
            self._endpoints[key] = provider.endpoint(resolved, api_base)
        return self._endpoints[key]

    def _key(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], sample: int,
             key_extra: dict[str, Any] | None) -> tuple[str, str, str | None]:
        resolved = self.settings.resolve_model(model)
        api_base = None if self._is_offline(resolved) else self.settings.api_base
        key = cache_key(model=resolved, api_base=api_base, params=params, messages=messages, sample=sample,
                        **({"extra": key_extra} if key_extra else {}))
        return key, resolved, api_base

    def cached(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any] | None = None,
               sample: int = 0, key_extra: dict[str, Any] | None = None, semantic: bool = True) -> Completion | None:
        """The answer ``complete`` with these arguments would take from the exact cache, or None (a miss, a cache
        mode that does not read, or an entry ``complete`` could not use either)."""
        if self.cache is None or self.settings.cache_mode not in ("on", "replay", "semantic"):
            return None
        hit = self.cache.get(self._key(model, messages, dict(params or {}), sample, key_extra)[0])
        if hit is None:
            return None
        try:
            return Completion(**{**hit, "model": model, "cached": True})
        except TypeError:  # a stored value of another shape: complete() reports it where the item runs
            return None

    def cached_many(self, calls: list[dict[str, Any]]) -> list[Completion | None]:
        """``[cached(**call) for call in calls]``, read from the cache in batches."""
        if self.cache is None or self.settings.cache_mode not in ("on", "replay", "semantic") or not calls:
            return [None] * len(calls)
        keys = [self._key(c["model"], c["messages"], dict(c.get("params") or {}), c.get("sample", 0),
                          c.get("key_extra"))[0] for c in calls]
        hits = self.cache.get_many(keys)
        out: list[Completion | None] = []
        for call, key in zip(calls, keys, strict=True):
            hit = hits.get(key)
            try:
                out.append(None if hit is None else Completion(**{**hit, "model": call["model"], "cached": True}))
            except TypeError:  # a stored value of another shape: complete() reports it where the item runs
                out.append(None)
        return out

    def complete(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any] | None = None,
                 sample: int = 0, key_extra: dict[str, Any] | None = None, semantic: bool = True) -> Completion:
        """Answer ``messages`` with ``model``, through the cache. Raises ModelCallError on failure.

        ``sample`` selects an independent cache slot (repeats, pass@k); ``key_extra`` adds parts to the cache
        key that the request itself does not show (a judge prompt's version, say). ``semantic=False`` keeps
        the call out of the semantic cache (judges, repeated draws); so does any ``sample`` but 0.
        """
        params = dict(params or {})
        key, resolved, api_base = self._key(model, messages, params, sample, key_extra)
        mode = self.settings.cache_mode
        if self.cache is not None and mode in ("on", "replay", "semantic"):
            hit = self.cache.get(key)
            if hit is not None:
                return Completion(**{**hit, "model": model, "cached": True})
        if self.batch is not None:  # --llm-batch: deferred to a batch (recording pass), or its batch line failed
            deferred: Completion | None = self.batch.intercept(self, key, model, resolved, api_base, messages, params)
            if deferred is not None:
                return deferred
        if self.remote_serves(model):  # an xdist worker: the controller calls litellm (and the semantic cache)
            completion: Completion = self.remote.request("complete", model=model, messages=messages, params=params,
                                                         sample=sample, key_extra=key_extra, semantic=semantic)
            return completion
        semantic_slot = None
        if (self.semantic is not None and semantic and sample == 0 and messages
                and messages[-1].get("role") == "user" and isinstance(messages[-1].get("content"), str)):
            from pytest_llmeval.cache.semantic import partition_key

            text = str(messages[-1]["content"])
            partition = partition_key(model=resolved, api_base=api_base, params=params, earlier=messages[:-1],
                                      extra=key_extra or {}, format=2)
            with self._semantic_lock:
                vector = self.semantic.embed(text)
            # Outside the runner's lock (the cache has its own): a verifier's judge call must not hold up the pool.
            found = self.semantic.lookup(partition, text, vector, verify=self._semantic_verifier(model))
            semantic_slot = (partition, text, vector)
            stored_answer = self.cache.get(found.key) if found is not None and self.cache is not None else None
            if found is not None and stored_answer is not None:
                return Completion(**{**stored_answer, "model": model, "cached": True, "semantic": found.to_dict()})
        if mode == "replay":
            raise ModelCallError(model, "--llm-cache=replay: no cached answer for this request; "
                                        "record it first with --llm-cache=on")
        problem = self.check_model(model)  # done at collection, unless every answer was in the cache then
        if problem:
            raise ModelCallError(model, problem)
        provider = self.provider(resolved)
        if "tools" in params and not provider.tools:
            raise ModelCallError(model, f"{resolved} has no native function calling: run its agent cases in "
                                        "prompt-and-parse mode (agent: {mode: prompt}, or mode: auto)")
        if provider.load is not None:
            # Get ready (import litellm; load a local model's weights, once per process, ~15-20 s) before the clock
            # starts: latency is the answer's, not the load's.
            try:
                provider.load(resolved)
            except Exception as exc:
                raise ModelCallError(model, f"{type(exc).__name__}: {exc}") from None
        from pytest_llmeval.providers.resilience import EndpointDown, backoff, classify, estimate_tokens

        # The circuit breaker: an endpoint that refused, failed DNS or TLS, or rejected the key a few times in a row
        # gets no more calls in this run (not for offline providers, nor through the Router, which has its own
        # cooldowns: those have no endpoint).
        endpoint = self._endpoint(provider, resolved, api_base)
        attempt = 0

        def not_sent() -> None:
            if endpoint is not None:
                try:
                    self.breaker.check(endpoint)
                except EndpointDown as down:
                    raise ModelCallError(model, f"not sent: {down}", attempts=attempt) from None

        not_sent()  # before the budget counts the call
        self.budget.reserve()  # raises BudgetExhausted past --llm-max-calls / --llm-max-cost (the item is skipped)
        self.limiter.acquire(model, resolved, estimate_tokens(messages, params))
        request = Request(model=resolved, messages=messages, params=params, timeout=self.settings.timeout,
                          api_base=api_base,
                          stream=self.settings.stream and not provider.offline and "tools" not in params)
        while True:
            if attempt:
                not_sent()  # another call (thread, worker) found the endpoint down while this one waited to retry
            start = time.perf_counter()
            try:
                reply = provider.answer(request)
                break
            except Exception as exc:  # every provider failure is an error outcome, whatever its class
                down = None if endpoint is None else self.breaker.failure(endpoint, exc)
                retry, wait = classify(exc)
                if down is not None or not retry or attempt >= self.settings.retries:
                    raise ModelCallError(model, self._describe(exc, start, attempt, down), attempts=attempt + 1) from None
                time.sleep(wait if wait is not None else backoff(attempt, self._rng))
                attempt += 1
        if endpoint is not None:
            self.breaker.success(endpoint)
        latency = time.perf_counter() - start
        self.budget.spend(reply.cost_usd)
        completion = Completion(
            text=reply.text, model=model, resolved_model=resolved, latency_s=latency,
            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
            cost_usd=reply.cost_usd, ttft_s=reply.ttft_s, attempts=attempt + 1, tool_calls=reply.tool_calls,
        )
        if self.cache is not None and mode in ("on", "refresh", "semantic"):
            self.store(key, completion)
            if semantic_slot is not None:
                partition, text, vector = semantic_slot
                with self._semantic_lock:
                    self.semantic.add(partition, text, key, vector)
        return completion

    def store(self, key: str, completion: Completion) -> None:
        """Put a model's answer in the exact cache under ``key`` (also a batch's answers: run/batch.py)."""
        assert self.cache is not None
        stored = asdict(completion)
        del stored["model"], stored["cached"], stored["semantic"]
        for name in APP_FIELDS:  # a model's answer has none: its entry stays as before targets existed
            del stored[name]
        if stored["tool_calls"] is None:  # nor, unless it was offered tools, tool calls
            del stored["tool_calls"]
        self.cache.set(key, stored)

    def _semantic_verifier(self, model: str) -> Any:
        """With --llm-semantic-verify=judge: the semantic cache's verifier, asking the --llm-judge model (else the
        model under test) through this runner, so its verdicts are cached and budgeted like any call."""
        if self.settings.semantic_verify != "judge":
            return None
        from pytest_llmeval.cache.verify import VERIFY_PARAMS, VERIFY_VERSION, judge_verifier

        judge = self.settings.judge_model or model
        return judge_verifier(lambda messages: self.complete(
            judge, messages, VERIFY_PARAMS, semantic=False, key_extra={"semantic_verify": VERIFY_VERSION}))

    def semantic_verify_state(self) -> dict[str, Any]:
        """What --llm-semantic-verify=judge did in this run, every process counted ({} when it is off)."""
        if self.semantic is None or self.settings.semantic_verify != "judge":
            return {}
        return self.semantic.stats.state()

    def _describe(self, exc: BaseException, start: float, attempt: int, down: Any) -> str:
        """The error message of a failed call: the provider's, its root cause, how many attempts, the breaker."""
        from pytest_llmeval.providers.resilience import root_cause

        message = f"{type(exc).__name__}: {exc}"
        cause = root_cause(exc)
        if cause:
            message += f" ({cause})"
        # Depending on where the clock ran out, httpx/openai report a timeout as a connection error.
        if "Timeout" in type(exc).__name__ or time.perf_counter() - start >= self.settings.timeout:
            message = f"timed out after {self.settings.timeout:g} s ({message})"
        if attempt:
            message += f" (after {attempt + 1} attempts)"
        if down is not None:
            message += f"; {down}"
        return redact(message)

    def close(self) -> None:
        self.budget.close()
        if self.cache is not None:
            self.cache.close()
        if self.semantic is not None:
            self.semantic.close()

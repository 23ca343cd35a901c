"""Calling models: every call goes through litellm, behind the exact response cache.

A provider failure is a :class:`ModelCallError` (an ``error`` outcome, never a model ``failure``);
a model that cannot be used at all (unknown provider, missing API key) is found once per run by
:meth:`ModelRunner.check_model`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_llmeval.cache.exact import ResponseCache, cache_key
from pytest_llmeval.config.settings import Settings
from pytest_llmeval.core.errors import InfrastructureError

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


class MalformedResponse(InfrastructureError):
    """The provider answered, but not with a chat completion (no choices, no message)."""


@dataclass(frozen=True)
class Completion:
    """One answer and what it cost."""

    text: str
    model: str  # as the user named it (maybe an alias)
    resolved_model: str  # what litellm was called with
    latency_s: float  # of the original call, also when served from the cache
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cached: bool = False
    semantic: dict[str, Any] | None = None  # served by the semantic cache: similarity, the original request
    ttft_s: float | None = None  # time to the first token, when the answer was streamed (--llm-stream)
    attempts: int = 1  # calls made for this answer (retries after 429, 5xx, connection errors, timeouts)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No automatic garbage collection inside, and what exists afterwards frozen (gc_freeze): for building many
    objects that all live on (a suite's cases and items, the answers found in the cache, litellm's modules). Each
    collection the allocations would trigger walks every object alive and finds nothing to free: parsing 5000 cases
    set off four full ones (~0.25 s), importing litellm five (~0.4 s); and the first one after the block would walk
    all it built (~0.1-0.2 s). Anything cyclic left over is collected at the end of the session."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc_freeze()
        gc.enable()


# Garbage collection. A full collection walks every live object, and a run of thousands of cases keeps hundreds of
# thousands alive (items, cases, reports; litellm's modules), so each one the interpreter triggers during the run
# costs 50-150 ms and the collections at interpreter exit about half a second. What exists when the tests start
# (collection's work, litellm once imported) is frozen (gc.freeze: exempt from collections, still freed by reference
# counting) until the session ends; then everything is collected once, while pytest still reports exceptions from
# finalizers, and what survives is frozen for the exit (session.py). A later session in the same process (pytester,
# an IDE) thaws it first. Only when cyclic garbage is reclaimed changes: what a session made is reclaimed by its end.
_FROZEN = [False]


def gc_freeze() -> None:
    """gc.freeze(), remembered: the end of the session (or the next one in this process) thaws it."""
    gc.freeze()
    _FROZEN[0] = True


def gc_thaw() -> None:
    """Undo gc_freeze (if it was called): what it froze is collectable again."""
    if _FROZEN[0]:
        gc.unfreeze()
        _FROZEN[0] = False


_litellm_lock = threading.Lock()
_litellm: Any = None


def get_litellm() -> Any:
    """Import and configure litellm once per process (heavy: ~3 s, so only when a model is called)."""
    global _litellm
    with _litellm_lock:
        if _litellm is None:
            # Offline, litellm would retry downloading its cost map for seconds on import.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            with paused_gc():  # its ~half a million objects live as long as the process
                import litellm

            litellm.suppress_debug_info = True  # no "Provider List: ..." banners in test output
            litellm.telemetry = False
            litellm.drop_params = True  # a sampling param a provider lacks is dropped, not fatal
            from pytest_llmeval.providers import local, local_vision

            local.register()
            local_vision.register()
            _litellm = litellm
    return _litellm


def is_local(model: str) -> bool:
    """Served in this process (no API base, no key, no price): local/<gguf or dir>, local-vision/<dir>."""
    return model.startswith(("local/", "local-vision/"))


def _load_local(resolved: str) -> None:
    """Resolve and load a local model (raises LocalModelError / LocalVisionError with a clear message)."""
    if resolved.startswith("local-vision/"):
        from pytest_llmeval.providers import local_vision

        local_vision.load(local_vision.resolve_vision_dir(resolved[len("local-vision/"):]))
    else:
        from pytest_llmeval.providers import local

        local.load(local.resolve_local_model(resolved[len("local/"):]))


class ModelRunner:
    """Per-process model access: config checks, the cache, retries, rate limits, budgets and litellm calls.

    ``complete`` is safe to call from several threads at once (the prefetch pool does): the caches are
    thread-safe, and the semantic cache's in-memory index is guarded by a lock.
    """

    def __init__(self, settings: Settings, *, run_dir: Path | None = None, workers: int = 1) -> None:
        from pytest_llmeval.providers.resilience import Budget, CircuitBreaker, RateLimiter

        self.settings = settings
        self.budget = Budget((run_dir or settings.results_path.parent / "run" / "default") / "budget",
                             settings.max_calls, settings.max_cost)
        # Open breakers are shared through the run's own directory only: a later run must try the endpoint again.
        self.breaker = CircuitBreaker(run_dir / "breakers" if run_dir else None, settings.breaker)
        self._endpoints: dict[tuple[str, str | None], str] = {}
        self.limiter = RateLimiter(dict(settings.rate_limits), workers)
        self._semantic_lock = threading.Lock()
        self._router: Any = None
        self._router_models: set[str] | None = None
        self._rng = random.Random()
        self.cache = ResponseCache(settings.cache_dir) if settings.cache_mode != "off" else None
        self.semantic: Any = None
        if settings.cache_mode == "semantic":
            from pytest_llmeval.cache.semantic import SemanticCache

            self.semantic = SemanticCache(settings.cache_dir / "semantic", threshold=settings.semantic_threshold,
                                          model=settings.embedding_model)
        self._checked: dict[str, str | None] = {}

    def check_model(self, model: str) -> str | None:
        """Why ``model`` cannot be used in this run (missing key, unknown provider), or None."""
        if model not in self._checked:
            self._checked[model] = self._check(model)
        return self._checked[model]

    def router_models(self) -> set[str]:
        """The model names the --llm-router configuration serves (empty without one)."""
        if self._router_models is None:
            self._router_models = set()
            if self.settings.router is not None:
                config = _read_router_config(self.settings.router)
                self._router_models = {str(d.get("model_name")) for d in config.get("model_list", [])}
        return self._router_models

    def _get_router(self) -> Any:
        if self._router is None:
            litellm = get_litellm()
            assert self.settings.router is not None
            config = _read_router_config(self.settings.router)
            # Retries are ours (with Retry-After and jitter); the Router only balances.
            self._router = litellm.Router(**{**config, "num_retries": 0})
        return self._router

    def _check(self, model: str) -> str | None:
        resolved = self.settings.resolve_model(model)
        if resolved in self.router_models() or model in self.router_models():
            return None
        if resolved.startswith("local-vision/"):
            from pytest_llmeval.providers.local_vision import LocalVisionError, resolve_vision_dir

            try:
                resolve_vision_dir(resolved[len("local-vision/"):])
            except LocalVisionError as exc:
                return str(exc)
            return None
        if is_local(resolved):
            from pytest_llmeval.providers.local import LocalModelError, resolve_local_model

            try:
                resolve_local_model(resolved[len("local/"):])
            except LocalModelError as exc:
                return str(exc)
            return None
        if self.settings.cache_mode == "replay":
            return None  # replay never calls the provider: no key needed
        litellm = get_litellm()
        shown = model if resolved == model else f"{model} (= {resolved})"
        try:
            litellm.get_llm_provider(resolved)
        except Exception:
            return (f"--llm={shown}: unknown provider; use a litellm model name such as openai/gpt-4o-mini "
                    "or groq/llama3-70b-8192, an alias from llmeval_aliases, or local/smollm2")
        env = litellm.validate_environment(resolved)
        missing = env.get("missing_keys") or []
        if missing and not env.get("keys_in_environment"):
            return (f"--llm={shown}: {', '.join(missing)} is not set; export it, or run offline with "
                    "--llm=local/smollm2")
        return None

    def use_run_dir(self, run_dir: Path) -> None:
        """Share this run's budget and open circuit breakers with its other processes (xdist workers)."""
        self.budget.directory = run_dir / "budget"
        self.breaker.directory = run_dir / "breakers"

    def endpoint(self, resolved: str, api_base: str | None) -> str:
        """Where calls to ``resolved`` go, as the circuit breaker keys and names it: the provider and its base URL."""
        key = (resolved, api_base)
        if key not in self._endpoints:
            provider, base = resolved.split("/", 1)[0], api_base
            try:
                _, provider, _, dynamic = get_litellm().get_llm_provider(resolved, api_base=api_base)
                base = base or dynamic
            except Exception:
                pass
            base = base or os.environ.get(f"{provider.upper()}_API_BASE") or (
                os.environ.get("OPENAI_BASE_URL") if provider == "openai" else None)
            self._endpoints[key] = f"{provider} at {base}" if base else f"{provider} (its default endpoint)"
        return self._endpoints[key]

    def _key(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], sample: int,
             key_extra: dict[str, Any] | None) -> tuple[str, str, str | None]:
        resolved = self.settings.resolve_model(model)
        api_base = None if is_local(resolved) else self.settings.api_base
        key = cache_key(model=resolved, api_base=api_base, params=params, messages=messages, sample=sample,
                        **({"extra": key_extra} if key_extra else {}))
        return key, resolved, api_base

    def is_cached(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any] | None = None,
                  sample: int = 0, key_extra: dict[str, Any] | None = None, semantic: bool = True) -> bool:
        """Whether ``complete`` with these arguments would be served by the exact cache."""
        if self.cache is None:
            return False
        return self.cache.get(self._key(model, messages, dict(params or {}), sample, key_extra)[0]) is not None

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
        semantic_slot = None
        if (self.semantic is not None and semantic and sample == 0 and messages
                and messages[-1].get("role") == "user" and isinstance(messages[-1].get("content"), str)):
            from pytest_llmeval.cache.semantic import partition_key

            text = str(messages[-1]["content"])
            partition = partition_key(model=resolved, api_base=api_base, params=params, earlier=messages[:-1],
                                      extra=key_extra or {}, format=2)
            with self._semantic_lock:
                vector = self.semantic.embed(text)
                found = self.semantic.lookup(partition, text, vector)
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
        litellm = get_litellm()
        if is_local(resolved):
            # Load the weights (once per process, ~15-20 s) before the clock starts: latency is the
            # answer's, not the load's.
            try:
                _load_local(resolved)
            except Exception as exc:
                raise ModelCallError(model, f"{type(exc).__name__}: {exc}") from None
        from pytest_llmeval.providers.resilience import EndpointDown, backoff, classify, estimate_tokens

        routed = resolved in self.router_models()
        # The circuit breaker: an endpoint that refused, failed DNS or TLS, or rejected the key a few times in a row
        # gets no more calls in this run (not for local models, nor through the Router, which has its own cooldowns).
        endpoint = None if routed or is_local(resolved) else self.endpoint(resolved, api_base)
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
        kwargs: dict[str, Any] = {"timeout": self.settings.timeout}
        if not routed:
            # One HTTP attempt per litellm call: our loop below retries, honouring Retry-After, with jitter.
            kwargs.update(num_retries=0, max_retries=0)
        if api_base and not routed:
            kwargs["api_base"] = api_base
        stream = self.settings.stream and not is_local(resolved)
        while True:
            if attempt:
                not_sent()  # another call (thread, worker) found the endpoint down while this one waited to retry
            start = time.perf_counter()
            try:
                response, ttft = self._call(litellm, resolved, messages, params, kwargs, routed, stream, start)
                text = _answer_text(response)
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
        usage = getattr(response, "usage", None)
        cost = _response_cost(litellm, response)
        if is_local(resolved):
            cost = 0.0
        self.budget.spend(cost)
        completion = Completion(
            text=text, model=model, resolved_model=resolved, latency_s=latency,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost_usd=cost, ttft_s=ttft, attempts=attempt + 1,
        )
        if self.cache is not None and mode in ("on", "refresh", "semantic"):
            stored = asdict(completion)
            del stored["model"], stored["cached"], stored["semantic"]
            self.cache.set(key, stored)
            if semantic_slot is not None:
                partition, text, vector = semantic_slot
                with self._semantic_lock:
                    self.semantic.add(partition, text, key, vector)
        return completion

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

    def _call(self, litellm: Any, resolved: str, messages: list[dict[str, Any]], params: dict[str, Any],
              kwargs: dict[str, Any], routed: bool, stream: bool, start: float) -> tuple[Any, float | None]:
        """One attempt: (the response, the time to its first token when streamed)."""
        with warnings.catch_warnings():
            # litellm's response types trip a pydantic UserWarning on first use; not the user's concern.
            warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
            call = self._get_router().completion if routed else litellm.completion
            if not stream:
                with _quiet_logging(litellm, routed):
                    return call(model=resolved, messages=messages, **kwargs, **params), None
            chunks, ttft = [], None
            for chunk in call(model=resolved, messages=messages, stream=True,
                              stream_options={"include_usage": True}, **kwargs, **params):
                chunks.append(chunk)
                if ttft is None and chunk.choices and getattr(chunk.choices[0].delta, "content", None):
                    ttft = time.perf_counter() - start
            return litellm.stream_chunk_builder(chunks, messages=messages), ttft

    def close(self) -> None:
        self.budget.close()
        if self.cache is not None:
            self.cache.close()
        if self.semantic is not None:
            self.semantic.close()


def _answer_text(response: Any) -> str:
    """The first choice's text; MalformedResponse when the provider's reply has no choice or message."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedResponse(f"malformed response: no choices in the provider's reply ({_shorten(response)})")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise MalformedResponse(f"malformed response: the first choice has no message ({_shorten(choices[0])})")
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


def _shorten(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_router_config(path: Path) -> dict[str, Any]:
    """The litellm Router keyword arguments in a YAML/JSON file (``model_list`` and Router settings);
    ``os.environ/NAME`` values are resolved by litellm itself, so keys stay out of the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--llm-router {path}: cannot read it: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("router_settings"), dict):
        data = {**data["router_settings"], "model_list": data.get("model_list", [])}
    if not isinstance(data, dict) or not isinstance(data.get("model_list"), list):
        raise ValueError(f"--llm-router {path}: expected a mapping with a model_list")
    return data


_LOGGING_HOOKS = ("callbacks", "success_callback", "failure_callback", "input_callback", "service_callback",
                  "_async_success_callback", "_async_failure_callback", "_async_input_callback")


@contextlib.contextmanager
def _quiet_logging(litellm: Any, routed: bool) -> Iterator[None]:
    """Skip litellm's per-call success logging (a job handed to its logging thread pool after every call: ~0.5 ms
    of CPU per call, which caps how many calls one process can keep in flight) when nobody listens to it. With
    callbacks configured (Langfuse, OpenTelemetry...), or through the Router, calls are logged as usual."""
    if routed or any(getattr(litellm, name, None) for name in _LOGGING_HOOKS):
        yield
        return
    try:
        from litellm._internal_context import internal_sub_call
    except ImportError:  # another litellm version: log as usual
        yield
        return
    with internal_sub_call():
        yield


def _response_cost(litellm: Any, response: Any) -> float | None:
    """The price litellm already computed for the response; computed only if litellm did not (a response rebuilt
    from a stream). None when the model has no known price (unknown, not zero): litellm's None is kept, not asked
    again (for an unpriced model, a self-hosted one say, the lookup costs ~0.6 ms of CPU per call)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if cost is not None:
        return float(cost)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        return None
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:
        return None

"""Surviving providers: which failures to retry and how long to wait, rate limits, and budgets.

* :func:`classify` says whether a failed call is worth retrying (429, 408, 409, 5xx, connection errors,
  timeouts) and how long the provider asked us to wait (``Retry-After`` / ``retry-after-ms``).
* :func:`backoff` is exponential backoff with full jitter (the AWS architecture blog's recipe): retries
  spread out instead of hitting a recovering provider in lockstep.
* :class:`RateLimiter` keeps each model under its requests/min and tokens/min, client side, so a run never
  provokes a 429 storm in the first place. Under xdist each worker takes its share of the limit.
* :class:`CircuitBreaker` stops calling an endpoint that is down (refused, DNS, TLS, 401/403) after a few
  consecutive connection-level failures: the remaining cases error at once with one message, across all
  processes of a run, instead of each spending its retries and backoff on it.
* :class:`Budget` stops new model calls at ``--llm-max-calls`` / ``--llm-max-cost``, counted across all
  processes of a run (an atomic counter in a diskcache under ``.llmeval/run/<run id>``); with ``--llm-batch``,
  the requests submitted to batches are counted when submitted and their cost when answered.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

from pytest_llmeval.config.parsers import Limit
from pytest_llmeval.config.parsers import parse_limits as parse_limits  # re-exported (the ini key's parser)
from pytest_llmeval.core.errors import InfrastructureError

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
MAX_RETRY_AFTER_S = 120.0
_RETRYABLE_NAMES = ("RateLimitError", "InternalServerError", "ServiceUnavailableError", "APIConnectionError",
                    "Timeout", "APITimeoutError", "BadGatewayError", "ConnectError", "ReadTimeout",
                    "RemoteProtocolError")


class EndpointDown(InfrastructureError):
    """The circuit breaker of an endpoint is open: no more calls to it in this run."""

    def __init__(self, endpoint: str, cause: str, failures: int) -> None:
        super().__init__(endpoint, cause, failures)
        self.endpoint = endpoint
        self.cause = cause
        self.failures = failures

    def __str__(self) -> str:
        return (f"endpoint {self.endpoint} is down: {self.cause} ({self.failures} consecutive connection failures; "
                "no more calls to it in this run)")


class BudgetExhausted(InfrastructureError):
    """The run's --llm-max-calls / --llm-max-cost is spent: no new model calls (the item is skipped)."""


def _headers(exc: BaseException) -> Any:
    for attr in ("litellm_response_headers", "headers"):
        headers = getattr(exc, attr, None)
        if headers:
            return headers
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the provider asked us to wait: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date)."""
    headers = _headers(exc)
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    m = re.search(r"\b(?:status(?:_code)?|HTTP)\D{0,3}(\d{3})\b", str(exc))
    return int(m.group(1)) if m else None


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retry?, the provider's requested wait). Authentication, bad requests and content errors are final."""
    code = status_code(exc)
    names = {c.__name__ for c in type(exc).__mro__}
    if code is not None and 400 <= code < 500 and code not in RETRY_STATUSES:
        return False, None
    if (code in RETRY_STATUSES) or names & set(_RETRYABLE_NAMES) or isinstance(exc, TimeoutError | ConnectionError):
        wait = retry_after(exc)
        return True, None if wait is None else min(wait, MAX_RETRY_AFTER_S)
    return False, None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes (litellm wraps openai's, which wraps httpx's, which wraps the socket's)."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out and len(out) < 16:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def root_cause(exc: BaseException) -> str | None:
    """The socket-level cause under a wrapper that hides it ("[Errno 111] Connection refused" under litellm's
    "Connection error."); None when there is none or the wrapper's message already says it."""
    inner = next((c for c in reversed(_chain(exc)) if isinstance(c, OSError)), None)
    if inner is None or inner is exc:
        return None
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text and text not in str(exc) else None


def connection_failure(exc: BaseException) -> str | None:
    """What makes ``exc`` a connection-level failure (the endpoint cannot be used at all, as opposed to a slow or
    overloaded one): refused, DNS, TLS, 401/403. None for anything else (5xx, 429, timeouts, bad requests)."""
    import socket
    import ssl

    code = status_code(exc)
    names = {c.__name__ for c in type(exc).__mro__}
    if code == 401 or "AuthenticationError" in names:
        return "authentication failed (HTTP 401): check the API key"
    if code == 403 or "PermissionDeniedError" in names:
        return "permission denied (HTTP 403): check the API key's access to this model"
    for cause in _chain(exc):
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused ({cause})"
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed ({cause})"
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return f"TLS failed ({cause})"
    return None


def backoff(attempt: int, rng: random.Random | None = None, base: float = RETRY_BASE_S,
            cap: float = RETRY_CAP_S) -> float:
    """Full jitter: a uniform wait in [0, min(cap, base * 2**attempt)] (attempt 0 is the first retry)."""
    return (rng or random).uniform(0, min(cap, base * 2 ** attempt))


# ------------------------------------------------------------------------------------------ rate limits


# Limit and parse_limits (the ini key llmeval_rate_limits) are option values, parsed in config.parsers.


class _Bucket:
    """A token bucket: ``rate`` per second, holding at most ``capacity`` (one second's worth, at least 1)."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def wait_for(self, amount: float, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(amount, self.capacity) - self.level  # a request larger than the bucket waits for a full one
        return 0.0 if need <= 1e-9 * self.capacity else need / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """Per-model token buckets for requests and tokens per minute: calls are spaced at the limit's pace (a
    burst of at most one second's worth), so the provider never sees more than it allows; ``acquire`` blocks
    until a call fits and returns how long it waited."""

    def __init__(self, limits: dict[str, Limit], workers: int = 1) -> None:
        self.limits = {m: lim.share(workers) for m, lim in limits.items()}
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[_Bucket | None, _Bucket | None]] = {}

    def limit_for(self, model: str, resolved: str) -> Limit | None:
        return self.limits.get(model) or self.limits.get(resolved)

    def acquire(self, model: str, resolved: str, tokens: int) -> float:
        limit = self.limit_for(model, resolved)
        if limit is None:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                if model not in self._buckets:
                    self._buckets[model] = (_Bucket(limit.rpm) if limit.rpm else None,
                                            _Bucket(limit.tpm) if limit.tpm else None)
                requests, token_bucket = self._buckets[model]
                now = time.monotonic()
                wait = max(requests.wait_for(1, now) if requests else 0.0,
                           token_bucket.wait_for(tokens, now) if token_bucket else 0.0)
                if wait <= 0:
                    if requests:
                        requests.take(1)
                    if token_bucket:
                        token_bucket.take(tokens)
                    return waited
            wait = max(wait, 0.001)
            time.sleep(wait)
            waited += wait


def estimate_tokens(messages: list[dict[str, Any]], params: dict[str, Any]) -> int:
    """A cheap estimate (4 characters a token) of a request's prompt plus its answer budget."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 4 + int(params.get("max_tokens") or params.get("max_completion_tokens") or 256)


# ------------------------------------------------------------------------------------------ circuit breaker


class CircuitBreaker:
    """Per endpoint: after ``threshold`` consecutive connection-level failures (see :func:`connection_failure`),
    the breaker opens and every later call to that endpoint raises :class:`EndpointDown` at once. Any other
    outcome of a call (an answer, a 5xx, a 429: the endpoint is there) resets the count.

    An open breaker is also written to ``directory`` (one small JSON file per endpoint, in the run's directory),
    so the other processes of the run (xdist workers) stop too, at their next call: a run against a down
    endpoint makes about ``threshold`` failing calls per process instead of one per case and attempt. It stays
    open for the rest of the run; the next run tries again."""

    def __init__(self, directory: Path | None, threshold: int = 3) -> None:
        self.directory = directory
        self.threshold = threshold
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._open: dict[str, EndpointDown] = {}

    @property
    def active(self) -> bool:
        return self.threshold > 0

    def _file(self, endpoint: str) -> Path | None:
        if self.directory is None:
            return None
        import hashlib

        return self.directory / (hashlib.sha256(endpoint.encode()).hexdigest()[:16] + ".json")

    def check(self, endpoint: str) -> None:
        """Raise EndpointDown when the endpoint's breaker is open (in this process or in another of the run)."""
        if not self.active:
            return
        down = self._open.get(endpoint)
        if down is None:
            path = self._file(endpoint)
            if path is None or not path.exists():
                return
            import json

            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                down = EndpointDown(endpoint, str(data["cause"]), int(data["failures"]))
            except (OSError, ValueError, KeyError, TypeError):
                return  # being written by another process: it is complete at the next call
            with self._lock:
                down = self._open.setdefault(endpoint, down)
        raise down

    def success(self, endpoint: str) -> None:
        if self._failures.get(endpoint):
            with self._lock:
                self._failures[endpoint] = 0

    def failure(self, endpoint: str, exc: BaseException) -> EndpointDown | None:
        """Count a failed attempt; the EndpointDown to raise when this one opened the breaker."""
        if not self.active:
            return None
        cause = connection_failure(exc)
        with self._lock:
            if cause is None:
                self._failures[endpoint] = 0
                return None
            n = self._failures.get(endpoint, 0) + 1
            self._failures[endpoint] = n
            if n < self.threshold:
                return None
            down = self._open.setdefault(endpoint, EndpointDown(endpoint, cause, n))
        path = self._file(endpoint)
        if path is not None and not path.exists():
            import json
            import os

            try:  # written whole, then renamed: a reader never sees half of it
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
                tmp.write_text(json.dumps({"endpoint": endpoint, "cause": down.cause, "failures": down.failures}),
                               encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                pass  # this process still stops; the others find out by themselves
        return down


# ------------------------------------------------------------------------------------------ budgets


class Budget:
    """Model calls and spend of one run, shared by its processes through an atomic diskcache counter."""

    def __init__(self, directory: Path, max_calls: int | None, max_cost: float | None) -> None:
        self.directory = directory
        self.max_calls = max_calls
        self.max_cost = max_cost
        self._store: Any = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.max_calls is not None or self.max_cost is not None

    def _open(self) -> Any:
        with self._lock:
            if self._store is None:
                import diskcache

                self.directory.mkdir(parents=True, exist_ok=True)
                self._store = diskcache.Cache(str(self.directory), timeout=60)
        return self._store

    def reserve(self) -> None:
        """Count one model call about to be made, or raise BudgetExhausted (nothing counted)."""
        if not self.active:
            return
        store = self._open()
        if self.max_cost is not None and store.get("spend_micro_usd", 0) >= self.max_cost * 1e6:
            raise BudgetExhausted(f"--llm-max-cost ${self.max_cost:g} reached: no more model calls in this run")
        calls = store.incr("calls", 1, default=0)
        if self.max_calls is not None and calls > self.max_calls:
            store.decr("calls", 1)
            raise BudgetExhausted(f"--llm-max-calls {self.max_calls} reached: no more model calls in this run")

    def reserve_batch(self, n: int) -> int:
        """Count up to ``n`` requests about to be submitted to a batch API (``--llm-batch``); how many fit the budget
        (``n`` when it is off). The others are not counted: their calls, made later, meet the spent budget as
        :class:`BudgetExhausted`, the same as any call past it."""
        if not self.active or n <= 0:
            return max(n, 0)
        store = self._open()
        if self.max_cost is not None and store.get("spend_micro_usd", 0) >= self.max_cost * 1e6:
            return 0
        calls = store.incr("calls", n, default=0)
        over = 0 if self.max_calls is None else min(n, max(0, calls - self.max_calls))
        if over:
            store.decr("calls", over)
        if n - over:
            store.incr("batched", n - over, default=0)
        return n - over

    def spend(self, usd: float | None) -> None:
        if self.active and usd:
            self._open().incr("spend_micro_usd", int(round(usd * 1e6)), default=0)

    def state(self) -> dict[str, Any]:
        if not self.active:
            return {}
        store = self._open()
        return {"calls": int(store.get("calls", 0)), "spend_usd": store.get("spend_micro_usd", 0) / 1e6,
                "max_calls": self.max_calls, "max_cost_usd": self.max_cost,
                **({"batched": int(store.get("batched", 0))} if store.get("batched") else {})}

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

"""What an application target's own model calls cost: the litellm calls it makes during one case, measured.

The plugin wraps each call of an application target in :func:`track`; every ``litellm.completion`` /
``litellm.acompletion`` the application makes while that context is current -- in the calling thread, in an
``asyncio`` loop it runs there, with litellm's own retries -- is recorded into the :class:`AppUsage` it yields:
count, failures, tokens, litellm's computed cost, latency, per model. Calls made outside every ``track()`` (the
plugin's own model and judge calls) are recorded nowhere.

How a call finds its collector (litellm 1.110, read in ``litellm_core_utils/litellm_logging.py`` and ``utils.py``,
checked by experiment; tests/unit/test_app_usage.py holds it):

- one :class:`CustomLogger` (``_UsageLogger``) is appended to ``litellm.callbacks`` at the first ``track()`` of the
  process (litellm is not imported before), and put back by any later ``track()`` if the user replaced the list;
- its ``log_pre_api_call`` runs in the caller's thread and context, so it reads the current collectors (a
  ContextVar) and maps litellm's ``litellm_call_id`` to them;
- the outcome then arrives by call id: a sync call's ``log_success_event`` runs in litellm's logging thread pool
  shortly *after* ``completion`` returned (the ContextVar is not always there: not for a stream), an async call's
  ``async_post_call_success_deployment_hook`` is awaited inline before ``acompletion`` returns (its
  ``async_log_success_event`` goes through a queue bound to one event loop, and an ``asyncio.run`` that returns at
  once leaves it queued until some later loop or the process's exit: not usable), failures come inline
  (``log_failure_event`` / ``async_log_failure_event``);
- so leaving ``track()`` waits (up to ``settle_s``, only while calls it saw start are unfinished) for those
  outcomes; a call still unfinished then (a stream never read to its end) counts as a call of unknown usage.

A call retried inside litellm (``num_retries``) is one call; its latency includes the retries. Nested ``track()``
contexts each see every call made while they are current (an outer one sees the inner one's calls too).
Threads the application starts itself do not inherit the context (Python's threads start with an empty one) and are
not attributed, unless it runs them with ``contextvars.copy_context().run``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_llmeval.core.answer import Usage

__all__ = ["AppUsage", "CallRecord", "track"]

SETTLE_S = 2.0  # how long leaving track() waits for the outcomes of calls it saw start

# The collectors of the current context, innermost last (a tuple: a ContextVar's value is shared by copies).
_current: contextvars.ContextVar[tuple[AppUsage, ...]] = contextvars.ContextVar("llmeval_app_usage", default=())


@dataclass
class CallRecord:
    """One litellm call an application made: its model (``provider/name``), whether it failed, its tokens, its
    cost (None when litellm knows no price), its latency in seconds."""

    model: str
    failed: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    response: Any = field(default=None, repr=False)  # an async reply: litellm prices it just after the hook

    def cost(self) -> float | None:
        if self.cost_usd is None and self.response is not None:
            hidden = getattr(self.response, "_hidden_params", None)
            value = hidden.get("response_cost") if isinstance(hidden, dict) else None
            if isinstance(value, int | float):
                self.cost_usd = float(value)
                self.response = None  # priced: the reply need not stay alive
        return self.cost_usd


class AppUsage:
    """The litellm calls made while one :func:`track` context was current. Thread-safe: outcomes arrive from
    litellm's logging threads."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._records: list[CallRecord] = []
        self._pending: dict[str, tuple[str, float]] = {}  # call id -> (model, perf_counter at the start)
        self.unsettled = 0  # calls still unfinished when track() was left (counted, usage unknown)
        self.closed = False

    # -------------------------------------------------------------------------------- fed by _UsageLogger

    def _started(self, call_id: str, model: str) -> None:
        with self._lock:
            if not self.closed:
                self._pending[call_id] = (model, time.perf_counter())

    def _finished(self, call_id: str, record: CallRecord) -> None:
        with self._lock:
            started = self._pending.pop(call_id, None)
            if started is None:  # not ours, already recorded, or arrived after track() was left
                return
            if not record.model:
                record.model = started[0]
            if record.latency_s is None:
                record.latency_s = time.perf_counter() - started[1]
            self._records.append(record)
            if not self._pending:
                self._lock.notify_all()

    def _settle(self, timeout: float) -> list[str]:
        """Wait until every call seen starting has its outcome, at most ``timeout`` seconds; then close. The ids of
        the calls still unfinished."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            for model, start in self._pending.values():
                self._records.append(CallRecord(model, latency_s=time.perf_counter() - start))
                self.unsettled += 1
            left_over = list(self._pending)
            self._pending.clear()
            self.closed = True
        return left_over

    # ------------------------------------------------------------------------------------------ reading

    @property
    def records(self) -> list[CallRecord]:
        with self._lock:
            return list(self._records)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._records)

    def summary(self) -> dict[str, Any]:
        """``{"calls", "failed", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "models"}``: calls
        counts failed ones too; tokens and latency are sums (0 when no call); ``cost_usd`` is the sum of the
        known costs, None when no call's cost is known; ``models`` maps ``provider/model`` to its calls."""
        records = self.records
        costs = [c for c in (r.cost() for r in records if not r.failed) if c is not None]
        models: dict[str, int] = {}
        for r in records:
            models[r.model] = models.get(r.model, 0) + 1
        return {"calls": len(records), "failed": sum(r.failed for r in records),
                "prompt_tokens": sum(r.prompt_tokens or 0 for r in records),
                "completion_tokens": sum(r.completion_tokens or 0 for r in records),
                "cost_usd": sum(costs) if costs else None,
                "latency_s": round(sum(r.latency_s or 0.0 for r in records), 6), "models": models}

    def usage(self) -> Usage:
        """The calls as a :class:`Usage` (what an Answer carries); tokens None when no call reported any."""
        records = self.records
        s = self.summary()
        known_in = any(r.prompt_tokens is not None for r in records)
        known_out = any(r.completion_tokens is not None for r in records)
        return Usage(calls=s["calls"], prompt_tokens=s["prompt_tokens"] if known_in else None,
                     completion_tokens=s["completion_tokens"] if known_out else None, cost_usd=s["cost_usd"],
                     latency_s=s["latency_s"] if records else None)

    def merge(self, reported: Usage | None) -> Usage:
        """The case's usage, from what was measured and what the application reported in its Answer (an HTTP
        service reports its own: its calls happen in another process). The measured calls win when there are any
        (they are what this process saw; adding both would count twice a call the app also reports); otherwise
        the reported usage; with neither, the measured nothing (``Usage(calls=0)``)."""
        return self.usage() if self.calls or reported is None else reported

    def __repr__(self) -> str:
        return f"AppUsage({self.summary()})"


@contextlib.contextmanager
def track(settle_s: float = SETTLE_S) -> Iterator[AppUsage]:
    """Record the litellm calls made while this context is current (this thread, and the asyncio tasks it starts)
    into the :class:`AppUsage` it yields. On leaving, waits up to ``settle_s`` for the outcomes of calls still
    being logged (a sync call's success is logged by litellm's thread pool just after it returned)."""
    _install()
    collector = AppUsage()
    token = _current.set((*_current.get(), collector))
    try:
        yield collector
    finally:
        _current.reset(token)
        left_over = collector._settle(settle_s)
        if left_over:  # forget them once no collector waits for them any more
            with _calls_lock:
                for call_id in left_over:
                    if all(c.closed for c in _calls.get(call_id, ())):
                        _calls.pop(call_id, None)


# ------------------------------------------------------------------------------------------ the litellm side

_install_lock = threading.Lock()
_HOOK_LISTS = ("callbacks", "success_callback", "failure_callback", "input_callback", "service_callback",
               "_async_success_callback", "_async_failure_callback", "_async_input_callback")
_logger: Any = None
_is_internal: Any = None  # litellm's ContextVar marking a sub-call its parent call logs and bills
_calls: dict[str, tuple[AppUsage, ...]] = {}  # litellm call id -> the collectors current when it started
_calls_lock = threading.Lock()


def _install() -> None:
    """Put the one _UsageLogger of this process into ``litellm.callbacks`` (again, if the list was replaced)."""
    global _logger, _is_internal
    from pytest_llmeval.providers.litellm_provider import get_litellm

    litellm = get_litellm()
    with _install_lock:
        if _logger is None:
            from litellm._internal_context import is_internal_call

            _is_internal = is_internal_call
            _logger = _logger_class()()
        # A logger of an earlier copy of this module (a long-lived process that re-imported the plugin: pytester,
        # an IDE) would hold the calls' ids in its own map: take it out of every list litellm copies callbacks into.
        for name in _HOOK_LISTS:
            hooks = getattr(litellm, name, None)
            if isinstance(hooks, list):
                hooks[:] = [cb for cb in hooks if cb is _logger or not getattr(cb, "llmeval_app_usage", False)]
        callbacks = litellm.callbacks
        if not any(cb is _logger for cb in callbacks):
            callbacks.append(_logger)


def _begin(kwargs: Any, model: Any) -> None:
    chain = _current.get()
    if not chain or not isinstance(kwargs, dict):
        return
    if _is_internal is not None and _is_internal.get():  # a sub-call litellm bills to its parent call
        return
    call_id = kwargs.get("litellm_call_id")
    if not isinstance(call_id, str):
        return
    name = str(model or kwargs.get("model") or "?")
    provider = kwargs.get("custom_llm_provider")
    if isinstance(provider, str) and provider and not name.startswith(provider + "/"):
        name = f"{provider}/{name}"
    with _calls_lock:
        _calls[call_id] = chain
    for collector in chain:
        collector._started(call_id, name)


def _end(kwargs: Any, record: CallRecord) -> None:
    call_id = kwargs.get("litellm_call_id") if isinstance(kwargs, dict) else None
    if not isinstance(call_id, str):
        return
    with _calls_lock:
        chain = _calls.pop(call_id, None)
    for collector in chain or ():
        collector._finished(call_id, CallRecord(**{**record.__dict__}))


def _tokens(response: Any, kwargs: Any) -> tuple[int | None, int | None]:
    usage = getattr(response, "usage", None)
    prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    if prompt is None and completion is None and isinstance(kwargs, dict):
        payload = kwargs.get("standard_logging_object")
        if isinstance(payload, dict):
            prompt, completion = payload.get("prompt_tokens"), payload.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def _seconds(start: Any, end: Any) -> float | None:
    try:
        return float((end - start).total_seconds())
    except Exception:
        return None


def _success(kwargs: Any, response: Any, start: Any, end: Any) -> None:
    prompt, completion = _tokens(response, kwargs)
    cost = kwargs.get("response_cost") if isinstance(kwargs, dict) else None
    _end(kwargs, CallRecord("", False, prompt, completion, float(cost) if isinstance(cost, int | float) else None,
                            _seconds(start, end)))


def _failure(kwargs: Any, start: Any, end: Any) -> None:
    _end(kwargs, CallRecord("", True, latency_s=_seconds(start, end)))


def _logger_class() -> type:
    from litellm.integrations.custom_logger import CustomLogger

    class _UsageLogger(CustomLogger):  # type: ignore[misc]
        """Attributes each litellm call made inside a track() to its collectors. Its hooks never raise: litellm
        logs and drops a callback's error, and nothing here may change the call."""

        llmeval_app_usage = True  # what providers/litellm_provider.py may test for (it cannot import this module)

        # litellm calls these with keyword arguments: the parameter names are litellm's own.
        def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
            _begin(kwargs, model)

        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            _success(kwargs, response_obj, start_time, end_time)

        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                          end_time: Any) -> None:
            _success(kwargs, response_obj, start_time, end_time)  # an async stream; else recorded already

        async def async_post_call_success_deployment_hook(self, request_data: Any, response: Any,
                                                          call_type: Any) -> Any:
            if isinstance(request_data, dict) and getattr(response, "usage", None) is not None:
                prompt, completion = _tokens(response, None)
                # litellm prices the reply just after this hook: CallRecord.cost() reads it from the reply then.
                _end(request_data, CallRecord("", False, prompt, completion, response=response))
            return None

        def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            _failure(kwargs, start_time, end_time)

        async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                          end_time: Any) -> None:
            _failure(kwargs, start_time, end_time)

    return _UsageLogger

"""Provider batch APIs (``--llm-batch``): the client of OpenAI-style files + batches endpoints through litellm, the
reading of a batch's output into Completions, and the hook through which the runner defers or refuses calls.

The run side (run/batch.py) decides what to submit and when; this module only speaks to the provider:

* :func:`batch_route`: whether a model's calls can go to a batch API (litellm's OpenAI-compatible files and batches:
  ``openai``, ``azure``, ``hosted_vllm``, ``litellm_proxy``; Anthropic's Message Batches, whose client is
  providers/anthropic_batch.py), and under which provider and model name;
* :class:`BatchClient`: upload a JSONL file of requests, create the batch, retrieve it, read its output and error
  files (``litellm.create_file`` / ``create_batch`` / ``retrieve_batch`` / ``file_content``). API keys come from
  the provider's usual environment variables, as for a plain call; they are never written anywhere;
* :func:`completion_of` / :func:`line_error`: one output line as the Completion a plain call would have made (the
  cache entry is the same), or as the message of its failure;
* :class:`BatchHook`: set on ``ModelRunner.batch``, consulted on every exact-cache miss. In the recording pass it
  records a batchable request and answers it with a placeholder (:data:`DEFERRED`), so the item's other draws are
  recorded too (a model without a batch API is called as usual, its answer cached); a request that contains a
  placeholder (a judge's call on a deferred answer, a conversation's next
  turn) is refused: it belongs to a later round. In the grading pass it refuses the requests whose batch line
  failed (or is still running after ``--llm-batch-timeout``), as ``error`` outcomes with the batch's message.
"""

from __future__ import annotations

import json
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from pytest_llmeval.providers.runner import Completion, ModelCallError, redact

__all__ = ["BATCH_PROVIDERS", "DEFERRED", "OWN_BATCH_PROVIDERS", "BatchClient", "BatchHook", "BatchInfo",
           "batch_route", "completion_of", "line_error"]

#: litellm providers whose OpenAI-compatible files + batches API litellm speaks (create_file, create_batch).
BATCH_PROVIDERS = ("openai", "azure", "hosted_vllm", "litellm_proxy")
#: Providers with a batch API of their own, served by their own client (run/batch.py picks it): Anthropic's
#: Message Batches (providers/anthropic_batch.py; litellm 1.x retrieves them but cannot create them).
OWN_BATCH_PROVIDERS = ("anthropic",)
ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000  # OpenAI's limit of requests per batch
#: The text of a deferred answer in the recording pass: a request containing it depends on an answer not back yet.
DEFERRED = "\u2063llmeval-deferred:"
TERMINAL = ("completed", "expired", "failed", "cancelled")


def batch_route(model: str, api_base: str | None) -> tuple[str, str] | None:
    """(litellm provider, model name as the provider knows it) when ``model``'s calls can be batched, else None."""
    from pytest_llmeval.providers.litellm_provider import get_litellm

    try:
        name, provider, _, _ = get_litellm().get_llm_provider(model, api_base=api_base)
    except Exception:
        return None
    return (provider, name) if provider in BATCH_PROVIDERS + OWN_BATCH_PROVIDERS else None


@dataclass
class BatchInfo:
    """What a retrieve says of a batch."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class BatchClient:
    """One provider's files + batches endpoints, through litellm (``api_base`` as for plain calls)."""

    def __init__(self, provider: str, api_base: str | None, timeout: float = 120.0) -> None:
        self.provider = provider
        self.kwargs: dict[str, Any] = {"custom_llm_provider": provider, "timeout": timeout}
        if api_base:
            self.kwargs["api_base"] = api_base

    def _call(self, what: str, name: str, **kwargs: Any) -> Any:
        """``litellm.<name>(**kwargs)`` against this provider; a failure is a ModelCallError saying ``what``."""
        from pytest_llmeval.providers.litellm_provider import get_litellm

        try:
            with warnings.catch_warnings():
                # litellm's file and batch types trip a pydantic UserWarning on first use; not the user's concern.
                warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
                return getattr(get_litellm(), name)(**kwargs, **self.kwargs)
        except Exception as exc:
            raise ModelCallError("batch", redact(f"cannot {what} ({self.provider}): {type(exc).__name__}: "
                                                 f"{exc}")) from None

    def submit(self, lines: list[dict[str, Any]], metadata: dict[str, str] | None = None) -> str:
        """Upload ``lines`` (``custom_id``, ``method``, ``url``, ``body``) as JSONL and create a batch of them; its
        id."""
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode("utf-8")
        uploaded = self._call("upload a batch file", "create_file", file=("llmeval-batch.jsonl", data),
                              purpose="batch")
        batch = self._call("create a batch", "create_batch", completion_window="24h", endpoint=ENDPOINT,
                           input_file_id=uploaded.id, metadata=metadata or {})
        return str(batch.id)

    def retrieve(self, batch_id: str) -> BatchInfo:
        batch = self._call(f"retrieve batch {batch_id}", "retrieve_batch", batch_id=batch_id)
        counts = getattr(batch, "request_counts", None)
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        return BatchInfo(id=batch_id, status=str(batch.status), total=int(getattr(counts, "total", 0) or 0),
                         completed=int(getattr(counts, "completed", 0) or 0),
                         failed=int(getattr(counts, "failed", 0) or 0),
                         output_file_id=getattr(batch, "output_file_id", None),
                         error_file_id=getattr(batch, "error_file_id", None),
                         errors=[str(getattr(e, "message", None) or e) for e in errors])

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        """The JSON lines of an output or error file ([] for none)."""
        if not file_id:
            return []
        content = self._call(f"read file {file_id}", "file_content", file_id=file_id)
        raw = content.content if hasattr(content, "content") else content
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        return [json.loads(x) for x in text.splitlines() if x.strip()]

    def split(self, lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """``lines`` in chunks of at most :data:`MAX_LINES`: one batch each."""
        return [lines[start:start + MAX_LINES] for start in range(0, len(lines), MAX_LINES)]

    def cancel(self, batch_id: str) -> None:
        self._call(f"cancel batch {batch_id}", "cancel_batch", batch_id=batch_id)


def line_error(line: dict[str, Any]) -> str | None:
    """Why an output/error-file line has no answer (None: it has one)."""
    error = line.get("error")
    if error:
        return f"{error.get('code') or 'error'}: {error.get('message') or error}" if isinstance(error, dict) \
            else str(error)
    response = line.get("response") or {}
    status = response.get("status_code")
    if status == 200:
        return None
    body = response.get("body") or {}
    inner = body.get("error") if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    return f"HTTP {status}: {message or body or 'no answer'}"


def completion_of(line: dict[str, Any], model: str, resolved: str, tools: bool) -> Completion:
    """The Completion of a successful output line: what a plain call would have stored in the exact cache (its
    latency is None, unknown: a batch has none per request, only the batch's turnaround; its price litellm's batch
    price, None when unknown).
    MalformedResponse when the body is not a chat completion."""
    from pytest_llmeval.providers.base import MalformedResponse

    body = (line.get("response") or {}).get("body") or {}
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0].get("message"), dict):
        raise MalformedResponse(f"malformed batch output line: no choice with a message ({str(body)[:200]})")
    message = choices[0]["message"]
    content = message.get("content")
    usage = body.get("usage") or {}
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    tool_calls = None
    if tools:
        tool_calls = [{"id": tc.get("id"), "type": "function",
                       "function": {"name": (tc.get("function") or {}).get("name"),
                                    "arguments": _arguments((tc.get("function") or {}).get("arguments"))}}
                      for tc in message.get("tool_calls") or []]
    return Completion(text=content if isinstance(content, str) else "", model=model, resolved_model=resolved,
                      latency_s=None, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      cost_usd=_batch_cost(resolved, prompt_tokens, completion_tokens), tool_calls=tool_calls)


def _arguments(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _batch_cost(model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """litellm's batch price of one request (None: the model has no known price)."""
    if prompt_tokens is None or completion_tokens is None:
        return None
    from pytest_llmeval.providers.litellm_provider import get_litellm

    litellm = get_litellm()
    try:
        from litellm.cost_calculator import batch_cost_calculator

        usage = litellm.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              total_tokens=prompt_tokens + completion_tokens)
        prompt_cost, completion_cost = batch_cost_calculator(usage=usage, model=model)
        return float(prompt_cost + completion_cost)
    except Exception:
        return None


# ----------------------------------------------------------------------------------------- the runner's hook


class BatchHook:
    """``ModelRunner.batch``: asked on every exact-cache miss (see the module docstring).

    ``record``: the recording pass (requests collected in :attr:`requests`, models without a batch API in
    :attr:`unbatched`); else the grading pass. ``refused``: cache key -> the message of the ``error`` outcome its
    request gets (a failed batch line; one still running), in both passes."""

    def __init__(self, record: bool, refused: dict[str, str] | None = None) -> None:
        self.record = record
        self.refused = dict(refused or {})
        self.requests: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] | None = None  # what the batch phase did, for results.json's run section
        self.waiting = 0  # recording pass: calls (and graders) that wait for a placeholder's answer: another round
        self.unbatched: dict[str, str] = {}  # model -> why it has no batch API
        self._routes: dict[tuple[str, str | None], tuple[str, str] | None] = {}
        self._lock = threading.Lock()

    def intercept(self, runner: Any, key: str, model: str, resolved: str, api_base: str | None,
                  messages: list[dict[str, Any]], params: dict[str, Any]) -> Completion | None:
        """A placeholder answer (recording pass), None (make the call as usual), or ModelCallError (refused)."""
        message = self.refused.get(key)
        if message is not None:
            raise ModelCallError(model, message)
        if not self.record:
            return None
        if DEFERRED in json.dumps(messages, default=str, ensure_ascii=False):
            self.waiting += 1
            raise ModelCallError(model, "--llm-batch: deferred to a later round (it needs an answer not back yet)")
        if (resolved, api_base) not in self._routes:
            self._routes[(resolved, api_base)] = self._route(runner, resolved, api_base)
        route = self._routes[(resolved, api_base)]
        if route is None:  # called now: its answer is cached for grading, and later rounds can batch its judges
            return None
        with self._lock:
            self.requests.setdefault(key, {
                "key": key, "model": model, "resolved": resolved, "api_base": api_base, "provider": route[0],
                "body": {"model": route[1], "messages": messages, **params}, "tools": "tools" in params})
        return Completion(text=f"{DEFERRED}{key[:16]}", model=model, resolved_model=resolved, latency_s=None)

    def _route(self, runner: Any, resolved: str, api_base: str | None) -> tuple[str, str] | None:
        why = None
        if resolved in runner.router_models():
            why = "served by --llm-router"
        else:
            try:
                provider = runner.provider(resolved)
            except LookupError:
                provider = None
            if provider is None or provider.offline or provider.prefix:
                why = "an offline or custom provider"
        route = None if why else batch_route(resolved, api_base)
        if route is None:
            with self._lock:
                self.unbatched.setdefault(resolved, why or f"litellm has no batch API for it (only for "
                                                           f"{', '.join(BATCH_PROVIDERS + OWN_BATCH_PROVIDERS)})")
        return route

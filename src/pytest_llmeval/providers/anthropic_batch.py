"""Anthropic's Message Batches for ``--llm-batch``: a client with :class:`~pytest_llmeval.providers.batch.BatchClient`'s
interface (split / submit / retrieve / lines / cancel), which run/batch.py picks for ``anthropic/...`` models.

What litellm 1.x does and does not do here, and so what this module does:

* **creating** a batch: litellm raises NotImplementedError, so the batch is created with one POST to
  ``{api_base}/v1/messages/batches`` (httpx). Each request's ``params`` are what a plain ``anthropic/...`` call
  sends: the OpenAI-style chat body goes through litellm's own ``AnthropicConfig`` (``map_openai_params``, then
  ``transform_request``: the system message lifted out, the ``max_tokens`` Anthropic requires filled in, tools
  and ``tool_choice`` translated, unsupported parameters dropped as ``litellm.drop_params`` does), and the URL and
  headers (``x-api-key``, ``anthropic-version``, ``anthropic-beta``) come from litellm's ``AnthropicBatchesConfig``,
  which reads the key from ``ANTHROPIC_API_KEY`` as a plain call does (the key goes in that header only); the beta
  features a plain call of a request would name in its headers (structured outputs...) are named on the create;
* **retrieving** a batch: ``litellm.retrieve_batch(custom_llm_provider="anthropic")``, whose OpenAI-shaped batch
  :meth:`AnthropicBatchClient.retrieve` maps to a :class:`BatchInfo` (``in_progress`` / ``canceling`` /
  ``ended`` become ``in_progress`` / ``cancelling`` / ``completed``; an ended batch's failed count is every request
  that did not succeed: errored, canceled and expired);
* **reading** the results: ``litellm.file_content(custom_llm_provider="anthropic", file_id=<batch id>)`` fetches
  ``.../{id}/results``, but in litellm 1.110 hands back Anthropic's JSONL as is (and litellm's own converter, where
  it is used, turns an expired request into an HTTP 400 and a message it cannot convert into an empty answer), so
  :func:`openai_line` converts each line itself: a succeeded message through ``AnthropicConfig``'s
  ``transform_parsed_response``, the very function that reads a plain call's reply (so the cache entry is the same:
  text, tokens, tool calls), an errored one into an HTTP error line with the provider's message, an expired one
  into a ``batch_expired`` line (resubmitted once by run/batch.py), a canceled one into ``batch_canceled``.

Limits: 100,000 requests or 256 MB of request body per batch (:data:`MAX_REQUESTS`, :data:`MAX_BYTES`); a larger
group is split into several batches (:meth:`AnthropicBatchClient.split`).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_llmeval.providers.batch import BatchInfo
from pytest_llmeval.providers.runner import ModelCallError, redact

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "AnthropicBatchClient", "Translated", "anthropic_params",
           "anthropic_request", "openai_line"]

MAX_REQUESTS = 100_000  # Anthropic's limit of requests per Message Batch
MAX_BYTES = 256_000_000  # and of one batch's request body: 256 MB (read as decimal, below the binary reading too)
_STATUS = {"in_progress": "in_progress", "canceling": "cancelling", "ended": "completed"}


def _litellm() -> Any:
    from pytest_llmeval.providers.litellm_provider import get_litellm

    return get_litellm()


@dataclass
class Translated:
    """One request as a plain ``anthropic/...`` call would send it (:func:`anthropic_request`)."""

    params: dict[str, Any]  # the body: a Message Batch request's ``params``
    betas: list[str]  # the ``anthropic-beta`` features the call names in its headers (structured outputs...)
    json_mode: bool = False  # response_format answered through litellm's forced tool: read back as the text
    schema: Any = None  # and the response_format schema litellm reads that tool's answer with


def anthropic_params(body: dict[str, Any]) -> dict[str, Any]:
    """The ``params`` of a Message Batch request: what a plain ``anthropic/...`` call sends for the OpenAI-style
    chat ``body`` (``model``, ``messages`` and the sampling parameters), translated by litellm's AnthropicConfig."""
    return anthropic_request(body).params


def anthropic_request(body: dict[str, Any]) -> Translated:
    """``body`` translated by the steps of litellm's plain Anthropic call (llms/anthropic/chat/handler.py) up to the
    POST: its params, its beta headers (a batch names them on its create), how its answer is to be read."""
    _litellm()
    from litellm.anthropic_beta_gated_fields import strip_beta_gated_request_body
    from litellm.anthropic_beta_headers_manager import update_request_with_filtered_beta
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig

    config = AnthropicConfig()
    model = str(body["model"])
    params = {k: copy.deepcopy(v) for k, v in body.items() if k not in ("model", "messages")}
    optional = config.map_openai_params(non_default_params=params, optional_params={}, model=model, drop_params=True)
    json_mode = bool(optional.pop("json_mode", False))  # how the answer is read, not sent
    schema = None
    if json_mode:
        from litellm.llms.anthropic.chat.transformation import JsonModeRequest

        schema = JsonModeRequest.model_validate(optional).tool_schema()
    for name in ("stream", "vertex_count_tokens_location"):  # the call's own, not the request's
        optional.pop(name, None)
    optional["is_vertex_request"] = bool(optional.get("is_vertex_request", False))
    messages = copy.deepcopy(body["messages"])
    try:  # the headers first: some betas come from the tools and messages
        headers: dict[str, Any] = config.validate_environment(headers={}, model=model, messages=messages,
                                                              optional_params=dict(optional), litellm_params={})
    except Exception:  # no key: the create says so
        headers = {}
    data = config.transform_request(model=model, messages=messages, optional_params=optional, litellm_params={},
                                    headers=headers)
    headers, filtered = update_request_with_filtered_beta(headers=headers, request_data=data, provider="anthropic")
    result = dict(strip_beta_gated_request_body(filtered, headers, drop_params=None, model=model,
                                                provider="anthropic"))
    betas = [b.strip() for b in str(headers.get("anthropic-beta") or "").split(",") if b.strip()]
    return Translated(params=result, betas=betas, json_mode=json_mode, schema=schema)


def openai_line(row: dict[str, Any], request: Translated | None = None) -> dict[str, Any]:
    """One line of a Message Batch's results as the OpenAI batch-output line run/batch.py reads (see the module
    docstring); a line already in that shape (a litellm that converts them) is kept. ``request``: how its request
    was translated (None: not known to this process, a resumed batch)."""
    if "result" not in row:
        return row
    custom_id = row.get("custom_id")
    result = row.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        try:
            body = _chat_completion(result.get("message") or {}, request)
        except Exception as exc:  # completion_of reports it as a malformed line: the case is an error
            body = {"malformed": f"{type(exc).__name__}: {exc}"[:300]}
        return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}}
    if kind == "errored":
        from litellm.llms.anthropic.common_utils import ANTHROPIC_ERROR_STATUS_CODE_MAP

        error = result.get("error") or {}
        inner: dict[str, Any] = error["error"] if isinstance(error.get("error"), dict) else error
        error_type = str(inner.get("type") or "api_error")
        message = f"{error_type}: {inner.get('message') or 'no message'}"
        return {"custom_id": custom_id, "response": {
            "status_code": ANTHROPIC_ERROR_STATUS_CODE_MAP.get(error_type, 500),
            "body": {"error": {"message": message, "type": error_type}}}}
    if kind == "expired":
        return {"custom_id": custom_id, "error": {
            "code": "batch_expired", "message": "the batch ended (its 24 h window ran out) before this request ran"}}
    if kind == "canceled":
        return {"custom_id": custom_id, "error": {
            "code": "batch_canceled", "message": "the batch was canceled before this request ran"}}
    return {"custom_id": custom_id, "error": {"code": "unknown_result", "message": f"result type {kind!r}"}}


def _chat_completion(message: dict[str, Any], request: Translated | None) -> dict[str, Any]:
    """An Anthropic message as the chat completion a plain call makes of it (litellm's reading of the reply)."""
    import httpx

    litellm = _litellm()
    from litellm.constants import RESPONSE_FORMAT_TOOL_NAME
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig

    content = message.get("content")
    if not isinstance(content, list):
        raise ValueError(f"no content blocks in the message ({str(message)[:200]})")
    if request is not None:
        json_mode, schema = request.json_mode, request.schema
    else:  # a resumed batch: json_mode matters only when litellm's response_format tool answered (its schema unknown)
        json_mode = any(isinstance(b, dict) and b.get("type") == "tool_use" and b.get("name") == RESPONSE_FORMAT_TOOL_NAME
                        for b in content)
        schema = None
    raw = httpx.Response(200, content=json.dumps(message).encode("utf-8"))
    with warnings.catch_warnings():  # litellm's response types trip a pydantic warning on first use
        warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
        response = AnthropicConfig().transform_parsed_response(
            completion_response=message, raw_response=raw, model_response=litellm.ModelResponse(),
            json_mode=json_mode, response_format_schema=schema)
        dumped: dict[str, Any] = response.model_dump()
    return dumped


class AnthropicBatchClient:
    """Anthropic's Message Batches endpoints (``api_base`` as for plain calls: ``--llm-api-base``, else
    ``ANTHROPIC_API_BASE``, else Anthropic's)."""

    provider = "anthropic"

    def __init__(self, api_base: str | None, timeout: float = 120.0, max_requests: int = MAX_REQUESTS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.api_base = api_base
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.kwargs: dict[str, Any] = {"custom_llm_provider": "anthropic", "timeout": timeout}
        # custom_id -> how a request submitted by this process was translated, to read its answer the same way
        self.translated: dict[str, Translated] = {}
        if api_base:
            self.kwargs["api_base"] = api_base

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``; a failure is a ModelCallError saying ``what`` (secrets redacted)."""
        try:
            with warnings.catch_warnings():  # litellm's batch types trip a pydantic warning on first use
                warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
                return call()
        except ModelCallError:
            raise
        except Exception as exc:
            raise ModelCallError("batch", redact(f"cannot {what} (anthropic): {type(exc).__name__}: {exc}")) from None

    # ---- requests

    def split(self, lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """``lines`` (``custom_id`` + OpenAI-style ``body``) as Message Batch requests (``custom_id`` + ``params``),
        in chunks of at most :attr:`max_requests` requests and :attr:`max_bytes` of request body each."""
        chunks: list[list[dict[str, Any]]] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        overhead = len('{"requests":[]}')
        for line in lines:
            request = line if "params" in line else self._translate(line)
            sent = {"custom_id": request["custom_id"], "params": request["params"]}
            n = len(json.dumps(sent, separators=(",", ":")).encode("utf-8")) + 1
            if n + overhead > self.max_bytes:
                raise ModelCallError("batch", f"request {request['custom_id'][:16]} is {n} bytes, over the "
                                              f"{self.max_bytes} bytes of an Anthropic batch")
            if chunk and (len(chunk) >= self.max_requests or size + n + overhead > self.max_bytes):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(request)
            size += n
        if chunk:
            chunks.append(chunk)
        return chunks

    def _translate(self, line: dict[str, Any]) -> dict[str, Any]:
        try:
            translated = anthropic_request(line["body"])
        except Exception as exc:
            raise ModelCallError("batch", redact(f"cannot translate request {str(line.get('custom_id'))[:16]} for "
                                                 f"anthropic: {type(exc).__name__}: {exc}")) from None
        # how to read its answer (not its params: 100,000 of them need not stay in memory)
        self.translated[line["custom_id"]] = Translated({}, [], translated.json_mode, translated.schema)
        return {"custom_id": line["custom_id"], "params": translated.params,
                **({"betas": translated.betas} if translated.betas else {})}

    def submit(self, lines: list[dict[str, Any]], metadata: dict[str, str] | None = None) -> str:
        """Create a Message Batch of ``lines`` (translated first unless they carry ``params``); its id.
        ``metadata`` is not sent: Message Batches have no such field."""
        import httpx

        requests = [r for chunk in self.split(lines) for r in chunk]
        betas = sorted({b for r in requests for b in r.get("betas") or ()})  # the batch's headers carry them all
        requests = [{"custom_id": r["custom_id"], "params": r["params"]} for r in requests]
        _litellm()
        from litellm.llms.anthropic.batches.transformation import AnthropicBatchesConfig

        config = AnthropicBatchesConfig()

        def post() -> Any:
            url = config.get_complete_batch_url(api_base=self.api_base, api_key=None, model="", optional_params={},
                                                litellm_params={}, data={})  # type: ignore[typeddict-item]
            headers = config.validate_environment(headers={"anthropic-beta": ",".join(betas)} if betas else {},
                                                  model="", messages=[], optional_params={}, litellm_params={},
                                                  api_key=None, api_base=self.api_base)
            data = json.dumps({"requests": requests}, separators=(",", ":")).encode("utf-8")
            with httpx.Client(timeout=self.timeout) as client:
                response = client.post(url, headers=headers, content=data)
            if response.status_code >= 400:
                raise ValueError(f"HTTP {response.status_code}: {_error_message(response)}")
            return response.json()

        created = self._call("create a batch", post)
        batch_id = created.get("id") if isinstance(created, dict) else None
        if not batch_id:
            raise ModelCallError("batch", f"cannot create a batch (anthropic): no id in the reply ({str(created)[:200]})")
        return str(batch_id)

    # ---- batches

    def retrieve(self, batch_id: str) -> BatchInfo:
        litellm = _litellm()
        batch = self._call(f"retrieve batch {batch_id}",
                           lambda: litellm.retrieve_batch(batch_id=batch_id, **self.kwargs))
        status = str(batch.status)
        status = _STATUS.get(status, status)
        counts = getattr(batch, "request_counts", None)
        total = int(getattr(counts, "total", 0) or 0)
        completed = int(getattr(counts, "completed", 0) or 0)
        failed = int(getattr(counts, "failed", 0) or 0)
        if status == "completed":  # ended: nothing is processing, so what did not succeed failed (errored, canceled,
            failed = max(failed, total - completed)  # expired; litellm counts the errored only)
        return BatchInfo(id=batch_id, status=status, total=total, completed=completed, failed=failed,
                         output_file_id=getattr(batch, "output_file_id", None) or batch_id, error_file_id=None)

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        """The results of batch ``file_id`` (what :meth:`retrieve` gives as its output file) as OpenAI
        batch-output lines ([] for none)."""
        if not file_id:
            return []
        litellm = _litellm()
        content = self._call(f"read the results of batch {file_id}",
                             lambda: litellm.file_content(file_id=file_id, **self.kwargs))
        raw = content.content if hasattr(content, "content") else content
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        rows = [json.loads(x) for x in text.splitlines() if x.strip()]
        return [openai_line(row, self.translated.get(str(row.get("custom_id")))) for row in rows]

    def cancel(self, batch_id: str) -> None:
        import httpx

        _litellm()
        from litellm.llms.anthropic.batches.transformation import AnthropicBatchesConfig

        config = AnthropicBatchesConfig()

        def post() -> None:
            url = config.get_retrieve_batch_url(api_base=self.api_base, batch_id=batch_id, optional_params={},
                                                litellm_params={}) + "/cancel"
            headers = config.validate_environment(headers={}, model="", messages=[], optional_params={},
                                                  litellm_params={}, api_key=None, api_base=self.api_base)
            with httpx.Client(timeout=self.timeout) as client:
                response = client.post(url, headers=headers)
            if response.status_code >= 400:
                raise ValueError(f"HTTP {response.status_code}: {_error_message(response)}")

        self._call(f"cancel batch {batch_id}", post)


def _error_message(response: Any) -> str:
    """The message of an Anthropic error reply (``{"type": "error", "error": {"type", "message"}}``), or its text."""
    try:
        error = response.json().get("error") or {}
        return f"{error.get('type') or 'error'}: {error.get('message') or error}"
    except Exception:
        return str(response.text)[:300]

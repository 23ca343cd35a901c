"""A scripted *Anthropic* server for tests: the Messages API and the Message Batches API, on top of
:class:`~helpers.batch_server.BatchServer` (so one server also serves OpenAI chat completions, files and batches:
a run that mixes ``openai/`` and ``anthropic/`` models talks to it alone).

Standard library only. Endpoints (the path may carry one ``/v1`` too many: litellm appends ``/v1/messages`` to an
``api_base`` that already ends in ``/v1``, as ``--llm-api-base`` of the other tests does):

* ``POST /v1/messages`` -- a plain Anthropic call, answered by the base server's rules (``server.answer(...)``,
  ``server.tool_call(...)``) as an Anthropic message (text or ``tool_use`` blocks, ``usage`` in words)
* ``POST /v1/messages/batches`` -- create a Message Batch (``requests: [{custom_id, params}]``)
* ``GET /v1/messages/batches/{id}`` -- the batch; every retrieve advances it
* ``GET /v1/messages/batches/{id}/results`` -- its results, JSONL, once ended
* ``POST /v1/messages/batches/{id}/cancel`` -- cancel it (``canceling``; the next retrieve ends it, every request
  not answered yet ``canceled``)

Every request must carry ``x-api-key`` and ``anthropic-version`` (else 401/400, as Anthropic answers). A batch is
``in_progress`` when created; after :attr:`polls_to_complete` retrieves it is ``ended``: each request answered
through the base's rules, unless scripted otherwise::

    with AnthropicBatchServer() as server:
        server.answer("capital of France", "Paris", model="anthropic/test-model")
        server.fail_line("capital of Japan", "Scripted refusal")   # errored, invalid_request_error
        server.expire_next(keep=1)       # the next Message Batch answers 1 request, the others expired
        server.polls_to_complete = 10**9  # batches stay in_progress

:attr:`message_batches` holds every Message Batch made (id -> object), :attr:`message_requests` every request
submitted, :attr:`batch_headers` the headers of each create, :attr:`message_calls` / :attr:`message_headers` the
plain Anthropic calls, and ``chat_calls`` counts plain calls of both APIs.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from helpers.batch_server import BatchServer, _BatchHandler, _BatchHTTPServer
from helpers.llm_server import ToolReply, _content_text, _HTTPServer, _word_count

__all__ = ["AnthropicBatchServer"]

_MESSAGES = re.compile(r"^(?:/v1)*/messages$")
_MESSAGE_BATCHES = re.compile(r"^(?:/v1)*/messages/batches(?:/([^/]+)(/results|/cancel)?)?$")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def _openai_view(params: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic request as the base server's rules read it: model and messages (text blocks joined)."""
    messages = [{"role": m.get("role"), "content": _content_text(m.get("content"))}
                for m in params.get("messages") or [] if isinstance(m, dict)]
    return {"model": params.get("model"), "messages": messages}


class _AnthropicHandler(_BatchHandler):
    server: _AnthropicHTTPServer

    def _authorized(self) -> bool:
        if not self.headers.get("x-api-key"):
            self._send_json(401, _error(401, "x-api-key header is required"))
            return False
        if not self.headers.get("anthropic-version"):
            self._send_json(400, _error(400, "anthropic-version header is required"))
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        m = _MESSAGE_BATCHES.match(self._path())
        if m is None or m.group(1) is None or m.group(2) == "/cancel":
            super().do_GET()
            return
        if not self._authorized():
            return
        owner = self.server.owner
        if m.group(2) == "/results":
            found = owner._results(m.group(1))
            if found is None:
                self._send_json(404, _error(404, f"No ended batch {m.group(1)}"))
            else:
                self._send_bytes(200, found, content_type="application/binary")
        else:
            batch = owner._message_retrieve(m.group(1))
            self._send_json(200, batch) if batch else self._send_json(404, _error(404, f"No batch {m.group(1)}"))

    def do_POST(self) -> None:  # noqa: N802
        path = self._path()
        messages, batches = _MESSAGES.match(path), _MESSAGE_BATCHES.match(path)
        if messages is None and batches is None:
            super().do_POST()
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not self._authorized():
            return
        owner = self.server.owner
        if messages is not None:
            owner._message(self, json.loads(raw or b"{}"))
        elif batches is not None and batches.group(1) is None:
            body = json.loads(raw or b"{}")
            requests = body.get("requests")
            if not isinstance(requests, list) or not requests:
                self._send_json(400, _error(400, "requests: a non-empty list is required"))
                return
            self._send_json(200, owner._message_create(requests, dict(self.headers.items())))
        elif batches is not None and batches.group(2) == "/cancel":
            batch = owner._message_cancel(batches.group(1))
            self._send_json(200, batch) if batch else self._send_json(404, _error(404, f"No batch {batches.group(1)}"))
        else:
            self._send_json(404, _error(404, f"Unknown path: POST {self.path}"))


class _AnthropicHTTPServer(_BatchHTTPServer):
    owner: AnthropicBatchServer

    def __init__(self, owner: AnthropicBatchServer) -> None:
        self.owner = owner
        self._conns = set()
        self._conns_lock = threading.Lock()
        super(_HTTPServer, self).__init__(("127.0.0.1", 0), _AnthropicHandler)


class AnthropicBatchServer(BatchServer):
    """:class:`BatchServer` plus Anthropic's Messages and Message Batches endpoints (module docstring)."""

    def __init__(self, default: str = "I don't know.", latency: float = 0.0) -> None:
        super().__init__(default=default, latency=latency)
        self.message_batches: dict[str, dict[str, Any]] = {}
        self.message_requests: list[dict[str, Any]] = []  # every request of every Message Batch, in order
        self.batch_headers: list[dict[str, str]] = []  # the headers of each create (to check what was sent)
        self.message_calls: list[dict[str, Any]] = []  # the bodies of plain POST /v1/messages calls
        self.message_headers: list[dict[str, str]] = []  # and their headers

    def start(self) -> AnthropicBatchServer:
        if self._httpd is not None:
            return self
        httpd = _AnthropicHTTPServer(self)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"AnthropicBatchServer:{httpd.server_port}", daemon=True)
        self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def __enter__(self) -> AnthropicBatchServer:
        return self.start()

    @property
    def base(self) -> str:
        """The server without ``/v1``: what ``ANTHROPIC_API_BASE`` is set to."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.message_batches.clear()
            self.message_requests.clear()
            self.batch_headers.clear()
            self.message_calls.clear()
            self.message_headers.clear()

    # -- the Messages API -------------------------------------------------

    def _message(self, handler: _BatchHandler, params: dict[str, Any]) -> None:
        with self._lock:
            self.chat_calls += 1
            self.message_calls.append(params)
            self.message_headers.append({k.lower(): v for k, v in handler.headers.items()})
        fault, decided, _ = self._decide(_openai_view(params))
        if fault is not None:
            handler._send_json(fault.status, _error(fault.status, fault.message or f"Scripted HTTP {fault.status}"))
            return
        handler._send_json(200, self._answer_message(params, decided))

    def _answer_message(self, params: dict[str, Any], decided: str | ToolReply) -> dict[str, Any]:
        """An Anthropic message for ``params`` answered ``decided`` (text, or tool_use blocks)."""
        prompt_tokens = sum(_word_count(m["content"]) for m in _openai_view(params)["messages"])
        system = params.get("system")
        prompt_tokens += _word_count(_content_text(system) if isinstance(system, list) else str(system or ""))
        if isinstance(decided, ToolReply):
            content: list[dict[str, Any]] = [{"type": "text", "text": decided.content}] if decided.content else []
            for name, args in decided.calls:
                arguments = args if not isinstance(args, str) else (json.loads(args) if args.strip().startswith("{")
                                                                   else {"raw": args})
                content.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": name,
                                "input": arguments})
            output_tokens, stop = decided.words(), "tool_use"
        else:
            content, output_tokens, stop = [{"type": "text", "text": decided}], _word_count(decided), "end_turn"
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": params.get("model") or "scripted-model", "content": content, "stop_reason": stop,
                "stop_sequence": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": output_tokens}}

    # -- the Message Batches API ------------------------------------------

    def _message_public(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _message_create(self, requests: list[dict[str, Any]], headers: dict[str, str]) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
            batch = {
                "id": batch_id, "type": "message_batch", "processing_status": "in_progress",
                "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                   "expired": 0},
                "ended_at": None, "created_at": _iso(now), "expires_at": _iso(now + 86400),
                "cancel_initiated_at": None, "archived_at": None, "results_url": None,
                "_requests": requests, "_polls": 0, "_results": None,
                "_expire": self._expire.pop(0) if self._expire else None,
            }
            self.message_batches[batch_id] = batch
            self.message_requests.extend(requests)
            self.batch_headers.append({k.lower(): v for k, v in headers.items()})
            return self._message_public(batch)

    def _message_retrieve(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            self.retrieves += 1
            batch = self.message_batches.get(batch_id)
            if batch is None:
                return None
            finish = False
            if batch["processing_status"] == "in_progress":
                batch["_polls"] += 1
                finish = batch["_polls"] >= self.polls_to_complete
            elif batch["processing_status"] == "canceling":
                finish = True
            if not finish:
                return self._message_public(batch)
        self._message_finish(batch)  # outside the lock: the base's rules take it
        with self._lock:
            return self._message_public(batch)

    def _message_cancel(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.message_batches.get(batch_id)
            if batch is None:
                return None
            if batch["processing_status"] == "in_progress":
                batch.update(processing_status="canceling", cancel_initiated_at=_iso(time.time()))
            return self._message_public(batch)

    def _message_finish(self, batch: dict[str, Any]) -> None:
        """End the batch: every request succeeded, errored (:meth:`fail_line`), expired (:meth:`expire_next`) or
        canceled (a cancel), its results kept for ``/results``."""
        results: list[dict[str, Any]] = []
        keep = batch["_expire"]
        canceled = batch["processing_status"] == "canceling"
        for n, request in enumerate(batch["_requests"]):
            custom_id, params = request.get("custom_id"), request.get("params") or {}
            if canceled:
                result: dict[str, Any] = {"type": "canceled"}
            elif keep is not None and n >= keep:
                result = {"type": "expired"}
            else:
                view = _openai_view(params)
                prompt = next((m["content"].lower() for m in reversed(view["messages"]) if m["role"] == "user"), "")
                fault = next((f for f in self._line_faults if f[0] in prompt), None)
                if fault is not None:
                    result = {"type": "errored", "error": {**_error(fault[2], fault[1]),
                                                           "request_id": f"req_{uuid.uuid4().hex[:16]}"}}
                else:
                    _, decided, _ = self._decide(view)
                    result = {"type": "succeeded", "message": self._answer_message(params, decided)}
            results.append({"custom_id": custom_id, "result": result})
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for r in results:
            counts[r["result"]["type"]] += 1
        with self._lock:
            batch.update(processing_status="ended", ended_at=_iso(time.time()), request_counts=counts,
                         results_url=f"{self.base}/v1/messages/batches/{batch['id']}/results",
                         _results="".join(json.dumps(r) + "\n" for r in results).encode())

    def _results(self, batch_id: str) -> bytes | None:
        with self._lock:
            batch = self.message_batches.get(batch_id)
            return None if batch is None or batch["_results"] is None else batch["_results"]

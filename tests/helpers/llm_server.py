"""A scripted, OpenAI-compatible chat-completions HTTP server for tests.

Standard library only.  The server binds ``127.0.0.1`` on an ephemeral port
and serves from a background thread, so real HTTP clients (litellm, the
``openai`` SDK, ``httpx``...) can be pointed at it through ``api_base``::

    with ScriptedLLMServer(default="I don't know.") as server:
        server.answer("capital of france", "Paris")
        server.fail("boom", 500, times=1)
        litellm.completion(
            model="openai/test-model",
            api_base=server.url,
            api_key="sk-test",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert server.requests[-1]["model"] == "test-model"

Endpoints:

* ``POST {/v1,}/chat/completions`` -- scripted answers, faults, streaming (SSE)
* ``GET {/v1,}/models`` -- a model list (``test-model`` plus any scripted model)

Tool calls (issue 18): :meth:`ScriptedLLMServer.tool_call` / :meth:`~ScriptedLLMServer.tool_calls` reply with a
real OpenAI ``tool_calls`` message (``finish_reason: "tool_calls"``), and :meth:`~ScriptedLLMServer.sequence` serves
a list of replies (text or :class:`ToolReply`) in order, one per request, for a multi-step agent conversation::

    server.sequence("weather in paris", [
        ToolReply.call("get_weather", {"city": "Paris"}),
        "It is sunny in Paris.",
    ])

Request processing order: the JSON body is recorded in :attr:`requests`,
the configured latency is slept, then the first matching *fault* (``fail`` /
``malformed``, insertion order, skipping exhausted ones) wins; otherwise the
first matching *answer* rule (insertion order) wins; otherwise ``default``.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ScriptedLLMServer", "ToolReply", "serve"]

#: Body served by :meth:`ScriptedLLMServer.malformed`: truncated JSON.
MALFORMED_BODY = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"mess'

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout_error", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}

_TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")


def _word_count(text: str) -> int:
    """Whitespace word count, the server's stand-in for a tokenizer."""
    return len(text.split())


def _content_text(content: Any) -> str:
    """Flatten an OpenAI message ``content`` (string or list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content)


def _last_user_message(body: dict[str, Any]) -> str:
    """Text of the last ``role == "user"`` message ("" if there is none)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(_word_count(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))


def _model_matches(rule_model: str | None, request_model: Any) -> bool:
    """``rule_model`` matches the request's ``model`` exactly, or after
    stripping a litellm provider prefix (``"openai/test-model"`` matches a
    request for ``"test-model"``)."""
    if rule_model is None:
        return True
    if not isinstance(request_model, str):
        return False
    if rule_model == request_model:
        return True
    return "/" in rule_model and rule_model.split("/", 1)[1] == request_model


@dataclass(frozen=True)
class ToolReply:
    """A scripted assistant message asking for tool calls: ``calls`` are ``(name, arguments)`` pairs (arguments a
    mapping, sent as JSON, or a string sent verbatim -- e.g. malformed JSON), ``content`` the text beside them."""

    calls: tuple[tuple[str, Any], ...]
    content: str | None = None

    @classmethod
    def call(cls, name: str, arguments: Any = None, *, content: str | None = None) -> ToolReply:
        """One tool call."""
        return cls(((name, {} if arguments is None else arguments),), content)

    @classmethod
    def parallel(cls, calls: list[tuple[str, Any]], *, content: str | None = None) -> ToolReply:
        """Several tool calls in one turn."""
        return cls(tuple((name, {} if args is None else args) for name, args in calls), content)

    def message(self) -> dict[str, Any]:
        """The ``choices[i].message`` payload, with fresh call ids."""
        tool_calls = [
            {"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
             "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
            for name, args in self.calls
        ]
        return {"role": "assistant", "content": self.content, "tool_calls": tool_calls}

    def words(self) -> int:
        return sum(_word_count(m["function"]["arguments"]) + 1 for m in self.message()["tool_calls"]) + _word_count(
            self.content or "")


def _last_message(body: dict[str, Any]) -> dict[str, Any] | None:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1]
    return None


@dataclass
class _Rule:
    """A scripted answer."""

    when: str
    reply: str | list[str] | ToolReply | list[str | ToolReply]
    model: str | None = None
    delay: float | None = None
    served: int = 0
    case_sensitive: bool = False
    in_order: bool = False  # a list is served once in order, its last reply repeating (else it cycles)
    after_tool: str | None = None  # only when the last message is a tool message containing this ("" for any)

    def matches(self, prompt: str, model: Any, last: dict[str, Any] | None = None) -> bool:
        found = self.when in prompt if self.case_sensitive else self.when.lower() in prompt.lower()
        if found and self.after_tool is not None:
            found = (last is not None and last.get("role") == "tool"
                     and self.after_tool.lower() in _content_text(last.get("content")).lower())
        return found and _model_matches(self.model, model)

    def next_reply(self) -> str | ToolReply:
        """The reply; a list of replies is served in turn, cycling (different samples of one prompt), or once in
        order with the last repeating (``in_order``: the turns of one conversation)."""
        if not isinstance(self.reply, list):
            return self.reply
        index = min(self.served, len(self.reply) - 1) if self.in_order else self.served % len(self.reply)
        self.served += 1
        return self.reply[index]


@dataclass
class _Fault:
    """A scripted failure (HTTP error status, or a malformed 200 body)."""

    when: str | None
    status: int
    remaining: int | None = None  # None: fail forever
    body: str | None = None
    message: str | None = None
    model: str | None = None
    malformed: bool = False
    retry_after: float | None = None  # a 429's Retry-After header, in seconds
    reset: bool = False  # drop the connection without any response

    def matches(self, prompt: str, model: Any) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.when is not None and self.when.lower() not in prompt.lower():
            return False
        return _model_matches(self.model, model)


class _Handler(BaseHTTPRequestHandler):
    """Request handler; all state lives on ``self.server.owner``."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients pool connections
    disable_nagle_algorithm = True  # avoid 40 ms Nagle/delayed-ACK stalls
    server_version = "ScriptedLLMServer/1.0"

    # -- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence the default per-request stderr logging."""

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(obj).encode("utf-8"), headers=headers)

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, _error_body(status, message))

    # -- verbs ------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        if self._path() in ("/v1/models", "/models"):
            self._send_json(200, self.server.owner._models_payload())
        else:
            self._send_error_json(404, f"Unknown path: GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not self._path().endswith("/chat/completions"):
            self._send_error_json(404, f"Unknown path: POST {self.path}")
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            self._send_error_json(400, "Request body is not valid JSON.")
            return
        if not isinstance(body, dict):
            self._send_error_json(400, "Request body must be a JSON object.")
            return
        self.server.owner._handle_chat(self, body)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deep backlog and connection tracking."""

    request_queue_size = 256  # default 5 stalls bursts of connections for ~1 s
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: ScriptedLLMServer) -> None:
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can block on
        # reverse DNS; we know who we are.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        """Shut down idle keep-alive connections so handler threads exit."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _error_body(status: int, message: str) -> dict[str, Any]:
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None)
    err_type, code = _ERROR_TYPES.get(status, fallback)
    return {"error": {"message": message, "type": err_type, "param": None, "code": code or str(status)}}


class ScriptedLLMServer:
    """An in-process, scripted OpenAI-compatible chat-completions server.

    :param default: reply used when no :meth:`answer` rule matches.
    :param latency: seconds slept before answering every request (also
        settable later through the :attr:`latency` attribute).

    Attributes:
        url: the ``api_base`` to give clients, ``http://127.0.0.1:PORT/v1``
            (available after :meth:`start`).
        requests: every received JSON request body, in arrival order.
        default: the fallback reply (may be reassigned at any time).
        latency: seconds slept before each answer (may be reassigned).
    """

    def __init__(self, default: str = "I don't know.", latency: float = 0.0) -> None:
        self.default: str = default
        self.latency: float = latency
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []  # time.monotonic() at each request's arrival
        self.in_flight = 0  # requests being handled right now
        self.max_in_flight = 0  # the most handled at once since the last reset()
        self._rules: list[_Rule] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._httpd is None:
            raise RuntimeError("ScriptedLLMServer is not started")
        return self._httpd.server_port

    @property
    def url(self) -> str:
        """``api_base`` for clients, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedLLMServer:
        """Bind an ephemeral port and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(self)
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ScriptedLLMServer:{httpd.server_port}",
            daemon=True,
        )
        self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and release the port (idempotent)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "stopped"
        return f"<ScriptedLLMServer {where} rules={len(self._rules)} faults={len(self._faults)}>"

    # -- scripting --------------------------------------------------------

    def answer(self, when: str, reply: str | list[str], *, model: str | None = None,
               delay: float | None = None, case_sensitive: bool = False, after_tool: str | None = None) -> None:
        """Reply ``reply`` when ``when`` occurs (case-insensitive substring) in
        the last user message and, if given, ``model`` matches the request's
        ``model`` (a ``provider/`` prefix on ``model`` is ignored).

        A list of replies is served one after the other, cycling.
        ``case_sensitive=True`` matches ``when`` exactly as written (a model that
        stumbles over letter case, for robustness tests). ``after_tool``: see :meth:`tool_call` (the answer an
        agent gets once a tool's result came back).
        Rules are tried in insertion order; the first match wins.  ``delay``,
        when given, replaces :attr:`latency` for requests answered by this rule.
        """
        with self._lock:
            self._rules.append(_Rule(when=when, reply=reply, model=model, delay=delay, case_sensitive=case_sensitive,
                                     after_tool=after_tool))

    def tool_call(self, when: str, name: str, arguments: Any = None, *, model: str | None = None,
                  content: str | None = None, after_tool: str | None = None) -> None:
        """Reply with a real OpenAI ``tool_calls`` message asking for one call of ``name`` with ``arguments`` (a
        mapping sent as JSON, or a string sent verbatim) when ``when`` occurs in the last user message.

        ``after_tool``, when given, also requires the last message to be a ``tool`` message whose content contains
        it (``""``: any tool message), so one conversation can be scripted turn by turn.
        """
        self.tool_calls(when, [(name, arguments)], model=model, content=content, after_tool=after_tool)

    def tool_calls(self, when: str, calls: list[tuple[str, Any]], *, model: str | None = None,
                   content: str | None = None, after_tool: str | None = None) -> None:
        """Like :meth:`tool_call`, with several calls in one turn (parallel tool calls)."""
        with self._lock:
            self._rules.append(_Rule(when=when, reply=ToolReply.parallel(calls, content=content), model=model,
                                     after_tool=after_tool))

    def sequence(self, when: str, replies: list[str | ToolReply], *, model: str | None = None,
                 after_tool: str | None = None) -> None:
        """Serve ``replies`` (text or :class:`ToolReply`) one per matching request, in order; the last one repeats
        once they are used up. The turns of an agent conversation, whose last user message stays the same."""
        if not replies:
            raise ValueError("sequence() needs at least one reply")
        with self._lock:
            self._rules.append(_Rule(when=when, reply=list(replies), model=model, in_order=True,
                                     after_tool=after_tool))

    def fail(
        self,
        when: str | None,
        status: int = 500,
        *,
        times: int | None = None,
        body: str | None = None,
        model: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Make matching requests fail with HTTP ``status``.

        The response body is an OpenAI-style error
        ``{"error": {"message", "type", "param", "code"}}`` whose message is
        ``message`` (default ``"Scripted failure: HTTP <status>"``), unless
        ``body`` is given, which is then sent verbatim.  ``when=None``
        matches every request.  ``times=None`` fails forever; otherwise only
        the first ``times`` matching requests fail.  A 429 carries
        ``retry-after: <retry_after>`` (default 0).  Faults take precedence over :meth:`answer` rules.
        """
        with self._lock:
            self._faults.append(
                _Fault(when=when, status=status, remaining=times, body=body, message=message, model=model,
                       retry_after=retry_after)
            )

    def reset_connection(self, when: str | None, *, times: int | None = None, model: str | None = None) -> None:
        """Drop matching requests' connections without sending anything (a connection reset)."""
        with self._lock:
            self._faults.append(_Fault(when=when, status=0, remaining=times, model=model, reset=True))

    def malformed(self, when: str | None, *, times: int | None = None, model: str | None = None) -> None:
        """Answer matching requests with HTTP 200 and a body that is not valid JSON."""
        with self._lock:
            self._faults.append(_Fault(when=when, status=200, remaining=times, model=model, malformed=True))

    def reset(self) -> None:
        """Forget all rules, faults and recorded requests (keeps default/latency)."""
        with self._lock:
            self._rules.clear()
            self._faults.clear()
            self.requests.clear()
            self.request_times.clear()
            self.max_in_flight = self.in_flight

    # -- introspection helpers -------------------------------------------

    @property
    def last_request(self) -> dict[str, Any]:
        """The most recent recorded request body (raises if none)."""
        with self._lock:
            if not self.requests:
                raise LookupError("no requests received yet")
            return self.requests[-1]

    # -- request handling -------------------------------------------------

    def _models_payload(self) -> dict[str, Any]:
        names = ["test-model"]
        with self._lock:
            scripted = [r.model for r in self._rules] + [f.model for f in self._faults]
        for name in scripted:
            if name and name.split("/", 1)[-1] not in names:
                names.append(name.split("/", 1)[-1])
        created = int(time.time())
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "scripted"} for n in names],
        }

    def _decide(self, body: dict[str, Any]) -> tuple[_Fault | None, str | ToolReply, float]:
        """Record ``body`` and pick (fault, reply, delay) atomically."""
        prompt = _last_user_message(body)
        model = body.get("model")
        last = _last_message(body)
        with self._lock:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            for fault in self._faults:
                if fault.matches(prompt, model):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault, "", self.latency
            for rule in self._rules:
                if rule.matches(prompt, model, last):
                    return None, rule.next_reply(), self.latency if rule.delay is None else rule.delay
            return None, self.default, self.latency

    def _handle_chat(self, handler: _Handler, body: dict[str, Any]) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer_chat(handler, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer_chat(self, handler: _Handler, body: dict[str, Any]) -> None:
        fault, decided, delay = self._decide(body)
        tool_reply = decided if isinstance(decided, ToolReply) else None
        reply = decided if isinstance(decided, str) else (decided.content or "")
        if delay and delay > 0:
            time.sleep(delay)

        if fault is not None:
            if fault.malformed:
                handler._send_bytes(200, MALFORMED_BODY)
                return
            if fault.reset:
                handler.close_connection = True
                try:
                    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    handler.connection.close()  # linger 0: the client sees a reset
                except OSError:
                    pass
                return
            wait = fault.retry_after or 0
            headers = {"retry-after": f"{wait:g}", "retry-after-ms": f"{wait * 1000:g}"} if fault.status == 429 else None
            if fault.body is not None:
                handler._send_bytes(fault.status, fault.body.encode("utf-8"), headers=headers)
            else:
                message = fault.message or f"Scripted failure: HTTP {fault.status}"
                handler._send_json(fault.status, _error_body(fault.status, message), headers=headers)
            return

        requested = body.get("model")
        model: str = requested if isinstance(requested, str) else "scripted-model"
        try:
            n = max(1, int(body.get("n") or 1))
        except (TypeError, ValueError):
            n = 1
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = (tool_reply.words() if tool_reply else _word_count(reply)) * n
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        if body.get("stream") and tool_reply is None:  # a tool reply is answered whole, never streamed
            stream_options = body.get("stream_options") or {}
            include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
            self._stream(handler, completion_id, created, model, reply, n, usage if include_usage else None)
            return

        handler._send_json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": i,
                        "message": tool_reply.message() if tool_reply else {"role": "assistant", "content": reply},
                        "logprobs": None,
                        "finish_reason": "tool_calls" if tool_reply else "stop",
                    }
                    for i in range(n)
                ],
                "usage": usage,
            },
        )

    @staticmethod
    def _stream(
        handler: _Handler,
        completion_id: str,
        created: int,
        model: str,
        reply: str,
        n: int,
        usage: dict[str, int] | None,
    ) -> None:
        """Write an SSE stream of ``chat.completion.chunk`` objects, then ``[DONE]``.

        The connection is closed afterwards (no Content-Length / chunked
        encoding), which marks the end of the body for HTTP/1.1 clients.
        """

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": choices,
            }
            if extra:
                obj.update(extra)
            return b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n"

        def delta(index: int, d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}

        pieces = _TOKEN_RE.findall(reply)
        events: list[bytes] = []
        for i in range(n):
            events.append(chunk([delta(i, {"role": "assistant", "content": ""})]))
            for piece in pieces:
                events.append(chunk([delta(i, {"content": piece})]))
            events.append(chunk([delta(i, {}, "stop")]))
        if usage is not None:
            events.append(chunk([], {"usage": usage}))
        events.append(b"data: [DONE]\n\n")

        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for event in events:
                handler.wfile.write(event)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


def serve(**kw: Any) -> ScriptedLLMServer:
    """Create a :class:`ScriptedLLMServer` with ``**kw`` and start it.

    Remember to call ``stop()`` (or use the result as a context manager).
    """
    return ScriptedLLMServer(**kw).start()

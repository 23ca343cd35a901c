"""The Orbit docs bot over HTTP (standard library only).

    python examples/docs_bot/server.py --port 8765      # or: python examples/docs_bot/server.py 8765

- ``GET /health``: 200 ``{"status": "ok", "index": <version>}`` once the index is loaded (503 while it loads,
  500 if it could not be built);
- ``POST /ask`` with ``{"question": ..., "messages": [earlier turns, optional], "model": ..., "params": {...}}``:
  200 ``{"answer", "references": [{"source", "text", "score"}], "route", "usage", "context", "model"}``;
  a bad request is a 400, a failure of the bot a 500, both ``{"error": <message>}``.

One line per request goes to stderr. Settings: ``--docs``, ``--index`` (``$DOCS_BOT_INDEX``), ``--k``,
``--model`` (the default when a request names none; ``$DOCS_BOT_MODEL``, else ``local/smollm2``), and
``$DOCS_BOT_API_BASE`` for non-local models, as for the Python bot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

try:
    from .bot import DEFAULT_DOCS, DEFAULT_MODEL, DocsBot, make_bot
except ImportError:  # run as a script: this folder is sys.path[0]
    from bot import DEFAULT_DOCS, DEFAULT_MODEL, DocsBot, make_bot  # type: ignore[no-redef]

LOAD_WAIT_S = 300.0  # how long /ask waits for the index on a cold start
MAX_BODY = 1 << 20


def _log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} docs-bot {line}\n")
    sys.stderr.flush()


class BotServer(ThreadingHTTPServer):
    """One bot, many request threads; the index loads in the background so /health can answer at once."""

    daemon_threads = True
    request_queue_size = 64  # the default of 5 refuses connections under an evaluation's concurrency

    def __init__(self, address: tuple[str, int], bot: DocsBot, default_model: str) -> None:
        super().__init__(address, Handler)
        self.bot = bot
        self.default_model = default_model
        self.ready = threading.Event()
        self.index_version: str | None = None
        self.load_error: str | None = None

    def load(self) -> None:
        start = time.perf_counter()
        try:
            self.index_version = self.bot.load()
            import litellm  # now rather than on the first question (seconds)

            litellm.suppress_debug_info = True  # its "Provider List" banners: the log keeps our lines
            _log(f"index {self.index_version} of {self.bot.docs} loaded in {time.perf_counter() - start:.1f}s")
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            _log(f"index failed to load: {self.load_error}")
        finally:
            self.ready.set()


class Handler(BaseHTTPRequestHandler):
    server: BotServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - our own line per request instead
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        start = time.perf_counter()
        path = self.path.split("?", 1)[0].rstrip("/")
        payload: dict[str, Any]
        if path == "/health":
            if not self.server.ready.is_set():
                status, payload = 503, {"status": "loading"}
            elif self.server.load_error:
                status, payload = 500, {"status": "error", "error": self.server.load_error}
            else:
                status, payload = 200, {"status": "ok", "index": self.server.index_version}
        else:
            status, payload = 404, {"error": f"no such endpoint: GET {path or '/'}"}
        _log(f"GET {path} {status} {time.perf_counter() - start:.3f}s")  # before the reply: a client reads it
        self._send(status, payload)

    def do_POST(self) -> None:  # noqa: N802
        start = time.perf_counter()
        path = self.path.split("?", 1)[0].rstrip("/")
        note = ""
        payload: dict[str, Any]
        try:
            if path != "/ask":
                status, payload = 404, {"error": f"no such endpoint: POST {path or '/'}"}
            else:
                status, payload = self._ask()
                note = f" route={payload.get('route')}" if status == 200 else f" error={payload.get('error')!r}"
        except Exception as exc:  # the bot failed: the client gets the message, the log the traceback
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
            note = f" error={payload['error']!r}\n{traceback.format_exc().rstrip()}"
        _log(f"POST {path} {status} {time.perf_counter() - start:.3f}s{note}")
        self._send(status, payload)

    def _ask(self) -> tuple[int, dict[str, Any]]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return 400, {"error": f"request body over {MAX_BODY} bytes"}
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            return 400, {"error": f"the body is not JSON: {exc}"}
        if not isinstance(body, dict):
            return 400, {"error": "the body must be a JSON object"}
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return 400, {"error": "messages must be a list of {role, content} objects"}
        question = body.get("question")
        if not question and messages and messages[-1].get("role") == "user":
            question = messages[-1].get("content")
        if not isinstance(question, str) or not question.strip():
            return 400, {"error": "a question is required: {\"question\": \"...\"}"}
        params = body.get("params") or {}
        if not isinstance(params, dict):
            return 400, {"error": "params must be an object"}
        if not self.server.ready.wait(LOAD_WAIT_S):
            return 503, {"error": "the index is still loading"}
        if self.server.load_error:
            return 500, {"error": f"the index failed to load: {self.server.load_error}"}
        model = body.get("model") or self.server.default_model
        answer = self.server.bot.ask(question, messages, model=str(model), params=params)
        return 200, {
            "answer": answer.text,
            "references": [{"source": r.source, "text": r.text, "score": r.score} for r in answer.references],
            "route": answer.metadata.get("route"),
            "usage": answer.usage.to_dict() if answer.usage is not None else {"calls": 0},
            "context": answer.context,
            "model": answer.metadata.get("model"),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Orbit docs bot over HTTP.")
    parser.add_argument("port_arg", nargs="?", type=int, metavar="PORT", help="the port (same as --port)")
    parser.add_argument("--port", type=int, default=None, help="the port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="the docs folder (default: cases/docs)")
    parser.add_argument("--index", default=None, help="the lancedb index URI (default: $DOCS_BOT_INDEX)")
    parser.add_argument("--k", type=int, default=3, help="chunks per answer")
    parser.add_argument("--model", default=os.environ.get("DOCS_BOT_MODEL") or DEFAULT_MODEL,
                        help="the model when a request names none")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else args.port_arg
    if port is None:
        parser.error("give the port: --port N (or as the only argument)")

    bot = make_bot(args.docs, args.k, index_uri=args.index)
    server = BotServer((args.host, port), bot, args.model)
    _log(f"listening on http://{args.host}:{server.server_port} (docs {bot.docs}, model {args.model})")
    threading.Thread(target=server.load, name="docs-bot-load", daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

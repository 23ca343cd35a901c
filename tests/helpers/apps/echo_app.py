"""A small standard-library HTTP application for the ``http`` target's tests.

Run as a service: ``python echo_app.py PORT [MODE]``, or in a thread: ``serve_in_thread()``.

Routes:

- ``GET /health``: 200 ``{"ok": true}`` (503 in mode ``never-ready``);
- ``POST /ask``: ``{"data": {"answer": "echo: <q>", "refs": [...], "ctx": [...], "usage": {...}}, "meta": {...},
  "received": <the JSON body>, "auth": <the Authorization header>}``, where ``<q>`` is the body's ``q`` (else its
  ``prompt``) with ``$ECHO_PREFIX`` in front;
- ``GET /ask``: the same, from the query string (``received`` holds the query, lists for repeated keys);
- ``GET /pid``: ``{"pid": <this process>, "child": <the child it started in mode child, else null>}``;
- ``GET|POST /error``: 500 with a text body; ``GET|POST /html``: 200 with an HTML body;
- ``GET|POST /slow?s=N``: sleeps N seconds, then answers as ``/ask``.

Modes (argv[2]): ``ok``; ``never-ready`` (/health answers 503); ``exit`` (prints a fatal line and exits with
status 3 before listening); ``ignore-term`` (SIGTERM is ignored); ``child`` (starts a sleeping child process in
its group that ignores SIGTERM, and stops on SIGTERM itself). Each start appends a line (its pid) to ``$ECHO_STARTS``
when it is set; each request to ``/ask``, ``/error`` or ``/slow`` appends a JSON line (``path``, ``received``, ``auth``
and ``trace``, the ``X-Trace`` header) to ``$ECHO_REQUESTS`` when it is set (how a test counts what the app was asked).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODE = "ok"
CHILD: subprocess.Popen[bytes] | None = None
LOG_LOCK = threading.Lock()  # one line per request in $ECHO_REQUESTS, whole, under concurrent requests


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(f"echo_app: {format % args}\n")

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode())

    def _answer(self, received: Any) -> None:
        source = received if isinstance(received, dict) else {}
        q = source.get("q", source.get("prompt", ""))
        if isinstance(q, list) and len(q) == 1:
            q = q[0]
        text = os.environ.get("ECHO_PREFIX", "") + f"echo: {q}"
        self._json(200, {
            "data": {
                "answer": text,
                "refs": [{"source": "docs/a.md", "text": "Alpha passage.", "score": 0.9}, "docs/b.md"],
                "ctx": ["Alpha passage.", "Beta passage."],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "cost_usd": 0.001},
                "none": None,
            },
            "meta": {"pid": os.getpid(), "path": self.path},
            "received": received,
            "auth": self.headers.get("Authorization"),
        })

    def _route(self, received: Any) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ask", "/error", "/slow") and os.environ.get("ECHO_REQUESTS"):
            with LOG_LOCK, open(os.environ["ECHO_REQUESTS"], "a") as f:
                f.write(json.dumps({"path": url.path, "received": received, "auth": self.headers.get("Authorization"),
                                    "trace": self.headers.get("X-Trace")}) + "\n")
        if url.path == "/health":
            self._json(503 if MODE == "never-ready" else 200, {"ok": MODE != "never-ready"})
        elif url.path == "/ask":
            self._answer(received)
        elif url.path == "/pid":
            self._json(200, {"pid": os.getpid(), "child": CHILD.pid if CHILD is not None else None})
        elif url.path == "/error":
            self._send(500, b"boom: the database is down\nTraceback (most recent call last): ...", "text/plain")
        elif url.path == "/html":
            self._send(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        elif url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["5"])[0]))
            self._answer(received)
        else:
            self._json(404, {"error": f"no route {url.path}"})

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        query = parse_qs(urlsplit(self.path).query)
        self._route({k: v[0] if len(v) == 1 else v for k, v in query.items()})

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            received = json.loads(raw) if raw else None
        except ValueError:
            received = raw.decode(errors="replace")
        self._route(received)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default backlog of 5 drops connections under concurrent callers


def serve_in_thread() -> tuple[Server, str]:
    """The app in a daemon thread of this process on a free port: (server, base URL). ``server.shutdown()``."""
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main(argv: list[str]) -> None:
    global MODE, CHILD
    port = int(argv[1])
    MODE = argv[2] if len(argv) > 2 else "ok"
    if os.environ.get("ECHO_STARTS"):
        with open(os.environ["ECHO_STARTS"], "a") as f:
            f.write(f"{os.getpid()}\n")
    print(f"echo_app starting on port {port} in mode {MODE}", flush=True)
    if MODE == "exit":
        print("fatal: missing setting ECHO_DATABASE_URL", file=sys.stderr, flush=True)
        sys.exit(3)
    if MODE == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "child":
        # The app itself stops on SIGTERM; the child it leaves behind ignores it: only the group's SIGKILL stops it.
        CHILD = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    server = Server(("127.0.0.1", port), Handler)
    print("echo_app ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)

"""A scripted OpenAI-compatible *batch* server for tests: the files and batches endpoints on top of
:class:`~helpers.llm_server.ScriptedLLMServer`, whose scripted answers serve the batch's lines.

Standard library only. Endpoints (with or without the ``/v1`` prefix), besides the chat completions of the base:

* ``POST /v1/files`` -- multipart upload (``purpose`` and ``file`` fields); the file object back
* ``GET /v1/files/{id}`` and ``GET /v1/files/{id}/content`` -- the file object; its bytes
* ``POST /v1/batches`` -- create a batch from an uploaded JSONL file (``input_file_id``, ``endpoint``)
* ``GET /v1/batches/{id}`` -- the batch object; every retrieve advances its status
* ``POST /v1/batches/{id}/cancel`` -- cancel it

A batch is ``validating`` when created; its first retrieve makes it ``in_progress``; after
:attr:`BatchServer.polls_to_complete` retrieves in progress it is finished: every line is answered through the base
server's rules (so ``server.answer(...)`` scripts batch lines and plain calls alike), the answers written to an
output file, the failures to an error file, and the status set to ``completed`` (or ``expired``/``failed``)::

    with BatchServer() as server:
        server.answer("capital of France", "Paris")
        server.fail_line("capital of Japan", "content policy")   # that line fails inside the batch
        server.expire_next(keep=1)                                # the next batch expires after answering 1 line
        server.fail_next("invalid JSONL")                         # the next batch fails validation

:attr:`BatchServer.batches` holds every batch object made, :attr:`BatchServer.lines` every line submitted, in order.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

from helpers.llm_server import ScriptedLLMServer, ToolReply, _error_body, _Handler, _HTTPServer, _prompt_tokens, _word_count

__all__ = ["BatchServer"]

_BATCH = re.compile(r"^(?:/v1)?/batches/([^/]+)(/cancel)?$")
_FILE = re.compile(r"^(?:/v1)?/files/([^/]+)(/content)?$")


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ValueError("no multipart boundary")
    boundary = b"--" + match.group(1).encode()
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, body = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode("utf-8", "replace")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, body.removesuffix(b"\r\n"))
    return fields


class _BatchHandler(_Handler):
    server: _BatchHTTPServer

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        path = self._path()
        if (m := _BATCH.match(path)) and not m.group(2):
            found = owner._retrieve(m.group(1))
            self._send_json(200, found) if found else self._send_error_json(404, f"No batch {m.group(1)}")
        elif m := _FILE.match(path):
            with owner._lock:
                stored = owner.files.get(m.group(1))
            if stored is None:
                self._send_error_json(404, f"No file {m.group(1)}")
            elif m.group(2):
                self._send_bytes(200, stored["content"], content_type="application/octet-stream")
            else:
                self._send_json(200, stored["object"])
        else:
            super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        path = self._path()
        if path not in ("/v1/files", "/files", "/v1/batches", "/batches") and not _BATCH.match(path):
            super().do_POST()
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if path.endswith("/files"):
            try:
                fields = _multipart(self.headers.get("Content-Type", ""), raw)
                filename, content = fields["file"]
            except (ValueError, KeyError):
                self._send_error_json(400, "expected a multipart upload with a file field")
                return
            purpose = fields.get("purpose", (None, b"batch"))[1].decode()
            self._send_json(200, owner._store_file(content, filename or "upload.jsonl", purpose))
        elif path.endswith("/batches"):
            body = json.loads(raw or b"{}")
            found = owner._create(body)
            self._send_json(200, found) if found else self._send_error_json(400, "no such input_file_id")
        else:
            m = _BATCH.match(path)
            assert m is not None
            found = owner._cancel(m.group(1))
            self._send_json(200, found) if found else self._send_error_json(404, f"No batch {m.group(1)}")


class _BatchHTTPServer(_HTTPServer):
    owner: BatchServer

    def __init__(self, owner: ScriptedLLMServer) -> None:  # the base, with the batch handler
        self.owner = owner  # type: ignore[assignment]
        self._conns = set()
        self._conns_lock = threading.Lock()
        super(_HTTPServer, self).__init__(("127.0.0.1", 0), _BatchHandler)


class BatchServer(ScriptedLLMServer):
    """:class:`ScriptedLLMServer` plus the OpenAI files and batches endpoints (module docstring)."""

    def __init__(self, default: str = "I don't know.", latency: float = 0.0) -> None:
        super().__init__(default=default, latency=latency)
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> the batch object, in creation order
        self.lines: list[dict[str, Any]] = []  # every line of every batch created
        self.retrieves = 0  # GET /batches/{id} calls
        self.chat_calls = 0  # plain chat completions (not batch lines): what a run served from batches must not make
        self.polls_to_complete = 1  # retrieves in progress before a batch finishes (a large number: never)
        self._polls: dict[str, int] = {}
        self._line_faults: list[tuple[str, str, int]] = []  # (substring, message, status)
        self._expire: list[int] = []  # for the next batches: how many lines to answer before expiring
        self._fail: list[str] = []  # for the next batches: a validation error

    def start(self) -> BatchServer:
        if self._httpd is not None:
            return self
        httpd = _BatchHTTPServer(self)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"BatchServer:{httpd.server_port}", daemon=True)
        self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def __enter__(self) -> BatchServer:
        return self.start()

    # -- scripting --------------------------------------------------------

    def fail_line(self, when: str, message: str = "Scripted line failure", status: int = 400) -> None:
        """Batch lines whose last user message contains ``when`` fail inside the batch (written to its error file
        with ``status``); the batch itself completes."""
        with self._lock:
            self._line_faults.append((when.lower(), message, status))

    def expire_next(self, keep: int = 0) -> None:
        """The next batch created expires once finished: only its first ``keep`` lines are answered; the others go
        to the error file as ``batch_expired``."""
        with self._lock:
            self._expire.append(keep)

    def fail_next(self, message: str = "Scripted batch failure") -> None:
        """The next batch created fails as a whole (status ``failed``, ``errors`` holding ``message``)."""
        with self._lock:
            self._fail.append(message)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.files.clear()
            self.batches.clear()
            self.lines.clear()
            self._polls.clear()
            self._line_faults.clear()
            self._expire.clear()
            self._fail.clear()
            self.retrieves = 0
            self.chat_calls = 0
            self.polls_to_complete = 1

    # -- the endpoints ----------------------------------------------------

    def _handle_chat(self, handler: _Handler, body: dict[str, Any]) -> None:
        with self._lock:
            self.chat_calls += 1
        super()._handle_chat(handler, body)

    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:20]}"
        obj = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        with self._lock:
            self.files[file_id] = {"object": obj, "content": content}
        return obj

    def _create(self, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            stored = self.files.get(str(body.get("input_file_id")))
            if stored is None:
                return None
            lines = [json.loads(x) for x in stored["content"].decode().splitlines() if x.strip()]
            batch_id = f"batch_{uuid.uuid4().hex[:20]}"
            now = int(time.time())
            batch = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                "input_file_id": body.get("input_file_id"), "completion_window": body.get("completion_window", "24h"),
                "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
                "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
                "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
                "_lines": lines, "_expire": self._expire.pop(0) if self._expire else None,
                "_fail": self._fail.pop(0) if self._fail else None,
            }
            self.batches[batch_id] = batch
            self.lines.extend(lines)
            self._polls[batch_id] = 0
            return self._public(batch)

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _retrieve(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            self.retrieves += 1
            if batch is None:
                return None
            status = batch["status"]
            if status == "validating":
                if batch["_fail"] is not None:
                    batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                        {"code": "invalid_request", "message": batch["_fail"], "param": None, "line": None}]})
                else:
                    batch.update(status="in_progress", in_progress_at=int(time.time()))
            elif status == "in_progress":
                self._polls[batch_id] += 1
                finish = self._polls[batch_id] >= self.polls_to_complete
            else:
                finish = False
            if status != "in_progress" or not finish:
                return self._public(batch)
        self._finish(batch)  # outside the lock: the base's rules take it
        with self._lock:
            return self._public(batch)

    def _cancel(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            if batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelled", cancelled_at=int(time.time()))
            return self._public(batch)

    def _finish(self, batch: dict[str, Any]) -> None:
        """Answer the batch's lines (the first ``_expire`` only, when it expires) into its output and error files."""
        out, errors = [], []
        keep = batch["_expire"]
        for n, line in enumerate(batch["_lines"]):
            custom_id = line.get("custom_id")
            entry = {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id}
            if keep is not None and n >= keep:
                errors.append({**entry, "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}})
                continue
            body = line.get("body") or {}
            prompt = ""
            for message in reversed(body.get("messages") or []):
                if message.get("role") == "user":
                    prompt = str(message.get("content")).lower()
                    break
            fault = next((f for f in self._line_faults if f[0] in prompt), None)
            if fault is not None:
                errors.append({**entry, "response": {"status_code": fault[2], "request_id": uuid.uuid4().hex,
                                                     "body": _error_body(fault[2], fault[1])}, "error": None})
                continue
            out.append({**entry, "response": {"status_code": 200, "request_id": uuid.uuid4().hex,
                                              "body": self._completion(body)}, "error": None})

        def jsonl(rows: list[dict[str, Any]]) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in rows).encode()

        output = self._store_file(jsonl(out), "batch_output.jsonl", "batch_output")["id"] if out else None
        error = self._store_file(jsonl(errors), "batch_errors.jsonl", "batch_output")["id"] if errors else None
        now = int(time.time())
        with self._lock:
            batch.update(status="expired" if keep is not None else "completed", output_file_id=output,
                         error_file_id=error, finalizing_at=now,
                         request_counts={"total": len(batch["_lines"]), "completed": len(out), "failed": len(errors)},
                         **({"expired_at": now} if keep is not None else {"completed_at": now}))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion for one batch line, from the base server's answer rules (a line's failure is scripted
        by :meth:`fail_line`; the base's faults are for plain calls)."""
        _, decided, _ = self._decide(body)
        tool_reply = decided if isinstance(decided, ToolReply) else None
        reply = decided if isinstance(decided, str) else (decided.content or "")
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = tool_reply.words() if tool_reply else _word_count(reply)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or "scripted-model", "system_fingerprint": None,
                "choices": [{"index": 0, "message": tool_reply.message() if tool_reply else
                             {"role": "assistant", "content": reply}, "logprobs": None,
                             "finish_reason": "tool_calls" if tool_reply else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

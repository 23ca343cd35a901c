"""One shared path for the model calls of every xdist worker: the controller calls, the workers ask it.

Starting ``-n 8`` workers used to mean eight interpreters importing litellm (~3 s of CPU and ~170 MB each) before
the first request, on a machine that may have two cores: most of the time before the first request. Now the xdist
controller (which imports litellm once) serves the workers' model calls through a local socket
(``multiprocessing.connection``: a Unix socket, an auth key handed to the workers in ``workerinput``), with its own
:class:`~pytest_llmeval.providers.runner.ModelRunner`. A worker's runner still reads the exact cache itself (no
round trip for a cached answer); what it would send to litellm it sends to the controller instead, so a worker never
imports litellm for the model under test, its judge or its vision model. Grading, the sandbox, retrieval and the
offline ``local/`` models stay in the workers (CPU-bound: that is what the workers are for).

One process making every call also makes the run's budget, rate limits and circuit breakers exact (they were
per-process shares before). Each worker thread (the prefetch pool's) has its own connection, served by a thread of
its own in the controller, so the calls in flight are the workers' sum as before.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.core.errors import InfrastructureError

if TYPE_CHECKING:
    from pytest_llmeval.providers.runner import ModelRunner

__all__ = ["CallClient", "CallServer", "ServerAddress"]


@dataclass(frozen=True)
class ServerAddress:
    """Where a worker reaches the controller's call server (plain data: it travels in ``workerinput``)."""

    path: str
    authkey: str  # hex

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "authkey": self.authkey}

    @classmethod
    def from_dict(cls, data: Any) -> ServerAddress | None:
        if not isinstance(data, dict) or not data.get("path") or not data.get("authkey"):
            return None
        return cls(str(data["path"]), str(data["authkey"]))


class CallServer:
    """In the controller: answers the workers' ``complete`` and ``check_model`` requests with ``runner``."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._dir = tempfile.mkdtemp(prefix="llmeval-calls-")
        path = os.path.join(self._dir, "calls.sock")
        key = secrets.token_bytes(16)
        self._listener = Listener(path, family="AF_UNIX", authkey=key)
        self.address = ServerAddress(path, key.hex())
        self._closed = threading.Event()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="llmeval-calls", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):  # closed, or a client that failed the auth handshake
                if self._closed.is_set():
                    return
                continue
            with self._lock:
                if self._closed.is_set():  # accepted as the server closed: no thread will serve it
                    conn.close()
                    return
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="llmeval-calls-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        try:
            while not self._closed.is_set():
                try:
                    op, kwargs = conn.recv()
                except (EOFError, OSError):
                    return
                conn.send(self._answer(op, kwargs))
        except (OSError, EOFError):  # the worker went away mid-answer
            return
        finally:
            # Closed by this thread only, once out of the list: close() shuts down only what is listed, under the
            # same lock, so it never touches a descriptor closed here (and perhaps reused by then).
            with self._lock:
                self._connections.remove(conn)
            conn.close()

    def _answer(self, op: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
        try:
            if op == "complete":
                return "ok", self.runner.complete(**kwargs)
            if op == "check_model":
                return "ok", self.runner.check_model(kwargs["model"])
            return "error", InfrastructureError(f"unknown call server request {op!r}")
        except Exception as exc:  # ModelCallError, BudgetExhausted...: raised again in the worker
            return "error", _picklable(exc, kwargs.get("model"))

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for conn in self._connections:
                _shut_down(conn)  # wakes the thread serving it, which closes it
        Path(self.address.path).unlink(missing_ok=True)
        try:
            os.rmdir(self._dir)
        except OSError:
            pass


def _shut_down(conn: Connection) -> None:
    """End a connection's socket for both sides without closing its descriptor: the thread blocked reading it gets
    EOF and closes it itself. (Closing it from here raced that thread's own close: "Bad file descriptor" at the end
    of a run, or a descriptor closed twice after its number was reused.)"""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, ValueError):
        return
    with sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _picklable(exc: Exception, model: Any) -> Exception:
    """``exc`` if it survives pickling (the runner's errors do), else a ModelCallError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        from pytest_llmeval.providers.runner import ModelCallError

        return ModelCallError(str(model or "?"), f"{type(exc).__name__}: {exc}")


class CallClient:
    """In a worker: the controller's call server, one connection per thread."""

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self._local = threading.local()

    def _connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = Client(self.address.path, family="AF_UNIX", authkey=bytes.fromhex(self.address.authkey))
            self._local.conn = conn
        return conn

    def request(self, op: str, **kwargs: Any) -> Any:
        """The server's answer to ``op``; its error raised here. ModelCallError when the controller is gone."""
        try:
            conn = self._connection()
            conn.send((op, kwargs))
            status, value = conn.recv()
        except (OSError, EOFError) as exc:
            self._local.conn = None
            from pytest_llmeval.providers.runner import ModelCallError

            message = f"the run's call server (in the xdist controller) cannot be reached: {type(exc).__name__}: {exc}"
            raise ModelCallError(str(kwargs.get("model") or "?"), message) from None
        if status == "error":
            raise value
        return value

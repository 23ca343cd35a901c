"""A service the plugin starts for an ``http`` target (``serve:``), and stops at the end of the session.

:class:`Service` picks a free port on 127.0.0.1, puts it in the command, the URL and ``serve.env`` (``{port}``;
also ``$PORT``), starts the command in its own process group (``start_new_session``) with stdout and stderr in a
log file, and polls ``ready`` until it answers 2xx. A service that exits first, or is not ready within
``timeout_s``, is stopped and the :class:`TargetError` shows the last lines of its log. :meth:`Service.stop` sends
SIGTERM to the group, waits ``stop_timeout_s`` for the leader, then SIGKILLs the group -- also when the leader did
exit, so nothing the service started (workers, a reloader) outlives the session.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import Field

from pytest_llmeval.core.answer import TargetError
from pytest_llmeval.core.targets import TargetParams

if TYPE_CHECKING:
    import httpx

__all__ = ["LOG_TAIL", "ServeParams", "Service", "log_tail"]

LOG_TAIL = 40  # lines of a service's log shown when it fails


class ServeParams(TargetParams):
    """``serve:``: the command that starts the service (``{port}`` is a free port), polled at ``ready``."""

    command: str | list[str]
    ready: str = "/"
    timeout_s: float = Field(30.0, gt=0)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    stop_timeout_s: float = Field(5.0, ge=0)

    def argv(self, port: int) -> list[str]:
        """The command with ``{port}`` filled; ``python``/``python3`` is the interpreter running pytest (its
        virtual environment), not whichever ``python`` is first on PATH."""
        argv = shlex.split(self.command) if isinstance(self.command, str) else list(self.command)
        argv = [arg.replace("{port}", str(port)) for arg in argv]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read it: {exc})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty)"


class Service:
    """One started service. Not thread-safe by itself: its target calls it under its lock."""

    def __init__(self, params: ServeParams, name: str, cwd: Path, log_path: Path) -> None:
        self.params = params
        self.name = name  # the target's name, for messages
        self.cwd = cwd
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    def start(self, url: str, client: httpx.Client) -> str:
        """Start the service and wait until it is ready; the URL template with its port. TargetError (the
        service stopped) when it does not become ready."""
        serve = self.params
        self.port = port = free_port()
        url = url.replace("{port}", str(port))
        argv = serve.argv(port)
        env = {**os.environ, "PORT": str(port), **{k: v.replace("{port}", str(port)) for k, v in serve.env.items()}}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        shown = shlex.join(argv)
        with open(self.log_path, "wb") as log:
            log.write(f"$ {shown}  (cwd {self.cwd}, port {port})\n".encode())
            log.flush()
            try:
                self.process = subprocess.Popen(argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise TargetError(f"cannot start the service of {self.name}: {shown} (cwd {self.cwd}): "
                                  f"{exc}") from None
        if serve.ready.startswith(("http://", "https://")):
            ready = serve.ready.replace("{port}", str(port))
        else:
            base = urlsplit(url)
            ready = f"{base.scheme}://{base.netloc}/{serve.ready.lstrip('/')}"
        started = time.monotonic()
        deadline = started + serve.timeout_s
        last = "no reply yet"
        pause = 0.02
        while True:
            status = self.process.poll()
            if status is not None:
                self._failed(f"it exited with status {status} after {time.monotonic() - started:.1f} s")
            try:
                reply = client.get(ready, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                if 200 <= reply.status_code < 300:
                    return url
                last = f"HTTP {reply.status_code}"
            except Exception as exc:  # noqa: BLE001 - not listening yet: keep polling until the deadline
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                self._failed(f"still running; GET {ready} last gave {last}; stopped it")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)

    def _failed(self, why: str) -> None:
        self.stop()  # the log is complete once the process is gone
        raise TargetError(f"the service of {self.name} did not become ready in {self.params.timeout_s:g} s ({why}); "
                          f"its log ({self.log_path}):\n{log_tail(self.log_path)}")

    def died(self) -> str:
        """When the service has exited since it became ready: its status and log, for a call's error."""
        process = self.process
        if process is None or process.poll() is None:
            return ""
        return f"; its service exited with status {process.returncode}; its log ({self.log_path}):\n" \
               f"{log_tail(self.log_path)}"

    def stop(self) -> None:
        """SIGTERM to the process group, ``stop_timeout_s`` for the leader to exit, then SIGKILL to the group
        (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the leader's pid is the group's id
        if process.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=self.params.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # Also when the leader did exit: what it started and left behind goes with it. The group's id cannot be
        # reused while any member lives, so this reaches only this service's processes.
        _signal_group(pgid, signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered (uninterruptible sleep)
            pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

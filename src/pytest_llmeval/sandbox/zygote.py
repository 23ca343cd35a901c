"""The host side of the bwrap level's fork server (zygote_server.py has the other side and the guarantees).

Run as root, a :class:`~pytest_llmeval.sandbox.isolation.Sandbox` at the bwrap level starts one bubblewrap
sandbox with a small Python server in it, the first time it needs one, instead of one bwrap (and its helper
processes: the storage's ``unshare``/``mount``, ``prlimit``, ``nsenter``, ``setpriv``, the interpreter's start-up)
per work directory and per run. The isolation of each run is the one bwrap gave it before: its own pid, mount,
ipc and uts namespaces, its own sized tmpfs, its own uid, rlimits, no capabilities, the seccomp filter; the
network namespace (no interface but a loopback that is down, and no ``socket()`` at all) is the server's.
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

SERVER_SOURCE = Path(__file__).with_name("zygote_server.py")
BOXES = "/run/llmeval-boxes"
WORK = "/run/pytest-llmeval-box/work"  # as zygote_server.WORK
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class ZygoteGone(OSError):
    """The fork server is not running (any more): its runs cannot go on."""


def start(python: str, bwrap_args: Sequence[str], seccomp: bytes | None) -> Zygote:
    """A new fork server, its bwrap started from a thread that lives as long as this process.

    bwrap's ``--die-with-parent`` (``PR_SET_PDEATHSIG``) fires when the *thread* that started it ends, not the
    process: a server started from a worker thread (a grading or prefetch thread, a thread pool's) was SIGKILLed,
    and every run in flight with it, as soon as that thread finished, while other threads still used it.
    """
    global _STARTER
    with _STARTER_LOCK:
        if _STARTER is None or _STARTER[0] != os.getpid():  # a forked child has none of its parent's threads
            requests: queue.SimpleQueue[tuple[Callable[[], Zygote], Future[Zygote]]] = queue.SimpleQueue()
            threading.Thread(target=_starter, args=(requests,), name="llmeval-sandbox-starter", daemon=True).start()
            _STARTER = (os.getpid(), requests)
        requests = _STARTER[1]
    future: Future[Zygote] = Future()
    requests.put((lambda: Zygote(python, bwrap_args, seccomp), future))
    return future.result()


def _starter(requests: queue.SimpleQueue[tuple[Callable[[], Zygote], Future[Zygote]]]) -> None:
    while True:  # never ends: the servers it started die with the process, not with a thread
        make, future = requests.get()
        try:
            future.set_result(make())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)


_STARTER: tuple[int, queue.SimpleQueue[tuple[Callable[[], Zygote], Future[Zygote]]]] | None = None
_STARTER_LOCK = threading.Lock()


class Zygote:
    """One fork server in one bwrap; thread-safe. ``close()`` (or our exit, even by SIGKILL) ends it and with it
    every run and every box. Start one with :func:`start`."""

    def __init__(self, python: str, bwrap_args: Sequence[str], seccomp: bytes | None) -> None:
        self.owner = os.getpid()
        self._lock = threading.Lock()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ready_r, ready_w = os.pipe()
        info_r, info_w = os.pipe()
        try:
            args = ["bwrap", *bwrap_args, "--info-fd", str(info_w), "--",
                    python, "-I", "-c", SERVER_SOURCE.read_text(), (seccomp or b"").hex(),
                    str(theirs.fileno()), str(ready_w)]
            self.proc = subprocess.Popen(  # noqa: S603 - our own command line
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=SAFE_ENV,
                start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(), ready_w, info_w))
        finally:
            theirs.close()
            os.close(ready_w)
            os.close(info_w)
        try:
            with os.fdopen(info_r, "rb") as info:
                pid = json.loads(info.read() or b"{}").get("child-pid")
            ready = os.read(ready_r, 16)
        finally:
            os.close(ready_r)
        if pid is None or ready != b"ready\n":
            assert self.proc.stderr is not None
            why = self.proc.stderr.read().decode(errors="replace").strip()
            self.close()
            raise ZygoteGone(f"the sandbox's fork server did not start: {why or 'no reason given'}")
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        self.pid = int(pid)  # the sandbox's pid 1, in its mount namespace: /proc/<pid>/root is its root

    def _call(self, request: dict) -> dict:
        try:
            with self._lock:
                self.sock.send(json.dumps(request).encode())
                answer = self.sock.recv(1 << 16)
        except OSError as exc:
            raise ZygoteGone(f"the sandbox's fork server is gone ({exc})") from None
        if not answer:
            raise ZygoteGone("the sandbox's fork server is gone")
        reply: dict = json.loads(answer)
        if "error" in reply:
            raise ZygoteGone(f"the sandbox's fork server failed: {reply['error']}")
        return reply

    def open_box(self, disk_mb: int, max_file_mb: int, uid: int) -> tuple[int, Path]:
        """A fresh storage (work, tmp, shm, out) for one work directory: its number and its path from here."""
        box = int(self._call({"op": "open", "disk_mb": disk_mb, "max_file_mb": max_file_mb, "uid": uid})["box"])
        return box, Path(f"/proc/{self.pid}/root") / BOXES.lstrip("/") / str(box)

    def close_box(self, box: int) -> None:
        """Unmount a box; not waited for (the server does it before its next request)."""
        try:
            with self._lock:
                self.sock.send(json.dumps({"op": "close", "box": box}).encode())
        except OSError as exc:
            raise ZygoteGone(f"the sandbox's fork server is gone ({exc})") from None

    def run(self, box: int, uid: int, argv: Sequence[str], env: dict[str, str], rlimits: list[tuple[str, int, int]],
            fds: tuple[int, int, int], *, in_process: bool) -> int:
        """Start one run; returns the descriptor its 4-byte status will come on (EOF: it died unreported)."""
        status_r, status_w = os.pipe()
        request = {"op": "run", "box": box, "uid": uid, "argv": list(argv), "env": env, "rlimits": rlimits,
                   "inproc": in_process}
        try:
            with self._lock:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [*fds, status_w])
        except OSError as exc:
            os.close(status_r)
            raise ZygoteGone(f"the sandbox's fork server is gone ({exc})") from None
        finally:
            os.close(status_w)
        return status_r

    @staticmethod
    def wait(status_r: int, stdin_w: int, stdin: bytes, timeout_s: float, kill: Callable[[], object]) -> \
            tuple[int | None, bool]:
        """Feed a run its stdin and wait for its status (None: it was never reported); True if it timed out.

        Both descriptors are closed. At the deadline, and every 10 ms after it until the status comes, ``kill()``
        is called, from this thread: a kill never outlives its run (the run's uid may be the next run's at once).
        """
        deadline = time.monotonic() + timeout_s
        expired = False
        data = memoryview(stdin)
        poller = select.poll()
        poller.register(status_r, select.POLLIN)
        if stdin_w >= 0:
            if data:
                os.set_blocking(stdin_w, False)  # a program that reads nothing must not hold us past the deadline
                poller.register(stdin_w, select.POLLOUT)
            else:
                os.close(stdin_w)
                stdin_w = -1
        status = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    expired = True
                    kill()
                for fd, _event in poller.poll(10 if expired else max(1, math.ceil(left * 1000))):
                    if fd == status_r:
                        chunk = os.read(status_r, 4 - len(status))
                        if not chunk:
                            return None, expired
                        status += chunk
                        if len(status) == 4:
                            return int(struct.unpack("i", status)[0]), expired
                        continue
                    try:
                        data = data[os.write(stdin_w, data):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin, or is gone: the rest is not read
                        data = data[:0]
                    if not data:
                        poller.unregister(stdin_w)
                        os.close(stdin_w)
                        stdin_w = -1
        finally:
            os.close(status_r)
            if stdin_w >= 0:
                os.close(stdin_w)

    def alive(self) -> bool:
        return self.proc.poll() is None and os.getpid() == self.owner

    def close(self) -> None:
        if os.getpid() != self.owner:  # a forked copy of us: the server is the parent's
            return
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

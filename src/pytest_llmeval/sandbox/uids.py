"""Sandbox uids, leased machine-wide one run at a time, and the killing of whatever runs under one."""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pytest_llmeval.sandbox.limits import SandboxUnavailable

UID_BASE = 61000  # sandbox uids: UID_BASE .. UID_BASE + UID_RANGE - 1, each leased to one run at a time
UID_RANGE = 2048
UIDS_PER_PROCESS = 64  # where a worker starts looking for a free uid


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0


class _UidPool:
    """Sandbox uids leased machine-wide: no two concurrent runs share one, whichever process they are in.

    RLIMIT_NPROC counts per uid and the reaper kills every process of its uid after a run, so a uid must be
    exclusive to one run, across threads, xdist workers and separate pytest sessions (a pytester session
    inside a test run, two CI jobs on one machine). Each lease is an exclusive ``flock`` on a file named after
    the uid; the kernel drops it when the process dies, so a crashed run never leaks its uid.
    """

    def __init__(self, base: int = UID_BASE, size: int = UID_RANGE, lock_dir: Path | None = None) -> None:
        self.base, self.size = base, size
        # Root leases real uids: one directory for the whole machine, whatever TMPDIR a session has.
        default = Path("/tmp/pytest-llmeval-uids") if os.geteuid() == 0 else \
            Path(tempfile.gettempdir()) / f"pytest-llmeval-uids-{os.geteuid()}"
        self.lock_dir = lock_dir or default
        self._lock = threading.Lock()
        self._held: set[int] = set()

    @contextmanager
    def take(self) -> Iterator[int]:
        fd, uid = self._acquire()
        root = os.geteuid() == 0
        try:
            if root:
                # The lock file holds a byte while its uid is leased, and is emptied at a release: every run reaps
                # its processes before it returns, so only a holder that died (its byte still there) can have left
                # something running under the uid. Only then is /proc scanned (~1 ms, on each lease before).
                if os.pread(fd, 1, 0):
                    _reap_uid(uid)
                else:
                    os.pwrite(fd, b"x", 0)
            yield uid
        finally:
            with self._lock:
                self._held.discard(uid)
            try:
                if root:
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # releases the flock

    def _acquire(self) -> tuple[int, int]:
        self.lock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        start = (UIDS_PER_PROCESS * _worker_index() + os.getpid()) % self.size  # spread the search out
        with self._lock:
            for i in range(self.size):
                uid = self.base + (start + i) % self.size
                if uid in self._held:
                    continue
                fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held.add(uid)
                return fd, uid
        raise SandboxUnavailable(f"all {self.size} sandbox uids ({self.base}..{self.base + self.size - 1}) "
                                 "are in use by concurrent runs on this machine")


_UIDS = _UidPool()


def _uid_pids(uid: int) -> list[int]:
    """Processes (zombies included) whose real uid is ``uid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                # /proc/<pid> belongs to the process's uid (setpriv set real and effective uid alike).
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_uid(uid: int) -> list[int]:
    """SIGKILL every process of the sandbox uid; returns the pids found."""
    pids = _uid_pids(uid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _reap_uid(uid: int, wait_s: float = 3.0) -> None:
    """Make sure nothing of the sandbox uid outlives its run.

    A pid namespace is torn down asynchronously after its init dies, and processes that are being killed (or
    are zombies) still count against RLIMIT_NPROC for the next run with this uid: kill what is left and wait.
    """
    deadline = time.monotonic() + wait_s
    while _kill_uid(uid):
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)

"""``.llmeval/batches.json``, the batches of ``--llm-batch`` runs, shared by every run of a checkout (two pytest
processes, shards sharing a directory) and kept across runs (a killed run's batches are polled by the next).

Every read-modify-write holds an exclusive ``fcntl.flock`` on the sibling ``batches.json.lock`` and reads the file
afresh (:meth:`BatchStore.locked`): a run never writes back an old copy over a batch another run has just added,
and a batch is collected once (a run that finds it collected by another takes its outcome from the file).

What the file holds: each batch (id, provider, endpoint, model, round, cache keys, status, counts; the run that
submitted it; once collected, its failed lines, its expired ones and its cost), how often each request expired,
and the runs whose batch phase is going on (``runs``: a finished batch is forgotten only when no other run may
still be waiting for it). API keys are never written: ids, models, endpoints and cache keys only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["BatchStore", "new_token"]

VERSION = 2
#: A run registered on another host counts as gone this long after it started (no pid to ask there).
FOREIGN_RUN_S = 2 * 86400.0


def new_token() -> str:
    """A run's name in the file: pid, host and a random part (one process may run several pytester sessions)."""
    return f"{os.getpid()}@{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


def _alive(entry: dict[str, Any]) -> bool:
    """Whether the run of a ``runs`` entry may still be going (its process is, on this host)."""
    if entry.get("host") != socket.gethostname():
        return time.time() - float(entry.get("started", 0)) < FOREIGN_RUN_S
    try:
        os.kill(int(entry.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class BatchStore:
    """The batches file: read on creation; :meth:`locked` for every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.batches: list[dict[str, Any]] = []
        self.expired: dict[str, int] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        self.batches, self.expired, self.runs = [], {}, {}
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.batches = list(data.get("batches", []))
            self.expired = dict(data.get("expired", {}))
            self.runs = dict(data.get("runs", {}))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise pytest.UsageError(f"--llm-batch: cannot read {self.path}: {exc}; delete it to start afresh") from None

    @contextmanager
    def locked(self) -> Iterator[BatchStore]:
        """Hold the lock, read the file afresh, and write it back on leaving (not when the block raised)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            _lock(lock.fileno())
            try:
                self._load()
                yield self
                self.save()
            finally:
                _unlock(lock.fileno())

    def save(self) -> None:
        """Write the file (whole, then renamed: a reader never sees half of it). Call it holding the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": VERSION, "batches": self.batches, "expired": self.expired,
                                   "runs": self.runs}, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    # ---- reading (under the lock, or of the copy read last)

    def pending(self) -> list[dict[str, Any]]:
        """The batches whose results are not in the cache yet."""
        return [b for b in self.batches if not b.get("collected")]

    def pending_keys(self) -> dict[str, str]:
        """Cache key -> the id of the pending batch it is in."""
        return {k: b["id"] for b in self.pending() for k in b["keys"]}

    def find(self, batch_id: str) -> dict[str, Any] | None:
        return next((b for b in self.batches if b["id"] == batch_id), None)

    def alive(self, token: str | None) -> bool:
        """Whether the run ``token`` is registered and may still be going."""
        entry = self.runs.get(token or "")
        return entry is not None and _alive(entry)

    # ---- a run's start and end (under the lock)

    def start_run(self, token: str) -> None:
        """Register the run ``token``. The runs that are gone are forgotten; with no other run going, so are the
        finished batches and the expiry counts (those requests are tried again); the batches still running are
        kept, to be polled by whichever run needs their answers."""
        self.runs = {t: e for t, e in self.runs.items() if _alive(e)}
        if not self.runs:
            self.batches = self.pending()
            if not self.batches:  # nothing to resume: a request that expired in an earlier run gets its tries again
                self.expired = {}
        self.runs[token] = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def end_run(self, token: str) -> None:
        self.runs.pop(token, None)


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one run at a time per checkout)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(fd, fcntl.LOCK_UN)

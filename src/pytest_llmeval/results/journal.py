"""The run journal: every finished case is appended to ``.llmeval/journal/<run id>/<process>.jsonl`` the moment
it completes, by the process that ran it, so a killed worker, a killed run or a Ctrl-C loses no finished case.

``--llm-resume`` starts a new run that remembers the runs it continues (``resumed_from``): cases finished in
any of them (passed, failed or unscored; errors and skips run again) are deselected, and the final results
are the journals' results plus the new ones. A new run never appends to an old run's files, so workers
collecting in parallel all see the same finished set. A truncated or garbled line (a run killed mid-write) is
skipped with a warning; the rest of the file still counts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

DONE_OUTCOMES = ("passed", "failed", "unscored")


class LLMEvalJournalWarning(UserWarning):
    """A journal file could not be read completely."""


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def start_run(base: Path, resume: bool, pointer: str = "latest") -> dict[str, Any]:
    """Decide this run's id (on the controller): ``{"run_id", "resumed_from": [older ids, newest first]}``,
    and point ``pointer`` at it (``latest``; a shard's own, ``latest-shard-2of4``, so that shards sharing the
    directory each resume their own run)."""
    chain: list[str] = []
    if resume:
        previous = read_latest(base, pointer)
        if previous is not None:
            chain = [previous["run_id"], *previous.get("resumed_from", [])]
    run = {"run_id": new_run_id(), "resumed_from": chain}
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{pointer}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(run) + "\n", encoding="utf-8")
    tmp.replace(base / pointer)
    return run


def read_latest(base: Path, pointer: str = "latest") -> dict[str, Any] | None:
    try:
        data = json.loads((base / pointer).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None


def read_run(base: Path, run_id: str) -> list[dict[str, Any]]:
    """Every readable result of one run, in file order; unreadable lines are skipped with a warning."""
    out: list[dict[str, Any]] = []
    folder = base / run_id
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        bad = 0
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(data, dict) and data.get("nodeid"):
                    out.append(data)
                else:
                    bad += 1
        if bad:
            warnings.warn(LLMEvalJournalWarning(f"{path}: skipped {bad} unreadable line(s) (a run killed mid-write?); "
                                                "those cases run again"), stacklevel=2)
    return out


def finished(base: Path, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """nodeid -> the latest finished result over the runs (newest first in ``run_ids``)."""
    done: dict[str, dict[str, Any]] = {}
    for run_id in reversed(run_ids):  # oldest first: newer results replace older ones
        for result in read_run(base, run_id):
            if result.get("outcome") in DONE_OUTCOMES:
                done[str(result["nodeid"])] = result
            else:
                done.pop(str(result["nodeid"]), None)
    return done


# One encoder for every line (json.dumps would build a new one per call); C-accelerated, as json.dumps is.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, check_circular=False)


def encode_line(result: dict[str, Any]) -> str:
    """A case's journal line (without the newline): compact JSON, non-ASCII as is, unless the text holds a lone
    surrogate (which UTF-8 cannot write): then \\u-escaped, which reads back the same."""
    text = _ENCODER.encode(result)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(result, default=str)
    return text


class Journal:
    """Appends one JSON line per finished case with a single write(2) to an O_APPEND descriptor, at once.

    No Python-level buffer: once ``append`` returns, the line is the kernel's, so it survives a SIGKILL of the
    process (not a power cut: there is no fsync per case, which would cost milliseconds each). Serialising the
    line, not writing it, is what costs: about 10 us for a typical case."""

    def __init__(self, base: Path, run_id: str, writer: str) -> None:
        self.path = base / run_id / f"{writer}.jsonl"
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, result: dict[str, Any]) -> str:
        """Write the line; return its JSON text (without the newline)."""
        text = _ENCODER.encode(result)
        try:
            data = (text + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in an answer: \u-escaped, it reads back the same
            text = json.dumps(result, default=str)
            data = (text + "\n").encode("ascii")
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
                self._fd = os.open(self.path, flags, 0o666)
            view = memoryview(data)
            while view:  # a regular file takes it all at once; a short write (a full disk) is finished or raises
                view = view[os.write(self._fd, view):]
        return text

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

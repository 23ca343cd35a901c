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
from typing import IO, Any

DONE_OUTCOMES = ("passed", "failed", "unscored")


class LLMEvalJournalWarning(UserWarning):
    """A journal file could not be read completely."""


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def start_run(base: Path, resume: bool) -> dict[str, Any]:
    """Decide this run's id (on the controller): ``{"run_id", "resumed_from": [older ids, newest first]}``,
    and point ``latest`` at it."""
    chain: list[str] = []
    if resume:
        previous = read_latest(base)
        if previous is not None:
            chain = [previous["run_id"], *previous.get("resumed_from", [])]
    run = {"run_id": new_run_id(), "resumed_from": chain}
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"latest.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(run) + "\n", encoding="utf-8")
    tmp.replace(base / "latest")
    return run


def read_latest(base: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((base / "latest").read_text(encoding="utf-8"))
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


class Journal:
    """Appends one JSON line per finished case; flushed at once (a killed process keeps what it flushed)."""

    def __init__(self, base: Path, run_id: str, writer: str) -> None:
        self.path = base / run_id / f"{writer}.jsonl"
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    def append(self, result: dict[str, Any]) -> None:
        line = json.dumps(result, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

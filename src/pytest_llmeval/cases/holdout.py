"""Holdout discipline: the test split runs rarely, on request, and every evaluation of it is on record.

Cases carry ``split: dev | test`` (default dev). Only ``--llm-split test`` (or ``all``) runs the test split. Each
run that evaluated test-split cases appends one line per suite to the ledger, ``.llmeval/holdout.jsonl``
(commit it: it is the team's record): date, run id, model, the hash of what the team tunes (system prompts,
prompt templates, params of the suite's test cases) and the results. Before appending, the run compares that hash
with the suite's previous evaluation: prompts changed since the test split was last looked at means the test
set is being used to tune, and the summary says so.

``assign_splits`` (``llmeval split``) assigns splits at the problem level, deterministically: cases of one
problem (the same ``problem`` field, else the same normalised text, optionally near-duplicates by embedding)
share one split, so variants of a problem never straddle it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEDGER_NAME = "holdout.jsonl"


# ----------------------------------------------------------------------------------------------- ledger


def case_prompt_hash(case: Any) -> str:
    """What a team tunes, for one case: its system prompt, the prompt template and params (not the case data,
    so adding test cases is not "tuning")."""
    raw = json.dumps([case.system, case.template if case.template is not None else f"<default {case.kind} prompt>",
                      case.params], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def prompt_hash(case_hashes: Iterable[str]) -> str:
    """A suite's prompt hash: over the distinct per-case hashes (order and case count do not matter)."""
    return hashlib.sha256("\n".join(sorted(set(case_hashes))).encode()).hexdigest()[:16]


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries; a torn or foreign line is skipped (the ledger is a record, never a crash)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "suite" in entry:
            out.append(entry)
    return out


@dataclass
class HoldoutEval:
    """One suite's test split, as evaluated in this run."""

    suite: str
    model: str
    prompt_hash: str
    counts: dict[str, int] = field(default_factory=dict)
    previous: list[dict[str, Any]] = field(default_factory=list)  # earlier ledger entries of this suite

    @property
    def pass_rate(self) -> float | None:
        graded = self.counts.get("passed", 0) + self.counts.get("failed", 0)
        return round(self.counts.get("passed", 0) / graded, 6) if graded else None

    @property
    def changed_since(self) -> dict[str, Any] | None:
        """The last earlier evaluation, when the prompts differ from it (tuning on the test set)."""
        if self.previous and self.previous[-1].get("prompt_hash") != self.prompt_hash:
            return self.previous[-1]
        return None

    def entry(self, run_id: str | None, split: str) -> dict[str, Any]:
        return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "run_id": run_id,
                "suite": self.suite, "model": self.model, "split": split, "prompt_hash": self.prompt_hash,
                "cases": sum(self.counts.values()), **self.counts, "pass_rate": self.pass_rate,
                "evaluation": len(self.previous) + 1}


def record(ledger: Path, evaluated: list[HoldoutEval], run_id: str | None, split: str) -> None:
    """Append this run's evaluations (one line each, one write: concurrent runs never interleave a line)."""
    if not evaluated:
        return
    ledger.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(e.entry(run_id, split), sort_keys=True) + "\n" for e in evaluated)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def evaluations(results: list[Any], ledger: Path) -> list[HoldoutEval]:
    """The test-split suites this run evaluated (results with a passed/failed/... outcome on test-split cases),
    each with its earlier ledger entries."""
    earlier = read_ledger(ledger)
    groups: dict[tuple[str, str], list[Any]] = {}
    for r in results:
        if getattr(r, "split", "dev") == "test" and r.outcome in ("passed", "failed", "unscored", "error"):
            groups.setdefault((r.suite, r.model), []).append(r)
    out = []
    for (suite, model), rs in sorted(groups.items()):
        ev = HoldoutEval(suite, model, prompt_hash(r.prompt_hash or "hand-written" for r in rs),
                         previous=[e for e in earlier if e.get("suite") == suite])
        for r in rs:
            ev.counts[r.outcome] = ev.counts.get(r.outcome, 0) + 1
        out.append(ev)
    return out


def warning_lines(evaluated: list[HoldoutEval]) -> list[tuple[str, bool]]:
    """Summary lines: (text, loud). Loud when the prompts changed since the suite's last test evaluation."""
    lines: list[tuple[str, bool]] = []
    for ev in evaluated:
        n = len(ev.previous) + 1
        rate = "n/a" if ev.pass_rate is None else f"{ev.pass_rate:.1%}"
        lines.append((f"holdout: test split of {ev.suite} [{ev.model}] evaluated ({rate}); evaluation #{n} in the "
                      "ledger", False))
        last = ev.changed_since
        if last is not None:
            lines.append((f"WARNING: the test split of {ev.suite} was evaluated again after its prompts changed "
                          f"(last evaluated {last.get('date')} with prompt hash {last.get('prompt_hash')}, now "
                          f"{ev.prompt_hash}): tuning on the test set makes its score optimistic; tune on dev",
                          True))
    return lines


# ------------------------------------------------------------------------------------------ assignment

_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Problem identity for grouping: lowercase words and digits only (punctuation, spacing, case ignored)."""
    return " ".join(_WORD.findall(text.lower()))


def problem_text(case: Any, by: str | None) -> str:
    f = case.fields
    if by:
        value = f.get(by)
        return normalise(json.dumps(value, sort_keys=True) if not isinstance(value, str) else value) \
            if value is not None else f"<no {by}: {case.id}>"
    if f.get("problem") is not None:
        return normalise(str(f["problem"]))
    return normalise(str(f.get("question") or f.get("input") or f.get("prompt") or case.prompt))


def bucket(key: str, seed: int) -> float:
    """A stable number in [0, 1) for a problem: the same problem lands in the same split on every machine, and
    adding cases never moves an existing problem."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def group(keys: list[str], vectors: Any = None, threshold: float | None = None) -> list[int]:
    """Group index per item: equal keys share a group; with vectors, cosine >= threshold joins groups too."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        union(i, first.setdefault(k, i))
    if vectors is not None and threshold is not None and len(keys) > 1:
        import numpy as np

        v = np.asarray(vectors, dtype=np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        sims = v @ v.T
        for i, j in zip(*np.nonzero(np.triu(sims >= threshold, k=1)), strict=True):
            union(int(i), int(j))
    return [find(i) for i in range(len(keys))]


@dataclass
class Assignment:
    case: Any
    split: str
    group: int
    kept: bool  # the case already had a split that was kept


def assign_splits(cases: list[Any], *, test_fraction: float, seed: int = 0, by: str | None = None,
                  vectors: Any = None, threshold: float | None = None, explicit: dict[str, str] | None = None,
                  force: bool = False) -> list[Assignment]:
    """Split assignment at the problem level. ``explicit`` maps case id -> the split written in the file: kept
    unless ``force`` (a case once in the test split stays there: the holdout is never silently shrunk), and a
    group with any test case goes to test as a whole, so a problem never straddles the split."""
    explicit = explicit or {}
    keys = [problem_text(c, by) for c in cases]
    groups = group(keys, vectors, threshold)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list[Assignment] = [None] * len(cases)  # type: ignore[list-item]
    for g, idx in members.items():
        key = min(keys[i] for i in idx)  # the group's identity: stable whatever order the cases come in
        chosen = "test" if bucket(key, seed) < test_fraction else "dev"
        if not force:
            written = {explicit.get(cases[i].id) for i in idx} - {None}
            if written:  # a new case joins its problem's split; a straddling problem goes to test whole
                chosen = "test" if "test" in written else "dev"
        for i in idx:
            out[i] = Assignment(cases[i], chosen, g, not force and explicit.get(cases[i].id) == chosen)
    return out


_PROMPT_HASHES: dict[tuple[Any, ...], str] = {}


def cached_prompt_hash(case: Any) -> str:
    """holdout.case_prompt_hash of the case, computed once per distinct system prompt, template and params (the
    cases of a suite mostly share them)."""
    try:
        # With the types: 0, 0.0 and False are equal keys but different JSON.
        key = (case.system, case.template, case.kind, tuple((k, type(v), v) for k, v in case.params.items()))
        hash(key)
    except TypeError:  # a list or mapping among the params
        return case_prompt_hash(case)
    found = _PROMPT_HASHES.get(key)
    if found is None:
        if len(_PROMPT_HASHES) >= 4096:
            _PROMPT_HASHES.clear()
        found = _PROMPT_HASHES[key] = case_prompt_hash(case)
    return found

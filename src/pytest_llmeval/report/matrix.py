"""The HTML report's data model: a matrix of cases x models (and the baseline), with the cases whose outcome
flipped first, packed into one compact JSON document that the page's script filters and pages through.

Rows are cases (suite, case id, and the stage of a two-stage code case); cells are the results of one model on a
case. The payload is columnar (one list per field, cells in row order) and every string goes once into a table
of strings that fields point into by index: the same prompt asked of three models, the same check reason on a
thousand cases, a suite name, are stored once. Texts (prompts, answers, messages, reasons) are cut at a stated
limit (:func:`text_limit`); the full text stays in results.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "unscored", "error", "skipped")
GRADED = ("passed", "failed")

# A row's flips, as bits (a row may have several); the rows are shown in RANKS order.
REGRESSED = 1  # passed in the baseline, fails now (some model)
IMPROVED = 2  # failed in the baseline, passes now
DISAGREE = 4  # passes with one model and fails with another, now
# Checks' verdicts in the payload.
CHECK_FAIL, CHECK_PASS, CHECK_UNSCORED, CHECK_SKIPPED = 0, 1, 2, 3

TEXT_LIMIT = 2000  # characters of a prompt, answer, message or reason kept in the report ...
LARGE_TEXT_LIMIT = 500  # ... or these, in a report of more than LARGE_RUN results
LARGE_RUN = 20_000


def text_limit(results: int) -> int:
    """Characters of each text the report keeps, for a run of ``results`` case results (the full texts are in
    results.json): the report of a 100,000-case run stays a file a browser opens."""
    return LARGE_TEXT_LIMIT if results > LARGE_RUN else TEXT_LIMIT


BaselineMap = dict[tuple[str, str, str], dict[str, Any]]


def flips(now: dict[str, str], before: dict[str, str | None]) -> int:
    """The flip bits of a row: ``now`` maps each model to its outcome, ``before`` each model to its baseline
    outcome (None: not in the baseline). Only graded outcomes (passed, failed) flip, as the gate counts them: an
    error or an unscored judge is not a regression."""
    bits = 0
    for model, outcome in now.items():
        was = before.get(model)
        if was in GRADED and outcome in GRADED and was != outcome:
            bits |= REGRESSED if was == "passed" else IMPROVED
    graded = {o for o in now.values() if o in GRADED}
    if len(graded) == 2:
        bits |= DISAGREE
    return bits


def rank(bits: int, outcomes: Iterable[str]) -> int:
    """Where a row goes: regressions vs the baseline, then improvements, then models that disagree, then rows
    with a failure or an error, then the rest."""
    if bits & REGRESSED:
        return 0
    if bits & IMPROVED:
        return 1
    if bits & DISAGREE:
        return 2
    return 3 if any(o in ("failed", "error") for o in outcomes) else 4


def gate_baseline(doc: dict[str, Any]) -> BaselineMap:
    """What the gate recorded in results.json when the baseline file itself cannot be read: the cases that passed
    before and fail now, per suite x model (the gate keeps no other per-case outcome)."""
    out: BaselineMap = {}
    for v in (doc.get("gate") or {}).get("suites") or []:
        for f in v.get("flipped") or []:
            out[(str(v["suite"]), str(v["model"]), str(f["case_id"]))] = {"outcome": "passed",
                                                                          "score": f.get("score_before")}
    return out


def find_baseline(doc: dict[str, Any], root: Path, path: Path | None = None) -> tuple[BaselineMap | None, str]:
    """The per-case baseline to compare with: ``path`` if given, else the file the gate used (results.json's
    ``gate.baseline``, relative to ``root`` or the working directory), else what the gate recorded. Returns the
    map (None: no baseline at all) and a line saying where it came from."""
    from pytest_llmeval.results.gate import GateError, load_baseline

    named = path or (Path(str((doc.get("gate") or {}).get("baseline"))) if (doc.get("gate") or {}).get("baseline")
                     else None)
    if named is not None:
        for candidate in ([named] if named.is_absolute() else [root / named, Path.cwd() / named]):
            if candidate.is_file():
                try:
                    return load_baseline(candidate), f"baseline {named}"
                except GateError:
                    if path is not None:
                        raise
        if path is not None:
            raise GateError(f"cannot read the baseline {path}: no such file")
    recorded = gate_baseline(doc)
    if recorded:
        return recorded, (f"baseline {named} not found: only the gate's pass -> fail flips are known"
                          if named else "the gate's pass -> fail flips")
    return None, "no baseline"


class Strings:
    """The payload's table of strings: each distinct string once, cut at the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.index: dict[str, int] = {}
        self.table: list[str] = []
        self.cut: dict[int, int] = {}  # index -> the text's full length, for the texts that were cut

    def __call__(self, text: Any) -> int:
        if text is None or text == "":
            return -1
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False, default=str)
        i = self.index.get(text)
        if i is None:
            i = self.index[text] = len(self.table)
            if len(text) > self.limit:
                self.cut[i] = len(text)
                text = text[:self.limit]
            self.table.append(text)
        return i


def _round(x: Any, digits: int) -> float | None:
    return round(float(x), digits) if isinstance(x, int | float) and math.isfinite(x) else None


def _check_verdict(k: dict[str, Any]) -> int:
    if k.get("unscored"):
        return CHECK_UNSCORED
    if k.get("skipped"):
        return CHECK_SKIPPED
    return CHECK_PASS if k.get("passed") else CHECK_FAIL


@dataclass
class Row:
    suite: str
    case_id: str
    stage: str | None
    cells: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (index in doc.cases, case)
    bits: int = 0
    rank: int = 4


@dataclass
class Matrix:
    """Cases x models: ``rows`` in display order (flipped first), ``models`` in the run's order."""

    models: list[str]
    suites: list[str]
    rows: list[Row]
    baseline: BaselineMap | None
    baseline_note: str

    def base_outcome(self, row: Row, model: str) -> str | None:
        if self.baseline is None:
            return None
        entry = self.baseline.get((row.suite, model, row.case_id))
        return None if entry is None else entry.get("outcome")

    def counts(self) -> dict[str, int]:
        return {"regressed": sum(1 for r in self.rows if r.bits & REGRESSED),
                "improved": sum(1 for r in self.rows if r.bits & IMPROVED),
                "disagree": sum(1 for r in self.rows if r.bits & DISAGREE)}


def build_matrix(doc: dict[str, Any], baseline: BaselineMap | None, baseline_note: str = "") -> Matrix:
    """Group the run's case results into rows (one per suite, case id and stage), mark their flips against the
    baseline and between models, and order them: flipped first, then the failing, then the rest, each group in
    the run's order."""
    models = [str(m) for m in (doc.get("run") or {}).get("models") or []]
    suites: list[str] = []
    rows: dict[tuple[str, str, str], Row] = {}
    for i, c in enumerate(doc.get("cases") or []):
        suite, case_id, model = str(c.get("suite")), str(c.get("case_id")), str(c.get("model"))
        if model not in models:
            models.append(model)
        key = (suite, case_id, str(c.get("stage") or ""))
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(suite, case_id, c.get("stage"))
            if suite not in suites:
                suites.append(suite)
        row.cells.append((i, c))
    matrix = Matrix(models, suites, [], baseline, baseline_note)
    for row in rows.values():
        now = {str(c.get("model")): str(c.get("outcome")) for _, c in row.cells}
        before = {m: matrix.base_outcome(row, m) for m in now}
        row.bits = flips(now, before)
        row.rank = rank(row.bits, now.values())
    matrix.rows = sorted(rows.values(), key=lambda r: r.rank)  # stable: the run's order within a rank
    return matrix


def payload(matrix: Matrix, limit: int, extras: Callable[[int], int]) -> dict[str, Any]:
    """The matrix as the page's script reads it: columnar, strings deduplicated into ``S``. ``extras(i)`` is the
    index of the server-rendered drill-down (a ``<template>``) of ``doc.cases[i]``, or -1."""
    s = Strings(limit)
    model_index = {m: k for k, m in enumerate(matrix.models)}
    suite_index = {m: k for k, m in enumerate(matrix.suites)}
    outcome_index = {o: k for k, o in enumerate(OUTCOMES)}
    tags: list[str] = []
    tag_index: dict[str, int] = {}
    rows: dict[str, list[Any]] = {k: [] for k in ("suite", "id", "stage", "tags", "flip", "first", "file")}
    cells: dict[str, list[Any]] = {k: [] for k in ("model", "outcome", "score", "latency", "cost", "tokens",
                                                   "prompt", "answer", "message", "checks", "base", "x", "cached",
                                                   "target", "flaky")}
    for row in matrix.rows:
        first_case = row.cells[0][1]
        row_tags: list[int] = []
        for _, c in row.cells:
            for t in c.get("tags") or []:
                t = str(t)
                if t not in tag_index:
                    tag_index[t] = len(tags)
                    tags.append(t)
                if tag_index[t] not in row_tags:
                    row_tags.append(tag_index[t])
        rows["suite"].append(suite_index[row.suite])
        rows["id"].append(s(row.case_id))
        rows["stage"].append(s(row.stage))
        rows["tags"].append(row_tags)
        rows["flip"].append(row.bits)
        rows["first"].append(len(cells["model"]))
        where = first_case.get("file")
        rows["file"].append(s(f"{where}:{first_case['line']}" if where and first_case.get("line") else where))
        for i, c in sorted(row.cells, key=lambda ic: model_index[str(ic[1].get("model"))]):
            model = str(c.get("model"))
            base = matrix.base_outcome(row, model)
            cells["model"].append(model_index[model])
            cells["outcome"].append(outcome_index.get(str(c.get("outcome")), -1))
            cells["score"].append(_round(c.get("score"), 3))
            cells["latency"].append(_round(c.get("latency_s"), 3))
            cells["cost"].append(_round(c.get("cost_usd"), 6))
            pt, ct = c.get("prompt_tokens"), c.get("completion_tokens")
            cells["tokens"].append([pt or 0, ct or 0] if pt is not None or ct is not None else 0)
            cells["prompt"].append(s(c.get("prompt")))
            cells["answer"].append(s(c.get("answer")))
            cells["message"].append(s(c.get("message")))
            cells["checks"].append([[s(k.get("check")), _check_verdict(k), _round(k.get("score"), 3),
                                     s(k.get("reason"))] for k in c.get("checks") or [] if isinstance(k, dict)])
            cells["base"].append(outcome_index.get(base, -1) if base is not None else -1)
            cells["x"].append(extras(i))
            cells["cached"].append(1 if c.get("cached") else 0)
            cells["target"].append(s(c.get("target")))
            cells["flaky"].append(1 if c.get("flaky") else 0)
    return {"version": 1, "models": matrix.models, "suites": matrix.suites, "outcomes": list(OUTCOMES),
            "tags": tags, "limit": limit, "baseline": matrix.baseline is not None, "baseline_note": matrix.baseline_note,
            "S": s.table, "cut": s.cut, "rows": rows, "cells": cells}


def script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` that could end the element
    or open a comment (they are written as ``\\u003c`` and the like, which JSON.parse reads back)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))

"""CaseResult (plain data that rides on test reports across xdist) and the per suite x model aggregate."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
OUTCOMES = ("passed", "failed", "error", "skipped")
ANSWER_LIMIT = 4000  # characters of an answer kept in results.json


@dataclass
class CaseResult:
    """What one item measured. Only JSON-friendly fields: it is serialised onto the test report."""

    suite: str
    case_id: str
    model: str
    outcome: str  # passed | failed | error | skipped
    kind: str = "qna"
    nodeid: str = ""
    file: str | None = None
    line: int | None = None
    resolved_model: str | None = None
    score: float | None = None  # mean of the check scores; None when not graded
    checks: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    answer: str | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cached: bool | None = None
    calls: int = 0
    tags: list[str] = field(default_factory=list)
    message: str | None = None  # the error or skip reason
    # code cases
    code: str | None = None  # what was extracted from the answer
    detail: str | None = None  # NO_CODE | NO_COMPILE | None
    sandbox: str | None = None  # the isolation level the code ran under
    artifacts: dict[str, str] = field(default_factory=dict)  # files the program wrote, kept
    runs: list[dict[str, Any]] = field(default_factory=list)  # each sandboxed step: exit, reason, time
    pass_at_k: dict[str, float] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # with --llm-samples > 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["answer"] and len(d["answer"]) > ANSWER_LIMIT:
            d["answer"] = d["answer"][:ANSWER_LIMIT] + "…"
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), without importing numpy for a dozen numbers."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


def aggregate(results: Iterable[CaseResult]) -> list[dict[str, Any]]:
    """One row per (suite, model), sorted. Pass rate = passed / (passed + failed): errors and skips
    are infrastructure or not-yet-gradable, not the model's doing, and are counted on their own."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        groups.setdefault((r.suite, r.model), []).append(r)
    rows: list[dict[str, Any]] = []
    for (suite, model), rs in sorted(groups.items()):
        counts = {o: sum(1 for r in rs if r.outcome == o) for o in OUTCOMES}
        graded = counts["passed"] + counts["failed"]
        scores = [r.score for r in rs if r.score is not None and r.outcome in ("passed", "failed")]
        latencies = [r.latency_s for r in rs if r.latency_s is not None]
        costs = [r.cost_usd for r in rs if r.cost_usd is not None]
        rows.append({
            "suite": suite,
            "model": model,
            "cases": len(rs),
            **counts,
            "pass_rate": _r(counts["passed"] / graded) if graded else None,
            "mean_score": _r(sum(scores) / len(scores)) if scores else None,
            "latency_p50_s": _r(_percentile(latencies, 50), 4),
            "latency_p95_s": _r(_percentile(latencies, 95), 4),
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in rs),
            "completion_tokens": sum(r.completion_tokens or 0 for r in rs),
            "cost_usd": _r(sum(costs)) if costs else None,
            "cache_hits": sum(1 for r in rs if r.cached),
            "calls": sum(r.calls for r in rs),
        })
        with_k = [r.pass_at_k for r in rs if r.pass_at_k and r.outcome in ("passed", "failed")]
        if with_k:
            ks = sorted({k for d in with_k for k in d}, key=int)
            rows[-1]["pass_at_k"] = {k: _r(sum(d[k] for d in with_k if k in d) / sum(1 for d in with_k if k in d))
                                     for k in ks}
            rows[-1]["no_compile"] = sum(1 for r in rs if r.detail == "NO_COMPILE")
    return rows


def build_results(results: list[CaseResult], *, models: list[str], cache_mode: str, exit_status: int,
                  invalid: list[dict[str, Any]], workers: int, version: str) -> dict[str, Any]:
    """The results.json document (schema documented in the README)."""
    ordered = sorted(results, key=lambda r: (r.suite, r.model, r.case_id, r.nodeid))
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "pytest-llmeval", "version": version},
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {"models": models, "cache": cache_mode, "exit_status": exit_status, "workers": workers},
        "suites": aggregate(ordered),
        "cases": [r.to_dict() for r in ordered],
        "invalid": sorted(invalid, key=lambda e: (e["file"], e["line"] or 0, e.get("field") or "")),
    }


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write atomically: a crashed run never leaves half a results file for the next CI step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)

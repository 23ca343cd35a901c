"""The streamed results of a run (results/stream.py) against the in-memory form (aggregate.build_results): the same
results.json, byte for byte, the same suite rows (counts, pass rates, scores, exact latency percentiles), and the
checks' aggregates seeing every case of their row, plain ones included."""

from __future__ import annotations

import json
import math
import random
import statistics
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llmeval.checks.labels import aggregate_labels
from pytest_llmeval.checks.tools import aggregate_tools
from pytest_llmeval.results.aggregate import OUTCOMES, CaseResult, build_results, dumps_results, is_plain, write_results
from pytest_llmeval.results.journal import encode_line
from pytest_llmeval.results.stream import ResultCollector, SpooledCases

MODELS = ["openai/a", "local/b"]


def count_all(results: list[Any]) -> dict[str, Any]:
    """A third party's check aggregate that needs every case of the row (plain ones too)."""
    return {"seen": sum(1 for _ in results), "answers": sorted({r.answer[:20] for r in results if r.answer})}


AGGREGATES = {"jaccard": aggregate_labels, "tools": aggregate_tools, "mine": count_all}

unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def results(draw: st.DrawFn) -> CaseResult:
    suite = draw(st.sampled_from(["geo", "mcq", "cls"]))
    kind = {"geo": "qna", "mcq": "choice", "cls": "labels"}[suite]
    case_id = f"c{draw(st.integers(0, 30))}"
    model = draw(st.sampled_from(MODELS))
    r = CaseResult(suite=suite, case_id=case_id, model=model, outcome=draw(st.sampled_from(OUTCOMES)), kind=kind,
                   nodeid=f"cases/{suite}.yaml::{case_id}[{model}]")
    r.score = draw(st.none() | unit)
    r.latency_s = draw(st.none() | st.floats(0.0, 60.0))
    r.ttft_s = draw(st.none() | st.floats(0.0, 2.0))
    r.cost_usd = draw(st.none() | st.floats(0.0, 0.1))
    r.prompt_tokens = draw(st.none() | st.integers(0, 500))
    r.completion_tokens = draw(st.none() | st.integers(0, 500))
    r.cached = draw(st.sampled_from([None, True, False]))
    r.calls, r.retries = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    r.answer = draw(st.sampled_from([None, "Paris", "ok", "é\u2028x", "x" * 5000]))
    r.checks = [{"name": "contains", "passed": r.outcome == "passed", "score": r.score, "reason": None}]
    r.cache = draw(st.sampled_from([None, "exact", "semantic"]))
    r.split = draw(st.sampled_from(["dev", "dev", "dev", "test"]))
    if kind == "labels" and draw(st.booleans()):
        r.labels = {"expected": ["A"], "predicted": draw(st.sampled_from([["A"], ["B"], []])), "allowed": ["A", "B"]}
    if draw(st.integers(0, 4)) == 0:
        r.repeats = {"n": 3, "scored": 3, "passed": 1, "pass_fraction": 0.333333, "pass_all": False, "pass_any": True}
        r.flaky = True
        r.pass_at_k = {"1": 0.333333}
    if draw(st.integers(0, 6)) == 0:
        r.trajectory = {"mode": "native", "steps": [{"tool": "t", "error": None}], "ended": "answer"}
        r.tool_accuracy = draw(unit)
    return r


def both(rs: list[CaseResult], texts: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document built in memory and the streamed one, from the same cases arriving in the same order."""
    common: dict[str, Any] = dict(models=MODELS, cache_mode="on", exit_status=1, workers=2, version="t",
                                  invalid=[{"file": "b.yaml", "line": 2, "field": None, "message": "bad"}],
                                  check_aggregates=AGGREGATES)
    memory = build_results(rs, **common)
    collector = ResultCollector()
    for r in rs:
        collector.add(r, encode_line(r.to_dict()) if texts else None)
    streamed = collector.document(**common)
    streamed["created_at"] = memory["created_at"]
    return memory, streamed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(results(), max_size=40), st.booleans())
def test_streamed_document_is_byte_identical(rs: list[CaseResult], texts: bool) -> None:
    memory, streamed = both(rs, texts)
    assert isinstance(streamed["cases"], SpooledCases)
    assert dumps_results(streamed) == dumps_results(memory)
    assert streamed["suites"] == memory["suites"]
    assert streamed["cases"] == memory["cases"]  # parsed back: the same dicts, in the same order


def test_write_results_streams_the_same_bytes(tmp_path: Path) -> None:
    rng = random.Random(7)
    rs = [CaseResult(suite=rng.choice(["s1", "s2"]), case_id=f"c{i}", model=rng.choice(MODELS),
                     outcome=rng.choice(["passed", "failed"]), nodeid=f"cases/s.yaml::c{i}",
                     score=rng.random(), latency_s=rng.random(), answer="ok") for i in range(300)]
    memory, streamed = both(rs)
    write_results(tmp_path / "a.json", memory)
    write_results(tmp_path / "b.json", streamed)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == dumps_results(memory) + "\n"
    assert len(json.loads((tmp_path / "b.json").read_text())["cases"]) == 300
    # No cases: the same "cases": [] either way.
    empty_memory, empty_streamed = both([])
    assert dumps_results(empty_streamed) == dumps_results(empty_memory)
    assert '"cases": []' in dumps_results(empty_streamed)


def test_rows_are_the_exact_statistics() -> None:
    """Counts, pass rate, mean score and the latency percentiles are exact (numpy's linear interpolation), not a
    sketch: computed from every case's value, kept in arrays."""
    rng = random.Random(3)
    rs = []
    for i in range(2001):
        outcome = rng.choice(["passed", "passed", "failed", "error", "unscored"])
        rs.append(CaseResult(suite="geo", case_id=f"c{i}", model="m", outcome=outcome, nodeid=f"n{i}",
                             score=rng.random() if outcome != "error" else None, latency_s=rng.expovariate(2),
                             ttft_s=rng.random() / 10, cost_usd=0.001, prompt_tokens=10, completion_tokens=3,
                             cached=i % 3 == 0, calls=1))
    collector = ResultCollector()
    for r in rs:
        collector.add(r)
    (row,) = collector.document(models=["m"], cache_mode="on", exit_status=0, invalid=[], workers=0,
                                version="t")["suites"]
    graded = [r for r in rs if r.outcome in ("passed", "failed")]
    passed = sum(r.outcome == "passed" for r in rs)
    assert row["cases"] == 2001 and row["passed"] == passed and row["error"] == sum(r.outcome == "error" for r in rs)
    assert row["pass_rate"] == round(passed / len(graded), 6)
    assert math.isclose(row["mean_score"], statistics.fmean(r.score for r in graded), abs_tol=1e-6)
    lat = [r.latency_s for r in rs]
    cuts = statistics.quantiles(lat, n=100, method="inclusive")  # numpy's default (linear) percentiles
    assert row["latency_p50_s"] == round(statistics.median(lat), 4)
    assert row["latency_p95_s"] == round(cuts[94], 4)
    assert row["cache_hits"] == 667 and row["calls"] == 2001 and row["prompt_tokens"] == 20010
    assert row["cost_usd"] == round(sum(r.cost_usd for r in rs), 6)


def test_check_aggregates_see_every_case_of_their_row() -> None:
    rs = [CaseResult(suite="geo", case_id=f"c{i}", model="m", outcome="passed", nodeid=f"n{i}", answer=f"a{i % 3}")
          for i in range(50)]
    rs[7].labels = {"expected": ["A"], "predicted": ["A"], "allowed": ["A"]}
    assert sum(not is_plain(r) for r in rs) == 1
    memory, streamed = both(rs)
    (row,) = streamed["suites"]
    assert row["seen"] == 50 and row["answers"] == ["a0", "a1", "a2"]
    assert row["labels"] == memory["suites"][0]["labels"]


def test_spooled_cases_read_like_a_list() -> None:
    rs = [CaseResult(suite="s", case_id=f"c{i:02d}", model="m", outcome="passed", nodeid=f"n{i}") for i in range(20)]
    random.Random(1).shuffle(rs)
    memory, streamed = both(rs)
    cases = streamed["cases"]
    assert len(cases) == 20 and bool(cases)
    assert cases[0]["case_id"] == "c00" and cases[-1]["case_id"] == "c19"
    assert [c["case_id"] for c in cases[2:4]] == ["c02", "c03"]
    assert list(cases) == memory["cases"] and list(cases) == list(cases)  # iterated again: read again
    assert [c["case_id"] for c in cases if c["outcome"] == "passed"] == sorted(r.case_id for r in rs)


def test_streamed_cases_are_not_kept_in_memory() -> None:
    """A generous bound on the collector itself: 20 000 cases with 2 KB answers (40 MB of JSON) leave it well
    under 200 bytes a case in Python memory (the JSON is in the spool file)."""
    answer = "x" * 2000
    tracemalloc.start()
    try:
        collector = ResultCollector()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            r = CaseResult(suite="s", case_id=f"case-{i}", model="m", outcome="passed", nodeid=f"cases/s.yaml::case-{i}",
                           answer=answer, score=1.0, latency_s=0.1)
            collector.add(r)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 20_000 * 200, used
    assert len(collector) == 20_000

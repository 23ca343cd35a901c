"""The HTML report's data model (report/matrix.py: flips, the matrix, its payload) and its charts (report/charts.py)."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.report.charts import MAX_BARS, latency_chart, pass_rate_chart
from pytest_llmeval.report.matrix import (
    DISAGREE,
    IMPROVED,
    LARGE_RUN,
    LARGE_TEXT_LIMIT,
    REGRESSED,
    TEXT_LIMIT,
    build_matrix,
    find_baseline,
    flips,
    payload,
    rank,
    script_json,
    text_limit,
)
from pytest_llmeval.results.gate import GateError


def case(cid: str, model: str, outcome: str, suite: str = "geo", **extra: Any) -> dict[str, Any]:
    return {"suite": suite, "case_id": cid, "model": model, "outcome": outcome, "prompt": f"prompt {cid}",
            "answer": f"answer {cid} {model}", "checks": [], **extra}


def doc_of(cases: list[dict[str, Any]], models: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"run": {"models": models or ["a", "b"]}, "suites": [], "cases": cases, **extra}


@pytest.mark.parametrize(("now", "before", "bits"), [
    ({"a": "failed"}, {"a": "passed"}, REGRESSED),
    ({"a": "passed"}, {"a": "failed"}, IMPROVED),
    ({"a": "passed"}, {"a": "passed"}, 0),
    ({"a": "error"}, {"a": "passed"}, 0),  # an outage is not a regression
    ({"a": "failed"}, {"a": "unscored"}, 0),
    ({"a": "failed"}, {"a": None}, 0),  # a case the baseline lacks
    ({"a": "passed", "b": "failed"}, {}, DISAGREE),
    ({"a": "passed", "b": "error"}, {}, 0),
    ({"a": "failed", "b": "passed"}, {"a": "passed", "b": "failed"}, REGRESSED | IMPROVED | DISAGREE),
])
def test_flips_count_graded_outcomes_only(now: dict[str, str], before: dict[str, str | None], bits: int) -> None:
    assert flips(now, before) == bits


def test_rank_puts_regressions_then_improvements_then_disagreements_then_failures_first() -> None:
    assert rank(REGRESSED | IMPROVED, ["passed"]) == 0
    assert rank(IMPROVED | DISAGREE, ["passed"]) == 1
    assert rank(DISAGREE, ["passed", "failed"]) == 2
    assert [rank(0, ["passed", "error"]), rank(0, ["failed"]), rank(0, ["passed", "unscored"])] == [3, 3, 4]


def test_the_matrix_groups_models_per_case_and_orders_flipped_first() -> None:
    cases = [case("ok", "a", "passed"), case("ok", "b", "passed"),
             case("both", "a", "failed"), case("both", "b", "failed"),
             case("split", "a", "passed"), case("split", "b", "failed"),
             case("worse", "a", "failed"), case("worse", "b", "failed"),
             case("better", "b", "passed"),  # b only
             case("new", "c", "passed", suite="other")]  # a model the run's list lacks
    baseline = {("geo", "a", "worse"): {"outcome": "passed"}, ("geo", "b", "better"): {"outcome": "failed"},
                ("geo", "a", "ok"): {"outcome": "passed"}}
    m = build_matrix(doc_of(cases), baseline, "baseline b.json")
    assert [r.case_id for r in m.rows] == ["worse", "better", "split", "both", "ok", "new"]
    assert [r.bits for r in m.rows] == [REGRESSED, IMPROVED, DISAGREE, 0, 0, 0]
    assert m.models == ["a", "b", "c"] and m.suites == ["geo", "other"]
    assert m.counts() == {"regressed": 1, "improved": 1, "disagree": 1}
    assert m.base_outcome(m.rows[0], "a") == "passed" and m.base_outcome(m.rows[0], "b") is None
    assert build_matrix(doc_of(cases), None).rows[0].case_id == "split"  # no baseline: disagreements first


def test_two_stages_of_a_case_are_two_rows() -> None:
    cases = [case("render", "a", "passed", stage="runs"), case("render", "a", "failed", stage="judged")]
    m = build_matrix(doc_of(cases, ["a"]), None)
    assert [(r.case_id, r.stage) for r in m.rows] == [("render", "judged"), ("render", "runs")]


def test_the_payload_is_columnar_with_each_string_once_and_long_texts_cut() -> None:
    long = "x" * 50
    cases = [case("q1", "a", "passed", tags=["smoke"], score=1, latency_s=0.12345, cost_usd=0.0001234567,
                  prompt_tokens=10, completion_tokens=3, checks=[{"check": "contains", "passed": True, "score": 1,
                                                                   "reason": "found"}]),
             case("q1", "b", "failed", tags=["smoke", "slow"], score=float("nan"), answer=long, message="boom",
                  checks=[{"check": "contains", "passed": False, "score": 0, "reason": "found"},
                          {"check": "judge", "unscored": True, "reason": None}])]
    m = build_matrix(doc_of(cases), {("geo", "b", "q1"): {"outcome": "passed"}})
    data = payload(m, 20, lambda i: 7 if i == 1 else -1)
    s, rows, cells = data["S"], data["rows"], data["cells"]
    assert s.count("prompt q1") == 1 and cells["prompt"][0] == cells["prompt"][1]  # one prompt, two models
    assert s.count("found") == 1 and cells["checks"] == [[[s.index("contains"), 1, 1.0, s.index("found")]],
                                                         [[s.index("contains"), 0, 0.0, s.index("found")],
                                                          [s.index("judge"), 2, None, -1]]]
    assert s[cells["answer"][1]] == "x" * 20 and data["cut"] == {cells["answer"][1]: 50}
    assert cells["outcome"] == [0, 1] and cells["base"] == [-1, 0] and cells["x"] == [-1, 7]
    assert cells["score"] == [1.0, None] and cells["latency"] == [0.123, None] and cells["cost"] == [0.000123, None]
    assert cells["tokens"] == [[10, 3], 0] and s[cells["message"][1]] == "boom" and cells["message"][0] == -1
    assert data["tags"] == ["smoke", "slow"] and rows["tags"] == [[0, 1]] and rows["flip"] == [REGRESSED | DISAGREE]
    assert rows["first"] == [0] and data["baseline"] is True and data["limit"] == 20


def test_text_limit_shrinks_for_large_runs() -> None:
    assert text_limit(LARGE_RUN) == TEXT_LIMIT and text_limit(LARGE_RUN + 1) == LARGE_TEXT_LIMIT


def test_script_json_cannot_end_its_script_element() -> None:
    value = {"answer": "</script><script>alert(1)</script><!-- & \u2028"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_the_baseline_is_the_gates_file_else_what_the_gate_recorded(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gate = {"baseline": "b.json", "suites": [{"suite": "geo", "model": "a", "flipped": [{"case_id": "q",
                                                                                         "score_before": 1.0}]}]}
    doc = doc_of([case("q", "a", "failed")], gate=gate)
    found, note = find_baseline(doc, tmp_path / "project")
    assert found == {("geo", "a", "q"): {"outcome": "passed", "score": 1.0}}
    assert note == "baseline b.json not found: only the gate's pass -> fail flips are known"
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "b.json").write_text(json.dumps(
        {"cases": [{"suite": "geo", "model": "a", "case": "q", "outcome": "failed", "score": 0.0}]}))
    found, note = find_baseline(doc, tmp_path / "project")
    assert found == {("geo", "a", "q"): {"outcome": "failed", "score": 0.0}} and note == "baseline b.json"
    assert find_baseline(doc_of([]), tmp_path) == (None, "no baseline")
    with pytest.raises(GateError, match="no such file"):
        find_baseline(doc, tmp_path, tmp_path / "missing.json")


def _texts(svg: str, cls: str) -> list[str]:
    return re.findall(rf'<text class="{cls}"[^>]*>([^<]*)</text>', svg)


def test_the_pass_rate_chart_has_axes_ticks_and_labels() -> None:
    rows = [{"suite": "geo", "model": "a", "pass_rate": 0.5, "pass_rate_ci": [0.2, 0.8]},
            {"suite": "geo <b>", "model": "b", "pass_rate": None}]
    svg = pass_rate_chart(rows, {("geo", "a"): {"base_pass_rate": 0.75}})
    assert _texts(svg, "axis-label") == ["pass rate (% of graded cases)"]
    assert _texts(svg, "tick") == ["0%", "25%", "50%", "75%", "100%", "geo [a]", "geo &lt;b&gt; [b]"]
    assert 'class="x-axis"' in svg and 'class="y-axis"' in svg and "<title>baseline 75.0%</title>" in svg
    many = [{"suite": f"s{i}", "model": "a", "pass_rate": i / 100} for i in range(100)]
    svg = pass_rate_chart(many, {})
    assert svg.count('class="bar"') == MAX_BARS and f"the {MAX_BARS} lowest of 100" in svg
    assert "s0 [a]" in svg and "s99 [a]" not in svg


def test_the_latency_histogram_has_log_ticks_counts_and_labels() -> None:
    cases = [{"model": "a", "latency_s": v} for v in (0.02, 0.3, 0.3, 0.31, 2.0, 500.0)] + [
        {"model": "b", "latency_s": None}, {"model": "b", "latency_s": 0}]
    svg = latency_chart(cases)
    assert svg.count("<svg") == 1  # b has no latency
    assert _texts(svg, "axis-label") == ["latency (seconds, log scale)", "cases"]
    assert _texts(svg, "tick") == ["0", "2.5", "5", "0.01", "0.1", "1", "10", "100"]  # counts, then seconds
    assert "a: 6 case(s), median 0.31 s" in svg
    bars = re.findall(r"<title>(\d+) case\(s\), ([\d.e+-]+)-([\d.e+-]+) s</title>", svg)
    assert sum(int(n) for n, _, _ in bars) == 6 and ("3", "0.178", "0.316") in bars
    assert bars[-1][0] == "1" and bars[-1][2] == "100"  # 500 s lands in the last bin
    assert latency_chart([]) == '<p class="meta">no latencies recorded</p>'


def test_every_template_ships_as_package_data() -> None:
    repo = Path(__file__).resolve().parents[2]
    found = re.search(r"\[tool\.setuptools\.package-data\]\s*pytest_llmeval = (\[[^\]]*\])",
                      (repo / "pyproject.toml").read_text())  # (tomllib is 3.11+)
    assert found
    patterns = json.loads(found.group(1))
    templates = repo / "src" / "pytest_llmeval" / "templates"
    names = [p.relative_to(templates.parent).as_posix() for p in templates.iterdir()]
    assert "templates/report.js.j2" in names
    assert [n for n in names if not any(fnmatch.fnmatch(n, p) for p in patterns)] == []


def test_the_rich_drill_downs_are_capped_flipped_and_failing_first(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmeval.report import html

    monkeypatch.setattr(html, "EXTRAS_LIMIT", 2)
    cases = [case(f"q{i}", "a", "failed" if i == 3 else "passed", metadata={"n": i}) for i in range(4)]
    text = html.render(doc_of(cases, ["a"]), tmp_path)
    assert text.count("<template ") == 2 and "kept for 2 of 4 results" in text
    kept = re.findall(r'<template id="x-(\d)">\s*<b>metadata</b><pre class="metadata">\{&#34;n&#34;: (\d)\}', text)
    assert kept == [("1", "0"), ("0", "3")]  # the failing q3 first (x-0), then q0; in the run's order in the file

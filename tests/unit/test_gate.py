"""The regression gate: rules, statistics (false alarms and power by seeded simulation), verdicts and the
merge of shards."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.gate import doc_from

from pytest_llmeval.results.gate import (
    DropRule,
    Gate,
    GateError,
    LimitRule,
    min_detectable_drop,
    parse_rule,
    sign_test_p,
)


@pytest.mark.parametrize(("text", "rule"), [
    ("pass_rate:-5%", DropRule("pass_rate", 5.0)),
    ("pass_rate:-0.05", DropRule("pass_rate", 5.0)),
    ("score:-0.05", DropRule("score", 0.05)),
    ("pass_rate>=0.8", LimitRule("pass_rate", ">=", 0.8)),
    ("pass_rate>=80%", LimitRule("pass_rate", ">=", 0.8)),
    ("latency_p95<=2.5", LimitRule("latency_p95", "<=", 2.5)),
    ("cost<=1.00", LimitRule("cost", "<=", 1.0)),
    ("errors<=10%", LimitRule("errors", "<=", 0.1)),
    ("geography:pass_rate>=0.9", LimitRule("pass_rate", ">=", 0.9, "geography")),
])
def test_rules_parse(text: str, rule: object) -> None:
    assert parse_rule(text) == rule


def test_bad_rule_says_what_exists() -> None:
    with pytest.raises(GateError, match="expected e.g. 'pass_rate:-5%'"):
        parse_rule("pass_rate < 3")


def test_sign_test_and_minimum_detectable_drop() -> None:
    assert sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) > 0.5
    assert min_detectable_drop(200, 0.05) == pytest.approx(2.5)  # 5 flips of 200
    assert min_detectable_drop(4, 0.05) is None  # four cases can confirm nothing at 5%


def baseline_of(doc: dict) -> dict:
    return {(c["suite"], c["model"], c["case_id"]): {"outcome": c["outcome"], "score": c["score"]}
            for c in doc["cases"]}


def simulate(probs: np.ndarray, drop: np.ndarray, runs: int, seed: int) -> float:
    """Share of runs the gate fails: baseline and current outcomes drawn independently per case."""
    rng = np.random.default_rng(seed)
    gate = Gate([DropRule("pass_rate", 5.0)])
    fails = 0
    for _ in range(runs):
        before = rng.random(len(probs)) < probs
        after = rng.random(len(probs)) < np.clip(probs - drop, 0, 1)
        verdict = gate.evaluate(doc_from(list(after)), baseline_of(doc_from(list(before))))[0]
        fails += verdict.verdict == "regression"
    return fails / runs


def case_probabilities(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pass probabilities like a model at temperature 0: most cases nearly always pass or always fail, a
    fifth are flaky."""
    steady = rng.random(n) < 0.8
    return np.where(steady, np.where(rng.random(n) < 0.7, 0.97, 0.03), rng.uniform(0.3, 0.7, n))


def test_false_alarm_rate_without_change_is_at_most_5_percent() -> None:
    rng = np.random.default_rng(7)
    probs = case_probabilities(200, rng)
    assert simulate(probs, np.zeros(200), runs=400, seed=1) <= 0.05


def test_a_true_10_point_drop_on_200_cases_is_detected_80_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    probs = case_probabilities(200, rng)
    # Lower the cases' pass probabilities so the expected pass rate falls by 10 points.
    drop = np.zeros(200)
    order = np.argsort(-probs)
    drop[order[:int(0.1 * 200 / 0.9) + 1]] = 0.9
    assert probs.mean() - np.clip(probs - drop, 0, 1).mean() == pytest.approx(0.10, abs=0.01)
    assert simulate(probs, drop, runs=200, seed=2) >= 0.80


def test_verdicts_regression_inconclusive_ok_floor_errors() -> None:
    gate = Gate([DropRule("pass_rate", 5.0), LimitRule("pass_rate", ">=", 0.5)])
    base = [True] * 180 + [False] * 20
    now = list(base)
    for i in range(20):
        now[i] = False  # 20 of 200 flip: a 10-point drop
    v = gate.evaluate(doc_from(now), baseline_of(doc_from(base)))[0]
    assert v.verdict == "regression" and v.worse == 20 and v.better == 0 and v.delta_points == pytest.approx(-10)
    assert [f["case_id"] for f in v.flipped][:2] == ["c0", "c1"] and v.p_value < 1e-5
    small = [True] * 9 + [False]
    v = gate.evaluate(doc_from([False, False] + small[2:]), baseline_of(doc_from(small)))[0]
    assert v.verdict == "inconclusive" and "smallest confirmable drop" in v.reasons[0]
    two_flips = list(base)
    two_flips[0] = two_flips[1] = False
    assert gate.evaluate(doc_from(two_flips), baseline_of(doc_from(base)))[0].verdict == "ok"
    assert gate.evaluate(doc_from([False] * 200), None)[0].verdict == "below_floor"
    errored = doc_from(base)
    for c in errored["cases"][:30]:
        c["outcome"] = "error"
    v = gate.evaluate(errored, baseline_of(doc_from(base)))[0]
    assert v.verdict == "errors" and v.worse == 0  # errors are never regressions


def test_merge_refuses_overlapping_shards_with_different_outcomes() -> None:
    from pytest_llmeval.results.aggregate import merge_results

    a = doc_from([True, True])
    b = doc_from([True, False])
    for doc in (a, b):
        for c in doc["cases"]:
            c["nodeid"] = f"cases/s.yaml::{c['case_id']}[m]"
    with pytest.raises(ValueError, match="different outcomes: do the shards overlap"):
        merge_results([a, b], "0")
    merged = merge_results([a, a], "0")
    assert len(merged["cases"]) == 2 and merged["suites"][0]["passed"] == 2

"""The regression gate: rules, statistics (false alarms and power by seeded simulation), and whole sessions
where a baseline from one run gates the next."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import Project
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


def doc_from(outcomes: list[bool], suite: str = "s", model: str = "m") -> dict:
    cases = [{"suite": suite, "model": model, "case_id": f"c{i}", "outcome": "passed" if ok else "failed",
              "score": 1.0 if ok else 0.0, "file": "cases/s.yaml", "line": i + 1} for i, ok in enumerate(outcomes)]
    rate = sum(outcomes) / len(outcomes)
    return {"cases": cases, "suites": [{"suite": suite, "model": model, "pass_rate": rate, "mean_score": rate}]}


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


def suite_file(n: int) -> str:
    rows = "\n".join(f"  - {{id: q{i:03d}, question: 'Question number {i:03d}?', expect: [{{contains: sure}}]}}"
                     for i in range(n))
    return f"suite: big\ncases:\n{rows}\n"


def test_baseline_then_gate_in_whole_sessions(project: Project) -> None:
    project.write("cases/big.yaml", suite_file(200))
    server = project.server
    server.default = "sure"
    for i in range(20):  # 20 cases fail at baseline already
        server.answer(f"number {100 + i:03d}?", "no")
    # Recording the baseline on main measures the model: its 20 failed cases do not fail the job (README).
    strict = project.run("--llm-update-baseline", "--llm-baseline=baseline.json", "--llm-cache=off", "--llm-strict")
    assert strict.ret == 1  # --llm-strict keeps pytest's meaning
    result = project.run("--llm-update-baseline", "--llm-baseline=baseline.json", "--llm-cache=off")
    result.assert_outcomes(passed=180, failed=20)
    assert result.ret == 0 and project.results()["run"]["exit_status"] == 0
    result.stdout.fnmatch_lines(["baseline written: *baseline.json"])
    base = json.loads((project.pytester.path / "baseline.json").read_text())
    assert base["baseline_version"] == 1 and len(base["cases"]) == 200
    assert base["cases"][0] == {"suite": "big", "model": "openai/test-model", "case": "q000", "outcome": "passed",
                                "score": 1.0}

    # 10% of the cases flip: the gate fails, naming the flipped cases.
    for i in range(20):
        server.answer(f"number {i:03d}?", "no")
    result = project.run("--llm-baseline=baseline.json", "--llm-cache=off")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*llmeval gate*",
        "big*openai/test-model*200*90.0%*80.0%*-10.0*regression",
        "*big [[]openai/test-model]: pass rate fell 10.0 points (> 5), 20 case(s) passed before and fail now*",
        "*passed before, failed now (20), worst first:",
        "    q000 (cases/big.yaml:3)",
        "ERROR: llmeval gate failed: big [[]openai/test-model] regression",
    ])
    gate = project.results()["gate"]
    assert gate["failed"] and gate["suites"][0]["worse"] == 20

    # Two flips are noise: the failed cases are reported, the run passes through the gate.
    server.reset()
    server.default = "sure"
    for i in [*range(100, 120), 0, 1]:
        server.answer(f"number {i:03d}?", "no")
    result = project.run("--llm-baseline=baseline.json", "--llm-cache=off")
    result.assert_outcomes(passed=178, failed=22)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["big*-1.0*ok", "llmeval gate passed*"])
    # --llm-strict restores pytest's meaning; without a gate any failure fails the run.
    assert project.run("--llm-baseline=baseline.json", "--llm-cache=off", "--llm-strict").ret == 1
    assert project.run("--llm-cache=off").ret == 1


def test_floor_alone_is_a_gate_and_errors_still_fail(project: Project) -> None:
    project.write("cases/big.yaml", suite_file(10))
    project.server.default = "sure"
    project.server.answer("number 000?", "no")
    result = project.run("--llm-fail-under=0.8")
    assert result.ret == 0  # 90% >= 80%
    result = project.run("--llm-fail-under=0.95")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*big [[]openai/test-model]: pass_rate 0.9 breaks pass_rate>=0.95"])
    project.server.fail("number 005?", 500)
    result = project.run("--llm-fail-under=0.5", "--llm-cache=off")
    assert result.ret == 1  # an error (infrastructure) is not a measurement: it still fails the run


def test_recording_a_baseline_still_fails_on_errors(project: Project) -> None:
    project.write("cases/big.yaml", suite_file(4))
    project.server.default = "sure"
    project.server.answer("number 000?", "no")
    project.server.fail("number 001?", 500)
    result = project.run("--llm-update-baseline", "--llm-cache=off")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    assert result.ret == 1  # a provider error is not a measurement


def test_missing_baseline_and_bad_rule_are_usage_errors(project: Project) -> None:
    project.write("cases/big.yaml", suite_file(3))
    result = project.run("--llm-baseline=nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-baseline nope.json: no such file; write one with --llm-update-baseline"])
    result = project.run("--llm-gate=pass_rate<3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Invalid --llm-gate: cannot read gate rule 'pass_rate<3'*"])


def test_gate_under_xdist(project: Project) -> None:
    project.write("cases/big.yaml", suite_file(40))
    project.server.default = "sure"
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off", "-n", "2")
    for i in range(8):
        project.server.answer(f"number {i:03d}?", "no")
    result = project.run("--llm-baseline=b.json", "--llm-cache=off", "-n", "2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["ERROR: llmeval gate failed: big [[]openai/test-model] regression"])


def test_github_step_summary_and_annotations(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("cases/big.yaml", suite_file(40))
    project.server.default = "sure"
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")
    for i in range(8):
        project.server.answer(f"number {i:03d}?", "nope")
    summary = project.pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = project.run("--llm-baseline=b.json", "--llm-cache=off")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "::error file=cases/big.yaml,line=3,title=llmeval regression::q000 passed in the baseline and fails now "
        "(big [[]openai/test-model])",
        "::error title=llmeval gate::big [[]openai/test-model]: regression: pass rate fell 20.0 points*",
    ])
    text = summary.read_text()
    assert text.startswith("## pytest-llmeval — gate **failed** :x:")
    assert "| big | openai/test-model | 40 | 32 | 8 | 0 | 0 | 80.0% (" in text and "| -20.0 pts | regression |" in text
    assert "passed before, failed now (8)" in text and "- `q000` (cases/big.yaml:3)" in text
    # Outside GitHub Actions no workflow commands are printed.
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert "::error" not in project.run("--llm-baseline=b.json", "--llm-cache=off").stdout.str()


def test_llmeval_compare_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [True] * 180 + [False] * 20
    now = list(base)
    for i in range(20):
        now[i] = False
    (tmp_path / "base.json").write_text(json.dumps(doc_from(base)))
    (tmp_path / "now.json").write_text(json.dumps(doc_from(now)))
    cmd = [sys.executable, "-m", "pytest_llmeval.cli.main", "compare", str(tmp_path / "base.json")]
    failed = subprocess.run([*cmd, str(tmp_path / "now.json")], capture_output=True, text=True)
    assert failed.returncode == 1 and "regression" in failed.stdout and failed.stdout.rstrip().endswith("gate failed")
    same = subprocess.run([*cmd, str(tmp_path / "base.json")], capture_output=True, text=True)
    assert same.returncode == 0 and same.stdout.rstrip().endswith("gate passed")
    lax = subprocess.run([*cmd, str(tmp_path / "now.json"), "--max-drop", "15"], capture_output=True, text=True)
    assert lax.returncode == 0
    bad = subprocess.run([*cmd, str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "llmeval: error:" in bad.stderr


def test_shards_cover_every_case_once_and_merge_before_the_gate(project: Project) -> None:
    import subprocess
    import sys

    project.write("cases/big.yaml", suite_file(30))
    project.server.default = "sure"
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")
    for i in range(12):
        project.server.answer(f"number {i:03d}?", "nope")
    seen: list[str] = []
    for shard in ("1/3", "2/3", "3/3"):
        project.run(f"--llm-shard={shard}", f"--llm-results=shard{shard[0]}.json")
        doc = project.results(f"shard{shard[0]}.json")
        assert doc["run"]["shard"] == shard
        seen += [c["case_id"] for c in doc["cases"]]
        assert 0 < len(doc["cases"]) < 30
    assert sorted(seen) == sorted(f"q{i:03d}" for i in range(30))  # every case in exactly one shard
    again = project.run("--llm-shard=2/3", "--llm-results=again.json")
    assert [c["case_id"] for c in project.results("again.json")["cases"]] == \
        [c["case_id"] for c in project.results("shard2.json")["cases"]]  # deterministic
    root = project.pytester.path
    merge = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "merge", *(str(root / f"shard{i}.json")
                            for i in (1, 2, 3)), "-o", str(root / "merged.json")], capture_output=True, text=True)
    assert merge.returncode == 0, merge.stderr
    merged = project.results("merged.json")
    assert len(merged["cases"]) == 30 and merged["suites"][0]["failed"] == 12
    compare = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "compare", str(root / "b.json"),
                              str(root / "merged.json")], capture_output=True, text=True)
    assert compare.returncode == 1 and "regression" in compare.stdout
    assert again.ret == 1  # no gate in shard runs: their failed cases fail them, the merged gate decides
    bad = project.run("--llm-shard=4/3")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


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


def test_leaderboard_ranks_models_over_shared_suites(tmp_path: Path) -> None:
    import subprocess
    import sys

    def doc(model: str, rates: dict[str, tuple[int, int]]) -> dict:
        return {"suites": [{"suite": s, "model": model, "passed": p, "failed": f, "pass_rate": p / (p + f)}
                           for s, (p, f) in rates.items()], "cases": []}

    (tmp_path / "a.json").write_text(json.dumps(doc("small", {"siqa": (40, 60), "geo": (8, 2), "extra": (1, 0)})))
    (tmp_path / "b.json").write_text(json.dumps(doc("large", {"siqa": (80, 20), "geo": (9, 1)})))
    out = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "leaderboard", str(tmp_path / "a.json"),
                          str(tmp_path / "b.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["rank", "model", "geo", "siqa", "mean"]  # "extra" is not shared
    assert lines[1].split()[:5] == ["1", "large", "90.0%", "80.0%", "85.0%"]
    assert lines[2].split()[:5] == ["2", "small", "80.0%", "40.0%", "60.0%"]
    md = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "leaderboard", "--markdown",
                         str(tmp_path / "a.json"), str(tmp_path / "b.json")], capture_output=True, text=True)
    assert md.stdout.splitlines()[2].startswith("| 1 | large | 90.0% | 80.0% | 85.0% |")

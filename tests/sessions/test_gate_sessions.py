"""The regression gate in whole sessions: a baseline from one run gates the next; floors, errors, xdist, the
GitHub step summary, `llmeval compare`, shards and the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.gate import doc_from

from conftest import Project


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


# ---------------------------------------------------------------------------------------------- redraws


def noisy_project(project: Project) -> None:
    """40 cases that all pass at baseline except q030-q033; now (candidate()) q000-q009 always fail (a real
    regression) and q030-q033 pass at their first draw only (one answer in three passes): 10 worse, 4 better on the
    run's draws, too few to confirm a 15-point drop (p = 0.09)."""
    project.write("cases/big.yaml", suite_file(40))
    server = project.server
    server.default = "sure"
    for i in (30, 31, 32, 33):
        server.answer(f"number {i:03d}?", "no")
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")


def candidate(project: Project) -> None:
    server = project.server
    server.reset()  # the scripted answers cycle from their first again
    server.default = "sure"
    for i in range(10):
        server.answer(f"number {i:03d}?", "no")
    for i in (30, 31, 32, 33):
        server.answer(f"number {i:03d}?", ["sure", "no", "no"])  # cycles: each call the next answer


def flaky_candidate(project: Project) -> None:
    server = project.server
    server.reset()
    server.default = "sure"
    for i in range(6):  # flaky now: fail once, then pass
        server.answer(f"number {i:03d}?", ["no", "sure", "sure", "sure", "sure", "sure", "sure"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["n0", "n2"])
def test_redraws_confirm_a_regression_the_run_alone_cannot(project: Project, workers: list[str]) -> None:
    noisy_project(project)
    candidate(project)
    plain = project.run("--llm-baseline=b.json", "--llm-cache=off", *workers)
    assert plain.ret == 0
    plain.stdout.fnmatch_lines(["big*openai/test-model*40*90.0%*75.0%*-15.0*inconclusive"])
    candidate(project)
    result = project.run("--llm-baseline=b.json", "--llm-cache=off", "--llm-gate-redraws=200", *workers)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "big*openai/test-model*40*regression",
        "*big [[]openai/test-model]: pass rate fell 20.0 points (> 5) over 2 draw(s) per case, 40 answers redrawn "
        "in 1 look(s): p = 0.0157 < 0.025 (look 2's share of alpha 0.05)",
        "*big [[]openai/test-model]: redraws: 40 answers in 1 look(s), 40 calls (0 from the cache), * tokens",
        "ERROR: llmeval gate failed: big [[]openai/test-model] regression",
    ])
    gate = project.results()["gate"]
    assert gate["redraws"]["used"] == 40 and gate["redraws"]["looks"] == 1 and gate["redraws"]["calls"] == 40
    assert gate["redraws"]["prompt_tokens"] > 0 and gate["redraws"]["design"]["schedule"] == [1, 1, 2]
    seq = gate["suites"][0]["sequential"]
    assert [x["decision"] for x in seq["looks"]] == ["continue", "regression"] and seq["redraws"] == 40
    # The run's own results are the run's: one draw per case, the redraws only in the gate's entry.
    assert len(project.results()["cases"]) == 40 and project.results()["cases"][0].get("repeats") is None


def test_redraws_clear_a_noisy_suite_and_respect_the_budget(project: Project) -> None:
    project.write("cases/big.yaml", suite_file(40))
    server = project.server
    server.default = "sure"
    for i in (30, 31):
        server.answer(f"number {i:03d}?", "no")
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")
    flaky_candidate(project)
    # 6 worse, 2 better: a 10-point drop on the run's draws, inconclusive (p = 0.14); the redraws show it is noise.
    result = project.run("--llm-baseline=b.json", "--llm-cache=off", "--llm-gate-redraws=1000")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "big*openai/test-model*40*ok",
        "*big [[]openai/test-model]: pass rate change +2.0 points over 5 draw(s) per case after 160 answers "
        "redrawn in 3 look(s): within the allowed 5",
        "*redraws: 160 answers in 3 look(s), 160 calls*",
        "llmeval gate passed*",
    ])
    assert project.results()["gate"]["redraws"]["used"] == 160
    # A budget smaller than one look of the suite: no redraws, the run's own verdict stands.
    flaky_candidate(project)
    small = project.run("--llm-baseline=b.json", "--llm-cache=off", "--llm-gate-redraws=39")
    small.stdout.fnmatch_lines(["big*-10.0*inconclusive"])
    assert project.results()["gate"]["redraws"]["used"] == 0
    # Budget for two looks of three: stopped, still inconclusive, saying why.
    flaky_candidate(project)
    two = project.run("--llm-baseline=b.json", "--llm-cache=off", "--llm-gate-redraws=80")
    two.stdout.fnmatch_lines(["big*inconclusive", "*not settled after 80 answers redrawn in 2 look(s)*: the redraw "
                              "budget is spent"])


def test_llmeval_compare_says_how_many_redraws_would_settle_an_inconclusive_suite(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [True] * 180 + [False] * 20
    now = list(base)
    for i in range(30):  # 30 worse, 18 better: a 6-point drop, inconclusive on one draw per case (p = 0.056)
        now[i] = False
    for i in range(180, 198):
        now[i] = True
    (tmp_path / "base.json").write_text(json.dumps(doc_from(base)))
    (tmp_path / "now.json").write_text(json.dumps(doc_from(now)))
    out = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "compare", str(tmp_path / "base.json"),
                          str(tmp_path / "now.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "inconclusive" in out.stdout
    assert "  s [m]: redraws: if the 6.0-point drop holds, --llm-gate-redraws 200 would confirm it (look 2: 2 draws " \
           "per case, 200 answers drawn again)" in out.stdout


def test_redraws_replay_from_the_cache_to_the_same_verdict(project: Project) -> None:
    noisy_project(project)
    candidate(project)
    first = project.run("--llm-baseline=b.json", "--llm-cache=on", "--llm-gate-redraws=200")
    assert first.ret == 1
    assert len(project.server.requests) == 80  # 40 answers of the run, 40 redrawn (their own cache slots)
    project.server.reset()
    project.server.default = "sure"  # any call made now would pass: none is made
    again = project.run("--llm-baseline=b.json", "--llm-cache=on", "--llm-gate-redraws=200")
    assert again.ret == 1 and len(project.server.requests) == 0
    again.stdout.fnmatch_lines(["*pass rate fell 20.0 points (> 5) over 2 draw(s) per case, 40 answers redrawn*",
                                "*redraws: 40 answers in 1 look(s), 40 calls (40 from the cache)*"])
    assert project.results()["gate"]["redraws"]["cached_calls"] == 40

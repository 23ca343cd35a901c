"""Issue 20 (memory per case): a run's cases stream to disk as they are reported, and results.json is written
from there. Whole sessions of a few thousand cases, with and without xdist: results.json holds every case once,
sorted, and equals what the in-memory form (``build_results`` of the same cases, read back from the journal)
makes; the summary and the gate still work. The memory itself is measured in
bench/bench_memory.py, not here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.results.aggregate import CaseResult, build_results, dumps_results

N = 1500


def many_cases(n: int = N) -> str:
    lines = ["suite: many", "cases:"]
    for i in range(n):
        word = "no" if i % 7 == 0 else "ok"
        lines += [f"  - id: c{i}", f"    question: 'Question {i}: say {word}.'", "    expect: [{contains: ok}]"]
    return "\n".join(lines) + "\n"


# Cases that are not plain (their rows need more of them: the per-label report), beside the plain ones.
LABELS = """\
suite: tagged
kind: labels
cases:
  - {id: l1, input: 'pick', labels: [ok, nope], answer: [ok]}
  - {id: l2, input: 'pick', labels: [ok, nope], answer: [nope]}
"""


def journal_lines(root: Path, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((root / ".llmeval/journal" / run_id).glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def in_memory(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """The document the in-memory form makes of the run's cases (as journalled by the processes that ran them)."""
    cases = [CaseResult.from_dict(d) for d in journal_lines(root, doc["run"]["run_id"])]
    expected = build_results(cases, models=doc["run"]["models"], cache_mode=doc["run"]["cache"],
                             exit_status=doc["run"]["exit_status"], invalid=doc["invalid"],
                             workers=doc["run"]["workers"], version=doc["tool"]["version"],
                             check_aggregates=builtin_registry().aggregates())
    expected["created_at"] = doc["created_at"]
    expected["run"] = doc["run"]
    return expected


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["n0", "n2"])
def test_results_of_thousands_of_cases_are_complete_and_the_same(project: Any, workers: list[str]) -> None:
    project.server.default = "ok"
    project.server.answer("say no", "nope")
    project.write("cases/many.yaml", many_cases())
    project.write("cases/tagged.yaml", LABELS)
    result = project.run(*workers, "--llm-cache=off")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == N + 2, result.stdout.lines[-5:]
    assert outcomes.get("failed", 0) >= len(range(0, N, 7))
    text = (project.pytester.path / ".llmeval/results.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    nodeids = [c["nodeid"] for c in doc["cases"]]
    assert len(nodeids) == N + 2 == len(set(nodeids))
    keys = [(c["suite"], c["model"], c["case_id"], c["nodeid"]) for c in doc["cases"]]
    assert keys == sorted(keys)
    expected = in_memory(doc, project.pytester.path)
    assert doc["suites"] == expected["suites"]
    assert doc["cases"] == expected["cases"]
    assert text == dumps_results(expected) + "\n"  # byte for byte
    (row,) = [r for r in doc["suites"] if r["suite"] == "many"]
    assert row["cases"] == N and row["failed"] == len(range(0, N, 7))
    (tagged,) = [r for r in doc["suites"] if r["suite"] == "tagged"]
    assert tagged["cases"] == 2 and "labels" in tagged  # the per-label report, from the cases kept whole
    result.stdout.fnmatch_lines(["*many*openai/test-model*"])  # the summary table


def test_gate_reads_the_streamed_cases(project: Any) -> None:
    project.server.default = "ok"
    project.write("cases/many.yaml", many_cases(300))
    project.run("--llm-update-baseline").assert_outcomes(passed=300)
    project.server.answer("Question 1", "nope")  # c1, c10..c19, c100..c199: a regression on ~37% of the cases
    result = project.run("--llm-baseline=.llmeval/baseline.json", "--llm-gate=pass_rate:-0.05", "--llm-cache=off")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*many*"])
    gate = project.results()["gate"]
    assert gate["failed"] is True

"""Holdout discipline: `llmeval split` (per problem, comments kept, stable), problem grouping, and the in-place
edit of case files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pytest_llmeval.cases.holdout import assign_splits, bucket, normalise
from pytest_llmeval.cases.writer import edit_yaml_cases
from pytest_llmeval.cli.main import main as llmeval

# ------------------------------------------------------------------------------------- llmeval split

VARIANTS = """\
# Capitals. Variants of one problem must share a split.
suite: caps
cases:
  # the classic
  - id: fr-1
    question: What is the capital of France?
    expect: [{contains: Paris}]
  - id: fr-2
    question: "what is the capital of france"   # the same problem, other case and punctuation
    expect: [{contains: Paris}]
  - {id: fr-3, question: "WHAT IS THE CAPITAL OF FRANCE?!", expect: [{contains: Paris}]}
"""


def _many(n: int) -> str:
    lines = ["suite: many", "cases:"]
    for i in range(n):
        lines += [f"  - id: q{i}", f"    question: Question number {i} about topic {i % 7}?",
                  "    expect: [{contains: x}]"]
        if i % 3 == 0:  # a variant of the same problem, differently written
            lines += [f"  - id: q{i}-v", f"    question: question NUMBER {i} about topic {i % 7}",
                      "    expect: [{contains: x}]"]
    return "\n".join(lines) + "\n"


def test_llmeval_split_assigns_per_problem_keeps_comments_and_is_stable(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "caps.yaml"
    small.write_text(VARIANTS)
    assert llmeval(["split", str(small), "--test", "0.5", "--seed", "3"]) == 0
    text = small.read_text()
    # Comments, quoting and the flow mapping are kept; only split lines were added.
    assert "# the classic" in text and "# the same problem, other case and punctuation" in text
    assert text.replace("\n    split: test", "").replace("\n    split: dev", "").replace(
        "split: test, ", "").replace("split: dev, ", "") == VARIANTS
    data = yaml.safe_load(text)
    splits = {c["id"]: c["split"] for c in data["cases"]}
    assert len(set(splits.values())) == 1  # three variants of one problem: one split

    big = tmp_path / "many.yaml"
    big.write_text(_many(200))
    assert llmeval(["split", str(big), "--test", "0.25"]) == 0
    first = {c["id"]: c["split"] for c in yaml.safe_load(big.read_text())["cases"]}
    for i in range(0, 200, 3):
        assert first[f"q{i}"] == first[f"q{i}-v"]  # variants never straddle the split
    share = sum(1 for i in range(200) if first[f"q{i}"] == "test") / 200
    assert 0.15 < share < 0.35
    # Running again changes nothing; new cases never move old ones; an existing test case stays in test.
    before = big.read_text()
    assert llmeval(["split", str(big), "--test", "0.25"]) == 0
    assert big.read_text() == before
    assert llmeval(["split", str(big), "--test", "0.9"]) == 0
    assert {c["id"]: c["split"] for c in yaml.safe_load(big.read_text())["cases"]} == first
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(_many(260))
    assert llmeval(["split", str(fresh), "--test", "0.25"]) == 0
    again = {c["id"]: c["split"] for c in yaml.safe_load(fresh.read_text())["cases"]}
    assert {k: again[k] for k in first} == first  # the same assignment, whatever else is in the file
    out = capsys.readouterr().out
    assert "problems" in out and "wrote" in out


def test_llmeval_split_dry_run_jsonl_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "s.jsonl"
    rows = [{"id": f"r{i}", "question": f"Item {i}?", "expect": [{"contains": "x"}]} for i in range(40)]
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert llmeval(["split", str(suite), "--test", "0.3", "--dry-run", "-v"]) == 0
    assert suite.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    out = capsys.readouterr().out
    assert "40 cases in 40 problems" in out and "r0: " in out
    assert llmeval(["split", str(suite), "--test", "0.3"]) == 0
    written = [json.loads(line) for line in suite.read_text().splitlines()]
    assert all(r["split"] in ("dev", "test") for r in written) and [r["id"] for r in written] == [r["id"] for r in rows]
    with pytest.raises(SystemExit) as exc:
        llmeval(["split", str(suite), "--test", "1.5"])
    assert exc.value.code == 2
    assert "expected a fraction between 0 and 1" in capsys.readouterr().err


def test_problem_grouping_units() -> None:
    assert normalise("What's   the CAPITAL, of France?!") == "what s the capital of france"
    assert 0 <= bucket("a", 0) < 1 and bucket("a", 0) != bucket("a", 1)

    class C:
        def __init__(self, id: str, q: str, problem: str | None = None) -> None:
            self.id, self.prompt = id, q
            self.fields = {"question": q, **({"problem": problem} if problem else {})}

    cases = [C("a", "Sort a list", "sort"), C("b", "Order these numbers", "sort"), C("c", "Reverse a string")]
    plan = assign_splits(cases, test_fraction=0.5, seed=1)
    assert plan[0].split == plan[1].split and plan[0].group == plan[1].group != plan[2].group
    # An explicit test case pulls its whole problem into test (no straddling), unless --force.
    explicit = {"a": "test", "b": "dev"}
    assert {p.split for p in assign_splits(cases[:2], test_fraction=0.0, explicit=explicit)} == {"test"}
    assert {p.split for p in assign_splits(cases[:2], test_fraction=0.0, explicit=explicit, force=True)} == {"dev"}
    # Near-duplicates by vector similarity join one group.
    vecs = [[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]]
    plan = assign_splits(cases, test_fraction=0.5, vectors=vecs, threshold=0.95, by="question")
    assert plan[0].group == plan[1].group != plan[2].group


def test_edit_yaml_cases_replaces_in_place() -> None:
    text = "cases:\n  - id: a  # keep me\n    split: dev\n    question: q\n  - question: r\n    id: 'b'\n"
    out = edit_yaml_cases(text, {0: {"split": "test"}, 1: {"split": "test"}})
    assert out == "cases:\n  - id: a  # keep me\n    split: test\n    question: q\n  - question: r\n    id: 'b'\n" \
                  "    split: test\n"
    assert edit_yaml_cases("cases:\n- {id: a}\n", {0: {"note": "yes"}}) == 'cases:\n- {note: "yes", id: a}\n'

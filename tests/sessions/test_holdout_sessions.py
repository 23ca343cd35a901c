"""Holdout discipline: `split: dev|test`, --llm-split, the ledger and its warning, and `llmeval split`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import Project
from pytest_llmeval.cases.edit import edit_yaml_cases
from pytest_llmeval.cases.holdout import assign_splits, bucket, normalise
from pytest_llmeval.cli.main import main as llmeval

SPLIT_SUITE = """\
suite: geo
system: Answer in one short sentence.
cases:
  - id: fr
    question: What is the capital of France?
    expect: [{contains: Paris}]
  - id: jp
    split: test
    question: What is the capital of Japan?
    expect: [{contains: Tokyo}]
  - id: it
    split: test
    question: What is the capital of Italy?
    expect: [{contains: Rome}]
"""


def script(project: Project) -> None:
    project.server.answer("France", "Paris.")
    project.server.answer("Japan", "Tokyo.")
    project.server.answer("Italy", "Milan.")


def test_test_split_runs_only_when_asked_and_every_evaluation_is_in_the_ledger(project: Project) -> None:
    project.write("cases/geo.yaml", SPLIT_SUITE)
    script(project)
    result = project.run()
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*holdout: 2 test-split item(s) not run (the holdout runs only with --llm-split test)"])
    asked = " ".join(r["messages"][-1]["content"] for r in project.server.requests)
    assert "Japan" not in asked and "Italy" not in asked  # deselected: never a model call
    ledger = project.pytester.path / ".llmeval/holdout.jsonl"
    assert not ledger.exists()  # a dev run is not an evaluation of the test split

    result = project.run("--llm-split=test")
    result.assert_outcomes(passed=1, failed=1, deselected=1)
    result.stdout.fnmatch_lines(["holdout: test split of geo [[]openai/test-model] evaluated (50.0%); evaluation #1*"])
    assert "WARNING" not in result.stdout.str()
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(entries) == 1
    e = entries[0]
    assert (e["suite"], e["model"], e["split"], e["passed"], e["failed"], e["pass_rate"], e["evaluation"]) == \
        ("geo", "openai/test-model", "test", 1, 1, 0.5, 1)
    assert e["date"] and e["run_id"] and len(e["prompt_hash"]) == 16
    doc = project.results()
    assert {c["case_id"]: c["split"] for c in doc["cases"]} == {"jp": "test", "it": "test"}
    assert doc["suites"][0]["split"] == "test" and doc["run"]["split"] == "test"

    # Same prompts again: on record, no warning. Then the system prompt is tuned: the next look warns loudly.
    project.run("--llm-split=test").stdout.no_fnmatch_line("*WARNING*")
    project.write("cases/geo.yaml", SPLIT_SUITE.replace("one short sentence", "one word"))
    result = project.run("--llm-split=test")
    result.stdout.fnmatch_lines(["*evaluation #3 in the ledger",
                                 "WARNING: the test split of geo was evaluated again after its prompts changed*"])
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [x["evaluation"] for x in entries] == [1, 2, 3]
    assert entries[0]["prompt_hash"] == entries[1]["prompt_hash"] != entries[2]["prompt_hash"]
    assert project.results()["run"]["holdout"][0]["changed_since"]["prompt_hash"] == entries[1]["prompt_hash"]

    # Adding a test case is not tuning: no warning.
    project.write("cases/geo.yaml", SPLIT_SUITE.replace("one short sentence", "one word") + """\
  - id: de
    split: test
    question: What is the capital of Germany?
    expect: [{contains: Berlin}]
""")
    project.run("--llm-split=test").stdout.no_fnmatch_line("*WARNING*")


def test_split_all_and_bad_values(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("cases/geo.yaml", SPLIT_SUITE)
    script(project)
    project.run("--llm-split=all").assert_outcomes(passed=2, failed=1)
    result = project.run("--llm-split=holdout")
    result.stderr.fnmatch_lines(["*Invalid --llm-split 'holdout' from command line --llm-split: expected one of "
                                 "dev, test, all.*"])
    monkeypatch.setenv("LLMEVAL_SPLIT", "test")
    project.run().assert_outcomes(passed=1, failed=1, deselected=1)
    project.write("cases/bad.yaml", "cases:\n  - id: x\n    split: validation\n    question: q\n"
                                    "    expect: [{contains: a}]\n")
    result = project.run("cases/bad.yaml")
    result.stdout.fnmatch_lines(["*bad.yaml:3: cases[[]0[]].split: Input should be 'dev' or 'test'*"])


def test_hand_written_tests_join_the_holdout_by_marker(project: Project) -> None:
    project.pytester.makepyfile(test_hw="""
        import pytest

        @pytest.mark.llm_case(split="test")
        def test_held(llm):
            assert "Paris" in llm("What is the capital of France?")

        def test_dev(llm):
            assert "Tokyo" in llm("What is the capital of Japan?")
    """)
    script(project)
    project.run("test_hw.py").assert_outcomes(passed=1, deselected=1)
    project.run("test_hw.py", "--llm-split=test").assert_outcomes(passed=1, deselected=1)
    assert [c["case_id"] for c in project.results()["cases"]] == ["test_held"]


def test_split_with_xdist(project: Project) -> None:
    project.write("cases/geo.yaml", SPLIT_SUITE)
    script(project)
    result = project.run("-n", "2", "--llm-split=test")
    result.assert_outcomes(passed=1, failed=1)
    entries = (project.pytester.path / ".llmeval/holdout.jsonl").read_text().splitlines()
    assert len(entries) == 1 and json.loads(entries[0])["cases"] == 2


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

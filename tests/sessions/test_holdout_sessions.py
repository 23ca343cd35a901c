"""Holdout discipline in whole sessions: `split: dev|test`, --llm-split, the ledger and its warning."""

from __future__ import annotations

import json

import pytest

from conftest import Project

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

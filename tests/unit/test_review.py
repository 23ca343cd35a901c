"""`llmeval review` and `llmeval import-feedback` called in process: ids and splits, cases that would not load,
feedback rows, and the text-level append that keeps a suite file's comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.review import REVIEW_HEAD, candidate, expected_id, make_project, read_review, suite_cases

from pytest_llmeval.cases.holdout import bucket, normalise
from pytest_llmeval.cases.writer import append_yaml_cases
from pytest_llmeval.flywheel.review import main as llmeval


def test_ids_are_deterministic_and_splits_are_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cands = [
        candidate("What is the capital of Spain?", "Madrid"),  # the suite's `spain` problem (test split)
        candidate("what is the capital of FRANCE", "Paris"),  # the suite's `france` problem (dev)
        candidate("Name Spain's seat of government.", "Madrid", provenance={"source": "generate",
                                                                             "source_case": "spain"}),
        *(candidate(f"What is the capital of country number {i}?", f"C{i}") for i in range(24)),
        {"status": "pending", "case": {"question": "Sort a list", "problem": "sorting", "expect": [{"contains": "a"}]}},
        {"status": "pending", "case": {"question": "Order numbers", "problem": "sorting", "expect": [{"contains": "b"}]}},
        candidate("What is the capital of Italy?", "Rome"),
        candidate("What is the capital of Italy?", "Rome"),  # the same case twice: ids stay unique
    ]
    ids: dict[str, list[Any]] = {}
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        suite, review = make_project(tmp_path / run, cands)
        assert llmeval(["review", str(review), "--accept-all", "--test", "0.5", "--seed", "7"]) == 0
        ids[run] = [(c["id"], c["split"]) for c in read_review(review)]
        loaded = suite_cases(suite)
        assert [loaded[i].split for i, _ in ids[run]] == [s for _, s in ids[run]]
    assert ids["one"] == ids["two"]  # the same candidates get the same ids and splits in another copy
    got = ids["one"]
    assert [i for i, _ in got[:27]] == [expected_id("geography", c["case"]) for c in cands[:27]]
    assert got[-1][0] == got[-2][0] + "-2"
    assert got[0][1] == "test" and got[1][1] == "dev" and got[2][1] == "test"  # joined existing problems
    assert got[27][1] == got[28][1]  # one `problem`, one split
    numbered = [s for _, s in got[3:27]]
    assert numbered == ["test" if bucket(normalise(f"What is the capital of country number {i}?"), 7) < 0.5
                        else "dev" for i in range(24)]
    assert {"dev", "test"} <= set(numbered)

    # A run that stopped between writing the suite and recording the decision: the case is not added twice.
    suite, review = tmp_path / "one" / "geography.yaml", tmp_path / "one" / "review.yaml"
    before = suite.read_text()
    review.write_text(REVIEW_HEAD + yaml.safe_dump({"candidates": cands}, sort_keys=False))
    capsys.readouterr()
    assert llmeval(["review", str(review), "--accept-all", "--test", "0.5", "--seed", "7"]) == 0
    assert suite.read_text() == before
    assert [(c["id"], c["split"]) for c in read_review(review)] == got
    assert capsys.readouterr().out.count("already in the suite file") == len(cands)


def test_a_case_that_would_not_load_is_never_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = {"status": "pending", "case": {"question": "Capital of Peru?", "expect": [{"containz": "Lima"}]}}
    suite, review = make_project(tmp_path, [broken, candidate("What is the capital of Italy?", "Rome")])
    assert llmeval(["review", str(review), "--accept-all"]) == 1
    out = capsys.readouterr().out
    assert "1/2 not accepted (left pending): expect[0].containz: unknown check 'containz'" in out
    assert [c["status"] for c in read_review(review)] == ["pending", "accepted"]
    assert "containz" not in suite.read_text() and not list(tmp_path.glob(".geography.*"))  # no temporary left
    assert llmeval(["review", str(review), "--list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["#", "status", "id", "split", "flags", "case"]
    assert table[1].split()[:2] == ["1", "pending"] and table[2].split()[:2] == ["2", "accepted"]
    assert "1 pending, 1 accepted, 0 rejected, 0 skipped" in table[-1]
    assert llmeval(["review", str(review), "--reject-all"]) == 0
    assert [c["status"] for c in read_review(review)] == ["rejected", "accepted"]

    # A missing suite file is created on the first accept (and loads); a file that is not a review is an error.
    review.write_text("suite: new/capitals.yaml\nkind: qna\ncandidates:\n" + yaml.safe_dump(
        [candidate("What is the capital of Italy?", "Rome")], sort_keys=False))
    (tmp_path / "new").mkdir()
    assert llmeval(["review", str(review), "--accept-all"]) == 0
    assert list(suite_cases(tmp_path / "new" / "capitals.yaml")) == [read_review(review)[0]["id"]]
    assert read_review(review)[0]["id"].startswith("capitals-")
    review.write_text("cases: []\n")
    with pytest.raises(SystemExit) as exc:
        llmeval(["review", str(review)])
    assert exc.value.code == 2 and "not a review file" in capsys.readouterr().err


def test_import_feedback_makes_candidates_and_reports_malformed_rows(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    suite, _ = make_project(tmp_path, [])
    rows = [
        '{"question": "What is the capital of Australia?", "answer": "Sydney", '
        '"correction": "Canberra is the capital of Australia.", "rating": 1, "id": "conv-17", "tags": ["geo"]}',
        '{"question": "Who wrote Hamlet?", "answer": "Charles Dickens, in 1600.", "timestamp": "2026-11-01"}',
        "not json",
        '["a", "list"]',
        '{"question": "", "answer": "x"}',
        '{"question": "Why?", "correction": "Because."}',
        "",
        '{"question": "How tall is Everest?", "answer": "8,849 m", "label": "good"}',
        '{"question": "What is the capital of Spain?", "answer": "Barcelona", "correction": "Madrid"}',
        '{"question": "Who wrote Hamlet?", "answer": "Charles Dickens, in 1600."}',
    ]
    feedback = tmp_path / "prod.jsonl"
    feedback.write_text("\n".join(rows) + "\n")
    assert llmeval(["import-feedback", str(feedback), "--suite", str(suite)]) == 0
    captured = capsys.readouterr()
    assert f"{feedback}:3: invalid JSON" in captured.err and f"{feedback}:4: expected a JSON object" in captured.err
    assert f"{feedback}:5: 'question'" in captured.err and f"{feedback}:6: 'answer'" in captured.err
    assert "10 rows" not in captured.out and "9 rows: 3 new candidate(s), 4 malformed, 1 not marked bad, " \
        "1 duplicate(s)" in captured.out
    out = tmp_path / "prod.review.yaml"
    doc = yaml.safe_load(out.read_text())
    assert out.read_text().startswith("# written by llmeval import-feedback")
    assert doc["suite"] == "geography.yaml" and doc["kind"] == "qna"
    australia, hamlet, spain = doc["candidates"]
    assert australia["case"] == {"question": "What is the capital of Australia?",
                                 "reference": "Canberra is the capital of Australia.",
                                 "expect": [{"judge": {"rubric": "correctness"}}, {"not_contains": "Sydney"}]}
    assert australia["provenance"] == {"source": "feedback", "file": "prod.jsonl", "line": 1, "answer": "Sydney",
                                       "id": "conv-17", "rating": 1, "tags": ["geo"]}
    assert "flags" not in australia and australia["status"] == "pending"
    assert hamlet["case"] == {"question": "Who wrote Hamlet?", "expect": [{"judge": {"rubric": "correctness"}}]}
    assert hamlet["flags"] == ["needs-reference"] and hamlet["provenance"]["timestamp"] == "2026-11-01"
    assert spain["flags"] == ["in-suite"] and spain["provenance"]["line"] == 9
    assert {"not_contains": "Barcelona"} in spain["case"]["expect"]

    # Importing again adds nothing; the candidates load in the suite.
    assert llmeval(["import-feedback", str(feedback), "--suite", str(suite), "--out", str(out)]) == 0
    assert len(yaml.safe_load(out.read_text())["candidates"]) == 3
    assert llmeval(["review", str(out), "--accept-all"]) == 0
    assert len(suite_cases(suite)) == 5

    # --max-rating leaves well-rated rows out; a suite of another kind is refused.
    rated = tmp_path / "rated.jsonl"
    rated.write_text('{"question": "A?", "answer": "b", "rating": 5}\n{"question": "C?", "answer": "d", "rating": 2}\n')
    assert llmeval(["import-feedback", str(rated), "--suite", str(suite), "--max-rating", "3"]) == 0
    assert [c["case"]["question"] for c in read_review(tmp_path / "rated.review.yaml")] == ["C?"]
    choice = tmp_path / "choice.yaml"
    choice.write_text('kind: choice\ncases:\n  - {id: a, question: "Q?", choices: {A: x, B: y}, answer: A}\n')
    capsys.readouterr()
    with pytest.raises(SystemExit):
        llmeval(["import-feedback", str(rated), "--suite", str(choice), "--out", str(tmp_path / "c.yaml")])
    assert "is a choice suite" in capsys.readouterr().err


def test_append_yaml_cases_keeps_every_byte() -> None:
    new = {"id": "n", "question": "two\nlines", "expect": [{"contains": "x"}]}
    text = "cases:\n- id: a  # first\n  q: |\n    block\n\n# trailing\nother: 1\n"
    out = append_yaml_cases(text, [new])
    assert out == "cases:\n- id: a  # first\n  q: |\n    block\n\n- id: n\n  question: |-\n    two\n    lines\n" \
                  "  expect:\n  - contains: x\n# trailing\nother: 1\n"  # indentless file, indentless lists
    assert yaml.safe_load(out)["cases"][1] == new
    assert append_yaml_cases("cases: [{id: a}]  # c\n", [{"id": "n"}]) == 'cases: [{id: a}, {"id": "n"}]  # c\n'
    assert append_yaml_cases("cases: []\n", [{"id": "n"}]) == 'cases: [{"id": "n"}]\n'
    assert append_yaml_cases("kind: qna\ncases:  # none yet\n", [{"id": "n"}]) == \
        "kind: qna\ncases:  # none yet\n  - id: n\n"
    assert append_yaml_cases("kind: qna", [{"id": "n"}]) == "kind: qna\ncases:\n  - id: n\n"
    last = "cases:\n    - id: a\n      q: b"  # no final newline, deeper indentation
    assert append_yaml_cases(last, [{"id": "n", "tags": ["t"]}]) == last + "\n    - id: n\n      tags:\n        - t\n"

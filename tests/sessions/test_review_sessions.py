"""`llmeval review` driven in a pseudo-terminal the way a person uses it, `llmeval import-feedback`, and the
text-level append that keeps a suite file's comments."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_llmeval.cases.edit import append_yaml_cases
from pytest_llmeval.cases.holdout import bucket, normalise
from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.flywheel.review import main as llmeval

PROMPT = "[q]uit? "

# The insertion point is between HEAD and TAIL: right after the last case, before the closing comment.
HEAD = """\
# Geography: hand-written, reviewed by Ana
suite: geography
system: Answer in one short sentence.   # keep it short
cases:
  - id: france   # the classic
    question: "What is the capital of France?"
    expect: [{contains: Paris}]
  - id: spain
    question: 'What is the capital of Spain'
    split: test
    expect:
      - contains: Madrid    # not "Barcelona"
"""
TAIL = """
# more to come: generated cases go through llmeval review
"""

REVIEW_HEAD = """\
# written by llmeval generate; review with: llmeval review <this file>
suite: geography.yaml            # target suite file, relative to the review file
kind: qna
generated_at: 2026-11-30T07:00:00+00:00
spec_hash: 1a2b3c
summary: {generated: 30, invalid: 4, duplicates: 6, kept: 10}
"""


def candidate(question: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {"status": "pending", "case": {"question": question, "expect": [{"contains": answer}]},
            "provenance": {"source": "generate", "generator": "openai/gpt-4o-mini", "temperature": 0.9, "run": 2,
                           "prompt_hash": "1a2b", "filters": ["schema", "dedupe"], "transformation": None,
                           "source_case": None}, **extra}


def expected_id(suite: str, case: dict[str, Any]) -> str:
    body = {k: v for k, v in case.items() if k not in ("id", "split")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{suite}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def make_project(tmp_path: Path, candidates: list[dict[str, Any]]) -> tuple[Path, Path]:
    suite = tmp_path / "geography.yaml"
    suite.write_text(HEAD + TAIL)
    review = tmp_path / "review.yaml"
    review.write_text(REVIEW_HEAD + yaml.safe_dump({"candidates": candidates}, sort_keys=False))
    return suite, review


def read_review(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["candidates"]  # type: ignore[no-any-return]


def suite_cases(path: Path) -> dict[str, Any]:
    loaded = load_file(path, builtin_registry())
    assert loaded.errors == []
    return {c.id: c for c in loaded.cases}


class Terminal:
    """`python -m pytest_llmeval.flywheel.review ARGS` in a pseudo-terminal: wait for text, type lines."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        master, slave = os.openpty()
        self.master = master
        self.proc = subprocess.Popen([sys.executable, "-m", "pytest_llmeval.flywheel.review", *args], cwd=cwd,
                                     stdin=slave, stdout=slave, stderr=slave, env={**os.environ, **(env or {})},
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.seen = ""
        self.pos = 0
        self.eof = False

    def _read(self, deadline: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program closed the terminal
            data = b""
        if not data:
            self.eof = True
        self.seen += self.decoder.decode(data).replace("\r\n", "\n")

    def expect(self, text: str, timeout: float = 30) -> str:
        """Everything shown up to and including ``text`` (after what earlier calls consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.seen.find(text, self.pos)
            if at >= 0:
                shown, self.pos = self.seen[self.pos:at + len(text)], at + len(text)
                return shown
            if self.eof or time.monotonic() > deadline:
                why = "the program ended" if self.eof else f"no {text!r} within {timeout} s"
                raise AssertionError(f"{why}; the terminal showed:\n{self.seen}")
            self._read(deadline)

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the program to end: its exit status and what it showed after the last expect."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(deadline)
        rc = self.proc.wait(max(0.1, deadline - time.monotonic()))
        os.close(self.master)
        return rc, self.seen[self.pos:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        os.close(self.master)


def test_accept_reject_skip_in_a_terminal_keeps_the_suite_file_byte_for_byte(tmp_path: Path) -> None:
    italy = candidate("What is the capital of Italy?", "Rome", flags=["leak"], notes=["judge: reference checked"])
    suite, review = make_project(tmp_path, [italy, candidate("What is the capital of Peru?", "Lima"),
                                            candidate("What is the capital of Chile?", "Santiago")])
    term = Terminal(["review", "review.yaml"], tmp_path)
    shown = term.expect(PROMPT)
    assert "candidate 1/3 (pending) flags: leak" in shown
    assert "question: What is the capital of Italy?" in shown and "- contains: Rome" in shown
    assert "generator: openai/gpt-4o-mini" in shown and "source_case" not in shown  # nulls left out
    assert "notes:\n  - 'judge: reference checked'" in shown
    term.send("a")
    new_id = expected_id("geography", italy["case"])
    assert f"accepted as {new_id} (" in term.expect("\n", timeout=30) + term.expect(PROMPT)
    assert "candidate 2/3" in term.seen
    term.send("r")
    assert "candidate 3/3" in term.expect(PROMPT)
    term.send("s")
    rc, rest = term.finish()
    assert rc == 0 and "done: 0 pending, 1 accepted, 1 rejected, 1 skipped" in rest

    # The suite file: every original byte kept (comments, quoting, flow mapping), the case appended in between.
    text = suite.read_text()
    assert text.startswith(HEAD) and text.endswith(TAIL)
    added = text[len(HEAD):len(text) - len(TAIL)]
    assert added.startswith(f"  - id: {new_id}\n    split: ")
    assert "    question: What is the capital of Italy?\n    expect:\n      - contains: Rome\n" in added
    cases = suite_cases(suite)
    assert set(cases) == {"france", "spain", new_id}
    assert cases[new_id].split == ("test" if bucket(normalise("What is the capital of Italy?"), 0) < 0.2 else "dev")

    # The review file: decisions with what they produced; the generator's header comment kept.
    after = review.read_text()
    assert after.startswith("# written by llmeval generate; review with: llmeval review <this file>\n")
    doc = yaml.safe_load(after)
    assert doc["summary"] == {"generated": 30, "invalid": 4, "duplicates": 6, "kept": 10}
    first, second, third = doc["candidates"]
    assert (first["status"], first["id"], first["split"], first["written_to"]) == \
        ("accepted", new_id, cases[new_id].split, "geography.yaml")
    assert first["case"] == italy["case"] and first["flags"] == ["leak"] and first["provenance"] == italy["provenance"]
    assert second["status"] == "rejected" and third["status"] == "skipped"

    # Nothing left, unless skipped candidates are asked for again.
    rc, out = Terminal(["review", "review.yaml"], tmp_path).finish()
    assert rc == 0 and "nothing to review" in out and "--all reviews the skipped" in out
    term = Terminal(["review", "review.yaml", "--all"], tmp_path)
    assert "candidate 3/3 (skipped)" in term.expect(PROMPT)
    term.send("r")
    assert term.finish()[0] == 0
    assert [c["status"] for c in read_review(review)] == ["accepted", "rejected", "rejected"]
    assert suite.read_text() == text


def test_quit_and_crash_lose_nothing_and_a_rerun_resumes(tmp_path: Path) -> None:
    cands = [candidate(f"What is the capital of {c}?", a) for c, a in
             [("Italy", "Rome"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Japan", "Tokyo")]]
    suite, review = make_project(tmp_path, cands)
    term = Terminal(["review", "review.yaml"], tmp_path)
    term.expect(PROMPT)
    term.send("a")
    assert "candidate 2/4" in term.expect(PROMPT)
    term.send("q")
    rc, rest = term.finish()
    assert rc == 0 and "stopped at candidate 2/4" in rest and "again to resume" in rest
    assert [c["status"] for c in read_review(review)] == ["accepted", "pending", "pending", "pending"]

    # Resumes at the first undecided candidate; killed right after an answer, the answer is on disk.
    term = Terminal(["review", "review.yaml"], tmp_path)
    shown = term.expect(PROMPT)
    assert "candidate 2/4" in shown and "candidate 1/4" not in shown
    term.send("r")
    term.expect("rejected\n")
    term.kill()
    assert [c["status"] for c in read_review(review)] == ["accepted", "rejected", "pending", "pending"]

    term = Terminal(["review", "review.yaml"], tmp_path)
    assert "candidate 3/4" in term.expect(PROMPT)
    term.send("a")
    assert "candidate 4/4" in term.expect(PROMPT)
    term.send("a")
    rc, rest = term.finish()
    assert rc == 0 and "done: 0 pending, 3 accepted, 1 rejected" in rest
    ids = [expected_id("geography", cands[i]["case"]) for i in (0, 2, 3)]
    assert [c.get("id") for c in read_review(review)] == [ids[0], None, ids[1], ids[2]]
    assert list(suite_cases(suite)) == ["france", "spain", *ids]


EDITOR = """\
import json, pathlib, sys
# Each run applies the next (old, new) replacement from edits.json, as a person editing the case would.
queue = pathlib.Path(__file__).with_name("edits.json")
edits = json.loads(queue.read_text())
old, new = edits.pop(0)
queue.write_text(json.dumps(edits))
case = pathlib.Path(sys.argv[1])
text = case.read_text()
assert old in text, (old, text)
case.write_text(text.replace(old, new))
"""


def test_edit_opens_the_editor_and_an_invalid_edit_is_shown_and_asked_again(tmp_path: Path) -> None:
    broken = {"status": "pending", "case": {"question": "Capital of Peru?", "expect": [{"containz": "Lima"}]}}
    suite, review = make_project(tmp_path, [candidate("What is the capital of Italy?", "Rome"), broken])
    (tmp_path / "editor.py").write_text(EDITOR)
    (tmp_path / "edits.json").write_text(json.dumps([
        ["contains: Rome", "containz: Rome"],  # an unknown check: the loader says so
        ["question: What is the capital of Italy?\n", "question: [unclosed\n"],  # not YAML
        ["question: [unclosed\n", "question: Which city is the capital of Italy?\n"],
        ["containz: Rome", "contains: Rome"],
    ]))
    term = Terminal(["review", "review.yaml"], tmp_path, env={"EDITOR": f"{sys.executable} editor.py"})
    term.expect(PROMPT)
    term.send("e")
    shown = term.expect(PROMPT)
    assert "invalid edit (not applied)" in shown and "expect[0].containz: unknown check 'containz'" in shown
    term.send("e")  # the next edit starts from the invalid text, not from scratch
    assert "YAML syntax error" in term.expect(PROMPT)
    term.send("e")
    assert "unknown check 'containz'" in term.expect(PROMPT)
    assert read_review(review)[0]["case"]["question"] == "What is the capital of Italy?"  # nothing applied yet
    term.send("e")
    shown = term.expect(PROMPT)
    assert "edited (saved)" in shown and "question: Which city is the capital of Italy?" in shown
    assert read_review(review)[0]["case"]["question"] == "Which city is the capital of Italy?"  # saved at once
    term.send("x")
    assert "answer a, r, e, s or q" in term.expect(PROMPT)
    term.send("a")
    assert "candidate 2/2" in term.expect(PROMPT)
    term.send("a")  # a case that would not load is refused, and the question asked again
    shown = term.expect(PROMPT)
    assert "not accepted: the case would not load in geography.yaml" in shown and "unknown check 'containz'" in shown
    term.send("r")
    rc, _ = term.finish()
    assert rc == 0 and json.loads((tmp_path / "edits.json").read_text()) == []
    assert read_review(review)[1]["status"] == "rejected" and "containz" not in suite.read_text()
    edited = {"question": "Which city is the capital of Italy?", "expect": [{"contains": "Rome"}]}
    first = read_review(review)[0]
    assert first["status"] == "accepted" and first["edited"] is True and first["case"] == edited
    assert first["id"] == expected_id("geography", edited)
    assert suite_cases(suite)[first["id"]].fields["question"] == "Which city is the capital of Italy?"


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

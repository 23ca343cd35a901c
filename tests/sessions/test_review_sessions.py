"""`llmeval review` driven in a pseudo-terminal the way a person uses it."""

from __future__ import annotations

import codecs
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers.review import HEAD, TAIL, candidate, expected_id, make_project, read_review, suite_cases

from pytest_llmeval.cases.holdout import bucket, normalise

PROMPT = "[q]uit? "


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

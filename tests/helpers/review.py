"""A suite file, review files and their candidates for the review tests (tests/unit/test_review.py,
tests/sessions/test_review_sessions.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.checks.builtin import builtin_registry

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

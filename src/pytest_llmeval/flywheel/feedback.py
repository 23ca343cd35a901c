"""``llmeval import-feedback``: production interactions marked bad (JSONL) become candidate cases in a review file,
for ``llmeval review``."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmeval.cases.schema import InvalidCase
from pytest_llmeval.flywheel.review_file import ReviewError, ReviewFile, _Suite, canonical_json, review_header

# Feedback rows whose label says the answer was fine are not candidates.
GOOD_LABELS = frozenset({"good", "pass", "passed", "positive", "correct", "up", "thumbs_up", "thumbsup", "+1",
                         "helpful", "ok"})
# A bad answer becomes a not_contains check only when it is short and single-line (a long answer never recurs
# verbatim) and not part of the correction (a good answer would then fail).
NOT_CONTAINS_MAX = 80


@dataclass
class FeedbackImport:
    """What ``import_feedback`` did: the counts, and the rows it skipped with why."""

    out: Path
    counts: dict[str, int]
    problems: list[str]


def _feedback_case(question: str, answer: str, correction: str | None) -> tuple[dict[str, Any], list[str]]:
    """The candidate case for one bad interaction: a correctness judge (against the correction as reference when
    there is one), and with a correction, a not_contains check of a short bad answer."""
    expect: list[dict[str, Any]] = [{"judge": {"rubric": "correctness"}}]
    if correction is None:
        return {"question": question, "expect": expect}, ["needs-reference"]
    bad = answer.strip()
    if bad and len(bad) <= NOT_CONTAINS_MAX and "\n" not in bad and bad.lower() not in correction.lower():
        expect.append({"not_contains": bad})
    return {"question": question, "reference": correction, "expect": expect}, []


def _rating(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def import_feedback(feedback: Path, suite: Path, out: Path, *, max_rating: float | None = None) -> FeedbackImport:
    """Turn a JSONL of bad production interactions into review candidates (appended to ``out`` when it is
    already a review file of the same suite; a candidate already there is not added twice)."""
    from pytest_llmeval.cases.holdout import normalise

    try:
        text = feedback.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"cannot read {feedback}: {exc}") from None
    suite_rel = os.path.relpath(suite.resolve(), out.resolve().parent)
    if out.exists():
        review = ReviewFile.load(out)
        if review.target.resolve() != suite.resolve():
            raise ReviewError(f"{out} reviews candidates for {review.data['suite']}, not {suite}: choose another --out")
    else:
        review = ReviewFile(out, {"suite": suite_rel, "kind": "qna", "candidates": []},
                            review_header("llmeval import-feedback", out.name))
    kind = "qna"
    in_suite: set[str] = set()
    if suite.is_file():
        try:
            current = _Suite.read(suite, "qna", out.name)
        except InvalidCase as exc:
            raise ReviewError(exc.problems[0]) from None
        kind = current.kind
        in_suite = {normalise(str(c.fields.get("question") or c.prompt)) for c in current.loaded.cases}
    if kind != "qna":
        raise ReviewError(f"import-feedback makes question-and-answer cases; {suite} is a {kind} suite: "
                          "give a qna suite with --suite")
    seen = {canonical_json(c["case"]) for c in review.candidates}
    counts = Counter({"rows": 0, "malformed": 0, "not_bad": 0, "duplicates": 0, "kept": 0})
    problems: list[str] = []
    source = os.path.relpath(feedback.resolve(), out.resolve().parent)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    new: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        counts["rows"] += 1

        def bad(message: str, lineno: int = lineno) -> None:
            counts["malformed"] += 1
            problems.append(f"{feedback}:{lineno}: {message}; skipped")

        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(row, dict):
            bad("expected a JSON object with question and answer")
            continue
        question, answer, correction = row.get("question"), row.get("answer"), row.get("correction")
        if not isinstance(question, str) or not question.strip():
            bad("'question' is missing or not a non-empty string")
            continue
        if not isinstance(answer, str):
            bad("'answer' (the bad answer) is missing or not a string")
            continue
        if correction is not None and not isinstance(correction, str):
            bad("'correction' must be a string")
            continue
        if str(row.get("label", "")).strip().lower() in GOOD_LABELS:
            counts["not_bad"] += 1
            continue
        if max_rating is not None and "rating" in row:
            rating = _rating(row["rating"])
            if rating is None:
                bad(f"rating {row['rating']!r} is not a number (--max-rating)")
                continue
            if rating > max_rating:
                counts["not_bad"] += 1
                continue
        case, flags = _feedback_case(question.strip(), answer, (correction or "").strip() or None)
        key = canonical_json(case)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        if normalise(question) in in_suite:
            flags.append("in-suite")
        provenance: dict[str, Any] = {"source": "feedback", "file": source, "line": lineno, "answer": answer}
        provenance.update((k, row[k]) for k in ("id", "timestamp", "rating", "label", "tags") if k in row)
        cand: dict[str, Any] = {"status": "pending", "case": case, "provenance": provenance}
        if flags:
            cand["flags"] = flags
        new.append(cand)
        counts["kept"] += 1
    candidates = review.data.pop("candidates") + new
    summary = review.data.get("summary") if isinstance(review.data.get("summary"), dict) else {}
    review.data["summary"] = {k: int(summary.get(k, 0)) + v for k, v in counts.items()}  # type: ignore[union-attr]
    review.data["imported_at"] = stamp
    review.data["candidates"] = candidates  # last: the header fields read first
    review.save()
    return FeedbackImport(out, dict(counts), problems)


def cmd_import_feedback(args: argparse.Namespace) -> int:
    feedback = Path(args.feedback)
    out = Path(args.out) if args.out else feedback.with_name(feedback.stem + ".review.yaml")
    done = import_feedback(feedback, Path(args.suite), out, max_rating=args.max_rating)
    for problem in done.problems:
        print(problem, file=sys.stderr)
    c = done.counts
    print(f"{c['rows']} rows: {c['kept']} new candidate(s), {c['malformed']} malformed, {c['not_bad']} not marked "
          f"bad, {c['duplicates']} duplicate(s); review with: llmeval review {out}")
    return 0

"""LLM judges: parsing a verdict, and what the judge prompt carries."""

from __future__ import annotations

import pytest

from pytest_llmeval.checks.judge import RUBRICS, judge_messages, parse_verdict

# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("reply", "score", "reason", "problem"), [
    ('{"score": 8, "reason": "Correct and complete."}', 8, "Correct and complete.", None),
    ('```json\n{"score": 7, "reason": "ok"}\n```', 7, "ok", None),
    ('Here is my grade: {"Score": "9", "Explanation": "fine"} Hope this helps.', 9, "fine", None),
    ('{"rating": 6.5, "rationale": "partly"}', 6.5, "partly", None),
    ('{"score": "8/10", "reason": "good"}', 8, "good", None),
    ("Score: 7\nThe answer is right but terse.", 7, "The answer is right but terse", None),
    ("I would give it a rating of 9/10 because it is correct.", 9, None, None),
    ("**Score:** 3 - the answer is wrong.", 3, None, None),
    ("8/10", 8, "", None),
    ("7 out of 10. Mostly right.", 7, None, None),
    ("10", 10, "", None),
    ("  6. ", 6, "", None),
    ('{"score": 12, "reason": "great"}', None, "great", "score 12 is outside 0-10"),
    ("Score: -1", None, None, "score -1 is outside 0-10"),
    ('{"score": "high", "reason": "x"}', None, "x", "score 'high' is not a number"),
    ("The answer looks good to me.", None, "", "no score found"),
    ("", None, "", "empty reply"),
    ("Score: 4 for accuracy, score: 8 for style", None, "", "several scores in the reply (4, 8)"),
])
def test_parse_verdict(reply: str, score: float | None, reason: str | None, problem: str | None) -> None:
    v = parse_verdict(reply)
    assert v.score == score and v.problem == problem
    if reason is not None:
        assert v.reason == reason


def test_judge_prompt_has_question_answer_reference_and_context() -> None:
    msgs = judge_messages(RUBRICS["groundedness"], question="Q?", answer="A.", reference="R.", context="C.")
    text = msgs[-1]["content"]
    for part in ("Criterion:\nGroundedness", "Question:\nQ?", "Context:\nC.", "Reference answer:\nR.",
                 "Answer to grade:\nA.", '"score"'):
        assert part in text
    bare = judge_messages("Is it polite?", question="Q?", answer="")[-1]["content"]
    assert "Reference answer" not in bare and "Context" not in bare and "(empty answer)" in bare

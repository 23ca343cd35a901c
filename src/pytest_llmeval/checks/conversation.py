"""Conversation-level checks: ``goal``, an LLM judge that reads a conversation's transcript and says whether the user
reached their goal (a simulated user's ``simulate.goal``, or the check's own ``goal:``), scored 0-10 like the judge
check and through the same machinery (the request, one retry on an unusable reply, unscored after two).

    simulate: {persona: ..., goal: Find out how to export the data as CSV.}
    expect: [{goal: true}]                           # or {goal: {min: 8, model: ...}}
    turns: [...]
    expect: [{goal: The user learns how to reset the password.}]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pytest_llmeval.checks.judge import (
    JudgeEnv,
    conversation_judge_messages,
    judged,
)
from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec

GOAL_CRITERIA = (
    "Goal reached: the user came to this conversation with the goal below. Judge from the assistant's replies "
    "whether the user got what the goal needs (correct, usable, not only promised). 10 = fully reached; 7 = reached, "
    "with minor gaps; 4 = partly reached; 0 = not reached, or the assistant misled the user.\n"
    "The user's goal: {goal}"
)


class GoalParams(CheckParams):
    goal: str | None = Field(default=None, min_length=1)  # default: the case's simulate.goal
    min: float = Field(default=7, ge=0, le=10)  # pass when the judge's score >= min
    model: str | None = None  # this check's judge model (default: --llm-judge, else the model under test)


def case_goal(case: Any) -> str | None:
    """The goal of a simulated user (``simulate.goal`` of the case's fields), or None."""
    fields = getattr(case, "fields", None) or {}
    simulate = fields.get("simulate") if isinstance(fields, Mapping) else None
    goal = simulate.get("goal") if isinstance(simulate, Mapping) else getattr(simulate, "goal", None)
    return str(goal) if goal else None


def grade_goal(answer: str, case: CaseSpec, params: GoalParams, ctx: GradeContext) -> CheckOutcome:
    """Ask the judge whether the conversation reached the goal; fails with the reason when there is no transcript
    or no goal."""
    transcript = list(getattr(ctx, "transcript", ()))
    if not transcript:
        return CheckOutcome("goal", False, None, "no conversation to grade: the goal check needs a case with turns "
                                                 "or simulate")
    goal = params.goal or case_goal(case)
    if not goal:
        return CheckOutcome("goal", False, None, "no goal to grade against: write simulate.goal on the case or "
                                                 "{goal: <the user's goal>} in the check")
    from pytest_llmeval.targets.conversation import transcript_text

    env: JudgeEnv = ctx.judge
    model = params.model or env.judge_model
    messages = conversation_judge_messages(GOAL_CRITERIA.format(goal=goal.strip()),
                                           conversation=transcript_text(transcript))
    details: dict[str, Any] = {"goal": goal, "answers": sum(1 for m in transcript if m.get("role") == "assistant")}
    return judged("goal", "goal", env, model, messages, params.min, details)


CHECKS = [
    CheckDef("goal", GoalParams, grade_goal, shorthand="goal", kinds=frozenset({"qna"}), uses=frozenset({"judge"}),
             calls="judge", doc="an LLM judge reads a conversation's transcript and scores 0-10 whether the user "
                                "reached the goal (simulate.goal, or goal:); passes when score >= min"),
]

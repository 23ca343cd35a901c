"""LLM-as-judge: a second model scores the answer 0-10 against a rubric.

The judge sees the question, the answer, and, where the case has them, the reference answer and the
retrieved (or given) context. It must reply with a score and a reason; the reply is parsed robustly (JSON,
"Score: 7", "7/10", a bare number). An unparseable or out-of-range reply is retried once with a correction;
if the second reply is unusable too, the check is **unscored**: counted and shown on its own, never a pass,
a fail or a zero.

In a conversation case (``GradeContext.transcript`` not empty) the judge reads the whole transcript instead of one
question and answer, and grades the assistant's side of it; a single answer's request is unchanged. In an agent case
(``GradeContext.trajectory``) the judge also reads the tool calls that led to the answer (each step's tool,
arguments and result or error), so a rubric such as ``tool_use`` grades the whole trajectory.

Judge prompts are versioned (:data:`JUDGE_PROMPT_VERSION`): the version and the full rubric text are part of
every judge cache key, so editing a rubric or the prompt never serves a stale verdict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.providers.runner import Completion

JUDGE_PROMPT_VERSION = "1"
JUDGE_PARAMS = {"temperature": 0, "max_tokens": 200}  # a JSON verdict needs ~40 tokens
REASON_CHARS = 500

RUBRICS: dict[str, str] = {
    "groundedness": (
        "Groundedness: is every claim in the answer supported by the context (or, where no context is given, by "
        "the reference answer)? 10 = every claim is supported; 7 = supported with minor unsupported details; "
        "4 = a mix of supported and invented claims; 0 = invented or contradicting the material."
    ),
    "completeness": (
        "Completeness: does the answer fully address every part of the question, with respect to the context "
        "and the reference answer? 10 = complete; 7 = misses a minor point; 4 = answers about half; "
        "0 = does not answer the question."
    ),
    "correctness": (
        "Correctness: is the answer factually correct and consistent with the reference answer (when given)? "
        "Wording may differ. 10 = correct; 7 = correct with a minor inaccuracy; 4 = partly correct; 0 = wrong."
    ),
    "tool_use": (
        "Tool use: did the assistant call the tools the task needed, with sensible arguments, avoid needless, "
        "repeated or unsafe calls (an action the user did not confirm), recover from tool errors, and base its "
        "answer on what the tools returned? 10 = exemplary; 7 = right calls with a minor wasted or clumsy step; "
        "4 = a wrong or missing call, or an answer ignoring the results; 0 = harmful or useless tool use."
    ),
}

SYSTEM = (
    "You are a strict, fair evaluator of answers written by an AI assistant. You grade one answer against "
    "one criterion and reply with JSON only."
)

FIX_PROMPT = (
    'Your reply could not be used ({problem}). Reply with JSON only, exactly of the form '
    '{{"score": <integer 0-10>, "reason": "<one sentence>"}}.'
)


def resolve_rubric(rubric: str) -> tuple[str, str]:
    """(name, criteria text): a built-in rubric by name, or the user's own criteria (named ``custom``)."""
    key = rubric.strip().lower()
    if key in RUBRICS:
        return key, RUBRICS[key]
    return "custom", rubric.strip()


def judge_messages(criteria: str, *, question: str, answer: str, reference: str | None = None,
                   context: str | None = None, tool_calls: str | None = None) -> list[dict[str, str]]:
    """The judge's request (part of the cache key together with JUDGE_PROMPT_VERSION); ``tool_calls``: an agent's
    trajectory, one numbered line per step (core.tools.Trajectory.excerpt)."""
    parts = [f"Criterion:\n{criteria}", f"Question:\n{question}"]
    if context:
        parts.append(f"Context:\n{context}")
    if reference:
        parts.append(f"Reference answer:\n{reference}")
    if tool_calls is not None:
        parts.append(f"Tool calls the assistant made before answering (tool(arguments) -> result):\n{tool_calls}")
    parts.append(f"Answer to grade:\n{answer if answer.strip() else '(empty answer)'}")
    what = "the answer and the tool calls that led to it" if tool_calls is not None else "the answer"
    parts.append(f'Grade {what} on the criterion. Reply with JSON only: '
                 '{"score": <integer 0-10>, "reason": "<one sentence>"}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def conversation_judge_messages(criteria: str, *, conversation: str, reference: str | None = None,
                                context: str | None = None) -> list[dict[str, str]]:
    """The judge's request for a whole conversation (``conversation``: ``User: ...`` / ``Assistant: ...`` lines): the
    assistant's side of it is graded on the criterion."""
    parts = [f"Criterion:\n{criteria}", f"Conversation:\n{conversation if conversation.strip() else '(empty)'}"]
    if context:
        parts.append(f"Context:\n{context}")
    if reference:
        parts.append(f"Reference answer:\n{reference}")
    parts.append('Grade the assistant\'s replies over the whole conversation on the criterion. Reply with JSON only: '
                 '{"score": <integer 0-10>, "reason": "<one sentence>"}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


# ---------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Verdict:
    """A parsed judge reply: a score 0-10 and a reason, or the problem that made it unusable."""

    score: float | None
    reason: str = ""
    problem: str | None = None


_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_SCORE_WORD = re.compile(rf"\b(?:score|rating|grade)\b[\s*_\"']*(?:is|of|=|:)?[\s*_\"']*({_NUMBER})(\s*/\s*10\b)?",
                         re.IGNORECASE)
_OUT_OF_TEN = re.compile(rf"(?<![\d.])({_NUMBER})\s*(?:/|out\s+of)\s*10\b", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification", "comment")
_SCORE_KEYS = ("score", "rating", "grade")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*({_NUMBER})\s*(?:/\s*10)?\s*", value)
        return float(m.group(1)) if m else None
    return None


def ask_twice(ask: Callable[[list[dict[str, Any]], int], Completion], messages: list[dict[str, Any]],
              parse: Callable[[str], Any], fix_prompt: str, calls: list[Completion]) -> tuple[Any, list[str]]:
    """Ask a judge; if ``parse`` finds a problem in the reply, ask once more, quoting the reply and the problem.
    Returns the last parse result and every reply (the judge and vision checks share this)."""
    replies: list[str] = []
    parsed: Any = None
    for attempt in range(2):
        completion = ask(messages, attempt)
        calls.append(completion)
        replies.append(completion.text)
        parsed = parse(completion.text)
        if parsed.problem is None:
            break
        messages = [*messages, {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": fix_prompt.format(problem=parsed.problem)}]
    return parsed, replies


def shown_reply(text: str, limit: int = 200) -> str:
    shown = text.strip().replace("\n", " ")
    return shown[:limit] + ("…" if len(shown) > limit else "")


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in the text (fenced or inline), outermost first."""
    found: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for chunk in [*_FENCE.findall(text), text]:
        i = chunk.find("{")
        while i != -1:
            try:
                obj, end = decoder.raw_decode(chunk, i)
            except json.JSONDecodeError:
                i = chunk.find("{", i + 1)
                continue
            if isinstance(obj, dict):
                found.append(obj)
            i = chunk.find("{", end)
    return found


def _check_range(score: float, reason: str) -> Verdict:
    if not 0 <= score <= 10:
        return Verdict(None, reason, f"score {score:g} is outside 0-10")
    return Verdict(score, reason)


def parse_verdict(text: str) -> Verdict:
    """Read a score 0-10 and a reason from a judge's reply, however it was phrased.

    Tried in order: a JSON object with a score key (fenced or inline), "score: 7" / "rating of 7/10",
    "7/10" / "7 out of 10", and a reply that is only a number. Several different scores in prose are
    ambiguous and so unusable.
    """
    text = (text or "").strip()
    if not text:
        return Verdict(None, "", "empty reply")
    for obj in json_objects(text):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        key = next((k for k in _SCORE_KEYS if k in lowered), None)
        if key is None:
            continue
        score = _number(lowered[key])
        reason = next((str(lowered[k]) for k in _REASON_KEYS if lowered.get(k)), "")
        if score is None:
            return Verdict(None, reason, f"{key} {lowered[key]!r} is not a number")
        return _check_range(score, reason[:REASON_CHARS])
    for pattern in (_SCORE_WORD, _OUT_OF_TEN):
        scores = {float(m.group(1)) for m in pattern.finditer(text)}
        if len(scores) > 1:
            return Verdict(None, "", f"several scores in the reply ({', '.join(f'{s:g}' for s in sorted(scores))})")
        if scores:
            score = scores.pop()
            reason = re.sub(r"\s+", " ", pattern.sub(" ", text)).strip(" .:-*\n")
            return _check_range(score, reason[:REASON_CHARS])
    bare = _number(text.strip(" .*`\"'"))
    if bare is not None:
        return _check_range(bare, "")
    return Verdict(None, "", "no score found")


# ---------------------------------------------------------------------------------------------- the check


class JudgeParams(CheckParams):
    rubric: str = Field(min_length=1)  # groundedness | completeness | correctness | your own criteria
    min: float = Field(default=7, ge=0, le=10)  # pass when the judge's score >= min
    model: str | None = None  # this check's judge model (default: --llm-judge, else the model under test)
    tolerance: float = Field(default=1, ge=0, le=10)  # calibration suites: agreement within +- tolerance

    @field_validator("rubric")
    @classmethod
    def _known_or_text(cls, v: str) -> str:
        name = v.strip().lower()
        if name not in RUBRICS and len(v.split()) < 3:
            raise ValueError(f"unknown rubric {v!r}: use {', '.join(RUBRICS)}, or write your own criteria "
                             "as a sentence")
        return v


@dataclass
class JudgeEnv:
    """What a judge check needs from the run: who judges, and how to call it (through the exact cache).

    ``ask(model, messages, attempt)`` returns a Completion and raises ModelCallError on provider failure
    (an ``error`` outcome, like any other provider failure).
    """

    judge_model: str
    self_judging: bool
    ask: Callable[[str, list[dict[str, str]], int], Completion]
    context: str | None = None  # retrieved context, when the case used retrieval
    calls: list[Completion] = field(default_factory=list)

    def complete(self, messages: list[dict[str, str]], model: str | None = None, attempt: int = 0) -> Completion:
        """One call to the judge (``model``, default: this item's judge model), recorded in ``calls``, which are
        the case's judge cost in results.json. ``attempt`` picks another cache slot for a retry."""
        completion = self.ask(model or self.judge_model, messages, attempt)
        self.calls.append(completion)
        return completion


def grade_judge(answer: str, case: CaseSpec, params: JudgeParams, ctx: GradeContext | JudgeEnv, *,
                question: str | None = None) -> CheckOutcome:
    """Ask the judge; retry once on an unusable reply; unscored if the retry is unusable too.

    ``ctx``: the grading context (its ``judge`` service), or a JudgeEnv given directly (the ``llm_judge`` fixture
    grades a hand-written test's answer outside any case item)."""
    env = ctx if isinstance(ctx, JudgeEnv) else ctx.judge
    name, criteria = resolve_rubric(params.rubric)
    model = params.model or env.judge_model
    context = env.context or _text(case.fields.get("context"))
    transcript = [] if isinstance(ctx, JudgeEnv) else list(getattr(ctx, "transcript", ()))
    if transcript:  # a conversation: the judge grades all of it (a single answer's request is unchanged)
        from pytest_llmeval.targets.conversation import transcript_text

        messages = conversation_judge_messages(criteria, conversation=transcript_text(transcript),
                                               reference=_text(case.fields.get("reference")), context=context)
    else:
        trajectory = None if isinstance(ctx, JudgeEnv) else getattr(ctx, "trajectory", None)
        messages = judge_messages(criteria, question=question or case.prompt, answer=answer,
                                  reference=_text(case.fields.get("reference")), context=context,
                                  tool_calls=trajectory.excerpt(limit=30) if trajectory is not None else None)
    details: dict[str, Any] = {"rubric": name, **({"conversation": True} if transcript else {})}
    return judged("judge", name, env, model, messages, params.min, details, unscored_prefix=f"{name}: ")


def judged(check: str, label: str, env: JudgeEnv, model: str, messages: list[dict[str, str]], minimum: float,
           details: dict[str, Any], unscored_prefix: str = "") -> CheckOutcome:
    """Ask the judge ``model`` (retrying once on an unusable reply) and turn its 0-10 score into the outcome of
    ``check``: passed at ``minimum`` or above, unscored when no reply held a score. ``details`` gets the judge's
    model, attempts, score and reason."""
    verdict, replies = ask_twice(lambda msgs, attempt: env.ask(model, msgs, attempt), messages, parse_verdict,
                                 FIX_PROMPT, env.calls)
    details.update(judge=model, min=minimum, attempts=len(replies), prompt_version=JUDGE_PROMPT_VERSION)
    if model == env.judge_model and env.self_judging:
        details["self_judging"] = True
    if verdict.score is None:
        return CheckOutcome.unscorable(
            check, f"{unscored_prefix}judge {model} gave no usable score in {len(replies)} tries "
                   f"({verdict.problem}; last reply: {shown_reply(replies[-1])!r})", **details, replies=replies)
    details.update(score=verdict.score, reason=verdict.reason)
    passed = verdict.score >= minimum
    reason = f"{label} {verdict.score:g}/10 {'>=' if passed else '<'} min {minimum:g}"
    return CheckOutcome(check, passed, verdict.score / 10, reason + (f": {verdict.reason}" if verdict.reason else ""),
                        details=details)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\n\n".join(str(v) for v in value)
    return str(value)


CHECKS = [
    CheckDef("judge", JudgeParams, grade_judge, shorthand="rubric", uses=frozenset({"judge"}), calls="judge",
             doc="an LLM judge scores the answer 0-10 on a rubric; passes when score >= min"),
]


def calibrate(case: CaseSpec, outcomes: list[CheckOutcome]) -> dict[str, Any]:
    """Agreement of the judge with a calibration case's human label.

    A human score agrees when the judge's score is within the check's ``tolerance``; a human verdict agrees
    when the judge's verdict (score >= min) is the same. Both verdicts are recorded for Cohen's kappa.
    """
    if case.fields.get("image") is not None:
        return calibrate_vision(case, outcomes)
    spec = next(c for c in case.checks if c.name == "judge")
    outcome = next(o for o in outcomes if o.name == "judge")
    params: JudgeParams = spec.params
    judge_score = float(outcome.details["score"])
    human_score = case.fields.get("score")
    judge_verdict = "pass" if judge_score >= params.min else "fail"
    human_verdict = case.fields.get("verdict") or (
        "pass" if human_score is not None and float(human_score) >= params.min else "fail")
    out: dict[str, Any] = {"judge_score": judge_score, "judge_verdict": judge_verdict,
                           "human_score": human_score, "human_verdict": human_verdict,
                           "tolerance": params.tolerance, "min": params.min}
    if human_score is not None:
        out["abs_error"] = abs(judge_score - float(human_score))
        out["agree"] = out["abs_error"] <= params.tolerance
    else:
        out["agree"] = judge_verdict == human_verdict
    return out


def calibrate_vision(case: CaseSpec, outcomes: list[CheckOutcome]) -> dict[str, Any]:
    """Agreement of the vision pipeline with a labelled image: the human's yes/no (``verdict``) against the
    model's answer. An image that fails the pixel pre-checks is never shown to the model: the pipeline's answer
    is then "no", as it would be on a generated image, and recorded as such."""
    outcome = next(o for o in outcomes if o.name == "vision")
    answer = outcome.details.get("answer")
    prechecked_out = answer is None
    judge_verdict = "no" if prechecked_out else str(answer)
    human_verdict = "yes" if case.fields.get("verdict") == "pass" else "no"
    return {"judge_verdict": judge_verdict, "human_verdict": human_verdict, "agree": judge_verdict == human_verdict,
            "judge_score": None, "human_score": None, "question": outcome.details.get("question"),
            "image": str(case.fields.get("image")), **({"precheck": outcome.reason} if prechecked_out else {})}

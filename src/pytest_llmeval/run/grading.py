"""Grading one draw of a case item: its GradeContext and the services behind it, every check's outcome, the
draw's status and score, and the case's status from its draws.

Grading knows no check by name: every check gets the draw's GradeContext (core/checks.py), whose services (the
judge, the vision model, the program's run in the sandbox) are built here when a check first asks for them, and
what a check needs beyond grading (files to keep before the program runs, the fast form of a slow check, fields of
the result) comes from its CheckDef. The one kind named here is ``code``: a code case's answer is a program (kinds
are the case-file contract, fixed in cases/; see run/items.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.checks.metrics import recorded_metrics
from pytest_llmeval.core.checks import CheckOutcome, CheckSpec, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.run.state import RunState


@dataclass
class DrawGrader:
    """Grades the draws of one item (``model``, ``stage``, ``checks``); ``judge`` gives the item's judge, one per
    item, so that its calls over every draw are the case's judge cost."""

    state: RunState
    root: Path  # the rootdir: recorded paths are relative to it
    model: str
    stage: str | None
    checks: list[CheckSpec]
    judge: Callable[[], Any]
    vision_model: str | None  # the vision model a vision check asks when it names none
    base_dir: Path  # the case file's directory: reference images are relative to it
    retrieved: list[Any]

    def grade(self, answer: str, index: int, case: CaseSpec, references: Sequence[Any] = (),
              transcript: Sequence[Mapping[str, Any]] = (), trajectory: Any = None) -> dict[str, Any]:
        """Draw ``index``: every check's outcome, the draw's status and score (and, for code, what ran).
        ``references``: what an application target answered with; ``transcript``: a conversation's turns;
        ``trajectory``: the tool calls of an agent run (core.tools.Trajectory)."""
        checks = [(c, c.definition) for c in self.checks if c.definition is not None and c.definition.grade is not None]
        with self.context(answer, index, case, references, transcript, trajectory) as ctx:
            for c, definition in checks:
                if definition.prepare is not None:
                    definition.prepare(c.params, ctx)
            outcomes = [definition.evaluate(c.params, ctx) for c, definition in checks]
            draw = _draw(outcomes, case, answer)
            if ctx.provides("code"):
                draw.update(self._program_record(ctx, case, index))
            elif (vision := ctx.built("vision")) is not None:
                picture = case.path.parent / str(case.fields.get("image"))
                draw.update(vision=[{**r, "image": relative_to(self.root, picture)} for r in vision.records],
                            calls=vision.calls)
        return draw

    def grade_conversation(self, conversation: Any, index: int, case: CaseSpec) -> dict[str, Any]:
        """Draw ``index`` of a conversation case (``conversation``: targets.conversation.Conversation): each turn's
        checks on that turn's answer (with its references; the question is the user's message after the earlier
        turns), named ``turn 2: contains``; then the case's checks on the final answer with the whole transcript
        (a judge grades the conversation, the goal check reads it). The draw's status comes from all of them."""
        from pytest_llmeval.targets.conversation import turn_check_name

        outcomes: list[CheckOutcome] = []
        for turn, specs in enumerate(case.turn_checks):
            if not specs or turn >= len(conversation.answers):
                continue
            answer = conversation.answers[turn]
            turn_case = dataclasses.replace(case, prompt=conversation.prompt_at(turn))
            graded = dataclasses.replace(self, checks=list(specs)).grade(answer.text, index, turn_case,
                                                                         references=answer.references)
            outcomes += [dataclasses.replace(o, name=turn_check_name(turn, o.name)) for o in graded["outcomes"]]
        final = conversation.final
        text = final.text if final is not None else ""
        graded = self.grade(text, index, case, references=final.references if final is not None else (),
                            transcript=conversation.transcript())
        return _draw(outcomes + graded["outcomes"], case, text)

    def context(self, answer: str, index: int, case: CaseSpec, references: Sequence[Any] = (),
                transcript: Sequence[Mapping[str, Any]] = (), trajectory: Any = None) -> GradeContext:
        """The grading context of one draw. Its services are built when a check first asks for them."""
        factories: dict[str, Callable[[GradeContext], Any]] = {"judge": lambda ctx: self.judge(), "vision": self._vision}
        if case.kind == "code":
            factories["code"] = self._code
        return GradeContext(answer, case, self.model, draw=index, stage=self.stage, checks=self.checks,
                            retrieved=self.retrieved, references=references, transcript=transcript,
                            trajectory=trajectory, factories=factories)

    def _vision_env(self, image: Callable[[str | None], Any]) -> Any:
        """A VisionEnv: ``image(file)`` finds the picture, ``ask`` calls the vision model."""
        from pytest_llmeval.checks.vision import VisionEnv, vision_asker

        return VisionEnv(model=self.vision_model, image=image, ask=vision_asker(self.state.runner),
                         base_dir=self.base_dir)

    def _vision(self, ctx: GradeContext) -> Any:
        """The vision service of one draw: a code case's checks look at the images its program wrote, a calibration
        case's at its own ``image`` file."""
        from pytest_llmeval.checks.vision import default_image, program_image

        if ctx.provides("code"):
            fallback = default_image(ctx.checks)
            return self._vision_env(lambda file: program_image(ctx.code, file or fallback))
        from pytest_llmeval.checks.images import load_image

        picture = ctx.case.path.parent / str(ctx.case.fields.get("image"))
        return self._vision_env(lambda file: load_image(picture))

    def _code(self, ctx: GradeContext) -> Any:
        """The code service of one draw: the program extracted from the answer, run (when a check asks) in the
        sandbox; its work directories live until the draw is graded."""
        from pytest_llmeval.checks.code import CodeContext
        from pytest_llmeval.checks.extract import extract_code
        from pytest_llmeval.sandbox.isolation import Limits

        language = str(ctx.case.fields["language"])
        sandbox = self.state.get_sandbox()
        return ctx.enter(CodeContext(extract_code(ctx.answer, language), language, sandbox, Limits(**ctx.case.limits)))

    def _program_record(self, ctx: GradeContext, case: CaseSpec, index: int) -> dict[str, Any]:
        """What a code case's draw keeps: the extracted code, what ran, the files it wrote (copied out of the
        sandbox before the context closes) and the images the vision checks looked at."""
        from pytest_llmeval.checks.code import save_artifacts
        from pytest_llmeval.checks.vision import default_image

        program = ctx.code  # made now if no check ran the program: the case still records what was extracted
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.model)
        draw_dir = f"{self.stage}-{index}" if self.stage in ("judged", "robust") else str(index)
        target = self.state.settings.artifacts_dir / case.suite / case.id / slug / draw_dir
        artifacts = save_artifacts(program.files, target)
        vision = ctx.built("vision")
        fallback = default_image(self.checks)
        records = [{**r, "image": relative_to(self.root, Path(artifacts[name]))
                    if (name := r.get("file") or fallback) in artifacts else None}
                   for r in (vision.records if vision is not None else [])]
        return {"code": program.code, "detail": program.detail, "runs": program.runs, "artifacts": artifacts,
                "sandbox": program.sandbox.level, "vision": records, "calls": vision.calls if vision is not None else []}


def draw_status(outcomes: list[CheckOutcome]) -> str:
    """A draw fails when a scored check failed; else it is skipped when a check could not run here (no vision
    model), unscored when a check's output could not be scored; else it passed."""
    skipped = unscored = False
    for o in outcomes:  # one pass (every draw of every case comes here)
        if o.skipped:
            skipped = True
        elif o.unscored:
            unscored = True
        elif not o.passed:
            return "failed"
    return "skipped" if skipped else "unscored" if unscored else "passed"


def decide(samples: list[dict[str, Any]], pass_if: str) -> str:
    """The case's status from its draws: unscored and skipped draws do not vote; none scored makes the case
    skipped (when a draw was) or unscored."""
    scored = [s for s in samples if s["status"] not in ("unscored", "skipped")]
    if not scored:
        return "skipped" if any(s["status"] == "skipped" for s in samples) else "unscored"
    k, n = sum(1 for s in scored if s["status"] == "passed"), len(scored)
    ok = k == n if pass_if == "all" else k >= 1 if pass_if == "any" else 2 * k > n
    return "passed" if ok else "failed"


def _draw(outcomes: list[CheckOutcome], case: CaseSpec, answer: str) -> dict[str, Any]:
    scores = [o.score for o in outcomes if o.score is not None and not o.unscored]
    status = draw_status(outcomes)
    return {"outcomes": outcomes, "status": status, "passed": status == "passed",
            "score": sum(scores) / len(scores) if scores else None,
            "metrics": recorded_metrics(answer, case, outcomes)}


@functools.lru_cache(maxsize=1024)
def relative_to(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` when it is inside, else as given (memoised: a suite's cases share few paths)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)

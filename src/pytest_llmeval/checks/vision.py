"""Checks on images a program wrote: ``image`` (pixel pre-checks only) and ``vision`` (pre-checks, then a
yes/no question to a vision model).

In a case file::

    files: [out.png]
    expect:
      - vision: {question: "Is there a red circle on a white background?", expect: yes}
      - vision: {question: "Is the circle filled?", expect: yes, reference: ref/circle.png, max_distance: 12}

A failed pre-check fails the check without calling the model. With no vision model configured
(``--llm-vision``), a ``vision`` check whose pre-checks pass is *skipped* with a hint on how to configure one.
A case with a vision check is collected twice: ``<id>[model]`` (fast: the program runs, writes the image,
the pre-checks pass) and ``<id>:judged[model]`` (marked ``slow`` and ``vision``: the same plus the model's
answers), so ``-m "not slow"`` runs the fast evaluation and a full run adds the judge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.checks.code import CodeContext
    from pytest_llmeval.checks.images import ImageData, PrecheckResult
    from pytest_llmeval.providers.runner import Completion

IMAGE_KINDS = frozenset({"code", "calibration"})
USES = frozenset({"vision"})  # the grading context's vision service
NO_VISION_MODEL = (
    "no vision model configured: set --llm-vision=MODEL (a litellm vision model such as openai/gpt-4o, "
    "gemini/gemini-1.5-flash or ollama/llava), or --llm-vision=local-vision/<dir> for moondream2/SmolVLM/Qwen2-VL "
    "weights on disk (also env LLMEVAL_VISION or ini llmeval_vision)"
)


def _yes_no(value: Any) -> Any:
    """``expect: yes`` (YAML reads it as true), "yes", "no", true, false."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("yes", "y", "true"):
            return True
        if word in ("no", "n", "false"):
            return False
        raise ValueError(f"expected yes or no, got {value!r}")
    return value


class ImageParams(CheckParams):
    """Pixel pre-checks of one image file the program writes."""

    file: str | None = None  # the image, relative to the work dir (default: the first image in the files check)
    min_size: int | tuple[int, int] = 16  # minimum width and height in pixels (or [width, height])
    min_detail: float = Field(default=0.002, ge=0, lt=1)  # share of pixels that differ from the background
    tolerance: int = Field(default=8, ge=0, le=255)  # per channel, for "same colour as the background"
    reference: str | None = None  # an image (relative to the case file) the output should resemble
    max_distance: int = Field(default=10, ge=0, le=64)  # pHash Hamming distance allowed to the reference

    @field_validator("file")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or ".." in Path(v).parts):
            raise ValueError(f"{v!r}: expected a path inside the work directory")
        return v

    @field_validator("min_size")
    @classmethod
    def _positive(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        sizes = (v, v) if isinstance(v, int) else v
        if min(sizes) < 1:
            raise ValueError("sizes must be at least 1 pixel")
        return v

    def check_paths(self, base: Path) -> list[tuple[str, str]]:
        """(field, problem) for paths that do not exist, relative to the case file's folder ``base``."""
        if self.reference is not None and not (base / self.reference).is_file():
            return [("reference", f"reference image {self.reference!r} not found (relative to the case file)")]
        return []

    def precheck_params(self) -> ImageParams:
        return ImageParams(**{k: getattr(self, k) for k in ImageParams.model_fields})


class VisionParams(ImageParams):
    """The pre-checks, then a yes/no question to the vision model."""

    question: str | None = Field(default=None, min_length=3)  # default: the case's `question` (calibration)
    expect: bool = True  # the answer that passes: yes or no
    model: str | None = None  # this check's vision model (default: --llm-vision)

    @field_validator("expect", mode="before")
    @classmethod
    def _expect_words(cls, v: Any) -> Any:
        return _yes_no(v)


@dataclass
class VisionEnv:
    """What image checks need from the run.

    ``image(file)`` returns the image a check looks at (raises ImageProblem); ``ask(model, messages, attempt,
    image)`` calls a vision model through the exact cache;
    ``base_dir`` resolves reference images. ``records`` collects, per question, what the judge said.
    """

    model: str | None
    image: Callable[[str | None], ImageData]
    ask: Callable[[str, list[dict[str, Any]], int, ImageData], Completion] | None
    base_dir: Path
    calls: list[Completion] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    _prechecked: dict[Any, tuple[ImageData | None, PrecheckResult | None, str | None]] = field(default_factory=dict)

    def prechecked(self, p: ImageParams) -> tuple[ImageData | None, PrecheckResult | None, str | None]:
        """(image, pre-check result, problem loading it), memoised per file and pre-check settings: several
        questions about one image load and check it once."""
        from pytest_llmeval.checks.images import ImageProblem, PrecheckSpec, precheck

        key = p.precheck_params().model_dump_json()
        if key not in self._prechecked:
            try:
                image = self.image(p.file)
                sizes = (p.min_size, p.min_size) if isinstance(p.min_size, int) else p.min_size
                spec = PrecheckSpec(min_width=sizes[0], min_height=sizes[1], min_detail=p.min_detail,
                                    tolerance=p.tolerance, max_distance=p.max_distance,
                                    reference=(self.base_dir / p.reference) if p.reference else None)
                self._prechecked[key] = (image, precheck(image, spec), None)
            except ImageProblem as exc:
                self._prechecked[key] = (None, None, str(exc))
        return self._prechecked[key]


def vision_asker(runner: Any) -> Callable[[str, list[dict[str, Any]], int, ImageData], Completion]:
    """``ask`` for a VisionEnv: a vision model call through the exact cache. The messages carry the image
    itself; the image's hash, the question, the prompt version and the model make the cache key."""
    from pytest_llmeval.checks.images import VISION_PARAMS, VISION_PROMPT_VERSION

    def ask(model: str, messages: list[dict[str, Any]], attempt: int, image: ImageData) -> Completion:
        return runner.complete(model, messages, VISION_PARAMS, sample=attempt, semantic=False,  # type: ignore
                               key_extra={"purpose": "vision", "prompt_version": VISION_PROMPT_VERSION,
                                          "image_sha256": image.sha256})

    return ask


def default_image(checks: Iterable[Any]) -> str:
    """The image an image/vision check without ``file:`` looks at: the first image the files check lists."""
    from pytest_llmeval.checks.images import IMAGE_SUFFIXES

    listed = [n for c in checks if c.name == "files" for n in c.params.value]
    return next((n for n in listed if n.lower().endswith(IMAGE_SUFFIXES)), "out.png")


def program_image(program: CodeContext, name: str) -> ImageData:
    """The image ``name`` the program wrote (runs the program first, once per draw); ImageProblem if none."""
    from pytest_llmeval.checks.images import ImageProblem, load_image

    result = program.run()
    if result is None:
        ok, why = program.compile()
        raise ImageProblem(f"no image: the program did not run ({why or 'no code'})")
    if name not in program.files:
        failed = "" if result.ok else f"; the program failed ({result.reason})"
        raise ImageProblem(f"the program did not write {name}{failed}")
    return load_image(program.files[name])


def _want_image(p: ImageParams, ctx: GradeContext) -> None:
    """Before the program of a code case runs: keep the image the check looks at."""
    if ctx.provides("code"):
        ctx.code.want_files([p.file or default_image(ctx.checks)])


def _fast_form(p: VisionParams) -> tuple[str, CheckParams]:
    """The vision check's pixel pre-checks alone, as an ``image`` check: what the fast item of a code case runs."""
    return "image", p.precheck_params()


def grade_image(answer: str, case: CaseSpec, p: ImageParams, ctx: GradeContext) -> CheckOutcome:
    env: VisionEnv = ctx.vision
    image, result, problem = env.prechecked(p)
    if problem is not None or result is None or image is None:
        return CheckOutcome("image", False, 0.0, problem or "no image")
    details = {"image_sha256": image.sha256, **result.stats}
    return CheckOutcome("image", result.ok, float(result.ok), result.reason, details=details)


def grade_vision(answer: str, case: CaseSpec, p: VisionParams, ctx: GradeContext) -> CheckOutcome:
    """Pre-checks; then (when judging) ask the vision model, retry once on an unusable reply, else unscored."""
    from pytest_llmeval.checks.images import FIX_PROMPT, parse_yes_no, vision_messages
    from pytest_llmeval.checks.judge import ask_twice, shown_reply

    env: VisionEnv = ctx.vision
    question = p.question or str(case.fields.get("question") or "")
    expected = "yes" if p.expect else "no"
    image, result, problem = env.prechecked(p)
    record: dict[str, Any] = {"question": question, "expect": expected, "file": p.file}
    if problem is not None or result is None or image is None:
        env.records.append({**record, "precheck": problem})
        return CheckOutcome("vision", False, 0.0, f"pre-check: {problem}", details=record)
    record.update(image_sha256=image.sha256, precheck=result.reason or "ok", **result.stats)
    if not result.ok:
        env.records.append(record)
        return CheckOutcome("vision", False, 0.0, f"pre-check: {result.reason}", details=record)
    model = p.model or env.model
    if model is None or env.ask is None:
        env.records.append({**record, "skipped": NO_VISION_MODEL})
        return CheckOutcome("vision", False, None, NO_VISION_MODEL, skipped=True, details=record)
    ask = env.ask
    verdict, replies = ask_twice(lambda msgs, attempt: ask(model, msgs, attempt, image),
                                 vision_messages(question, image), parse_yes_no, FIX_PROMPT, env.calls)
    record.update(model=model, attempts=len(replies), replies=replies)
    if verdict.answer is None:
        env.records.append({**record, "answer": None, "unscored": True})
        return CheckOutcome.unscorable("vision", f"{question!r}: vision model {model} gave no usable yes/no in "
                                                 f"{len(replies)} tries ({verdict.problem}; last reply: "
                                                 f"{shown_reply(replies[-1])!r})", **record)
    said = "yes" if verdict.answer else "no"
    passed = verdict.answer == p.expect
    record.update(answer=said, reason=verdict.reason)
    env.records.append(record)
    reason = f"{question!r}: {model} said {said}" + ("" if passed else f", expected {expected}")
    return CheckOutcome("vision", passed, float(passed), reason + (f" ({verdict.reason})" if verdict.reason else ""),
                        details=record)


CHECKS = [
    CheckDef("image", ImageParams, grade_image, shorthand="file", kinds=frozenset({"code"}), uses=USES,
             prepare=_want_image,
             doc="pixel pre-checks of an image the program writes: decodes, minimum size, not blank or one flat "
                 "colour, optionally resembles a reference (perceptual hash)"),
    CheckDef("vision", VisionParams, grade_vision, shorthand="question", kinds=IMAGE_KINDS, uses=USES, calls="vision",
             markers=("slow", "vision"), fast=_fast_form, prepare=_want_image,
             doc="pixel pre-checks, then a vision model answers a yes/no question about the image (slow: the "
                 "case is also collected as <id>:judged, marked slow and vision)"),
]



class VisionJudge:
    """The ``vision_judge`` fixture: ``vision_judge(image)`` applies the test's ``@pytest.mark.vision_judge``
    questions to an image (a path, bytes or a PIL image) and returns their CheckOutcomes.

    With ``check=True`` (the default) a failed question or pre-check fails the test, a missing vision model
    skips it with the configuration hint and an unusable answer skips it as unscored, so a test needs no
    assert of its own. ``vision_judge(image, question="...", expect="no")`` asks a question of its own.
    """

    def __init__(self, questions: list[VisionParams], make_env: Callable[[Any], VisionEnv],
                 record: Callable[[VisionEnv, Any], None]) -> None:
        self.questions = questions
        self._make_env = make_env
        self._record = record

    def __call__(self, image: Any, question: str | None = None, expect: Any = True, *, check: bool = True,
                 **prechecks: Any) -> list[CheckOutcome]:
        import pytest

        from pytest_llmeval.checks.images import ImageProblem, load_image

        if question is not None:
            questions = [VisionParams(question=question, expect=expect, **prechecks)]
        elif self.questions:
            questions = self.questions
        else:
            raise pytest.UsageError("vision_judge: give question=... or mark the test with "
                                    "@pytest.mark.vision_judge(question=..., expect='yes')")
        try:
            data = load_image(image)
            problem = None
        except ImageProblem as exc:
            data, problem = None, str(exc)

        def picture(file: str | None) -> Any:
            if data is None:
                raise ImageProblem(str(problem))
            return data

        env = self._make_env(picture)
        ctx = GradeContext("", _hand_written_case(), vision=env)
        outcomes = [grade_vision("", ctx.case, p, ctx) for p in questions]
        self._record(env, data)
        if check:
            failed = [o for o in outcomes if not o.passed and not o.unscored and not o.skipped]
            if failed:
                pytest.fail("vision judge: " + "; ".join(o.reason for o in failed), pytrace=False)
            skipped = [o for o in outcomes if o.skipped]
            if skipped:
                pytest.skip(f"{skipped[0].reason} (the pixel pre-checks passed)")
            unscored = [o for o in outcomes if o.unscored]
            if unscored:
                pytest.skip(f"unscored: {unscored[0].reason}")
        return outcomes


def _hand_written_case() -> Any:
    from pytest_llmeval.cases.schema import CaseSpec

    return CaseSpec(suite="test", kind="code", id="vision_judge", path=Path("."), line=None, system=None, prompt="",
                    params={}, tags=(), checks=[])

"""Checks: how an answer is graded.

A check is a named rule with a small pydantic parameter model and a function that grades one answer.
Built-in checks register through the same ``pytest_llmeval_register_checks`` hook as third-party ones.

In a case file a check is a one-key mapping: ``{contains: Paris}`` (shorthand) or
``{contains: {value: [Paris, France], ignore_case: false}}`` (full form).

Every check is graded the same way: ``grade(answer, case, params, ctx)`` with one :class:`GradeContext`, whose
services (the judge, the vision model, the program's execution in the sandbox) are built only when a check asks
for them. A check may also own what the run reports about it: ``aggregate`` adds entries to each suite x model
row of results.json, ``summary_lines`` prints them under the terminal summary table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from pytest_llmeval.core.registry import Registry

T = TypeVar("T")

class CheckParams(BaseModel):
    """Base class of every check's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class CheckOutcome:
    """The verdict of one check on one answer. ``score`` is in [0, 1].

    An *unscored* outcome (a judge whose output could not be parsed) is neither a pass nor a fail: ``passed``
    is False, ``score`` is None, and it is counted on its own, never averaged. ``details`` holds what the
    check measured beyond the verdict (a judge's 0-10 score, BLEU, the parsed labels), JSON-friendly.
    """

    name: str
    passed: bool
    score: float | None
    reason: str = ""
    unscored: bool = False
    skipped: bool = False  # could not be graded in this run (no vision model configured): not a pass or a fail
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def unscorable(cls, name: str, reason: str, **details: Any) -> CheckOutcome:
        return cls(name, False, None, reason, unscored=True, details=details)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.name, "passed": self.passed,
                               "score": None if self.score is None else round(self.score, 6), "reason": self.reason}
        if self.unscored:
            out["unscored"] = True
        if self.skipped:
            out["skipped"] = True
        if self.details:
            out["details"] = self.details
        return out


# grade(answer, case, params, ctx) -> CheckOutcome; a grade function of three parameters (answer, case, params),
# the form documented before the context existed, is called without it.
GradeFn = Callable[..., CheckOutcome]
# aggregate(results) -> entries of one suite x model row: ``results`` are that row's CaseResults (results/aggregate.py)
AggregateFn = Callable[[list[Any]], dict[str, Any]]
# summary_lines(row, name) -> lines under the terminal summary table for one row ("suite [model]" is ``name``)
SummaryFn = Callable[[Mapping[str, Any], str], list[str]]


class GradeContext:
    """Everything a check may use to grade one answer: one draw of one case on one model.

    Plain values, always there: ``answer`` (the text graded), ``case`` (the validated CaseSpec; for a robustness
    variant, the variant), ``model`` (the model under test; a calibration item's: the judge), ``draw`` (the draw's
    index with --llm-repeat/--llm-samples), ``stage`` (None, or "runs"/"judged"/"robust" for the items a case is
    split into), ``checks`` (the item's CheckSpecs), ``retrieved`` (the chunks put into the prompt, for
    retrieval cases), ``references`` (the :class:`~pytest_llmeval.core.answer.Reference` s an application target
    answered with, in its order: ``[n]`` in the answer cites ``references[n-1]``), ``transcript`` (a conversation
    case: the turns so far, ``[{"role": "user"|"assistant", "content": ..., "turn": n}, ...]``; empty otherwise)
    ``answer_obj`` (the application's :class:`~pytest_llmeval.core.answer.Answer`, None for a model) and
    ``trajectory`` (a :class:`~pytest_llmeval.core.tools.Trajectory`: the tool calls of an agent run, or None).

    Services, built on first use and kept for the draw, so a check that asks for none costs nothing:

    - ``judge``: a ``checks.judge.JudgeEnv`` (``judge_model``, ``self_judging``, ``complete(messages)`` through
      the exact cache, ``context``, ``calls``), one per item: its calls are the case's judge cost;
    - ``vision``: a ``checks.vision.VisionEnv`` (``image(file)``, ``ask``, ``model``, ``records``, ``calls``);
    - ``code``: a ``checks.code.CodeContext`` (code cases): the extracted program, ``compile()``, ``run()``
      (memoised), ``run_tests()``, ``files``, in the sandbox.

    The run supplies a factory per service (run/items.py); a service given ready-made as a keyword
    (``GradeContext(answer, case, judge=env)``) is used as is. Asking for a service the run does not provide for
    this case (``code`` in a qna case) raises LookupError.
    """

    def __init__(self, answer: str, case: Any, model: str = "", *, draw: int = 0, stage: str | None = None,
                 checks: Sequence[CheckSpec] = (), retrieved: Sequence[Any] = (), references: Sequence[Any] = (),
                 transcript: Sequence[Mapping[str, Any]] = (), answer_obj: Any = None, trajectory: Any = None,
                 factories: Mapping[str, Callable[[GradeContext], Any]] | None = None, **services: Any) -> None:
        self.answer = answer
        self.case = case  # cases.loader.CaseSpec (core sits below cases: not imported here)
        self.model = model
        self.draw = draw
        self.stage = stage
        self.checks = checks
        self.retrieved = retrieved
        self.references = list(references)
        self.transcript = list(transcript)
        self.answer_obj = answer_obj
        self.trajectory = trajectory  # core.tools.Trajectory of an agent run (tool calls), None otherwise
        self._factories = dict(factories or {})
        self._services: dict[str, Any] = dict(services)
        self._stack = ExitStack()

    @property
    def judge(self) -> Any:
        """The judge environment (checks.judge.JudgeEnv)."""
        return self.service("judge")

    @property
    def vision(self) -> Any:
        """The vision environment of this draw (checks.vision.VisionEnv)."""
        return self.service("vision")

    @property
    def code(self) -> Any:
        """The program in the answer and its executions in the sandbox (checks.code.CodeContext), code cases."""
        return self.service("code")

    def service(self, name: str) -> Any:
        """The service ``name``, built now if no check asked for it before in this draw."""
        if name not in self._services:
            factory = self._factories.get(name)
            if factory is None:
                kind = getattr(self.case, "kind", "?")
                raise LookupError(f"no {name!r} service for this {kind} case (available: "
                                  f"{', '.join(sorted({*self._services, *self._factories})) or 'none'})")
            self._services[name] = factory(self)
        return self._services[name]

    def provides(self, name: str) -> bool:
        """Whether ``service(name)`` would give something (built or not)."""
        return name in self._services or name in self._factories

    def built(self, name: str) -> Any | None:
        """The service if some check asked for it (or it was given ready-made), else None: builds nothing."""
        return self._services.get(name)

    def enter(self, resource: AbstractContextManager[T]) -> T:
        """Enter ``resource`` now and exit it when this context closes (for factories: the code context's work
        directories live as long as the draw's grading)."""
        return self._stack.enter_context(resource)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> GradeContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def takes_context(grade: GradeFn | None) -> bool:
    """Whether ``grade`` takes the GradeContext: four positional parameters (or ``*args``); three
    (``grade(answer, case, params)``) is the form third-party checks were documented with, called without it."""
    if grade is None:
        return False
    try:
        parameters = inspect.signature(grade).parameters.values()
    except (TypeError, ValueError):  # a builtin or extension callable without a signature: the documented form
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


@dataclass(frozen=True)
class CheckDef:
    """A registered check.

    ``shorthand`` names the parameter a scalar/list value fills (``{contains: Paris}``);
    ``kinds`` restricts the case kinds it applies to (None: all); ``grade`` is None for checks whose
    grading ships with a later release: cases using them validate and collect but are skipped.
    Whether ``grade`` takes the GradeContext is decided once, here (see :func:`takes_context`).

    The rest is optional, what some checks need beyond grading:

    - ``uses``: the context services the check asks for ("code", "judge", "vision"). Grading does not depend on
      it (services are built on demand); tools that grade outside a run read it (the case generator runs the
      checks that need only the program), and ``context``/``judge``/``vision`` are derived from it;
    - ``calls``: the model role the check calls ("judge": --llm-judge, "vision": --llm-vision); its ``model``
      parameter, else the run's model for that role, must be usable before the case runs;
    - ``markers``: pytest markers of the items that grade with it (vision: slow, vision);
    - ``fast``: for a slow check, ``fast(params) -> (name, params)``: the cheaper check that stands in for it in
      the fast item of a code case (which is then collected twice, ``<id>`` and ``<id>:judged``);
    - ``prepare(params, ctx)``: called for every check of a draw before any grades (the files check asks the
      code context to keep the files it lists before the program runs);
    - ``case_fields(outcome, case) -> dict``: CaseResult fields filled from the check's outcome in the first
      draw (jaccard fills ``labels``); the keys must be CaseResult fields;
    - ``aggregate(results) -> dict``: entries added to each suite x model row of results.json (``results``: the
      row's CaseResults; return {} when there is nothing of yours);
    - ``summary_lines(row, name) -> list[str]``: lines printed under the summary table for each row.
    """

    name: str
    params: type[CheckParams]
    grade: GradeFn | None
    shorthand: str | None = None
    kinds: frozenset[str] | None = None
    doc: str = ""
    needs: tuple[str, ...] = ()  # case fields the check reads (a parameter of the same name may stand in)
    uses: frozenset[str] = frozenset()
    calls: str | None = None
    markers: tuple[str, ...] = ()
    fast: Callable[[Any], tuple[str, CheckParams]] | None = None
    prepare: Callable[[Any, GradeContext], None] | None = None
    case_fields: Callable[[CheckOutcome, Any], dict[str, Any]] | None = None
    aggregate: AggregateFn | None = None
    summary_lines: SummaryFn | None = None
    takes_context: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "takes_context", takes_context(self.grade))

    @property
    def context(self) -> bool:
        """The check runs the program (asks for the code context)."""
        return "code" in self.uses

    @property
    def judge(self) -> bool:
        """The check asks a judge model."""
        return "judge" in self.uses

    @property
    def vision(self) -> bool:
        """The check looks at an image."""
        return "vision" in self.uses

    def evaluate(self, params: Any, ctx: GradeContext) -> CheckOutcome:
        """Grade ``ctx.answer`` with these parameters: ``grade(answer, case, params, ctx)``, or without ``ctx``
        for a three-parameter grade function."""
        if self.grade is None:
            raise ValueError(f"check {self.name!r} has no grade function (its grading is not implemented yet)")
        if self.takes_context:
            return self.grade(ctx.answer, ctx.case, params, ctx)
        return self.grade(ctx.answer, ctx.case, params)


@dataclass(frozen=True)
class CheckSpec:
    """One check as written in a case file, validated: the definition, its parameters, its line."""

    name: str
    params: Any
    line: int | None = None
    definition: CheckDef | None = field(default=None, compare=False, repr=False)


class CheckRegistry(Registry[CheckDef]):
    """The checks known to this run, filled by the ``pytest_llmeval_register_checks`` hook."""

    def aggregates(self) -> dict[str, AggregateFn]:
        """Check name -> its ``aggregate``, for the checks that have one, in registration order (what
        ``results.aggregate.build_results`` takes as ``check_aggregates``)."""
        return {c.name: c.aggregate for c in self if c.aggregate is not None}



"""Checks: how an answer is graded.

A check is a named rule with a small pydantic parameter model and a function that grades one answer.
Built-in checks register through the same ``pytest_llmeval_register_checks`` hook as third-party ones.

In a case file a check is a one-key mapping: ``{contains: Paris}`` (shorthand) or
``{contains: {value: [Paris, France], ignore_case: false}}`` (full form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict


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


# grade(answer, case, params) -> CheckOutcome; checks with context=True also get the code context.
GradeFn = Callable[..., CheckOutcome]


@dataclass(frozen=True)
class CheckDef:
    """A registered check.

    ``shorthand`` names the parameter a scalar/list value fills (``{contains: Paris}``);
    ``kinds`` restricts the case kinds it applies to (None: all); ``grade`` is None for checks whose
    grading ships with a later release: cases using them validate and collect but are skipped.
    ``context`` checks also receive the execution context of the answer (see checks/code.py).
    """

    name: str
    params: type[CheckParams]
    grade: GradeFn | None
    shorthand: str | None = None
    kinds: frozenset[str] | None = None
    doc: str = ""
    context: bool = False  # grade(answer, case, params, ctx) with the case's CodeContext (code checks)
    judge: bool = False  # grade(answer, case, params, env) with a JudgeEnv: the check calls a judge model
    vision: bool = False  # grade(answer, case, params, env) with a VisionEnv: the check looks at an image
    needs: tuple[str, ...] = ()  # case fields the check reads (a parameter of the same name may stand in)


@dataclass(frozen=True)
class CheckSpec:
    """One check as written in a case file, validated: the definition, its parameters, its line."""

    name: str
    params: Any
    line: int | None = None
    definition: CheckDef | None = field(default=None, compare=False, repr=False)


class CheckRegistry:
    """The checks known to this run, filled by the ``pytest_llmeval_register_checks`` hook."""

    def __init__(self) -> None:
        self._checks: dict[str, CheckDef] = {}

    def register(self, check: CheckDef) -> None:
        """Add a check; a later registration under the same name replaces the earlier one."""
        self._checks[check.name] = check

    def get(self, name: str) -> CheckDef | None:
        return self._checks.get(name)

    def names(self) -> list[str]:
        return sorted(self._checks)

    def __iter__(self) -> Iterator[CheckDef]:
        return iter(self._checks.values())


def all_passed(outcomes: Iterable[CheckOutcome]) -> bool:
    return all(o.passed for o in outcomes)

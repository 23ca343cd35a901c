"""Checks of the `code` and `labels` kinds whose grading ships in a later release.

Their parameters are validated now, so case files of those kinds are checked at collection time
(unknown checks, mistyped fields) and collect as items; the items are skipped with a reason.
"""

from __future__ import annotations

from pydantic import Field

from pytest_llmeval.checks import CheckDef, CheckParams

CODE = frozenset({"code"})
LABELS = frozenset({"labels"})


class FlagParams(CheckParams):
    value: bool = True


class StdoutParams(CheckParams):
    equals: str | None = None
    contains: str | None = None
    regex: str | None = None


class TestsParams(CheckParams):
    code: str  # assert statements, or a HumanEval-style check(candidate)
    entry_point: str | None = None


class FilesParams(CheckParams):
    value: list[str] = Field(min_length=1)


class JaccardParams(CheckParams):
    min: float = Field(default=0.5, ge=0.0, le=1.0)


CHECKS = [
    CheckDef("compiles", FlagParams, None, shorthand="value", kinds=CODE, doc="the program compiles"),
    CheckDef("runs", FlagParams, None, shorthand="value", kinds=CODE, doc="exit 0 within the time limit"),
    CheckDef("stdout", StdoutParams, None, shorthand="equals", kinds=CODE, doc="standard output matches"),
    CheckDef("tests", TestsParams, None, shorthand="code", kinds=CODE, doc="assert code passes"),
    CheckDef("files", FilesParams, None, shorthand="value", kinds=CODE, doc="the program writes these files"),
    CheckDef("jaccard", JaccardParams, None, shorthand="min", kinds=LABELS, doc="label-set Jaccard >= min"),
]

"""Checks whose grading ships in a later release (the `labels` kind's Jaccard score).

Their parameters are validated now, so case files of those kinds are checked at collection time
(unknown checks, mistyped fields) and collect as items; the items are skipped with a reason.
"""

from __future__ import annotations

from pydantic import Field

from pytest_llmeval.checks import CheckDef, CheckParams

LABELS = frozenset({"labels"})


class JaccardParams(CheckParams):
    min: float = Field(default=0.5, ge=0.0, le=1.0)


CHECKS = [
    CheckDef("jaccard", JaccardParams, None, shorthand="min", kinds=LABELS, doc="label-set Jaccard >= min"),
]

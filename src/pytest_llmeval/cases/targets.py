"""A suite's ``target:`` validated: one kind key (checked against the run's registered kinds), its parameters, and
the common keys (``version``, ``hash``, ``concurrency``, ``name``). See core/targets.py and docs/targets.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pytest_llmeval.cases.schema import Loc, _did_you_mean, _pydantic_errors
from pytest_llmeval.core.targets import COMMON_KEYS, MODEL_TARGET, TargetRegistry, TargetSpec, split_string


class _TargetCommon(BaseModel):
    """The keys of ``target:`` besides the kind (core/targets.py)."""

    model_config = ConfigDict(extra="forbid")
    version: str | int | float | None = None
    hash: list[str] | str | None = None
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    name: str | None = Field(default=None, min_length=1)


def parse_target(value: Any, loc: Loc, targets: TargetRegistry | None, line_of: Callable[[Loc], int | None],
                 path: Path | None) -> tuple[TargetSpec | None, list[tuple[Loc, str]]]:
    """Validate a suite's ``target:`` (or ``--llm-target``'s string form): one kind key, its value validated by the
    kind's parameter model, and the common keys. ``targets`` None (outside a run): the kind is not checked."""
    if isinstance(value, str):
        try:
            value = split_string(value)
        except ValueError as exc:
            return None, [(loc, str(exc))]
    if not isinstance(value, dict):
        return None, [(loc, "expected a mapping naming the target's kind, e.g. {python: \"bot:answer\"}, or model")]
    kinds = [k for k in value if k not in COMMON_KEYS]
    known = sorted([MODEL_TARGET, *(targets.names() if targets is not None else ())])
    if len(kinds) != 1:
        what = "no kind" if not kinds else f"{len(kinds)} kinds ({', '.join(map(str, kinds))})"
        return None, [(loc, f"a target names one kind ({', '.join(dict.fromkeys(known))}); got {what}")]
    kind = str(kinds[0])
    raw = value[kinds[0]]
    try:
        common = _TargetCommon.model_validate({k: v for k, v in value.items() if k in COMMON_KEYS})
    except ValidationError as exc:
        return None, _pydantic_errors(exc, loc, _TargetCommon)
    line = line_of(loc)
    if kind == MODEL_TARGET:
        if raw not in (None, True):
            return None, [(loc + (kind,), "the model target takes no parameters (write target: model)")]
        return TargetSpec(MODEL_TARGET, None, None, line=line, path=path), []
    definition = targets.get(kind) if targets is not None else None
    if targets is not None and definition is None:
        hint = _did_you_mean(kind, known)
        return None, [(loc + (kind,), f"unknown target kind {kind!r}" + (hint or f"; expected one of: {', '.join(known)}"))]
    params: Any = raw
    if definition is not None:
        if isinstance(raw, dict):
            data = raw
        elif definition.shorthand and raw is not None:
            data = {definition.shorthand: raw}
        else:
            return None, [(loc + (kind,), f"expected a mapping of the {kind} target's parameters")]
        try:
            params = definition.params.model_validate(data)
        except ValidationError as exc:
            return None, _pydantic_errors(exc, loc + (kind,), definition.params)
    hashed = common.hash if isinstance(common.hash, list) else [common.hash] if common.hash else []
    return TargetSpec(kind, params, definition, version=None if common.version is None else str(common.version),
                      hash=tuple(hashed), concurrency=common.concurrency, label=common.name, line=line, path=path), []

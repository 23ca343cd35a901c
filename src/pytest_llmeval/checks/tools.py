"""Checks over an agent's trajectory (issue 18): which tools it called, with what, in which order, how many steps.

Each grades ``GradeContext.trajectory`` (a :class:`~pytest_llmeval.core.tools.Trajectory`: the tool calls of the
agent loop, or those an application's agent made) and explains its verdict with the trajectory's excerpt, so a
failure shows what the agent did. An answer without a trajectory fails every one of them, saying so.

- ``{tool_called: search}`` or ``{tool_called: {name: search, arguments: {q: Paris}, match: subset, times: 1}}``:
  a call of ``name`` whose arguments match (``match``: ``subset``, the default: every expected key is there with
  that value, nested mappings compared the same way; ``exact``: the arguments are exactly these; ``schema``:
  ``arguments`` is a JSON Schema the call's arguments validate against; ``regex``: each expected value is a
  regular expression the argument must match whole, a string as it is, another value as its JSON text);
  with ``times``: exactly that many matching calls. A call the runtime answered with an error (an unknown tool,
  arguments that fail its schema) still counts: these checks grade what the agent asked for;
- ``{tool_sequence: [search, {name: book, arguments: {date: "2026-01-02"}}]}`` (``order``: ``in_order``, the
  default: these calls happen in this order, others may come between; ``exact``: the calls are exactly these;
  ``any_order``: each happens, in any order, one call per entry);
- ``{tool_not_called: delete_account}`` or ``{tool_not_called: {name: [book], arguments: {confirmed: false}}}``:
  no call of these tools (with ``arguments``: none with these arguments, matched by subset);
- ``{max_steps: 5}`` or ``{max_steps: {steps: 5, allow_limit: true}}``: at most that many steps, and the loop did
  not stop at its own limit (unless ``allow_limit``);
- ``{tool_f1: [search, book]}`` or ``{tool_f1: {expected: [...], min: 0.8}}``: precision, recall and F1 of the
  calls made against the expected ones, as multisets (a call counts for one expected entry: same name, arguments
  by subset when given); score = F1, passes at ``min`` (default 1.0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from pytest_llmeval.cases.tools import TRAJECTORY_CHECKS
from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext
from pytest_llmeval.core.tools import Step, ToolCall, Trajectory

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec

NO_TRAJECTORY = "the answer carries no tool calls: it was not produced by an agent run with tools"
KINDS = frozenset({"qna"})


# ------------------------------------------------------------------------------------------------ parameters


def _check_schema(schema: Mapping[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"invalid JSON schema in arguments: {exc.message}") from None


def _check_regexes(expected: Mapping[str, Any]) -> None:
    for key, pattern in expected.items():
        if not isinstance(pattern, str):
            raise ValueError(f"match: regex needs a regular expression (a string) for each argument; "
                             f"{key!r} is {json.dumps(pattern)}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression for argument {key!r}: {exc}") from None


def _tool_name(v: str) -> str:
    if not v.strip():
        raise ValueError("expected a tool name")
    return v


ToolName = Annotated[str, AfterValidator(_tool_name)]  # a tool name that is not blank


class ToolPattern(CheckParams):
    """An expected call: a tool's name, and optionally arguments it must have (subset match)."""

    name: ToolName
    arguments: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    def show(self) -> str:
        return _show(self.name, self.arguments)


_NEEDS = {"exact": "the call's arguments, {} for a call without any", "schema": "a JSON Schema",
          "regex": "a regular expression per argument"}


class ToolCalledParams(CheckParams):
    name: ToolName
    arguments: dict[str, Any] | None = None  # what the arguments must match (a JSON Schema with match: schema)
    match: Literal["exact", "subset", "schema", "regex"] = "subset"
    times: int | None = Field(default=None, ge=0)  # exactly this many matching calls (default: at least one)

    @model_validator(mode="after")
    def _consistent(self) -> ToolCalledParams:
        if self.match != "subset" and self.arguments is None:
            raise ValueError(f"match: {self.match} needs arguments ({_NEEDS[self.match]})")
        if self.match == "schema" and self.arguments is not None:
            _check_schema(self.arguments)
        if self.match == "regex" and self.arguments is not None:
            _check_regexes(self.arguments)
        return self


def _patterns(v: Any) -> Any:
    return [v] if isinstance(v, str | dict) else v


class ToolSequenceParams(CheckParams):
    tools: list[ToolPattern] = Field(min_length=1)
    order: Literal["in_order", "exact", "any_order"] = "in_order"

    @field_validator("tools", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return _patterns(v)


class ToolNotCalledParams(CheckParams):
    name: list[ToolName] = Field(min_length=1)
    arguments: dict[str, Any] | None = None  # forbidden only with these arguments (subset match)

    @field_validator("name", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v



class MaxStepsParams(CheckParams):
    steps: int = Field(ge=0)
    allow_limit: bool = False  # a run stopped by the loop's max_steps passes too (when within steps)


class ToolF1Params(CheckParams):
    expected: list[ToolPattern]
    min: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("expected", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return _patterns(v)


# ------------------------------------------------------------------------------------------------ matching


def _show(name: str, arguments: Mapping[str, Any] | None) -> str:
    if not arguments:
        return name
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in arguments.items())
    return f"{name}({args})"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _subset_mismatch(expected: Any, actual: Any, path: str) -> str | None:
    """Why ``actual`` does not hold ``expected`` (mappings by subset, recursively; other values equal), or None."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return f"{path or 'arguments'} is {_json(actual)}, expected a mapping"
        for key, want in expected.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                return f"no argument {where}"
            why = _subset_mismatch(want, actual[key], where)
            if why:
                return why
        return None
    if expected != actual or isinstance(expected, bool) != isinstance(actual, bool):
        return f"{path} is {_json(actual)}, expected {_json(expected)}"
    return None


def _exact_mismatch(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    extra = [k for k in actual if k not in expected]
    if extra:
        return f"unexpected argument{'s' if len(extra) > 1 else ''} {', '.join(map(str, extra))}"
    for key, want in expected.items():
        if key not in actual:
            return f"no argument {key}"
        if _canonical(actual[key]) != _canonical(want):
            return f"{key} is {_json(actual[key])}, expected {_json(want)}"
    return None


def _canonical(value: Any) -> str:
    # 1 == True in Python; as JSON they differ, as they do for the model that wrote them
    return json.dumps(value, sort_keys=True, default=str)


def _schema_mismatch(schema: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    import jsonschema

    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(dict(actual)),
                    key=lambda e: list(map(str, e.path)))
    if not errors:
        return None
    where = ".".join(str(x) for x in errors[0].path) or "arguments"
    return f"schema: at {where}: {errors[0].message}"


def _regex_mismatch(patterns: Mapping[str, str], actual: Mapping[str, Any]) -> str | None:
    for key, pattern in patterns.items():
        if key not in actual:
            return f"no argument {key}"
        value = actual[key]
        text = value if isinstance(value, str) else _json(value)
        if re.fullmatch(pattern, text) is None:
            return f"{key} is {_json(value)}, does not match /{pattern}/"
    return None


def _matcher(match: str, expected: Mapping[str, Any] | None) -> Callable[[ToolCall], str | None]:
    """Why a call's arguments do not match (None: they do)."""
    if expected is None:
        return lambda call: None
    if match == "exact":
        return lambda call: _exact_mismatch(expected, call.arguments)
    if match == "schema":
        return lambda call: _schema_mismatch(expected, call.arguments)
    if match == "regex":
        return lambda call: _regex_mismatch(expected, call.arguments)
    return lambda call: _subset_mismatch(expected, call.arguments, "")


def _fits(pattern: ToolPattern, call: ToolCall) -> bool:
    return call.name == pattern.name and (pattern.arguments is None
                                          or _subset_mismatch(pattern.arguments, call.arguments, "") is None)


def _assign(patterns: Sequence[ToolPattern], calls: Sequence[ToolCall]) -> dict[int, int]:
    """A largest one-to-one assignment of calls to patterns (pattern index -> call index): Kuhn's augmenting
    paths, so that ``[search, search(q=x)]`` against ``search(q=x), search(q=y)`` pairs both."""
    fits = [[j for j, c in enumerate(calls) if _fits(p, c)] for p in patterns]
    owner: dict[int, int] = {}  # call -> pattern

    def augment(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(patterns)):
        augment(i, set())
    return {i: j for j, i in owner.items()}


# ------------------------------------------------------------------------------------------------ grading


def trajectory_of(ctx: GradeContext | None) -> Trajectory | None:
    """The context's trajectory (a Trajectory; also its dict form, or a bare list of tool calls), or None."""
    value = getattr(ctx, "trajectory", None) if ctx is not None else None
    if value is None or isinstance(value, Trajectory):
        return value
    if isinstance(value, Mapping):
        return Trajectory.from_dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return Trajectory([Step(i, ToolCall.coerce(c)) for i, c in enumerate(value)])
    raise TypeError(f"GradeContext.trajectory must be a Trajectory, got {type(value).__name__}")


def explain(summary: str, trajectory: Trajectory) -> str:
    """A check's reason: its verdict, then what the agent did (the trajectory's excerpt, one step a line)."""
    return f"{summary}; trajectory:\n{trajectory.excerpt()}"


def _missing(name: str, **details: Any) -> CheckOutcome:
    return CheckOutcome(name, False, 0.0, NO_TRAJECTORY, details=details)


def _steps(indices: Sequence[int], trajectory: Trajectory) -> list[int]:
    """1-based step numbers, as the excerpt shows them."""
    return [trajectory.steps[i].index + 1 for i in indices]


def grade_tool_called(answer: str, case: CaseSpec, p: ToolCalledParams, ctx: GradeContext | None = None
                      ) -> CheckOutcome:
    name = "tool_called"
    trajectory = trajectory_of(ctx)
    if trajectory is None:
        return _missing(name, matched_steps=[])
    calls = trajectory.calls()
    named = [i for i, c in enumerate(calls) if c.name == p.name]
    why = _matcher(p.match, p.arguments)
    mismatches = {i: why(calls[i]) for i in named}
    matched = [i for i in named if mismatches[i] is None]
    wanted = p.name if p.arguments is None else f"{p.name} with arguments matching ({p.match}) {_json(p.arguments)}"
    passed = bool(matched) if p.times is None else len(matched) == p.times
    off = [f"step {trajectory.steps[i].index + 1}: {mismatches[i]}" for i in named if mismatches[i]]
    if passed:
        where = f" (step {', '.join(map(str, _steps(matched, trajectory)))})" if matched else ""
        summary = f"{wanted} called" + (f" {_plural(p.times, 'time')}" if p.times is not None else "") + where
    elif not named:
        summary = f"{p.name} was never called" + (f" (called: {', '.join(dict.fromkeys(trajectory.names()))})"
                                                  if calls else " (no tool was called)")
    elif p.times is None:
        summary = f"no call of {wanted}: {'; '.join(off)}"
    else:
        summary = f"expected {wanted} called {_plural(p.times, 'time')}, got {len(matched)}" + (f" ({'; '.join(off)})"
                                                                                      if off else "")
    return CheckOutcome(name, passed, float(passed), explain(summary, trajectory),
                        details={"matched_steps": _steps(matched, trajectory), "calls": len(named),
                                 "matched": len(matched)})


def _in_order(patterns: Sequence[ToolPattern], calls: Sequence[ToolCall]) -> list[int]:
    """The calls matching the patterns as a subsequence, greedily (earliest first: leaves the most room after)."""
    found: list[int] = []
    j = 0
    for pattern in patterns:
        while j < len(calls) and not _fits(pattern, calls[j]):
            j += 1
        if j == len(calls):
            break
        found.append(j)
        j += 1
    return found


def grade_tool_sequence(answer: str, case: CaseSpec, p: ToolSequenceParams, ctx: GradeContext | None = None
                        ) -> CheckOutcome:
    name = "tool_sequence"
    trajectory = trajectory_of(ctx)
    if trajectory is None:
        return _missing(name, matched_steps=[], missing=[t.show() for t in p.tools])
    calls = trajectory.calls()
    expected = " -> ".join(t.show() for t in p.tools)
    n = len(p.tools)
    if p.order == "in_order":
        found = _in_order(p.tools, calls)
        passed = len(found) == n
        missing = [t.show() for t in p.tools[len(found):]]
        summary = (f"called in order: {expected}" if passed else
                   f"expected in order {expected}: matched {len(found)} of {n}, then no {missing[0]}"
                   + (f" after step {_steps(found, trajectory)[-1]}" if found else ""))
        score = len(found) / n
    elif p.order == "exact":
        same = 0
        while same < min(n, len(calls)) and _fits(p.tools[same], calls[same]):
            same += 1
        found = list(range(same))
        passed = same == n == len(calls)
        missing = [t.show() for t in p.tools[same:]]
        score = same / max(n, len(calls))
        if passed:
            summary = f"called exactly: {expected}"
        elif same < min(n, len(calls)):
            c = calls[same]
            summary = (f"expected exactly {expected}: step {trajectory.steps[same].index + 1} is "
                       f"{_show(c.name, c.arguments)}, expected {p.tools[same].show()}")
        elif len(calls) < n:
            summary = f"expected exactly {expected}: the calls stop after {len(calls)} step(s), missing {missing[0]}"
        else:
            summary = f"expected exactly {expected}: {len(calls) - n} more call(s) after it"
    else:
        pairs = _assign(p.tools, calls)
        found = sorted(pairs.values())
        passed = len(pairs) == n
        missing = [t.show() for i, t in enumerate(p.tools) if i not in pairs]
        score = len(pairs) / n
        summary = (f"called (any order): {', '.join(t.show() for t in p.tools)}" if passed else
                   f"expected each of {', '.join(t.show() for t in p.tools)} (any order): "
                   f"not called: {', '.join(missing)}")
    return CheckOutcome(name, passed, score, explain(summary, trajectory),
                        details={"matched_steps": _steps(found, trajectory), "missing": missing})


def grade_tool_not_called(answer: str, case: CaseSpec, p: ToolNotCalledParams, ctx: GradeContext | None = None
                          ) -> CheckOutcome:
    name = "tool_not_called"
    trajectory = trajectory_of(ctx)
    if trajectory is None:
        return _missing(name, forbidden_steps=[])
    forbidden = set(p.name)
    bad = [i for i, c in enumerate(trajectory.calls()) if c.name in forbidden
           and (p.arguments is None or _subset_mismatch(p.arguments, c.arguments, "") is None)]
    what = " or ".join(p.name) + (f" with arguments {_json(p.arguments)}" if p.arguments is not None else "")
    passed = not bad
    if passed:
        summary = f"{what} not called"
    else:
        shown = [f"step {s.index + 1}: {_show(s.call.name, s.call.arguments)}"
                 for s in (trajectory.steps[i] for i in bad)]
        summary = f"{what} was called ({'; '.join(shown)})"
    return CheckOutcome(name, passed, float(passed), explain(summary, trajectory),
                        details={"forbidden_steps": _steps(bad, trajectory)})


def grade_max_steps(answer: str, case: CaseSpec, p: MaxStepsParams, ctx: GradeContext | None = None) -> CheckOutcome:
    name = "max_steps"
    trajectory = trajectory_of(ctx)
    if trajectory is None:
        return _missing(name, steps=None, ended=None)
    n = len(trajectory.steps)
    limited = trajectory.ended == "max_steps"
    problems = []
    if n > p.steps:
        problems.append(f"{n} steps, more than {p.steps}")
    if limited and not p.allow_limit:
        problems.append("the run stopped at the agent loop's max_steps without a final answer")
    passed = not problems
    summary = (f"{n} step{'' if n == 1 else 's'} (at most {p.steps}), ended: {trajectory.ended}" if passed
               else "; ".join(problems))
    return CheckOutcome(name, passed, float(passed), explain(summary, trajectory),
                        details={"steps": n, "ended": trajectory.ended})


def grade_tool_f1(answer: str, case: CaseSpec, p: ToolF1Params, ctx: GradeContext | None = None) -> CheckOutcome:
    name = "tool_f1"
    trajectory = trajectory_of(ctx)
    if trajectory is None:
        return _missing(name, precision=0.0, recall=0.0, f1=0.0)
    calls = trajectory.calls()
    pairs = _assign(p.expected, calls)
    tp = len(pairs)
    precision = tp / len(calls) if calls else 1.0  # no call made: none of them wrong
    recall = tp / len(p.expected) if p.expected else 1.0  # nothing expected: nothing missed
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    passed = f1 >= p.min - 1e-9
    used = set(pairs.values())
    missing = [t.show() for i, t in enumerate(p.expected) if i not in pairs]
    extra = [j for j in range(len(calls)) if j not in used]
    parts = [f"precision {precision:.2f} ({tp}/{len(calls)} calls expected), "
             f"recall {recall:.2f} ({tp}/{len(p.expected)} expected made), F1 {f1:.2f}"
             + ("" if passed else f" < {p.min:.2f}")]
    if missing:
        parts.append(f"not called: {', '.join(missing)}")
    if extra:
        parts.append("unexpected: " + ", ".join(f"step {trajectory.steps[j].index + 1} "
                                                f"{_show(calls[j].name, calls[j].arguments)}" for j in extra))
    return CheckOutcome(name, passed, f1, explain("; ".join(parts), trajectory),
                        details={"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
                                 "matched_steps": _steps(sorted(used), trajectory), "missing": missing,
                                 "unexpected_steps": _steps(extra, trajectory)})


# ------------------------------------------------------------------------------------------------ reporting


def _agent_cases(results: Sequence[Any]) -> list[Any]:
    """The row's agent cases: those with a trajectory or a tool accuracy (an application case whose answer carried
    no tool calls has the second without the first: its trajectory checks all failed, and that must show)."""
    return [r for r in results if getattr(r, "trajectory", None) is not None
            or getattr(r, "tool_accuracy", None) is not None]


def aggregate_tools(results: list[Any]) -> dict[str, Any]:
    """A suite x model row's agent entries (CaseResults in): ``tool_accuracy`` (the mean of the cases' tool
    accuracy, None when no case has trajectory checks), ``mean_steps`` (over the cases with a trajectory, None
    without any) and ``agent``: those two with the number of agent cases, how many had a tool accuracy
    (``scored``), the steps whose tool answered with an error, and the runs stopped at the loop's max_steps.
    {} for a row without agent cases."""
    agents = _agent_cases(results)
    if not agents:
        return {}
    accuracies = [float(r.tool_accuracy) for r in agents if r.tool_accuracy is not None]
    trajectories = [r.trajectory for r in agents if isinstance(r.trajectory, Mapping)]
    steps = [len(t.get("steps") or []) for t in trajectories]
    accuracy = round(sum(accuracies) / len(accuracies), 6) if accuracies else None
    mean_steps = round(sum(steps) / len(steps), 6) if steps else None
    return {"tool_accuracy": accuracy, "mean_steps": mean_steps,
            "agent": {"cases": len(agents), "scored": len(accuracies), "tool_accuracy": accuracy,
                      "mean_steps": mean_steps,
                      "tool_errors": sum(1 for t in trajectories for s in t.get("steps") or []
                                         if isinstance(s, Mapping) and s.get("error")),
                      "stopped_at_limit": sum(1 for t in trajectories if t.get("ended") == "max_steps")}}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def tool_summary_lines(row: Mapping[str, Any], name: str) -> list[str]:
    """One line under the terminal summary table for a row with agent cases: ``assistant [gpt-4o-mini]: tool-call
    accuracy 83% over 6 cases, mean 1.8 steps, 2 tool errors, 1 stopped at max_steps``."""
    agent = row.get("agent")
    if not isinstance(agent, Mapping):
        return []
    accuracy, scored = agent.get("tool_accuracy"), int(agent.get("scored") or 0)
    parts = [f"tool-call accuracy {accuracy:.0%} over {_plural(scored, 'case')}" if accuracy is not None
             else f"no trajectory checks ({_plural(int(agent.get('cases') or 0), 'agent case')})"]
    if agent.get("mean_steps") is not None:
        parts.append(f"mean {float(agent['mean_steps']):.1f} steps")
    parts.append(_plural(int(agent.get("tool_errors") or 0), "tool error"))
    parts.append(f"{int(agent.get('stopped_at_limit') or 0)} stopped at max_steps")
    return [f"{name}: {', '.join(parts)}"]


CHECKS = [
    CheckDef("tool_called", ToolCalledParams, grade_tool_called, shorthand="name", kinds=KINDS,
             doc="the agent called this tool, with arguments matching (subset, exact, schema or regex); with times: "
                 "exactly that many matching calls",
             # the row's agent entries, reported once (on the first trajectory check, as jaccard does for labels)
             aggregate=aggregate_tools, summary_lines=tool_summary_lines),
    CheckDef("tool_sequence", ToolSequenceParams, grade_tool_sequence, shorthand="tools", kinds=KINDS,
             doc="these tool calls happened in order (in_order), as the whole sequence (exact) or all in any order "
                 "(any_order); score = share matched"),
    CheckDef("tool_not_called", ToolNotCalledParams, grade_tool_not_called, shorthand="name", kinds=KINDS,
             doc="none of these tools was called (with arguments: not with these arguments)"),
    CheckDef("max_steps", MaxStepsParams, grade_max_steps, shorthand="steps", kinds=KINDS,
             doc="the agent took at most this many steps and was not stopped by its step limit (unless "
                 "allow_limit)"),
    CheckDef("tool_f1", ToolF1Params, grade_tool_f1, shorthand="expected", kinds=KINDS,
             doc="precision, recall and F1 of the tool calls made against the expected ones (multiset; arguments "
                 "by subset); score = F1, passes at min (default 1.0)"),
]

# The names of the trajectory checks: a case's tool accuracy is the mean score of these.
assert TRAJECTORY_CHECKS == {c.name for c in CHECKS}, "cases/tools.py's TRAJECTORY_CHECKS names these checks"

"""Tool calls and trajectories (issue 18): what an agent did, as plain data the checks grade and results.json keeps.

A :class:`Trajectory` is the record of one agent run: each :class:`Step` is one tool call the model (or an
application's agent) asked for -- its name and arguments, what the tool returned or the error a runtime would
return (an unknown tool, arguments that fail the schema), how long it took and what the model call before it cost
-- and the final answer, with how the run ended (``answer``: the model answered without asking for a tool;
``max_steps``: the limit was reached; ``error``: the loop could not go on).

These are JSON-friendly values: trajectories are cached per step, sent across xdist workers and written to
results.json. An application target's :class:`~pytest_llmeval.core.answer.Answer` may carry one too (its
``metadata["trajectory"]``, or a list of tool calls), graded by the same checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENDINGS", "Step", "ToolCall", "Trajectory"]

ENDINGS = ("answer", "max_steps", "error")
RESULT_LIMIT = 2000  # characters of a tool's result kept in results.json


@dataclass(frozen=True)
class ToolCall:
    """One call an agent asked for: the tool's ``name``, its ``arguments`` (parsed JSON; ``raw_arguments`` is the
    text as the model wrote it when it was not valid JSON), and the provider's call ``id``."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    raw_arguments: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "arguments": dict(self.arguments)}
        if self.id:
            out["id"] = self.id
        if self.raw_arguments is not None:
            out["raw_arguments"] = self.raw_arguments
        return out

    @classmethod
    def coerce(cls, value: Any) -> ToolCall:
        """A ToolCall from a ToolCall, a mapping ``{name, arguments}`` or OpenAI's ``{function: {name, arguments}}``
        (arguments a mapping or a JSON string)."""
        if isinstance(value, ToolCall):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a tool call must be a mapping with a name, got {type(value).__name__}")
        nested = value.get("function")
        function: Mapping[str, Any] = nested if isinstance(nested, Mapping) else value
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tool call needs a name, got keys {sorted(map(str, value))}")
        arguments = function.get("arguments") or {}
        raw = None
        if isinstance(arguments, str):
            import json

            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                parsed, raw = {}, arguments
            arguments = parsed if isinstance(parsed, Mapping) else {}
            if not isinstance(parsed, Mapping) and raw is None:
                raw = function.get("arguments")
        if not isinstance(arguments, Mapping):
            raise ValueError(f"tool call {name}: arguments must be a mapping, got {type(arguments).__name__}")
        return cls(name, dict(arguments), value.get("id"), raw)


@dataclass
class Step:
    """One step of a trajectory: the call, and what came back (``result``, or the ``error`` fed back instead)."""

    index: int
    call: ToolCall
    result: Any = None
    error: str | None = None
    latency_s: float | None = None  # of the tool
    prompt_tokens: int | None = None  # of the model call that asked for it
    completion_tokens: int | None = None
    text: str | None = None  # what the model wrote beside the call

    def to_dict(self) -> dict[str, Any]:
        result = self.result
        if isinstance(result, str) and len(result) > RESULT_LIMIT:
            result = result[:RESULT_LIMIT] + "…"
        out: dict[str, Any] = {"step": self.index, **self.call.to_dict(), "result": result}
        for name in ("error", "latency_s", "prompt_tokens", "completion_tokens", "text"):
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 4) if name == "latency_s" else value
        return out


@dataclass
class Trajectory:
    """An agent run: its steps in order, the final answer, and how it ended."""

    steps: list[Step] = field(default_factory=list)
    final: str | None = None
    ended: str = "answer"

    def calls(self) -> list[ToolCall]:
        return [s.call for s in self.steps]

    def names(self) -> list[str]:
        return [s.call.name for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps], "final": self.final, "ended": self.ended}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trajectory:
        steps = []
        for i, raw in enumerate(data.get("steps") or []):
            steps.append(Step(int(raw.get("step", i)), ToolCall.coerce(raw), raw.get("result"), raw.get("error"),
                              raw.get("latency_s"), raw.get("prompt_tokens"), raw.get("completion_tokens"),
                              raw.get("text")))
        return cls(steps, data.get("final"), str(data.get("ended") or "answer"))

    @classmethod
    def coerce(cls, value: Any, final: str | None = None) -> Trajectory:
        """A Trajectory from one, from its dict form (``{"steps": [...]}``), or from a list of tool calls (each a
        :class:`ToolCall`, a mapping ``{name, arguments, result?, error?}`` or OpenAI's ``{function: {...}}``),
        whose answer is ``final``. TypeError/ValueError naming the call that cannot be read."""
        if isinstance(value, Trajectory):
            return value
        if isinstance(value, Mapping) and "steps" in value:
            return cls.from_dict(value)
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise TypeError(f"tool calls must be a list of calls or a Trajectory, got {type(value).__name__}")
        steps = []
        for i, raw in enumerate(value):
            try:
                call = ToolCall.coerce(raw)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"tool call {i + 1}: {exc}") from None
            extra = raw if isinstance(raw, Mapping) else {}
            error = extra.get("error")
            steps.append(Step(i, call, extra.get("result"), None if error is None else str(error),
                              extra.get("latency_s")))
        return cls(steps, final)

    def excerpt(self, limit: int = 8) -> str:
        """The compact form a check's reason and the failure report show: ``1. search(q="x") -> "..."``."""
        import json

        lines = []
        for s in self.steps[:limit]:
            args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in s.call.arguments.items())
            shown = f"ERROR {s.error}" if s.error else json.dumps(s.result, ensure_ascii=False, default=str)
            lines.append(f"{s.index + 1}. {s.call.name}({args}) -> {shown[:120]}")
        if len(self.steps) > limit:
            lines.append(f"... {len(self.steps) - limit} more step(s)")
        return "\n".join(lines) or "(no tool call)"

"""What an application under test receives and returns: :class:`TargetRequest` in, :class:`Answer` out.

A *target* is what answers a suite's cases (docs/targets.md): the ``--llm`` model by default, or the team's own
application -- a Python callable, a pytest fixture that builds one, an HTTP service. Every application target gets
one :class:`TargetRequest` per call (per turn, in a conversation) and returns a ``str`` or an :class:`Answer`: the
text, the :class:`Reference` s it used (what recall@k/MRR, the citation check and the judge's groundedness context
read), the context it put in front of its model, metadata, and the usage of its own model calls when it knows it.

These are plain data: an answer is cached (under the target's declared identity), sent across xdist workers and
written to results.json, so everything in it must be JSON-friendly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_llmeval.core.errors import InfrastructureError

__all__ = ["Answer", "Reference", "TargetError", "TargetRequest", "Usage", "to_answer"]

REFERENCE_TEXT_LIMIT = 2000  # characters of a reference's text kept in results.json


class TargetError(InfrastructureError):
    """The application under test failed: it raised (``details`` is its traceback), returned the wrong type, or
    could not be reached or started. An ``error`` outcome of the case, never a model ``failure``."""

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> Any:  # picklable with its fields (a prefetch future, a process pool)
        return (type(self), (self.message, self.details))


@dataclass(frozen=True)
class Reference:
    """A document the application used for its answer: where it came from (``source``: a path, URL or id, as the
    case's ``sources:`` name them), the passage (``text``), the retriever's ``score``, an optional ``title``."""

    source: str
    text: str = ""
    score: float | None = None
    title: str = ""

    def to_dict(self, n: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if n is not None:
            out = {"n": n, **out}
        if self.text:
            out["text"] = self.text if len(self.text) <= REFERENCE_TEXT_LIMIT else self.text[:REFERENCE_TEXT_LIMIT] + "…"
        if self.score is not None:
            out["score"] = round(float(self.score), 6)
        if self.title:
            out["title"] = self.title
        return out

    @classmethod
    def coerce(cls, value: Any) -> Reference:
        """A Reference from what an application may hand back: a Reference, a source string, or a mapping with
        ``source`` (or ``url``/``id``/``path``/``doc``) and optional ``text``/``content``, ``score``, ``title``.
        TypeError/ValueError otherwise."""
        if isinstance(value, Reference):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            source = next((value[k] for k in ("source", "url", "id", "path", "doc", "document") if value.get(k)),
                          None)
            if source is None:
                raise ValueError(f"a reference needs a source (one of source, url, id, path), got keys "
                                 f"{sorted(map(str, value))}")
            text = value.get("text", value.get("content", "")) or ""
            score = value.get("score")
            if score is not None and not isinstance(score, int | float):
                raise ValueError(f"a reference's score must be a number, got {score!r}")
            return cls(str(source), str(text), None if score is None else float(score), str(value.get("title") or ""))
        raise TypeError(f"a reference must be a str, a mapping with a source, or a pytest_llmeval.Reference, "
                        f"got {type(value).__name__}")


@dataclass(frozen=True)
class Usage:
    """What an answer's model calls cost: the application reports it (or the plugin measures the calls it makes
    through litellm during the case)."""

    calls: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd, "latency_s": None if self.latency_s is None else round(self.latency_s, 4)}

    @classmethod
    def coerce(cls, value: Any) -> Usage:
        if isinstance(value, Usage):
            return value
        if isinstance(value, Mapping):
            def number(*names: str) -> Any:
                for name in names:
                    v = value.get(name)
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        return v
                return None

            calls = number("calls")
            tokens_in, tokens_out = number("prompt_tokens", "input_tokens"), number("completion_tokens", "output_tokens")
            return cls(int(calls) if calls is not None else 1 if (tokens_in or tokens_out) else 0,
                       None if tokens_in is None else int(tokens_in), None if tokens_out is None else int(tokens_out),
                       number("cost_usd", "cost"), number("latency_s"))
        raise TypeError(f"usage must be a mapping or a pytest_llmeval.Usage, got {type(value).__name__}")


@dataclass
class Answer:
    """What an application target returns (a plain ``str`` is ``Answer(text)``).

    - ``text``: the answer the checks grade;
    - ``references``: what it used, in rank order (:class:`Reference`, a source string or a mapping); ``[n]`` in
      the text cites ``references[n-1]``;
    - ``context``: the context it gave its model (the judge's groundedness context; default: the references'
      texts, numbered);
    - ``metadata``: anything else worth keeping in results.json (JSON-friendly);
    - ``usage``: what its own model calls cost, when it knows (calls it makes through litellm in this process are
      measured by the plugin anyway);
    - ``tool_calls``: the tool calls its agent made, for the trajectory checks (``tool_called``...): a list of
      :class:`~pytest_llmeval.core.tools.ToolCall`, of ``{name, arguments, result?, error?}`` mappings or of
      OpenAI-shaped calls (``{function: {name, arguments}}``), or a whole
      :class:`~pytest_llmeval.core.tools.Trajectory`; kept as a Trajectory.
    """

    text: str
    references: list[Any] = field(default_factory=list)
    context: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    usage: Any = None
    tool_calls: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Answer.text must be a str, got {type(self.text).__name__}")
        self.references = [Reference.coerce(r) for r in (self.references or [])]
        if self.context is not None and not isinstance(self.context, str):
            self.context = "\n\n".join(map(str, self.context)) if isinstance(self.context, list | tuple) \
                else str(self.context)
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"Answer.metadata must be a mapping, got {type(self.metadata).__name__}")
        self.metadata = dict(self.metadata)
        if self.usage is not None:
            self.usage = Usage.coerce(self.usage)
        if self.tool_calls is not None:
            from pytest_llmeval.core.tools import Trajectory

            self.tool_calls = Trajectory.coerce(self.tool_calls, self.text)

    def references_text(self) -> str:
        """The references, numbered as the answer cites them (``[1] source\\ntext``), for a judge's context."""
        return "\n\n".join(f"[{i}] {r.source}" + (f"\n{r.text.strip()}" if r.text.strip() else "")
                           for i, r in enumerate(self.references, start=1))

    def grounding(self) -> str | None:
        """What the judge's groundedness rubric checks the answer against: the context the application used,
        else its references; None when it gave neither."""
        if self.context and self.context.strip():
            return self.context
        return self.references_text() or None


def to_answer(value: Any, target: str) -> Answer:
    """The :class:`Answer` an application returned: a str or an Answer; anything else is a TargetError naming the
    target and the type it returned."""
    if isinstance(value, Answer):
        return value
    if isinstance(value, str):
        return Answer(value)
    hint = " (an async function must be declared `async def`; a coroutine was not awaited)" \
        if type(value).__name__ == "coroutine" else ""
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    raise TargetError(f"target {target} returned {article} {kind}, not a str or a pytest_llmeval.Answer"
                      f"{hint}: {_short(value)}")


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class TargetRequest:
    """What an application target receives for one call.

    - ``prompt``: the rendered user prompt (the suite's template over the case's fields, or the kind's default);
    - ``messages``: the chat so far, OpenAI-style: the system prompt, earlier turns of a conversation, then this
      turn's user message (``messages[-1]``);
    - ``case``: the case's fields as written (``question``, ``reference``, your own fields...);
    - ``case_id``, ``suite``;
    - ``model``: the ``--llm`` model of this item (``local/smollm2`` by default): an application that takes its model
      as a setting is evaluated across ``--llm=a,b``, one column each in the summary;
    - ``params``: the case's sampling parameters (``temperature``, ``max_tokens``...);
    - ``system``: the system prompt, if any; ``turn``: the turn of a conversation (0 for a single question);
      ``sample``: the draw's cache slot (with ``--llm-repeat``; past the run's own slots in the gate's redraws).
    """

    prompt: str
    messages: list[dict[str, Any]]
    case: Mapping[str, Any] = field(default_factory=dict)
    case_id: str = ""
    suite: str = ""
    model: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None
    turn: int = 0
    sample: int = 0

    @property
    def question(self) -> str:
        """The case's ``question`` field, else the prompt (this turn's user message in a conversation)."""
        if self.turn == 0:
            question = self.case.get("question")
            if isinstance(question, str) and question:
                return question
        return self.prompt

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (an HTTP target's template fields, the cache key)."""
        return {"prompt": self.prompt, "messages": list(self.messages), "case": dict(self.case),
                "case_id": self.case_id, "suite": self.suite, "model": self.model, "params": dict(self.params),
                "system": self.system, "turn": self.turn, "sample": self.sample}

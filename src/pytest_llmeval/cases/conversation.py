"""Conversation cases: a multi-turn script (``turns:``) or a simulated user (``simulate:``).

A case of a qna suite may hold, instead of one question::

    turns:                                   # the user's messages, in order; the target gets the whole history
      - How do I reset my password?          # a turn is a string ...
      - user: And if I lost my email too?    # ... or a mapping with checks of that turn's answer
        expect: [{contains: support}]
    expect: [{judge: "Is the assistant polite and consistent across the conversation?"}]  # the whole transcript

or::

    simulate:                                # an LLM plays the user for up to max_turns answers
      persona: A hurried customer who writes short messages.
      goal: Find out how to export the data as CSV.
      max_turns: 5                           # 1..20
      model: openai/gpt-4o-mini              # default: --llm-judge, else the --llm model
      first_message: Hi, how do I export?    # optional: the user's first message as written
      stop: GOAL_REACHED                     # what the simulated user writes when done
    expect: [{goal: true}]                   # did the user reach the goal? (an LLM judge over the transcript)

A case has ``turns`` or ``simulate``, not both. This module only describes and validates; the conversation runs in
:mod:`pytest_llmeval.targets.conversation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pytest_llmeval.core.checks import CheckSpec

__all__ = ["DEFAULT_STOP", "ConversationFields", "SimulateModel", "TurnModel", "conversation_prompt",
           "parse_turn_checks", "turn_texts"]

# schema.py's Loc; this module must not import schema.py, whose QnaCase takes ConversationFields from here.
Loc = tuple[str | int, ...]
# schema.parse_check bound to a case's kind, registry, lines and folder: (entry, loc) -> (spec, problems)
ParseCheck = Callable[[Any, Loc], tuple[CheckSpec | None, list[tuple[Loc, str]]]]

DEFAULT_STOP = "GOAL_REACHED"
MAX_SIMULATED_TURNS = 20


class TurnModel(BaseModel):
    """One turn of a script: the user's message and the checks of the target's answer to it."""

    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1)
    expect: list[Any] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, v: Any) -> Any:
        if not isinstance(v, dict | TurnModel):
            raise ValueError(f"expected the user's message, or {{user: <message>, expect: [<checks>]}} "
                             f"(got {type(v).__name__} {v!r})")
        return v


class SimulateModel(BaseModel):
    """``simulate:``: an LLM plays ``persona`` pursuing ``goal`` for up to ``max_turns`` answers of the target."""

    model_config = ConfigDict(extra="forbid")
    persona: str = Field(min_length=1)
    goal: str = Field(min_length=1)
    max_turns: int = Field(default=5, ge=1, le=MAX_SIMULATED_TURNS)
    model: str | None = Field(default=None, min_length=1)  # default: --llm-judge, else the --llm model
    first_message: str | None = Field(default=None, min_length=1)  # the user's first message, sent as written
    stop: str = Field(default=DEFAULT_STOP, min_length=1)  # the simulated user writes it when done

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, v: Any) -> Any:
        if not isinstance(v, dict | SimulateModel):
            raise ValueError("expected a mapping: {persona: <who the user is>, goal: <what they want>, max_turns: 5}")
        return v

    @field_validator("stop")
    @classmethod
    def _no_outer_spaces(cls, v: str) -> str:
        if v != v.strip() or not v.strip():
            raise ValueError("the stop marker must not start or end with spaces")
        return v


class ConversationFields(BaseModel):
    """The conversation fields of a case: ``turns`` or ``simulate``, not both. A base of the case models
    (``class CaseModel(ConversationFields)``): it sets no ``model_config``, so the case model's own applies."""

    turns: list[TurnModel] | None = Field(default=None, min_length=1)
    simulate: SimulateModel | None = None

    @field_validator("turns", mode="before")
    @classmethod
    def _strings_are_turns(cls, v: Any) -> Any:
        # A turn written as a plain string is the user's message; the model then has one shape for every turn
        # (pydantic's errors for a union would name its members: "turns[1].str", "turns[1].TurnModel.user").
        if isinstance(v, list):
            return [{"user": t} if isinstance(t, str) else t for t in v]
        return v

    @model_validator(mode="after")
    def _one_conversation(self) -> ConversationFields:
        if self.turns is not None and self.simulate is not None:
            raise ValueError("a case holds a script (turns) or a simulated user (simulate), not both")
        return self

    @property
    def is_conversation(self) -> bool:
        return self.turns is not None or self.simulate is not None


def turn_texts(turns: Any) -> list[str]:
    """The user's messages of a script as written: each turn a string, a ``{user: ...}`` mapping or a TurnModel."""
    out: list[str] = []
    for t in turns or []:
        if isinstance(t, TurnModel):
            out.append(t.user)
        elif isinstance(t, dict):
            out.append(str(t.get("user", "")))
        else:
            out.append(str(t))
    return out


def conversation_prompt(raw: Any) -> str:
    """What stands for a conversation case's prompt (the id of its question in results, reports and the holdout
    hash): the first turn of a script, else the simulated user's ``first_message``, else ""."""
    if not isinstance(raw, dict):
        return ""
    texts = turn_texts(raw.get("turns")) if isinstance(raw.get("turns"), list) else []
    if texts:
        return texts[0]
    simulate = raw.get("simulate")
    first = simulate.get("first_message") if isinstance(simulate, dict) else None
    return str(first) if first else ""


def parse_turn_checks(turns: Any, loc: Loc, parse: ParseCheck) -> tuple[list[list[CheckSpec]], list[tuple[Loc, str]]]:
    """Validate each turn's ``expect`` entries (``turns`` as written, ``loc`` the case's location) with ``parse``
    (schema.parse_check for the case's kind): the CheckSpecs of every turn (one list per turn, [] for a string turn)
    and the problems found, located like ``("cases", 3, "turns", 1, "expect", 0)``. A malformed turn (not a string
    or a mapping, ``expect`` not a list) is left to the schema, which reports it. A conversation-level check (one
    that reads the transcript: ``goal``) belongs in the case's ``expect``, not in a turn's."""
    per_turn: list[list[CheckSpec]] = []
    problems: list[tuple[Loc, str]] = []
    if not isinstance(turns, list):
        return per_turn, problems
    for i, turn in enumerate(turns):
        specs: list[CheckSpec] = []
        expect = turn.get("expect") if isinstance(turn, dict) else turn.expect if isinstance(turn, TurnModel) else None
        if isinstance(expect, list):
            for j, entry in enumerate(expect):
                where = loc + ("turns", i, "expect", j)
                spec, errs = parse(entry, where)
                problems += errs
                if spec is not None and spec.name in CONVERSATION_CHECKS:
                    problems.append((where + (spec.name,), f"the {spec.name} check grades the whole conversation: "
                                                           "put it in the case's expect, not in a turn's"))
                elif spec is not None:
                    specs.append(spec)
        per_turn.append(specs)
    return per_turn, problems


# Checks that read the whole transcript: only on a conversation case, only in the case's (or suite's) expect.
CONVERSATION_CHECKS = ("goal",)

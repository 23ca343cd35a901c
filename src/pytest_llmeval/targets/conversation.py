"""Running a conversation against a target: a script of user messages, or a simulated user (an LLM with a persona
and a goal). Independent of pytest: the item hands in how the target answers and how the simulated user speaks.

- ``respond(messages, turn) -> Answer`` (or a str): the target's answer to the chat so far (OpenAI-style messages:
  the system prompt, the earlier turns, this turn's user message last). It raises on failure; the error propagates.
- ``user_says(messages, turn) -> str``: the simulated user's next message. Its messages are a system prompt that
  sets the persona and the goal, then the conversation with the roles flipped: the simulated user's own messages
  are ``assistant``, the target's answers are ``user`` (a chat model writes the ``assistant`` side).

A :class:`Conversation` is plain data once run: its ``to_dict()`` goes to results.json, its ``transcript()`` to the
checks (``GradeContext.transcript``), its ``text()`` to a judge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmeval.cases.conversation import turn_texts
from pytest_llmeval.core.answer import Answer

__all__ = ["SIMULATED_USER_PARAMS", "SIMULATED_USER_PROMPT_VERSION", "Conversation", "run_script", "run_simulation",
           "simulated_user_system", "transcript_text", "turn_check_name"]

Messages = list[dict[str, Any]]
Respond = Callable[[Messages, int], Any]
UserSays = Callable[[Messages, int], str]

# Part of the simulated user's cache key (with the prompt itself): editing the prompt never replays old messages.
SIMULATED_USER_PROMPT_VERSION = "1"
# Deterministic, so that a conversation replays from the cache and a run is repeatable; draws (--llm-repeat) get
# their own cache slots through ``sample``.
SIMULATED_USER_PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 256}

SIMULATED_USER_SYSTEM = """\
You are role-playing a user who is talking to an AI assistant, to test the assistant. Stay in character throughout.

Your persona: {persona}
Your goal: {goal}

Rules:
- Write only your next message to the assistant: one short message, in plain text, as this user would write it.
- Never write the assistant's replies, never describe what you are doing, never say that you are simulated.
- Pursue your goal. If a reply is unclear, incomplete or wrong, follow up or ask again.
- When your goal is reached, or when you give up, reply with exactly {stop} and nothing else."""

# The first message the simulated user's model sees: chat models expect a user message before they speak.
SIMULATED_USER_START = "(The conversation starts now. Write your first message to the assistant.)"

ENDED = ("script", "goal", "max_turns", "silent")


def simulated_user_system(persona: str, goal: str, stop: str) -> str:
    """The system prompt of the simulated user."""
    return SIMULATED_USER_SYSTEM.format(persona=persona.strip(), goal=goal.strip(), stop=stop)


def transcript_text(transcript: Sequence[Mapping[str, Any]]) -> str:
    """``User: ...`` / ``Assistant: ...`` lines of a transcript (what a judge reads)."""
    return "\n".join(f"{'User' if m.get('role') == 'user' else 'Assistant'}: {str(m.get('content', '')).strip()}"
                     for m in transcript)


def turn_check_name(turn: int, check: str) -> str:
    """The name of a check of one turn in outcomes and reports: ``turn 2: contains`` for ``turn`` 1 (0-based)."""
    return f"turn {turn + 1}: {check}"


@dataclass
class Conversation:
    """A conversation that ran: per turn the user's message and the target's answer.

    - ``turns``: ``{"turn", "user", "answer", "references", "usage"}`` per turn (``answer``: the text;
      ``references``: numbered as ``[n]`` cites them; ``usage``: what the answer's model calls cost, or None);
    - ``answers``: the target's :class:`Answer` per turn;
    - ``ended``: ``script`` (every turn of the script answered), ``goal`` (the simulated user wrote the stop marker),
      ``max_turns`` (the simulated user's turns ran out) or ``silent`` (it wrote nothing);
    - ``closing``: what the simulated user wrote beside the stop marker ("Thanks, that works. GOAL_REACHED"): in the
      transcript, never sent to the target.
    """

    turns: list[dict[str, Any]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    ended: str = "script"
    closing: str | None = None
    simulated: bool = False

    @property
    def final(self) -> Answer | None:
        """The target's last answer (None when the simulated user stopped before any)."""
        return self.answers[-1] if self.answers else None

    def history(self, upto: int | None = None) -> Messages:
        """The chat of turns before ``upto`` (all by default): user and assistant messages, alternating."""
        out: Messages = []
        for t in self.turns[:upto]:
            out += [{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["answer"]}]
        return out

    def transcript(self, upto: int | None = None) -> list[dict[str, Any]]:
        """``[{"role", "content", "turn"}, ...]`` (``GradeContext.transcript``): turns before ``upto`` (all, and the
        simulated user's closing words, by default)."""
        out = [{"role": m["role"], "content": m["content"], "turn": i // 2}
               for i, m in enumerate(self.history(upto))]
        if upto is None and self.closing:
            out.append({"role": "user", "content": self.closing, "turn": len(self.turns)})
        return out

    def text(self, upto: int | None = None) -> str:
        """The transcript as ``User: ...`` / ``Assistant: ...`` lines."""
        return transcript_text(self.transcript(upto))

    def prompt_at(self, turn: int) -> str:
        """What a check of one turn takes as the question: the user's message of ``turn``, after the earlier turns
        (``User: ...`` / ``Assistant: ...`` lines) when there are any; the message alone for the first turn."""
        message = self.turns[turn]["user"]
        if turn == 0:
            return message
        return f"{self.text(turn)}\nUser: {message.strip()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, for results.json and the report."""
        out: dict[str, Any] = {"turns": [dict(t) for t in self.turns], "ended": self.ended}
        if self.simulated:
            out["simulated"] = True
        if self.closing:
            out["closing"] = self.closing
        return out

    def _add(self, user: str, answer: Answer) -> None:
        self.answers.append(answer)
        self.turns.append({
            "turn": len(self.turns), "user": user, "answer": answer.text,
            "references": [r.to_dict(n) for n, r in enumerate(answer.references, start=1)],
            "usage": answer.usage.to_dict() if answer.usage is not None else None,
        })


def _answer(value: Any) -> Answer:
    if isinstance(value, Answer):
        return value
    if isinstance(value, str):
        return Answer(value)
    raise TypeError(f"respond() must return a str or a pytest_llmeval.Answer, got {type(value).__name__}")


def _ask(conversation: Conversation, respond: Respond, system: str | None, user: str) -> None:
    turn = len(conversation.turns)
    messages: Messages = [{"role": "system", "content": system}] if system else []
    messages += [*conversation.history(), {"role": "user", "content": user}]
    conversation._add(user, _answer(respond(messages, turn)))


def run_script(turns: Sequence[Any], respond: Respond, system: str | None = None) -> Conversation:
    """Send the user's messages one by one (``turns``: strings, ``{user: ...}`` mappings or TurnModels); every call
    gets the whole history. Ends ``script``."""
    conversation = Conversation()
    for user in turn_texts(turns):
        _ask(conversation, respond, system, user)
    return conversation


def split_marker(message: str, stop: str) -> tuple[str, bool]:
    """(the message without the stop marker, whether the marker was there). The marker counts written alone, or
    at the start or the end of the message ("Thanks! GOAL_REACHED", "GOAL_REACHED."), not inside a sentence."""
    text = message.strip()
    marker = re.escape(stop)
    found = re.search(rf"(?:^|[^\w]){marker}[^\w]*\Z", text) or re.match(rf"\A[^\w]*{marker}(?:[^\w]|\Z)", text)
    if found is None:
        return text, False
    rest = re.sub(r"\A[\s\-–—:*_]+|[\s\-–—:*_]+\Z", "", text[:found.start()] + " " + text[found.end():])
    return (rest if re.search(r"\w", rest) else ""), True


def run_simulation(spec: Any, respond: Respond, user_says: UserSays, system: str | None = None) -> Conversation:
    """A simulated user (``spec``: cases.conversation.SimulateModel, or a mapping of its fields) talks to the target
    for up to ``max_turns`` answers. Turn 0 opens with ``first_message`` when given (as written). Ends ``goal`` when
    the simulated user writes the stop marker (not sent to the target), ``max_turns`` after the last answer,
    ``silent`` when it writes nothing."""
    get = spec.get if isinstance(spec, Mapping) else lambda name, default=None: getattr(spec, name, default)
    persona, goal = str(get("persona")), str(get("goal"))
    stop = str(get("stop") or "GOAL_REACHED")
    max_turns = int(get("max_turns") or 5)
    first = get("first_message")
    conversation = Conversation(simulated=True, ended="max_turns")
    own = [{"role": "system", "content": simulated_user_system(persona, goal, stop)},
           {"role": "user", "content": SIMULATED_USER_START}]
    for turn in range(max_turns):
        if turn == 0 and first:
            _ask(conversation, respond, system, str(first))  # as written: no marker, nothing stripped
            continue
        flipped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]}
                   for m in conversation.history()]
        text, stopped = split_marker(str(user_says([*(dict(m) for m in own), *flipped], turn) or ""), stop)
        if stopped:
            conversation.ended, conversation.closing = "goal", text or None
            break
        if not text:
            conversation.ended = "silent"
            break
        _ask(conversation, respond, system, text)
    return conversation

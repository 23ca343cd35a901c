"""The item's side of conversation cases (``turns:``, ``simulate:``; cases/conversation.py): each draw runs the
whole conversation in setup (targets/conversation.py), against the ``--llm`` model or the suite's application
target, so that a failing call is an ``error`` outcome; grading is run/grading.py's ``grade_conversation``.

- The model answers each turn through the run's ModelRunner (the cache, retries, budget): the whole history each
  time, the draw's own cache slot (``sample``: every turn, the application's requests and the simulated user's
  messages of a draw take it; past the run's own slots in the gate's redraws, run/redraw_child.py), never from the
  semantic cache (an earlier turn's near-duplicate is not this turn's answer).
- An application target gets one TargetRequest per turn: ``messages`` the history, ``prompt`` this turn's user
  message, ``turn`` its index.
- The simulated user (``simulate.model``, else the judge model) speaks through the ModelRunner too, with its own
  cache key (purpose, turn, prompt version), so a rerun replays the whole conversation from the cache.

A draw's Completion is the final answer's, with the tokens, cost, latency and attempts of every turn of the target
added up; the simulated user's calls are kept apart (``transcript.simulated_user`` in the result).
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_llmeval.core.answer import Answer, Usage
from pytest_llmeval.run.redraw_child import draw_slots
from pytest_llmeval.run.targets import TargetCalls

if TYPE_CHECKING:
    from pytest_llmeval.core.checks import CheckOutcome
    from pytest_llmeval.providers.runner import Completion
    from pytest_llmeval.run.state import RunState
    from pytest_llmeval.targets.conversation import Conversation

SHOW_TURN_CHARS = 600  # of each message in a failure report


class ConversationCalls(TargetCalls):
    """Mixed into CaseItem (with the application target's calls): the conversations of a conversation case."""

    nodeid: str
    conversations: Sequence[Conversation] = ()  # one per draw, once run
    user_calls: Sequence[Completion] = ()  # the simulated user's calls over every draw

    def simulated_user_model(self) -> str | None:
        """The model that plays the user (``simulate.model``, else the judge model: ``--llm-judge``, else the
        ``--llm`` model), None without ``simulate``."""
        if self.case.simulate is None:
            return None
        from pytest_llmeval.run.state import get_state

        return str(self.case.simulate.get("model") or get_state(self.config).settings.judge_model or self.model)

    def converse(self, state: RunState, draws: int) -> list[Completion]:
        """Run the conversation of every draw (in the prefetch pool when it ran them ahead); their Completions (the
        final answers, every turn's cost added)."""
        ran = None
        if state.prefetcher is not None and self.conversation_plan(state, draws) is not None:
            state.prefetch_from(self)  # type: ignore[arg-type]
            ran = state.prefetcher.take(self)
        conversations: list[Conversation] = []
        user_calls: list[Completion] = []
        self.conversations, self.user_calls = conversations, user_calls
        out: list[Completion] = []
        # One at a time when not prefetched: a failed draw leaves the ones before it shown.
        for i, slot in enumerate(draw_slots(self.config, draws)):
            completion, conversation, users = ran[i] if ran is not None else self.conversation_draw(state, slot)
            conversations.append(conversation)
            user_calls.extend(users)
            out.append(completion)
        return out

    def conversation_plan(self, state: RunState, draws: int) -> list[dict[str, Any]] | None:
        """The prefetcher's plan for this item: each draw's whole conversation, run in one pool thread
        (``state.call(conversation=..., sample=slot)``): its turns stay in order, and the conversations of the items
        after it run beside it, so a ``local/`` model generates their turns together (turn 2 of every conversation
        once their turn 1 is answered). None for a per-item (fixture) target: it needs the item's fixtures."""
        spec = self.target
        if spec is not None and (spec.definition is None or spec.definition.per_item):
            return None
        state.agent_items[self.nodeid] = self
        return [{"conversation": self.nodeid, "sample": slot} for slot in draw_slots(self.config, draws)]

    def conversation_draw(self, state: RunState, sample: int) -> tuple[Completion, Conversation, list[Completion]]:
        """One draw's conversation (safe in a pool thread: the runner and the target runner are thread-safe): its
        Completion, the Conversation and the simulated user's calls."""
        user_calls: list[Completion] = []
        conversation, calls = self._converse(state, sample, user_calls)
        return _summed(calls, self.model, conversation), conversation, user_calls

    def _converse(self, state: RunState, sample: int, user_calls: list[Completion]
                  ) -> tuple[Conversation, list[Completion]]:
        from pytest_llmeval.targets import conversation as conv

        calls: list[Completion] = []

        def respond(messages: list[dict[str, Any]], turn: int) -> Answer:
            if self.target is None:
                c = state.runner.complete(self.model, messages, self.case.params, sample=sample, semantic=False)
                calls.append(c)
                return Answer(c.text, usage=Usage(1, c.prompt_tokens, c.completion_tokens, c.cost_usd, c.latency_s))
            c = self.ask_target(state, self.target_request(sample, messages=messages, turn=turn,
                                                          prompt=str(messages[-1]["content"])))
            calls.append(c)
            return Answer(c.text, list(c.references or []), c.context, dict(c.metadata or {}),
                          Usage.coerce(c.app_usage) if c.app_usage else None)

        if self.case.simulate is None:
            return conv.run_script(self.case.turns, respond, self.case.system), calls
        model = self.simulated_user_model()
        assert model is not None

        def user_says(messages: list[dict[str, Any]], turn: int) -> str:
            c = state.runner.complete(model, messages, conv.SIMULATED_USER_PARAMS, sample=sample, semantic=False,
                                      key_extra={"purpose": "simulated-user", "turn": turn,
                                                 "prompt_version": conv.SIMULATED_USER_PROMPT_VERSION})
            user_calls.append(c)
            return c.text

        return conv.run_simulation(self.case.simulate, respond, user_says, self.case.system), calls

    def conversation_fields(self) -> dict[str, Any]:
        """The CaseResult fields of a conversation: ``transcript`` (the first draw's ``Conversation.to_dict()``,
        with the simulated user's model and what its calls cost, over every draw)."""
        if not self.conversations:
            return {}
        transcript = self.conversations[0].to_dict()
        if self.case.simulate is not None:
            calls = self.user_calls
            costs = [c.cost_usd for c in calls if c.cost_usd is not None]
            transcript["simulated_user"] = {
                "model": self.simulated_user_model(), "calls": len(calls),
                "prompt_tokens": sum(c.prompt_tokens or 0 for c in calls),
                "completion_tokens": sum(c.completion_tokens or 0 for c in calls),
                "cost_usd": sum(costs) if costs else None, "cached": all(c.cached for c in calls)}
        return {"transcript": transcript}

    def transcript_lines(self, index: int, outcomes: list[CheckOutcome]) -> list[str]:
        """A failure report's view of draw ``index``: the conversation, a turn's failed checks under its answer."""
        from pytest_llmeval.targets.conversation import turn_check_name

        if index >= len(self.conversations):
            return ["  conversation: not run"]
        conversation = self.conversations[index]

        def shown(text: str) -> str:
            text = " ".join(str(text).split())
            return text if len(text) <= SHOW_TURN_CHARS else text[:SHOW_TURN_CHARS] + f"… [{len(text)} chars]"

        failed = [o for o in outcomes if not o.passed and not o.unscored and not o.skipped]
        how = {"script": "the script ended", "goal": "the simulated user reached the goal",
               "max_turns": "max_turns reached", "silent": "the simulated user wrote nothing"}
        lines = [f"  conversation ({len(conversation.turns)} turns, {how.get(conversation.ended, conversation.ended)}):"]
        for t in conversation.turns:
            lines += [textwrap.indent(f"user: {shown(t['user'])}", "    "),
                      textwrap.indent(f"assistant: {shown(t['answer'])}", "    ")]
            prefix = turn_check_name(t["turn"], "")
            lines += [f"      ^ FAIL {o.name}" + (f": {o.reason}" if o.reason else "")
                      for o in failed if o.name.startswith(prefix)]
        if conversation.closing:
            lines.append(textwrap.indent(f"user: {shown(conversation.closing)}", "    "))
        return lines


def _summed(calls: list[Completion], model: str, conversation: Conversation) -> Completion:
    """A draw's Completion: the final answer's, with every turn's tokens, cost, latency and retries added up
    (and the application's usage); an empty answer when the simulated user stopped before any."""
    from pytest_llmeval.providers.runner import Completion, total_latency

    if not calls:
        return Completion(text="", model=model, resolved_model=model, latency_s=0.0, cached=True)

    def total(name: str) -> Any:
        values = [getattr(c, name) for c in calls if getattr(c, name) is not None]
        return sum(values) if values else None

    final = calls[-1]
    usages = [c.app_usage for c in calls if c.app_usage]
    app_usage = None
    if usages:
        app_usage = {name: (sum(v) if (v := [u[name] for u in usages if u.get(name) is not None]) else None)
                     for name in ("calls", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s")}
    return dataclasses.replace(final, text=conversation.final.text if conversation.final else final.text,
                               latency_s=total_latency(calls), prompt_tokens=total("prompt_tokens"),
                               completion_tokens=total("completion_tokens"), cost_usd=total("cost_usd"),
                               cached=all(c.cached for c in calls), attempts=1 + sum(c.attempts - 1 for c in calls),
                               app_usage=app_usage, semantic=None, ttft_s=None)

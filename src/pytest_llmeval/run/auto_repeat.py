"""``--llm-repeat auto[:MAX]``: draw a case's answers only until its outcome under pass_if is settled.

A case first draws the fewest answers that could settle it (one for ``all`` and ``any``, a bare majority of MAX for
``majority``), is graded, and draws one more at a time, each graded at once, until its outcome is what MAX draws
would give whatever the rest said (results/sequential.settled: curtailed sampling, so the verdict is that of
``--llm-repeat MAX``, for fewer calls). Every draw has its own cache slot, as with ``--llm-repeat N``; the draws
spent are the case's ``repeats.n`` and ``calls`` in results.json. A draw is a whole draw of the case's kind: an
agent's whole trajectory (every step at the draw's slot), an application's answer, a conversation with every turn
and the simulated user's messages. Retrieval cases draw their MAX answers at once (their prompt is built in setup).
"""

from __future__ import annotations

from typing import Any

from pytest_llmeval.results.sequential import AutoRepeat, first_draws, settled
from pytest_llmeval.run.redraw_child import first_slot


def _sequential(item: Any) -> bool:
    case = item.case
    return not case.retrieve and case.kind != "calibration" and item.stage != "robust"


def planned_draws(item: Any, repeat: int) -> int:
    """The answers an item draws in setup: ``repeat``, or for --llm-repeat auto the first few."""
    if isinstance(repeat, AutoRepeat) and _sequential(item):
        return first_draws(int(repeat), item.pass_if)
    return int(repeat)


def draw_until_settled(item: Any, state: Any) -> None:
    """Draw and grade one more answer at a time until the item's outcome is settled or it has MAX draws."""
    limit = state.settings.repeat
    if not isinstance(limit, AutoRepeat) or not _sequential(item):
        return
    start = first_slot(item.config)
    while len(item.samples) < limit:
        passed = sum(1 for s in item.samples if s["status"] == "passed")
        failed = sum(1 for s in item.samples if s["status"] == "failed")
        if settled(passed, failed, item.pass_if, int(limit)):
            return
        i = len(item.samples)
        item.completions.append(_draw(item, state, start + i))
        item.samples.append(item._grade(item.completions[-1].text, i))


def _draw(item: Any, state: Any, slot: int) -> Any:
    """One more draw of the item, every call of it at cache ``slot`` (a Completion; a conversation's transcript and
    its simulated user's calls are kept on the item, as setup keeps those of the first draws)."""
    if item.case.is_conversation:
        completion, conversation, users = item.conversation_draw(state, slot)
        item.conversations = [*item.conversations, conversation]
        item.user_calls = [*item.user_calls, *users]
        return completion
    if item.target is not None:
        return item.ask_target(state, item.target_request(slot))
    if item.case.tools:
        return item.agent_draw(state, slot)
    return state.runner.complete(item.model, item.case.messages(), item.case.params, sample=slot, key_extra=None,
                                 semantic=False)

"""What hand-written tests' fixtures record on their item: model calls and vision questions."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmeval.providers.runner import Completion, total_latency

CALLS = pytest.StashKey[list[Completion]]()  # model calls made through the `llm` fixture, per item
VISION = pytest.StashKey[list[dict[str, Any]]]()  # questions the `vision_judge` fixture asked, per item
VISION_CALLS = pytest.StashKey[list[Completion]]()  # and the vision model calls they made


def vision_summary(calls: list[Completion]) -> dict[str, Any] | None:
    """The ``vision_judge`` entry of a CaseResult: the vision model's calls in one line."""
    if not calls:
        return None
    costs = [x.cost_usd for x in calls if x.cost_usd is not None]
    return {"model": calls[0].model, "calls": len(calls), "latency_s": total_latency(calls, 4),
            "cost_usd": sum(costs) if costs else None, "cached": all(x.cached for x in calls)}

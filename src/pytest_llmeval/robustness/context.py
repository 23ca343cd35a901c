"""Run-wide values the Hypothesis side reads, set by the run when it starts.

In a module of its own, without the Hypothesis import, so that setting them costs a run nothing.
"""

from __future__ import annotations

from pathlib import Path

# The example database directory of hand-written Hypothesis tests (``llm_settings``), set when a run starts.
HYPOTHESIS_DIR: list[Path] = []

# Whether this run explores (--llm-explore): fresh examples, and new failures saved to the example database.
EXPLORE: list[bool] = []


def exploring() -> bool:
    """Whether the current run explores; a run that never said (no session yet) does not."""
    return bool(EXPLORE and EXPLORE[-1])

"""The stash key of the run state, in a module of its own so that cheap code paths (``pytest --help``,
``pytest_unconfigure``) can look it up without importing the session machinery."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_llmeval.run.session import LLMEvalSession

STATE: pytest.StashKey[LLMEvalSession] = pytest.StashKey()

# The example database directory of hand-written Hypothesis tests (``llm_settings``), set when a run starts.
HYPOTHESIS_DIR: list[Path] = []

# Whether this run explores (--llm-explore): fresh examples, and new failures saved to the example database.
EXPLORE: list[bool] = []


def exploring() -> bool:
    """Whether the current run explores; a run that never said (no session yet) does not."""
    return bool(EXPLORE and EXPLORE[-1])

"""A promise about the repository itself: the README agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_gives_the_semantic_thresholds_default_that_the_code_uses() -> None:
    from pytest_llmeval.cache.semantic import DEFAULT_THRESHOLD
    from pytest_llmeval.config.settings import HELP

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = re.findall(r"llmeval_semantic_threshold`, default ([0-9.]+)", readme)  # the prose
    documented += re.findall(r"^\| `--llm-semantic-threshold[^\n]*\| `([0-9.]+)` \|", readme, re.M)  # the table
    assert len(documented) == 2
    assert {float(v) for v in documented} == {DEFAULT_THRESHOLD}
    assert f"Default {DEFAULT_THRESHOLD:g}." in HELP["semantic_threshold"]  # what --help says

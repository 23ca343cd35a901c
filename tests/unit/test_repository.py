"""A promise about the repository itself: the README agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_give_the_semantic_thresholds_default_that_the_code_uses() -> None:
    from pytest_llmeval.cache.semantic import DEFAULT_THRESHOLD
    from pytest_llmeval.config.options import BY_NAME

    option = BY_NAME["semantic_threshold"]
    assert option.default == DEFAULT_THRESHOLD
    assert f"Default: {DEFAULT_THRESHOLD:g}." in option.help_text  # what --help says
    options_page = (ROOT / "docs/options.md").read_text(encoding="utf-8")  # generated from the option table
    documented = re.findall(r"^\| `--llm-semantic-threshold[^\n]*?\| `([0-9.]+)` \|", options_page, re.M)
    cache_page = (ROOT / "docs/cache.md").read_text(encoding="utf-8")  # written by hand
    documented += re.findall(r"llmeval_semantic_threshold`, default ([0-9.]+)", cache_page)
    assert len(documented) == 2
    assert {float(v) for v in documented} == {DEFAULT_THRESHOLD}

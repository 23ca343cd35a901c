"""Promises about the repository itself: `pytest --help` in it is fast, and the README agrees with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What made `pytest --help` in the repository take 11 s: the tests' conftest imported them when it was loaded.
HEAVY = ("torch", "lancedb", "litellm", "sentence_transformers", "transformers", "scipy", "pyarrow")


def test_pytest_help_in_the_repository_imports_no_heavy_module() -> None:
    # -X importtime lists every module the interpreter imported (on stderr), whatever the timing of this machine.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--llm-semantic-threshold" in proc.stdout  # the plugin and the tests' conftest were loaded
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


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

"""A promise about the repository itself: `pytest --help` in it is fast (no heavy module imported)."""

from __future__ import annotations

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

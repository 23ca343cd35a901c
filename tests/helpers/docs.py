"""The documentation's runnable examples, for the tests that run them as they are written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_conftest(test_file: str, page: str = "extending.md") -> str:
    """The python block right after ``<!-- tested by <test_file>...-->`` in ``docs/<page>``."""
    path = DOCS / page
    mark = f"<!-- tested by {test_file}"
    found = re.search(re.escape(mark) + r".*?-->\n```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)
    assert found, f"{path}: no python block after {mark!r}"
    return found.group(1)

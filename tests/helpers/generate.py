"""A hand-written suite and a file writer for the generate tests (tests/unit/test_generate.py,
tests/realmodel/test_generate_realmodel.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

GEO = """\
# hand-written; generate must not touch this file
suite: geography
kind: qna
system: Answer in one short sentence.
cases:
  - id: capital-fr
    question: What is the capital of France?
    expect: [{contains: Paris}]
  - id: capital-jp
    question: What is the capital of Japan?
    expect: [{contains: Tokyo}]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path

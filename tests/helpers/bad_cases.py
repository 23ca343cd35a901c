"""The good case file of tests/sessions/test_bad_cases_sessions.py, also one of the YAML shapes of
tests/unit/test_bad_cases.py."""

from __future__ import annotations

GOOD = """\
suite: good
cases:
  - id: ok
    question: Say hello.
    expect:
      - contains: hello
"""

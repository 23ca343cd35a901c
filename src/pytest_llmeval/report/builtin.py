"""The built-in reporters, registered through the public hook (the same path as a third party's reporters).

Order matters for the terminal: the summary first, then the GitHub output, then where the results went.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_llmeval.report.base import Reporter, ReporterRegistry
from pytest_llmeval.report.github import GitHubReporter
from pytest_llmeval.report.html import HtmlReporter
from pytest_llmeval.report.json import JsonReporter
from pytest_llmeval.report.terminal import TerminalReporter


def _builtin() -> list[Reporter]:
    return [TerminalReporter(), GitHubReporter(), JsonReporter(), HtmlReporter()]


@pytest.hookimpl(tryfirst=True)
def pytest_llmeval_register_reporters(register: Callable[[Reporter], None]) -> None:
    for reporter in _builtin():
        register(reporter)


def builtin_reporters() -> ReporterRegistry:
    """A registry of the built-in reporters only (for the ``llmeval`` command, outside a pytest run)."""
    registry = ReporterRegistry()
    for reporter in _builtin():
        registry.register(reporter)
    return registry

"""The built-in checks, registered through the public hook (the same path as third-party checks)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_llmeval.checks import choice, citations, code, conversation, judge, labels, metrics, text, tools, vision
from pytest_llmeval.core.checks import CheckDef, CheckRegistry

BUILTIN_CHECKS: tuple[CheckDef, ...] = (*text.CHECKS, *choice.CHECKS, *code.CHECKS, *labels.CHECKS, *metrics.CHECKS,
                                        *judge.CHECKS, *vision.CHECKS, *citations.CHECKS,
                                        *conversation.CHECKS, *tools.CHECKS)


@pytest.hookimpl(tryfirst=True)
def pytest_llmeval_register_checks(register: Callable[[CheckDef], None]) -> None:
    for check in BUILTIN_CHECKS:
        register(check)


def builtin_registry() -> CheckRegistry:
    """A registry of the built-in checks only (for tools that load case files outside a pytest run)."""
    registry = CheckRegistry()
    for check in BUILTIN_CHECKS:
        registry.register(check)
    return registry

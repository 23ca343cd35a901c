"""Registers the built-in checks through the public hook (same path as third-party checks)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_llmeval.checks import CheckDef


@pytest.hookimpl(tryfirst=True)
def pytest_llmeval_register_checks(register: Callable[[CheckDef], None]) -> None:
    from pytest_llmeval.checks import builtin_registry

    for check in builtin_registry():
        register(check)

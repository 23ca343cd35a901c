"""The built-in model providers, registered through the public hook (the same path as a third party's).

The litellm provider serves every model name no other provider claims (its prefix is empty); ``local/`` and
``local-vision/`` serve the offline models. A conftest registering one of these prefixes replaces it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_llmeval.providers import litellm_provider, local, local_vision
from pytest_llmeval.providers.base import Provider, ProviderRegistry


def builtin() -> tuple[Provider, ...]:
    """The built-in providers: litellm (the catch-all), ``local/``, ``local-vision/``."""
    return litellm_provider.provider(), local.provider(), local_vision.provider()


@pytest.hookimpl(tryfirst=True)
def pytest_llmeval_register_providers(register: Callable[[Provider], None]) -> None:
    # tryfirst: registered before any conftest's or plugin's, so theirs replace a built-in of the same prefix.
    for provider in builtin():
        register(provider)


def builtin_providers() -> ProviderRegistry:
    """A registry of the built-in providers only (for code that calls models outside a pytest run: the llmeval
    command, flywheel/generate.py)."""
    registry = ProviderRegistry()
    for provider in builtin():
        registry.register(provider)
    return registry

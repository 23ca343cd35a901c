"""The built-in target kinds, registered through the public hook (the same path as a third party's).

``model`` (the --llm model: the default target), ``python``, ``fixture`` and ``http``. A conftest registering one
of these names replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_llmeval.core.answer import TargetError, TargetRequest
from pytest_llmeval.core.targets import MODEL_TARGET, Target, TargetEnv, TargetKind, TargetParams, TargetRegistry
from pytest_llmeval.targets import http, python


class ModelParams(TargetParams):
    """The model target takes no parameters: the item's --llm model answers."""


class ModelTarget(Target):
    """The --llm model itself, through the run's model call (caches, retries, budget): what answers a suite that
    names no target. Conversations use it to send the whole history each turn."""

    name = MODEL_TARGET

    def __init__(self, complete: Callable[..., Any]) -> None:
        self.complete = complete

    def answer(self, request: TargetRequest) -> Any:
        return self.complete(request.model, list(request.messages), dict(request.params), sample=request.sample)


def _build_model(params: Any, env: TargetEnv) -> Target:
    if env.complete is None:
        raise TargetError("the model target needs the run's model call")
    return ModelTarget(env.complete)


MODEL_KIND = TargetKind(MODEL_TARGET, ModelParams, _build_model, describe=lambda p: MODEL_TARGET,
                        doc="the --llm model (the default)")


def builtin() -> tuple[TargetKind, ...]:
    return MODEL_KIND, python.PYTHON_KIND, python.FIXTURE_KIND, http.KIND


@pytest.hookimpl(tryfirst=True)
def pytest_llmeval_register_targets(register: Callable[[TargetKind], None]) -> None:
    # tryfirst: registered before any conftest's or plugin's, so theirs replace a built-in of the same name.
    for kind in builtin():
        register(kind)


def builtin_targets() -> TargetRegistry:
    """A registry of the built-in kinds only (outside a pytest run)."""
    registry = TargetRegistry()
    for kind in builtin():
        registry.register(kind)
    return registry

"""The one error hierarchy: every error class sits in its family and keeps the builtin base its callers catch."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import pytest_llmeval
from pytest_llmeval.core.errors import CaseDataError, CommandError, InfrastructureError, LLMEvalError, UsageError

FAMILIES = [
    ("pytest_llmeval.core.errors", "CommandError", UsageError, None),
    ("pytest_llmeval.results.gate", "GateError", UsageError, ValueError),
    ("pytest_llmeval.config.parsers", "BadItem", UsageError, ValueError),
    ("pytest_llmeval.flywheel.generate", "GenerateError", UsageError, None),
    ("pytest_llmeval.flywheel.review_file", "ReviewError", CommandError, None),
    ("pytest_llmeval.cases.schema", "CaseFileError", CaseDataError, None),
    ("pytest_llmeval.cases.schema", "InvalidCase", CaseDataError, None),
    ("pytest_llmeval.cases.yaml_lines", "DuplicateKeyError", CaseDataError, Exception),
    ("pytest_llmeval.cases.writer", "CaseFileEditError", CaseDataError, ValueError),
    ("pytest_llmeval.providers.runner", "ModelCallError", InfrastructureError, None),
    ("pytest_llmeval.providers.runner", "MalformedResponse", InfrastructureError, None),
    ("pytest_llmeval.providers.resilience", "EndpointDown", InfrastructureError, None),
    ("pytest_llmeval.providers.resilience", "BudgetExhausted", InfrastructureError, None),
    ("pytest_llmeval.providers.local", "LocalModelError", InfrastructureError, None),
    ("pytest_llmeval.providers.local_vision", "LocalVisionError", InfrastructureError, None),
    ("pytest_llmeval.run.items", "ModelUnusable", InfrastructureError, None),
    ("pytest_llmeval.sandbox.isolation", "SandboxUnavailable", InfrastructureError, None),
    ("pytest_llmeval.cache.embeddings", "EmbeddingModelError", InfrastructureError, RuntimeError),
    ("pytest_llmeval.cache.exact", "LLMEvalCacheError", InfrastructureError, RuntimeError),
    ("pytest_llmeval.rag.index", "RagIndexError", InfrastructureError, None),
    ("pytest_llmeval.flywheel.humaneval", "HumanEvalMissing", InfrastructureError, None),
]


@pytest.mark.parametrize(("module", "name", "family", "builtin"), FAMILIES, ids=[f[1] for f in FAMILIES])
def test_each_error_is_in_its_family(module: str, name: str, family: type, builtin: type | None) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, family) and issubclass(cls, LLMEvalError)
    others = {UsageError, CaseDataError, InfrastructureError} - {f for f in (UsageError, CaseDataError,
                                                                             InfrastructureError) if issubclass(family, f)}
    assert not any(issubclass(cls, other) for other in others)
    if builtin is not None:
        assert issubclass(cls, builtin)  # `except ValueError` (or RuntimeError) callers still catch it


def test_the_two_invalid_case_errors_are_one() -> None:
    from pytest_llmeval.cases.schema import CaseError, InvalidCase
    from pytest_llmeval.flywheel import review_file
    from pytest_llmeval.run import items

    assert review_file.InvalidCase is items.InvalidCase is InvalidCase
    exc = InvalidCase([CaseError(Path("a.yaml"), 3, "cases[0].expect", "unknown check"), "the case did not load"])
    assert str(exc) == "unknown check; the case did not load"
    assert exc.problems == ["unknown check", "the case did not load"]
    assert [e.line for e in exc.errors] == [3]


def test_command_error_lives_below_the_cli() -> None:
    assert importlib.import_module("pytest_llmeval.cli.main").CommandError is CommandError


def test_base_classes_are_public() -> None:
    for name in ("LLMEvalError", "UsageError", "CaseDataError", "InfrastructureError"):
        assert name in pytest_llmeval.__all__
        assert getattr(pytest_llmeval, name) is getattr(importlib.import_module("pytest_llmeval.core.errors"), name)

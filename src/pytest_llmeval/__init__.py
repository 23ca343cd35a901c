"""pytest-llmeval: LLM regression testing as a pytest plugin.

Public names are imported lazily so that merely loading the plugin (``pytest --help``) stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CheckDef": "pytest_llmeval.core.checks",
    "CheckOutcome": "pytest_llmeval.core.checks",
    "CheckParams": "pytest_llmeval.core.checks",
    "GradeContext": "pytest_llmeval.core.checks",
    "CaseSpec": "pytest_llmeval.cases.schema",
    "Completion": "pytest_llmeval.providers.runner",
    "ModelCallError": "pytest_llmeval.providers.runner",
    "Provider": "pytest_llmeval.providers.base",
    "Reply": "pytest_llmeval.providers.base",
    "Request": "pytest_llmeval.providers.base",
    "CaseResult": "pytest_llmeval.results.aggregate",
    "LLM": "pytest_llmeval.plugin",
    "LLMEvalError": "pytest_llmeval.core.errors",
    "UsageError": "pytest_llmeval.core.errors",
    "CaseDataError": "pytest_llmeval.core.errors",
    "Answer": "pytest_llmeval.core.answer",
    "Reference": "pytest_llmeval.core.answer",
    "TargetError": "pytest_llmeval.core.answer",
    "TargetRequest": "pytest_llmeval.core.answer",
    "Usage": "pytest_llmeval.core.answer",
    "Target": "pytest_llmeval.core.targets",
    "TargetEnv": "pytest_llmeval.core.targets",
    "TargetKind": "pytest_llmeval.core.targets",
    "TargetParams": "pytest_llmeval.core.targets",
    "InfrastructureError": "pytest_llmeval.core.errors",
    "Step": "pytest_llmeval.core.tools",
    "ToolCall": "pytest_llmeval.core.tools",
    "Trajectory": "pytest_llmeval.core.tools",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)

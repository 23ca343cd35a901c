"""The one error hierarchy: every exception the plugin raises on purpose derives from :class:`LLMEvalError`.

Three families say whose move it is:

- :class:`UsageError`: the command line, an option or a spec file asks for something that cannot be done (a bad
  gate rule, a missing docs folder, ``llmeval`` input). The user changes how the plugin is called.
- :class:`CaseDataError`: a case file or a case is invalid (a schema error, a YAML duplicate key, a case that
  would not load). The user fixes the case file.
- :class:`InfrastructureError`: the machinery failed, not the model: the model endpoint or provider, the budget,
  the sandbox, the embedding model, the RAG index, the response cache. A case that meets one has the outcome
  ``error`` (never ``failed``) and its report shows the message instead of a traceback.

Each concrete class lives next to the code that raises it and keeps the builtin base it always had (a
``ValueError`` or ``RuntimeError`` subclass stays one), so ``except ValueError`` callers keep working. Code that
needs to know the family asks ``isinstance(exc, InfrastructureError)``, never the class name.
"""

from __future__ import annotations

__all__ = ["CaseDataError", "CommandError", "InfrastructureError", "LLMEvalError", "UsageError"]


class LLMEvalError(Exception):
    """Base of every error pytest-llmeval raises on purpose."""


class UsageError(LLMEvalError):
    """A bad option, command-line input or spec: the user changes how the plugin is called."""


class CaseDataError(LLMEvalError):
    """A case file or a case is invalid: the user fixes the case file."""


class InfrastructureError(LLMEvalError):
    """The machinery failed (endpoint, budget, sandbox, embedding model, index, cache), not the model's answer."""


class CommandError(UsageError):
    """A user-facing failure of the ``llmeval`` command: printed as ``llmeval: error: ...`` with exit status 2."""

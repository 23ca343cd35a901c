"""The ``llmeval`` command (entry point ``pytest_llmeval.cli:main``)."""

from __future__ import annotations

from pytest_llmeval.cli.main import main

__all__ = ["main"]

"""Hypothesis settings for tests that call a model: ``llm_settings`` (exported by ``pytest_llmeval.strategies``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import seed as seeded
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

F = TypeVar("F", bound=Callable[..., Any])

class LLMEvalDatabase(ExampleDatabase):
    """A directory database whose location is decided at first use (the rootdir is known only once pytest
    runs, after test modules, and their ``@llm_settings``, are imported)."""

    def __init__(self) -> None:
        super().__init__()
        self._db: DirectoryBasedExampleDatabase | None = None

    def _get(self) -> DirectoryBasedExampleDatabase:
        if self._db is None:
            from pytest_llmeval._state import HYPOTHESIS_DIR

            # Set by the plugin when a run starts (next to the results file); else relative to the working dir.
            path = HYPOTHESIS_DIR[-1] if HYPOTHESIS_DIR else Path(".llmeval/hypothesis/tests")
            self._db = DirectoryBasedExampleDatabase(str(path))
        return self._db

    def save(self, key: bytes, value: bytes) -> None:
        self._get().save(key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self._get().fetch(key)

    def delete(self, key: bytes, value: bytes) -> None:
        self._get().delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self._get().move(src, dest, value)

    def __repr__(self) -> str:
        return "LLMEvalDatabase(.llmeval/hypothesis/tests)"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def llm_settings(*, max_examples: int = 10, seed: int | None = None, **overrides: Any) -> Callable[[F], F]:
    """Decorate a ``@given`` test that calls a model (put it above ``@given``)::

        @llm_settings(max_examples=10)
        @given(prompt=perturbed("What is the capital of France?"))
        def test_capital(llm, prompt): ...

    Settings for paid calls: few examples, no deadline (latency is not a bug), the example database under
    ``.llmeval/hypothesis/tests`` (a failing prompt is replayed first next time), and the health check on
    function-scoped fixtures suppressed (the ``llm`` fixture holds no per-example state). In CI (``CI`` set) the
    search is seeded (``seed=0`` unless given), so every CI run draws the same examples. Hypothesis' own
    ``@seed`` and ``derandomize=True`` switch the database off; here the seed is applied first and the settings,
    with the database, after it, so both hold. ``overrides`` are any ``hypothesis.settings`` keywords.
    """
    if seed is None and _in_ci():
        seed = 0
    suppress = list(overrides.pop("suppress_health_check", ())) + [HealthCheck.function_scoped_fixture]
    chosen = settings(max_examples=max_examples, deadline=overrides.pop("deadline", None),
                      database=overrides.pop("database", LLMEvalDatabase()), derandomize=False,
                      suppress_health_check=suppress, **overrides)

    def decorate(test: F) -> F:
        if seed is not None:
            test = seeded(seed)(test)
        return chosen(test)  # type: ignore[no-any-return]

    return decorate

"""Hypothesis settings for tests that call a model: ``llm_settings`` (exported by ``pytest_llmeval.strategies``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as seeded
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from pytest_llmeval.robustness.context import exploring

F = TypeVar("F", bound=Callable[..., Any])

PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)  # llm_settings' phases at most: no explain


class LLMEvalDatabase(ExampleDatabase):
    """The example database of ``llm_settings`` tests: a directory whose location is decided at first use (the
    rootdir is known only once pytest runs, after test modules, and their ``@llm_settings``, are imported).

    Read only unless the run explores (``--llm-explore``): a run replays the committed examples and writes
    nothing, so whether it came first never changes what the next one tries."""

    def __init__(self) -> None:
        super().__init__()
        self._db: DirectoryBasedExampleDatabase | None = None

    def _get(self) -> DirectoryBasedExampleDatabase:
        if self._db is None:
            from pytest_llmeval.robustness.context import HYPOTHESIS_DIR

            # Set by the plugin when a run starts (next to the results file); else relative to the working dir.
            path = HYPOTHESIS_DIR[-1] if HYPOTHESIS_DIR else Path(".llmeval/hypothesis/tests")
            self._db = DirectoryBasedExampleDatabase(str(path))
        return self._db

    def save(self, key: bytes, value: bytes) -> None:
        if exploring():
            self._get().save(key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self._get().fetch(key)

    def delete(self, key: bytes, value: bytes) -> None:
        # A committed example that passes now stays: a fixed regression must stay fixed.
        if exploring():
            self._get().delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        if exploring():
            self._get().move(src, dest, value)

    def __repr__(self) -> str:
        return "LLMEvalDatabase(.llmeval/hypothesis/tests)"


def _phases() -> tuple[Phase, ...]:
    """The loaded profile's phases (``--hypothesis-profile``: a profile without shrinking, say) without explain."""
    loaded = settings.default
    return tuple(p for p in (loaded.phases if loaded is not None else PHASES) if p in PHASES)


def llm_settings(*, max_examples: int = 10, seed: int | None = None, **overrides: Any) -> Callable[[F], F]:
    """Decorate a ``@given`` test that calls a model (put it above ``@given``)::

        @llm_settings(max_examples=10)
        @given(prompt=perturbed("What is the capital of France?"))
        def test_capital(llm, prompt): ...

    Settings for paid calls: few examples, no deadline (latency is not a bug), the example database under
    ``.llmeval/hypothesis/tests``, one failure reported (the first, shrunk) and no explain phase (both would
    cost more calls), and the health check on function-scoped fixtures suppressed (the ``llm`` fixture holds no
    per-example state).

    The verdict reproduces: the examples are drawn with ``seed`` (0 unless given) and the committed examples in
    the database are replayed first, but nothing is written to it, so the same answers give the same verdict on
    every run and machine (and every rerun is answered from the cache). With ``--llm-explore`` the run draws
    fresh examples (Hypothesis prints the seed of a failure) and saves a failing one in the database, for you
    to commit. ``overrides`` are any ``hypothesis.settings`` keywords; a ``database=`` of your own is used as
    it is.
    """
    suppress = list(overrides.pop("suppress_health_check", ())) + [HealthCheck.function_scoped_fixture]
    # derandomize=False and a database given explicitly: Hypothesis' "ci" profile, loaded by itself on CI
    # machines, would otherwise derandomize and drop the database there, and nowhere else.
    # report_multiple_bugs=False: after a first failure Hypothesis otherwise goes on drawing new examples until
    # ten seconds have passed, so a slow first run (model calls) and its fast rerun (cache hits) would try
    # different prompts. No explain phase: it varies each part of a failing example up to hundreds of times,
    # each a model call.
    chosen = settings(max_examples=max_examples, deadline=overrides.pop("deadline", None),
                      database=overrides.pop("database", LLMEvalDatabase()), derandomize=False,
                      report_multiple_bugs=overrides.pop("report_multiple_bugs", False),
                      phases=overrides.pop("phases", _phases()), suppress_health_check=suppress, **overrides)

    def decorate(test: F) -> F:
        # Decided when the test module is imported, which pytest does after the run's options are known.
        if not exploring():
            test = seeded(0 if seed is None else seed)(test)
        return chosen(test)  # type: ignore[no-any-return]

    return decorate

"""Extension points of pytest-llmeval (added through ``pytest_addhooks``).

Built-in checks register through exactly these hooks, the way simonw/llm's built-in models do.
Implement them in a ``conftest.py`` or a plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_llmeval.core.checks import CheckDef
    from pytest_llmeval.core.targets import TargetKind
    from pytest_llmeval.providers.base import Provider
    from pytest_llmeval.report.base import Reporter


@pytest.hookspec
def pytest_llmeval_register_checks(register: Callable[[CheckDef], None]) -> None:
    """Register checks usable in case files' ``expect`` lists.

    Call ``register(CheckDef(name, ParamsModel, grade_fn, shorthand=...))`` once per check.
    ``grade_fn(answer, case, params, ctx) -> CheckOutcome``, ``ctx`` being the draw's
    :class:`~pytest_llmeval.core.checks.GradeContext` (a three-parameter ``grade_fn`` is called without it); a
    check's ``aggregate`` and ``summary_lines`` add to the suite rows and the summary. A later registration of a
    name replaces an earlier one, so a conftest can override a built-in check.
    """


@pytest.hookspec
def pytest_llmeval_register_reporters(register: Callable[[Reporter], None]) -> None:
    """Register reporters: what a run's results become besides the pass/fail of its tests.

    Call ``register(reporter)`` with a :class:`pytest_llmeval.report.base.Reporter` subclass instance. On the
    controller (or a plain run), each reporter's ``finish(report)`` is called once the results are final
    (aggregated, gated, the exit status decided: write files there) and ``terminal_summary(report, tr)`` when pytest
    writes its summary. The built-in reporters (``terminal``, ``github``, ``json`` -- results.json -- and ``html``,
    for ``llmeval report``) register through this hook; a reporter registered under the name of an earlier one
    replaces it.
    """


@pytest.hookspec
def pytest_llmeval_register_providers(register: Callable[[Provider], None]) -> None:
    """Register model providers: what answers a model name given to ``--llm``, ``--llm-judge`` or ``--llm-vision``.

    Call ``register(Provider(prefix, complete, ...))`` once per provider (``from pytest_llmeval import Provider,
    Reply, Request``). ``complete(request) -> Reply | str`` answers one :class:`~pytest_llmeval.providers.base.Request`
    (the full model name, the rendered chat messages, the case's params); the run puts the response cache, retries,
    rate limits, the budget and the circuit breaker around it. A model name goes to the provider with the longest
    ``prefix`` it starts with. The built-in providers -- litellm (prefix ``""``: every other name), ``local/`` and
    ``local-vision/`` -- register through this hook; a later registration of a prefix replaces an earlier one, so a
    conftest can override a built-in provider. Called once per process, in ``pytest_configure``.
    """


@pytest.hookspec
def pytest_llmeval_register_targets(register: Callable[[TargetKind], None]) -> None:
    """Register target kinds: what a suite's ``target:`` (or ``--llm-target``) may name to answer its cases.

    Call ``register(TargetKind(name, ParamsModel, build, shorthand=..., describe=...))`` once per kind (``from
    pytest_llmeval import TargetKind, Target``). ``build(params, env) -> Target`` makes the target once per process
    (per item for a kind built ``per_item``); ``Target.answer(request)`` gets a
    :class:`~pytest_llmeval.core.answer.TargetRequest` and returns a str or an
    :class:`~pytest_llmeval.core.answer.Answer`. The run puts the cache (under the target's declared identity), the
    concurrency limits, the attribution of the application's own litellm calls and the error handling around it.
    The built-in kinds -- ``model`` (the --llm model: the default), ``python``, ``fixture`` and ``http`` -- register
    through this hook; a later registration of a name replaces an earlier one. Called once per process.
    """

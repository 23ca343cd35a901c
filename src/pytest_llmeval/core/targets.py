"""Target kinds: what ``pytest_llmeval_register_targets`` registers, and a suite's validated ``target:``.

A suite names what answers its cases with ``target:``, a mapping with one *kind* key and common keys::

    target: {python: "bot:answer", version: "2"}           # a callable in the rootdir
    target: {fixture: docs_bot, concurrency: 1}             # a fixture returning the callable
    target: {http: {url: "http://127.0.0.1:{port}/ask", answer: answer, serve: {command: "python app.py {port}"}}}
    target: model                                           # the --llm model (the default)

The kinds ``model``, ``python``, ``fixture`` and ``http`` register through the hook like a third party's
(targets/builtin.py). Common keys, for every kind but ``model``: ``version`` / ``hash`` (the identity its answers
are cached under: without one an application's answers are never cached), ``concurrency`` (calls in flight at
once for this target: 1 for an application that is not thread-safe) and ``name`` (how reports show it).

This module only describes and validates; the targets themselves (run in a pytest process) live in
:mod:`pytest_llmeval.targets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pytest_llmeval.core.answer import TargetRequest
from pytest_llmeval.core.registry import Registry

__all__ = ["COMMON_KEYS", "MODEL_TARGET", "Target", "TargetEnv", "TargetKind", "TargetRegistry", "TargetSpec"]

MODEL_TARGET = "model"  # the built-in kind: the --llm model answers
COMMON_KEYS = ("version", "hash", "concurrency", "name")


class TargetParams(BaseModel):
    """Base class of a target kind's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Target:
    """One target, ready in this process: ``answer(request)`` returns a str or an Answer (or raises).

    - ``name``: how messages and reports name it (``python:bot:answer``);
    - ``threadsafe``: may be called from the prefetch pool's threads (``--llm-concurrency``); the target's
      ``concurrency`` key bounds the calls in flight at once;
    - ``start()``: get ready before the first call (an HTTP service started by the plugin); raise TargetError
      with what went wrong (the service's log);
    - ``close()``: at the end of the session (stop the service);
    - ``measures_usage``: its model calls happen in this process, where the plugin measures them (False for a
      service in another process: its usage is known only when its reply reports it).
    """

    name: str = "target"
    threadsafe: bool = True
    measures_usage: bool = True  # its model calls happen in this process (False: a service; usage only if reported)

    def answer(self, request: TargetRequest) -> Any:  # pragma: no cover - every kind overrides it
        raise NotImplementedError

    def start(self) -> None:
        """Get ready (idempotent)."""

    def close(self) -> None:
        """Release what ``start`` took (idempotent)."""


@dataclass(frozen=True)
class TargetEnv:
    """What a target kind's ``build`` gets besides its parameters.

    ``rootdir``: imports and relative paths start here; ``suite_dir``: the suite file's folder; ``state_dir``:
    ``.llmeval/`` (service logs go to ``state_dir / "serve"``); ``worker``: the xdist worker id (``gw0``) or
    ``"main"``; ``fixture(name)``: the value of a pytest fixture for the item being set up (targets of kinds
    built ``per_item`` only; None elsewhere); ``has_fixture(name)``: whether a fixture of that name is visible to
    the suite (at collection, for ``check``); ``complete(model, messages, params, sample, key_extra)``: the run's
    model call (the ``model`` kind), through its caches, retries and budget.
    """

    rootdir: Path
    suite_dir: Path
    state_dir: Path
    worker: str = "main"
    fixture: Callable[[str], Any] | None = None
    has_fixture: Callable[[str], bool] | None = None
    complete: Callable[..., Any] | None = None


@dataclass(frozen=True)
class TargetKind:
    """A registered target kind.

    - ``name``: the key in ``target:`` (``python``);
    - ``params``: the pydantic model of its value (a :class:`TargetParams` subclass);
    - ``shorthand``: the parameter a scalar value fills (``{python: "bot:answer"}`` -> ``callable``);
    - ``build(params, env) -> Target``: the target, made once per process and spec (or per item, ``per_item``);
    - ``describe(params) -> str``: its name in reports (``python:bot:answer``);
    - ``check(params, env) -> list[(field, message)]``: problems found when the suite loads (an unimportable
      callable), reported as the case file's errors with their line;
    - ``cache_identity(params) -> dict``: parts of the cache key the kind adds itself (an HTTP target's URL);
    - ``per_item``: built in each item's setup (a fixture target: its value belongs to the item's fixtures).
    """

    name: str
    params: type[BaseModel]
    build: Callable[[Any, TargetEnv], Target]
    shorthand: str | None = None
    doc: str = ""
    describe: Callable[[Any], str] | None = None
    check: Callable[[Any, TargetEnv], list[tuple[str, str]]] | None = None
    per_item: bool = False

    def shown(self, params: Any) -> str:
        return self.describe(params) if self.describe is not None else self.name


class TargetRegistry(Registry[TargetKind]):
    """The target kinds known to this run, filled by ``pytest_llmeval_register_targets``."""

    def register(self, kind: TargetKind) -> None:
        if not isinstance(kind, TargetKind):
            raise TypeError(f"register() takes a pytest_llmeval.TargetKind, got {type(kind).__name__}")
        super().register(kind)


@dataclass(frozen=True)
class TargetSpec:
    """A suite's ``target:``, validated: the kind, its parameters and the common keys."""

    kind: str
    params: Any  # the kind's params model instance (None for the model target)
    definition: TargetKind | None = field(default=None, compare=False, repr=False)
    version: str | None = None
    hash: tuple[str, ...] = ()
    concurrency: int | None = None
    label: str | None = None  # the ``name`` key
    line: int | None = None
    path: Path | None = None  # the suite file

    @property
    def is_model(self) -> bool:
        return self.kind == MODEL_TARGET

    @property
    def name(self) -> str:
        """How reports name it: the ``name`` key, else the kind's description (``python:bot:answer``)."""
        if self.label:
            return self.label
        if self.definition is None:
            return self.kind
        return self.definition.shown(self.params)

    def key(self) -> str:
        """Identifies the target within a process (one built target per key)."""
        import json

        params = self.params.model_dump(mode="json") if isinstance(self.params, BaseModel) else self.params
        return json.dumps([self.kind, params, str(self.path.parent) if self.path else None], sort_keys=True,
                          default=str)

    def where(self, root: Path | None = None) -> str:
        """``cases/bot.yaml:3`` (the line of ``target:``), for messages."""
        if self.path is None:
            return "--llm-target"
        shown: Path = self.path
        if root is not None:
            try:
                shown = self.path.relative_to(root)
            except ValueError:
                pass
        return f"{shown}:{self.line}" if self.line else str(shown)


def split_string(value: str) -> Mapping[str, Any]:
    """The string form of a target (``--llm-target``, or ``target: "python:bot:answer"`` in a suite):
    ``model``, ``python:<module:callable>``, ``fixture:<name>``, ``http:<url>``, ``<kind>:<value>``."""
    value = value.strip()
    if value == MODEL_TARGET:
        return {MODEL_TARGET: True}
    kind, sep, rest = value.partition(":")
    if not sep or not kind or not rest:
        raise ValueError(f"expected model, python:<module:function>, fixture:<name>, http:<url> or "
                         f"<kind>:<value>, got {value!r}")
    return {kind: rest}

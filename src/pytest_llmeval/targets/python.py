"""Python targets: the team's own callable answers the cases, in this process.

- ``target: {python: "bot:answer"}``: ``module:attribute`` importable from the rootdir (or the suite file's
  folder), or ``path/to/file.py:attribute``; the attribute may be dotted (``bot:BOT.answer``). Built once per
  process (xdist worker).
- ``target: {fixture: docs_bot}``: a pytest fixture (in a conftest) returns the callable, so the application is
  built with the user's own fixtures (a database, settings, an app factory) and torn down with them. Built in each
  item's setup: the fixture's scope decides how often the application itself is made.

The callable takes one :class:`~pytest_llmeval.core.answer.TargetRequest` and returns a str or an
:class:`~pytest_llmeval.core.answer.Answer`. An ``async def`` callable runs on one event loop per target, in a
thread of its own, for the whole session: clients bound to a loop (an ``httpx.AsyncClient`` made once) keep
working, and concurrent cases are concurrent coroutines on it. The caller's context variables travel with each
call (``call_soon_threadsafe`` copies them), so the model calls the application makes are attributed to the case
that caused them (targets/usage.py).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from pytest_llmeval.core.answer import TargetError, TargetRequest
from pytest_llmeval.core.targets import Target, TargetEnv, TargetKind, TargetParams

__all__ = ["FIXTURE_KIND", "PYTHON_KIND", "CallableTarget", "load_callable"]


class PythonParams(TargetParams):
    callable: str = Field(min_length=3)  # module:attribute or path/to/file.py:attribute


class FixtureParams(TargetParams):
    fixture: str = Field(min_length=1)


def _import(module: str, paths: list[Path]) -> Any:
    """Import ``module`` (a dotted name, or a ``.py`` file path) with ``paths`` first on sys.path."""
    if module.endswith(".py"):
        file = next((p / module for p in paths if (p / module).is_file()), None)
        if file is None:
            raise ImportError(f"no file {module} (relative to {', '.join(map(str, paths))})")
        name = "llmeval_target_" + "".join(ch if ch.isalnum() else "_" for ch in str(file.resolve()))
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {file}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            raise
        return loaded
    for path in reversed(paths):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    importlib.invalidate_caches()
    return importlib.import_module(module)


def load_callable(ref: str, paths: list[Path]) -> Callable[..., Any]:
    """The callable ``module:attribute`` names (ImportError, AttributeError or TypeError with a clear message)."""
    module_name, sep, attribute = ref.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected module:function (e.g. bot:answer), got {ref!r}")
    module = _import(module_name, paths)
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise AttributeError(f"{module_name} has no attribute {attribute!r}") from None
    if not callable(value):
        raise TypeError(f"{ref} is a {type(value).__name__}, not a callable")
    return value  # type: ignore[no-any-return]


class _Loop:
    """One event loop in a daemon thread, for a target's coroutines."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"llmeval-target-{name}", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        # run_coroutine_threadsafe schedules through call_soon_threadsafe, whose handle copies *this* thread's
        # context: the task runs with the caller's context variables (the usage tracker of the case).
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class CallableTarget(Target):
    """A callable taking a TargetRequest; sync or async."""

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.name = name
        self._loop: _Loop | None = None
        self._lock = threading.Lock()

    def answer(self, request: TargetRequest) -> Any:
        value = self.function(request)
        if inspect.isawaitable(value):
            with self._lock:
                if self._loop is None:
                    self._loop = _Loop(self.name)
            value = self._loop.run(_awaited(value))
        return value

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _paths(env: TargetEnv) -> list[Path]:
    return list(dict.fromkeys([env.rootdir, env.suite_dir]))


def _build_python(params: PythonParams, env: TargetEnv) -> Target:
    name = f"python:{params.callable}"
    try:
        function = load_callable(params.callable, _paths(env))
    except Exception as exc:  # the user's module may raise anything while importing
        raise TargetError(f"target {name} cannot be loaded: {type(exc).__name__}: {exc}") from None
    return CallableTarget(function, name)


def _check_python(params: PythonParams, env: TargetEnv) -> list[tuple[str, str]]:
    """Import the callable when the suite loads: an unimportable target is the suite file's error, with its line."""
    try:
        load_callable(params.callable, _paths(env))
    except Exception as exc:
        where = " (searched from the rootdir and the suite's folder)" if isinstance(exc, ImportError) else ""
        return [("python", f"cannot load {params.callable!r}: {type(exc).__name__}: {exc}{where}")]
    return []


def _build_fixture(params: FixtureParams, env: TargetEnv) -> Target:
    name = f"fixture:{params.fixture}"
    if env.fixture is None:
        raise TargetError(f"target {name}: fixtures are only available inside a pytest run")
    value = env.fixture(params.fixture)
    if not callable(value):
        raise TargetError(f"target {name}: the fixture returned a {type(value).__name__}, not a callable taking a "
                          "TargetRequest")
    return CallableTarget(value, name)


def _check_fixture(params: FixtureParams, env: TargetEnv) -> list[tuple[str, str]]:
    if env.has_fixture is not None and not env.has_fixture(params.fixture):
        return [("fixture", f"no fixture named {params.fixture!r} is visible to this suite (define it in a "
                            "conftest.py at or above the suite's folder)")]
    return []


PYTHON_KIND = TargetKind(
    "python", PythonParams, _build_python, shorthand="callable", describe=lambda p: f"python:{p.callable}",
    check=_check_python,
    doc="a Python callable, module:function importable from the rootdir (or path/file.py:function); sync or async")
FIXTURE_KIND = TargetKind(
    "fixture", FixtureParams, _build_fixture, shorthand="fixture", describe=lambda p: f"fixture:{p.fixture}",
    check=_check_fixture, per_item=True,
    doc="a pytest fixture that returns the callable (built with your own fixtures, torn down with them)")

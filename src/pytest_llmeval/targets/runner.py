"""Calling targets: what the run puts around every application call, whatever its kind.

- **Built once.** A target is built once per process and spec (per item for ``per_item`` kinds: fixtures), its
  ``start()`` called before the first call (an HTTP service started by the plugin), ``close()`` at the end.
- **Cached only under an identity the user controls.** An application changes without telling the plugin, so its
  answers are cached only when its ``target:`` declares a ``version`` or a ``hash`` of named files, folders or
  packages (their contents are hashed at the start of the run: edit one and every answer is asked again).
  Without either, every run calls the application: a stale answer is worse than a slow run. The key also holds
  the request (prompt, messages, case fields, ``--llm`` model, params, turn, draw) and the target's parameters.
- **Concurrency.** Calls go through the prefetch pool like model calls (``--llm-concurrency``); a target's
  ``concurrency`` key bounds its own calls in flight (1: an application that is not thread-safe).
- **Errors are the application's, not the model's.** Whatever the application raises becomes a
  :class:`~pytest_llmeval.core.answer.TargetError` carrying its traceback: the case's outcome is ``error``. A
  wrong type returned is a TargetError naming the target.
- **Its own model calls are measured.** The litellm calls the application makes during the call are attributed
  to the case (targets/usage.py): count, tokens, cost, latency.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_llmeval.core.answer import Answer, TargetError, TargetRequest, Usage, to_answer
from pytest_llmeval.core.targets import Target, TargetEnv, TargetSpec
from pytest_llmeval.providers.runner import Completion, redact

__all__ = ["TargetRunner", "app_traceback", "identity_of"]

_SKIP_DIRS = {"__pycache__", ".git", ".llmeval", ".venv", "node_modules", ".mypy_cache", ".pytest_cache",
              ".ruff_cache"}


def app_traceback(exc: BaseException) -> str:
    """The application's traceback, without the plugin's own frames and without 3.11's ``^^^`` carets (drawing
    them parses source, which must not happen in a pool thread: core/astguard.py)."""
    lines = ["Traceback (most recent call last):"]
    for frame in traceback.extract_tb(exc.__traceback__):
        if f"{os.sep}pytest_llmeval{os.sep}targets{os.sep}" in frame.filename:
            continue
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    lines += [line.rstrip("\n") for line in traceback.format_exception_only(type(exc), exc)]
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        lines.append(f"  (caused by {type(cause).__name__}: {cause})")
    return "\n".join(lines)


def _hash_path(digest: Any, path: Path) -> None:
    if path.is_file():
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
        return
    for sub in sorted(path.rglob("*")):
        if any(part in _SKIP_DIRS for part in sub.relative_to(path).parts) or sub.suffix in (".pyc", ".pyo"):
            continue
        if sub.is_file():
            digest.update(str(sub.relative_to(path)).encode())
            digest.update(sub.read_bytes())


def _package_path(name: str) -> Path | None:
    """The file or folder of an importable module or package (None: not importable)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin) if spec.origin and spec.origin not in ("built-in", "frozen") else None


def identity_of(spec: TargetSpec, roots: list[Path]) -> str | None:
    """The identity a target's answers are cached under: its ``version`` and the hash of the contents of what
    ``hash`` names (a file or folder, relative to the rootdir or the suite's folder, or an importable package);
    None when it declares neither (never cached). ValueError naming an entry that is none of these."""
    if spec.version is None and not spec.hash:
        return None
    digest = hashlib.sha256()
    digest.update(f"version={spec.version}".encode())
    for entry in spec.hash:
        found = next((root / entry for root in roots if (root / entry).exists()), None)
        if found is None:
            found = _package_path(entry)
        if found is None:
            raise ValueError(f"{entry!r} is neither a file or folder (relative to the rootdir or the suite's "
                             "folder) nor an importable package")
        digest.update(f"entry={entry}".encode())
        _hash_path(digest, found)
    return digest.hexdigest()[:24]


def _call_key(spec: TargetSpec) -> str:
    """Tells apart specs of one built target (same kind, parameters, folder) that call it differently: two suites
    naming one callable, one with a ``version`` and one without, must not share an identity, a name or a limit."""
    return spec.key() + repr((spec.version, spec.hash, spec.label, spec.concurrency))


class TargetRunner:
    """This process's targets: built once, started on first use, called with the cache, the limits, the usage
    tracking and the error handling around them, closed at the end of the session."""

    def __init__(self, cache: Any, cache_mode: str) -> None:
        self.cache = cache  # the run's ResponseCache (the same store as model answers), or None
        self.cache_mode = cache_mode
        self._targets: dict[str, Target] = {}
        self._failed: dict[str, TargetError] = {}
        self._identities: dict[str, str | None] = {}
        self._limits: dict[str, threading.Semaphore] = {}
        self._specs: dict[str, tuple[TargetSpec, TargetEnv]] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- targets

    def remember(self, spec: TargetSpec, env: TargetEnv) -> str:
        """Note ``spec`` (and the env to build it in) under its key, for calls planned ahead by the prefetcher."""
        key = _call_key(spec)
        with self._lock:
            self._specs.setdefault(key, (spec, env))
        return key

    def target(self, spec: TargetSpec, env: TargetEnv) -> Target:
        """The built and started target of ``spec`` (a per-item kind: built now, with the item's fixtures)."""
        assert spec.definition is not None
        if spec.definition.per_item:
            target = self._build(spec, env)
            return target
        key = spec.key()
        with self._lock:
            if key in self._failed:
                raise self._failed[key]
            found = self._targets.get(key)
            if found is None:
                built: Target | None = None
                try:
                    built = self._build(spec, env)
                    built.start()
                    found = self._targets[key] = built
                except Exception as exc:  # remembered: the suite's other cases fail at once, the same way
                    if built is not None:
                        built.close()
                    message, details = (exc.message, exc.details) if isinstance(exc, TargetError) else \
                        (f"target {spec.name} cannot start: {type(exc).__name__}: {exc}", app_traceback(exc))
                    where = f"[target: at {spec.where(env.rootdir)}]"
                    first_line = message.splitlines()[0] if message else spec.name
                    # The suite's later cases say it in one line: a service's log is shown once, with the first.
                    self._failed[key] = TargetError(f"{first_line} {where} (the same failure as the suite's first "
                                                    "case, shown in full there)")
                    raise TargetError(f"{message} {where}", details) from None
        return found

    def _build(self, spec: TargetSpec, env: TargetEnv) -> Target:
        assert spec.definition is not None
        try:
            target = spec.definition.build(spec.params, env)
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"target {spec.name} cannot be built: {type(exc).__name__}: {exc}",
                              app_traceback(exc)) from None
        if not isinstance(target, Target):
            raise TargetError(f"target kind {spec.kind!r} built a {type(target).__name__}, not a "
                              "pytest_llmeval.Target")
        return target

    def identity(self, spec: TargetSpec, env: TargetEnv) -> str | None:
        """The spec's cache identity (computed once per process: hashing a package reads all of it)."""
        problem = self.identity_problem(spec, env)
        if problem is not None:
            raise TargetError(f"target {spec.name} ({spec.where(env.rootdir)}): hash: {problem}")
        return self._identities[spec.key() + repr((spec.version, spec.hash))]

    def identity_problem(self, spec: TargetSpec, env: TargetEnv) -> str | None:
        """Why the spec's ``hash:`` cannot be computed (an entry that names nothing), or None."""
        key = spec.key() + repr((spec.version, spec.hash))
        if key not in self._identities:
            try:
                self._identities[key] = identity_of(spec, [env.rootdir, env.suite_dir])
            except (OSError, ValueError) as exc:
                return str(exc)
        return None

    def _limit(self, spec: TargetSpec) -> threading.Semaphore | None:
        if spec.concurrency is None:
            return None
        key = _call_key(spec)
        with self._lock:
            if key not in self._limits:
                self._limits[key] = threading.BoundedSemaphore(spec.concurrency)
            return self._limits[key]

    # ---------------------------------------------------------------------------------------------- calls

    def planned(self, target: str, request: dict[str, Any]) -> Completion:
        """A call the prefetcher planned: ``target`` a key given by :meth:`remember`, ``request`` a TargetRequest
        as a dict."""
        spec, env = self._specs[target]
        return self.call(spec, env, TargetRequest(**request))

    def call(self, spec: TargetSpec, env: TargetEnv, request: TargetRequest,
             target: Target | None = None) -> Completion:
        """One answer of the application to ``request``, as a Completion (with its references, context, metadata
        and usage), through the cache when the target declares an identity."""
        identity = self.identity(spec, env)
        key = None
        if identity is not None and self.cache is not None:
            from pytest_llmeval.cache.exact import cache_key

            params = spec.params.model_dump(mode="json") if hasattr(spec.params, "model_dump") else spec.params
            key = cache_key(purpose="target", kind=spec.kind, target=params, identity=identity,
                            request=request.to_dict())
            if self.cache_mode in ("on", "replay", "semantic"):
                hit = self.cache.get(key)
                if hit is not None:
                    try:
                        return Completion(**{**hit, "model": request.model, "cached": True})
                    except TypeError:
                        pass  # an entry of another shape: ask again
        if self.cache_mode == "replay":
            why = "no cached answer for this request" if identity is not None else \
                "the target declares no version or hash, so its answers are never cached"
            raise TargetError(f"--llm-cache=replay: target {spec.name}: {why}")
        limit = self._limit(spec)
        if limit is not None:
            limit.acquire()
        try:
            completion = self._ask(spec, target or self.target(spec, env), request)
        except TargetError as exc:  # what an application says may quote its secrets: never into results or reports
            raise TargetError(redact(exc.message), redact(exc.details) if exc.details else None) from None
        finally:
            if limit is not None:
                limit.release()
        if key is not None and self.cache is not None and self.cache_mode in ("on", "refresh", "semantic"):
            stored = asdict(completion)
            del stored["model"], stored["cached"], stored["semantic"]
            self.cache.set(key, stored)
        return completion

    def _ask(self, spec: TargetSpec, target: Target, request: TargetRequest) -> Completion:
        from pytest_llmeval.targets import usage

        name = spec.name
        with usage.track() as tracked:
            start = time.perf_counter()
            try:
                value = target.answer(request)
            except TargetError:
                raise
            except Exception as exc:  # the application's own failure: an error outcome, with its traceback
                raise TargetError(f"target {name} raised {type(exc).__name__}: {exc}", app_traceback(exc)) from None
            latency = time.perf_counter() - start
        answer: Answer = to_answer(value, name)
        spent: Usage = tracked.merge(answer.usage)
        return Completion(
            text=answer.text, model=request.model, resolved_model=request.model, latency_s=latency,
            prompt_tokens=spent.prompt_tokens, completion_tokens=spent.completion_tokens, cost_usd=spent.cost_usd,
            references=[r.to_dict(n) for n, r in enumerate(answer.references, start=1)], context=answer.context,
            metadata=answer.metadata or None, target=name,
            trajectory={"mode": "app", **answer.tool_calls.to_dict()} if answer.tool_calls is not None else None,
            app_usage=spent.to_dict() if target.measures_usage or answer.usage is not None else None)

    def close(self) -> None:
        with self._lock:
            targets = list(self._targets.values())
            self._targets.clear()
        for target in targets:
            try:
                target.close()
            except Exception:  # noqa: S112 - closing the others matters more than one failure to close
                continue

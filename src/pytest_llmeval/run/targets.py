"""The item's side of application targets (targets/): which target answers a case item, its requests, its calls
(prefetched like model calls, or made in setup with the item's fixtures), what the app retrieved, and the
collection-time checks of a suite's ``target:``.

A case item keeps its model: an application target receives the item's ``--llm`` model in its request, so
``--llm=a,b`` evaluates the application once per model, one column each in the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmeval.cases.schema import CaseError
from pytest_llmeval.core.answer import Reference, TargetRequest
from pytest_llmeval.core.targets import TargetEnv, TargetSpec
from pytest_llmeval.run.redraw_child import draw_slots

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.providers.runner import Completion
    from pytest_llmeval.run.state import RunState


def suite_target(case_target: TargetSpec | None, state: RunState) -> TargetSpec | None:
    """The application target of a suite: its own ``target:``, else ``--llm-target``; None when the model answers."""
    spec = case_target if case_target is not None else state.default_target
    return None if spec is None or spec.is_model else spec


def target_problems(spec: TargetSpec, state: RunState, node: pytest.Collector, path: Path) -> list[CaseError]:
    """What is wrong with a suite's target, found at collection: an unimportable callable, a fixture that does
    not exist, a ``hash`` entry that names nothing. Each is a CaseError at the ``target:`` line of the suite file
    (its other suites still run)."""
    where = spec.path or path
    problems: list[tuple[str, str]] = []
    env = state.target_env(where, has_fixture=lambda name: bool(node.session._fixturemanager.getfixturedefs(name, node)))
    definition = spec.definition
    if definition is not None and definition.check is not None:
        try:
            problems += definition.check(spec.params, env)
        except Exception as exc:  # a third-party kind's check failing is its problem, reported the same way
            problems.append((spec.kind, f"{type(exc).__name__}: {exc}"))
    if not problems and (problem := state.target_runner.identity_problem(spec, env)) is not None:
        problems.append(("hash", problem))
    label = "target" if spec.path is not None else "--llm-target"
    return [CaseError(where, spec.line, f"{label}.{field}", message) for field, message in problems]


class TargetCalls:
    """Mixed into CaseItem: an application target's calls for the item's draws."""

    # Set by CaseItem
    case: CaseSpec
    model: str
    config: pytest.Config
    session: pytest.Session
    target: TargetSpec | None
    _fixture_request: Any

    def _init_fixtures(self) -> None:
        """A fixture target needs the item's fixtures, as a doctest item has them (pytest's DoctestItem)."""
        from _pytest.fixtures import TopRequest

        item: Any = self
        fm = self.session._fixturemanager
        info = fm.getfixtureinfo(node=item, func=None, cls=None)
        item._fixtureinfo = info
        item.fixturenames = info.names_closure
        item.funcargs = {}
        self._fixture_request = TopRequest(item, _ispytest=True)

    def _target_env(self, state: RunState) -> TargetEnv:
        spec = self.target
        assert spec is not None
        fixture = None
        if spec.definition is not None and spec.definition.per_item:
            if self._fixture_request is None:
                self._init_fixtures()
            self._fixture_request._fillfixtures()
            fixture = self._fixture_request.getfixturevalue
        return state.target_env(spec.path or self.case.path, fixture=fixture)

    def target_request(self, sample: int = 0, messages: list[dict[str, Any]] | None = None, turn: int = 0,
                       prompt: str | None = None) -> TargetRequest:
        """The request of one draw (or one turn of a conversation); ``sample`` the draw's cache slot (past the run's
        own in the gate's redraws): part of the answer's cache key (the ``model`` kind asks at that slot)."""
        msgs = messages if messages is not None else self.case.messages()
        return TargetRequest(prompt=prompt if prompt is not None else self.case.prompt, messages=msgs,
                             case=self.case.fields, case_id=self.case.id, suite=self.case.suite, model=self.model,
                             params=self.case.params, system=self.case.system, turn=turn, sample=sample)

    def app_plan(self, state: RunState, draws: int) -> list[dict[str, Any]] | None:
        """The calls the prefetcher may make ahead for this item: none for a per-item (fixture) target."""
        spec = self.target
        assert spec is not None
        if spec.definition is None or spec.definition.per_item:
            return None
        key = state.target_runner.remember(spec, state.target_env(spec.path or self.case.path))
        return [{"target": key, "request": self.target_request(slot).to_dict()}
                for slot in draw_slots(self.config, draws)]

    def app_answers(self, state: RunState, draws: int) -> list[Completion]:
        """The application's answers for every draw: prefetched where possible, else asked now."""
        plan = self.app_plan(state, draws)
        if plan is not None and state.prefetcher is not None:
            state.prefetch_from(self)  # type: ignore[arg-type]
            prefetched = state.prefetcher.take(self)
            if prefetched is not None:
                return prefetched
        return [self.ask_target(state, self.target_request(slot)) for slot in draw_slots(self.config, draws)]

    def ask_variant(self, state: RunState, messages: list[dict[str, Any]], prompt: str, fields: dict[str, Any]) -> str:
        """The application's answer to a robustness variant of the case (its perturbed prompt and fields)."""
        import dataclasses

        request = dataclasses.replace(self.target_request(messages=messages, prompt=prompt), case=fields)
        return self.ask_target(state, request).text

    def ask_target(self, state: RunState, request: TargetRequest) -> Completion:
        """One call of the application (through the cache, its limits and usage tracking)."""
        spec = self.target
        assert spec is not None
        env = self._target_env(state)
        target = state.target_runner.target(spec, env) if spec.definition and spec.definition.per_item else None
        return state.target_runner.call(spec, env, request, target)


def references_of(completion: Completion | None) -> list[Reference]:
    """The references an application answered with (as Reference objects), in its order."""
    if completion is None or not completion.references:
        return []
    return [Reference.coerce(r) for r in completion.references]


def app_retrieval(completion: Completion, case: CaseSpec) -> dict[str, Any] | None:
    """recall@k and MRR over the application's references, for a case with ``sources:`` (as built-in retrieval
    reports them; k is the number of references it returned)."""
    refs = references_of(completion)
    out: dict[str, Any] = {"target": completion.target, "k": len(refs)}
    if case.sources:
        from pytest_llmeval.rag.index import retrieval_scores

        out.update(retrieval_scores(refs, list(case.sources)))  # type: ignore[arg-type]
    return out


def grounding(completion: Completion | None) -> str | None:
    """The judge's groundedness context for an application's answer: the context it used, else its references."""
    if completion is None:
        return None
    if completion.context and completion.context.strip():
        return completion.context
    refs = references_of(completion)
    return "\n\n".join(f"[{i}] {r.source}" + (f"\n{r.text.strip()}" if r.text.strip() else "")
                       for i, r in enumerate(refs, start=1)) or None


def app_fields(item: Any) -> dict[str, Any]:
    """The CaseResult fields of an item an application answered: the target, its references (those of the first
    draw, with their text), what it retrieved, its metadata and the usage of its own model calls (every draw)."""
    completions: list[Completion] = item.completions
    first = completions[0] if completions else None
    out: dict[str, Any] = {"target": item.target.name}
    if first is None:
        return out
    out["references"] = list(first.references or [])
    out["retrieval"] = item.retrieval
    if first.metadata:
        out["metadata"] = first.metadata
    usages = [c.app_usage for c in completions if c.app_usage]
    if usages:
        def total(name: str) -> Any:
            values = [u.get(name) for u in usages if u.get(name) is not None]
            return sum(values) if values else None

        out["app_usage"] = {"calls": total("calls") or 0, "prompt_tokens": total("prompt_tokens"),
                            "completion_tokens": total("completion_tokens"), "cost_usd": total("cost_usd"),
                            "latency_s": total("latency_s"), "cached": all(c.cached for c in completions)}
    return out

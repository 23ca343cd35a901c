"""Collection and selection: which files are case files, which items run, and whether their models can.

Registered by plugin.py as one plugin object per process. Selection (holdout split, shard, resume) deselects
items the usual pytest way (``pytest_deselected``), so ``-k``, ``--lf`` and xdist keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cases.loader import referenced_datasets
from pytest_llmeval.core.memory import paused_gc
from pytest_llmeval.results.shards import collection_fingerprint, shard_of
from pytest_llmeval.run.items import NO_VISION_MODEL_ID, CaseFile, CaseItem, InvalidCaseItem
from pytest_llmeval.run.state import RunState

CASE_SUFFIXES = (".yaml", ".yml", ".jsonl")
FLYWHEEL_SUFFIXES = (".gen.yaml", ".gen.yml", ".review.yaml", ".review.yml")


class CollectionPlugin:
    """Collects case files into items and selects the items this run evaluates."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.settings = state.settings
        self._datasets: set[Path] | None = None
        self.held_out = 0  # test-split items deselected in a dev run
        self.collected: dict[str, Any] | None = None  # with --llm-shard: the whole selection's fingerprint

    def _in_case_dirs(self, path: Path) -> bool:
        return any(path.is_relative_to(d) for d in self.settings.case_dirs)

    def _referenced_datasets(self) -> set[Path]:
        if self._datasets is None:
            suites = [p for d in self.settings.case_dirs if d.is_dir()
                      for p in sorted(d.rglob("*")) if p.suffix in (".yaml", ".yml")]
            self._datasets = referenced_datasets(suites, self.state.registry, self.state.targets,
                                                 self.state.default_target is not None)
        return self._datasets

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.suffix not in CASE_SUFFIXES:
            return None
        # Flywheel files hold specs (*.gen.yaml) and candidates (*.review.yaml), not cases; dot files are
        # temporaries of an interrupted write.
        if file_path.name.startswith(".") or file_path.name.endswith(FLYWHEEL_SUFFIXES):
            return None
        if not (self._in_case_dirs(file_path) or parent.session.isinitpath(file_path)):
            return None
        if file_path.suffix == ".jsonl" and file_path.resolve() in self._referenced_datasets():
            return None  # a suite's dataset, collected through that suite
        return CaseFile.from_parent(parent, path=file_path)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # Hand-written tests using the `llm` fixture run once per model under test, like case items.
        user_parametrized = any(
            "llm_model" in (m.args[0] if isinstance(m.args[0], list | tuple) else str(m.args[0]).split(","))
            for m in metafunc.definition.iter_markers("parametrize") if m.args
        )
        if "llm_model" in metafunc.fixturenames and not user_parametrized:
            models = list(self.settings.models)
            metafunc.parametrize("llm_model", models, indirect=True, ids=models)

    @pytest.hookimpl(tryfirst=True)
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        """Hand-written tests with a vision_judge marker are slow vision evals, like case items with vision
        checks (marked before -m deselects anything)."""
        if item.get_closest_marker("vision_judge") is not None:
            item.add_marker("slow")
            item.add_marker("vision")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        """Select, then check once, before anything runs, that every model the selected items need can be used."""
        state = self.state
        self._select_split(config, items)
        if self.settings.shard is not None:
            self._select_shard(config, items)
        if self.settings.resume:
            done = state.finished_before()
            kept = [i for i in items if i.nodeid not in done]
            if len(kept) < len(items):
                config.hook.pytest_deselected(items=[i for i in items if i.nodeid in done])
                items[:] = kept
        if config.option.collectonly:
            return  # listing tests needs no key
        # One pass: each item's model (an application target's item does not call its --llm model itself: the
        # application may, or may not) and the judge models its checks call, worked out once per item.
        models = self.settings.models
        item_models: list[tuple[pytest.Item, str | None, set[str]]] = []
        wanted: set[str] = set()
        code = False
        for i in items:
            own = item_model(i, models)
            judges: set[str] = set()
            if isinstance(i, CaseItem):
                if own:
                    judges = i.judge_models()
                    wanted |= judges
                    code = code or i.case.kind == "code"
                if i.target is not None:
                    own = None
            if own:
                wanted.add(own)
            item_models.append((i, own, judges))
        needed = sorted(wanted)
        with paused_gc():  # the answers found live on
            deferred = self._answered_from_cache(item_models, wanted)
        problems = {m: p for m in needed if m not in deferred and (p := state.runner.check_model(m))}
        if code:
            from pytest_llmeval.sandbox.isolation import SandboxUnavailable

            try:
                state.get_sandbox()
            except SandboxUnavailable as exc:
                problems["--llm-sandbox"] = f"--llm-sandbox={self.settings.sandbox}: {exc}"
        if not problems:
            return
        if state.is_worker:
            # A worker cannot stop the run cleanly: its items error fast with the message instead.
            state.unusable.update(problems)
            return
        raise pytest.UsageError("\n".join(problems.values()))

    def _answered_from_cache(self, items: list[tuple[pytest.Item, str | None, set[str]]], needed: set[str]
                             ) -> set[str]:
        """Models whose every call in this selection is already in the exact cache: checking them would import
        litellm (~3 s) for nothing. Their check happens at the first call that misses after all.

        The answers looked up on the way are kept (until the first miss of each model): those items take them
        in setup without a second lookup, and the prefetcher leaves them alone (a pool thread per cached answer
        costs more than the lookup, and competes with the main thread for the GIL)."""
        state = self.state
        if state.runner.cache is None or self.settings.cache_mode not in ("on", "replay", "semantic"):
            return set()
        verdict: dict[str, bool] = {}
        pending: list[tuple[pytest.Item, str, list[dict[str, Any]]]] = []
        probes: set[str] = set()  # agent items: only their first steps are looked up, and not kept

        def settle() -> None:
            """Look up the pending items' calls (one batch) and record which models stay all-cached."""
            found = state.runner.cached_many([call for _, _, plan in pending for call in plan])
            at = 0
            for item, model, plan in pending:
                answers, at = found[at:at + len(plan)], at + len(plan)
                if verdict.get(model) is False:
                    continue
                verdict[model] = all(a is not None for a in answers)
                if verdict[model] and answers and item.nodeid not in probes:
                    state.answers[item.nodeid] = [a for a in answers if a is not None]
            pending.clear()

        batch = 8  # a first small batch: a run that is not cached finds out after a few lookups
        for item, model, judges in items:  # judges: the models the item's checks call
            if model is None or verdict.get(model) is False:
                continue
            agent = isinstance(item, CaseItem) and bool(item.case.tools) and item.target is None
            plan = None if not isinstance(item, CaseItem) or judges or item.case.is_conversation else \
                item.first_steps(state, item.draws) if agent else item.plan_calls()
            if agent:  # only the first steps are looked up (the later ones when the loop runs), and not kept
                probes.add(item.nodeid)
            if plan is None:
                verdict[model] = False
                continue
            pending.append((item, model, plan))
            if len(pending) >= batch:
                settle()
                batch = 512
        settle()
        if state.answers and state.prefetcher is not None:
            state.prefetcher.exclude(state.answers)
        return {m for m, ok in verdict.items() if ok and m in needed}

    def _select_split(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Holdout discipline: the test split runs only with --llm-split test (or all); dev only with dev or all.
        Items of the other split are deselected (no model call, counted as deselected)."""
        wanted = self.settings.split
        if wanted == "all":
            return
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if item_split(item) in (wanted, None) else drop).append(item)
        self.held_out = sum(1 for i in drop if item_split(i) == "test")
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def _select_shard(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Keep shard I of N: items whose id hashes to it (stable across machines, runs and item order). What the
        whole selection was is recorded (results.json's ``run.collected``), so that ``llmeval merge`` can tell
        shards of one run from shards of two commits."""
        assert self.settings.shard is not None
        index, count = self.settings.shard
        self.collected = collection_fingerprint(i.nodeid for i in items)
        workeroutput = getattr(config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller takes it from there (plugin.py)
            workeroutput["llmeval_collected"] = self.collected
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if shard_of(item.nodeid, count) == index else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


def item_split(item: pytest.Item) -> str | None:
    """dev | test: a case's split, or a hand-written test's (``@pytest.mark.llm_case(split="test")``); None for a
    broken case, whose error shows whatever the split."""
    if isinstance(item, InvalidCaseItem):
        return None
    if isinstance(item, CaseItem):
        return item.case.split
    marker = item.get_closest_marker("llm_case")
    return str(marker.kwargs.get("split", "dev")) if marker else "dev"


def item_model(item: pytest.Item, models: tuple[str, ...]) -> str | None:
    """The model an item calls: a case item's, or the `llm_model` parameter of a hand-written test (None: none)."""
    if isinstance(item, CaseItem):
        pending = any(c.definition and c.definition.grade is None for c in item.checks)
        return None if pending or item.model == NO_VISION_MODEL_ID else item.model
    if "llm_model" in getattr(item, "fixturenames", ()):
        callspec = getattr(item, "callspec", None)
        return callspec.params.get("llm_model", models[0]) if callspec else models[0]
    return None
